//! The end of a request: what the access log says about it, and what happens to the upstream
//! connection once the response body has gone to the client.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{HeaderValue, Method, Uri};
use tokio::time::Instant;

use super::relay::BodyEnd;
use crate::cause::{Cause, Phase, UpstreamError};
use crate::observe::access_log::{AccessLog, Attempt, Record};
use crate::observe::metrics::RouteMetrics;
use crate::upstream::hold::Held;
use crate::upstream::pool::Conn;
use crate::upstream::{InFlight, Target, Upstream};

/// Everything the access-log line of one request needs, gathered along the way.
pub struct RequestLog {
    pub log: AccessLog,
    pub start: Instant,
    pub request_id: HeaderValue,
    pub client: SocketAddr,
    pub method: Method,
    pub host: Option<HeaderValue>,
    pub uri: Uri,
    pub route: Option<Arc<str>>,
    pub upstream: Option<Arc<str>>,
    pub target: Option<Arc<str>>,
    pub status: u16,
    /// `http` or `https` (the listener's).
    pub scheme: &'static str,
    /// `h1` or `h2`: what the client spoke.
    pub protocol: &'static str,
    /// `h1` or `h2`: what gatewise spoke to the target that answered.
    pub upstream_protocol: Option<&'static str>,
    /// Set for a gRPC request (`content-type: application/grpc*`): failures gatewise answers
    /// itself take the gRPC form.
    pub grpc: bool,
    /// The `grpc-status` the client got, once known.
    pub grpc_status: Option<u32>,
    pub bytes_in: u64,
    pub cause: Option<Cause>,
    pub retry_stop: Option<&'static str>,
    /// Time spent in the outage hold (R6), the current hold included.
    pub held: Held,
    pub attempts: Vec<Attempt>,
    /// The route's metric handles (the unrouted ones before a route matched).
    pub metrics: Option<Arc<RouteMetrics>>,
    /// Set once the line is written; a request dropped before that logs itself (see `Drop`).
    pub emitted: bool,
    /// The client may read upstream details in generated responses (the log always has them).
    pub trusted_client: bool,
    /// Set on an upgraded request when its tunnel closed.
    pub tunnel: Option<TunnelLog>,
}

/// The end of an upgraded request's tunnel, for its access-log line.
#[derive(Debug, Clone, Copy)]
pub struct TunnelLog {
    pub closed_by: &'static str,
    /// From request received to the 101 sent: the request's duration in the metrics, so hours
    /// of tunnel do not swamp the latency histogram.
    pub handshake: Duration,
}

/// Status logged for a request whose client went away before any response (nginx's 499).
pub const CLIENT_CLOSED: u16 = 499;

impl Drop for RequestLog {
    /// hyper drops a request's future when its client hangs up: the request still gets its line
    /// (status 499, with the attempts made so far) and its count in the metrics.
    fn drop(&mut self) {
        if !self.emitted {
            if self.status == 0 {
                self.status = CLIENT_CLOSED;
            }
            self.emit(0, BodyEnd::ClientGone);
        }
    }
}

impl RequestLog {
    /// Writes the line. `end` says how the response body ended; a body cut by the upstream
    /// names its cause even though the status was already sent.
    pub fn emit(&mut self, bytes_out: u64, end: BodyEnd) {
        self.emitted = true;
        let cause = match end {
            BodyEnd::Upstream(cause) => Some(cause),
            _ => self.cause,
        };
        let elapsed = self.start.elapsed();
        if let Some(m) = &self.metrics {
            let handled = self.tunnel.map_or(elapsed, |t| t.handshake);
            m.request(self.status, cause, handled);
            m.protocols(self.protocol, self.upstream_protocol);
            if let Some(grpc_status) = self.grpc_status {
                m.grpc_status(grpc_status);
            }
        }
        if !self.log.enabled() {
            return;
        }
        let host = self
            .host
            .as_ref()
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        self.log.write(&Record {
            // The wall-clock start, read only when a line is written.
            time: {
                let now = SystemTime::now();
                now.checked_sub(elapsed).unwrap_or(now)
            },
            request_id: self.request_id.to_str().unwrap_or(""),
            client: self.client,
            method: self.method.as_str(),
            host,
            path: self.uri.path(),
            route: self.route.as_deref(),
            upstream: self.upstream.as_deref(),
            target: self.target.as_deref(),
            status: self.status,
            scheme: self.scheme,
            protocol: self.protocol,
            upstream_protocol: self.upstream_protocol,
            grpc_status: self.grpc_status,
            duration_ms: elapsed,
            bytes_in: self.bytes_in,
            bytes_out,
            cause,
            retry_stop: self.retry_stop,
            held_ms: self.held.total(),
            incomplete: end != BodyEnd::Complete,
            attempts: &self.attempts,
            tunnel: self.tunnel.map(|t| crate::observe::access_log::Tunnel {
                closed_by: t.closed_by,
            }),
        });
    }

    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }
}

/// Runs when a relayed response body ends: the connection goes back to the pool only after a
/// complete body on a connection the upstream did not ask to close; then the log line.
pub struct Finish {
    pub conn: Conn,
    pub upstream: Arc<Upstream>,
    pub target: Arc<Target>,
    pub in_flight: InFlight,
    pub keep_alive: Option<Duration>,
    pub reusable: bool,
    pub log: RequestLog,
}

impl Finish {
    /// Runs once, when the relayed body ends (`bytes` of it reached the client).
    pub fn complete(self, end: BodyEnd, bytes: u64) {
        let Finish {
            conn,
            upstream,
            target,
            in_flight,
            keep_alive,
            reusable,
            mut log,
        } = self;
        match end {
            BodyEnd::Complete if reusable => target.pool.put(conn, keep_alive),
            BodyEnd::Upstream(cause) => {
                // The head looked fine, the body did not: that counts against the target too.
                let err = UpstreamError {
                    cause,
                    phase: Phase::ResponseBody,
                    request_sent: true,
                    response_bytes: true,
                    reused: conn.reused,
                    unprocessed: false,
                    detail: String::new(),
                };
                upstream.observe(&target, Some(&err), None);
            }
            _ => {}
        }
        drop(in_flight);
        log.emit(bytes, end);
    }
}
