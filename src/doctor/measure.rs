//! `doctor`'s measurements of a target that answers HTTP: response head size against the limit,
//! the upstream's real keep-alive idle timeout against the pool's, and the latency of sequential
//! requests against the per-try timeout.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;

use super::probe::{self, Dial, Exchange};
use super::report::{Layer, Report};
use super::target::{ms, Expect};
use crate::upstream::connect::Stream;

/// Longest time the latency sample may take in all.
const SAMPLE_BUDGET: Duration = Duration::from_secs(15);

#[allow(clippy::too_many_arguments)]
pub async fn doctor_layers(
    r: &mut Report,
    target: &str,
    expect: &Expect,
    dial: &Dial,
    stream: Stream,
    first: Exchange,
    requests: usize,
    idle_wait: Duration,
) {
    let addr = dial.addr;
    head_size(r, target, expect, addr, &first);
    // The idle connection waits while the latency sample runs on connections of its own.
    let idle = async {
        if first.closes {
            None
        } else {
            Some(probe::idle_close(stream, idle_wait).await)
        }
    };
    let (idle, sample) = tokio::join!(idle, latency(target, expect, dial, requests));
    idle_finding(r, target, expect, addr, &first, idle, idle_wait);
    latency_finding(r, target, expect, addr, sample);
}

fn head_size(r: &mut Report, target: &str, expect: &Expect, addr: SocketAddr, ex: &Exchange) {
    let limit = expect.max_response_header_bytes;
    if ex.header_bytes > limit {
        r.finding(
            Layer::Http,
            target,
            format!(
                "{addr} sends a {} response head ({} bytes), above max_response_header_bytes {} of upstream {}: gatewise answers these 502 http_response_header_section_size",
                kib(ex.header_bytes), ex.header_bytes, kib(limit), expect.upstream
            ),
            format!("raise max_response_header_bytes above {} (e.g. \"{}KiB\"), or shrink the headers (cookies, tokens)", ex.header_bytes, ex.header_bytes.div_ceil(1024) * 2),
        );
    } else {
        r.fact(
            Layer::Http,
            target,
            format!(
                "response head {} bytes, within max_response_header_bytes {}",
                ex.header_bytes,
                kib(limit)
            ),
        );
    }
}

fn kib(n: usize) -> String {
    if n >= 1024 {
        format!("{:.1} KiB", n as f64 / 1024.0)
    } else {
        format!("{n} B")
    }
}

/// `Keep-Alive: timeout=N` in seconds, when advertised.
fn advertised(ex: &Exchange) -> Option<Duration> {
    let v = ex.keep_alive.as_deref()?;
    v.split(',')
        .filter_map(|p| p.trim().strip_prefix("timeout="))
        .find_map(|t| t.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

fn idle_finding(
    r: &mut Report,
    target: &str,
    expect: &Expect,
    addr: SocketAddr,
    first: &Exchange,
    idle: Option<Option<Duration>>,
    wait: Duration,
) {
    let pool = expect.idle_timeout;
    match idle {
        None => r.fact(Layer::Timeouts, target, "the upstream closes the connection after each response: no connection is reused, nothing to race"),
        Some(None) => r.fact(
            Layer::Timeouts,
            target,
            format!("an idle connection to {addr} was still open after {} (the wait): its idle timeout is longer than the wait and than the pool's idle_timeout {}", ms(wait), ms(pool)),
        ),
        Some(Some(closed)) => {
            // gatewise shortens its idle limit to an advertised `Keep-Alive: timeout=`.
            let effective = advertised(first).map_or(pool, |a| a.min(pool));
            let text = format!("{addr} closes idle connections after ≈{}", ms(closed));
            if closed <= effective {
                let suggest = closed.mul_f64(0.5).max(Duration::from_millis(100));
                r.finding(
                    Layer::Timeouts,
                    target,
                    format!("{text}, but upstream {} keeps idle connections up to idle_timeout {}: a request sent on one as it closes fails (\"502 after idle\", connection_terminated)", expect.upstream, ms(effective)),
                    format!("set idle_timeout of upstream {} below the upstream's, e.g. \"{}ms\", or have the upstream advertise Keep-Alive: timeout= (gatewise honours it)", expect.upstream, suggest.as_millis()),
                );
            } else {
                r.fact(Layer::Timeouts, target, format!("{text}, after the pool's idle_timeout {}: fine", ms(effective)));
            }
        }
    }
}

/// Sequential request latencies; `Err(after)` ends the sample at a request with no answer.
struct Sample {
    times: Vec<Duration>,
    timed_out: Option<Duration>,
}

async fn latency(target: &str, expect: &Expect, dial: &Dial, n: usize) -> Sample {
    let deadline =
        (expect.per_try_timeout * 2).clamp(Duration::from_secs(1), Duration::from_secs(30));
    let start = Instant::now();
    let mut sample = Sample {
        times: Vec::new(),
        timed_out: None,
    };
    let mut conn: Option<Stream> = None;
    while sample.times.len() < n && start.elapsed() < SAMPLE_BUDGET {
        let mut stream = match conn.take() {
            Some(s) => s,
            None => match dial.connect().await {
                Ok(s) => s,
                Err(_) => break,
            },
        };
        match probe::exchange(&mut stream, target, &expect.path, deadline).await {
            Ok(ex) => {
                sample.times.push(ex.latency);
                if !ex.closes {
                    conn = Some(stream);
                }
            }
            Err(probe::ExchangeError::TimedOut(d)) => {
                sample.timed_out = Some(d);
                break;
            }
            Err(_) => break,
        }
    }
    sample
}

fn latency_finding(r: &mut Report, target: &str, expect: &Expect, addr: SocketAddr, s: Sample) {
    let per_try = expect.per_try_timeout;
    let mut times = s.times;
    times.sort();
    let pct = |p: f64| times[((times.len() as f64 * p).ceil() as usize).clamp(1, times.len()) - 1];
    if let Some(d) = s.timed_out {
        r.finding(
            Layer::Timeouts,
            target,
            format!("a GET {} to {addr} got no response head within {} (after {} answered), beyond per_try_timeout {}: such requests end in 504 http_response_timeout", expect.path, ms(d), times.len(), ms(per_try)),
            "find the slow path in the app; raise per_try_timeout only above its real worst case",
        );
        return;
    }
    if times.is_empty() {
        return;
    }
    let (p50, p99) = (pct(0.5), pct(0.99));
    let text = format!(
        "{} sequential GET {}: p50 {}, p99 {}",
        times.len(),
        expect.path,
        ms(p50),
        ms(p99)
    );
    if p99 >= per_try {
        r.finding(
            Layer::Timeouts,
            target,
            format!("{text} on {addr}, at or above per_try_timeout {}: these requests end in 504 http_response_timeout", ms(per_try)),
            format!("raise per_try_timeout above the real p99 (e.g. \"{}ms\") and the route timeout above per_try_timeout × attempts, or fix the slow path", (p99.as_millis() * 2).max(100)),
        );
    } else {
        r.fact(
            Layer::Timeouts,
            target,
            format!("{text}, below per_try_timeout {}", ms(per_try)),
        );
    }
}
