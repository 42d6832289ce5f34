//! A controllable upstream node for chaos tests: it can be killed (every connection dropped,
//! port closed), restarted on the same port, made not-ready (503 on /health and on traffic),
//! slowed down; it counts health checks and every request id it executed.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;

pub const READY: u8 = 0;
pub const NOT_READY: u8 = 1;

#[derive(Default)]
pub struct Counters {
    pub health_checks: AtomicUsize,
    pub requests: AtomicUsize,
    /// How many times each `x-request-id` was executed here.
    pub executed: Mutex<HashMap<String, usize>>,
    /// Requests being answered now, and the most ever at once.
    pub concurrent: AtomicUsize,
    pub max_concurrent: AtomicUsize,
    /// Signalled whenever a counter moves.
    changed: tokio::sync::Notify,
}

/// `n` nodes, each on its own port, all ready.
pub async fn fleet(n: usize) -> Vec<Arc<Node>> {
    let mut nodes = Vec::new();
    for _ in 0..n {
        nodes.push(Node::start().await);
    }
    nodes
}

pub struct Node {
    pub addr: SocketAddr,
    pub counters: Arc<Counters>,
    mode: Arc<AtomicU8>,
    /// `/health` answers 503 whatever the mode (a broken health endpoint).
    health_failing: Arc<AtomicBool>,
    delay_ms: Arc<AtomicU64>,
    kill: watch::Sender<u64>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Bound to the node's port for its whole life, never listening: while the node is dead
    /// its port refuses connections and no other test's `bind(0)` can be handed it.
    _reserve: TcpSocket,
}

/// A listener on `addr` beside the node's reserving socket (both use `SO_REUSEADDR`).
fn listen_on(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

impl Node {
    pub async fn start() -> Arc<Node> {
        let reserve = TcpSocket::new_v4().unwrap();
        reserve.set_reuseaddr(true).unwrap();
        reserve.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = reserve.local_addr().unwrap();
        let listener = listen_on(addr).unwrap();
        let node = Arc::new(Node {
            addr,
            counters: Arc::default(),
            mode: Arc::new(AtomicU8::new(READY)),
            health_failing: Arc::default(),
            delay_ms: Arc::default(),
            kill: watch::channel(0).0,
            task: Mutex::new(None),
            _reserve: reserve,
        });
        node.serve(listener);
        node
    }

    pub fn set_mode(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
    }

    pub fn set_health_only_failing(&self, failing: bool) {
        self.health_failing.store(failing, Ordering::SeqCst);
    }

    /// Every request waits this long before being answered.
    pub fn set_delay(&self, d: Duration) {
        self.delay_ms.store(d.as_millis() as u64, Ordering::SeqCst);
    }

    pub fn requests(&self) -> usize {
        self.counters.requests.load(Ordering::SeqCst)
    }

    pub fn health_checks(&self) -> usize {
        self.counters.health_checks.load(Ordering::SeqCst)
    }

    /// Waits until `f` holds, re-checked whenever a counter of this node moves.
    pub async fn wait_for(&self, f: impl Fn(&Node) -> bool) {
        loop {
            let changed = self.counters.changed.notified();
            if f(self) {
                return;
            }
            tokio::time::timeout(Duration::from_secs(15), changed)
                .await
                .expect("condition reached in time");
        }
    }

    /// Waits until this node has answered `n` more health checks. Checks of one target run one
    /// after another, so once the next check arrives the gateway has applied the previous one.
    pub async fn checks_applied(&self, n: usize) {
        let seen = self.health_checks();
        self.wait_for(|node| node.health_checks() > seen + n).await;
    }

    /// Crash: the port stops listening and every open connection is dropped at once. Returns
    /// once the listening socket is closed.
    pub async fn kill(&self) {
        let task = self.task.lock().unwrap().take();
        self.kill.send_modify(|g| *g += 1);
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
    }

    /// Starts listening again on the same port, in `mode`.
    pub async fn restart(self: &Arc<Self>, mode: u8) {
        self.set_mode(mode);
        let give_up = tokio::time::Instant::now() + Duration::from_secs(5);
        let listener = loop {
            // The old listener may take a moment to be released after the abort.
            match listen_on(self.addr) {
                Ok(l) => break l,
                Err(_) if tokio::time::Instant::now() < give_up => {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err(e) => panic!("restart: cannot listen on {} again: {e}", self.addr),
            }
        };
        self.serve(listener);
    }

    fn serve(self: &Arc<Self>, listener: TcpListener) {
        let (counters, mode, delay) = (
            self.counters.clone(),
            self.mode.clone(),
            self.delay_ms.clone(),
        );
        let health_failing = self.health_failing.clone();
        let kill = self.kill.subscribe();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (counters, mode, delay) = (counters.clone(), mode.clone(), delay.clone());
                let health_failing = health_failing.clone();
                let mut kill = kill.clone();
                kill.mark_unchanged();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let (counters, mode, delay) =
                            (counters.clone(), mode.clone(), delay.clone());
                        let failing = health_failing.clone();
                        async move {
                            Ok::<_, Infallible>(
                                answer(req, &counters, &mode, &delay, &failing).await,
                            )
                        }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc);
                    tokio::select! {
                        _ = conn => {}
                        _ = kill.changed() => {}
                    }
                });
            }
        });
        *self.task.lock().unwrap() = Some(task);
    }
}

async fn answer(
    req: Request<Incoming>,
    counters: &Counters,
    mode: &AtomicU8,
    delay: &AtomicU64,
    health_failing: &AtomicBool,
) -> Response<Full<Bytes>> {
    if req.uri().path() == "/health" {
        // Counted before the mode is read: a check counted after a test changed the mode
        // (see `checks_applied`) answers in the new mode.
        counters.health_checks.fetch_add(1, Ordering::SeqCst);
        counters.changed.notify_waiters();
        let ready = mode.load(Ordering::SeqCst) == READY;
        let status = if ready && !health_failing.load(Ordering::SeqCst) {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        return status_response(status);
    }
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let _ = req.into_body().collect().await;
    if mode.load(Ordering::SeqCst) != READY {
        return status_response(StatusCode::SERVICE_UNAVAILABLE);
    }
    // Counted on arrival: a node that crashes mid-request may already have acted on it.
    counters.requests.fetch_add(1, Ordering::SeqCst);
    counters.changed.notify_waiters();
    *counters.executed.lock().unwrap().entry(id).or_default() += 1;
    let now = counters.concurrent.fetch_add(1, Ordering::SeqCst) + 1;
    counters.max_concurrent.fetch_max(now, Ordering::SeqCst);
    let d = delay.load(Ordering::SeqCst);
    if d > 0 {
        tokio::time::sleep(Duration::from_millis(d)).await;
    }
    counters.concurrent.fetch_sub(1, Ordering::SeqCst);
    Response::new(Full::new(Bytes::from_static(b"ok")))
}

fn status_response(status: StatusCode) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = status;
    r
}
