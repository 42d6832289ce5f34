//! One attempt: a connection to one target (pooled or new), the request sent, the response head
//! read — and, when that fails, an [`UpstreamError`] classified right here, where we still know
//! whether request bytes left and response bytes came back.
//!
//! [`run`] turns that into one [`AttemptOutcome`], and everything the request path says about an
//! attempt is derived from it: the health observation, the access-log [`Attempt`], the per-target
//! metric and the retry rule's [`retry::Outcome`].

use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::time::Instant;

use super::retry;
use crate::body::UpstreamBody;
use crate::cause::{Cause, Phase, UpstreamError};
use crate::observe::access_log::Attempt;
use crate::observe::metrics::RouteMetrics;
use crate::upstream::io::{IoSnapshot, IoStats};
use crate::upstream::pool::{Conn, Reuse};
use crate::upstream::{Target, Upstream};

/// How one attempt ended, built once by [`run`].
pub struct AttemptOutcome {
    pub target: Arc<Target>,
    /// The response head and its connection, or why there is none.
    pub result: Result<(Response<Incoming>, Conn), UpstreamError>,
    /// The request went out on a pooled connection.
    pub reused: bool,
    /// From the start of the attempt to the response head (or the failure).
    pub duration: Duration,
}

impl AttemptOutcome {
    pub fn status(&self) -> Option<StatusCode> {
        self.result.as_ref().ok().map(|(resp, _)| resp.status())
    }

    pub fn error(&self) -> Option<&UpstreamError> {
        self.result.as_ref().err()
    }

    /// What the retry rule reads of this attempt.
    pub fn retry_outcome(&self) -> retry::Outcome<'_> {
        match &self.result {
            Ok((resp, _)) => retry::Outcome::Status(resp.status()),
            Err(e) => retry::Outcome::Failed(e),
        }
    }

    /// Whether the retry rule is asked at all: a failure, or a status in `retry_on_status`.
    /// Any other response goes straight back to the client.
    pub fn asks_retry(&self, retry_on_status: &[u16]) -> bool {
        match self.status() {
            Some(s) => retry_on_status.contains(&s.as_u16()),
            None => true,
        }
    }

    /// The access-log entry of this attempt.
    pub fn log_entry(&self) -> Attempt {
        Attempt {
            target: self.target.addr.clone(),
            cause: self.error().map(|e| e.cause),
            status: self.status().map(|s| s.as_u16()),
            request_sent: self.error().map_or(true, |e| e.request_sent),
            reused: self.reused,
            duration_ms: self.duration,
            hedge: false,
            cancelled: false,
        }
    }

    /// Tells the target's health, its latency estimate and the route's per-target metric how
    /// this attempt went. `retry_on_status`: the route's; such an answer counts as a failure for
    /// the latency estimate, so a target that answers 503 fast does not look fast and draw
    /// traffic.
    pub fn report(&self, upstream: &Upstream, metrics: &RouteMetrics, retry_on_status: &[u16]) {
        upstream.observe(&self.target, self.error(), self.status());
        // A pooled connection the upstream closed as we wrote (the keep-alive race) says
        // nothing about the target's speed.
        let race = self.error().is_some_and(|e| {
            e.reused && !e.response_bytes && e.cause == Cause::ConnectionTerminated
        });
        if !race {
            let now = Instant::now();
            let failed = self.asks_retry(retry_on_status);
            (self.target.latency).observe(self.duration, failed, now);
        }
        metrics.attempt(&self.target, self.status(), self.error().map(|e| e.cause));
    }
}

/// One attempt on `target` within `per_try`: the outcome, and the request when none of it was
/// sent (so the next attempt can send it as it is).
pub async fn run(
    target: Arc<Target>,
    req: Request<UpstreamBody>,
    per_try: Duration,
) -> (AttemptOutcome, Option<Request<UpstreamBody>>) {
    let started = Instant::now();
    let mut progress = Progress::default();
    let sent = tokio::time::timeout(per_try, send(&target, req, &mut progress)).await;
    let (result, unsent) = match sent {
        Ok(Ok(ok)) => (Ok(ok), None),
        Ok(Err((err, back))) => (Err(err), back),
        Err(_) => {
            let detail = format!("{} after {}ms", target.addr, per_try.as_millis());
            (Err(progress.timeout_error(detail)), None)
        }
    };
    let outcome = AttemptOutcome {
        target,
        result,
        reused: progress.reused,
        duration: started.elapsed(),
    };
    (outcome, unsent)
}

/// What an attempt got to before it ended; read after a per-try timeout cancels it.
#[derive(Default)]
pub struct Progress {
    pub reused: bool,
    /// Counters of the connection the request went out on, and their values before sending.
    sending: Option<(Arc<IoStats>, IoSnapshot)>,
    /// The request went out as a stream of a shared HTTP/2 connection, whose byte counters
    /// say nothing about this one stream.
    h2: bool,
}

impl Progress {
    /// (request bytes written, response bytes read) since the request was handed to the connection.
    pub fn io(&self) -> (bool, bool) {
        match &self.sending {
            // Handed to the stream: taken as sent (the safe reading); no response head yet,
            // or the attempt would not have failed.
            Some(_) if self.h2 => (true, false),
            Some((stats, before)) => {
                let now = stats.snapshot();
                (now.written > before.written, now.read > before.read)
            }
            None => (false, false),
        }
    }

    /// The error for a per-try timeout that fired at this point.
    pub fn timeout_error(&self, detail: String) -> UpstreamError {
        let (request_sent, response_bytes) = self.io();
        UpstreamError {
            cause: Cause::HttpResponseTimeout,
            phase: if self.sending.is_some() {
                Phase::ResponseHead
            } else {
                Phase::Connect
            },
            request_sent,
            response_bytes,
            reused: self.reused,
            unprocessed: false,
            detail,
        }
    }
}

/// A failed attempt, with the request handed back when none of it was sent (so even a
/// streamed body can go to the next target).
pub type Failure = (UpstreamError, Option<Request<UpstreamBody>>);

/// Sends `req` to `target` and waits for the response head.
///
/// Pooled connections that turn out closed before anything was written are dropped and the
/// request moves to the next one (finally a fresh connection): nothing was sent, so this is safe
/// for any method and is not a retry.
pub async fn send(
    target: &Target,
    mut req: Request<UpstreamBody>,
    progress: &mut Progress,
) -> Result<(Response<Incoming>, Conn), Failure> {
    // A request that may not be resent keeps off connections near their idle limit.
    let reuse = if retry::is_idempotent(req.method()) || retry::has_idempotency_key(req.headers()) {
        Reuse::Any
    } else {
        Reuse::Fresh
    };
    loop {
        let mut conn = match target.pool.take_idle(reuse) {
            Some(conn) => conn,
            // Boxed: a new connection is rare next to a pooled one, and its future (DNS, TCP,
            // TLS) would otherwise enlarge every request's (docs/performance.md).
            None => match Box::pin(target.pool.connect()).await {
                Ok(conn) => conn,
                Err(err) => return Err((err, Some(req))),
            },
        };
        progress.reused = conn.reused;
        progress.h2 = conn.is_h2();
        if conn.reused && !conn.ready().await {
            continue;
        }
        progress.sending = Some((conn.stats.clone(), conn.stats.snapshot()));
        match conn.send(req).await {
            Ok(resp) => return Ok((resp, conn)),
            Err(mut err) => match err.take_message() {
                Some(unsent) if conn.reused => {
                    req = unsent;
                    progress.sending = None;
                }
                unsent => {
                    let going_away = crate::upstream::h2::stream_error(err.error())
                        .is_some_and(|s| s.going_away);
                    if going_away {
                        // The upstream sent GOAWAY: no new streams on this connection.
                        conn.stop_new_streams();
                    }
                    return Err((classify(err.error(), progress, &target.addr), unsent));
                }
            },
        }
    }
}

/// Names the cause of a failed exchange from hyper's error kind and the socket counters.
fn classify(err: &hyper::Error, progress: &Progress, addr: &str) -> UpstreamError {
    let (request_sent, response_bytes) = progress.io();
    if let Some(stream) = crate::upstream::h2::stream_error(err) {
        return UpstreamError {
            cause: stream.cause,
            phase: if request_sent {
                Phase::ResponseHead
            } else {
                Phase::Connect
            },
            request_sent,
            response_bytes,
            reused: progress.reused,
            unprocessed: stream.unprocessed,
            detail: format!("{addr}: {}", stream.words),
        };
    }
    let cause = if err.is_parse_too_large() {
        Cause::HttpResponseHeaderSectionSize
    } else if err.is_parse() || err.is_parse_status() {
        Cause::HttpProtocolError
    } else if err.is_user() {
        // The client's own body failed (it hung up mid-upload).
        Cause::HttpRequestError
    } else if response_bytes {
        Cause::HttpResponseIncomplete
    } else {
        Cause::ConnectionTerminated
    };
    // A TLS record where an HTTP status line should be: the target wants TLS.
    let tls_answer = cause == Cause::HttpProtocolError
        && progress
            .sending
            .as_ref()
            .and_then(|(stats, _)| stats.first_byte())
            .is_some_and(|b| b == 0x15 || b == 0x16);
    let tls_failure = crate::upstream::tls::rustls_error_in(err)
        .map(|e| crate::upstream::tls::tls_error_words(e, addr));
    let (cause, detail) = if tls_answer {
        (
            Cause::TlsProtocolError,
            format!("{addr}: target speaks TLS; protocol = \"https\" is not set"),
        )
    } else if let Some((tls_cause, words)) = tls_failure {
        // A TLS alert after the handshake (e.g. our client certificate refused under TLS 1.3).
        (tls_cause, format!("{addr}: {words}"))
    } else {
        (cause, format!("{addr}: {err}"))
    };
    let phase = if response_bytes || cause == Cause::HttpProtocolError || tls_answer {
        Phase::ResponseHead
    } else if request_sent {
        Phase::RequestSent
    } else {
        Phase::Connect
    };
    UpstreamError {
        cause,
        phase,
        request_sent,
        response_bytes,
        reused: progress.reused,
        unprocessed: false,
        detail,
    }
}
