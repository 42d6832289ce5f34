//! Prints a [`Report`]: a text page for people, or one JSON document (`--json`) for scripts.
//!
//! Both carry the same facts: totals by cause with what to check and the fix, totals by target,
//! the per-minute timeline with bursts marked, the episodes with their likely root cause, and
//! the lines that were not understood.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Write};

use serde_json::{json, Map, Value};

use super::causes::{self, advice};
use super::report::{CauseKey, Report};

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

fn list(v: &[(CauseKey, u64)]) -> String {
    v.iter()
        .map(|(c, n)| format!("{} {n}", causes::name(*c)))
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
    let recovered: u64 = r.by_cause.values().map(|t| t.recovered).sum();
    writeln!(
        out,
        "gatewise explain: {} file(s), {} lines, {} upstream failures ({} hidden from clients by retries), {} lines not understood",
        r.files.len(), r.lines(), r.failures(), recovered, r.unknown()
    )?;
    writeln!(out, "\nFiles")?;
    for f in &r.files {
        let format = f.format.map_or("unrecognised", |f| f.as_str());
        writeln!(
            out,
            "  {}  {format}  {} lines, {} not understood",
            f.path, f.lines, f.unknown
        )?;
    }
    if r.failures() == 0 {
        writeln!(out, "\nNo upstream failures found.")?;
    } else {
        writeln!(out, "\nBy cause")?;
        for (cause, t) in r.causes_ranked() {
            let a = advice(cause);
            writeln!(
                out,
                "  {}  {} ({} retried ok)",
                causes::name(cause),
                t.count,
                t.recovered
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
                list(&cause_counts(&t.causes))
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
            writeln!(out, "     fix:    {}", advice(e.cause).fix)?;
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
            list(&cause_counts(&m.causes))
        )?;
    }
    Ok(())
}

fn counts_obj(v: &[(CauseKey, u64)]) -> Value {
    let m: Map<String, Value> = v
        .iter()
        .map(|(c, n)| (causes::name(*c).to_string(), json!(n)))
        .collect();
    Value::Object(m)
}

/// The whole report as one JSON document.
pub fn to_json(r: &Report) -> Value {
    let bursts = r.bursts();
    let by_cause: Vec<Value> = r
        .causes_ranked()
        .into_iter()
        .map(|(c, t)| {
            let a = advice(c);
            let codes: Map<String, Value> = codes_ranked(&t.codes)
                .into_iter()
                .map(|(k, n)| (k.to_string(), json!(n)))
                .collect();
            json!({
                "cause": causes::name(c), "count": t.count, "recovered": t.recovered,
                "gatewise_status": c.map(|c| c.status().as_u16()),
                "codes": codes, "requests": t.requests,
                "meaning": a.meaning, "check": a.check, "fix": a.fix,
            })
        })
        .collect();
    let by_target: Vec<Value> = r
        .targets_ranked()
        .into_iter()
        .map(|(k, t)| json!({"target": k, "count": t.count, "recovered": t.recovered, "causes": counts_obj(&cause_counts(&t.causes))}))
        .collect();
    let timeline: Vec<Value> = r
        .timeline
        .iter()
        .map(|(m, t)| json!({"minute": m.as_str(), "count": t.count, "burst": bursts.contains(m), "causes": counts_obj(&cause_counts(&t.causes))}))
        .collect();
    let episodes: Vec<Value> = r
        .episodes()
        .iter()
        .map(|e| {
            json!({
                "start": e.start.as_str(), "end": e.end.as_str(), "count": e.count,
                "cause": causes::name(e.cause), "cause_share": e.cause_share, "target": e.target,
                "diagnosis": e.diagnosis, "fix": advice(e.cause).fix,
            })
        })
        .collect();
    let files: Vec<Value> = r
        .files
        .iter()
        .map(|f| json!({"path": f.path, "format": f.format.map(|f| f.as_str()), "lines": f.lines, "unknown": f.unknown}))
        .collect();
    json!({
        "files": files, "lines": r.lines(), "failures": r.failures(),
        "recovered": r.by_cause.values().map(|t| t.recovered).sum::<u64>(),
        "unknown": r.unknown(), "unknown_samples": r.unknown_samples, "undated": r.undated,
        "by_cause": by_cause, "by_target": by_target, "timeline": timeline, "episodes": episodes,
    })
}

/// `--json`: one document, newline-terminated.
pub fn json(r: &Report, out: &mut dyn Write) -> io::Result<()> {
    serde_json::to_writer_pretty(&mut *out, &to_json(r))?;
    writeln!(out)
}
