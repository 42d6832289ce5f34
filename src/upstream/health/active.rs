//! Active health checks: one [`probe`] of a target, and [`run_checks`], the loop that probes
//! every target of an upstream on an interval and reports each outcome.
//!
//! A probe uses a fresh connection, never one from the request pool: a check must see what a
//! new connection would see (is anything listening, does it answer), and must not take or
//! spoil a pooled connection. Each target is checked by its own task so a hanging target does
//! not delay the others; the interval carries ±10% jitter so the checks of many gateways (or
//! many targets) do not synchronise into bursts.
//!
//! The interval is a [`Pace`]: the configured one, or [`FAST_RECOVERY_INTERVAL`] while the
//! upstream has nothing serving (H6) — every target down, or requests held because every target
//! refused them — so a target that comes back is seen within ~100 ms, not within `interval`.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio::time::{sleep_until, timeout, Instant};

use crate::cause::{Cause, UpstreamError};
use crate::config::{HealthCheckKind, HealthConfig};
use crate::upstream::connect::{Connector, Endpoint, Stream};
use crate::upstream::tls::TlsClient;

/// The result of one probe: `detail` says why, in words fit for a log line and the status page
/// (`"status 200"`, `"status 503"`, `"connection refused"`, `"timeout after 300ms"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeOutcome {
    pub ok: bool,
    pub detail: String,
}

impl ProbeOutcome {
    fn pass(detail: impl Into<String>) -> Self {
        Self {
            ok: true,
            detail: detail.into(),
        }
    }

    fn fail(detail: impl Into<String>) -> Self {
        Self {
            ok: false,
            detail: detail.into(),
        }
    }
}

/// Probes plain `target` (`host:port`) once as `cfg` says, the whole probe within `cfg.timeout`.
pub async fn probe(target: &str, cfg: &HealthConfig) -> ProbeOutcome {
    probe_endpoint(&Endpoint::new(target, None), cfg).await
}

/// Probes `ep` once as `cfg` says, through the same [`Connector`] as requests (so a TLS target
/// is checked over TLS, and a failed handshake fails the check with the same words). For a
/// TLS endpoint, a `tcp` check passes once the handshake is done.
pub async fn probe_endpoint(ep: &Endpoint, cfg: &HealthConfig) -> ProbeOutcome {
    let connector = Connector::new(cfg.timeout);
    let attempt = async {
        let stream = match connector.connect(ep).await {
            Ok(s) => s,
            Err(e) => return ProbeOutcome::fail(connect_words(&e, &ep.addr)),
        };
        match &cfg.kind {
            HealthCheckKind::Tcp => ProbeOutcome::pass("connected"),
            HealthCheckKind::Http {
                path,
                expected_status,
            } if ep.speaks_h2(&stream) => h2_probe(stream, ep, path, *expected_status).await,
            HealthCheckKind::Http {
                path,
                expected_status,
            } => http_probe(stream, &ep.addr, path, *expected_status).await,
        }
    };
    match timeout(cfg.timeout, attempt).await {
        Ok(outcome) => outcome,
        Err(_) => ProbeOutcome::fail(format!("timeout after {}ms", cfg.timeout.as_millis())),
    }
}

/// `GET path` on a fresh HTTP/1.1 connection; passes iff the status is in `expected` (inclusive).
async fn http_probe(
    stream: Stream,
    target: &str,
    path: &str,
    expected: (u16, u16),
) -> ProbeOutcome {
    let (mut sender, conn) = match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
    {
        Ok(pair) => pair,
        Err(e) => return ProbeOutcome::fail(format!("http handshake: {e}")),
    };
    let req = Request::get(path)
        .header(header::HOST, target)
        .header(header::CONNECTION, "close")
        .header(header::USER_AGENT, "gatewise-health")
        .body(Empty::<Bytes>::new());
    let req = match req {
        Ok(r) => r,
        Err(e) => return ProbeOutcome::fail(format!("bad check request: {e}")),
    };
    // The connection is driven here rather than spawned, so that a timeout (which drops this
    // future) also closes the socket instead of leaving a task waiting on a silent target.
    let response = sender.send_request(req);
    tokio::pin!(conn, response);
    let result = tokio::select! {
        r = &mut response => r,
        done = &mut conn => match done {
            // The connection ended (e.g. `Connection: close` after the answer): the response,
            // if one came, is already delivered to the request future.
            Ok(()) => response.await,
            Err(e) => return ProbeOutcome::fail(format!("http: {e}")),
        },
    };
    status_outcome(result, expected)
}

/// `GET path` as one stream of a fresh HTTP/2 connection (an `h2c` target, or one where ALPN
/// chose `h2`), so the check speaks what requests speak.
async fn h2_probe(stream: Stream, ep: &Endpoint, path: &str, expected: (u16, u16)) -> ProbeOutcome {
    let (mut sender, conn) = match hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await
    {
        Ok(pair) => pair,
        Err(e) => return ProbeOutcome::fail(format!("HTTP/2 handshake: {e}")),
    };
    let scheme = if ep.is_tls() { "https" } else { "http" };
    let req = Request::get(format!("{scheme}://{}{path}", ep.addr))
        .version(http::Version::HTTP_2)
        .header(header::USER_AGENT, "gatewise-health")
        .body(Empty::<Bytes>::new());
    let req = match req {
        Ok(r) => r,
        Err(e) => return ProbeOutcome::fail(format!("bad check request: {e}")),
    };
    // Driven here, as for HTTP/1.1: a timeout closes the connection with the probe.
    let response = sender.send_request(req);
    tokio::pin!(conn, response);
    let result = tokio::select! {
        r = &mut response => r,
        done = &mut conn => match done {
            Ok(()) => response.await,
            Err(e) => return ProbeOutcome::fail(format!("http2: {e}")),
        },
    };
    status_outcome(result, expected)
}

fn status_outcome(
    result: Result<http::Response<hyper::body::Incoming>, hyper::Error>,
    expected: (u16, u16),
) -> ProbeOutcome {
    match result {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let detail = format!("status {status}");
            if (expected.0..=expected.1).contains(&status) {
                ProbeOutcome::pass(detail)
            } else {
                ProbeOutcome::fail(detail)
            }
        }
        Err(e) if e.is_incomplete_message() => ProbeOutcome::fail("closed before a response"),
        Err(e) => ProbeOutcome::fail(format!("http: {e}")),
    }
}

/// A failed connect in the words operators know: "connection refused" for a plain refusal,
/// otherwise the cause and what the connector said, without repeating the target
/// ("tls_certificate_error: unknown issuer ...").
fn connect_words(e: &UpstreamError, addr: &str) -> String {
    let detail = e.detail.strip_prefix(addr).unwrap_or(&e.detail);
    let detail = detail.trim_start_matches(": ").trim();
    match e.cause {
        Cause::ConnectionRefused if detail.is_empty() => "connection refused".to_string(),
        cause if detail.is_empty() => cause.as_str().replace('_', " "),
        cause => format!("{cause}: {detail}"),
    }
}

/// How one target is checked. The default is [`ConfiguredProbe`]; tests substitute their own.
pub trait Prober: Send + Sync + 'static {
    fn probe(&self, target: &str) -> impl Future<Output = ProbeOutcome> + Send;
}

/// The check a [`HealthConfig`] describes, done by [`probe_endpoint`] over TLS when the
/// upstream is `https`.
#[derive(Debug, Clone)]
pub struct ConfiguredProbe {
    cfg: HealthConfig,
    tls: Option<Arc<TlsClient>>,
    /// `protocol = "h2c"`: checks speak HTTP/2 with prior knowledge.
    h2c: bool,
}

impl ConfiguredProbe {
    pub fn new(cfg: HealthConfig, tls: Option<Arc<TlsClient>>) -> Self {
        Self {
            cfg,
            tls,
            h2c: false,
        }
    }

    /// Checks over HTTP/2 with prior knowledge (an `h2c` upstream).
    pub fn h2c(mut self, on: bool) -> Self {
        self.h2c = on;
        self
    }
}

impl Prober for ConfiguredProbe {
    fn probe(&self, target: &str) -> impl Future<Output = ProbeOutcome> + Send {
        let mut ep = Endpoint::new(target, self.tls.as_ref());
        if self.h2c {
            ep = ep.h2_prior_knowledge();
        }
        async move { probe_endpoint(&ep, &self.cfg).await }
    }
}

/// Checks while an upstream has nothing serving come this often (or at the configured interval
/// when that is shorter): one passing check then brings a target back (H6).
pub const FAST_RECOVERY_INTERVAL: Duration = Duration::from_millis(100);

/// How often each target of one upstream is checked now; shared by its check tasks.
#[derive(Debug)]
pub struct Pace {
    normal: Duration,
    hurry: AtomicBool,
    /// Wakes the sleeping checks when the pace changes, so a hurry takes effect at once.
    changed: Notify,
}

impl Pace {
    pub fn new(normal: Duration) -> Self {
        Self {
            normal,
            hurry: AtomicBool::new(false),
            changed: Notify::new(),
        }
    }

    /// The configured interval.
    pub fn normal(&self) -> Duration {
        self.normal
    }

    /// The interval now, before jitter.
    pub fn interval(&self) -> Duration {
        if self.hurrying() {
            self.normal.min(FAST_RECOVERY_INTERVAL)
        } else {
            self.normal
        }
    }

    pub fn hurrying(&self) -> bool {
        self.hurry.load(Ordering::Relaxed)
    }

    /// Fast recovery on (`true`) or back to the configured interval.
    pub fn set_hurry(&self, on: bool) {
        if self.hurry.swap(on, Ordering::Relaxed) != on {
            self.changed.notify_waiters();
        }
    }
}

/// Checks every target as `cfg` says, forever: each target at once, then every `cfg.interval`
/// (±10% jitter), and calls `report(index into targets, outcome)` after each probe. Stops when
/// the returned future is dropped (abort its task on reload or shutdown).
pub async fn run_checks(
    targets: Vec<String>,
    cfg: HealthConfig,
    report: impl Fn(usize, ProbeOutcome) + Send + Sync + 'static,
) {
    let interval = cfg.interval;
    run_checks_with(targets, interval, ConfiguredProbe::new(cfg, None), report).await
}

/// [`run_checks`] with any [`Prober`].
pub async fn run_checks_with<P: Prober>(
    targets: Vec<String>,
    interval: Duration,
    prober: P,
    report: impl Fn(usize, ProbeOutcome) + Send + Sync + 'static,
) {
    run_checks_paced(targets, Arc::new(Pace::new(interval)), prober, report).await
}

/// [`run_checks_with`] at a [`Pace`] the caller can change while the checks run.
pub async fn run_checks_paced<P: Prober>(
    targets: Vec<String>,
    pace: Arc<Pace>,
    prober: P,
    report: impl Fn(usize, ProbeOutcome) + Send + Sync + 'static,
) {
    let known = vec![false; targets.len()];
    run_checks_known(targets, known, pace, prober, report).await
}

/// [`run_checks_paced`] where `known[i]` says target `i`'s health is already known (a target kept
/// by a reload): its first check waits one interval instead of running at once, so a reload
/// costs untouched targets no extra round of checks.
pub async fn run_checks_known<P: Prober>(
    targets: Vec<String>,
    known: Vec<bool>,
    pace: Arc<Pace>,
    prober: P,
    report: impl Fn(usize, ProbeOutcome) + Send + Sync + 'static,
) {
    let prober = Arc::new(prober);
    let report = Arc::new(report);
    // The JoinSet aborts every per-target task when this future is dropped.
    let mut tasks = JoinSet::new();
    for (index, target) in targets.into_iter().enumerate() {
        let prober = Arc::clone(&prober);
        let report = Arc::clone(&report);
        let pace = Arc::clone(&pace);
        let known = known.get(index).copied().unwrap_or(false);
        tasks.spawn(async move {
            if known {
                sleep_until(Instant::now() + jittered(pace.interval())).await;
            }
            loop {
                let started = Instant::now();
                let outcome = prober.probe(&target).await;
                report(index, outcome);
                // Measured from the start of the probe, so a slow target is not checked less
                // often than asked; one slower than the interval is checked back to back. A
                // change of pace re-reads the interval (a hurry shortens this very wait).
                loop {
                    let changed = pace.changed.notified();
                    tokio::pin!(changed);
                    changed.as_mut().enable();
                    tokio::select! {
                        () = sleep_until(started + jittered(pace.interval())) => break,
                        () = changed => {}
                    }
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// `interval` scaled by a random factor in [0.9, 1.1).
pub fn jittered(interval: Duration) -> Duration {
    interval.mul_f64(0.9 + 0.2 * fastrand::f64())
}
