//! Our own upstream connection pool, per target, on `hyper::client::conn::http1`.
//!
//! Why our own: the pool decides which connections are safe to reuse, and that decision is where
//! "502 after idle" comes from. A connection goes back to the pool only after its response body was
//! read to the end; it is handed out again only if it is younger than its idle limit (the
//! configured `idle_timeout`, shortened below the upstream's own `Keep-Alive: timeout=`) and its
//! driver task has not seen the upstream close it. The driver task stays spawned while the
//! connection idles, so an idle FIN from the upstream is noticed when it arrives, not at reuse.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::io::{CountingIo, IoStats};
use crate::body::UpstreamBody;
use crate::cause::{connect_cause, connect_detail, Cause, Phase, UpstreamError};

/// A connection ready to carry one request.
pub struct Conn {
    pub sender: http1::SendRequest<UpstreamBody>,
    pub stats: Arc<IoStats>,
    /// Taken from the pool rather than freshly connected.
    pub reused: bool,
    /// Dropped with the connection when it is not pooled: its driver task then ends, with any
    /// request body it was still waiting on (an upload the client never finishes would keep it,
    /// and the client's connection, alive forever).
    pub abandon: tokio::sync::oneshot::Sender<()>,
}

struct Idle {
    sender: http1::SendRequest<UpstreamBody>,
    stats: Arc<IoStats>,
    abandon: tokio::sync::oneshot::Sender<()>,
    /// When this connection may no longer be handed out.
    expires: Instant,
}

/// Settings a pool needs, copied from the upstream's config.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_idle: usize,
    pub max_response_header_bytes: usize,
}

/// The idle connections of one target, and how to make new ones.
pub struct TargetPool {
    addr: Arc<str>,
    /// Set when `addr` is an IP literal: no resolution on connect.
    literal: Option<SocketAddr>,
    settings: PoolSettings,
    idle: Mutex<Vec<Idle>>,
}

impl TargetPool {
    pub fn new(addr: Arc<str>, settings: PoolSettings) -> Self {
        let literal = addr.parse().ok();
        Self {
            addr,
            literal,
            settings,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// The most recently used idle connection that is still fresh and open, if any.
    pub fn take_idle(&self) -> Option<Conn> {
        let now = Instant::now();
        let mut idle = self.idle.lock().expect("pool lock");
        while let Some(conn) = idle.pop() {
            if conn.expires > now && !conn.sender.is_closed() {
                return Some(Conn {
                    sender: conn.sender,
                    stats: conn.stats,
                    abandon: conn.abandon,
                    reused: true,
                });
            }
            // Dropping the sender closes the connection.
        }
        None
    }

    /// Returns a connection whose response was read to the end. `upstream_keep_alive` is the
    /// `timeout=` the upstream announced; the connection expires a margin before it.
    pub fn put(&self, conn: Conn, upstream_keep_alive: Option<Duration>) {
        if conn.sender.is_closed() {
            return;
        }
        let limit = idle_limit(self.settings.idle_timeout, upstream_keep_alive);
        if limit.is_zero() || self.settings.max_idle == 0 {
            return;
        }
        let mut idle = self.idle.lock().expect("pool lock");
        if idle.len() >= self.settings.max_idle {
            // Keep the newest: the oldest is the one closest to its upstream's timeout.
            idle.remove(0);
        }
        idle.push(Idle {
            sender: conn.sender,
            stats: conn.stats,
            abandon: conn.abandon,
            expires: Instant::now() + limit,
        });
    }

    /// Idle connections currently held (for status and tests).
    pub fn idle_count(&self) -> usize {
        self.idle.lock().expect("pool lock").len()
    }

    /// Opens a new connection within the connect timeout, trying every resolved address.
    pub async fn connect(&self) -> Result<Conn, UpstreamError> {
        let timeout = self.settings.connect_timeout;
        let stream = tokio::time::timeout(timeout, self.connect_tcp())
            .await
            .map_err(|_| {
                UpstreamError::before_send(
                    Cause::ConnectionTimeout,
                    Phase::Connect,
                    format!("{} after {}ms", self.addr, timeout.as_millis()),
                )
            })??;
        // Small requests and responses must not wait for Nagle.
        let _ = stream.set_nodelay(true);
        let (io, stats) = CountingIo::new(stream);
        let (sender, conn) = http1::Builder::new()
            .max_buf_size(self.settings.max_response_header_bytes.max(8192))
            .max_header_size(self.settings.max_response_header_bytes)
            .writev(false)
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| {
                UpstreamError::before_send(Cause::ProxyInternalError, Phase::Connect, e.to_string())
            })?;
        let (abandon, abandoned) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            tokio::select! {
                result = conn => if let Err(err) = result {
                    tracing::debug!(%err, "upstream connection ended");
                },
                _ = abandoned => {}
            }
        });
        Ok(Conn {
            sender,
            stats,
            reused: false,
            abandon,
        })
    }

    async fn connect_tcp(&self) -> Result<TcpStream, UpstreamError> {
        let addrs: Vec<SocketAddr> = match self.literal {
            Some(addr) => vec![addr],
            None => tokio::net::lookup_host(&*self.addr)
                .await
                .map_err(|e| {
                    UpstreamError::before_send(
                        Cause::DnsError,
                        Phase::Connect,
                        format!("{}: {e}", self.addr),
                    )
                })?
                .collect(),
        };
        let mut last = None;
        for addr in &addrs {
            match TcpStream::connect(addr).await {
                Ok(stream) => return Ok(stream),
                Err(e) => last = Some(e),
            }
        }
        Err(match last {
            Some(e) => {
                tracing::debug!(target = %self.addr, err = %e, "connect failed");
                UpstreamError::before_send(
                    connect_cause(&e),
                    Phase::Connect,
                    connect_detail(&self.addr, &e),
                )
            }
            None => UpstreamError::before_send(
                Cause::DnsError,
                Phase::Connect,
                format!("{}: no addresses", self.addr),
            ),
        })
    }
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
