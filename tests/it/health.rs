//! Active health checks against in-process upstreams on loopback: what one probe concludes, and
//! when the check loop probes (under paused time, with a scripted prober).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use gatewise::config::{HealthCheckKind, HealthConfig};
use gatewise::upstream::health::active::{
    probe, run_checks, run_checks_paced, run_checks_with, Pace, ProbeOutcome, Prober,
};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// An HTTP/1 upstream answering `health_status` on `/health` and 404 elsewhere; every request's
/// (path, Host, Connection, User-Agent) goes to the returned channel.
async fn http_upstream(health_status: u16) -> (SocketAddr, mpsc::UnboundedReceiver<[String; 4]>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (seen_tx, seen) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let seen_tx = seen_tx.clone();
            let service = service_fn(move |req: Request<Incoming>| {
                let header = |name| {
                    req.headers()
                        .get(name)
                        .map_or(String::new(), |v| v.to_str().unwrap().to_string())
                };
                let _ = seen_tx.send([
                    req.uri().path().to_string(),
                    header(http::header::HOST),
                    header(http::header::CONNECTION),
                    header(http::header::USER_AGENT),
                ]);
                let status = if req.uri().path() == "/health" {
                    health_status
                } else {
                    404
                };
                let mut resp = Response::new(Full::new(Bytes::from_static(b"body")));
                *resp.status_mut() = StatusCode::from_u16(status).unwrap();
                async move { Ok::<_, Infallible>(resp) }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    (addr, seen)
}

/// A port nothing listens on.
/// Accepts connections and reads forever without answering.
async fn silent_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
            });
        }
    });
    addr
}

/// Reads the request head, then closes without a response.
async fn hang_up_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf).await;
        }
    });
    addr
}

fn http_check(path: &str, timeout: Duration) -> HealthConfig {
    let mut cfg = HealthConfig::http(path);
    cfg.timeout = timeout;
    cfg
}

fn tcp_check() -> HealthConfig {
    let mut cfg = HealthConfig::http("/");
    cfg.kind = HealthCheckKind::Tcp;
    cfg
}

fn outcome(ok: bool, detail: &str) -> ProbeOutcome {
    ProbeOutcome {
        ok,
        detail: detail.to_string(),
    }
}

const SECOND: Duration = Duration::from_secs(1);

#[tokio::test]
async fn http_probe_passes_on_200_with_the_documented_request() {
    let (addr, mut seen) = http_upstream(200).await;
    let target = addr.to_string();
    let got = probe(&target, &http_check("/health", SECOND)).await;
    assert_eq!(got, outcome(true, "status 200"));
    let [path, host, connection, agent] = seen.recv().await.unwrap();
    assert_eq!(path, "/health");
    assert_eq!(host, target);
    assert_eq!(connection, "close");
    assert_eq!(agent, "gatewise-health");
}

#[tokio::test]
async fn http_probe_fails_on_status_outside_the_expected_range() {
    let (addr, _seen) = http_upstream(503).await;
    let got = probe(&addr.to_string(), &http_check("/health", SECOND)).await;
    assert_eq!(got, outcome(false, "status 503"));
    let got = probe(&addr.to_string(), &http_check("/elsewhere", SECOND)).await;
    assert_eq!(got, outcome(false, "status 404"));
    let mut only_404 = http_check("/elsewhere", SECOND);
    only_404.kind = HealthCheckKind::Http {
        path: "/elsewhere".into(),
        expected_status: (404, 404),
    };
    let got = probe(&addr.to_string(), &only_404).await;
    assert_eq!(got, outcome(true, "status 404"));
}

#[tokio::test]
async fn probes_of_a_closed_port_say_connection_refused() {
    let target = crate::support::upstream::closed_port().await.to_string();
    let got = probe(&target, &http_check("/health", SECOND)).await;
    assert_eq!(got, outcome(false, "connection refused"));
    let got = probe(&target, &tcp_check()).await;
    assert_eq!(got, outcome(false, "connection refused"));
}

#[tokio::test]
async fn http_probe_of_a_silent_upstream_times_out() {
    let addr = silent_upstream().await;
    let got = probe(
        &addr.to_string(),
        &http_check("/health", Duration::from_millis(200)),
    )
    .await;
    assert_eq!(got, outcome(false, "timeout after 200ms"));
}

#[tokio::test]
async fn http_probe_of_an_upstream_that_hangs_up_fails() {
    let addr = hang_up_upstream().await;
    let got = probe(&addr.to_string(), &http_check("/health", SECOND)).await;
    assert_eq!(got, outcome(false, "closed before a response"));
}

#[tokio::test]
async fn tcp_probe_passes_when_something_listens() {
    let addr = silent_upstream().await;
    let got = probe(&addr.to_string(), &tcp_check()).await;
    assert_eq!(got, outcome(true, "connected"));
}

#[tokio::test]
async fn run_checks_reports_each_target_by_index() {
    let (up, _seen) = http_upstream(200).await;
    let down = crate::support::upstream::closed_port().await;
    let mut cfg = http_check("/health", SECOND);
    cfg.interval = Duration::from_secs(3600);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let checks = tokio::spawn(run_checks(
        vec![up.to_string(), down.to_string()],
        cfg,
        move |i, o| {
            let _ = tx.send((i, o));
        },
    ));
    let mut got = vec![rx.recv().await.unwrap(), rx.recv().await.unwrap()];
    got.sort_by_key(|(i, _)| *i);
    assert_eq!(
        got,
        [
            (0, outcome(true, "status 200")),
            (1, outcome(false, "connection refused"))
        ]
    );
    checks.abort();
}

/// A prober that takes `takes` per probe and always passes.
struct Scripted {
    takes: Duration,
}

impl Prober for Scripted {
    async fn probe(&self, _target: &str) -> ProbeOutcome {
        tokio::time::sleep(self.takes).await;
        outcome(true, "scripted")
    }
}

/// Runs the loop over `n` targets and returns, per target, the offsets from the start at which
/// its first `checks` probes finished.
async fn probe_times(
    n: usize,
    interval: Duration,
    takes: Duration,
    checks: usize,
) -> Vec<Vec<Duration>> {
    let start = Instant::now();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let targets = (0..n).map(|i| format!("t{i}:80")).collect();
    let task = tokio::spawn(run_checks_with(
        targets,
        interval,
        Scripted { takes },
        move |i, _| {
            let _ = tx.send((i, Instant::now() - start));
        },
    ));
    let mut times = vec![Vec::new(); n];
    while times.iter().any(|t| t.len() < checks) {
        let (i, at) = rx.recv().await.unwrap();
        times[i].push(at);
    }
    task.abort();
    times
}

#[tokio::test(start_paused = true)]
async fn checks_start_at_once_then_every_interval_with_jitter() {
    let interval = Duration::from_secs(10);
    let times = probe_times(20, interval, Duration::ZERO, 4).await;
    for t in &times {
        assert_eq!(t[0], Duration::ZERO, "first check at start");
        for pair in t.windows(2) {
            let gap = pair[1] - pair[0];
            assert!(
                gap >= interval.mul_f64(0.9) && gap <= interval.mul_f64(1.1),
                "gap {gap:?}"
            );
        }
    }
    let mut second: Vec<_> = times.iter().map(|t| t[1]).collect();
    second.sort();
    second.dedup();
    assert!(
        second.len() > 1,
        "jitter spreads the targets' checks: {second:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn interval_is_measured_from_the_start_of_a_probe() {
    let interval = Duration::from_secs(10);
    let times = probe_times(3, interval, Duration::from_secs(4), 3).await;
    for t in &times {
        assert_eq!(t[0], Duration::from_secs(4));
        for pair in t.windows(2) {
            let gap = pair[1] - pair[0];
            assert!(
                gap >= interval.mul_f64(0.9) && gap <= interval.mul_f64(1.1),
                "gap {gap:?}"
            );
        }
    }
    // A probe slower than the interval is followed by the next one at once.
    let times = probe_times(2, interval, Duration::from_secs(15), 3).await;
    for t in &times {
        assert_eq!(t, &[15, 30, 45].map(Duration::from_secs));
    }
}

#[tokio::test(start_paused = true)]
async fn dropping_the_loop_stops_every_target_check() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let targets = vec!["a:1".to_string(), "b:1".to_string()];
    let task = tokio::spawn(run_checks_with(
        targets,
        Duration::from_secs(1),
        Scripted {
            takes: Duration::ZERO,
        },
        move |i, _| {
            let _ = tx.send(i);
        },
    ));
    rx.recv().await.unwrap();
    rx.recv().await.unwrap();
    task.abort();
    // Once every per-target task is gone, the reporter (and with it the sender) is dropped.
    assert_eq!(rx.recv().await, None);
}

#[tokio::test(start_paused = true)]
async fn fast_recovery_pace_probes_every_100ms_at_once_and_back_to_the_interval_after() {
    let start = Instant::now();
    let pace = std::sync::Arc::new(Pace::new(Duration::from_secs(10)));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(run_checks_paced(
        vec!["t:80".to_string()],
        pace.clone(),
        Scripted {
            takes: Duration::ZERO,
        },
        move |_, _| {
            let _ = tx.send(Instant::now() - start);
        },
    ));
    assert_eq!(rx.recv().await.unwrap(), Duration::ZERO);
    // Every target went down 1 s into a 10 s wait: the sleeping check is cut short.
    tokio::time::sleep(Duration::from_secs(1)).await;
    pace.set_hurry(true);
    let mut fast = vec![rx.recv().await.unwrap()];
    assert_eq!(fast[0], Duration::from_secs(1), "probed at once");
    for _ in 0..5 {
        fast.push(rx.recv().await.unwrap());
    }
    for pair in fast.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            gap >= Duration::from_millis(90) && gap <= Duration::from_millis(110),
            "fast gap {gap:?}"
        );
    }
    // Something serves again: the configured interval.
    pace.set_hurry(false);
    let a = rx.recv().await.unwrap();
    let b = rx.recv().await.unwrap();
    assert!(b - a >= Duration::from_secs(9), "normal gap {:?}", b - a);
    task.abort();
}
