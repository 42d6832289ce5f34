//! Tallies failures by cause, by target and by minute, and cuts the timeline into episodes.
//!
//! An episode is a run of minutes with failures and gaps of at most [`EPISODE_GAP`] minutes:
//! a deploy that refuses connections for two minutes is one episode, a target that has been down
//! all night is another. Each gets a likely root cause from its dominant cause, target and length.

use std::collections::{BTreeMap, HashMap};

use super::view::client_label;
pub use super::view::{cause_label, FileView, RETRIED_UNNAMED, UPSTREAM_5XX};
use super::{causes, Failure, Format, Line, Minute};
use crate::cause::Cause;

/// Minutes without failure that still belong to the same episode.
pub const EPISODE_GAP: i64 = 2;
/// Unknown lines kept verbatim (the first ones) so a user can see what was not understood.
pub const UNKNOWN_SAMPLES: usize = 5;
const REQUEST_SAMPLES: usize = 3;

/// `None` is a proxy-made 5xx of unknown reason.
pub type CauseKey = Option<Cause>;

#[derive(Debug, Clone, Default)]
pub struct FileStats {
    pub path: String,
    pub format: Option<Format>,
    pub lines: u64,
    pub unknown: u64,
    /// This file's own view; files are never added together (an nginx error log and its access
    /// log tell the same failure twice).
    pub view: FileView,
}

#[derive(Debug, Clone, Default)]
pub struct CauseTally {
    pub count: u64,
    pub recovered: u64,
    pub codes: HashMap<String, u64>,
    pub requests: Vec<String>,
}

#[derive(Debug, Clone, Default)]
pub struct TargetTally {
    pub count: u64,
    pub recovered: u64,
    pub causes: BTreeMap<CauseKey, u64>,
}

#[derive(Debug, Clone, Default)]
pub struct MinuteTally {
    pub count: u64,
    pub causes: BTreeMap<CauseKey, u64>,
    pub targets: HashMap<String, u64>,
}

/// A run of failing minutes with its likely root cause.
#[derive(Debug, Clone, PartialEq)]
pub struct Episode {
    pub start: Minute,
    pub end: Minute,
    pub count: u64,
    pub cause: CauseKey,
    pub cause_share: f64,
    pub target: Option<String>,
    pub diagnosis: String,
}

/// Everything `explain` learned from its input.
#[derive(Debug, Default)]
pub struct Report {
    pub files: Vec<FileStats>,
    pub unknown_samples: Vec<String>,
    pub by_cause: BTreeMap<CauseKey, CauseTally>,
    pub by_target: HashMap<String, TargetTally>,
    pub timeline: BTreeMap<Minute, MinuteTally>,
    pub undated: u64,
    /// Attempts a retry hid whose failure the log does not name; kept apart from `unclassified`
    /// (a proxy-made 5xx a client saw), which they are not.
    pub retried_unnamed: CauseTally,
    /// The last client-visible failure of the line being parsed (its cause is the response's).
    last_failure: Option<CauseKey>,
    /// An nginx access log with `$upstream_addr`/`$upstream_status` was read (no advice to add
    /// them, even when the failures that showed it were joined with the error log's).
    pub upstream_fields_seen: bool,
    /// The format of the line being parsed (a file may interleave formats).
    pub line_format: Option<Format>,
    /// nginx failures told by both the error log and the access log, counted once.
    pub join: super::join::NginxJoin,
}

impl Report {
    /// Starts the tally of a new input.
    pub fn begin_file(&mut self, path: &str, format: Option<Format>) {
        self.files.push(FileStats {
            path: path.to_string(),
            format,
            ..FileStats::default()
        });
    }

    /// Counts one line of the current file (after its failures went to [`Report::failure`]).
    pub fn line(&mut self, number: u64, text: &str, parsed: Line) {
        let Some(file) = self.files.last_mut() else {
            return;
        };
        file.lines += 1;
        let mut labelled = None;
        if let Line::Request(_, status) = parsed {
            file.view.requests += 1;
            if status >= 500 {
                labelled = self.last_failure.map(|_| status);
                let label = client_label(self.last_failure);
                *file
                    .view
                    .failed
                    .entry(status)
                    .or_default()
                    .entry(label)
                    .or_default() += 1;
            }
        }
        self.last_failure = None;
        self.join.end_line(labelled);
        if parsed == Line::Unknown {
            file.unknown += 1;
            if self.unknown_samples.len() < UNKNOWN_SAMPLES {
                let cut = text.char_indices().nth(200).map_or(text.len(), |(i, _)| i);
                self.unknown_samples
                    .push(format!("{}:{number}: {}", file.path, &text[..cut]));
            }
        }
    }

    /// Adds one failure.
    pub fn failure(&mut self, f: &Failure<'_>) {
        let current = self.files.len().saturating_sub(1);
        if self.line_format == Some(Format::NginxAccess) && f.target.is_some() {
            self.upstream_fields_seen = true;
        }
        self.join.failure(self.line_format, current, f);
        if let Some(file) = self.files.last_mut() {
            file.view.attempts += 1;
            if f.recovered {
                *file
                    .view
                    .hidden
                    .entry(cause_label(f.cause, true))
                    .or_default() += 1;
            } else {
                self.last_failure = Some(f.cause);
            }
        }
        // Only named (or client-visible) failures go under a cause; by target and by minute the
        // rest is `count` minus the causes' sum.
        let unnamed = f.cause.is_none() && f.recovered;
        let tally = if unnamed {
            &mut self.retried_unnamed
        } else {
            self.by_cause.entry(f.cause).or_default()
        };
        tally.count += 1;
        tally.recovered += u64::from(f.recovered);
        bump(&mut tally.codes, f.code);
        if let (Some(req), true) = (f.request, tally.requests.len() < REQUEST_SAMPLES) {
            if !tally.requests.iter().any(|r| r == req) {
                tally.requests.push(req.to_string());
            }
        }
        let target = f.target.unwrap_or("-");
        let t = match self.by_target.get_mut(target) {
            Some(t) => t,
            None => self.by_target.entry(target.to_string()).or_default(),
        };
        t.count += 1;
        t.recovered += u64::from(f.recovered);
        if !unnamed {
            *t.causes.entry(f.cause).or_default() += 1;
        }
        match f.minute {
            Some(m) => {
                let slot = self.timeline.entry(m).or_default();
                slot.count += 1;
                if !unnamed {
                    *slot.causes.entry(f.cause).or_default() += 1;
                }
                bump(&mut slot.targets, target);
            }
            None => self.undated += 1,
        }
    }

    /// Failed attempts, every file together (an attempt in an error log and the same one in its
    /// access log count twice here: the per-file [`FileView`]s are the honest counts).
    pub fn failures(&self) -> u64 {
        self.by_cause.values().map(|t| t.count).sum::<u64>() + self.retried_unnamed.count
    }

    /// Requests that failed for clients, from the access-type files (one line per request). An
    /// error log has no client view: its attempts are reported apart, never added to these.
    pub fn client_failures(&self) -> u64 {
        self.files.iter().map(|f| f.view.failed_requests()).sum()
    }

    /// Failed attempts a retry hid from clients, from the access-type files.
    pub fn hidden_attempts(&self) -> u64 {
        self.files.iter().map(|f| f.view.hidden_attempts()).sum()
    }

    /// Failed attempts in files without a client view (nginx error logs).
    pub fn error_log_attempts(&self) -> u64 {
        self.files
            .iter()
            .filter(|f| f.view.requests == 0)
            .map(|f| f.view.attempts)
            .sum()
    }

    pub fn lines(&self) -> u64 {
        self.files.iter().map(|f| f.lines).sum()
    }

    pub fn unknown(&self) -> u64 {
        self.files.iter().map(|f| f.unknown).sum()
    }

    /// Causes by count, largest first (ties by name, so output is stable).
    pub fn causes_ranked(&self) -> Vec<(CauseKey, &CauseTally)> {
        let mut v: Vec<_> = self.by_cause.iter().map(|(k, t)| (*k, t)).collect();
        v.sort_by(|a, b| b.1.count.cmp(&a.1.count).then(a.0.cmp(&b.0)));
        v
    }

    /// Targets by count, largest first.
    pub fn targets_ranked(&self) -> Vec<(&str, &TargetTally)> {
        let mut v: Vec<_> = self
            .by_target
            .iter()
            .map(|(k, t)| (k.as_str(), t))
            .collect();
        v.sort_by(|a, b| b.1.count.cmp(&a.1.count).then(a.0.cmp(b.0)));
        v
    }

    /// Minutes whose failure count stands out: at least 5 and 3 × the median failing minute.
    pub fn bursts(&self) -> Vec<Minute> {
        let mut counts: Vec<u64> = self.timeline.values().map(|m| m.count).collect();
        counts.sort_unstable();
        let median = counts
            .get(counts.len().saturating_sub(1) / 2)
            .copied()
            .unwrap_or(0);
        let floor = (3 * median).max(5);
        self.timeline
            .iter()
            .filter(|(_, m)| m.count >= floor && counts.len() > 1)
            .map(|(k, _)| *k)
            .collect()
    }

    /// The timeline cut into episodes, in time order.
    pub fn episodes(&self) -> Vec<Episode> {
        let mut out = Vec::new();
        let mut run: Vec<(&Minute, &MinuteTally)> = Vec::new();
        for (m, tally) in &self.timeline {
            if let Some((last, _)) = run.last() {
                if m.index() - last.index() > EPISODE_GAP + 1 {
                    out.push(episode(&run));
                    run.clear();
                }
            }
            run.push((m, tally));
        }
        if !run.is_empty() {
            out.push(episode(&run));
        }
        out
    }
}

fn bump(map: &mut HashMap<String, u64>, key: &str) {
    match map.get_mut(key) {
        Some(n) => *n += 1,
        None => {
            map.insert(key.to_string(), 1);
        }
    }
}

fn episode(run: &[(&Minute, &MinuteTally)]) -> Episode {
    let mut causes: BTreeMap<CauseKey, u64> = BTreeMap::new();
    let mut targets: HashMap<&str, u64> = HashMap::new();
    let mut count = 0;
    for (_, t) in run {
        count += t.count;
        for (c, n) in &t.causes {
            *causes.entry(*c).or_default() += n;
        }
        for (target, n) in &t.targets {
            *targets.entry(target).or_default() += n;
        }
    }
    if causes.is_empty() {
        // Only attempts a retry hid, none of them named by the log.
        let (start, end) = (*run[0].0, *run[run.len() - 1].0);
        return Episode {
            start,
            end,
            count,
            cause: None,
            cause_share: 0.0,
            target: None,
            diagnosis: format!("{count} attempt(s) failed and were retried with success; the log does not say why they failed"),
        };
    }
    let (cause, cn) = causes
        .iter()
        .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
        .map_or((None, 0), |(c, n)| (*c, *n));
    let top_target = targets
        .iter()
        .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)));
    // A target is "the" culprit only when it holds most of the episode's failures.
    let target = top_target
        .filter(|(t, n)| **n * 2 > count && **t != "-")
        .map(|(t, _)| t.to_string());
    let (start, end) = (*run[0].0, *run[run.len() - 1].0);
    let minutes = end.index() - start.index() + 1;
    let share = cn as f64 / count as f64;
    Episode {
        start,
        end,
        count,
        cause,
        cause_share: share,
        diagnosis: if share < 0.5 {
            mixed(&causes, target.as_deref(), minutes)
        } else {
            diagnose(cause, target.as_deref(), minutes)
        },
        target,
    }
}

/// No cause holds half of the episode: several things broke at once, or a test run.
fn mixed(causes: &BTreeMap<CauseKey, u64>, target: Option<&str>, minutes: i64) -> String {
    let on = target.map_or_else(|| "several targets".to_string(), |t| t.to_string());
    format!(
        "{} different causes on {on} within {minutes} minute(s): no single root cause; read each cause below",
        causes.len()
    )
}

/// The likely root cause of an episode, in one sentence.
pub fn diagnose(cause: CauseKey, target: Option<&str>, minutes: i64) -> String {
    let who = target.map_or_else(|| "several targets".to_string(), |t| t.to_string());
    let span = if minutes == 1 {
        "1 minute".to_string()
    } else {
        format!("{minutes} minutes")
    };
    match cause {
        Some(Cause::ConnectionRefused | Cause::ConnectionTerminated) if minutes <= 5 => format!(
            "{who} stopped accepting or dropped connections for {span}: a restart or deploy without draining"
        ),
        Some(Cause::ConnectionRefused) => format!("{who} refused connections for {span}: it is down or listens elsewhere"),
        Some(Cause::DestinationUnavailable) => format!("every target was marked down for {span}: the whole pool failed its checks"),
        Some(Cause::ConnectionTimeout | Cause::HttpResponseTimeout) => {
            format!("{who} was too slow for {span}: overloaded or unreachable")
        }
        _ => format!("{} on {who} for {span}: {}", causes::name(cause), causes::advice(cause).meaning),
    }
}

impl Minute {
    /// Minutes since 1970-01-01 (proleptic Gregorian), for gaps between minutes.
    pub fn index(&self) -> i64 {
        let n = |r: std::ops::Range<usize>| -> i64 {
            self.0[r]
                .iter()
                .fold(0, |acc, d| acc * 10 + i64::from(d.wrapping_sub(b'0') % 10))
        };
        let (y, m, d) = (n(0..4), n(5..7).clamp(1, 12), n(8..10));
        // Days from civil (Howard Hinnant's algorithm).
        let y = if m <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = era * 146_097 + doe - 719_468;
        days * 1440 + n(11..13) * 60 + n(14..16)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minute(s: &str) -> Minute {
        Minute(s.as_bytes().try_into().unwrap())
    }

    #[test]
    fn minute_index_crosses_days_and_months() {
        assert_eq!(minute("1970-01-01T00:01").index(), 1);
        assert_eq!(
            minute("2026-03-01T00:00").index() - minute("2026-02-28T23:59").index(),
            1
        );
        assert_eq!(
            minute("2024-03-01T00:00").index() - minute("2024-02-28T00:00").index(),
            2 * 1440
        );
    }

    #[test]
    fn episodes_split_on_gaps_and_name_the_culprit() {
        let mut r = Report::default();
        r.begin_file("x", Some(Format::Gatewise));
        let mut add = |m: &str, cause, target| {
            let f = Failure {
                minute: Some(minute(m)),
                cause: Some(cause),
                status: None,
                code: "c",
                target: Some(target),
                request: None,
                recovered: false,
            };
            r.failure(&f);
        };
        for _ in 0..10 {
            add("2026-11-21T12:00", Cause::ConnectionRefused, "a:1");
            add("2026-11-21T12:01", Cause::ConnectionRefused, "a:1");
        }
        add("2026-11-21T12:03", Cause::ConnectionTerminated, "a:1");
        add("2026-11-21T13:00", Cause::HttpResponseTimeout, "b:1");
        let eps = r.episodes();
        assert_eq!(eps.len(), 2);
        assert_eq!(
            (eps[0].count, eps[0].cause, eps[0].target.as_deref()),
            (21, Some(Cause::ConnectionRefused), Some("a:1"))
        );
        assert!(
            eps[0].diagnosis.contains("restart or deploy"),
            "{}",
            eps[0].diagnosis
        );
        assert_eq!(eps[1].count, 1);
        assert_eq!(
            r.bursts(),
            vec![minute("2026-11-21T12:00"), minute("2026-11-21T12:01")]
        );
    }
}
