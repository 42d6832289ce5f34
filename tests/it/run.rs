//! `gatewise run` as the real binary: signals, and what reaches its access-log file.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::support::{client, get, upstream};

/// The running binary; killed when dropped, so a failed assertion leaves no process behind.
struct Running {
    child: Child,
    /// stderr, line by line.
    lines: mpsc::Receiver<String>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Running {
    fn start(config: &Path) -> Running {
        Self::start_with_stdout(config, Stdio::null())
    }

    fn start_with_stdout(config: &Path, stdout: Stdio) -> Running {
        let mut child = Command::new(env!("CARGO_BIN_EXE_gatewise"))
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .stdout(stdout)
            .stderr(Stdio::piped())
            .spawn()
            .expect("start gatewise run");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Running { child, lines }
    }

    /// The next stderr line containing `text` (bounded wait: a guard against a hang).
    fn wait_for_line(&self, text: &str) -> String {
        loop {
            match self.lines.recv_timeout(Duration::from_secs(20)) {
                Ok(line) if line.contains(text) => return line,
                Ok(_) => {}
                Err(e) => panic!("no stderr line with {text:?}: {e}"),
            }
        }
    }
}

/// Waits (bounded) until `path` has `n` lines.
async fn until_lines(path: &Path, n: usize) -> usize {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let count = std::fs::read_to_string(path).map_or(0, |t| t.lines().count());
        if count >= n || tokio::time::Instant::now() > deadline {
            return count;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr1_reopens_the_access_log_after_rotation() {
    let up = upstream::ok("hi").await;
    let dir = std::env::temp_dir().join(format!("gatewise-run-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (log, rotated, config) = (
        dir.join("access.log"),
        dir.join("access.log.1"),
        dir.join("gatewise.toml"),
    );
    std::fs::write(
        &config,
        format!(
            "access_log = {log:?}\n[admin]\nlisten = \"off\"\n\
             [[listener]]\nname = \"public\"\nlisten = \"127.0.0.1:0\"\n\
             [[route]]\nupstream = \"app\"\n\
             [upstream.app]\ntargets = [\"{}\"]\n",
            up.addr
        ),
    )
    .unwrap();
    let gw = Running::start(&config);
    let line = gw.wait_for_line("listening listener=public");
    let addr = line.rsplit("addr=").next().unwrap().trim();
    let url = format!("http://{addr}/");
    let c = client();

    assert_eq!(get(&c, &url).await.0.status, 200);
    assert_eq!(until_lines(&log, 1).await, 1);
    std::fs::rename(&log, &rotated).unwrap();
    // The shell's builtin `kill`: no procps needed on a minimal machine.
    let usr1 = format!("kill -USR1 {}", gw.child.id());
    let sent = Command::new("sh").args(["-c", &usr1]).status().unwrap();
    assert!(sent.success());
    gw.wait_for_line("reopening the access log");
    assert_eq!(get(&c, &url).await.0.status, 200);

    assert_eq!(until_lines(&log, 1).await, 1, "a new file at the old path");
    assert_eq!(
        until_lines(&rotated, 1).await,
        1,
        "the rotated file is left alone"
    );
    let line: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(&log).unwrap().trim()).unwrap();
    assert_eq!(line["status"], 200);
    drop(gw);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_to_a_closed_pipe_counts_dropped_lines_and_says_so_once() {
    // Before: every line written to a closed stdout was lost with the counter still at 0, and
    // stderr said so again for every batch.
    let up = upstream::ok("hi").await;
    let dir = std::env::temp_dir().join(format!("gatewise-pipe-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("gatewise.toml");
    std::fs::write(
        &config,
        format!(
            "access_log = \"stdout\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [[listener]]\nname = \"public\"\nlisten = \"127.0.0.1:0\"\n\
             [[route]]\nupstream = \"app\"\n\
             [upstream.app]\ntargets = [\"{}\"]\n",
            up.addr
        ),
    )
    .unwrap();
    let mut gw = Running::start_with_stdout(&config, Stdio::piped());
    // The reader of the access log goes away.
    drop(gw.child.stdout.take());
    let line = gw.wait_for_line("listening listener=public");
    let addr = line.rsplit("addr=").next().unwrap().trim().to_string();
    let admin = gw.wait_for_line("admin listening");
    let admin = admin.rsplit("addr=").next().unwrap().trim().to_string();
    let c = client();
    let dropped = |text: &str| -> u64 {
        text.lines()
            .find(|l| l.starts_with("gatewise_access_log_dropped_total "))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    // Requests until two batches failed (the writer drains every 20 ms); bounded.
    let mut count = 0;
    for _ in 0..400 {
        assert_eq!(get(&c, &format!("http://{addr}/")).await.0.status, 200);
        let (_, metrics) = get(&c, &format!("http://{admin}/metrics")).await;
        count = dropped(&String::from_utf8_lossy(&metrics));
        if count >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(count >= 2, "dropped lines counted: {count}");
    gw.wait_for_line("access log: write failed");
    let _ = gw.child.kill();
    let _ = gw.child.wait();
    // Every stderr line left, to the end (the reader ends with the process).
    let again: Vec<String> = gw
        .lines
        .iter()
        .filter(|l| l.contains("access log: write failed"))
        .collect();
    assert!(again.is_empty(), "said once: {again:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}
