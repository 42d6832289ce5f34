//! HTTP/2 to upstreams: a target's shared, multiplexed connections, the request shapes each
//! protocol wants, and the reading of HTTP/2 stream errors.
//!
//! One connection per target carries up to `h2_max_streams` streams; past that another is
//! opened, up to `h2_max_connections`; past those, streams queue on the least busy connection
//! (hyper holds them until the upstream's own stream limit lets them start). A connection that
//! delivered a GOAWAY to one of its streams takes no new ones; its open streams finish. One
//! left without streams for `idle_timeout` is closed.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::header::{self, HeaderName, HOST};
use http::uri::{Authority, Scheme};
use http::{Request, Uri, Version};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::time::Instant;

use super::connect::{Endpoint, Stream};
use super::io::{CountingIo, IoStats};
use super::pool::PoolSettings;
use crate::body::UpstreamBody;
use crate::cause::{Cause, Phase, UpstreamError};

/// Keep-alive pings on an upstream HTTP/2 connection: a dead peer is found within
/// interval + timeout even while no stream is open.
const PING_INTERVAL: Duration = Duration::from_secs(20);
const PING_TIMEOUT: Duration = Duration::from_secs(10);
/// Flow-control windows we advertise for response bodies: large enough for a fast upstream,
/// small enough that a slow client bounds what a stream buffers.
const STREAM_WINDOW: u32 = 1 << 20;
const CONNECTION_WINDOW: u32 = 4 << 20;

/// The shared HTTP/2 connections of one target.
pub struct H2Conns {
    max_streams: u32,
    max_conns: usize,
    /// `h2`/`h2c`: every connection is HTTP/2. `auto`: only those where ALPN chose `h2`.
    always: bool,
    /// `auto`: a connection of this target negotiated `h2` (dial one at a time from then on).
    seen_h2: AtomicBool,
    conns: Mutex<Vec<Arc<Shared>>>,
    dial: tokio::sync::Mutex<()>,
    /// The latest failed dial, for the requests that waited on it.
    last_failure: Mutex<Option<(Instant, UpstreamError)>>,
}

struct Shared {
    sender: http2::SendRequest<UpstreamBody>,
    stats: Arc<IoStats>,
    scheme: Scheme,
    /// Streams handed out and not yet released.
    streams: AtomicU32,
    going_away: AtomicBool,
    /// Since when no stream is open (`None` while one is).
    idle_since: Mutex<Option<Instant>>,
    idle_timeout: Duration,
}

/// One stream's claim on a shared connection; dropping it frees the slot.
pub struct StreamSlot {
    shared: Arc<Shared>,
    sender: http2::SendRequest<UpstreamBody>,
}

impl StreamSlot {
    fn new(shared: Arc<Shared>) -> StreamSlot {
        StreamSlot {
            sender: shared.sender.clone(),
            shared,
        }
    }

    pub fn sender(&mut self) -> &mut http2::SendRequest<UpstreamBody> {
        &mut self.sender
    }

    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }

    pub fn stats(&self) -> &Arc<IoStats> {
        &self.shared.stats
    }

    pub fn scheme(&self) -> &Scheme {
        &self.shared.scheme
    }

    pub fn stop_new_streams(&self) {
        self.shared.going_away.store(true, Ordering::Relaxed);
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        if self.shared.streams.fetch_sub(1, Ordering::AcqRel) == 1 {
            *self.shared.idle_since.lock().expect("h2 idle lock") = Some(Instant::now());
        }
    }
}

impl H2Conns {
    pub fn new(max_streams: u32, max_conns: u32, always: bool) -> H2Conns {
        H2Conns {
            max_streams: max_streams.max(1),
            max_conns: max_conns.max(1) as usize,
            always,
            seen_h2: AtomicBool::new(false),
            conns: Mutex::new(Vec::new()),
            dial: tokio::sync::Mutex::new(()),
            last_failure: Mutex::new(None),
        }
    }

    /// A stream on the least busy live connection, unless all are at `h2_max_streams` and
    /// another may be opened (then `None`: dial one).
    pub fn take(&self) -> Option<StreamSlot> {
        let now = Instant::now();
        let mut conns = self.conns.lock().expect("h2 pool lock");
        conns.retain(|c| {
            let idle_for = (*c.idle_since.lock().expect("h2 idle lock"))
                .map(|since| now.saturating_duration_since(since));
            let expired = c.streams.load(Ordering::Acquire) == 0
                && idle_for.is_some_and(|d| d >= c.idle_timeout);
            // Dropping the last sender of an idle connection closes it.
            !(c.going_away.load(Ordering::Relaxed) || c.sender.is_closed() || expired)
        });
        let best = conns
            .iter()
            .min_by_key(|c| c.streams.load(Ordering::Acquire))?;
        if best.streams.load(Ordering::Acquire) >= self.max_streams && conns.len() < self.max_conns
        {
            return None;
        }
        best.streams.fetch_add(1, Ordering::AcqRel);
        *best.idle_since.lock().expect("h2 idle lock") = None;
        Some(StreamSlot::new(best.clone()))
    }

    /// Whether new connections are dialled one at a time (they will be HTTP/2).
    pub fn dials_serially(&self) -> bool {
        self.always || self.seen_h2.load(Ordering::Relaxed)
    }

    pub async fn dialing(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.dial.lock().await
    }

    /// A dial (made holding [`H2Conns::dialing`]) failed.
    pub fn dial_failed(&self, err: &UpstreamError) {
        *self.last_failure.lock().expect("h2 dial lock") = Some((Instant::now(), err.clone()));
    }

    /// The failure of a dial that ended after `since` (one this request waited for).
    pub fn failed_since(&self, since: Instant) -> Option<UpstreamError> {
        match &*self.last_failure.lock().expect("h2 dial lock") {
            Some((at, err)) if *at >= since => Some(err.clone()),
            _ => None,
        }
    }

    /// Live connections.
    pub fn len(&self) -> usize {
        self.conns.lock().expect("h2 pool lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The HTTP/2 handshake on a new connection; the connection joins the shared ones and its
    /// first stream is returned.
    pub async fn handshake(
        &self,
        io: CountingIo<Stream>,
        stats: Arc<IoStats>,
        settings: &PoolSettings,
        endpoint: &Endpoint,
    ) -> Result<StreamSlot, UpstreamError> {
        let header_list = u32::try_from(settings.max_response_header_bytes).unwrap_or(u32::MAX);
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(PING_INTERVAL)
            .keep_alive_timeout(PING_TIMEOUT)
            .keep_alive_while_idle(true)
            .max_header_list_size(header_list)
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| {
                UpstreamError::before_send(
                    Cause::HttpProtocolError,
                    Phase::Connect,
                    format!("{}: HTTP/2 handshake: {e}", endpoint.addr),
                )
            })?;
        let addr = endpoint.addr.clone();
        tokio::spawn(async move {
            if let Err(err) = conn.await {
                tracing::debug!(target = %addr, %err, "upstream HTTP/2 connection ended");
            }
        });
        self.seen_h2.store(true, Ordering::Relaxed);
        let shared = Arc::new(Shared {
            sender,
            stats,
            scheme: if endpoint.is_tls() {
                Scheme::HTTPS
            } else {
                Scheme::HTTP
            },
            streams: AtomicU32::new(1),
            going_away: AtomicBool::new(false),
            idle_since: Mutex::new(None),
            idle_timeout: settings.idle_timeout,
        });
        self.conns
            .lock()
            .expect("h2 pool lock")
            .push(shared.clone());
        Ok(StreamSlot::new(shared))
    }
}

/// Headers that belong to one HTTP/1.1 connection and are malformed in HTTP/2 (RFC 9113
/// §8.2.2); `te` is allowed only as `trailers`.
const CONNECTION_SPECIFIC: [HeaderName; 4] = [
    header::CONNECTION,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("keep-alive"),
];

/// Shapes a request for an HTTP/2 upstream: the authority moves from `Host` into the URI (so
/// it is sent once, as `:authority`), connection-specific headers go, the version is 2.
pub fn shape_h2(req: &mut Request<UpstreamBody>, scheme: &Scheme) {
    let headers = req.headers_mut();
    for name in &CONNECTION_SPECIFIC {
        headers.remove(name);
    }
    headers.remove("proxy-connection");
    if headers
        .get(header::TE)
        .is_some_and(|te| !te.as_bytes().eq_ignore_ascii_case(b"trailers"))
    {
        headers.remove(header::TE);
    }
    if crate::proxy::grpc::is_grpc(headers) {
        // gRPC servers may require it ("used to detect incompatible proxies"); the client's
        // was removed with the other hop-by-hop headers.
        headers.insert(header::TE, http::HeaderValue::from_static("trailers"));
    }
    let authority = match headers.remove(HOST) {
        Some(host) => Authority::try_from(host.as_bytes()).ok(),
        None => req.uri().authority().cloned(),
    };
    let mut parts = req.uri().clone().into_parts();
    if let Some(authority) = authority {
        parts.authority = Some(authority);
        parts.scheme = Some(scheme.clone());
        if parts.path_and_query.is_none() {
            parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
        }
    }
    if let Ok(uri) = Uri::from_parts(parts) {
        *req.uri_mut() = uri;
    }
    *req.version_mut() = Version::HTTP_2;
}

/// Shapes a request for an HTTP/1.1 upstream. Requests arrive in this shape already; one that
/// an HTTP/2 attempt handed back unsent (`protocol = "auto"`) gets its `Host` back.
pub fn shape_h1(req: &mut Request<UpstreamBody>) {
    if req.version() != Version::HTTP_2 {
        return;
    }
    if let Some(authority) = req.uri().authority() {
        if !req.headers().contains_key(HOST) {
            if let Ok(v) = http::HeaderValue::from_str(authority.as_str()) {
                req.headers_mut().insert(HOST, v);
            }
        }
    }
    if let Some(pq) = req.uri().path_and_query().cloned() {
        *req.uri_mut() = Uri::from(pq);
    }
    *req.version_mut() = Version::HTTP_11;
}

/// What an HTTP/2 stream error says about the attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamError {
    pub cause: Cause,
    /// The upstream did not process the request (RFC 9113 §8.7): `REFUSED_STREAM`, or a
    /// stream above its GOAWAY's last-stream-id (h2 reports those, and streams opened after
    /// the GOAWAY arrived, as a remote GOAWAY error).
    pub unprocessed: bool,
    /// The connection is going away: open no new streams on it.
    pub going_away: bool,
    pub words: String,
}

/// The `h2::Error` behind a failed exchange, if there is one, read into a [`StreamError`].
pub fn stream_error(err: &(dyn std::error::Error + 'static)) -> Option<StreamError> {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(h2) = e.downcast_ref::<::h2::Error>() {
            return Some(read_h2_error(h2));
        }
        next = e.source();
    }
    None
}

fn read_h2_error(err: &::h2::Error) -> StreamError {
    let reason = err.reason();
    let remote = err.is_remote();
    let words = match reason {
        Some(r) if err.is_go_away() => format!("GOAWAY {r:?}"),
        Some(r) if err.is_reset() => format!("stream reset {r:?}"),
        _ => err.to_string(),
    };
    if err.is_go_away() && remote {
        return StreamError {
            cause: Cause::ConnectionTerminated,
            unprocessed: true,
            going_away: true,
            words: format!("{words} (stream not processed)"),
        };
    }
    if reason == Some(::h2::Reason::REFUSED_STREAM) && err.is_reset() && remote {
        return StreamError {
            cause: Cause::ConnectionTerminated,
            unprocessed: true,
            going_away: false,
            words: format!("{words} (stream not processed)"),
        };
    }
    let cause = if err.is_io() {
        Cause::ConnectionTerminated
    } else if reason == Some(::h2::Reason::PROTOCOL_ERROR)
        || reason == Some(::h2::Reason::COMPRESSION_ERROR)
        || reason == Some(::h2::Reason::FRAME_SIZE_ERROR)
    {
        Cause::HttpProtocolError
    } else {
        Cause::ConnectionTerminated
    };
    StreamError {
        cause,
        unprocessed: false,
        going_away: err.is_go_away(),
        words,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(uri: &str, host: Option<&str>) -> Request<UpstreamBody> {
        let mut b = Request::builder().uri(uri);
        if let Some(h) = host {
            b = b.header(HOST, h);
        }
        b.header("connection", "keep-alive")
            .header("keep-alive", "timeout=5")
            .header("transfer-encoding", "chunked")
            .header("te", "gzip")
            .header("x-app", "1")
            .body(UpstreamBody::Empty)
            .unwrap()
    }

    #[test]
    fn h2_shape_sends_the_authority_once_and_no_connection_headers() {
        let mut r = req("/p?q=1", Some("example.com:8080"));
        shape_h2(&mut r, &Scheme::HTTP);
        assert_eq!(r.uri().to_string(), "http://example.com:8080/p?q=1");
        assert_eq!(r.version(), Version::HTTP_2);
        assert!(r.headers().get(HOST).is_none());
        for name in ["connection", "keep-alive", "transfer-encoding", "te"] {
            assert!(r.headers().get(name).is_none(), "{name}");
        }
        assert_eq!(r.headers()["x-app"], "1");
        let mut t = req("/", Some("a"));
        t.headers_mut()
            .insert(header::TE, "trailers".parse().unwrap());
        shape_h2(&mut t, &Scheme::HTTPS);
        assert_eq!(t.headers()[header::TE], "trailers");
        assert_eq!(t.uri().to_string(), "https://a/");
    }

    #[test]
    fn requests_that_waited_on_a_failed_dial_share_its_failure() {
        let conns = H2Conns::new(100, 4, true);
        let asked = Instant::now();
        assert!(conns.failed_since(asked).is_none());
        let err = UpstreamError::before_send(Cause::ConnectionTimeout, Phase::Connect, "t");
        conns.dial_failed(&err);
        assert_eq!(conns.failed_since(asked), Some(err));
        // A request that came after that failure dials again.
        let later = Instant::now() + Duration::from_millis(5);
        assert!(conns.failed_since(later).is_none());
        assert!(conns.take().is_none() && conns.is_empty());
    }

    #[test]
    fn h1_shape_undoes_the_h2_shape() {
        let mut r = req("/p?q=1", Some("example.com"));
        shape_h2(&mut r, &Scheme::HTTP);
        shape_h1(&mut r);
        assert_eq!(r.uri().to_string(), "/p?q=1");
        assert_eq!(r.headers()[HOST], "example.com");
        assert_eq!(r.version(), Version::HTTP_11);
    }
}
