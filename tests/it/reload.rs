//! Reload (L2) in process: a config file, the gateway reading it, and reloads under load — what is
//! kept (pools of untouched targets, open connections, a response in progress), what is refused
//! (an invalid file, a port in use) and that the running config serves on either way.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use gatewise::gateway::{Gateway, Shared};
use gatewise::observe::access_log::AccessLog;
use http::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{client, get, traffic, upstream};

/// A gateway started from a file it reloads from.
struct Reloadable {
    addrs: Vec<SocketAddr>,
    shared: Arc<Shared>,
    path: PathBuf,
    _task: tokio::task::JoinHandle<()>,
}

impl Drop for Reloadable {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(self.path.parent().unwrap());
    }
}

fn temp_config(name: &str, src: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gatewise-reload-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("gatewise.toml");
    std::fs::write(&path, src).unwrap();
    path
}

async fn start(name: &str, src: &str) -> Reloadable {
    let path = temp_config(name, src);
    let config = gatewise::config::load(&path).expect("valid config");
    let (log, _lines) = AccessLog::capture();
    let gateway = Gateway::bind(&config, log)
        .await
        .expect("binds")
        .with_config_path(path.clone());
    let addrs = gateway.listen_addrs();
    let shared = gateway.shared();
    let task = tokio::spawn(gateway.serve());
    Reloadable {
        addrs,
        shared,
        path,
        _task: task,
    }
}

/// Replaces the file the way an editor does (write elsewhere, rename over it).
fn rewrite(path: &Path, src: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, src).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// One listener, one route to `targets`; reloads only when asked (the watch has its own test).
fn app(targets: &[SocketAddr]) -> String {
    watched(targets).replace("[admin]", "watch_config = false\n[admin]")
}

fn watched(targets: &[SocketAddr]) -> String {
    let list: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
    format!(
        "[admin]\nlisten = \"off\"\n\
         [[listener]]\nname = \"public\"\nlisten = \"127.0.0.1:0\"\n\
         [[route]]\nname = \"main\"\nupstream = \"app\"\n\
         [upstream.app]\nbalance = \"round_robin\"\ntargets = [{}]\n",
        list.join(", ")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_fails_nothing_and_keeps_untouched_pools() {
    let (a, b, c) = (
        upstream::ok("a").await,
        upstream::ok("b").await,
        upstream::ok("c").await,
    );
    let gw = start("load", &app(&[a.addr, b.addr])).await;
    let url = format!("http://{}/", gw.addrs[0]);
    let stop = Arc::new(AtomicBool::new(false));
    // One keep-alive client in a loop: each target gets exactly one pooled connection, so an
    // accept count above 1 would mean a pool was thrown away.
    let load = tokio::spawn(traffic::run(
        client(),
        url.clone(),
        Method::GET,
        1,
        Duration::from_millis(2),
        100_000,
        stop.clone(),
    ));
    a.stats.wait_for(|s| s.requests() >= 20).await;
    b.stats.wait_for(|s| s.requests() >= 20).await;

    let new = app(&[a.addr, c.addr])
        + "[[route]]\nname = \"extra\"\npath_prefix = \"/extra\"\nupstream = \"extra\"\n\
           [upstream.extra]\ntargets = [\""
        + &c.addr.to_string()
        + "\"]\n";
    std::fs::write(&gw.path, &new).unwrap();
    let outcome = gw.shared.reload("test").await;
    assert!(outcome.ok, "{outcome:?}");
    let diff = outcome.applied.unwrap();
    assert_eq!(diff.routes.added, ["extra"]);
    assert_eq!(
        diff.targets.added,
        [format!("app/{}", c.addr), format!("extra/{}", c.addr)]
    );
    assert_eq!(diff.targets.removed, [format!("app/{}", b.addr)]);
    assert_eq!(outcome.generation, 2);

    let (served_a, served_b) = (a.stats.requests(), b.stats.requests());
    c.stats.wait_for(|s| s.requests() >= 20).await;
    a.stats.wait_for(|s| s.requests() >= served_a + 20).await;
    let (extra, body) = get(&client(), &format!("http://{}/extra/x", gw.addrs[0])).await;
    assert_eq!((extra.status.as_u16(), &body[..]), (200, &b"c"[..]));
    stop.store(true, Ordering::SeqCst);
    let outcomes = load.await.unwrap();

    assert!(outcomes.len() > 60, "{} requests", outcomes.len());
    assert!(
        traffic::errors(&outcomes).is_empty(),
        "{:?}",
        traffic::errors(&outcomes)
    );
    assert_eq!(
        a.stats.accepts(),
        1,
        "the untouched target's pooled connection was reused"
    );
    // The removed target got nothing new (a request in flight at the swap may still finish).
    assert!(b.stats.requests() <= served_b + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_config_is_refused_with_line_numbers_and_the_running_one_serves() {
    let a = upstream::ok("a").await;
    let gw = start("invalid", &app(&[a.addr])).await;
    let url = format!("http://{}/", gw.addrs[0]);
    let c = client();
    assert_eq!(get(&c, &url).await.0.status, 200);

    // Valid TOML, wrong in meaning: an unknown upstream and a bad duration.
    let bad = app(&[a.addr]).replace(
        "upstream = \"app\"",
        "upstream = \"nope\"\ntimeout = \"soon\"",
    );
    std::fs::write(&gw.path, &bad).unwrap();
    let outcome = gw.shared.reload("test").await;
    assert!(!outcome.ok);
    assert_eq!(outcome.generation, 1, "generation 1 still serves");
    let fields: Vec<(&str, usize)> = outcome
        .errors
        .iter()
        .map(|e| (e.field.as_str(), e.line))
        .collect();
    let line_of = |text: &str| bad.lines().position(|l| l.contains(text)).unwrap() + 1;
    assert!(
        fields.contains(&("route[0].upstream", line_of("nope"))),
        "{fields:?}"
    );
    assert!(
        fields.contains(&("route[0].timeout", line_of("soon"))),
        "{fields:?}"
    );
    assert!(outcome.message.contains("2 errors"), "{}", outcome.message);
    assert_eq!(get(&c, &url).await.0.status, 200);
    let text = gw.shared.metrics.encode();
    assert!(
        text.contains("gatewise_config_reloads_total{result=\"failed\"} 1"),
        "{text}"
    );
    let last = gw.shared.reloads.last().unwrap();
    assert!(!last.ok && last.source == "test");

    // A file that disappears: refused the same way, nothing changes.
    std::fs::remove_file(&gw.path).unwrap();
    let outcome = gw.shared.reload("test").await;
    assert!(
        !outcome.ok && outcome.errors[0].message.contains("cannot read"),
        "{outcome:?}"
    );
    assert_eq!(get(&c, &url).await.0.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_change_is_picked_up_by_the_watch_and_a_bad_one_is_not_applied() {
    let (a, b) = (upstream::ok("a").await, upstream::ok("b").await);
    let gw = start("watch", &watched(&[a.addr])).await;
    let url = format!("http://{}/", gw.addrs[0]);
    let c = client();
    assert_eq!(&get(&c, &url).await.1[..], b"a");

    // An editor's rename-over, half-written first: the broken version is refused...
    rewrite(&gw.path, "[[listener]\nname = ");
    wait_until(|| gw.shared.reloads.last().is_some_and(|r| !r.ok)).await;
    assert_eq!(&get(&c, &url).await.1[..], b"a");
    // ...and the finished one applied.
    rewrite(&gw.path, &watched(&[b.addr]));
    wait_until(|| gw.shared.snapshot.load().generation == 2).await;
    assert_eq!(&get(&c, &url).await.1[..], b"b");
    let last = gw.shared.reloads.last().unwrap();
    assert!(last.ok && last.source == "file", "{last:?}");
}

/// Polls a condition the gateway changes on its own (a file-watch reload); bounded.
async fn wait_until(f: impl Fn() -> bool) {
    crate::support::poll_until("the reload's effect", Duration::from_secs(10), f).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streaming_response_and_an_open_connection_survive_the_reload_that_removes_them() {
    // An upstream that sends its chunked body in two halves, the second when told to.
    let release = Arc::new(tokio::sync::Notify::new());
    let gate = release.clone();
    let slow = upstream::raw(move |mut s, _| {
        let gate = gate.clone();
        async move {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let head = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n6\r\nfirst \r\n";
            let _ = s.write_all(head.as_bytes()).await;
            gate.notified().await;
            let _ = s.write_all(b"4\r\nhalf\r\n0\r\n\r\n").await;
        }
    })
    .await;
    let other = upstream::ok("other").await;
    let two_listeners = app(&[slow.addr])
        + "[[listener]]\nname = \"side\"\nlisten = \"127.0.0.1:0\"\n\
           [[route]]\nlistener = \"side\"\nupstream = \"app\"\n";
    let two_listeners = two_listeners.replace(
        "name = \"main\"\nupstream",
        "name = \"main\"\nlistener = \"public\"\nupstream",
    );
    let gw = start("stream", &two_listeners).await;
    let (public, side) = (gw.addrs[0], gw.addrs[1]);

    // A raw client on the side listener, mid-response when the reload happens.
    let mut conn = tokio::net::TcpStream::connect(side).await.unwrap();
    conn.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).contains("first ") {
        let mut buf = [0u8; 1024];
        let n = conn.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }

    // The new config drops the side listener and points the app at another target.
    std::fs::write(&gw.path, app(&[other.addr])).unwrap();
    let outcome = gw.shared.reload("test").await;
    assert!(outcome.ok, "{outcome:?}");
    assert_eq!(
        outcome.applied.as_ref().unwrap().listeners.removed,
        ["side"]
    );
    // The removed listener no longer accepts...
    assert!(tokio::net::TcpStream::connect(side).await.is_err());
    // ...the kept one serves the new config...
    assert_eq!(
        &get(&client(), &format!("http://{public}/")).await.1[..],
        b"other"
    );
    // ...and the response in progress ends complete on its old connection.
    release.notify_one();
    loop {
        let mut buf = [0u8; 1024];
        let n = conn.read(&mut buf).await.unwrap();
        got.extend_from_slice(&buf[..n]);
        if n == 0 || String::from_utf8_lossy(&got).ends_with("0\r\n\r\n") {
            break;
        }
    }
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.contains("first ") && text.contains("half") && text.ends_with("0\r\n\r\n"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_moved_to_a_port_in_use_fails_the_reload_and_keeps_serving() {
    let a = upstream::ok("a").await;
    let gw = start("port", &app(&[a.addr])).await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap();
    let moved = app(&[a.addr]).replace("127.0.0.1:0", &taken_addr.to_string());
    std::fs::write(&gw.path, &moved).unwrap();
    let outcome = gw.shared.reload("test").await;
    assert!(!outcome.ok);
    assert!(
        outcome.errors[0]
            .message
            .contains(&format!("cannot listen on {taken_addr}")),
        "{outcome:?}"
    );
    assert_eq!(
        get(&client(), &format!("http://{}/", gw.addrs[0]))
            .await
            .0
            .status,
        200
    );
    drop(taken);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_reloads_in_a_row_each_answer_and_the_last_one_serves() {
    let targets = [upstream::ok("0").await, upstream::ok("1").await];
    let gw = start("burst", &app(&[targets[0].addr])).await;
    let mut answers = Vec::new();
    for i in 0..10 {
        rewrite(&gw.path, &app(&[targets[i % 2].addr]));
        let shared = gw.shared.clone();
        answers.push(tokio::spawn(async move { shared.reload("test").await }));
    }
    for answer in answers {
        let outcome = answer.await.unwrap();
        assert!(outcome.ok, "{outcome:?}");
    }
    let url = format!("http://{}/", gw.addrs[0]);
    assert_eq!(&get(&client(), &url).await.1[..], b"1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_tunnel_survives_a_reload_that_removes_its_upstream() {
    use crate::support::websocket::{connect, next, ws_upstream};
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let (ws_up, _closes) = ws_upstream().await;
    let other = upstream::ok("other").await;
    let gw = start("ws", &app(&[ws_up.addr])).await;
    let mut ws = connect(gw.addrs[0], "/chat").await;
    ws.send(Message::text("before")).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::text("before"));

    std::fs::write(&gw.path, app(&[other.addr])).unwrap();
    let outcome = gw.shared.reload("test").await;
    assert!(outcome.ok, "{outcome:?}");
    // New requests go to the new target; the tunnel still talks to the old one.
    let url = format!("http://{}/", gw.addrs[0]);
    assert_eq!(&get(&client(), &url).await.1[..], b"other");
    ws.send(Message::text("after")).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::text("after"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untouched_targets_need_no_new_health_check_round_after_a_reload() {
    let (a, b) = (upstream::ok("a").await, upstream::ok("b").await);
    // TCP checks once a minute: every accept an upstream sees here is a check.
    let checked = |targets: &[SocketAddr]| {
        app(targets)
            + "[upstream.app.health]\ntype = \"tcp\"\ninterval = \"60s\"\nrise = 1\nfall = 1\n"
    };
    let gw = start("checks", &checked(&[a.addr])).await;
    a.stats.wait_for(|s| s.accepts() >= 1).await;
    let url = format!("http://{}/", gw.addrs[0]);
    wait_until(|| gw.shared.not_ready().is_none()).await;
    std::fs::write(&gw.path, checked(&[a.addr, b.addr])).unwrap();
    let outcome = gw.shared.reload("test").await;
    assert!(outcome.ok, "{outcome:?}");
    // The new target is checked at once; the kept one keeps its state and its schedule.
    b.stats.wait_for(|s| s.accepts() >= 1).await;
    assert_eq!(a.stats.accepts(), 1, "no new check of the untouched target");
    assert_eq!(get(&client(), &url).await.0.status, 200);
    let status = gw.shared.snapshot.load();
    let target = &status.upstreams["app"].targets[0];
    assert_eq!(target.state().as_str(), "healthy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_held_in_an_outage_is_served_by_the_targets_a_reload_brings() {
    let dead = upstream::closed_port().await;
    let live = upstream::ok("live").await;
    let checked = |target: SocketAddr| {
        app(&[target]) + "[upstream.app.health]\ntype = \"tcp\"\ninterval = \"60s\"\n"
    };
    let gw = start("held", &checked(dead)).await;
    let url = format!("http://{}/", gw.addrs[0]);
    // Held: the only target never came up (its check failed, the next is a minute away).
    let held = tokio::spawn(async move { get(&client(), &url).await });
    wait_until(|| gw.shared.snapshot.load().upstreams["app"].hold.depth() == 1).await;
    std::fs::write(&gw.path, checked(live.addr)).unwrap();
    let outcome = gw.shared.reload("test").await;
    assert!(outcome.ok, "{outcome:?}");
    // It moves to the new upstream and is served there, long before its 10 s hold ends.
    let (parts, body) = tokio::time::timeout(Duration::from_secs(5), held)
        .await
        .expect("served before the hold ran out")
        .unwrap();
    assert_eq!((parts.status.as_u16(), &body[..]), (200, &b"live"[..]));
}
