//! Never routing to a target that cannot serve: rolling restarts, crashes, slow readiness,
//! everything down, and saturation.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use http::Method;

use crate::support::node::{fleet, Node, NOT_READY, READY};
use crate::support::traffic::{self, errors};
use crate::support::{self, client, get};

fn health(interval_ms: u64, rise: u32, fall: u32) -> gatewise::config::HealthConfig {
    let mut h = gatewise::config::HealthConfig::http("/health");
    h.interval = Duration::from_millis(interval_ms);
    // Generous: with `fall = 1`, one check slowed by a stalled machine would take a target out.
    h.timeout = Duration::from_secs(1);
    h.rise = rise;
    h.fall = fall;
    h
}

fn config_for(nodes: &[Arc<Node>]) -> gatewise::config::Config {
    let mut cfg = support::config(&nodes.iter().map(|n| n.addr).collect::<Vec<_>>());
    let up = support::upstream_of(&mut cfg);
    up.health = Some(health(100, 2, 1));
    up.slow_start = Duration::ZERO;
    cfg
}

/// Waits until the gateway routes to every node (each has served a request).
async fn until_all_serve(nodes: &[Arc<Node>], url: &str) {
    let c = client();
    while nodes.iter().any(|n| n.requests() == 0) {
        get(&c, url).await;
    }
}

async fn rolling_restart(abrupt: bool) {
    let nodes = fleet(3).await;
    let mut cfg = config_for(&nodes);
    // At this test's modest rate the default budget (10/s + 20%) leaves little spare while a
    // node answers 503 before its check is applied; the budget has its own tests.
    support::route_of(&mut cfg).retry_budget_per_second = 1000;
    let gw = support::start(cfg).await;
    until_all_serve(&nodes, &gw.url("/")).await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(traffic::run(
        client(),
        gw.url("/"),
        Method::GET,
        3,
        Duration::from_millis(5),
        100_000,
        stop.clone(),
    ));
    for node in &nodes {
        if !abrupt {
            // Graceful: the instance fails its health check first, then goes away.
            node.set_mode(NOT_READY);
            node.checks_applied(1).await;
        }
        node.kill().await;
        // Back, listening but not ready (503 on /health and traffic) for 2 s, then ready.
        node.restart(NOT_READY).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        node.set_mode(READY);
        let served = node.requests();
        node.wait_for(|n| n.requests() > served).await;
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let outcomes = load.await.unwrap();
    assert!(
        outcomes.len() > 300,
        "steady traffic ran ({})",
        outcomes.len()
    );
    assert!(
        errors(&outcomes).is_empty(),
        "client-visible errors: {:?}",
        errors(&outcomes)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_rolling_restart_loses_no_request() {
    rolling_restart(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abrupt_rolling_restart_loses_no_request() {
    rolling_restart(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_slow_to_become_ready_gets_no_traffic_then_a_ramp() {
    let nodes = fleet(2).await;
    nodes[1].set_mode(NOT_READY);
    let mut cfg = config_for(&nodes);
    support::upstream_of(&mut cfg).slow_start = Duration::from_secs(2);
    let gw = support::start(cfg).await;
    let c = client();
    // Not ready: health checks arrive, traffic does not.
    while nodes[1].health_checks() < 3 {
        assert_eq!(get(&c, &gw.url("/")).await.0.status, 200);
    }
    assert_eq!(nodes[1].requests(), 0, "no traffic before ready");
    nodes[1].set_mode(READY);
    // It fails one check (fall 1) first... it was never healthy, so it must pass `rise` checks.
    while nodes[1].requests() == 0 {
        assert_eq!(get(&c, &gw.url("/")).await.0.status, 200);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Ramp: its share in the first ~0.6 s is below its share in a later window.
    let share = |n: usize, from: (usize, usize), to: (usize, usize)| {
        let total = (to.0 + to.1) - (from.0 + from.1);
        (if n == 1 { to.1 - from.1 } else { to.0 - from.0 }) as f64 / total.max(1) as f64
    };
    let counts = || (nodes[0].requests(), nodes[1].requests());
    let t0 = counts();
    for _ in 0..60 {
        get(&c, &gw.url("/")).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let t1 = counts();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let t2 = counts();
    for _ in 0..60 {
        get(&c, &gw.url("/")).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let t3 = counts();
    let early = share(1, t0, t1);
    let late = share(1, t2, t3);
    assert!(
        early < late,
        "ramping share early {early:.2} < late {late:.2}"
    );
    assert!(
        late > 0.3,
        "after the window it takes its full share ({late:.2})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_outage_hold_off_all_targets_down_is_a_fast_503_and_traffic_resumes_on_return() {
    let nodes = fleet(2).await;
    let mut cfg = config_for(&nodes);
    support::upstream_of(&mut cfg).health = Some(health(100, 1, 1));
    // `outage_hold = "0s"`: no hold, the 503 comes at once (the hold itself: tests/it/hold.rs).
    support::upstream_of(&mut cfg).outage_hold = Duration::ZERO;
    // Active checks alone decide here: a passive ejection earned before the checks noticed the
    // crash would (rightly) keep the target out for `base_ejection` after it returns.
    support::upstream_of(&mut cfg).passive.consecutive_failures = 0;
    let gw = support::start(cfg).await;
    until_all_serve(&nodes, &gw.url("/")).await;
    while gw.log.try_recv().is_ok() {}
    for n in &nodes {
        n.kill().await;
    }
    let c = client();
    // Wait until health has marked both down: a 503 that tried no target. (Before that, the
    // refused attempts end in the same 503: the hold is off.)
    loop {
        let (parts, _) = get(&c, &gw.url("/")).await;
        let tried = gw.next_log()["attempts"].as_array().unwrap().len();
        if parts.status == 503 && tried == 0 {
            break;
        }
    }
    while gw.log.try_recv().is_ok() {}
    let mut durations = Vec::new();
    for _ in 0..20 {
        let (parts, _) = get(&c, &gw.url("/")).await;
        assert_eq!(parts.status, 503);
        assert_eq!(parts.headers["retry-after"], "1");
        let ps = parts.headers["proxy-status"].to_str().unwrap();
        assert!(ps.contains("error=destination_unavailable"), "{ps}");
        let line = gw.next_log();
        assert_eq!(
            line["attempts"].as_array().unwrap().len(),
            0,
            "no target was tried"
        );
        durations.push(line["duration_ms"].as_u64().unwrap());
    }
    // Measured inside the gateway: the fast path waits on nothing (no queue, no hold, which
    // would take seconds). Every answer under 50 ms; one preemption of the test machine
    // may stretch a single sample, never the typical one.
    durations.sort_unstable();
    assert!(
        durations[durations.len() - 2] < 50 && durations[durations.len() - 1] < 1000,
        "{durations:?}"
    );
    // One target comes back: traffic flows right after its first passing check (rise 1), i.e.
    // within one check interval.
    nodes[0].restart(READY).await;
    nodes[0].checks_applied(1).await;
    let (parts, _) = get(&c, &gw.url("/")).await;
    assert_eq!(parts.status, 200, "served after the first passing check");
}

/// 8 concurrent requests through targets that take one request at a time.
async fn burst_through_one_slot_each(
    nodes: &[Arc<Node>],
    queue_timeout: Duration,
) -> Vec<traffic::Outcome> {
    let mut cfg = config_for(nodes);
    let up = support::upstream_of(&mut cfg);
    up.health = None;
    up.max_connections = Some(1);
    up.queue_timeout = queue_timeout;
    let gw = support::start(cfg).await;
    let stop = Arc::new(AtomicBool::new(false));
    traffic::run(
        client(),
        gw.url("/"),
        Method::GET,
        8,
        Duration::ZERO,
        1,
        stop,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saturated_targets_make_requests_wait_not_fail_until_queue_timeout() {
    let nodes = fleet(2).await;
    for n in &nodes {
        n.set_delay(Duration::from_millis(100));
    }
    // 8 concurrent requests, 2 slots: six wait in the queue, all succeed.
    let outcomes = burst_through_one_slot_each(&nodes, Duration::from_secs(5)).await;
    assert_eq!(outcomes.len(), 8);
    assert!(errors(&outcomes).is_empty(), "{:?}", errors(&outcomes));

    // With a queue timeout much shorter than one request, queued requests get a 503 instead.
    for n in &nodes {
        n.set_delay(Duration::from_millis(500));
    }
    let outcomes = burst_through_one_slot_each(&nodes, Duration::from_millis(20)).await;
    let limited: Vec<_> = outcomes.iter().filter(|o| o.status == 503).collect();
    assert!(!limited.is_empty(), "{outcomes:?}");
    for o in &limited {
        assert!(
            o.proxy_status
                .as_deref()
                .unwrap()
                .contains("error=connection_limit_reached"),
            "{o:?}"
        );
    }
    assert!(outcomes.iter().filter(|o| o.status == 200).count() >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_at_startup_wait_for_the_first_health_answer() {
    let nodes = fleet(1).await;
    let mut cfg = config_for(&nodes);
    support::upstream_of(&mut cfg).health = Some(health(100, 2, 1));
    let gw = support::start(cfg).await;
    // Sent at once: the first check has not answered yet; the request waits instead of a 503.
    let (parts, _) = get(&client(), &gw.url("/")).await;
    assert_eq!(parts.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_transitions_show_in_status_and_ready() {
    let nodes = fleet(1).await;
    let mut cfg = config_for(&nodes);
    cfg.admin.listen = Some("127.0.0.1:0".parse().unwrap());
    support::upstream_of(&mut cfg).health = Some(health(100, 1, 1));
    let gw = support::start(cfg).await;
    let admin = gw.admin.unwrap();
    let c = client();
    until_all_serve(&nodes, &gw.url("/")).await;
    assert_eq!(
        get(&c, &format!("http://{admin}/ready")).await.0.status,
        200
    );
    nodes[0].set_mode(NOT_READY);
    nodes[0].checks_applied(1).await;
    let (parts, body) = get(&c, &format!("http://{admin}/ready")).await;
    assert_eq!(parts.status, 503);
    assert!(String::from_utf8_lossy(&body).contains("no healthy target"));
    let (_, body) = get(&c, &format!("http://{admin}/status")).await;
    let status: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let target = &status["upstreams"]["default"]["targets"][0];
    assert_eq!(target["state"], "unhealthy", "{status}");
    let change = target["last_change"]["change"].as_str().unwrap();
    assert!(change.starts_with("healthy -> unhealthy"), "{change}");
    assert_eq!(status["ready"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_started_before_its_app_waits_for_the_app() {
    // The app is not up when the gateway starts (its first check fails); a request made then
    // waits for the first healthy target instead of failing (field guide row 7).
    let nodes = fleet(1).await;
    nodes[0].kill().await;
    let gw = support::start(config_for(&nodes)).await;
    let c = client();
    let url = gw.url("/");
    let req = tokio::spawn(async move { get(&c, &url).await.0.status });
    // Several check intervals (100 ms) pass with the app down; the request is still waiting.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !req.is_finished(),
        "the request waits while the app is down at start"
    );
    nodes[0].restart(READY).await;
    assert_eq!(req.await.unwrap(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_mode_balances_over_all_targets_when_too_few_are_healthy() {
    // Two of three targets fail their health checks but still serve traffic (a broken health
    // endpoint, say). Below the panic threshold, gatewise spreads over all of them rather than
    // piling everything on the one healthy target.
    let nodes = fleet(3).await;
    let mut cfg = config_for(&nodes);
    support::upstream_of(&mut cfg).panic_threshold = Some(0.5);
    // Round robin: this test is about which targets panic mode may use, not about the balancer.
    // Peak EWMA (the default) rightly keeps away from a target whose last answers were the 503s
    // of its NOT_READY phase, so one of the two could get nothing in 60 fast requests (seen:
    // [29, 31, 0] in CI runs).
    support::upstream_of(&mut cfg).balance = gatewise::config::Balance::RoundRobin;
    let gw = support::start(cfg).await;
    until_all_serve(&nodes, &gw.url("/")).await;
    for n in &nodes[1..] {
        n.set_mode(NOT_READY);
    }
    for n in &nodes[1..] {
        n.checks_applied(1).await;
    }
    // They serve traffic again, but their health endpoint stays red.
    for n in &nodes[1..] {
        n.set_health_only_failing(true);
        n.set_mode(READY);
    }
    let before: Vec<usize> = nodes.iter().map(|n| n.requests()).collect();
    let c = client();
    for _ in 0..60 {
        assert_eq!(get(&c, &gw.url("/")).await.0.status, 200);
    }
    let served: Vec<usize> = nodes
        .iter()
        .zip(&before)
        .map(|(n, b)| n.requests() - b)
        .collect();
    assert!(
        served[1] > 0 && served[2] > 0,
        "panic mode uses unhealthy targets too: {served:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn panic_mode_does_not_skip_the_outage_hold_or_the_fast_503() {
    use gatewise::upstream::{hold::Held, TriedTargets, Upstream};
    // Nothing listens on these ports and no check has passed: panic mode must not send traffic
    // to targets nobody has seen healthy.
    let mut cfg =
        gatewise::config::UpstreamConfig::new(vec!["127.0.0.1:9".into(), "127.0.0.1:10".into()]);
    cfg.health = Some(gatewise::config::HealthConfig::http("/health"));
    cfg.panic_threshold = Some(0.5);
    let up = Upstream::new("app", cfg);
    let deadline = tokio::time::Instant::now() + Duration::from_millis(200);
    let mut held = Held::default();
    let err = up
        .acquire(TriedTargets::default(), deadline, &mut held)
        .await
        .err()
        .expect("no target handed out");
    assert_eq!(err.cause, gatewise::cause::Cause::DestinationUnavailable);
    // Held (outage_hold 10 s by default), but never past the request's deadline.
    assert_eq!(held.total(), Duration::from_millis(200));
    assert!(err.detail.contains("never been healthy"), "{}", err.detail);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_cuts_its_bodies_short_is_ejected() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let cutter = crate::support::upstream::raw(|mut stream, _| async move {
        let mut buf = [0u8; 4096];
        let _ = stream.read(&mut buf).await;
        let _ = stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\ntruncated")
            .await;
    })
    .await;
    let good = crate::support::upstream::ok("whole").await;
    let mut cfg = support::config(&[cutter.addr, good.addr]);
    support::upstream_of(&mut cfg).passive.consecutive_failures = 1;
    let gw = support::start(cfg).await;
    let c = client();
    let complete = |c: &crate::support::TestClient| {
        let req = http::Request::get(gw.url("/"))
            .body(http_body_util::Full::default())
            .unwrap();
        let fut = c.request(req);
        async move {
            let resp = fut.await.unwrap();
            http_body_util::BodyExt::collect(resp.into_body())
                .await
                .is_ok()
        }
    };
    while complete(&c).await {}
    // The cut body counted as a failure: the cutter is ejected, every request now completes.
    for _ in 0..8 {
        assert!(
            complete(&c).await,
            "after the cut, traffic avoids the target that cut it"
        );
    }
}
