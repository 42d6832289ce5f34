//! The retry rule as a table: one row per case, each naming the rule it exercises.

use std::collections::HashSet;
use std::time::Duration;

use http::{HeaderMap, HeaderValue, Method, StatusCode};
use tokio::time::Instant;

use super::*;
use crate::cause::{Cause, Phase, UpstreamError};

use Cause::*;
use Decision::{Retry, Stop};
use Phase::*;
use RetryReason::*;
use StopReason::*;

const DEFAULT_STATUSES: &[u16] = &[502, 503, 504];

enum Ended {
    Err(UpstreamError),
    Status(u16),
}

struct Case {
    name: &'static str,
    method: Method,
    ended: Ended,
    key: bool,
    opt_in: bool,
    replayable: bool,
    statuses: &'static [u16],
    attempts: u32,
    max: u32,
    time_left: Duration,
    delay: Duration,
    want: Decision,
}

/// A failed attempt: cause, phase, request_sent, reused, response_bytes.
fn failed(cause: Cause, phase: Phase, sent: bool, reused: bool, bytes: bool) -> Ended {
    Ended::Err(UpstreamError {
        cause,
        phase,
        request_sent: sent,
        response_bytes: bytes,
        reused,
        unprocessed: false,
        detail: "127.0.0.1:3001".into(),
    })
}

/// An HTTP/2 stream the upstream refused or that lay above its GOAWAY: sent, not processed.
fn unprocessed(reused: bool) -> Ended {
    match failed(ConnectionTerminated, ResponseHead, true, reused, false) {
        Ended::Err(e) => Ended::Err(UpstreamError {
            unprocessed: true,
            ..e
        }),
        status => status,
    }
}

/// Nothing written: connect-time failures.
fn unsent(cause: Cause) -> Ended {
    failed(cause, Connect, false, false, false)
}

/// Written on a pooled connection that then closed with no response byte.
fn reused_closed(cause: Cause) -> Ended {
    failed(cause, ResponseHead, true, true, false)
}

/// Written on a fresh connection, failed with no response byte.
fn fresh_sent(cause: Cause) -> Ended {
    failed(cause, ResponseHead, true, false, false)
}

/// Defaults: replayable body, first attempt, route defaults (2 retries, 30 s left, 5 ms delay).
fn case(name: &'static str, method: Method, ended: Ended, want: Decision) -> Case {
    Case {
        name,
        method,
        ended,
        key: false,
        opt_in: false,
        replayable: true,
        statuses: DEFAULT_STATUSES,
        attempts: 1,
        max: 2,
        time_left: Duration::from_secs(30),
        delay: Duration::from_millis(5),
        want,
    }
}

impl Case {
    fn key(self) -> Self {
        Self { key: true, ..self }
    }
    fn opt_in(self) -> Self {
        Self {
            opt_in: true,
            ..self
        }
    }
    fn unreplayable(self) -> Self {
        Self {
            replayable: false,
            ..self
        }
    }
    fn statuses(self, statuses: &'static [u16]) -> Self {
        Self { statuses, ..self }
    }
    fn attempts(self, attempts: u32, max: u32) -> Self {
        Self {
            attempts,
            max,
            ..self
        }
    }
    fn time(self, left_ms: u64, delay_ms: u64) -> Self {
        Self {
            time_left: Duration::from_millis(left_ms),
            delay: Duration::from_millis(delay_ms),
            ..self
        }
    }

    fn input(&self) -> RetryInput<'_> {
        RetryInput {
            method: &self.method,
            has_idempotency_key: self.key,
            route_allows_non_idempotent: self.opt_in,
            body_replayable: self.replayable,
            outcome: match &self.ended {
                Ended::Err(e) => Outcome::Failed(e),
                Ended::Status(s) => Outcome::Status(StatusCode::from_u16(*s).unwrap()),
            },
            retry_on_status: self.statuses,
            attempts_made: self.attempts,
            max_retries: self.max,
            time_left: self.time_left,
            next_delay: self.delay,
        }
    }
}

#[rustfmt::skip] // one row per line: the table is the specification
fn table() -> Vec<Case> {
    let purge = Method::from_bytes(b"PURGE").unwrap();
    let (get, head, put, post, patch) = (Method::GET, Method::HEAD, Method::PUT, Method::POST, Method::PATCH);
    vec![
        // Nothing written: any method, as long as the body can be sent again.
        case("get refused", get.clone(), unsent(ConnectionRefused), Retry(NotSent)),
        case("post refused", post.clone(), unsent(ConnectionRefused), Retry(NotSent)),
        case("post connect timeout", post.clone(), unsent(ConnectionTimeout), Retry(NotSent)),
        case("post dns", post.clone(), unsent(DnsError), Retry(NotSent)),
        case("post tls handshake", post.clone(), unsent(TlsProtocolError), Retry(NotSent)),
        case("post bad cert", post.clone(), unsent(TlsCertificateError), Retry(NotSent)),
        case("patch pooled conn found closed before write", patch.clone(),
            failed(ConnectionTerminated, RequestSent, false, true, false), Retry(NotSent)),
        case("post handed back unsent by hyper / h2 REFUSED_STREAM", post.clone(),
            failed(HttpProtocolError, RequestSent, false, true, false), Retry(NotSent)),
        case("post refused, body consumed", post.clone(), unsent(ConnectionRefused), Stop(BodyNotReplayable)).unreplayable(),
        // HTTP/2: sent, but the upstream says it never processed it (REFUSED_STREAM, above GOAWAY).
        case("post h2 stream unprocessed", post.clone(), unprocessed(false), Retry(Unprocessed)),
        case("patch h2 stream unprocessed, reused conn", patch.clone(), unprocessed(true), Retry(Unprocessed)),
        case("get h2 stream unprocessed", get.clone(), unprocessed(true), Retry(Unprocessed)),
        case("post h2 stream unprocessed, body consumed", post.clone(), unprocessed(false), Stop(BodyNotReplayable)).unreplayable(),
        case("post h2 stream unprocessed, retries used", post.clone(), unprocessed(true), Stop(AttemptsExhausted)).attempts(3, 2),
        // HTTP/2: a stream reset after the upstream may have processed it is an ordinary failure.
        case("post h2 stream reset (processed?)", post.clone(), fresh_sent(ConnectionTerminated), Stop(NonIdempotent)),
        // Causes a retry cannot fix.
        case("queue full", get.clone(), failed(ConnectionLimitReached, Queue, false, false, false), Stop(NotRetryable)),
        case("no healthy target", get.clone(), failed(DestinationUnavailable, Queue, false, false, false), Stop(NotRetryable)),
        case("no route", get.clone(), failed(DestinationNotFound, Queue, false, false, false), Stop(NotRetryable)),
        case("client body aborted", put.clone(), fresh_sent(HttpRequestError), Stop(NotRetryable)),
        case("internal error", get.clone(), unsent(ProxyInternalError), Stop(NotRetryable)),
        case("upgrade refused", get.clone(), fresh_sent(HttpUpgradeFailed), Stop(NotRetryable)),
        // Keep-alive race: written on a reused connection, closed before any response byte.
        case("get reused closed", get.clone(), reused_closed(ConnectionTerminated), Retry(ReusedConnectionClosed)),
        case("head reused closed", head.clone(), reused_closed(ConnectionTerminated), Retry(ReusedConnectionClosed)),
        case("options reused closed", Method::OPTIONS, reused_closed(ConnectionTerminated), Retry(ReusedConnectionClosed)),
        case("trace reused closed", Method::TRACE, reused_closed(ConnectionTerminated), Retry(ReusedConnectionClosed)),
        case("put reused incomplete", put.clone(), reused_closed(HttpResponseIncomplete), Retry(ReusedConnectionClosed)),
        case("delete reused incomplete", Method::DELETE, reused_closed(HttpResponseIncomplete), Retry(ReusedConnectionClosed)),
        case("post reused closed", post.clone(), reused_closed(ConnectionTerminated), Stop(NonIdempotent)),
        case("post reused closed + key", post.clone(), reused_closed(ConnectionTerminated), Retry(ReusedConnectionClosed)).key(),
        case("patch reused closed + opt-in", patch.clone(), reused_closed(HttpResponseIncomplete), Retry(ReusedConnectionClosed)).opt_in(),
        case("post reused closed + key, body consumed", post.clone(), reused_closed(ConnectionTerminated), Stop(BodyNotReplayable))
            .key().unreplayable(),
        case("get reused closed, body consumed", get.clone(), reused_closed(ConnectionTerminated), Stop(BodyNotReplayable)).unreplayable(),
        // Written and failed without a response: the upstream may have executed it.
        case("get fresh reset", get.clone(), fresh_sent(ConnectionTerminated), Retry(SentNoResponse)),
        case("get fresh per-try timeout", get.clone(), fresh_sent(HttpResponseTimeout), Retry(SentNoResponse)),
        case("get reused per-try timeout is not a close", get.clone(),
            failed(HttpResponseTimeout, ResponseHead, true, true, false), Retry(SentNoResponse)),
        case("post fresh reset", post.clone(), fresh_sent(ConnectionTerminated), Stop(NonIdempotent)),
        case("post fresh per-try timeout", post.clone(), fresh_sent(HttpResponseTimeout), Stop(NonIdempotent)),
        case("post fresh reset + key", post.clone(), fresh_sent(ConnectionTerminated), Retry(SentNoResponse)).key(),
        case("post fresh reset + opt-in", post.clone(), fresh_sent(ConnectionTerminated), Retry(SentNoResponse)).opt_in(),
        case("post fresh reset + opt-in, body consumed", post.clone(), fresh_sent(ConnectionTerminated), Stop(BodyNotReplayable))
            .opt_in().unreplayable(),
        case("extension method fresh reset", purge, fresh_sent(ConnectionTerminated), Stop(NonIdempotent)),
        // Response bytes came back: never a transport retry, whatever the method or opt-in.
        case("get body reset mid-stream", get.clone(),
            failed(ConnectionTerminated, ResponseBody, true, false, true), Stop(ResponseStarted)),
        case("get reused, partial head", get.clone(),
            failed(HttpResponseIncomplete, ResponseHead, true, true, true), Stop(ResponseStarted)),
        case("get malformed head", get.clone(), failed(HttpProtocolError, ResponseHead, true, false, true), Stop(ResponseStarted)),
        case("get oversized head", get.clone(),
            failed(HttpResponseHeaderSectionSize, ResponseHead, true, false, true), Stop(ResponseStarted)),
        case("post + key + opt-in, body reset", post.clone(),
            failed(ConnectionTerminated, ResponseBody, true, true, true), Stop(ResponseStarted)).key().opt_in(),
        // Status retries: idempotent + replayable only.
        case("get 502", get.clone(), Ended::Status(502), Retry(Status)),
        case("get 503", get.clone(), Ended::Status(503), Retry(Status)),
        case("put 504", put.clone(), Ended::Status(504), Retry(Status)),
        case("get 500 not in list", get.clone(), Ended::Status(500), Stop(NotRetryable)),
        case("get 200", get.clone(), Ended::Status(200), Stop(NotRetryable)),
        case("get 503, empty list", get.clone(), Ended::Status(503), Stop(NotRetryable)).statuses(&[]),
        case("get 429 in custom list", get.clone(), Ended::Status(429), Retry(Status)).statuses(&[429]),
        case("get 503 not in custom list", get.clone(), Ended::Status(503), Stop(NotRetryable)).statuses(&[429]),
        case("post 503", post.clone(), Ended::Status(503), Stop(NonIdempotent)),
        case("post 503 + key", post.clone(), Ended::Status(503), Retry(Status)).key(),
        case("post 503 + key, body not buffered", post.clone(), Ended::Status(503), Stop(BodyNotReplayable))
            .key().unreplayable(),
        case("post 500 + key, not in list", post.clone(), Ended::Status(500), Stop(NotRetryable)).key(),
        case("post 503 + key, retries used", post.clone(), Ended::Status(503), Stop(AttemptsExhausted))
            .key().attempts(3, 2),
        case("post 503 + opt-in", post.clone(), Ended::Status(503), Stop(NonIdempotent)).opt_in(),
        case("put 503, body not buffered", put.clone(), Ended::Status(503), Stop(BodyNotReplayable)).unreplayable(),
        // Limits: attempts, then the deadline.
        case("second retry allowed", get.clone(), unsent(ConnectionRefused), Retry(NotSent)).attempts(2, 2),
        case("retries used", get.clone(), unsent(ConnectionRefused), Stop(AttemptsExhausted)).attempts(3, 2),
        case("retries = 0", post.clone(), unsent(ConnectionRefused), Stop(AttemptsExhausted)).attempts(1, 0),
        case("status retries used", get.clone(), Ended::Status(503), Stop(AttemptsExhausted)).attempts(3, 2),
        case("deadline passed", get.clone(), unsent(ConnectionRefused), Stop(DeadlineExceeded)).time(0, 0),
        case("backoff reaches deadline", get.clone(), unsent(ConnectionRefused), Stop(DeadlineExceeded)).time(5, 5),
        case("backoff fits before deadline", get.clone(), unsent(ConnectionRefused), Retry(NotSent)).time(6, 5),
        // Order: the rule's own refusal is reported before any limit.
        case("post fresh reset, retries used", post.clone(), fresh_sent(ConnectionTerminated), Stop(NonIdempotent)).attempts(3, 2),
        case("response started, deadline passed", get.clone(),
            failed(ConnectionTerminated, ResponseBody, true, false, true), Stop(ResponseStarted)).time(0, 0),
        case("unreplayable, deadline passed", get.clone(), unsent(ConnectionRefused), Stop(BodyNotReplayable))
            .unreplayable().time(0, 0),
        case("retries used and deadline passed", get, unsent(ConnectionRefused), Stop(AttemptsExhausted))
            .attempts(3, 2).time(0, 0),
    ]
}

#[test]
fn rule_table() {
    let mut failures = Vec::new();
    for c in table() {
        let got = decide(&c.input());
        if got != c.want {
            failures.push(format!("{}: want {:?}, got {:?}", c.name, c.want, got));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn table_covers_every_reason() {
    let wants: HashSet<Decision> = table().into_iter().map(|c| c.want).collect();
    for r in RetryReason::ALL {
        assert!(wants.contains(&Retry(r)), "no row retries with {r:?}");
    }
    // BudgetExhausted is decided by the budget; see the decide_with_budget tests.
    for s in StopReason::ALL
        .into_iter()
        .filter(|s| *s != BudgetExhausted)
    {
        assert!(wants.contains(&Stop(s)), "no row stops with {s:?}");
    }
}

#[test]
fn tokens_are_distinct_snake_case() {
    let tokens: Vec<&str> = StopReason::ALL
        .iter()
        .map(|s| s.as_str())
        .chain(RetryReason::ALL.iter().map(|r| r.as_str()))
        .collect();
    let unique: HashSet<&str> = tokens.iter().copied().collect();
    assert_eq!(unique.len(), tokens.len());
    for t in tokens {
        assert!(
            t.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
            "{t}"
        );
    }
}

#[test]
fn budget_refusal_is_its_own_stop_reason() {
    let t0 = Instant::now();
    let budget = RetryBudget::new(0.0, 1, t0);
    let c = case(
        "get refused",
        Method::GET,
        unsent(ConnectionRefused),
        Retry(NotSent),
    );
    assert_eq!(decide_with_budget(&c.input(), &budget, t0), Retry(NotSent));
    assert_eq!(
        decide_with_budget(&c.input(), &budget, t0),
        Stop(BudgetExhausted)
    );
    // The next second refills the allowance.
    let t1 = t0 + Duration::from_secs(1);
    assert_eq!(decide_with_budget(&c.input(), &budget, t1), Retry(NotSent));
}

#[test]
fn refused_retries_do_not_spend_budget() {
    let t0 = Instant::now();
    let budget = RetryBudget::new(0.0, 1, t0);
    let post = case(
        "post fresh reset",
        Method::POST,
        fresh_sent(ConnectionTerminated),
        Retry(NotSent),
    );
    assert_eq!(
        decide_with_budget(&post.input(), &budget, t0),
        Stop(NonIdempotent)
    );
    let used = case(
        "retries used",
        Method::GET,
        unsent(ConnectionRefused),
        Retry(NotSent),
    )
    .attempts(3, 2);
    assert_eq!(
        decide_with_budget(&used.input(), &budget, t0),
        Stop(AttemptsExhausted)
    );
    assert_eq!(budget.available(t0), 1);
}

#[test]
fn idempotent_methods_are_the_rfc_9110_set() {
    for m in [
        Method::GET,
        Method::HEAD,
        Method::OPTIONS,
        Method::TRACE,
        Method::PUT,
        Method::DELETE,
    ] {
        assert!(is_idempotent(&m), "{m}");
    }
    for m in [Method::POST, Method::PATCH, Method::CONNECT] {
        assert!(!is_idempotent(&m), "{m}");
    }
    assert!(!is_idempotent(&Method::from_bytes(b"PURGE").unwrap()));
    assert!(
        !is_idempotent(&Method::from_bytes(b"get").unwrap()),
        "methods are case-sensitive"
    );
}

#[test]
fn idempotency_key_must_be_present_and_non_empty() {
    let mut headers = HeaderMap::new();
    assert!(!has_idempotency_key(&headers));
    headers.insert("Idempotency-Key", HeaderValue::from_static(""));
    assert!(!has_idempotency_key(&headers));
    headers.insert("idempotency-key", HeaderValue::from_static("  "));
    assert!(!has_idempotency_key(&headers));
    headers.append(
        "IDEMPOTENCY-KEY",
        HeaderValue::from_static("\"8e03978e-40d5\""),
    );
    assert!(has_idempotency_key(&headers));
    let mut other = HeaderMap::new();
    other.insert("x-idempotency-key", HeaderValue::from_static("abc"));
    assert!(!has_idempotency_key(&other));
}

#[test]
fn refusals_before_a_byte_is_written_are_what_the_outage_hold_takes() {
    let sent = |cause| UpstreamError {
        request_sent: true,
        ..UpstreamError::before_send(cause, RequestSent, "")
    };
    // (error, refused before send?)
    let cases = [
        (
            UpstreamError::before_send(ConnectionRefused, Connect, ""),
            true,
        ),
        (
            UpstreamError::before_send(ConnectionTerminated, Connect, ""),
            true,
        ),
        (
            UpstreamError::before_send(TlsProtocolError, Connect, ""),
            true,
        ),
        // A timeout says "slow or blocked", not "down": the hold is for crashes and restarts.
        (
            UpstreamError::before_send(ConnectionTimeout, Connect, ""),
            false,
        ),
        (UpstreamError::before_send(DnsError, Connect, ""), false),
        (
            UpstreamError::before_send(TlsCertificateError, Connect, ""),
            false,
        ),
        (
            UpstreamError::before_send(DestinationUnavailable, Queue, ""),
            false,
        ),
        (sent(ConnectionTerminated), false),
    ];
    for (err, want) in cases {
        assert_eq!(refused_before_send(&err), want, "{:?}", err.cause);
    }
}

#[test]
fn the_outage_hold_comes_only_after_refusals_and_when_a_retry_has_nowhere_new_to_go() {
    // (this attempt refused before send, untried routable target left, retry rule stopped, hold?)
    let cases = [
        (true, false, false, true), // refused, every routable target tried: hold, no budget spent
        (true, true, false, false), // an untried target is left: the retry rule decides
        (true, true, true, true),   // ...and when it stops (attempts, budget): hold, not 502
        (false, false, false, false), // this attempt sent something or got an answer: no hold
        (false, true, true, false),
        (false, false, true, false),
    ];
    for (refused, untried, stopped, want) in cases {
        assert_eq!(
            hold_instead(refused, untried, stopped),
            want,
            "{refused} {untried} {stopped}"
        );
    }
}
