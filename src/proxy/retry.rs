//! The retry rule (one function) and the retry budget. (Interim version; see docs/retries.md.)

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use http::{HeaderMap, Method, StatusCode};
use tokio::time::Instant;

use super::error::{Cause, UpstreamError};

pub enum Outcome<'a> {
    Failed(&'a UpstreamError),
    Status(StatusCode),
}

pub struct RetryInput<'a> {
    pub method: &'a Method,
    pub has_idempotency_key: bool,
    pub route_allows_non_idempotent: bool,
    pub body_replayable: bool,
    pub outcome: Outcome<'a>,
    pub retry_on_status: &'a [u16],
    pub attempts_made: u32,
    pub max_retries: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    Success,
    ResponseStarted,
    NonIdempotent,
    BodyNotReplayable,
    AttemptsExhausted,
    BudgetExhausted,
    DeadlineExceeded,
}

impl StopReason {
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::Success => "success",
            StopReason::ResponseStarted => "response_started",
            StopReason::NonIdempotent => "non_idempotent",
            StopReason::BodyNotReplayable => "body_not_replayable",
            StopReason::AttemptsExhausted => "attempts_exhausted",
            StopReason::BudgetExhausted => "budget_exhausted",
            StopReason::DeadlineExceeded => "deadline_exceeded",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Retry,
    Stop(StopReason),
}

pub fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

pub fn has_idempotency_key(h: &HeaderMap) -> bool {
    h.contains_key("idempotency-key")
}

pub fn decide(i: &RetryInput) -> Decision {
    let safe = is_idempotent(i.method) || i.has_idempotency_key || i.route_allows_non_idempotent;
    let stop = match &i.outcome {
        Outcome::Status(s) if !i.retry_on_status.contains(&s.as_u16()) => Some(StopReason::Success),
        Outcome::Status(_) if !is_idempotent(i.method) => Some(StopReason::NonIdempotent),
        Outcome::Status(_) if !i.body_replayable => Some(StopReason::BodyNotReplayable),
        Outcome::Status(_) => None,
        Outcome::Failed(e) if !e.request_sent => None,
        Outcome::Failed(e) if e.response_bytes => Some(StopReason::ResponseStarted),
        Outcome::Failed(e) if e.cause == Cause::HttpRequestError => Some(StopReason::NonIdempotent),
        Outcome::Failed(_) if !safe => Some(StopReason::NonIdempotent),
        Outcome::Failed(_) if !i.body_replayable => Some(StopReason::BodyNotReplayable),
        Outcome::Failed(_) => None,
    };
    match stop {
        Some(r) => Decision::Stop(r),
        None if i.attempts_made > i.max_retries => Decision::Stop(StopReason::AttemptsExhausted),
        None => Decision::Retry,
    }
}

/// Per-route retry budget in milli-tokens.
pub struct RetryBudget {
    tokens: AtomicI64,
    ratio_milli: i64,
    per_second: i64,
    start: Instant,
    last_refill_ms: AtomicI64,
}

impl RetryBudget {
    pub fn new(ratio: f64, per_second: u32) -> Self {
        Self {
            tokens: AtomicI64::new(per_second as i64 * 1000),
            ratio_milli: (ratio * 1000.0) as i64,
            per_second: per_second as i64,
            start: Instant::now(),
            last_refill_ms: AtomicI64::new(0),
        }
    }
    pub fn on_request(&self, now: Instant) {
        let ms = now.saturating_duration_since(self.start).as_millis() as i64;
        let last = self.last_refill_ms.swap(ms, Ordering::Relaxed);
        let refill = (ms - last).max(0) * self.per_second;
        let cap = (self.per_second * 1000).max(100_000);
        let add = self.ratio_milli + refill;
        let _ = self
            .tokens
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                Some((t + add).min(cap))
            });
    }
    pub fn try_spend(&self, _now: Instant) -> bool {
        self.tokens
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                (t >= 1000).then_some(t - 1000)
            })
            .is_ok()
    }
}

pub fn backoff(retry_number: u32, rng: &mut fastrand::Rng) -> Duration {
    let cap = Duration::from_millis((5u64 << retry_number.min(6)).min(250));
    Duration::from_micros(rng.u64(..=cap.as_micros() as u64))
}
