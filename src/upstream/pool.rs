//! Our own upstream connection pool, per target, on `hyper::client::conn::http1` and `http2`.
//!
//! HTTP/2 connections are shared, not taken: the pool keeps each target's live ones
//! ([`super::h2`]) and hands out a stream on the least busy one below `h2_max_streams`, opens
//! another below `h2_max_connections`, and otherwise queues the stream on the least busy one.
//! Everything below about idle limits is HTTP/1.1's.
//!
//! Why our own: the pool decides which connections are safe to reuse, and that decision is where
//! "502 after idle" comes from. A connection goes back to the pool only after its response body was
//! read to the end; it is handed out again only if it is younger than its idle limit (the
//! configured `idle_timeout`, shortened below the upstream's own `Keep-Alive: timeout=`) and its
//! driver task has not seen the upstream close it. The driver task stays spawned while the
//! connection idles, so an idle FIN from the upstream is noticed when it arrives, not at reuse —
//! and the idle age at which it came teaches the target's learned idle limit (`idle_learn`).
//!
//! Idle connections are kept in the order they came back, and handed out newest first (LIFO):
//! the newest is the furthest from any idle timeout, and the oldest ones expire unused.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::client::conn::{http1, TrySendError};
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

use super::connect::{Connector, Endpoint};
use super::h2::{H2Conns, StreamSlot};
use super::idle_learn::LearnedIdle;
use super::io::{CountingIo, IoStats};
use super::tls::TlsClient;
use crate::body::UpstreamBody;
use crate::cause::{Cause, Phase, UpstreamError};
use crate::config::UpstreamProtocol;

/// A connection ready to carry one request: an HTTP/1.1 connection of its own, or one stream
/// of a shared HTTP/2 connection.
pub struct Conn {
    pub stats: Arc<IoStats>,
    /// Taken from the pool rather than freshly connected (for HTTP/2: a stream on a connection
    /// that already carried others).
    pub reused: bool,
    link: Link,
}

enum Link {
    H1 {
        sender: http1::SendRequest<UpstreamBody>,
        /// Shared with the connection's driver task.
        idle_since: Arc<IdleSince>,
        /// Dropped with the connection when it is not pooled: its driver task then ends, with
        /// any request body it was still waiting on (an upload the client never finishes would
        /// keep it, and the client's connection, alive forever).
        abandon: tokio::sync::oneshot::Sender<()>,
        /// The worker whose runtime drives it (`server/workers.rs`): only that worker reuses it.
        worker: Option<usize>,
    },
    /// Released (the stream count goes down) when the `Conn` is dropped, i.e. when the
    /// response body has been relayed or the attempt failed.
    H2(StreamSlot),
}

impl Conn {
    /// Whether this is a stream of an HTTP/2 connection.
    pub fn is_h2(&self) -> bool {
        matches!(self.link, Link::H2(_))
    }

    /// Waits until the connection can take the request; `false` when it closed meanwhile.
    pub async fn ready(&mut self) -> bool {
        match &mut self.link {
            Link::H1 { sender, .. } => sender.ready().await.is_ok(),
            Link::H2(slot) => slot.sender().ready().await.is_ok(),
        }
    }

    /// Sends the request, shaped for this connection's protocol (`super::h2::shape_h1`,
    /// `shape_h2`).
    /// An error hands the request back when hyper never began sending it.
    pub async fn send(
        &mut self,
        mut req: http::Request<UpstreamBody>,
    ) -> Result<http::Response<hyper::body::Incoming>, TrySendError<http::Request<UpstreamBody>>>
    {
        match &mut self.link {
            Link::H1 { sender, .. } => {
                super::h2::shape_h1(&mut req);
                sender.try_send_request(req).await
            }
            Link::H2(slot) => {
                super::h2::shape_h2(&mut req, slot.scheme());
                slot.sender().try_send_request(req).await
            }
        }
    }

    /// HTTP/2: the upstream is going away (a GOAWAY reached a stream of this connection): no
    /// new streams on it; the open ones finish.
    pub fn stop_new_streams(&self) {
        if let Link::H2(slot) = &self.link {
            slot.stop_new_streams();
        }
    }

    fn is_closed(&self) -> bool {
        match &self.link {
            Link::H1 { sender, .. } => sender.is_closed(),
            Link::H2(slot) => slot.is_closed(),
        }
    }
}

struct Idle {
    sender: http1::SendRequest<UpstreamBody>,
    stats: Arc<IoStats>,
    idle_since: Arc<IdleSince>,
    /// When it came back to the pool.
    since: Instant,
    /// The `Keep-Alive: timeout=` its last response announced.
    announced: Option<Duration>,
    abandon: tokio::sync::oneshot::Sender<()>,
    worker: Option<usize>,
}

/// Since when a connection has been idle in the pool; `None` while it carries a request and once
/// the pool has let go of it. Read by the driver task when the connection ends: a close while
/// idle is the upstream's idle timeout.
#[derive(Default)]
struct IdleSince(Mutex<Option<Instant>>);

impl IdleSince {
    fn set(&self, since: Option<Instant>) {
        *self.0.lock().expect("idle mark lock") = since;
    }

    fn get(&self) -> Option<Instant> {
        *self.0.lock().expect("idle mark lock")
    }
}

/// Which idle connections a request may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reuse {
    /// Any one below its idle limit: the request may be retried if the upstream closes it.
    Any,
    /// Not one in the last quarter of its idle limit: the request may not be resent, so it
    /// takes a fresh connection rather than one that may be about to close.
    Fresh,
}

/// A non-idempotent request takes an idle connection only below this share of its limit.
const NEAR_LIMIT: f64 = 0.75;

/// Settings a pool needs, copied from the upstream's config.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_idle: usize,
    pub max_response_header_bytes: usize,
    /// `protocol = "https"`: the upstream's TLS client.
    pub tls: Option<Arc<TlsClient>>,
    /// Learn the idle age at which the upstream closes connections (`learn_idle_timeout`).
    pub learn_idle_timeout: bool,
    /// What the targets speak (`protocol`).
    pub protocol: UpstreamProtocol,
    /// HTTP/2: streams per connection before another is opened.
    pub h2_max_streams: u32,
    /// HTTP/2: connections per target at most.
    pub h2_max_connections: u32,
}

/// The idle connections of one target, and how to make new ones.
pub struct TargetPool {
    endpoint: Endpoint,
    settings: PoolSettings,
    /// Oldest first.
    idle: Mutex<Vec<Idle>>,
    /// Shared with every connection's driver task.
    learned: Arc<LearnedIdle>,
    /// The latest `Keep-Alive: timeout=` the target announced, for status.
    announced: Mutex<Option<Duration>>,
    /// The shared HTTP/2 connections, when the upstream may speak HTTP/2 (`h2c`, `h2`, `auto`).
    h2: Option<H2Conns>,
}

impl TargetPool {
    pub fn new(addr: Arc<str>, settings: PoolSettings) -> Self {
        let learned = LearnedIdle::new(
            settings.learn_idle_timeout,
            settings.idle_timeout,
            addr.clone(),
        );
        let h2 = match settings.protocol {
            UpstreamProtocol::Http1 | UpstreamProtocol::Https => None,
            p => Some(H2Conns::new(
                settings.h2_max_streams,
                settings.h2_max_connections,
                p != UpstreamProtocol::Auto,
            )),
        };
        let mut endpoint = Endpoint::new(&addr, settings.tls.as_ref());
        if settings.protocol == UpstreamProtocol::H2c {
            endpoint = endpoint.h2_prior_knowledge();
        }
        Self {
            endpoint,
            h2,
            settings,
            idle: Mutex::new(Vec::new()),
            learned: Arc::new(learned),
            announced: Mutex::new(None),
        }
    }

    /// The most recently used idle connection that is still below its idle limit and open, if
    /// any. With [`Reuse::Fresh`], `None` when the newest one is in the last quarter of its limit
    /// (the older ones are older still); those stay for requests that may be retried.
    pub fn take_idle(&self, reuse: Reuse) -> Option<Conn> {
        if let Some(h2) = &self.h2 {
            if let Some(slot) = h2.take() {
                return Some(Conn {
                    stats: slot.stats().clone(),
                    reused: true,
                    link: Link::H2(slot),
                });
            }
        }
        let now = Instant::now();
        let learned = self.learned.limit(now);
        let mut idle = self.idle.lock().expect("pool lock");
        // On a worker, only the connections that worker drives (see `Conn::worker`).
        let worker = crate::server::workers::current();
        let mut i = idle.len();
        while i > 0 {
            i -= 1;
            if worker.is_some() && idle[i].worker != worker {
                continue;
            }
            let conn = idle.remove(i);
            let limit = self.limit(conn.announced, learned);
            let age = now.saturating_duration_since(conn.since);
            if age < limit && !conn.sender.is_closed() {
                if reuse == Reuse::Fresh && age >= limit.mul_f64(NEAR_LIMIT) {
                    idle.insert(i, conn);
                    return None;
                }
                conn.idle_since.set(None);
                return Some(Conn {
                    stats: conn.stats,
                    reused: true,
                    link: Link::H1 {
                        sender: conn.sender,
                        abandon: conn.abandon,
                        idle_since: conn.idle_since,
                        worker: conn.worker,
                    },
                });
            }
            // Dropping the sender closes the connection: our close, not the upstream's.
            conn.idle_since.set(None);
        }
        None
    }

    /// A connection's idle limit: the configured one, below the announced `Keep-Alive: timeout=`,
    /// and below the learned one.
    fn limit(&self, announced: Option<Duration>, learned: Option<Duration>) -> Duration {
        let limit = idle_limit(self.settings.idle_timeout, announced);
        learned.map_or(limit, |l| limit.min(l))
    }

    /// The idle limits of this target now: configured, announced (latest), learned.
    pub fn idle_limits(&self) -> IdleLimits {
        IdleLimits {
            configured: self.settings.idle_timeout,
            announced: *self.announced.lock().expect("pool lock"),
            learned: self.learned.limit(Instant::now()),
        }
    }

    /// Returns a connection whose response was read to the end. `upstream_keep_alive` is the
    /// `timeout=` the upstream announced; the connection expires a margin before it.
    pub fn put(&self, conn: Conn, upstream_keep_alive: Option<Duration>) {
        if upstream_keep_alive.is_some() {
            *self.announced.lock().expect("pool lock") = upstream_keep_alive;
        }
        if conn.is_closed() {
            return;
        }
        let Link::H1 {
            sender,
            idle_since,
            abandon,
            worker,
        } = conn.link
        else {
            // An HTTP/2 stream: dropping it frees its slot; the connection stays shared.
            return;
        };
        let limit = idle_limit(self.settings.idle_timeout, upstream_keep_alive);
        if limit.is_zero() || self.settings.max_idle == 0 {
            return;
        }
        let now = Instant::now();
        idle_since.set(Some(now));
        let mut idle = self.idle.lock().expect("pool lock");
        if idle.len() >= self.settings.max_idle {
            // Keep the newest: the oldest is the one closest to its upstream's timeout.
            idle.remove(0).idle_since.set(None);
        }
        idle.push(Idle {
            sender,
            stats: conn.stats,
            idle_since,
            since: now,
            announced: upstream_keep_alive,
            abandon,
            worker,
        });
    }

    /// Idle connections currently held (for status and tests).
    pub fn idle_count(&self) -> usize {
        self.idle.lock().expect("pool lock").len()
    }

    /// Opens a new connection through the [`Connector`] (DNS, TCP, TLS within the connect
    /// timeout). The byte counters wrap the final stream, so for TLS they count request bytes,
    /// not handshake bytes: `request_sent` stays a fact about the request.
    pub async fn connect(&self) -> Result<Conn, UpstreamError> {
        // HTTP/2: one dial at a time per target, so a burst of requests shares one new
        // connection instead of opening one each.
        let dialing = match &self.h2 {
            Some(h2) if h2.dials_serially() => {
                let asked = Instant::now();
                let guard = h2.dialing().await;
                // The dial this request waited for failed: fail alike at once rather than dial
                // again in turn (a black-holed target would make every waiter pay a timeout).
                if let Some(err) = h2.failed_since(asked) {
                    return Err(err);
                }
                if let Some(slot) = h2.take() {
                    return Ok(Conn {
                        stats: slot.stats().clone(),
                        reused: true,
                        link: Link::H2(slot),
                    });
                }
                Some(guard)
            }
            _ => None,
        };
        let stream = match Connector::new(self.settings.connect_timeout)
            .connect(&self.endpoint)
            .await
        {
            Ok(stream) => stream,
            Err(err) => {
                if let (Some(h2), Some(_)) = (&self.h2, &dialing) {
                    h2.dial_failed(&err);
                }
                return Err(err);
            }
        };
        let speaks_h2 = self.endpoint.speaks_h2(&stream);
        if !speaks_h2 && self.settings.protocol == UpstreamProtocol::H2 {
            // Never a silent fall back to HTTP/1.1 on an upstream configured for HTTP/2.
            return Err(UpstreamError::before_send(
                Cause::TlsProtocolError,
                Phase::Connect,
                format!(
                    "{}: the target did not choose h2 in ALPN; protocol = \"h2\" is set \
                     (\"auto\" accepts http/1.1)",
                    self.endpoint.addr
                ),
            ));
        }
        let (io, stats) = CountingIo::new(stream);
        if speaks_h2 {
            let Some(h2) = &self.h2 else {
                return Err(UpstreamError::before_send(
                    Cause::HttpProtocolError,
                    Phase::Connect,
                    format!(
                        "{}: ALPN chose h2 on an HTTP/1.1 upstream",
                        self.endpoint.addr
                    ),
                ));
            };
            let slot = h2
                .handshake(io, stats.clone(), &self.settings, &self.endpoint)
                .await?;
            return Ok(Conn {
                stats,
                reused: false,
                link: Link::H2(slot),
            });
        }
        let (sender, conn) = http1::Builder::new()
            .max_buf_size(self.settings.max_response_header_bytes.max(8192))
            .max_header_size(self.settings.max_response_header_bytes)
            .writev(false)
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| {
                UpstreamError::before_send(Cause::ProxyInternalError, Phase::Connect, e.to_string())
            })?;
        let idle_since = Arc::new(IdleSince::default());
        let (mark, learned) = (idle_since.clone(), self.learned.clone());
        // Dropped with the `Conn` when it is not pooled: the driver then ends (see `abandon`).
        let (abandon, abandoned) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            tokio::select! {
                // A 101 hands the socket to the request's tunnel (proxy/upgrade.rs).
                result = conn.with_upgrades() => if let Err(err) = result {
                    tracing::debug!(%err, "upstream connection ended");
                },
                _ = abandoned => {}
            }
            // Still marked idle: the upstream closed it while it waited in the pool.
            if let Some(since) = mark.get() {
                let now = Instant::now();
                learned.closed_idle(now.saturating_duration_since(since), now);
            }
        });
        Ok(Conn {
            stats,
            reused: false,
            link: Link::H1 {
                sender,
                idle_since,
                abandon,
                worker: crate::server::workers::current(),
            },
        })
    }

    /// Live HTTP/2 connections of this target (for status and tests).
    pub fn h2_connections(&self) -> usize {
        self.h2.as_ref().map_or(0, |h2| h2.len())
    }
}

impl Drop for TargetPool {
    /// The connections dropped with the pool are closed by us, not by the upstream.
    fn drop(&mut self) {
        for conn in self.idle.get_mut().expect("pool lock").iter() {
            conn.idle_since.set(None);
        }
    }
}

/// A target's idle limits, for `/status` and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdleLimits {
    /// `idle_timeout`.
    pub configured: Duration,
    /// The latest `Keep-Alive: timeout=` the target announced.
    pub announced: Option<Duration>,
    /// Learned from the idle age at which the target closed connections.
    pub learned: Option<Duration>,
}

/// How long a pooled connection may idle: our limit, and never past the upstream's own
/// `Keep-Alive: timeout=` minus a margin, so we stop using a connection before the upstream
/// closes it. The margin is 1 s (half the timeout for timeouts of 2 s or less): enough to cover
/// a request in flight when the upstream's timer fires and clock granularity on its side.
pub fn idle_limit(ours: Duration, upstream: Option<Duration>) -> Duration {
    match upstream {
        None => ours,
        Some(theirs) => {
            let margin = if theirs > Duration::from_secs(2) {
                Duration::from_secs(1)
            } else {
                theirs / 2
            };
            ours.min(theirs.saturating_sub(margin))
        }
    }
}

/// Parses `timeout=N` out of a `Keep-Alive` header value.
pub fn keep_alive_timeout(value: &[u8]) -> Option<Duration> {
    let text = std::str::from_utf8(value).ok()?;
    text.split(',').find_map(|part| {
        let (k, v) = part.split_once('=')?;
        if k.trim().eq_ignore_ascii_case("timeout") {
            v.trim().parse::<u64>().ok().map(Duration::from_secs)
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_limit_stays_below_upstream_timeout() {
        let s = Duration::from_secs;
        assert_eq!(idle_limit(s(4), None), s(4));
        assert_eq!(idle_limit(s(4), Some(s(60))), s(4));
        assert_eq!(idle_limit(s(4), Some(s(5))), s(4));
        assert_eq!(idle_limit(s(4), Some(s(3))), s(2));
        assert_eq!(idle_limit(s(4), Some(s(2))), s(1));
        assert_eq!(idle_limit(s(4), Some(s(1))), Duration::from_millis(500));
        assert_eq!(idle_limit(s(4), Some(s(0))), s(0));
    }

    #[test]
    fn keep_alive_header_parsing() {
        assert_eq!(
            keep_alive_timeout(b"timeout=5, max=100"),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            keep_alive_timeout(b"max=100, Timeout = 2"),
            Some(Duration::from_secs(2))
        );
        assert_eq!(keep_alive_timeout(b"max=100"), None);
        assert_eq!(keep_alive_timeout(b"timeout=abc"), None);
        assert_eq!(keep_alive_timeout(b"\xff"), None);
    }
}
