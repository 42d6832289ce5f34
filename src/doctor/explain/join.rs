//! One nginx failure is told twice: by the error log, with its cause ("connect() failed (111…)"),
//! and by the access log, as `$upstream_status 502` for the same request. Read together, each such
//! pair is counted once — under the error log's cause — and when the access log shows the request
//! still ended below 500 (`502, 200`: nginx retried it), the error log's failure is "hidden by a
//! retry".
//!
//! The pair is joined on the request line and the upstream address, within the minute the access
//! log wrote (the error comes first: same minute or the one before). A failure with no partner
//! stays as its own file tells it.

use std::collections::HashMap;

use super::report::{self, CauseKey, Report};
use super::{Failure, Format, Minute};
use crate::cause::Cause;

/// An access-log failure that may have a partner in the error log.
#[derive(Debug, Clone)]
struct Told {
    file: usize,
    minute: Option<Minute>,
    request: String,
    target: String,
    cause: CauseKey,
    recovered: bool,
    code: String,
    /// The client's status when this failure is what the line's 5xx was labelled with.
    labelled: Option<u16>,
}

#[derive(Debug, Default)]
pub struct NginxJoin {
    /// Error-log failures by request line: target, minute and cause of each not joined yet.
    errors: HashMap<String, Vec<(String, Option<Minute>, Cause)>>,
    access: Vec<Told>,
    /// Index in `access` of the first failure of the line being parsed.
    line_start: usize,
    /// Pairs counted once.
    pub joined: u64,
}

impl NginxJoin {
    /// Remembers a failure of an nginx log line (`format` is the line's).
    pub fn failure(&mut self, format: Option<Format>, file: usize, f: &Failure<'_>) {
        let Some(request) = f.request else {
            return;
        };
        // An access line nginx answered without an upstream (a failed resolve) logs `-`.
        let target = f.target.unwrap_or("-");
        match (format, f.cause) {
            (Some(Format::NginxError), Some(cause)) => self
                .errors
                .entry(request.to_string())
                .or_default()
                .push((target.to_string(), f.minute, cause)),
            (Some(Format::NginxAccess), cause) => self.access.push(Told {
                file,
                minute: f.minute,
                request: request.to_string(),
                target: target.to_string(),
                cause,
                recovered: f.recovered,
                code: f.code.to_string(),
                labelled: None,
            }),
            _ => {}
        }
    }

    /// The line's 5xx was labelled after its last non-recovered failure.
    pub fn end_line(&mut self, labelled: Option<u16>) {
        if let Some(status) = labelled {
            if let Some(last) = self.access[self.line_start..]
                .iter_mut()
                .rev()
                .find(|t| !t.recovered)
            {
                last.labelled = Some(status);
            }
        }
        self.line_start = self.access.len();
    }
}

fn near(access: Option<Minute>, error: Option<Minute>) -> bool {
    match (access, error) {
        (Some(a), Some(e)) => (0..=1).contains(&(a.index() - e.index())),
        _ => true,
    }
}

impl Report {
    /// Counts each nginx failure told by both logs once (call after the last file).
    pub fn join_nginx(&mut self) {
        let mut join = std::mem::take(&mut self.join);
        for told in std::mem::take(&mut join.access) {
            let Some(errors) = join.errors.get_mut(&told.request) else {
                continue;
            };
            let same = |t: &str| told.target == "-" || t == told.target;
            let Some(i) = errors
                .iter()
                .position(|(t, m, _)| same(t) && near(told.minute, *m))
            else {
                continue;
            };
            let (_, _, cause) = errors.remove(i);
            self.forget(&told);
            join.joined += 1;
            let label = cause.as_str();
            let view = &mut self.files[told.file].view;
            if told.recovered {
                // The error log's failure was hidden from the client by nginx's retry.
                self.by_cause.entry(Some(cause)).or_default().recovered += 1;
                if let Some(t) = self.by_target.get_mut(&told.target) {
                    t.recovered += 1;
                }
                decrement(&mut view.hidden, report::RETRIED_UNNAMED);
                *view.hidden.entry(label).or_default() += 1;
            } else if let Some(status) = told.labelled {
                let by = view.failed.entry(status).or_default();
                decrement(by, report::cause_label(told.cause, false));
                *by.entry(label).or_default() += 1;
            }
        }
        self.join = join;
    }

    /// Takes back the tallies of an access-log failure the error log already counted.
    fn forget(&mut self, t: &Told) {
        let unnamed = t.cause.is_none() && t.recovered;
        let tally = if unnamed {
            Some(&mut self.retried_unnamed)
        } else {
            self.by_cause.get_mut(&t.cause)
        };
        if let Some(tally) = tally {
            tally.count = tally.count.saturating_sub(1);
            tally.recovered = tally.recovered.saturating_sub(u64::from(t.recovered));
            if let Some(n) = tally.codes.get_mut(&t.code) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    tally.codes.remove(&t.code);
                }
            }
            if tally.count == 0 && !unnamed {
                self.by_cause.remove(&t.cause);
            }
        }
        if let Some(target) = self.by_target.get_mut(&t.target) {
            target.count = target.count.saturating_sub(1);
            target.recovered = target.recovered.saturating_sub(u64::from(t.recovered));
            if !unnamed {
                decrement(&mut target.causes, t.cause);
            }
            if target.count == 0 {
                self.by_target.remove(&t.target);
            }
        }
        if let Some(slot) = t.minute.and_then(|m| self.timeline.get_mut(&m)) {
            slot.count = slot.count.saturating_sub(1);
            if !unnamed {
                decrement(&mut slot.causes, t.cause);
            }
            if let Some(n) = slot.targets.get_mut(&t.target) {
                *n = n.saturating_sub(1);
            }
            if slot.count == 0 {
                if let Some(m) = t.minute {
                    self.timeline.remove(&m);
                }
            }
        }
    }
}

fn decrement<K: Ord>(map: &mut std::collections::BTreeMap<K, u64>, key: K) {
    if let Some(n) = map.get_mut(&key) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            map.remove(&key);
        }
    }
}
