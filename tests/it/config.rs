//! `gatewise check --offline` as a user runs it: exit codes and `file:line:col: field: message`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn check(files: &[&Path]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gatewise"))
        .arg("check")
        .arg("--offline")
        .args(files)
        .output()
        .expect("run gatewise")
}

/// A file in the temp dir, unique to this process and test, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, contents: &str) -> Self {
        let path = std::env::temp_dir().join(format!("gatewise-{}-{name}", std::process::id()));
        std::fs::write(&path, contents).expect("write temp config");
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0); // best effort: a leftover temp file is harmless
    }
}

#[test]
fn check_reports_every_error_with_its_location_and_exits_2() {
    let bad = TempFile::new(
        "bad.toml",
        r#"[[listener]]
name = "public"
listen = "127.0.0.1:8080"
[[route]]
upstream = "missing"
timeout = "soon"
[upstream.app]
targets = ["127.0.0.1:3001"]
connect_timout = "1s"
"#,
    );
    let out = check(&[&bad.0]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let file = bad.0.display();
    let expected = [
        format!("{file}:5:12: route[0].upstream: no [upstream.missing] table (upstreams: app)"),
        format!("{file}:6:11: route[0].timeout: expected a duration like \"500ms\", \"2s\", \"1m\" or \"1h\", got \"soon\""),
        format!("{file}:9:1: upstream.app.connect_timout: unknown field `connect_timout`"),
    ];
    for line in &expected {
        assert!(
            stderr.contains(line.as_str()),
            "missing {line:?} in:\n{stderr}"
        );
    }
    assert_eq!(stderr.lines().count(), expected.len(), "{stderr}");
}

#[test]
fn check_accepts_every_example_and_exits_0() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("examples dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(files.len() >= 3, "{files:?}");
    let refs: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    let out = check(&refs);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("basic.toml: ok (1 listeners, 1 routes, 1 upstreams)"),
        "{stdout}"
    );
    assert_eq!(
        stdout.lines().filter(|l| l.contains(": ok (")).count(),
        files.len()
    );
}

#[test]
fn check_of_a_missing_file_exits_2_and_still_checks_the_others() {
    let good = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/basic.toml");
    let missing = std::env::temp_dir().join("gatewise-no-such-config.toml");
    let out = check(&[&missing, &good]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot read"), "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("basic.toml: ok"));
}
