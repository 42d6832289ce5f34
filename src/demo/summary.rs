//! Counting what happened, from the gateway's own access log: every request's final status and
//! cause, and every attempt that failed on the way. A request that ended 2xx after a failed
//! attempt is a failure the gateway absorbed; one that did not is a client-visible error.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{mpsc, Arc, Mutex};

use serde::Deserialize;
use tokio::sync::Notify;

/// The fields of an access-log line the demo reads.
#[derive(Deserialize)]
struct Line {
    #[serde(default)]
    method: String,
    status: u16,
    cause: Option<String>,
    #[serde(default)]
    attempts: Vec<AttemptLine>,
}

#[derive(Deserialize)]
struct AttemptLine {
    cause: Option<String>,
    status: Option<u16>,
}

/// Totals over the access log so far.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    /// Requests the gateway logged.
    pub logged: u64,
    pub ok: u64,
    /// Non-2xx answers by cause (`upstream <status>` when the upstream itself answered so).
    pub errors: BTreeMap<String, u64>,
    /// Requests answered 2xx although an attempt failed on the way.
    pub absorbed: u64,
    /// The failed attempts behind those, by cause.
    pub absorbed_by_cause: BTreeMap<String, u64>,
    /// Errors that were an upstream's own 5xx answer to a `POST` (never resent, by design).
    pub post_answered_5xx: u64,
}

impl Tally {
    /// Adds one JSON access-log line; a line that does not parse is ignored.
    pub fn add(&mut self, line: &[u8]) {
        let Ok(line) = serde_json::from_slice::<Line>(line) else {
            return;
        };
        self.logged += 1;
        let failed: Vec<String> = line
            .attempts
            .iter()
            .filter_map(|a| match (&a.cause, a.status) {
                (Some(cause), _) => Some(cause.clone()),
                (None, Some(s)) if s >= 500 => Some(format!("upstream {s}")),
                _ => None,
            })
            .collect();
        if (200..300).contains(&line.status) {
            self.ok += 1;
            if !failed.is_empty() {
                self.absorbed += 1;
                for cause in failed {
                    *self.absorbed_by_cause.entry(cause).or_default() += 1;
                }
            }
        } else {
            if line.cause.is_none() && line.status >= 500 && line.method == "POST" {
                self.post_answered_5xx += 1;
            }
            let key = line
                .cause
                .unwrap_or_else(|| format!("upstream {}", line.status));
            *self.errors.entry(key).or_default() += 1;
        }
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// Reads access-log lines off `rx` on a thread of its own (the channel is a std one) until the
/// gateway drops its end; signals `changed` after each line.
pub fn collect(rx: mpsc::Receiver<Vec<u8>>, tally: Arc<Mutex<Tally>>, changed: Arc<Notify>) {
    std::thread::Builder::new()
        .name("demo-tally".into())
        .spawn(move || {
            for line in rx {
                tally.lock().expect("tally lock").add(&line);
                changed.notify_waiters();
            }
        })
        .expect("spawn the tally thread");
}

/// `a 3, b 1`, or `none`.
pub fn by_cause(map: &BTreeMap<String, u64>) -> String {
    if map.is_empty() {
        return "none".to_string();
    }
    let mut out = String::new();
    for (cause, n) in map {
        if !out.is_empty() {
            out.push_str(", ");
        }
        let _ = write!(out, "{cause} {n}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_2xx_after_a_failed_attempt_is_absorbed() {
        let mut t = Tally::default();
        t.add(br#"{"status":200,"cause":null,"attempts":[{"cause":"connection_refused","status":null},{"cause":null,"status":200}]}"#);
        t.add(br#"{"status":200,"cause":null,"attempts":[{"cause":null,"status":503},{"cause":null,"status":200}]}"#);
        t.add(br#"{"status":200,"cause":null,"attempts":[{"cause":null,"status":200}]}"#);
        assert_eq!((t.logged, t.ok, t.absorbed), (3, 3, 2));
        assert_eq!(
            by_cause(&t.absorbed_by_cause),
            "connection_refused 1, upstream 503 1"
        );
        assert_eq!(t.error_count(), 0);
    }

    #[test]
    fn errors_are_counted_by_cause_or_upstream_status() {
        let mut t = Tally::default();
        t.add(br#"{"status":503,"cause":"destination_unavailable","attempts":[]}"#);
        t.add(br#"{"method":"POST","status":503,"cause":null,"attempts":[{"cause":null,"status":503}]}"#);
        t.add(b"not json");
        assert_eq!(
            (t.logged, t.ok, t.absorbed, t.post_answered_5xx),
            (2, 0, 0, 1)
        );
        assert_eq!(
            by_cause(&t.errors),
            "destination_unavailable 1, upstream 503 1"
        );
    }
}
