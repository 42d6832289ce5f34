//! Absorbing upstream failures: crashes, keep-alive races, resets, slow targets — and never
//! executing a POST twice.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::Method;
use tokio::io::AsyncReadExt;

use crate::support::node::{fleet, Node};
use crate::support::traffic::{self, errors};
use crate::support::upstream;
use crate::support::{self, client, get, send};

fn addrs(nodes: &[Arc<Node>]) -> Vec<std::net::SocketAddr> {
    nodes.iter().map(|n| n.addr).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_target_mid_traffic_loses_no_get() {
    let nodes = fleet(3).await;
    let cfg = support::config(&addrs(&nodes));
    let gw = support::start(cfg).await;
    nodes[0].set_delay(Duration::from_millis(5));
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(traffic::run(
        client(),
        gw.url("/"),
        Method::GET,
        4,
        Duration::ZERO,
        150,
        stop.clone(),
    ));
    // Kill once traffic is flowing through the node, with requests in flight on it.
    nodes[0].wait_for(|n| n.requests() >= 20).await;
    nodes[0].kill().await;
    let outcomes = load.await.unwrap();
    assert_eq!(outcomes.len(), 600);
    assert!(
        errors(&outcomes).is_empty(),
        "client-visible errors: {:?}",
        errors(&outcomes)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_during_a_crash_is_never_executed_twice() {
    let nodes = fleet(3).await;
    let cfg = support::config(&addrs(&nodes));
    let gw = support::start(cfg).await;
    for n in &nodes {
        n.set_delay(Duration::from_millis(10));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(traffic::run(
        client(),
        gw.url("/orders"),
        Method::POST,
        6,
        Duration::ZERO,
        60,
        stop,
    ));
    nodes[1].wait_for(|n| n.requests() >= 10).await;
    nodes[1].kill().await;
    let live_before = (nodes[0].requests(), nodes[2].requests());
    let outcomes = load.await.unwrap();

    let mut executed: HashMap<String, usize> = HashMap::new();
    for n in &nodes {
        for (id, count) in n.counters.executed.lock().unwrap().iter() {
            *executed.entry(id.clone()).or_default() += count;
        }
    }
    let twice: Vec<_> = executed.iter().filter(|(_, &c)| c > 1).collect();
    assert!(twice.is_empty(), "POSTs executed more than once: {twice:?}");
    // Every POST that failed had been written to the killed node when it died: the node may
    // have acted on it (counted) or died before reading it (not counted), gatewise cannot tell
    // which, so it fails with a named cause rather than risk a second execution. Only requests
    // caught by the crash can be among them: per client, the one in flight, and at most one
    // more written to a pooled connection whose close had not reached gatewise yet.
    let failed = errors(&outcomes);
    let mut per_client: HashMap<&str, usize> = HashMap::new();
    for o in &failed {
        let client = o.id.split('-').next().unwrap_or("");
        *per_client.entry(client).or_default() += 1;
    }
    assert!(
        per_client.values().all(|&n| n <= 2),
        "more failures than the crash can explain: {failed:?}"
    );
    let dead = nodes[1].addr.to_string();
    for o in failed {
        assert_eq!(o.status, 502, "{o:?}");
        assert!(
            o.proxy_status.as_deref().unwrap_or("").contains(&dead),
            "failed on the killed node: {o:?}"
        );
        assert!(
            o.proxy_status
                .as_deref()
                .unwrap_or("")
                .contains("error=connection_terminated"),
            "{o:?}"
        );
        assert!(
            executed.get(&o.id).copied().unwrap_or(0) <= 1,
            "a failed POST ran at most once: {o:?}"
        );
    }
    // Requests sent after the crash went to the live nodes.
    assert!(
        nodes[0].requests() > live_before.0 && nodes[2].requests() > live_before.1,
        "the live nodes took the traffic after the crash"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_close_at_the_reuse_moment_loses_no_get() {
    // Targets close idle connections after 150 ms without announcing it; requests come at
    // gaps around that, so reuse races the close.
    let mut targets = Vec::new();
    for _ in 0..3 {
        targets.push(upstream::idle_closer(Duration::from_millis(150), None).await);
    }
    let cfg = support::config(&targets.iter().map(|m| m.addr).collect::<Vec<_>>());
    let gw = support::start(cfg).await;
    let c = client();
    let mut failures = Vec::new();
    for i in 0..60u64 {
        let (parts, _) = get(&c, &gw.url("/")).await;
        if parts.status != 200 {
            failures.push((i, parts.status, parts.headers.get("proxy-status").cloned()));
        }
        tokio::time::sleep(Duration::from_millis(40 + (i * 37) % 130)).await;
    }
    assert!(failures.is_empty(), "{failures:?}");
    let closed: usize = targets
        .iter()
        .map(|m| m.stats.closed.load(Ordering::SeqCst))
        .sum();
    assert!(
        closed > 10,
        "the targets did close idle connections ({closed})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn announced_keep_alive_timeout_protects_post_from_the_idle_race() {
    // The upstream says `Keep-Alive: timeout=1` and closes after 1 s idle; the pool must stop
    // reusing before that, so even a POST (never retried once written) does not fail.
    let up = upstream::idle_closer(Duration::from_millis(1000), Some(1)).await;
    let mut cfg = support::config(&[up.addr]);
    support::route_of(&mut cfg).retries = 0;
    let gw = support::start(cfg).await;
    let c = client();
    for gap in [300u64, 490, 510, 700, 950, 1000, 1050, 200] {
        let req = http::Request::post(gw.url("/"))
            .body(http_body_util::Full::new(bytes::Bytes::from_static(b"x")))
            .unwrap();
        let (parts, _) = send(&c, req).await;
        assert_eq!(
            parts.status,
            200,
            "after a {gap} ms gap: {:?}",
            parts.headers.get("proxy-status")
        );
        tokio::time::sleep(Duration::from_millis(gap)).await;
    }
}

/// A target that reads the request and resets the connection without answering.
async fn resetter() -> upstream::Mock {
    upstream::raw(|mut stream, _| async move {
        let mut buf = [0u8; 4096];
        let _ = stream.read(&mut buf).await;
        // Zero linger turns the close into a reset; the socket is non-blocking, so the
        // deprecation's concern (a blocking drop) does not apply.
        #[allow(deprecated)]
        let _ = stream.set_linger(Some(Duration::ZERO));
        drop(stream);
    })
    .await
}

#[tokio::test]
async fn reset_after_reading_is_retried_for_get_not_for_post() {
    let bad = resetter().await;
    let good = upstream::ok("fine").await;
    let mut cfg = support::config(&[bad.addr, good.addr]);
    support::upstream_of(&mut cfg).passive.consecutive_failures = 0;
    // Round robin keeps sending to the resetting target; peak_ewma (the default) would learn
    // from the first reset to avoid it, and no POST would reach it.
    support::upstream_of(&mut cfg).balance = gatewise::config::Balance::RoundRobin;
    let gw = support::start(cfg).await;
    let c = client();
    for _ in 0..4 {
        let (parts, body) = get(&c, &gw.url("/")).await;
        assert_eq!((parts.status.as_u16(), body.as_ref()), (200, &b"fine"[..]));
    }
    // A POST that reached the resetting target may have been executed: not retried.
    let mut saw_terminated = false;
    for _ in 0..4 {
        let req = http::Request::post(gw.url("/"))
            .body(http_body_util::Full::new(bytes::Bytes::from_static(b"x")))
            .unwrap();
        let (parts, _) = send(&c, req).await;
        if parts.status == 502 {
            let ps = parts.headers["proxy-status"].to_str().unwrap();
            assert!(
                ps.contains("error=connection_terminated") && ps.contains("attempts=1"),
                "{ps}"
            );
            saw_terminated = true;
        } else {
            assert_eq!(parts.status, 200);
        }
    }
    assert!(
        saw_terminated,
        "round robin sends some POSTs to the resetting target"
    );
}

// Real time, not a paused clock, in the tests below that talk to sockets: a paused runtime that
// finds no I/O ready at once jumps to its next timer, which could expire a timeout while an
// answer is still on its way through a loaded machine's loopback.
#[tokio::test]
async fn slow_target_beyond_per_try_timeout_is_retried_elsewhere() {
    let slow = upstream::hang().await;
    let good = upstream::ok("fast").await;
    let mut cfg = support::config(&[slow.addr, good.addr]);
    support::route_of(&mut cfg).per_try_timeout = Duration::from_secs(1);
    let gw = support::start(cfg).await;
    let c = client();
    let mut timed_out = 0;
    for _ in 0..4 {
        let (parts, body) = get(&c, &gw.url("/")).await;
        assert_eq!((parts.status.as_u16(), body.as_ref()), (200, &b"fast"[..]));
        let line = gw.next_log();
        let attempts = line["attempts"].as_array().unwrap();
        if attempts.len() == 2 {
            assert_eq!(attempts[0]["cause"], "http_response_timeout");
            assert_eq!(attempts[1]["status"], 200);
            timed_out += 1;
        }
    }
    assert!(timed_out >= 1, "some requests met the slow target first");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_target_failing_names_the_last_cause_and_attempts() {
    let a = upstream::closed_port().await;
    let b = upstream::closed_port().await;
    let mut cfg = support::config(&[a, b]);
    // With the outage hold on, every target refusing is held instead (tests/it/hold.rs).
    support::upstream_of(&mut cfg).outage_hold = Duration::ZERO;
    let gw = support::start(cfg).await;
    let (parts, _) = get(&client(), &gw.url("/")).await;
    assert_eq!(parts.status, 502);
    let ps = parts.headers["proxy-status"].to_str().unwrap();
    assert!(
        ps.contains("error=connection_refused") && ps.contains("attempts=3"),
        "{ps}"
    );
    let line = gw.next_log();
    assert_eq!(line["attempts"].as_array().unwrap().len(), 3);
    assert_eq!(line["retry_stop"], "attempts_exhausted");
    // Both targets were tried before either was tried again.
    assert_ne!(line["attempts"][0]["target"], line["attempts"][1]["target"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_retry_budget_is_logged() {
    let a = upstream::closed_port().await;
    let mut cfg = support::config(&[a]);
    support::route_of(&mut cfg).retry_budget_ratio = 0.0;
    support::route_of(&mut cfg).retry_budget_per_second = 0;
    // With the outage hold on, the refused request is held instead (tests/it/hold.rs).
    support::upstream_of(&mut cfg).outage_hold = Duration::ZERO;
    let gw = support::start(cfg).await;
    let (parts, _) = get(&client(), &gw.url("/")).await;
    assert_eq!(parts.status, 502);
    let line = gw.next_log();
    assert_eq!(line["retry_stop"], "budget_exhausted");
    assert_eq!(line["attempts"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn status_retry_moves_idempotent_requests_only() {
    let failing = upstream::serve(|_| {
        let mut r = http::Response::new(http_body_util::Full::new(bytes::Bytes::from_static(
            b"down",
        )));
        *r.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
        r
    })
    .await;
    let good = upstream::ok("up").await;
    let mut cfg = support::config(&[failing.addr, good.addr]);
    // Round robin keeps sending first attempts to the failing target; peak_ewma (the default)
    // counts its 503s as failures and soon sends it nothing, so no POST would meet it.
    support::upstream_of(&mut cfg).balance = gatewise::config::Balance::RoundRobin;
    let gw = support::start(cfg).await;
    let c = client();
    for _ in 0..4 {
        assert_eq!(get(&c, &gw.url("/")).await.0.status, 200);
    }
    // The upstream's own 503 passes through for a POST, marked as received from upstream.
    let mut passed_through = false;
    for _ in 0..4 {
        let req = http::Request::post(gw.url("/"))
            .body(http_body_util::Full::new(bytes::Bytes::from_static(b"x")))
            .unwrap();
        let (parts, body) = send(&c, req).await;
        if parts.status == 503 {
            assert_eq!(body.as_ref(), b"down");
            let ps = parts.headers["proxy-status"].to_str().unwrap();
            assert!(ps.contains("received-status=503"), "{ps}");
            passed_through = true;
        }
    }
    assert!(passed_through);
}

#[tokio::test]
async fn keyed_post_answered_503_by_a_target_not_ready_is_served_by_another() {
    let not_ready = upstream::serve(|_| {
        let mut r = http::Response::new(http_body_util::Full::new(bytes::Bytes::from_static(
            b"not ready",
        )));
        *r.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
        r
    })
    .await;
    let good = upstream::echo().await;
    let mut cfg = support::config(&[not_ready.addr, good.addr]);
    // Round robin, so the not-ready target gets its share of first attempts (peak_ewma, the
    // default, counts its 503s as failures and soon sends it nothing).
    support::upstream_of(&mut cfg).balance = gatewise::config::Balance::RoundRobin;
    let gw = support::start(cfg).await;
    let c = client();
    // Until the not-ready target has answered some of them (round robin starts anywhere).
    let mut sent = 0;
    while not_ready.stats.requests() < 2 {
        sent += 1;
        assert!(sent <= 10, "the not-ready target was never tried");
        let body = format!("order-{sent}");
        let req = http::Request::post(gw.url("/"))
            .header("idempotency-key", format!("key-{sent}"))
            .body(http_body_util::Full::new(bytes::Bytes::from(body.clone())))
            .unwrap();
        let (parts, got) = send(&c, req).await;
        assert_eq!(parts.status, 200, "keyed POST {sent}");
        assert_eq!(got, body.as_bytes());
        let line = gw.next_log();
        let attempts = line["attempts"].as_array().unwrap();
        if attempts.len() == 2 {
            assert_eq!(attempts[0]["status"], 503);
            assert_eq!(attempts[1]["status"], 200);
        }
    }
    // Every keyed POST reached the good target exactly once.
    assert_eq!(good.stats.requests(), sent);
}

#[tokio::test]
async fn connect_timeout_is_504_connection_timeout() {
    // A listener whose accept queue is full and never drained: new SYNs go unanswered, which is
    // what a firewall that drops packets looks like (field guide row 12).
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(0).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..8 {
        if let Ok(Ok(s)) = tokio::time::timeout(
            Duration::from_millis(100),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            fillers.push(s);
        }
    }
    let mut cfg = support::config(&[addr]);
    support::upstream_of(&mut cfg).connect_timeout = Duration::from_millis(200);
    support::route_of(&mut cfg).retries = 0;
    let gw = support::start(cfg).await;
    let (parts, _) = get(&client(), &gw.url("/")).await;
    support::assert_generated(&parts, 504, "connection_timeout");
    assert_eq!(gw.next_log()["attempts"][0]["request_sent"], false);
    drop(listener);
}

#[tokio::test]
async fn overall_route_deadline_bounds_every_attempt() {
    let slow = upstream::hang().await;
    let mut cfg = support::config(&[slow.addr]);
    support::route_of(&mut cfg).timeout = Duration::from_millis(300);
    support::route_of(&mut cfg).per_try_timeout = Duration::from_secs(5);
    let gw = support::start(cfg).await;
    let started = tokio::time::Instant::now();
    let (parts, _) = get(&client(), &gw.url("/")).await;
    assert_eq!(parts.status, 504);
    // The route deadline (300 ms) ended it, far sooner than the per-try timeout (5 s).
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let line = gw.next_log();
    assert_eq!(line["cause"], "http_response_timeout");
    assert_eq!(
        line["attempts"].as_array().unwrap().len(),
        1,
        "no time left to retry: {line}"
    );
}

#[tokio::test]
async fn upstream_body_stalling_mid_stream_is_cut_and_logged() {
    // Headers and part of the body, then silence.
    let up = upstream::raw(|mut stream, _| async move {
        let mut buf = [0u8; 4096];
        let _ = stream.read(&mut buf).await;
        let _ = tokio::io::AsyncWriteExt::write_all(
            &mut stream,
            b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial",
        )
        .await;
        tokio::time::sleep(Duration::from_secs(3600)).await;
    })
    .await;
    let mut cfg = support::config(&[up.addr]);
    support::upstream_of(&mut cfg).body_idle_timeout = Duration::from_millis(500);
    let gw = support::start(cfg).await;
    let resp = client()
        .request(
            http::Request::get(gw.url("/"))
                .body(http_body_util::Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "the head was already on its way");
    let body = http_body_util::BodyExt::collect(resp.into_body()).await;
    assert!(
        body.is_err(),
        "the client sees a truncated body, not a complete one"
    );
    let line = gw.next_log();
    assert_eq!(line["cause"], "http_response_timeout");
    assert_eq!(line["incomplete"], true);
}
