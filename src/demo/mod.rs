//! `gatewise demo`: the README's first command. It starts three small upstreams in-process, the
//! gateway in front of them (active health checks, passive ejection, retries on), a client
//! sending steady traffic, and a fault injector that breaks one upstream every few seconds. A
//! line a second shows what the client got and how many failures the gateway absorbed; the
//! gateway's access log is captured and counted, never printed.

mod faults;
mod summary;
mod traffic;
mod upstreams;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::cli::DemoArgs;
use crate::config::{self, Config, HealthConfig};
use crate::gateway::{Gateway, Shared};
use crate::observe::access_log::AccessLog;
use faults::FaultStatus;
use summary::Tally;
use traffic::ClientStats;
use upstreams::DemoUpstream;

/// Set once a write to stdout failed: its reader is gone (`gatewise demo | head -2`).
static STDOUT_GONE: AtomicBool = AtomicBool::new(false);

/// `println!` that does not panic when stdout is a closed pipe: the failure is remembered and
/// the demo ends quietly at its next tick, as `head` expects of the programs it reads.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if writeln!(std::io::stdout(), $($arg)*).is_err() {
            STDOUT_GONE.store(true, Ordering::Relaxed);
        }
    }};
}

/// The demo's upstream, as named in the config and on the summary line.
const UPSTREAM: &str = "demo";
const ADMIN_PORT: u16 = 9901;

/// Runs the demo until `--duration` elapses or Ctrl-C. Exit 2 when it cannot start.
pub fn run(args: &DemoArgs) -> ExitCode {
    let runtime = match crate::run::build_runtime(None) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("gatewise demo: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(demo(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gatewise demo: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn demo(args: &DemoArgs) -> anyhow::Result<()> {
    let mut ups = Vec::new();
    for i in 1..=3 {
        ups.push(DemoUpstream::start(&format!("up-{i}")).await?);
    }
    let listen = free_or_any(args.listen, "gateway");
    let admin = if args.listen.port() == 0 {
        SocketAddr::new(args.listen.ip(), 0)
    } else {
        free_or_any(SocketAddr::new(args.listen.ip(), ADMIN_PORT), "admin")
    };
    let config = demo_config(listen, admin, &ups);
    let route = &config.routes[0];
    let (log, lines) = AccessLog::capture();
    let gateway = Gateway::bind(&config, log).await?;
    let gateway_addr = *gateway
        .listen_addrs()
        .first()
        .ok_or_else(|| anyhow::anyhow!("the gateway has no listener"))?;
    let admin_addr = gateway.admin_addr();
    let shared = gateway.shared();
    let serving = tokio::spawn(gateway.serve());

    let tally = Arc::new(Mutex::new(Tally::default()));
    let logged = Arc::new(Notify::new());
    summary::collect(lines, tally.clone(), logged.clone());

    let faults_note = if args.no_faults {
        "no faults (--no-faults)"
    } else {
        "a fault every few seconds: kill, not ready, keep-alive race, slow"
    };
    say!("gatewise demo: three upstreams, the gateway in front, client traffic, {faults_note}");
    say!("  gateway   http://{gateway_addr}/   (try: curl -i http://{gateway_addr}/)");
    if let Some(a) = admin_addr {
        say!("  admin     http://{a}/ready   http://{a}/live   http://{a}/status");
    }
    for up in &ups {
        say!("  upstream  {} on {}", up.name, up.addr);
    }
    say!(
        "  policy    health check GET /health every 500ms (rise 2, fall 2), passive ejection after 3 failures,\n            {} retries, per-try timeout {}ms; client: {} req/s, 1 in 4 a POST with an Idempotency-Key",
        route.retries,
        route.per_try_timeout.as_millis(),
        args.rate
    );
    say!();

    let fault_status = Arc::new(Mutex::new(FaultStatus::default()));
    let injector =
        (!args.no_faults).then(|| tokio::spawn(faults::inject(ups.clone(), fault_status.clone())));
    let client = Arc::new(ClientStats::default());
    let traffic = tokio::spawn(traffic::run(gateway_addr, args.rate, client.clone()));

    let start = Instant::now();
    let end = args.duration.map(|s| start + Duration::from_secs(s));
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut ticker =
        tokio::time::interval_at(start + Duration::from_secs(1), Duration::from_secs(1));
    loop {
        tokio::select! {
            biased;
            () = sleep_until_opt(end) => break,
            _ = &mut ctrl_c => break,
            _ = ticker.tick() => {
                let line = live_line(start, &client, &tally, &fault_status, &shared, &ups);
                say!("{line}");
                if STDOUT_GONE.load(Ordering::Relaxed) {
                    // Nobody reads the summary: skip the settling and exit now.
                    return Ok(());
                }
            }
        }
    }
    let elapsed = start.elapsed();
    traffic.abort();
    if let Some(injector) = injector {
        injector.abort();
    }
    // Let the requests already sent finish (a retry after a per-try timeout takes a moment),
    // then let their access-log lines arrive, so the totals add up.
    let settle = Instant::now() + Duration::from_secs(5);
    wait_for(&client.finished, settle, || {
        client.in_flight.load(Ordering::Relaxed) == 0
    })
    .await;
    let answered = client.answered.load(Ordering::Relaxed);
    wait_for(&logged, Instant::now() + Duration::from_secs(1), || {
        tally.lock().expect("tally lock").logged >= answered
    })
    .await;
    serving.abort();
    let tally = tally.lock().expect("tally lock").clone();
    let injected = fault_status.lock().expect("fault status lock").injected;
    print_final(elapsed, &client, &tally, injected);
    Ok(())
}

/// The gateway config: one listener, one route with retries and a short per-try timeout, one
/// upstream over the demo upstreams with active and passive health checks.
fn demo_config(listen: SocketAddr, admin: SocketAddr, ups: &[Arc<DemoUpstream>]) -> Config {
    let targets = ups.iter().map(|u| u.addr.to_string()).collect();
    let mut config = Config::quick(listen, targets);
    config.admin.listen = Some(admin);
    config.access_log = config::AccessLog::Off;
    let mut upstream = config
        .upstreams
        .remove("default")
        .expect("quick form upstream");
    let mut health = HealthConfig::http("/health");
    health.interval = Duration::from_millis(500);
    health.timeout = Duration::from_millis(300);
    health.rise = 2;
    health.fall = 2;
    upstream.health = Some(health);
    upstream.passive.consecutive_failures = 3;
    upstream.passive.base_ejection = Duration::from_secs(2);
    upstream.passive.failure_statuses = vec![502, 503, 504];
    upstream.slow_start = Duration::from_secs(2);
    config.upstreams.insert(UPSTREAM.to_string(), upstream);
    let route = &mut config.routes[0];
    route.upstream = UPSTREAM.to_string();
    route.per_try_timeout = Duration::from_millis(300);
    route.timeout = Duration::from_secs(5);
    route.retries = 2;
    config
}

/// `wanted`, or the same address with an OS-assigned port when `wanted` is busy (said on stderr).
fn free_or_any(wanted: SocketAddr, what: &str) -> SocketAddr {
    if wanted.port() == 0 || std::net::TcpListener::bind(wanted).is_ok() {
        return wanted;
    }
    eprintln!("gatewise demo: {wanted} is busy; the {what} takes a free port instead");
    SocketAddr::new(wanted.ip(), 0)
}

async fn sleep_until_opt(end: Option<Instant>) {
    match end {
        Some(end) => tokio::time::sleep_until(end).await,
        None => std::future::pending().await,
    }
}

/// Waits until `done()` holds, re-checking whenever `changed` is signalled, but not past `until`.
async fn wait_for(changed: &Notify, until: Instant, done: impl Fn() -> bool) {
    loop {
        let notified = changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if done() || tokio::time::timeout_at(until, notified).await.is_err() {
            return;
        }
    }
}

fn live_line(
    start: Instant,
    client: &ClientStats,
    tally: &Mutex<Tally>,
    faults: &Mutex<FaultStatus>,
    shared: &Shared,
    ups: &[Arc<DemoUpstream>],
) -> String {
    let t = tally.lock().expect("tally lock").clone();
    let transport = client.transport_errors.load(Ordering::Relaxed);
    let fault = faults
        .lock()
        .expect("fault status lock")
        .current
        .clone()
        .unwrap_or_else(|| "none".to_string());
    let errors = t.error_count() + transport;
    let mut line = format!(
        "[{:>5.1}s] requests {}  2xx {}  errors {}",
        start.elapsed().as_secs_f64(),
        client.sent.load(Ordering::Relaxed),
        t.ok,
        errors
    );
    if errors > 0 {
        let mut causes = t.errors.clone();
        if transport > 0 {
            causes.insert("no response".into(), transport);
        }
        line.push_str(&format!(" ({})", summary::by_cause(&causes)));
    }
    line.push_str(&format!(
        "  absorbed {}  | fault: {fault}  | {}",
        t.absorbed,
        target_states(shared, ups)
    ));
    line
}

/// `up-1 healthy, up-2 ejected, ...` as the gateway sees its targets.
fn target_states(shared: &Shared, ups: &[Arc<DemoUpstream>]) -> String {
    let snapshot = shared.snapshot.load();
    let Some(upstream) = snapshot.upstreams.get(UPSTREAM) else {
        return String::new();
    };
    upstream
        .targets
        .iter()
        .map(|t| {
            let name = ups
                .iter()
                .find(|u| u.addr.to_string() == *t.addr)
                .map_or(t.addr.to_string(), |u| u.name.clone());
            format!("{name} {}", t.state().as_str())
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn print_final(elapsed: Duration, client: &ClientStats, t: &Tally, injected: u32) {
    let sent = client.sent.load(Ordering::Relaxed);
    let transport = client.transport_errors.load(Ordering::Relaxed);
    let errors = t.error_count() + transport;
    let mut causes = t.errors.clone();
    if transport > 0 {
        causes.insert("no response".into(), transport);
    }
    let attempts: u64 = t.absorbed_by_cause.values().sum();
    say!();
    say!(
        "── gatewise demo: summary after {:.1}s ──",
        elapsed.as_secs_f64()
    );
    say!("requests sent:         {sent}");
    say!("answered 2xx:          {}", t.ok);
    say!(
        "client-visible errors: {errors} ({})",
        summary::by_cause(&causes)
    );
    say!(
        "failures absorbed:     {} ({attempts} failed attempts hidden by a retry: {})",
        t.absorbed,
        summary::by_cause(&t.absorbed_by_cause)
    );
    say!("faults injected:       {injected}");
    let pct = if sent == 0 {
        0.0
    } else {
        100.0 * errors as f64 / sent as f64
    };
    let (plural, were) = if injected == 1 {
        ("", "was")
    } else {
        ("s", "were")
    };
    say!(
        "While {injected} fault{plural} {were} injected, gatewise absorbed {} failures with retries and health checks; {errors} of {sent} requests ({pct:.2}%) reached the client as errors.",
        t.absorbed
    );
    if t.post_answered_5xx > 0 {
        say!(
            "{} of those errors were an upstream's own 5xx answer to a POST: a definite answer, so the POST is never resent; health checks and ejection then took that upstream out of rotation.",
            t.post_answered_5xx
        );
    }
}
