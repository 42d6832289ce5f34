//! gatewise's own access log: one JSON object per request, causes already named.
//!
//! Every failed attempt becomes a [`Failure`]; when the request still succeeded (top-level `cause`
//! absent or null) those failures are `recovered` — a retry hid them from the client. A request
//! that failed without any attempt (no healthy target, queue full) is one failure of its own.

use std::borrow::Cow;

use serde::Deserialize;

use super::{time, Failure, Line};
use crate::cause::Cause;

#[derive(Deserialize)]
struct Attempt<'a> {
    #[serde(borrow, default)]
    target: Option<&'a str>,
    #[serde(borrow, default)]
    cause: Option<&'a str>,
}

#[derive(Deserialize)]
struct Entry<'a> {
    #[serde(borrow)]
    time: &'a str,
    status: u16,
    #[serde(borrow, default)]
    path: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    target: Option<&'a str>,
    #[serde(borrow, default)]
    cause: Option<&'a str>,
    #[serde(borrow, default)]
    attempts: Vec<Attempt<'a>>,
}

/// Parses one line of a gatewise access log.
pub fn parse<'a>(line: &'a str, sink: &mut dyn FnMut(Failure<'a>)) -> Line {
    if !line.starts_with('{') {
        return Line::Unknown;
    }
    let Ok(entry) = serde_json::from_str::<Entry<'a>>(line) else {
        return Line::Unknown;
    };
    let Some(minute) = time::ymd(entry.time.as_bytes()) else {
        return Line::Unknown;
    };
    let token = |t: Option<&str>| -> Result<Option<Cause>, ()> {
        t.map(|t| Cause::from_token(t).ok_or(())).transpose()
    };
    let Ok(final_cause) = token(entry.cause) else {
        return Line::Unknown;
    };
    let request = match &entry.path {
        Some(Cow::Borrowed(p)) => Some(*p),
        _ => None,
    };
    // Check every token before reporting anything: an unknown line must leave no trace.
    if entry.attempts.iter().any(|a| token(a.cause).is_err()) {
        return Line::Unknown;
    }
    let status = Some(entry.status);
    let mut any = false;
    for attempt in &entry.attempts {
        if let (Ok(Some(cause)), Some(code)) = (token(attempt.cause), attempt.cause) {
            any = true;
            sink(Failure {
                minute: Some(minute),
                cause: Some(cause),
                status,
                code,
                target: attempt.target,
                request,
                recovered: final_cause.is_none(),
            });
        }
    }
    if let (Some(cause), Some(code), false) = (final_cause, entry.cause, any) {
        sink(Failure {
            minute: Some(minute),
            cause: Some(cause),
            status,
            code,
            target: entry.target,
            request,
            recovered: false,
        });
    }
    Line::Request(Some(minute), entry.status)
}

#[cfg(test)]
mod tests {
    use super::*;

    type Seen<'a> = Vec<(Cause, Option<&'a str>, bool)>;

    fn run(line: &str) -> (Line, Seen<'_>) {
        let mut got = Vec::new();
        let l = parse(line, &mut |f| {
            got.push((f.cause.unwrap(), f.target, f.recovered))
        });
        (l, got)
    }

    #[test]
    fn retried_attempts_are_recovered() {
        let l = r#"{"time":"2026-11-21T12:00:00.123Z","request_id":"a","method":"GET","host":"h","path":"/x","route":"r0","upstream":"app","target":"127.0.0.1:3002","status":200,"duration_ms":3,"bytes_in":0,"bytes_out":5,"cause":null,"attempts":[{"target":"127.0.0.1:3001","cause":"connection_refused","request_sent":false,"reused":false,"duration_ms":1},{"target":"127.0.0.1:3002","cause":null,"request_sent":true,"reused":false,"duration_ms":2}]}"#;
        assert_eq!(
            run(l).1,
            vec![(Cause::ConnectionRefused, Some("127.0.0.1:3001"), true)]
        );
    }

    #[test]
    fn failure_without_attempts_counts_once() {
        let l = r#"{"time":"2026-11-21T12:00:00.123Z","status":503,"path":"/x","target":null,"cause":"destination_unavailable","attempts":[]}"#;
        assert_eq!(run(l).1, vec![(Cause::DestinationUnavailable, None, false)]);
        let bad = r#"{"time":"2026-11-21T12:00:00.123Z","status":502,"cause":"gremlins"}"#;
        assert_eq!(run(bad).0, Line::Unknown);
    }
}
