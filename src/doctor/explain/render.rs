//! Prints a [`Report`]: a text page for people, or one JSON document (`--json`) for scripts.
//!
//! Both carry the same facts: totals by cause with what to check and the fix, totals by target,
//! the per-minute timeline with bursts marked, the episodes with their likely root cause, and
//! the lines that were not understood.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Write};

use serde_json::{json, Map, Value};

use crate::cause::Cause;

use super::causes::{self, advice};
use super::report::{CauseKey, CauseTally, FileView, Report, RETRIED_UNNAMED};

/// Version of the `--json` document (docs/explain.md, "JSON schema"); bumped on any change that
/// can break a reader.
pub const SCHEMA: &str = "gatewise.explain/2";

/// Timeline rows printed in text; the busiest are kept, JSON has all.
const TIMELINE_ROWS: usize = 40;
const BAR: usize = 30;
/// Episodes printed in text; JSON has all.
const FINDINGS: usize = 10;

fn cause_counts(m: &BTreeMap<CauseKey, u64>) -> Vec<(CauseKey, u64)> {
    let mut v: Vec<_> = m.iter().map(|(c, n)| (*c, *n)).collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    v
}

/// `cause n, cause n`; `unnamed` is the part of a count no cause holds (hidden retries).
fn list(v: &[(CauseKey, u64)], unnamed: u64) -> String {
    let mut parts: Vec<String> = v
        .iter()
        .map(|(c, n)| format!("{} {n}", causes::name(*c)))
        .collect();
    if unnamed > 0 {
        parts.push(format!("{RETRIED_UNNAMED} {unnamed}"));
    }
    parts.join(", ")
}

fn unnamed(count: u64, causes: &BTreeMap<CauseKey, u64>) -> u64 {
    count.saturating_sub(causes.values().sum())
}

/// The advice shown for a tally: `unclassified` does not ask for log fields the log has.
fn advice_for(r: &Report, cause: CauseKey, t: &CauseTally) -> causes::Advice {
    // One line with `$upstream_status` shows the format has it (a line nginx answered without
    // an upstream, like a failed resolve, logs `-` there).
    let has_upstream_fields =
        r.upstream_fields_seen || t.codes.keys().any(|c| c.starts_with("upstream_status"));
    if cause.is_none() && has_upstream_fields {
        causes::advice_unclassified_with_upstream_fields()
    } else {
        advice(cause)
    }
}

/// By cause, largest first, then the hidden attempts no cause names: (name, tally, advice).
fn cause_rows(r: &Report) -> Vec<(&'static str, &CauseTally, causes::Advice)> {
    let mut rows: Vec<_> = r
        .causes_ranked()
        .into_iter()
        .map(|(c, t)| (causes::name(c), t, advice_for(r, c, t)))
        .collect();
    if r.retried_unnamed.count > 0 {
        let a = causes::advice_retried_unnamed();
        rows.push((RETRIED_UNNAMED, &r.retried_unnamed, a));
    }
    rows
}

/// The fix of an episode; one made only of unnamed hidden retries has no cause of its own.
fn episode_fix(e: &super::report::Episode) -> &'static str {
    if e.cause.is_none() && e.cause_share == 0.0 {
        causes::advice_retried_unnamed().fix
    } else {
        advice(e.cause).fix
    }
}

/// `503 ×3 (connection_refused 2, upstream_response 1)`, statuses in order.
fn statuses(v: &FileView) -> String {
    v.failed
        .iter()
        .map(|(status, by)| {
            let n: u64 = by.values().sum();
            let why: Vec<String> = by.iter().map(|(l, n)| format!("{l} {n}")).collect();
            format!("{status} ×{n} ({})", why.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn labelled(m: &BTreeMap<&'static str, u64>) -> String {
    m.iter()
        .map(|(l, n)| format!("{l} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn codes_ranked(m: &HashMap<String, u64>) -> Vec<(&str, u64)> {
    let mut v: Vec<_> = m.iter().map(|(c, n)| (c.as_str(), *n)).collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    v
}

/// The human report.
pub fn text(r: &Report, out: &mut dyn Write) -> io::Result<()> {
    let in_error_logs = r.error_log_attempts();
    let mut apart = if in_error_logs > 0 {
        format!(", {in_error_logs} failed attempts in error logs (counted apart)")
    } else {
        String::new()
    };
    if r.join.joined > 0 {
        apart.push_str(&format!(
            ", {} failures told by both an nginx error log and its access log counted once",
            r.join.joined
        ));
    }
    writeln!(
        out,
        "gatewise explain: {} file(s), {} lines: {} requests failed for clients (status >= 500), {} failed attempts hidden by a retry{apart}, {} lines not understood",
        r.files.len(), r.lines(), r.client_failures(), r.hidden_attempts(), r.unknown()
    )?;
    writeln!(
        out,
        "\nFiles (each file's own view; files are never added together)"
    )?;
    for f in &r.files {
        let format = f.format.map_or("unrecognised", |f| f.as_str());
        writeln!(
            out,
            "  {}  {format}  {} lines, {} not understood",
            f.path, f.lines, f.unknown
        )?;
        let v = &f.view;
        if v.requests > 0 {
            writeln!(
                out,
                "    clients: {} requests, {} failed{}{}",
                v.requests,
                v.failed_requests(),
                if v.failed.is_empty() { "" } else { ": " },
                statuses(v)
            )?;
            writeln!(
                out,
                "    hidden by a retry: {} failed attempts{}{}",
                v.hidden_attempts(),
                if v.hidden.is_empty() { "" } else { ": " },
                labelled(&v.hidden)
            )?;
        } else if v.attempts > 0 {
            writeln!(
                out,
                "    {} failed attempts; an error log does not say which ones a retry hid (read the access log's view)",
                v.attempts
            )?;
        }
    }
    if r.failures() == 0 {
        writeln!(out, "\nNo upstream failures found.")?;
    } else {
        writeln!(out, "\nBy cause (failed attempts)")?;
        for (name, t, a) in cause_rows(r) {
            writeln!(
                out,
                "  {name}  {} ({} hidden by a retry)",
                t.count, t.recovered
            )?;
            writeln!(out, "    means: {}", a.meaning)?;
            writeln!(out, "    check: {}", a.check)?;
            writeln!(out, "    fix:   {}", a.fix)?;
            let seen: Vec<String> = codes_ranked(&t.codes)
                .iter()
                .map(|(c, n)| format!("{c} ×{n}"))
                .collect();
            writeln!(out, "    seen as: {}", seen.join(", "))?;
            if !t.requests.is_empty() {
                writeln!(out, "    e.g.: {}", t.requests.join(" | "))?;
            }
        }
        writeln!(out, "\nBy target")?;
        for (target, t) in r.targets_ranked() {
            writeln!(
                out,
                "  {target}  {}  {}",
                t.count,
                list(&cause_counts(&t.causes), unnamed(t.count, &t.causes))
            )?;
        }
        timeline(r, out)?;
        writeln!(out, "\nFindings")?;
        let mut episodes = r.episodes();
        if episodes.len() > FINDINGS {
            writeln!(
                out,
                "  ({} episodes; the {FINDINGS} largest shown, in time order)",
                episodes.len()
            )?;
            episodes.sort_by(|a, b| b.count.cmp(&a.count).then(a.start.cmp(&b.start)));
            episodes.truncate(FINDINGS);
            episodes.sort_by_key(|e| e.start);
        }
        for (i, e) in episodes.iter().enumerate() {
            let span = if e.start == e.end {
                e.start.as_str().to_string()
            } else {
                format!("{} – {}", e.start.as_str(), &e.end.as_str()[11..])
            };
            writeln!(
                out,
                "  {}. {span}: {} failures, {:.0}% {}{}",
                i + 1,
                e.count,
                e.cause_share * 100.0,
                causes::name(e.cause),
                e.target
                    .as_deref()
                    .map(|t| format!(", mostly {t}"))
                    .unwrap_or_default()
            )?;
            writeln!(out, "     likely: {}", e.diagnosis)?;
            writeln!(out, "     fix:    {}", episode_fix(e))?;
        }
        if r.undated > 0 {
            writeln!(
                out,
                "  ({} failures had no timestamp and are not on the timeline)",
                r.undated
            )?;
        }
    }
    if r.unknown() > 0 {
        writeln!(
            out,
            "\nNot understood: {} lines; the first ones:",
            r.unknown()
        )?;
        for s in &r.unknown_samples {
            writeln!(out, "  {s}")?;
        }
    }
    Ok(())
}

fn timeline(r: &Report, out: &mut dyn Write) -> io::Result<()> {
    writeln!(out, "\nTimeline (failures per minute)")?;
    let bursts = r.bursts();
    let max = r
        .timeline
        .values()
        .map(|m| m.count)
        .max()
        .unwrap_or(1)
        .max(1);
    let mut rows: Vec<_> = r.timeline.iter().collect();
    if rows.len() > TIMELINE_ROWS {
        writeln!(
            out,
            "  ({} minutes with failures; the {TIMELINE_ROWS} busiest shown)",
            rows.len()
        )?;
        rows.sort_by(|a, b| b.1.count.cmp(&a.1.count).then(a.0.cmp(b.0)));
        rows.truncate(TIMELINE_ROWS);
        rows.sort_by(|a, b| a.0.cmp(b.0));
    }
    for (minute, m) in rows {
        let len = ((m.count as f64 / max as f64) * BAR as f64).ceil() as usize;
        let mark = if bursts.contains(minute) {
            " burst"
        } else {
            ""
        };
        writeln!(
            out,
            "  {} {:>7} {:<BAR$}{mark}  {}",
            minute.as_str(),
            m.count,
            "#".repeat(len),
            list(&cause_counts(&m.causes), unnamed(m.count, &m.causes))
        )?;
    }
    Ok(())
}

fn counts_obj(v: &[(CauseKey, u64)], unnamed: u64) -> Value {
    let mut m: Map<String, Value> = v
        .iter()
        .map(|(c, n)| (causes::name(*c).to_string(), json!(n)))
        .collect();
    if unnamed > 0 {
        m.insert(RETRIED_UNNAMED.to_string(), json!(unnamed));
    }
    Value::Object(m)
}

fn labelled_obj(m: &BTreeMap<&'static str, u64>) -> Value {
    Value::Object(m.iter().map(|(l, n)| (l.to_string(), json!(n))).collect())
}

fn view_json(v: &FileView) -> Value {
    let failed: Map<String, Value> = v
        .failed
        .iter()
        .map(|(s, by)| (s.to_string(), labelled_obj(by)))
        .collect();
    json!({
        "requests": v.requests, "failed_requests": v.failed_requests(), "failed": failed,
        "hidden_attempts": v.hidden_attempts(), "hidden": labelled_obj(&v.hidden),
        "attempts": v.attempts,
    })
}

/// The whole report as one JSON document.
pub fn to_json(r: &Report) -> Value {
    let bursts = r.bursts();
    let by_cause: Vec<Value> = cause_rows(r)
        .into_iter()
        .map(|(name, t, a)| {
            let status = Cause::from_token(name).map(|c| c.status().as_u16());
            let codes: Map<String, Value> = codes_ranked(&t.codes)
                .into_iter()
                .map(|(k, n)| (k.to_string(), json!(n)))
                .collect();
            json!({
                "cause": name, "count": t.count, "recovered": t.recovered,
                "gatewise_status": status,
                "codes": codes, "requests": t.requests,
                "meaning": a.meaning, "check": a.check, "fix": a.fix,
            })
        })
        .collect();
    let by_target: Vec<Value> = r
        .targets_ranked()
        .into_iter()
        .map(|(k, t)| json!({"target": k, "count": t.count, "recovered": t.recovered, "causes": counts_obj(&cause_counts(&t.causes), unnamed(t.count, &t.causes))}))
        .collect();
    let timeline: Vec<Value> = r
        .timeline
        .iter()
        .map(|(m, t)| json!({"minute": m.as_str(), "count": t.count, "burst": bursts.contains(m), "causes": counts_obj(&cause_counts(&t.causes), unnamed(t.count, &t.causes))}))
        .collect();
    let episodes: Vec<Value> = r
        .episodes()
        .iter()
        .map(|e| {
            json!({
                "start": e.start.as_str(), "end": e.end.as_str(), "count": e.count,
                "cause": causes::name(e.cause), "cause_share": e.cause_share, "target": e.target,
                "diagnosis": e.diagnosis, "fix": episode_fix(e),
            })
        })
        .collect();
    let files: Vec<Value> = r
        .files
        .iter()
        .map(|f| json!({"path": f.path, "format": f.format.map(|f| f.as_str()), "lines": f.lines, "unknown": f.unknown, "view": view_json(&f.view)}))
        .collect();
    json!({
        "schema": SCHEMA,
        "client_failed": r.client_failures(), "hidden": r.hidden_attempts(),
        "error_log_attempts": r.error_log_attempts(), "joined": r.join.joined,
        "files": files, "lines": r.lines(), "failures": r.failures(),
        "recovered": r.by_cause.values().map(|t| t.recovered).sum::<u64>() + r.retried_unnamed.recovered,
        "unknown": r.unknown(), "unknown_samples": r.unknown_samples, "undated": r.undated,
        "by_cause": by_cause, "by_target": by_target, "timeline": timeline, "episodes": episodes,
    })
}

/// `--json`: one document, newline-terminated.
pub fn json(r: &Report, out: &mut dyn Write) -> io::Result<()> {
    serde_json::to_writer_pretty(&mut *out, &to_json(r))?;
    writeln!(out)
}
