//! The demo's upstreams: small hyper HTTP/1.1 servers on 127.0.0.1, each answering `GET /` with a
//! body naming itself and `/health` with 200 — until a fault changes how it behaves.
//!
//! A fault is a [`Mode`] stored in an atomic, read per request and per connection, so switching
//! it takes effect at once. Killing an upstream aborts its accept task, which owns every
//! connection task in a `JoinSet`: dropping the set drops every socket (with a zero linger, so
//! the peer sees a reset, as when a process dies), and the closed listener refuses new connects.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

/// How long the slow mode makes every answer wait (well past the demo's per-try timeout).
pub const SLOW_DELAY: Duration = Duration::from_millis(1500);
/// How long a keep-alive connection may sit idle in the quick-close mode before it is closed:
/// short enough that the gateway sometimes reuses it just as the close is on its way.
const QUICK_IDLE: Duration = Duration::from_millis(8);

/// How an upstream behaves right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    Normal = 0,
    /// Answers 503 everywhere, `/health` included: up but not ready.
    NotReady = 1,
    /// Closes keep-alive connections after a few milliseconds idle.
    QuickClose = 2,
    /// Waits [`SLOW_DELAY`] before every answer except `/health`.
    Slow = 3,
    /// Killed: nothing listens on the port.
    Down = 4,
}

impl Mode {
    fn from_u8(v: u8) -> Mode {
        match v {
            1 => Mode::NotReady,
            2 => Mode::QuickClose,
            3 => Mode::Slow,
            4 => Mode::Down,
            _ => Mode::Normal,
        }
    }
}

/// One demo upstream: a name, a fixed address and a swappable behaviour.
pub struct DemoUpstream {
    pub name: String,
    pub addr: SocketAddr,
    mode: Arc<AtomicU8>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl DemoUpstream {
    /// Binds 127.0.0.1:0 and starts serving.
    pub async fn start(name: &str) -> std::io::Result<Arc<DemoUpstream>> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let up = Arc::new(DemoUpstream {
            name: name.to_string(),
            addr: listener.local_addr()?,
            mode: Arc::new(AtomicU8::new(Mode::Normal as u8)),
            task: Mutex::new(None),
        });
        up.serve(listener);
        Ok(up)
    }

    /// Switches the behaviour of requests and connections from now on.
    pub fn set_mode(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::Relaxed);
    }

    /// Dies abruptly: the listener closes and every open connection is reset.
    pub fn kill(&self) {
        self.set_mode(Mode::Down);
        if let Some(task) = self.task.lock().expect("task lock").take() {
            task.abort();
        }
    }

    /// Comes back on the same port. The old socket is released as the aborted task is dropped,
    /// so a bind that races it is retried a few times.
    pub async fn restart(&self) -> std::io::Result<()> {
        let mut last = None;
        for _ in 0..20 {
            match TcpListener::bind(self.addr).await {
                Ok(listener) => {
                    self.set_mode(Mode::Normal);
                    self.serve(listener);
                    return Ok(());
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(last.expect("at least one bind attempt"))
    }

    fn serve(&self, listener: TcpListener) {
        let (mode, name) = (self.mode.clone(), self.name.clone());
        let task = tokio::spawn(async move {
            // Owned here so aborting the accept loop drops every connection with it.
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        conns.spawn(connection(stream, name.clone(), mode.clone()));
                    }
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
        });
        *self.task.lock().expect("task lock") = Some(task);
    }
}

/// Serves one connection; in the quick-close mode, shuts it down once it has been idle briefly.
async fn connection(stream: TcpStream, name: String, mode: Arc<AtomicU8>) {
    // A zero linger makes the close a reset when the task is dropped, like a crashed process.
    #[allow(deprecated)]
    let _ = stream.set_linger(Some(Duration::ZERO));
    let busy = Arc::new(AtomicU32::new(0));
    let last_done = Arc::new(Mutex::new(Instant::now()));
    let svc = {
        let (busy, last_done, mode) = (busy.clone(), last_done.clone(), mode.clone());
        service_fn(move |req: Request<Incoming>| {
            let (busy, last_done, mode) = (busy.clone(), last_done.clone(), mode.clone());
            let name = name.clone();
            async move {
                busy.fetch_add(1, Ordering::Relaxed);
                let resp = answer(req, &name, Mode::from_u8(mode.load(Ordering::Relaxed))).await;
                *last_done.lock().expect("idle lock") = Instant::now();
                busy.fetch_sub(1, Ordering::Relaxed);
                Ok::<_, Infallible>(resp)
            }
        })
    };
    let conn =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    let mut closing = false;
    loop {
        let quick = !closing && Mode::from_u8(mode.load(Ordering::Relaxed)) == Mode::QuickClose;
        tokio::select! {
            _ = conn.as_mut() => return,
            () = tokio::time::sleep(QUICK_IDLE / 2), if quick => {
                let idle = busy.load(Ordering::Relaxed) == 0
                    && last_done.lock().expect("idle lock").elapsed() >= QUICK_IDLE;
                if idle {
                    // No `Connection: close` was sent: the client learns only from the FIN.
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
            // Re-check the mode now and then so a connection notices a fault starting.
            () = tokio::time::sleep(Duration::from_millis(100)), if !quick && !closing => {}
        }
    }
}

async fn answer(req: Request<Incoming>, name: &str, mode: Mode) -> Response<Full<Bytes>> {
    let health = req.uri().path() == "/health";
    let method = req.method().clone();
    // Read the body so a POST is fully received before the answer, as a real app would.
    let body_len = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes().len())
        .unwrap_or(0);
    match mode {
        Mode::NotReady => {
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{name}: not ready\n"),
            );
        }
        Mode::Slow if !health => tokio::time::sleep(SLOW_DELAY).await,
        _ => {}
    }
    if health {
        return text(StatusCode::OK, "ok\n".to_string());
    }
    text(
        StatusCode::OK,
        format!("hello from {name} ({method}, {body_len} bytes in)\n"),
    )
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain"),
    );
    resp
}
