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
        Self::start_with(config, &[], Stdio::null())
    }

    fn start_with_env(config: &Path, env: &[(&str, &Path)]) -> Running {
        Self::start_with(config, env, Stdio::null())
    }

    fn start_with_stdout(config: &Path, stdout: Stdio) -> Running {
        Self::start_with(config, &[], stdout)
    }

    fn start_with(config: &Path, env: &[(&str, &Path)], stdout: Stdio) -> Running {
        let mut child = Command::new(env!("CARGO_BIN_EXE_gatewise"))
            .args(["run", "--config"])
            .arg(config)
            .envs(env.iter().map(|(k, v)| (k, v.as_os_str())))
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

fn signal(gw: &Running, name: &str) {
    // The shell's builtin `kill`: no procps needed on a minimal machine.
    let cmd = format!("kill -{name} {}", gw.child.id());
    assert!(Command::new("sh")
        .args(["-c", &cmd])
        .status()
        .unwrap()
        .success());
}

fn one_route(dir: &Path, target: std::net::SocketAddr) -> std::path::PathBuf {
    let config = dir.join("gatewise.toml");
    std::fs::write(&config, route_to(target)).unwrap();
    config
}

fn route_to(target: std::net::SocketAddr) -> String {
    format!(
        "watch_config = false\ndrain_delay = \"0s\"\naccess_log = \"off\"\n[admin]\nlisten = \"off\"\n\
         [[listener]]\nname = \"public\"\nlisten = \"127.0.0.1:0\"\n\
         [[route]]\nupstream = \"app\"\n\
         [upstream.app]\ntargets = [\"{target}\"]\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_and_never_ends_the_process() {
    let (a, b) = (upstream::ok("a").await, upstream::ok("b").await);
    let dir = std::env::temp_dir().join(format!("gatewise-hup-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = one_route(&dir, a.addr);
    let gw = Running::start(&config);
    let line = gw.wait_for_line("listening listener=public");
    let url = format!("http://{}/", line.rsplit("addr=").next().unwrap().trim());
    let c = client();
    assert_eq!(&get(&c, &url).await.1[..], b"a");

    std::fs::write(&config, route_to(b.addr)).unwrap();
    signal(&gw, "HUP");
    gw.wait_for_line("config reloaded");
    assert_eq!(&get(&c, &url).await.1[..], b"b");

    // A broken file: the reload fails, says where, and the process serves on.
    std::fs::write(&config, "[[route]]\nupstream = 7\n").unwrap();
    signal(&gw, "HUP");
    let failed = gw.wait_for_line("config reload failed");
    assert!(failed.contains("gatewise.toml:2:"), "{failed}");
    assert_eq!(&get(&c, &url).await.1[..], b"b");
    drop(gw);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_hears_ready_reloading_ready_stopping_in_order() {
    let a = upstream::ok("a").await;
    let dir = std::env::temp_dir().join(format!("gatewise-notify-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = one_route(&dir, a.addr);
    let socket_path = dir.join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let next = || {
        let mut buf = [0u8; 256];
        let n = socket.recv(&mut buf).expect("a notify message");
        String::from_utf8_lossy(&buf[..n]).to_string()
    };
    let gw = Running::start_with_env(&config, &[("NOTIFY_SOCKET", &socket_path)]);
    assert_eq!(next(), "READY=1");
    signal(&gw, "HUP");
    let reloading = next();
    assert!(
        reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="),
        "{reloading}"
    );
    assert_eq!(next(), "READY=1");
    signal(&gw, "TERM");
    assert_eq!(next(), "STOPPING=1");
    drop(gw);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Binary upgrade under load: a client opening a new connection for every request throughout;
/// a second process takes the sockets over; the first drains and exits 0. Nothing is refused,
/// reset or failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binary_upgrade_under_load_refuses_nothing_and_the_old_process_exits_0() {
    let a = upstream::ok("a").await;
    let dir = std::env::temp_dir().join(format!("gatewise-takeover-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("gatewise.toml");
    let socket = dir.join("upgrade.sock");
    let src = format!("upgrade_socket = {socket:?}\n{}", route_to(a.addr));
    std::fs::write(&config, src).unwrap();
    let mut old = Running::start(&config);
    let line = old.wait_for_line("listening listener=public");
    let addr: std::net::SocketAddr = line.rsplit("addr=").next().unwrap().trim().parse().unwrap();

    // Load: sequential requests, each on a new connection (`Connection: close`).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let (mut ok, mut failed) = (0usize, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                match one_shot(addr).await {
                    Ok(status) if status.starts_with("HTTP/1.1 200") => ok += 1,
                    Ok(status) => failed.push(status),
                    Err(e) => failed.push(e.to_string()),
                }
            }
            (ok, failed)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut new = Command::new(env!("CARGO_BIN_EXE_gatewise"))
        .args(["run", "--takeover", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the new process");
    let new_err = new.stderr.take().unwrap();
    let (tx, new_lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(new_err).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // The old process hands over, finishes and exits 0 by itself.
    old.wait_for_line("binary upgrade: the new process serves the sockets");
    let status = tokio::task::spawn_blocking(move || {
        let status = old.child.wait().unwrap();
        std::mem::forget(old);
        status
    })
    .await
    .unwrap();
    assert_eq!(
        status.code(),
        Some(0),
        "the old process exits 0 after its drain"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (ok, failed) = load.await.unwrap();
    let _ = new.kill();
    let _ = new.wait();
    let new_log: Vec<String> = new_lines.try_iter().collect();
    assert!(
        new_log
            .iter()
            .any(|l| l.contains("serving the socket handed over")),
        "{new_log:#?}"
    );
    assert!(failed.is_empty(), "{} ok, failed: {failed:?}", ok);
    assert!(ok > 50, "only {ok} requests");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// One request on a new connection; the status line, or the transport error.
async fn one_shot(addr: std::net::SocketAddr) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(b"GET / HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n")
        .await?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await?;
    let text = String::from_utf8_lossy(&out).to_string();
    Ok(text.lines().next().unwrap_or("").to_string())
}

/// `run --to localhost` (and other values a file refuses) used to start with a warning and then
/// fail every request; now it is refused before anything binds, with the file's message.
#[test]
fn quick_form_refuses_targets_a_file_refuses() {
    for (bad, says) in [
        ("localhost", "expected HOST:PORT"),
        ("foo:bar", "expected HOST:PORT"),
        ("http://127.0.0.1:3001", "drop \"http://\""),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_gatewise"))
            .args(["run", "--listen", "127.0.0.1:0", "--admin", "off"])
            .args(["--to", "127.0.0.1:3000", "--to", bad])
            .stdin(Stdio::null())
            .output()
            .expect("run gatewise");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad}: {stderr}");
        assert!(stderr.contains(&format!("--to {bad:?}")), "{bad}: {stderr}");
        assert!(stderr.contains(says), "{bad}: {stderr}");
        assert!(!stderr.contains("listening"), "{bad}: it started: {stderr}");
    }
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
    // The admin listener is announced first, then the listeners.
    let admin = gw.wait_for_line("admin listening");
    let admin = admin.rsplit("addr=").next().unwrap().trim().to_string();
    let line = gw.wait_for_line("listening listener=public");
    let addr = line.rsplit("addr=").next().unwrap().trim().to_string();
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
