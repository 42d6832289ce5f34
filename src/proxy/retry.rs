//! The retry rule (one pure function, [`decide`]), the per-route [`RetryBudget`] and the
//! jittered [`backoff`].
//!
//! After every failed attempt — a transport error or a response status — the forwarding loop
//! describes what happened in a [`RetryInput`] and asks [`decide`] (or [`decide_with_budget`],
//! which also spends from the route's budget) whether to try again on another target. The answer
//! is either [`Decision::Retry`] with the rule that allowed it, or [`Decision::Stop`] with the
//! first condition that refused it, so the access log and metrics can say *why* a request was
//! or was not retried. The rule, its defaults and why each case is safe are in `docs/retries.md`.
//!
//! Check order, and why: the outcome first (did the upstream start answering? is the cause one a
//! retry can fix?), then whether repeating the request is safe (method / `Idempotency-Key` /
//! route opt-in, replayable body), and only then the limits (attempts, deadline, budget). So a
//! `POST` that failed after being sent logs `non_idempotent`, never `attempts_exhausted`, and
//! the budget is spent only by retries that actually happen.

use std::time::Duration;

use http::{HeaderMap, Method, StatusCode};
use tokio::time::Instant;

use crate::cause::{Cause, Phase, UpstreamError};

mod backoff;
mod budget;
#[cfg(test)]
mod tests;

pub use backoff::{backoff, BACKOFF_BASE, BACKOFF_CAP};
pub use budget::{RetryBudget, BUDGET_WINDOW};

/// The `Idempotency-Key` request header (draft-ietf-httpapi-idempotency-key-header), lower-case.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// RFC 9110 §9.2.2: methods whose repeated execution has the same effect as one.
/// Extension methods are not assumed idempotent.
pub fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// Whether the request carries a non-empty `Idempotency-Key`: the client promises the upstream
/// de-duplicates repeats of this request, so one that may have executed can be sent again.
pub fn has_idempotency_key(headers: &HeaderMap) -> bool {
    headers
        .get_all(IDEMPOTENCY_KEY)
        .iter()
        .any(|v| !v.as_bytes().iter().all(u8::is_ascii_whitespace))
}

/// How one attempt ended.
#[derive(Debug, Clone, Copy)]
pub enum Outcome<'a> {
    /// The attempt failed in transport (connect, send, response head or body).
    Failed(&'a UpstreamError),
    /// The upstream answered with this status (head received, nothing forwarded to the client yet).
    Status(StatusCode),
}

/// Everything [`decide`] looks at; all fields are cheap to fill per attempt.
#[derive(Debug, Clone, Copy)]
pub struct RetryInput<'a> {
    pub method: &'a Method,
    /// [`has_idempotency_key`] of the client's request headers.
    pub has_idempotency_key: bool,
    /// `RouteConfig::retry_non_idempotent`.
    pub route_allows_non_idempotent: bool,
    /// Another attempt can send the whole body again: it is empty, fits the replay buffer, or
    /// has not been touched yet (e.g. the connect failed before the body was handed to hyper).
    pub body_replayable: bool,
    pub outcome: Outcome<'a>,
    /// `RouteConfig::retry_on_status` (default 502, 503, 504).
    pub retry_on_status: &'a [u16],
    /// Attempts made so far, the one that just ended included (1 after the first attempt).
    pub attempts_made: u32,
    /// `RouteConfig::retries`: extra attempts allowed after the first.
    pub max_retries: u32,
    /// Time left before the route's overall deadline.
    pub time_left: Duration,
    /// The [`backoff`] the retry would wait before starting; a retry that could not start
    /// before the deadline is refused.
    pub next_delay: Duration,
}

/// Which case of the rule allowed a retry (logged and counted per retry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RetryReason {
    /// No byte of the request reached the upstream: safe for any method.
    NotSent,
    /// The upstream said it never processed the request (HTTP/2 `REFUSED_STREAM`, or a stream
    /// above its GOAWAY's last-stream-id): safe for any method.
    Unprocessed,
    /// A pooled connection closed after the request was written and before any response byte:
    /// the keep-alive race. Idempotent / keyed / opted-in requests only.
    ReusedConnectionClosed,
    /// The request was written and the attempt failed without a response byte (reset, per-try
    /// timeout); the upstream may have executed it. Idempotent / keyed / opted-in only.
    SentNoResponse,
    /// The upstream answered with a status in `retry_on_status`. Idempotent or keyed requests only.
    Status,
}

impl RetryReason {
    pub const ALL: [RetryReason; 5] = [
        RetryReason::NotSent,
        RetryReason::Unprocessed,
        RetryReason::ReusedConnectionClosed,
        RetryReason::SentNoResponse,
        RetryReason::Status,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RetryReason::NotSent => "not_sent",
            RetryReason::Unprocessed => "unprocessed",
            RetryReason::ReusedConnectionClosed => "reused_connection_closed",
            RetryReason::SentNoResponse => "sent_no_response",
            RetryReason::Status => "status",
        }
    }
}

/// Why a request was not retried; the first condition (in check order) that refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StopReason {
    /// The cause or status is not one a retry can fix (client error, no target, overload,
    /// internal error, a status outside `retry_on_status`).
    NotRetryable,
    /// Response bytes came back: the upstream executed the request and started answering.
    ResponseStarted,
    /// The request may have executed and is neither idempotent, keyed, nor opted in — or it is a
    /// status retry of a non-idempotent method.
    NonIdempotent,
    /// The body cannot be sent again (larger than the replay buffer, already consumed).
    BodyNotReplayable,
    /// `retries` extra attempts were used.
    AttemptsExhausted,
    /// The retry could not start before the overall deadline.
    DeadlineExceeded,
    /// The route's retry budget refused (see [`RetryBudget`]).
    BudgetExhausted,
}

impl StopReason {
    pub const ALL: [StopReason; 7] = [
        StopReason::NotRetryable,
        StopReason::ResponseStarted,
        StopReason::NonIdempotent,
        StopReason::BodyNotReplayable,
        StopReason::AttemptsExhausted,
        StopReason::DeadlineExceeded,
        StopReason::BudgetExhausted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::NotRetryable => "not_retryable",
            StopReason::ResponseStarted => "response_started",
            StopReason::NonIdempotent => "non_idempotent",
            StopReason::BodyNotReplayable => "body_not_replayable",
            StopReason::AttemptsExhausted => "attempts_exhausted",
            StopReason::DeadlineExceeded => "deadline_exceeded",
            StopReason::BudgetExhausted => "budget_exhausted",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decision {
    Retry(RetryReason),
    Stop(StopReason),
}

/// Causes a retry on another target cannot fix, whatever was sent: the client's own request is
/// bad, there is no target to try, gatewise is overloaded (queue full — the designed answer is a
/// fast 503 + `Retry-After`, not more load), gatewise itself failed, or the upstream answered
/// (refused an upgrade, sent an oversized head — every target of a pool runs the same app).
fn cause_never_retried(cause: Cause) -> bool {
    matches!(
        cause,
        Cause::HttpRequestError
            | Cause::DestinationNotFound
            | Cause::DestinationUnavailable
            | Cause::ConnectionLimitReached
            | Cause::ProxyInternalError
            | Cause::HttpUpgradeFailed
            | Cause::HttpResponseHeaderSectionSize
    )
}

/// An attempt that failed because nothing took the connection — refused, reset or a failed TLS
/// handshake while connecting — before a byte of the request was written. During a crash or a
/// restart every attempt looks like this; nothing was sent, so holding it is safe for any method.
pub fn refused_before_send(err: &UpstreamError) -> bool {
    !err.request_sent
        && err.phase == Phase::Connect
        && matches!(
            err.cause,
            Cause::ConnectionRefused | Cause::ConnectionTerminated | Cause::TlsProtocolError
        )
}

/// The outage hold (R6), decided beside the retry rule: after a failed attempt, should the
/// request wait for a target to come back instead of retrying or failing?
///
/// Only when the attempt that just failed was [`refused_before_send`] (`refused`): then the
/// pool is down rather than this request bad, and a 502 would turn a restart into errors.
/// Holding it is safe: this attempt sent nothing, and an earlier attempt was only followed by
/// another because the retry rule found repeating the request safe (so a GET cut on a
/// connection to a target that was just killed, then refused everywhere, is held too; a POST
/// cut after being written never gets here). And only once a retry has nothing better to
/// offer: no routable target is left untried, or the retry rule said stop (`retry_stopped`:
/// attempts or budget used up). The forwarding loop asks before the retry rule (so no budget
/// is spent on a retry that could only go back to a refusing target), and again after the rule
/// refused.
pub fn hold_instead(refused: bool, untried_routable: bool, retry_stopped: bool) -> bool {
    refused && (!untried_routable || retry_stopped)
}

/// The retry rule, without the budget. Pure: same input, same answer.
pub fn decide(input: &RetryInput<'_>) -> Decision {
    match rule(input) {
        Ok(reason) => match limits(input) {
            Some(stop) => Decision::Stop(stop),
            None => Decision::Retry(reason),
        },
        Err(stop) => Decision::Stop(stop),
    }
}

/// [`decide`], then — only if it says retry — spend one retry from the route's budget. This is
/// the call the forwarding loop makes; the budget stays outside [`decide`] so the rule is pure
/// and the budget is never charged for a retry the rule refuses.
pub fn decide_with_budget(input: &RetryInput<'_>, budget: &RetryBudget, now: Instant) -> Decision {
    match decide(input) {
        Decision::Retry(reason) if budget.try_spend(now) => Decision::Retry(reason),
        Decision::Retry(_) => Decision::Stop(StopReason::BudgetExhausted),
        stop => stop,
    }
}

/// Is a retry of this outcome safe and useful, ignoring attempts, deadline and budget?
fn rule(input: &RetryInput<'_>) -> Result<RetryReason, StopReason> {
    let reason = match input.outcome {
        Outcome::Failed(err) => {
            if err.response_bytes {
                return Err(StopReason::ResponseStarted);
            }
            if cause_never_retried(err.cause) {
                return Err(StopReason::NotRetryable);
            }
            if !err.request_sent {
                // Nothing reached the upstream, so it cannot have executed anything: any method.
                return replayable(input, RetryReason::NotSent);
            }
            if err.unprocessed {
                // Sent, but the upstream says it did not process it (RFC 9113 §8.7): any method.
                return replayable(input, RetryReason::Unprocessed);
            }
            let closed = matches!(
                err.cause,
                Cause::ConnectionTerminated | Cause::HttpResponseIncomplete
            );
            let reason = if err.reused && closed {
                RetryReason::ReusedConnectionClosed
            } else {
                RetryReason::SentNoResponse
            };
            // The upstream may have executed the request: repeat it only if a repeat is harmless.
            if !(is_idempotent(input.method)
                || input.has_idempotency_key
                || input.route_allows_non_idempotent)
            {
                return Err(StopReason::NonIdempotent);
            }
            reason
        }
        Outcome::Status(status) => {
            if !input.retry_on_status.contains(&status.as_u16()) {
                return Err(StopReason::NotRetryable);
            }
            // The upstream received this request and answered. Sending it again is safe for a
            // method whose repetition is harmless by definition, and for a request whose
            // Idempotency-Key makes the upstream de-duplicate repeats (a target that is not
            // ready answers 503 without executing; another target serves it). The route opt-in
            // covers unknown outcomes, not definite ones. See docs/retries.md.
            if !(is_idempotent(input.method) || input.has_idempotency_key) {
                return Err(StopReason::NonIdempotent);
            }
            RetryReason::Status
        }
    };
    replayable(input, reason)
}

fn replayable(input: &RetryInput<'_>, reason: RetryReason) -> Result<RetryReason, StopReason> {
    if input.body_replayable {
        Ok(reason)
    } else {
        Err(StopReason::BodyNotReplayable)
    }
}

/// Attempts and deadline; `None` when a retry fits in both.
fn limits(input: &RetryInput<'_>) -> Option<StopReason> {
    if input.attempts_made > input.max_retries {
        return Some(StopReason::AttemptsExhausted);
    }
    if input.time_left <= input.next_delay {
        return Some(StopReason::DeadlineExceeded);
    }
    None
}
