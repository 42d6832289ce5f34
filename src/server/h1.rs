//! An HTTP/1.1 client connection, served in phases so an idle keep-alive connection costs little.
//!
//! Between requests gatewise holds the socket itself: a task waiting for the first byte of the
//! next request, with no hyper state (hyper's connection keeps an 8 KiB read buffer, a write
//! buffer and its dispatcher for as long as it lives). When a byte arrives, a hyper connection is
//! started on the socket for the exchange; once every request it began has had its response head
//! written (and `GRACE` has passed without a new one, so a client sending back to back keeps one
//! hyper connection), it is told to end after the current response (`graceful_shutdown` then:
//! the head has gone out without `Connection: close`, so the client sees an ordinary keep-alive
//! response), polled with `poll_without_shutdown` (hyper does not close the socket), and its
//! `into_parts` give the socket back, with any bytes hyper read past the response (a pipelined
//! request) copied in front of it for the next exchange.
//!
//! The connection is held only when that is exact; otherwise hyper serves on as it always did:
//! - a request with a body: hyper may have stopped reading it (the response went out before the
//!   body was read), and the rest of it would be taken for the next request. Hyper serves the
//!   connection until a bodiless request has been answered (by then every earlier body was read);
//! - HTTP/1.0, or `Connection: close` on either side: hyper closes the connection itself;
//! - an upgrade (WebSocket): hyper reports the 101 as a manual upgrade, and the socket, with any
//!   bytes the client sent after its request, goes to the request's tunnel through
//!   [`ClientUpgrade`] (hyper's own `OnUpgrade` is not used);
//! - the drain: the connection closes after its current response, as before.
//!
//! A request head that began and did not complete within `header_read_timeout` is answered
//! `408 Request Timeout` (logged and counted); a connection idle with no byte of a new request
//! for that long is closed silently, which is keep-alive idleness and not an error.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONNECTION, UPGRADE};
use hyper::body::{Body, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, Version};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::drain::ConnectionDrain;
use crate::cause::Cause;
use crate::config::ListenerConfig;
use crate::observe::access_log::Record;
use crate::proxy::forward::ListenerState;
use crate::proxy::relay::ClientBody;

/// A client's byte stream, plain or TLS.
pub trait ClientIo: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> ClientIo for T {}

/// The client's connection once the 101 has been written: what an upgraded request's tunnel
/// relays. Put in the extensions of a request that asks to upgrade; resolves when hyper has
/// handed the socket back (an error when the exchange ended without a 101).
/// (Shared and taken once: request extensions must be `Clone`.)
#[derive(Clone)]
pub struct ClientUpgrade(Arc<Mutex<Option<Upgraded>>>);

type Upgraded = oneshot::Receiver<Box<dyn ClientIo>>;

impl ClientUpgrade {
    /// The client's socket after the 101; an error when there will be none.
    pub async fn connection(self) -> Result<Box<dyn ClientIo>, &'static str> {
        let rx = self.0.lock().unwrap_or_else(|e| e.into_inner()).take();
        match rx {
            Some(rx) => rx.await.map_err(|_| "the exchange ended without a 101"),
            None => Err("the connection was already taken"),
        }
    }
}

/// How long a 408 may take to write before the connection is dropped anyway.
const TIMEOUT_ANSWER_WRITE: Duration = Duration::from_secs(1);

/// What the requests of one hyper connection said about holding the socket afterwards. Written
/// by the service, read by the driver, both in the connection's task.
#[derive(Default)]
struct Exchange {
    /// Requests hyper handed to the service.
    started: AtomicU32,
    /// Responses the service returned: hyper writes each one's head in the same poll.
    answered: AtomicU32,
    /// The latest request left the socket clean after its response (see the module doc).
    last_holdable: AtomicBool,
    /// A request or response said `Connection: close`.
    closing: AtomicBool,
    /// A 101 was answered: the socket goes to `upgrade`.
    upgraded: AtomicBool,
    upgrade: Mutex<Option<oneshot::Sender<Box<dyn ClientIo>>>>,
}

impl Exchange {
    fn reset(&self) {
        self.started.store(0, Ordering::Relaxed);
        self.answered.store(0, Ordering::Relaxed);
        self.last_holdable.store(false, Ordering::Relaxed);
    }

    /// Every request begun has its response head written and leaves a clean socket.
    fn can_end(&self) -> bool {
        let started = self.started.load(Ordering::Relaxed);
        started > 0
            && self.answered.load(Ordering::Relaxed) == started
            && self.last_holdable.load(Ordering::Relaxed)
            && !self.closing.load(Ordering::Relaxed)
    }
}

fn says_close(headers: &http::HeaderMap) -> bool {
    headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("close"))
}

/// Bytes in front of a stream: what hyper had read and not used, or the byte that ended the
/// idle wait; read before the stream itself.
pub struct Prefixed<IO> {
    prefix: Bytes,
    io: IO,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Prefixed<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Prefixed<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// One static byte per value: the byte that ends an idle wait goes in front of the stream
/// without an allocation.
static BYTE_VALUES: [u8; 256] = {
    let mut all = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        all[i] = i as u8;
        i += 1;
    }
    all
};

/// How an idle wait ended.
enum Idle {
    /// The first byte of a request.
    Byte(u8),
    /// Closed by the client, timed out with nothing sent, failed, or the drain: close.
    End,
}

/// Waits for the first byte of the next request, holding nothing but the socket. Reading one
/// byte (rather than waiting for readiness) works the same on TLS, whose readiness says nothing
/// about application data.
async fn idle<IO: ClientIo>(
    io: &mut IO,
    wait: Duration,
    drain: &mut ConnectionDrain,
    draining: &mut bool,
) -> Idle {
    if *draining {
        return Idle::End;
    }
    let mut byte = [0u8; 1];
    tokio::select! {
        biased;
        () = drain.closing() => {
            *draining = true;
            Idle::End
        }
        read = tokio::time::timeout(wait, io.read(&mut byte)) => match read {
            Ok(Ok(1)) => Idle::Byte(byte[0]),
            _ => Idle::End,
        },
    }
}

/// Serves one HTTP/1 client connection until it closes, is upgraded, or the gateway drains.
pub async fn serve<IO: ClientIo>(
    stream: IO,
    peer: SocketAddr,
    config: Arc<ListenerConfig>,
    state: Arc<ListenerState>,
    mut drain: ConnectionDrain,
) {
    state.connections.h1.inc();
    let exchange = Arc::new(Exchange::default());
    let mut service = Some(service(&state, peer, &config, &drain, &exchange));
    let mut io = Prefixed {
        prefix: Bytes::new(),
        io: stream,
    };
    let mut draining = false;
    loop {
        if io.prefix.is_empty() {
            match idle(
                &mut io.io,
                config.header_read_timeout,
                &mut drain,
                &mut draining,
            )
            .await
            {
                Idle::Byte(b) => io.prefix = Bytes::from_static(&BYTE_VALUES[b as usize..][..1]),
                Idle::End => {
                    let _ = tokio::time::timeout(TIMEOUT_ANSWER_WRITE, io.io.shutdown()).await;
                    return;
                }
            }
        }
        let begun = Instant::now();
        exchange.reset();
        let svc = service
            .take()
            .expect("the service is back after every exchange");
        // Boxed: the connection task keeps only this pointer's slot while idle.
        let conn = Box::new(builder(&config).serve_connection(TokioIo::new(io), svc));
        match exchange_once(conn, &exchange, &mut drain, &mut draining).await {
            Next::Hold(parts) => {
                let rest = parts.io.into_inner();
                io = Prefixed {
                    prefix: join(parts.read_buf, rest.prefix),
                    io: rest.io,
                };
                service = Some(parts.service);
            }
            Next::Upgraded(parts) => {
                let rest = parts.io.into_inner();
                let client = Prefixed {
                    prefix: join(parts.read_buf, rest.prefix),
                    io: rest.io,
                };
                let tx = exchange
                    .upgrade
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take();
                if let Some(tx) = tx {
                    let _ = tx.send(Box::new(client));
                }
                return;
            }
            Next::Close(mut rest) => {
                let _ = tokio::time::timeout(TIMEOUT_ANSWER_WRITE, rest.shutdown()).await;
                return;
            }
            Next::HeadTimedOut(rest, read) => {
                request_timeout(rest, read, peer, &config, &state, begun.elapsed()).await;
                return;
            }
            Next::Failed(err) => {
                if err.is_parse() || err.is_parse_too_large() {
                    // hyper has answered 400 or 431 itself; the request never reached a route.
                    super::listener::log_rejected(&state, peer, &err);
                } else {
                    tracing::debug!(%err, %peer, "client connection ended with an error");
                }
                return;
            }
        }
    }
}

/// The bytes to read before the stream: what hyper read and did not use (`first`), then what it
/// never read of the previous prefix. Copied out: hyper's read buffer is a view into an 8-16 KiB
/// allocation that an idle connection must not keep alive, even empty.
fn join(first: Bytes, then: Bytes) -> Bytes {
    match (first.is_empty(), then.is_empty()) {
        (true, true) => Bytes::new(),
        (true, false) => then,
        (false, _) => {
            let mut both = BytesMut::with_capacity(first.len() + then.len());
            both.extend_from_slice(&first);
            both.extend_from_slice(&then);
            both.freeze()
        }
    }
}

fn builder(config: &ListenerConfig) -> http1::Builder {
    let mut b = http1::Builder::new();
    b.timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .max_buf_size(config.max_header_bytes.max(8192))
        .max_header_size(config.max_header_bytes)
        .writev(false)
        .max_headers(config.max_headers);
    b
}

type BoxedResponse =
    Pin<Box<dyn Future<Output = Result<Response<ClientBody>, std::convert::Infallible>> + Send>>;

/// The service of every hyper connection of one client connection: the listener's handler, plus
/// the bookkeeping of [`Exchange`]. Its future is boxed so hyper's connection can be polled
/// without shutting down (which needs it `Unpin`).
fn service(
    state: &Arc<ListenerState>,
    peer: SocketAddr,
    config: &ListenerConfig,
    drain: &ConnectionDrain,
    exchange: &Arc<Exchange>,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<ClientBody>,
    Error = std::convert::Infallible,
    Future = BoxedResponse,
> + Unpin
       + Send
       + 'static {
    let (state, exchange) = (state.clone(), exchange.clone());
    let tunnels = drain.tunnels();
    let redirect = config.redirect_https;
    service_fn(move |mut req: Request<Incoming>| -> BoxedResponse {
        let upgrade = req.headers().contains_key(UPGRADE);
        let holdable = req.version() == Version::HTTP_11
            && req.body().is_end_stream()
            && !upgrade
            && !says_close(req.headers());
        exchange.started.fetch_add(1, Ordering::Relaxed);
        exchange.last_holdable.store(holdable, Ordering::Relaxed);
        if upgrade {
            // Only a request that may upgrade gets the handles (no extension map otherwise).
            let (tx, rx) = oneshot::channel();
            *exchange.upgrade.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
            req.extensions_mut()
                .insert(ClientUpgrade(Arc::new(Mutex::new(Some(rx)))));
            req.extensions_mut().insert(tunnels.clone());
        }
        let (state, exchange) = (state.clone(), exchange.clone());
        Box::pin(async move {
            let resp = super::listener::respond(&state, peer, redirect, req).await;
            if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS {
                exchange.upgraded.store(true, Ordering::Relaxed);
            }
            if says_close(resp.headers()) {
                exchange.closing.store(true, Ordering::Relaxed);
            }
            exchange.answered.fetch_add(1, Ordering::Relaxed);
            Ok(resp)
        })
    })
}

type Conn<IO, S> = http1::Connection<TokioIo<Prefixed<IO>>, S>;
type Parts<IO, S> = http1::Parts<TokioIo<Prefixed<IO>>, S>;

enum Next<IO, S> {
    /// The exchange is over and the socket clean: wait for the next request.
    Hold(Parts<IO, S>),
    /// A 101 went out: the socket is the tunnel's.
    Upgraded(Parts<IO, S>),
    /// The connection is done (closed by either side, or drained): shut the socket down.
    Close(Prefixed<IO>),
    /// A request head began and did not complete in time: the bytes read of it.
    HeadTimedOut(Prefixed<IO>, usize),
    Failed(hyper::Error),
}

/// How long hyper is kept after the exchange allows it to end: a client sending its next request
/// at once (back to back, a page's assets) is served by the same hyper connection rather than a
/// new one per request.
const GRACE: Duration = Duration::from_millis(100);

/// Runs hyper on the socket until it ends, telling it to end once the exchange allows (and
/// [`GRACE`] has passed with no new request).
async fn exchange_once<IO, S>(
    mut conn: Box<Conn<IO, S>>,
    exchange: &Exchange,
    drain: &mut ConnectionDrain,
    draining: &mut bool,
) -> Next<IO, S>
where
    IO: ClientIo,
    S: hyper::service::HttpService<Incoming, ResBody = ClientBody> + Unpin,
    S::Future: Unpin,
{
    let mut ending = false;
    let grace = tokio::time::sleep(GRACE);
    tokio::pin!(grace);
    // The count of answered requests when the grace was started: a later answer restarts it.
    let mut armed: Option<u32> = None;
    let result = std::future::poll_fn(|cx| loop {
        if !*draining && drain.poll_closing(cx).is_ready() {
            // Idle: closed now. Busy: the current response goes out with `Connection: close`.
            *draining = true;
            Pin::new(&mut *conn).graceful_shutdown();
        }
        let polled = conn.poll_without_shutdown(cx);
        if polled.is_ready() || ending || *draining || !exchange.can_end() {
            if !exchange.can_end() {
                armed = None;
            }
            return polled;
        }
        let answered = exchange.answered.load(Ordering::Relaxed);
        if armed != Some(answered) {
            armed = Some(answered);
            grace.as_mut().reset(Instant::now() + GRACE);
        }
        if grace.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        // Every response head is out: no `Connection: close` is added now, and hyper ends
        // after the response instead of reading another request. Polled again at once, since
        // an idle hyper connection ends without another wake-up.
        Pin::new(&mut *conn).graceful_shutdown();
        ending = true;
    })
    .await;
    match result {
        Ok(()) if exchange.upgraded.load(Ordering::Relaxed) => Next::Upgraded(conn.into_parts()),
        Ok(()) if ending && !*draining && !exchange.closing.load(Ordering::Relaxed) => {
            Next::Hold(conn.into_parts())
        }
        Ok(()) => Next::Close(conn.into_parts().io.into_inner()),
        Err(err) if err.is_timeout() => {
            let parts = conn.into_parts();
            let read = parts.read_buf.len();
            Next::HeadTimedOut(parts.io.into_inner(), read)
        }
        Err(err) => Next::Failed(err),
    }
}

/// A request head that began and did not complete within `header_read_timeout`: answered 408
/// (nginx and HAProxy do the same), logged and counted. With no byte of it read, the connection
/// was idle between requests: closed without a word.
async fn request_timeout<IO: ClientIo>(
    mut io: Prefixed<IO>,
    read: usize,
    peer: SocketAddr,
    config: &ListenerConfig,
    state: &ListenerState,
    elapsed: Duration,
) {
    if read == 0 {
        let _ = tokio::time::timeout(TIMEOUT_ANSWER_WRITE, io.shutdown()).await;
        return;
    }
    let body = format!(
        "408 Request Timeout: the request head did not arrive within {} ms\n",
        config.header_read_timeout.as_millis()
    );
    let answer = format!(
        "HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let written = tokio::time::timeout(TIMEOUT_ANSWER_WRITE, async {
        io.write_all(answer.as_bytes()).await?;
        io.shutdown().await
    })
    .await;
    tracing::debug!(%peer, read, ?written, "request head timed out");
    state.connections.header_timeouts.inc();
    state
        .unrouted
        .request(408, Some(Cause::HttpRequestError), elapsed);
    state.access_log.write(&Record {
        duration_ms: elapsed,
        bytes_in: read as u64,
        bytes_out: if matches!(written, Ok(Ok(()))) {
            answer.len() as u64
        } else {
            0
        },
        ..Record::unrouted(peer, state.scheme, "h1", 408, Some(Cause::HttpRequestError))
    });
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use arc_swap::ArcSwap;
    use tokio::io::DuplexStream;

    use super::*;
    use crate::config::Config;
    use crate::gateway::snapshot::Snapshot;
    use crate::observe::access_log::AccessLog;
    use crate::observe::metrics::Metrics;
    use crate::server::drain::Drain;

    /// One client connection served over an in-memory stream, on paused time. The listener
    /// redirects to https, so a request is answered without an upstream.
    struct Served {
        client: DuplexStream,
        log: mpsc::Receiver<Vec<u8>>,
        metrics: Metrics,
        _drain: Drain,
    }

    fn serve_one() -> Served {
        let config = Config::quick("127.0.0.1:80".parse().unwrap(), vec!["127.0.0.1:9".into()]);
        let mut lc = config.listeners[0].clone();
        lc.redirect_https = true;
        let metrics = Metrics::new([]);
        let snapshot = Snapshot::build(config, None, &metrics).unwrap();
        let (access_log, log) = AccessLog::capture();
        let state = Arc::new(ListenerState {
            name: lc.name.clone(),
            snapshot: Arc::new(ArcSwap::from_pointee(snapshot)),
            access_log,
            unrouted: metrics.unrouted(),
            connections: metrics.client_connections(&lc.name),
            scheme: "http",
            expose_details: false.into(),
            allow_trace: false.into(),
            acme: Default::default(),
        });
        let drain = Drain::default();
        let conn = drain.signal().connection();
        let (client, server) = tokio::io::duplex(64 * 1024);
        let peer = "127.0.0.1:5555".parse().unwrap();
        tokio::spawn(serve(server, peer, Arc::new(lc), state, conn));
        Served {
            client,
            log,
            metrics,
            _drain: drain,
        }
    }

    /// What one idle connection's task holds beyond its socket is mostly this future: hyper's
    /// connection is boxed apart so it does not count here.
    #[tokio::test]
    async fn a_connection_task_stays_small_while_idle() {
        let s = serve_one();
        let (_client, server) = tokio::io::duplex(64);
        let config = Config::quick("127.0.0.1:80".parse().unwrap(), vec!["127.0.0.1:9".into()]);
        let metrics = Metrics::new([]);
        let snapshot = Snapshot::build(config.clone(), None, &metrics).unwrap();
        let state = Arc::new(ListenerState {
            name: "public".into(),
            snapshot: Arc::new(ArcSwap::from_pointee(snapshot)),
            access_log: AccessLog::capture().0,
            unrouted: metrics.unrouted(),
            connections: metrics.client_connections("public"),
            scheme: "http",
            expose_details: false.into(),
            allow_trace: false.into(),
            acme: Default::default(),
        });
        let conn = s._drain.signal().connection();
        let lc = Arc::new(config.listeners[0].clone());
        let task = serve(server, "127.0.0.1:1".parse().unwrap(), lc, state, conn);
        let size = std::mem::size_of_val(&task);
        println!("HTTP/1 connection future: {size} bytes");
        // Debug build; a hyper connection inline would be several KiB.
        assert!(size < 2048, "{size} bytes");
    }

    async fn to_end(client: &mut DuplexStream) -> String {
        let mut out = Vec::new();
        client.read_to_end(&mut out).await.unwrap();
        String::from_utf8(out).unwrap()
    }

    const TIMEOUTS: &str = "gatewise_client_header_timeouts_total{listener=\"public\"} ";

    #[tokio::test(start_paused = true)]
    async fn a_head_begun_and_never_completed_is_answered_408_at_the_timeout() {
        let mut s = serve_one();
        let start = Instant::now();
        s.client.write_all(b"GET / HTTP/1.1\r\nHo").await.unwrap();
        let out = to_end(&mut s.client).await;
        assert_eq!(
            start.elapsed(),
            Duration::from_secs(10),
            "header_read_timeout"
        );
        assert!(
            out.starts_with("HTTP/1.1 408 Request Timeout\r\nconnection: close\r\n"),
            "{out}"
        );
        let line: serde_json::Value = serde_json::from_slice(&s.log.try_recv().unwrap()).unwrap();
        assert_eq!(
            (line["status"].as_u64(), line["method"].as_str()),
            (Some(408), Some("-"))
        );
        assert!(s.metrics.encode().contains(&format!("{TIMEOUTS}1")));
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_idle_between_requests_is_closed_silently_at_the_timeout() {
        let mut s = serve_one();
        s.client
            .write_all(b"GET /a HTTP/1.1\r\nHost: h.test\r\n\r\n")
            .await
            .unwrap();
        let start = Instant::now();
        let out = to_end(&mut s.client).await;
        // One redirect, then nothing: closed once idle for header_read_timeout (after the
        // grace in which hyper is kept).
        assert_eq!(out.matches("HTTP/1.1 ").count(), 1, "{out}");
        assert!(out.starts_with("HTTP/1.1 30"), "{out}");
        assert!(!out.contains("408"), "{out}");
        assert_eq!(start.elapsed(), GRACE + Duration::from_secs(10));
        assert!(s.log.try_recv().is_ok(), "the redirect's line");
        assert!(s.log.try_recv().is_err(), "no line for the idle close");
        assert!(s.metrics.encode().contains(&format!("{TIMEOUTS}0")));
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_never_sends_a_byte_is_closed_silently() {
        let mut s = serve_one();
        let start = Instant::now();
        assert_eq!(to_end(&mut s.client).await, "");
        assert_eq!(start.elapsed(), Duration::from_secs(10));
        assert!(s.log.try_recv().is_err());
    }
}
