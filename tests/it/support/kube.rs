//! A stand-in for the Kubernetes API server: a hyper server on 127.0.0.1:0 serving the
//! EndpointSlices of one namespace as a list and as watch streams, in the real
//! `discovery.k8s.io/v1` JSON shape. The test drives it: it applies and deletes slices (each a
//! new resourceVersion, sent to every open watch as ADDED / MODIFIED / DELETED), sends
//! bookmarks, expires versions (an ERROR event with code 410, or a 410 response to the next
//! watch) and drops watch connections mid-stream. A watch from an older version replays what
//! happened since, as the real server does from its watch cache.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Notify};

/// What the stand-in has been asked, for assertions.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    /// List requests answered.
    pub lists: usize,
    /// The `resourceVersion` of every watch request, in order.
    pub watches: Vec<String>,
    /// Watch streams open now.
    pub open_watches: usize,
}

struct Watcher {
    events: mpsc::UnboundedSender<Bytes>,
    /// Ends the connection abruptly (no last chunk).
    kill: Arc<Notify>,
}

#[derive(Default)]
struct State {
    version: u64,
    slices: BTreeMap<String, Value>,
    /// Every event with its version, for watches that start from an older one.
    history: Vec<(u64, Value)>,
    /// Versions below this are compacted: a watch from them gets 410.
    oldest: u64,
    gone_next_watch: bool,
    /// Every watch is answered 410, whatever its version.
    gone_always: bool,
    /// Every request is answered 503 (an API server in trouble).
    failing: bool,
    /// Watch events go out in 7-byte pieces, so lines straddle chunks.
    split: bool,
    watchers: Vec<Watcher>,
    seen: Seen,
}

impl State {
    fn emit(&mut self, event: Value) {
        self.history.push((self.version, event.clone()));
        let line = line(&event);
        let pieces: Vec<Bytes> = if self.split {
            line.chunks(7).map(Bytes::copy_from_slice).collect()
        } else {
            vec![line]
        };
        self.watchers
            .retain(|w| pieces.iter().all(|p| w.events.send(p.clone()).is_ok()));
        self.seen.open_watches = self.watchers.len();
    }
}

fn line(v: &Value) -> Bytes {
    let mut s = serde_json::to_vec(v).unwrap();
    s.push(b'\n');
    Bytes::from(s)
}

pub struct FakeApi {
    pub addr: SocketAddr,
    namespace: String,
    state: Arc<Mutex<State>>,
    changed: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.task.abort();
        for w in self.state.lock().unwrap().watchers.drain(..) {
            w.kill.notify_one();
        }
    }
}

type Body = BoxBody<Bytes, Infallible>;

impl FakeApi {
    /// Serves the slices of `namespace` over plain HTTP without authentication, starting at
    /// resourceVersion 1 with none.
    pub async fn start(namespace: &str) -> FakeApi {
        FakeApi::start_with(namespace, None, None).await
    }

    /// Serves over TLS with the certificate `server`, and only to `Authorization: Bearer
    /// <token>` (401 otherwise), as a real API server does.
    pub async fn start_tls(namespace: &str, server: &super::tls::Pem, token: &str) -> FakeApi {
        let acceptor = acceptor(server, None);
        FakeApi::start_with(namespace, Some(acceptor), Some(token.to_string())).await
    }

    /// Serves over TLS only to clients with a certificate signed by `client_ca` (the
    /// handshake fails otherwise), as with a kubeconfig's client-certificate user.
    pub async fn start_mtls(namespace: &str, server: &super::tls::Pem, client_ca: &str) -> FakeApi {
        let acceptor = acceptor(server, Some(client_ca));
        FakeApi::start_with(namespace, Some(acceptor), None).await
    }

    async fn start_with(
        namespace: &str,
        tls: Option<tokio_rustls::TlsAcceptor>,
        token: Option<String>,
    ) -> FakeApi {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State {
            version: 1,
            oldest: 1,
            ..State::default()
        }));
        let changed = Arc::new(Notify::new());
        let (st, ch, ns) = (state.clone(), changed.clone(), namespace.to_string());
        let token = Arc::new(token);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let kill = Arc::new(Notify::new());
                let (st, ch, ns, k) = (st.clone(), ch.clone(), ns.clone(), kill.clone());
                let (tls, token) = (tls.clone(), token.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let resp = match token.as_deref() {
                            Some(t) if !authorized(&req, t) => {
                                status(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized")
                            }
                            _ => answer(&st, &ch, &ns, &k, &req),
                        };
                        async move { Ok::<_, Infallible>(resp) }
                    });
                    let http = hyper::server::conn::http1::Builder::new();
                    match tls {
                        None => {
                            let conn = http.serve_connection(TokioIo::new(stream), svc);
                            tokio::select! {
                                _ = conn => {}
                                _ = kill.notified() => {}
                            }
                        }
                        Some(acceptor) => {
                            let Ok(stream) = acceptor.accept(stream).await else {
                                return;
                            };
                            let conn = http.serve_connection(TokioIo::new(stream), svc);
                            tokio::select! {
                                _ = conn => {}
                                _ = kill.notified() => {}
                            }
                        }
                    }
                });
            }
        });
        FakeApi {
            addr,
            namespace: namespace.to_string(),
            state,
            changed,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn https_url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Creates or replaces a slice (from [`slice`]); returns its new resourceVersion.
    pub fn apply(&self, mut slice: Value) -> u64 {
        let mut s = self.state.lock().unwrap();
        s.version += 1;
        let v = s.version;
        let name = slice["metadata"]["name"].as_str().unwrap().to_string();
        slice["metadata"]["namespace"] = json!(self.namespace);
        slice["metadata"]["resourceVersion"] = json!(v.to_string());
        let kind = if s.slices.contains_key(&name) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        s.slices.insert(name, slice.clone());
        s.emit(json!({"type": kind, "object": slice}));
        v
    }

    pub fn delete(&self, name: &str) {
        let mut s = self.state.lock().unwrap();
        s.version += 1;
        let v = s.version;
        let mut slice = s.slices.remove(name).expect("slice exists");
        slice["metadata"]["resourceVersion"] = json!(v.to_string());
        s.emit(json!({"type": "DELETED", "object": slice}));
    }

    /// Other objects were written (the version moves on) and a bookmark says so.
    pub fn bookmark(&self) -> u64 {
        let mut s = self.state.lock().unwrap();
        s.version += 1;
        let v = s.version;
        let event = json!({"type": "BOOKMARK", "object": {
            "kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1",
            "metadata": {"resourceVersion": v.to_string(),
                         "annotations": {"k8s.io/initial-events-end": "true"}}}});
        // A bookmark is not replayed: it is a hint for open watches only.
        let line = line(&event);
        s.watchers.retain(|w| w.events.send(line.clone()).is_ok());
        v
    }

    /// Compacts every version before the current one: open watches get an ERROR 410 event and
    /// end, and a watch from an older version gets the same.
    pub fn expire(&self) {
        let mut s = self.state.lock().unwrap();
        s.oldest = s.version;
        s.history.clear();
        let gone = line(&gone_event(s.version));
        for w in s.watchers.drain(..) {
            let _ = w.events.send(gone.clone());
        }
        s.seen.open_watches = 0;
        self.changed.notify_waiters();
    }

    /// From now on, watch events are sent in 7-byte chunks (a line straddles many).
    pub fn split_chunks(&self) {
        self.state.lock().unwrap().split = true;
    }

    /// While `on`, every request is answered `503 Service Unavailable`.
    pub fn fail_requests(&self, on: bool) {
        self.state.lock().unwrap().failing = on;
    }

    /// Every watch request is answered `410 Gone` (versions compacted faster than listed).
    pub fn gone_always(&self) {
        self.state.lock().unwrap().gone_always = true;
    }

    /// The next watch request is answered `410 Gone` as an HTTP status.
    pub fn gone_on_next_watch(&self) {
        self.state.lock().unwrap().gone_next_watch = true;
    }

    /// Ends every open watch cleanly after the events sent so far, as the server does when a
    /// watch's `timeoutSeconds` is up.
    pub fn end_watches(&self) {
        let mut s = self.state.lock().unwrap();
        s.watchers.clear();
        s.seen.open_watches = 0;
        self.changed.notify_waiters();
    }

    /// Breaks every open watch connection mid-stream.
    pub fn drop_watches(&self) {
        let mut s = self.state.lock().unwrap();
        for w in s.watchers.drain(..) {
            w.kill.notify_one();
        }
        s.seen.open_watches = 0;
        self.changed.notify_waiters();
    }

    pub fn seen(&self) -> Seen {
        self.state.lock().unwrap().seen.clone()
    }

    /// Waits (10 s at most) until `f` holds of what was seen.
    pub async fn wait_for(&self, what: &str, f: impl Fn(&Seen) -> bool) -> Seen {
        let wait = async {
            loop {
                let changed = self.changed.notified();
                let seen = self.seen();
                if f(&seen) {
                    return seen;
                }
                changed.await;
            }
        };
        match tokio::time::timeout(Duration::from_secs(10), wait).await {
            Ok(seen) => seen,
            Err(_) => panic!("stand-in API: {what} not seen; saw {:?}", self.seen()),
        }
    }
}

fn acceptor(server: &super::tls::Pem, client_ca: Option<&str>) -> tokio_rustls::TlsAcceptor {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = |pem: &str| -> Vec<CertificateDer<'static>> {
        CertificateDer::pem_slice_iter(pem.as_bytes())
            .map(Result::unwrap)
            .collect()
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in certs(ca) {
                roots.add(c).unwrap();
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
    };
    let key = PrivateKeyDer::from_pem_slice(server.key.as_bytes()).unwrap();
    let config = builder.with_single_cert(certs(&server.cert), key).unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

fn authorized(req: &Request<Incoming>, token: &str) -> bool {
    req.headers()
        .get(http::header::AUTHORIZATION)
        .is_some_and(|v| v.as_bytes() == format!("Bearer {token}").as_bytes())
}

fn gone_event(version: u64) -> Value {
    json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "reason": "Expired", "code": 410,
        "message": format!("too old resource version: 1 ({version})")}})
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                      "reason": reason, "message": message, "code": code.as_u16()});
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(line(&body)).boxed())
        .unwrap()
}

fn answer(
    state: &Mutex<State>,
    changed: &Notify,
    namespace: &str,
    kill: &Arc<Notify>,
    req: &Request<Incoming>,
) -> Response<Body> {
    let path = req.uri().path();
    let want = format!("/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices");
    if path != want {
        return status(StatusCode::NOT_FOUND, "NotFound", &format!("no {path}"));
    }
    let query: BTreeMap<String, String> = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.replace("%2F", "/").replace("%3D", "=")))
        .collect();
    let Some(service) = query
        .get("labelSelector")
        .and_then(|s| s.strip_prefix("kubernetes.io/service-name="))
        .map(str::to_string)
    else {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "labelSelector missing",
        );
    };
    let ours = |slice: &Value| slice["metadata"]["labels"]["kubernetes.io/service-name"] == service;
    let mut s = state.lock().unwrap();
    if s.failing {
        return status(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "etcd is down",
        );
    }
    let resp = if query.get("watch").map(String::as_str) != Some("1") {
        s.seen.lists += 1;
        let items: Vec<Value> = s.slices.values().filter(|v| ours(v)).cloned().collect();
        let list = json!({"kind": "EndpointSliceList", "apiVersion": "discovery.k8s.io/v1",
                          "metadata": {"resourceVersion": s.version.to_string()},
                          "items": items});
        Response::builder()
            .header("content-type", "application/json")
            .body(Full::new(line(&list)).boxed())
            .unwrap()
    } else {
        let from: u64 = query
            .get("resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        s.seen.watches.push(from.to_string());
        if std::mem::take(&mut s.gone_next_watch) || s.gone_always {
            changed.notify_waiters();
            return status(StatusCode::GONE, "Expired", "too old resource version");
        }
        let (tx, rx) = mpsc::unbounded_channel();
        if from < s.oldest {
            // As the real server does: 200, then the 410 in the stream, then the end.
            let _ = tx.send(line(&gone_event(s.version)));
        } else {
            for (v, event) in &s.history {
                if *v > from && ours(&event["object"]) {
                    let _ = tx.send(line(event));
                }
            }
            s.watchers.push(Watcher {
                events: tx,
                kill: kill.clone(),
            });
            s.seen.open_watches = s.watchers.len();
        }
        Response::builder()
            .header("content-type", "application/json")
            .body(ChannelBody(rx).boxed())
            .unwrap()
    };
    changed.notify_waiters();
    resp
}

/// A streamed body fed by the test, one watch event per chunk.
struct ChannelBody(mpsc::UnboundedReceiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

/// How a pod's endpoint stands.
#[derive(Debug, Clone, Copy)]
pub enum Pod {
    /// Running and passing its readiness probe.
    Ready,
    /// Started, not ready yet.
    Starting,
    /// Deleted, still serving while it shuts down.
    Terminating,
}

/// An EndpointSlice of `service` with the named port `http` = `port` and one endpoint per pod,
/// as the EndpointSlice controller writes it.
pub fn slice(name: &str, service: &str, port: u16, pods: &[(&str, Pod)]) -> Value {
    let endpoints: Vec<Value> = pods
        .iter()
        .map(|(ip, pod)| {
            let (ready, serving, terminating) = match pod {
                Pod::Ready => (true, true, false),
                Pod::Starting => (false, false, false),
                Pod::Terminating => (false, true, true),
            };
            json!({"addresses": [ip],
                   "conditions": {"ready": ready, "serving": serving, "terminating": terminating},
                   "nodeName": "node-1",
                   "targetRef": {"kind": "Pod", "name": format!("{service}-{}", ip.replace('.', "-")),
                                 "namespace": "default", "uid": "00000000-0000-0000-0000-000000000000"}})
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "generateName": format!("{service}-"),
            "labels": {"kubernetes.io/service-name": service,
                       "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"},
            "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": service,
                                 "controller": true, "blockOwnerDeletion": true,
                                 "uid": "00000000-0000-0000-0000-000000000001"}]
        },
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": "http", "port": port, "protocol": "TCP"},
                  {"name": "metrics", "port": 9090, "protocol": "TCP"}]
    })
}
