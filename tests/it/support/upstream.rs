//! Mock upstreams: real sockets on 127.0.0.1:0 with scripted behaviour.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Notify;

/// Counters every mock keeps.
#[derive(Default)]
pub struct Stats {
    pub accepts: AtomicUsize,
    pub requests: AtomicUsize,
    /// Connections the mock closed itself (idle close).
    pub closed: AtomicUsize,
    pub changed: Notify,
}

impl Stats {
    pub fn accepts(&self) -> usize {
        self.accepts.load(Ordering::SeqCst)
    }
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
    /// Waits until `f` holds (checked whenever a counter changes).
    pub async fn wait_for(&self, f: impl Fn(&Stats) -> bool) {
        loop {
            let changed = self.changed.notified();
            if f(self) {
                return;
            }
            tokio::time::timeout(Duration::from_secs(10), changed)
                .await
                .expect("condition reached in time");
        }
    }
    fn bump(&self, counter: &AtomicUsize) {
        counter.fetch_add(1, Ordering::SeqCst);
        self.changed.notify_waiters();
    }
}

pub struct Mock {
    pub addr: SocketAddr,
    pub stats: Arc<Stats>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Mock {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Handler = Arc<dyn Fn(Request<Bytes>) -> Response<Full<Bytes>> + Send + Sync>;

/// A hyper HTTP/1.1 server answering every request with `handler` (keep-alive on).
pub async fn serve(
    handler: impl Fn(Request<Bytes>) -> Response<Full<Bytes>> + Send + Sync + 'static,
) -> Mock {
    serve_on(bind_any().await, Arc::new(handler))
}

pub fn serve_on(listener: TcpListener, handler: Handler) -> Mock {
    let addr = listener.local_addr().unwrap();
    let stats = Arc::new(Stats::default());
    let s = stats.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            s.bump(&s.accepts);
            let (s, handler) = (s.clone(), handler.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let (s, handler) = (s.clone(), handler.clone());
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body
                            .collect()
                            .await
                            .map(|c| c.to_bytes())
                            .unwrap_or_default();
                        s.bump(&s.requests);
                        Ok::<_, Infallible>(handler(Request::from_parts(parts, body)))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Mock { addr, stats, task }
}

pub async fn bind_any() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").await.unwrap()
}

/// Answers 200 with `body`.
pub async fn ok(body: &'static str) -> Mock {
    serve(move |_| Response::new(Full::new(Bytes::from_static(body.as_bytes())))).await
}

/// Echoes the request: body as body, request headers as `x-echo-<name>` response headers.
pub async fn echo() -> Mock {
    serve(|req| {
        let mut resp = Response::builder().header("x-echo-method", req.method().as_str());
        for (name, value) in req.headers() {
            resp = resp.header(format!("x-echo-{name}"), value);
        }
        resp.body(Full::new(req.into_body())).unwrap()
    })
    .await
}

/// An address nothing listens on: connections to it are refused. The port stays bound (never
/// listening) for the rest of the test run, so no other test's `bind(0)` can be handed it and
/// start answering there.
pub async fn closed_port() -> SocketAddr {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    std::mem::forget(socket);
    addr
}

/// Accepts connections and reads forever, never answering.
pub async fn hang() -> Mock {
    raw(|mut stream, _stats| async move {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await
}

/// Answers each request with a keep-alive 200, then closes the connection once it has been idle
/// for `idle` (as app servers with short keep-alive timeouts do). `announce` adds
/// `Keep-Alive: timeout=N`.
pub async fn idle_closer(idle: Duration, announce: Option<u64>) -> Mock {
    raw(move |mut stream, stats| async move {
        let mut buf = vec![0u8; 65536];
        loop {
            let read = tokio::time::timeout(idle, read_head(&mut stream, &mut buf)).await;
            match read {
                Ok(Some(())) => {
                    stats.bump(&stats.requests);
                    let ka = announce
                        .map(|n| format!("keep-alive: timeout={n}\r\n"))
                        .unwrap_or_default();
                    let resp = format!("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n{ka}\r\nok");
                    if stream.write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                }
                Ok(None) => return,
                Err(_) => {
                    let _ = stream.shutdown().await;
                    stats.bump(&stats.closed);
                    return;
                }
            }
        }
    })
    .await
}

/// Reads one request head (requests without bodies only). `None` on EOF.
async fn read_head(stream: &mut tokio::net::TcpStream, buf: &mut [u8]) -> Option<()> {
    let mut filled = 0;
    loop {
        let n = stream.read(&mut buf[filled..]).await.ok()?;
        if n == 0 {
            return None;
        }
        filled += n;
        if buf[..filled].windows(4).any(|w| w == b"\r\n\r\n") {
            return Some(());
        }
    }
}

/// A raw TCP server running `conn` for each accepted connection.
pub async fn raw<F, Fut>(conn: F) -> Mock
where
    F: Fn(tokio::net::TcpStream, Arc<Stats>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = bind_any().await;
    let addr = listener.local_addr().unwrap();
    let stats = Arc::new(Stats::default());
    let s = stats.clone();
    let conn = Arc::new(conn);
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            s.bump(&s.accepts);
            tokio::spawn(conn(stream, s.clone()));
        }
    });
    Mock { addr, stats, task }
}
