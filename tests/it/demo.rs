//! `gatewise demo` end to end: the real binary, for a few seconds, with its faults injected.

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The number after `label` on the line that starts with it.
fn number_after(out: &str, label: &str) -> u64 {
    let line = out
        .lines()
        .find(|l| l.starts_with(label))
        .unwrap_or_else(|| panic!("no line starting with {label:?} in:\n{out}"));
    line[label.len()..]
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number after {label:?} in {line:?}"))
}

#[test]
fn demo_absorbs_the_injected_faults_and_prints_a_summary() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gatewise"))
        .args([
            "demo",
            "--duration",
            "5",
            "--listen",
            "127.0.0.1:0",
            "--rate",
            "100",
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start gatewise demo");
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let (mut out, mut err) = (String::new(), String::new());
        stdout.read_to_string(&mut out).unwrap();
        stderr.read_to_string(&mut err).unwrap();
        let _ = tx.send((out, err));
    });
    // A guard against a hang, not a timing assertion: the demo stops itself after 5 s.
    let Ok((out, err)) = rx.recv_timeout(Duration::from_secs(60)) else {
        let _ = child.kill();
        panic!("gatewise demo did not finish");
    };
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "exit {status:?}\nstdout:\n{out}\nstderr:\n{err}"
    );

    assert!(out.contains("gateway   http://127.0.0.1:"), "{out}");
    assert_eq!(out.matches("  upstream  up-").count(), 3, "{out}");
    let live = out
        .lines()
        .filter(|l| l.starts_with('[') && l.contains("requests"))
        .count();
    assert!(live >= 3, "expected a live line a second:\n{out}");
    assert!(out.contains("── gatewise demo: summary after"), "{out}");

    let sent = number_after(&out, "requests sent:");
    let errors = number_after(&out, "client-visible errors:");
    let absorbed = number_after(&out, "failures absorbed:");
    let faults = number_after(&out, "faults injected:");
    // The first fault (an upstream killed) starts 1.5 s in; the requests it fails are retried.
    assert!(faults >= 1, "{out}");
    assert!(absorbed > 0, "no failure absorbed:\n{out}");
    assert!(sent > 100, "{out}");
    // Killed-upstream failures are all retryable, so errors should be none; allow 1% for a
    // loaded machine (a health check timing out on all targets at once).
    assert!(
        errors * 100 <= sent,
        "{errors} client-visible errors of {sent}:\n{out}"
    );
}

#[test]
fn demo_piped_into_head_exits_quietly_on_the_broken_pipe() {
    // `gatewise demo | head -2`: before, the next println! panicked on EPIPE (exit 101).
    let mut child = Command::new(env!("CARGO_BIN_EXE_gatewise"))
        .args(["demo", "--duration", "60", "--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start gatewise demo");
    let stdout = child.stdout.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
    for _ in 0..2 {
        lines.next().expect("a line").unwrap();
    }
    drop(lines);
    let mut stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut err = String::new();
        let _ = stderr.read_to_string(&mut err);
        let _ = tx.send(err);
    });
    // A guard against a hang, not a timing assertion: the demo ends at its next tick.
    let Ok(err) = rx.recv_timeout(Duration::from_secs(30)) else {
        let _ = child.kill();
        panic!("gatewise demo did not notice its reader was gone");
    };
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}: {err}");
    assert!(!err.contains("panicked"), "{err}");
}
