//! `gatewise explain` end to end: the built binary on captured and hand-written logs.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::Value;

fn fixture(name: &str) -> String {
    format!(
        "{}/tests/fixtures/explain/{name}",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// Runs `gatewise explain ARGS`, feeding `stdin`; returns the exit code and stdout.
fn explain(args: &[&str], stdin: &[u8]) -> (i32, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gatewise"))
        .arg("explain")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn gatewise");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8(out.stdout).unwrap(),
    )
}

fn json(args: &[&str]) -> (i32, Value) {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let (code, out) = explain(&all, b"");
    (code, serde_json::from_str(&out).expect("valid JSON report"))
}

/// `{name: count}` of a ranked list (`by_cause` or `by_target`).
fn counts(report: &Value, list: &str, key: &str) -> BTreeMap<String, u64> {
    report[list]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e[key].as_str().unwrap().to_string(),
                e["count"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn map(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

#[test]
fn captured_nginx_error_log() {
    let (code, r) = json(&[&fixture("nginx-error.log")]);
    assert_eq!(code, 1);
    assert_eq!(r["files"][0]["format"], "nginx-error");
    assert_eq!(
        (r["lines"].as_u64(), r["unknown"].as_u64()),
        (Some(53), Some(0))
    );
    let want = map(&[
        ("connection_refused", 6),
        ("destination_unavailable", 2),
        ("connection_terminated", 2),
        ("connection_timeout", 1),
        ("dns_error", 1),
        ("http_protocol_error", 1),
        ("http_response_header_section_size", 1),
        ("http_response_incomplete", 1),
        ("http_response_timeout", 1),
        ("tls_protocol_error", 1),
    ]);
    assert_eq!(counts(&r, "by_cause", "cause"), want);
    let targets = counts(&r, "by_target", "target");
    assert_eq!(targets.len(), 12);
    assert_eq!(targets["127.0.0.1:42907"], 5); // the dead port: /refused ×2, /nolive, /retried ×2
    assert_eq!(targets["nolive"], 2);
    assert_eq!(targets["nowhere.invalid"], 1);
}

#[test]
fn captured_nginx_access_log_defers_to_the_error_log() {
    let (code, r) = json(&[&fixture("nginx-access.log")]);
    assert_eq!(code, 1);
    assert_eq!(r["files"][0]["format"], "nginx-access");
    // `502, 200` on /retried: the failed first attempts never reached the client, and the log
    // does not say why they failed.
    let want = map(&[
        ("unclassified", 11),
        ("destination_unavailable", 2),
        ("retried_unnamed", 2),
    ]);
    assert_eq!(counts(&r, "by_cause", "cause"), want);
    assert_eq!(r["recovered"], 2);
    assert_eq!(r["hidden"], 2);
    assert_eq!(
        r["files"][0]["view"]["hidden"],
        serde_json::json!({"retried_unnamed": 2})
    );
    // The log has $upstream_addr and $upstream_status: no advice to add them.
    let fix = r["by_cause"][0]["fix"].as_str().unwrap();
    assert!(fix.contains("error log"), "{fix}");
    assert!(!fix.contains("$upstream_addr"), "{fix}");
    // What clients saw is the status field of each line, counted once per request.
    assert_eq!(
        status_counts(&r["files"][0]["view"]),
        awk_status_counts(&fixture("nginx-access.log"), 9)
    );
}

/// `{status: requests}` of a file's client view.
fn status_counts(view: &Value) -> BTreeMap<String, u64> {
    view["failed"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(s, by)| {
            let n = by
                .as_object()
                .unwrap()
                .values()
                .map(|n| n.as_u64().unwrap());
            (s.clone(), n.sum())
        })
        .collect()
}

/// What `awk` counts on the status field (`$field`) for statuses of 500 and more.
fn awk_status_counts(path: &str, field: usize) -> BTreeMap<String, u64> {
    let prog = format!("${field} >= 500 {{ n[${field}]++ }} END {{ for (s in n) print s, n[s] }}");
    let out = Command::new("awk")
        .arg(prog)
        .arg(path)
        .output()
        .expect("awk");
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let (s, n) = l.split_once(' ').unwrap();
            (s.to_string(), n.parse().unwrap())
        })
        .collect()
}

/// A real HAProxy log (scripts/capture-haproxy-retries.sh) with redispatched requests that were
/// served (`+1`), requests that failed after retries and redispatches (`SC`, `+3` and `3`) and
/// server failures: clients saw what the status field says, once per request; the failed
/// attempts a retry hid are counted apart and named as what they are.
#[test]
fn captured_haproxy_retries_count_what_clients_saw() {
    let path = fixture("haproxy-retries.log");
    let (code, r) = json(&[&path]);
    assert_eq!(code, 1);
    assert_eq!(r["schema"], "gatewise.explain/2");
    let view = &r["files"][0]["view"];
    assert_eq!(view["requests"], 19);
    assert_eq!(status_counts(view), awk_status_counts(&path, 6));
    assert_eq!(
        view["failed"],
        serde_json::json!({
            "502": {"connection_terminated": 2},
            "503": {"connection_refused": 5},
            "504": {"http_response_timeout": 2},
        })
    );
    assert_eq!(r["client_failed"], 9);
    // Eight served requests, each after one failed connect the log does not name.
    assert_eq!(view["hidden"], serde_json::json!({"retried_unnamed": 8}));
    assert_eq!(r["hidden"], 8);
    // Attempts: 5 refused requests × (1 + 3 retries), 4 server failures, 8 hidden.
    assert_eq!(view["attempts"], 5 * 4 + 4 + 8);
    let (_, text) = explain(&[&path], b"");
    assert!(
        text.contains(
            "9 requests failed for clients (status >= 500), 8 failed attempts hidden by a retry"
        ),
        "{text}"
    );
    assert!(
        text.contains("retried_unnamed  8 (8 hidden by a retry)"),
        "{text}"
    );
    assert!(!text.contains("proxy answered 502/504 itself"), "{text}");
}

/// An nginx error log read with its access log: one failure told by both is counted once, under
/// the error log's cause; the error log's attempts are never added to the requests clients saw;
/// a request nginx retried that ended 2xx hides the error log's failure ("hidden by a retry").
#[test]
fn nginx_error_and_access_logs_together_are_not_added_up() {
    let (_, alone) = json(&[&fixture("nginx-access.log")]);
    let (_, errors) = json(&[&fixture("nginx-error.log")]);
    // Either order: the join runs once every file is read.
    let (_, reversed) = json(&[&fixture("nginx-access.log"), &fixture("nginx-error.log")]);
    let (code, both) = json(&[&fixture("nginx-error.log"), &fixture("nginx-access.log")]);
    assert_eq!(code, 1);
    assert_eq!(both["joined"], 15);
    assert_eq!(reversed["joined"], 15);
    assert_eq!(
        counts(&both, "by_cause", "cause"),
        counts(&errors, "by_cause", "cause"),
        "every access-log failure has its partner in the error log: counted once"
    );
    assert_eq!(both["failures"], errors["failures"]);
    let view = &both["files"][1]["view"];
    assert_eq!(view["hidden"], serde_json::json!({"connection_refused": 2}));
    assert_eq!(
        view["failed"]["504"],
        serde_json::json!({"connection_timeout": 1, "http_response_timeout": 1})
    );
    assert_eq!(
        status_counts(view),
        status_counts(&alone["files"][0]["view"])
    );
    let refused = both["by_cause"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["cause"] == "connection_refused")
        .unwrap();
    assert_eq!(refused["recovered"], 2, "/retried: 502 then 200");
    assert_eq!(both["client_failed"], alone["client_failed"]);
    assert_eq!(both["hidden"], alone["hidden"]);
    assert_eq!(
        both["error_log_attempts"],
        both["files"][0]["view"]["attempts"]
    );
    assert_eq!(both["files"][0]["view"]["requests"], 0);
    let (_, text) = explain(
        &[&fixture("nginx-error.log"), &fixture("nginx-access.log")],
        b"",
    );
    assert!(
        text.contains("failed attempts in error logs (counted apart)"),
        "{text}"
    );
}

#[test]
fn captured_haproxy_log() {
    let (code, r) = json(&[&fixture("haproxy.log")]);
    assert_eq!(code, 1);
    assert_eq!(r["files"][0]["format"], "haproxy");
    let want = map(&[
        ("connection_limit_reached", 1),
        ("connection_refused", 3), // SC after 2 retries: three refused connects
        ("connection_terminated", 1),
        ("connection_timeout", 3), // sC after 2 retries
        ("destination_unavailable", 1),
        ("http_protocol_error", 2),
        ("http_response_incomplete", 1),
        ("http_response_timeout", 2),
        ("retried_unnamed", 4),
    ]);
    assert_eq!(counts(&r, "by_cause", "cause"), want);
    let targets = counts(&r, "by_target", "target");
    assert_eq!(targets["retried"], 4); // four served requests, each after one failed connect
    assert_eq!(targets["refused/dead1"], 3);
    assert_eq!(targets["nosrv"], 1);
    assert_eq!(targets["queue"], 1);
}

#[test]
fn hand_written_envoy_log() {
    let (code, r) = json(&[&fixture("envoy.log")]);
    assert_eq!(code, 1);
    assert_eq!(r["files"][0]["format"], "envoy");
    let want = map(&[
        ("connection_limit_reached", 1),
        ("connection_refused", 1),
        ("connection_terminated", 1),
        ("destination_not_found", 1),
        ("destination_unavailable", 1),
        ("dns_error", 1),
        ("http_protocol_error", 1),
        ("http_response_timeout", 1),
    ]);
    assert_eq!(counts(&r, "by_cause", "cause"), want);
    let targets = map(&[("-", 4), ("10.0.0.11:8080", 2), ("10.0.0.12:8080", 2)]);
    assert_eq!(counts(&r, "by_target", "target"), targets);
    assert_eq!(r["unknown"], 1);
    assert!(r["unknown_samples"][0]
        .as_str()
        .unwrap()
        .contains("starting main dispatch loop"));
}

#[test]
fn gatewise_log_deploy_burst_is_one_episode_with_a_fix() {
    let (code, r) = json(&[&fixture("gatewise.log")]);
    assert_eq!(code, 1);
    let want = map(&[
        ("connection_refused", 40),
        ("connection_terminated", 5),
        ("http_response_timeout", 2),
        ("destination_unavailable", 1),
    ]);
    assert_eq!(counts(&r, "by_cause", "cause"), want);
    assert_eq!(r["recovered"], 30);
    let targets = map(&[("127.0.0.1:3001", 45), ("127.0.0.1:3003", 2), ("-", 1)]);
    assert_eq!(counts(&r, "by_target", "target"), targets);
    assert_eq!(
        r["unknown"], 2,
        "the prose line and the unknown cause token"
    );
    let eps = r["episodes"].as_array().unwrap();
    assert_eq!(eps.len(), 3);
    assert_eq!(
        (eps[0]["start"].as_str(), eps[0]["end"].as_str()),
        (Some("2026-11-21T12:01"), Some("2026-11-21T12:02"))
    );
    assert_eq!(
        (eps[0]["count"].as_u64(), eps[0]["target"].as_str()),
        (Some(45), Some("127.0.0.1:3001"))
    );
    assert!(eps[0]["diagnosis"]
        .as_str()
        .unwrap()
        .contains("restart or deploy"));
    assert!(eps[0]["fix"].as_str().unwrap().contains("drain"));
    let burst: Vec<&str> = r["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["burst"] == true)
        .map(|m| m["minute"].as_str().unwrap())
        .collect();
    assert_eq!(burst, ["2026-11-21T12:01"]);
}

#[test]
fn text_report_names_causes_targets_and_fixes() {
    let (code, out) = explain(&[&fixture("gatewise.log")], b"");
    assert_eq!(code, 1);
    assert!(
        out.contains("connection_refused  40 (30 hidden by a retry)"),
        "{out}"
    );
    assert!(
        out.contains("fix:   drain a target (fail readiness, wait) before stopping it"),
        "{out}"
    );
    assert!(
        out.contains("127.0.0.1:3001  45  connection_refused 40, connection_terminated 5"),
        "{out}"
    );
    assert!(
        out.contains(
            "likely: 127.0.0.1:3001 stopped accepting or dropped connections for 2 minutes"
        ),
        "{out}"
    );
    assert!(out.contains("Not understood: 2 lines"), "{out}");
}

#[test]
fn several_files_and_mixed_formats_add_up() {
    // One file holding nginx error lines and HAProxy lines (a shared syslog), plus garbage.
    let nginx = std::fs::read_to_string(fixture("nginx-error.log")).unwrap();
    let haproxy = std::fs::read_to_string(fixture("haproxy.log")).unwrap();
    let mixed = format!("{nginx}{haproxy}not a log line\n");
    let (code, out) = explain(&["--json", "-", &fixture("envoy.log")], mixed.as_bytes());
    assert_eq!(code, 1);
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["failures"], 17 + 18 + 8);
    assert_eq!(r["unknown"], 1 + 1);
    assert_eq!(r["files"][0]["path"], "-");
    assert_eq!(
        counts(&r, "by_cause", "cause")["connection_refused"],
        6 + 3 + 1
    );
}

#[test]
fn gzip_input_is_read_transparently() {
    let raw = std::fs::read(fixture("haproxy.log")).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&raw).unwrap();
    let path: PathBuf =
        std::env::temp_dir().join(format!("gatewise-explain-{}.log.gz", std::process::id()));
    std::fs::write(&path, gz.finish().unwrap()).unwrap();
    let (code, r) = json(&[path.to_str().unwrap()]);
    std::fs::remove_file(&path).unwrap();
    assert_eq!(code, 1);
    assert_eq!(r["files"][0]["format"], "haproxy");
    assert_eq!(r["failures"], 18);
}

#[test]
fn exit_codes() {
    let ok = "127.0.0.1:1 [21/Nov/2026:12:00:00.000] web ok/ok1 0/0/0/1/1 200 51 - - ---- 1/1/0/0/0 0/0 \"GET / HTTP/1.1\"\n";
    let (code, out) = explain(&["-"], ok.as_bytes());
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("No upstream failures found."));
    let (code, _) = explain(&["/nonexistent/gatewise-explain.log"], b"");
    assert_eq!(code, 2);
    let (code, _) = explain(&["--format", "nope", "-"], b"");
    assert_eq!(code, 2);
    let (code, out) = explain(&["-"], b"just some prose\nand more\n");
    assert_eq!(
        code, 2,
        "an unrecognised file is a usage error, not a clean bill: {out}"
    );
}

#[test]
fn forced_format_counts_other_lines_as_unknown() {
    let (code, r) = json(&["--format", "envoy", &fixture("haproxy.log")]);
    assert_eq!(
        (code, r["failures"].as_u64(), r["unknown"].as_u64()),
        (0, Some(0), Some(16))
    );
}

/// Every top-level key of `--json` is in the documented schema (docs/explain.md), and the
/// document names the schema version the doc describes.
#[test]
fn json_keys_match_the_documented_schema() {
    let doc =
        std::fs::read_to_string(format!("{}/docs/explain.md", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let (_, r) = json(&[&fixture("haproxy-retries.log")]);
    let schema = r["schema"].as_str().unwrap();
    assert!(doc.contains(&format!("version `{schema}`")), "{schema}");
    let section = &doc[doc.find("### JSON schema").unwrap()..];
    for key in r.as_object().unwrap().keys() {
        assert!(section.contains(&format!("`{key}")), "{key} not documented");
    }
    for key in r["files"][0]["view"].as_object().unwrap().keys() {
        assert!(
            section.contains(&format!("`{key}`")),
            "view.{key} not documented"
        );
    }
}
