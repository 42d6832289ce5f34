//! A slow target costs the route no tail latency: one of three targets answers after 3 s while
//! its health check stays fast, under steady GET load.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::support::node::{fleet, Node};
use crate::support::{self, client, get, TestGateway};

/// Steady GET load for `dur`: `workers` loops, each pausing 10 ms between requests. Returns every
/// request's latency and the statuses that were not 200.
pub async fn steady_load(
    gw: &TestGateway,
    workers: usize,
    dur: Duration,
) -> (Vec<Duration>, Vec<u16>) {
    let mut tasks = tokio::task::JoinSet::new();
    let start = Instant::now();
    for _ in 0..workers {
        let (c, url) = (client(), gw.url("/"));
        tasks.spawn(async move {
            let (mut lat, mut bad) = (Vec::new(), Vec::new());
            while start.elapsed() < dur {
                let t0 = Instant::now();
                let status = get(&c, &url).await.0.status.as_u16();
                lat.push(t0.elapsed());
                if status != 200 {
                    bad.push(status);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (lat, bad)
        });
    }
    let (mut lat, mut bad) = (Vec::new(), Vec::new());
    while let Some(r) = tasks.join_next().await {
        let (l, b) = r.unwrap();
        lat.extend(l);
        bad.extend(b);
    }
    lat.sort();
    (lat, bad)
}

/// The `q` quantile of sorted latencies.
pub fn quantile(sorted: &[Duration], q: f64) -> Duration {
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len());
    sorted[i - 1]
}

/// Three nodes with a fast active health check, and a gateway in front with `tune` applied.
pub async fn slow_target_setup(
    tune: impl FnOnce(&mut gatewise::config::Config),
) -> (Vec<Arc<Node>>, TestGateway) {
    let nodes = fleet(3).await;
    let addrs: Vec<_> = nodes.iter().map(|n| n.addr).collect();
    let mut cfg = support::config(&addrs);
    let mut h = gatewise::config::HealthConfig::http("/health");
    h.interval = Duration::from_millis(200);
    h.rise = 1;
    support::upstream_of(&mut cfg).health = Some(h);
    support::upstream_of(&mut cfg).slow_start = Duration::ZERO;
    tune(&mut cfg);
    let gw = support::start(cfg).await;
    (nodes, gw)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_target_with_fast_health_costs_the_route_no_tail_latency() {
    // Default balancer, no hedging.
    let (nodes, gw) = slow_target_setup(|_| {}).await;
    let (base, bad) = steady_load(&gw, 4, Duration::from_secs(4)).await;
    assert!(bad.is_empty(), "errors with no slow target: {bad:?}");
    let base_p99 = quantile(&base, 0.99);

    // One target turns slow; its health check stays fast.
    nodes[0].set_delay(Duration::from_secs(3));
    let slow_before = nodes[0].requests();
    let (lat, bad) = steady_load(&gw, 4, Duration::from_secs(10)).await;
    assert!(bad.is_empty(), "errors with a slow target: {bad:?}");
    let p99 = quantile(&lat, 0.99);
    let slow = lat.iter().filter(|d| **d >= Duration::from_secs(1)).count();
    eprintln!(
        "no slow target: {} requests, p99 {base_p99:?}; slow target: {} requests, p99 {p99:?}, \
         {slow} slow, {} sent to it",
        base.len(),
        lat.len(),
        nodes[0].requests() - slow_before
    );
    // A loaded test machine's baseline p99 can be a millisecond; 10 ms is the floor compared to.
    let bound = 3 * base_p99.max(Duration::from_millis(10));
    assert!(
        p99 <= bound,
        "p99 {p99:?} above 3x the baseline ({base_p99:?})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hedging_bounds_the_tail_when_a_target_turns_slow() {
    let hedge_after = Duration::from_millis(50);
    let (nodes, gw) =
        slow_target_setup(|c| support::route_of(c).hedge_after = Some(hedge_after)).await;
    let (base, bad) = steady_load(&gw, 4, Duration::from_secs(4)).await;
    assert!(bad.is_empty(), "errors with no slow target: {bad:?}");
    let base_p999 = quantile(&base, 0.999);

    nodes[0].set_delay(Duration::from_secs(3));
    let (lat, bad) = steady_load(&gw, 4, Duration::from_secs(10)).await;
    assert!(bad.is_empty(), "errors with a slow target: {bad:?}");
    let p999 = quantile(&lat, 0.999);
    let max = *lat.last().unwrap();
    // Every request that met the slow target was hedged: none waited for its 3 s answer.
    let hedges: Vec<serde_json::Value> = std::iter::from_fn(|| gw.log.try_recv().ok())
        .map(|line| serde_json::from_slice(&line).unwrap())
        .filter(|l: &serde_json::Value| {
            l["attempts"]
                .as_array()
                .unwrap()
                .iter()
                .any(|a| a["hedge"] == true)
        })
        .collect();
    eprintln!(
        "no slow target: p99.9 {base_p999:?}; slow target, hedge_after {hedge_after:?}: {} \
         requests, p99.9 {p999:?}, max {max:?}, {} hedged",
        lat.len(),
        hedges.len()
    );
    assert!(!hedges.is_empty(), "no request was hedged");
    for h in &hedges {
        assert_eq!(h["status"], 200, "{h}");
        let attempts = h["attempts"].as_array().unwrap();
        assert_eq!(attempts.len(), 2, "{h}");
        assert!(attempts.iter().any(|a| a["cancelled"] == true), "{h}");
    }
    assert!(max < Duration::from_secs(1), "a request waited {max:?}");
    // A hedged request waits `hedge_after` before the hedge starts; beyond that, the tail stays
    // within 3x of the run without a slow target (10 ms floor, as above).
    let bound = hedge_after + 3 * base_p999.max(Duration::from_millis(10));
    assert!(p999 <= bound, "p99.9 {p999:?} above {bound:?}");
}

#[tokio::test]
async fn a_target_answering_503_fast_draws_no_traffic_with_peak_ewma() {
    // Passive health does not count 503s here (no failure_statuses): the balancer alone.
    let not_ready = crate::support::upstream::serve(|_| {
        let mut r = http::Response::new(http_body_util::Full::new(bytes::Bytes::from_static(
            b"not ready",
        )));
        *r.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
        r
    })
    .await;
    let good = crate::support::upstream::ok("up").await;
    let gw = support::start(support::config(&[not_ready.addr, good.addr])).await;
    let c = client();
    for _ in 0..50 {
        assert_eq!(get(&c, &gw.url("/")).await.0.status, 200);
    }
    // Its fast 503s count as failures in its latency estimate, not as a fast target.
    assert!(
        not_ready.stats.requests() <= 3,
        "{} of 50 first attempts went to the target answering 503",
        not_ready.stats.requests()
    );
}
