//! The status document: routes, upstreams, every target with its state, load and recent causes,
//! the last reload. One JSON value ([`document`]) is the source; the HTML page ([`html`]) renders
//! it for a person (refreshing itself), so the two never disagree and a field added to the JSON
//! shows up on the page.

use std::fmt::Write;

use serde_json::{json, Map, Value};

use crate::gateway::Shared;

/// How often the HTML page reloads itself.
pub const REFRESH_SECONDS: u32 = 2;

fn rfc3339(t: std::time::SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// The `/status` document.
pub fn document(shared: &Shared) -> Value {
    let snapshot = shared.snapshot.load();
    let routes: Vec<Value> = snapshot
        .routes
        .iter()
        .map(|r| {
            json!({
                "name": &*r.name,
                "listener": r.config.listener,
                "host": r.config.host.to_string(),
                "path_prefix": r.config.path_prefix,
                "upstream": &*r.upstream.name,
            })
        })
        .collect();
    let listeners: Vec<Value> = snapshot
        .config
        .listeners
        .iter()
        .map(|l| json!({ "name": l.name, "listen": l.listen.to_string() }))
        .collect();
    let upstreams: Map<String, Value> = snapshot
        .upstreams
        .iter()
        .map(|(name, up)| {
            let targets: Vec<Value> = up
                .targets
                .iter()
                .map(|t| {
                    let last = t
                        .last_change()
                        .map(|(at, what)| json!({ "at": rfc3339(at), "change": what }));
                    let (counts, latest) = t.counters.causes();
                    let causes: Map<String, Value> = counts
                        .into_iter()
                        .map(|(c, n)| (c.as_str().to_string(), json!(n)))
                        .collect();
                    let latest =
                        latest.map(|(at, c)| json!({ "at": rfc3339(at), "cause": c.as_str() }));
                    let limits = t.pool.idle_limits();
                    let ms = |d: Option<std::time::Duration>| d.map(|d| d.as_millis() as u64);
                    json!({
                        "target": &*t.addr,
                        "state": t.state().as_str(),
                        "in_flight": t.in_flight(),
                        "idle_connections": t.pool.idle_count(),
                        "idle_limit_ms": {
                            "configured": ms(Some(limits.configured)),
                            "announced": ms(limits.announced),
                            "learned": ms(limits.learned),
                        },
                        "last_change": last,
                        "causes": causes,
                        "last_cause": latest,
                    })
                })
                .collect();
            let doc = json!({
                "balance": match up.config.balance {
                    crate::config::Balance::RoundRobin => "round_robin",
                    crate::config::Balance::LeastRequest => "least_request",
                    crate::config::Balance::PeakEwma => "peak_ewma",
                },
                "queue_depth": up.queue_depth(),
                "held": up.hold.depth(),
                "never_healthy": up.never_healthy(),
                "discovery": shared.discovery.get(name),
                "targets": targets,
            });
            (name.clone(), doc)
        })
        .collect();
    let now = std::time::SystemTime::now();
    let certificates: Map<String, Value> = shared
        .certificates
        .load()
        .iter()
        .map(|(listener, store)| {
            let certs: Vec<Value> = store
                .infos()
                .iter()
                .map(|c| {
                    json!({
                        "names": c.names,
                        "subject": c.subject,
                        "not_after": humantime::format_rfc3339(c.not_after).to_string(),
                        "seconds_to_expiry": c.seconds_left(now),
                    })
                })
                .collect();
            (listener.clone(), Value::from(certs))
        })
        .collect();
    let ready = shared.not_ready();
    json!({
        "ready": ready.is_none(),
        "not_ready_reason": ready,
        "generation": snapshot.generation,
        "last_reload": shared.reloads.last(),
        "listeners": listeners,
        "routes": routes,
        "upstreams": upstreams,
        "certificates": certificates,
    })
}

/// `s` with `&`, `<`, `>` and `"` escaped.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

/// A cell: text as is, objects as `key: value` lines, nothing for null.
fn cell(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => escape(s),
        Value::Object(map) if map.is_empty() => String::new(),
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| format!("{}: {}", escape(k), cell(v)))
            .collect::<Vec<_>>()
            .join("<br>"),
        Value::Array(items) => items.iter().map(cell).collect::<Vec<_>>().join(", "),
        other => escape(&other.to_string()),
    }
}

/// A table of objects: a column per key any row has, names and states first.
fn table(out: &mut String, class: &str, rows: &[Value]) {
    let mut columns: Vec<&str> = vec!["name", "target", "state"];
    columns.retain(|c| rows.iter().any(|r| r.get(*c).is_some()));
    for row in rows {
        if let Value::Object(map) = row {
            for k in map.keys() {
                if !columns.contains(&k.as_str()) {
                    columns.push(k);
                }
            }
        }
    }
    let _ = write!(out, "<table class=\"{class}\"><thead><tr>");
    for c in &columns {
        let _ = write!(out, "<th>{}</th>", escape(&c.replace('_', " ")));
    }
    out.push_str("</tr></thead><tbody>");
    for row in rows {
        let state = row.get("state").and_then(Value::as_str).unwrap_or("");
        let _ = write!(out, "<tr class=\"state-{}\">", escape(state));
        for c in &columns {
            let v = row.get(*c).unwrap_or(&Value::Null);
            let _ = write!(out, "<td data-field=\"{}\">{}</td>", escape(c), cell(v));
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table>");
}

/// The status page for a person: the same document as HTML, refreshing itself.
pub fn html(doc: &Value) -> String {
    let mut out = String::with_capacity(8 * 1024);
    let ready = doc["ready"].as_bool().unwrap_or(false);
    let _ = write!(
        out,
        "<!doctype html><html><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECONDS}\">\
         <title>gatewise status</title><style>\
         body{{font-family:system-ui,sans-serif;margin:1.5em;color:#222}}\
         table{{border-collapse:collapse;margin:.5em 0 1.5em}}\
         th,td{{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top;font-size:14px}}\
         th{{background:#f3f3f3}} .ready{{color:#176617}} .not-ready{{color:#b00020}}\
         tr.state-healthy td[data-field=state]{{background:#d9f2d9}}\
         tr.state-starting td[data-field=state]{{background:#fff4cc}}\
         tr.state-unhealthy td[data-field=state],tr.state-ejected td[data-field=state]{{background:#f8d7da}}\
         tr.state-draining td[data-field=state]{{background:#e2e3e5}}\
         </style></head><body><h1>gatewise</h1>"
    );
    let _ = write!(
        out,
        "<p id=\"readiness\" class=\"{}\">{}</p>",
        if ready { "ready" } else { "not-ready" },
        if ready {
            "ready: every route has a healthy target".to_string()
        } else {
            format!("not ready: {}", cell(&doc["not_ready_reason"]))
        }
    );
    let _ = write!(
        out,
        "<p id=\"generation\">config generation {}",
        cell(&doc["generation"])
    );
    match doc.get("last_reload") {
        Some(Value::Object(r)) => {
            let _ = write!(
                out,
                "; last reload {} ({}, {}): {}",
                cell(&r["at"]),
                cell(&r["source"]),
                if r["ok"].as_bool() == Some(true) {
                    "ok"
                } else {
                    "failed"
                },
                cell(&r["message"])
            );
        }
        _ => out.push_str("; no reload since start"),
    }
    out.push_str("</p><h2>Routes</h2>");
    table(
        &mut out,
        "routes",
        doc["routes"].as_array().map_or(&[][..], Vec::as_slice),
    );
    out.push_str("<h2>Upstreams</h2>");
    if let Some(ups) = doc["upstreams"].as_object() {
        for (name, up) in ups {
            let _ = write!(
                out,
                "<h3 class=\"upstream\" id=\"upstream-{0}\">{0}</h3><p>",
                escape(name)
            );
            let mut first = true;
            if let Some(fields) = up.as_object() {
                for (k, v) in fields.iter().filter(|(k, _)| *k != "targets") {
                    let _ = write!(
                        out,
                        "{}{}: {}",
                        if first { "" } else { " · " },
                        escape(&k.replace('_', " ")),
                        cell(v)
                    );
                    first = false;
                }
            }
            out.push_str("</p>");
            table(
                &mut out,
                "targets",
                up["targets"].as_array().map_or(&[][..], Vec::as_slice),
            );
        }
    }
    out.push_str("</body></html>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_escapes_and_shows_every_target_field() {
        let doc = json!({
            "ready": false,
            "not_ready_reason": "route <a> has no healthy target",
            "generation": 3,
            "last_reload": null,
            "routes": [{"name": "* /", "host": "*", "upstream": "app"}],
            "upstreams": {"app": {"queue_depth": 0, "targets": [
                {"target": "10.0.0.1:80", "state": "ejected", "causes": {"connection_refused": 4}},
                {"target": "10.0.0.2:80", "state": "healthy", "learned": "3s"}
            ]}}
        });
        let page = html(&doc);
        assert!(
            page.contains("not ready: route &lt;a&gt; has no healthy target"),
            "{page}"
        );
        assert!(
            page.contains(
                "<tr class=\"state-ejected\"><td data-field=\"target\">10.0.0.1:80</td>\
             <td data-field=\"state\">ejected</td>"
            ),
            "{page}"
        );
        assert!(page.contains("connection_refused: 4"));
        // A field only the second target has still gets a column.
        assert!(page.contains("<th>learned</th>"));
        assert!(page.contains("config generation 3; no reload since start"));
    }
}
