//! `gatewise doctor --nginx nginx.conf`: read the upstreams and proxy settings of an nginx
//! config ([`parse`], [`model`]), probe the targets like `check` does, measure them (response
//! head size, latency, idle close), and name the settings that cause 502s there.

pub mod model;
pub mod parse;

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use model::{Model, Proxy};

use super::probe;
use super::report::{Layer, Report};
use super::target::{self, ms, Depth, Expect};

/// Reads `path` and everything it includes, probes, and reports.
pub async fn doctor(
    path: &Path,
    requests: usize,
    idle_wait: Option<Duration>,
) -> Result<Report, String> {
    let (tree, warnings) = parse::load(path)?;
    let model = model::build(&tree);
    let mut r = Report {
        subject: path.display().to_string(),
        ..Report::default()
    };
    r.mark(Layer::Config);
    for w in warnings {
        r.fact(Layer::Config, "-", format!("not read: {w}"));
    }
    r.fact(
        Layer::Config,
        "-",
        format!(
            "{} upstream block(s), {} proxy_pass",
            model.upstreams.len(),
            model.proxies.len()
        ),
    );
    config_findings(&model, &mut r);
    for (addr, tls, who) in targets(&model) {
        let expect = Expect {
            upstream: who.clone(),
            tls,
            // nginx does not verify an upstream's certificate unless proxy_ssl_verify is on.
            tls_client: tls.then(|| target::default_tls_client(true)),
            h2c: false,
            health: None,
            path: "/".into(),
            connect_timeout: Duration::from_secs(2),
            idle_timeout: Duration::ZERO,
            per_try_timeout: Duration::from_secs(5),
            max_response_header_bytes: usize::MAX,
        };
        let probed = target::probe(&addr, &expect, Depth::Check).await;
        let reachable = probed.findings.is_empty() && !tls;
        r.merge(probed);
        if reachable {
            measure(&model, &addr, &who, requests, idle_wait, &mut r).await;
        }
    }
    r.sort();
    Ok(r)
}

/// `(host:port, TLS?, who uses it)`: every server of every upstream block, and every
/// `proxy_pass` to a literal address.
fn targets(m: &Model) -> Vec<(String, bool, String)> {
    let mut out: Vec<(String, bool, String)> = Vec::new();
    for up in m.upstreams.values() {
        let tls = m.proxies.iter().any(|p| {
            p.destination()
                .is_some_and(|(s, a)| s == "https" && a == up.name)
        });
        for s in up.servers.iter().filter(|s| !s.addr.starts_with("unix:")) {
            out.push((s.addr.clone(), tls, format!("upstream {}", up.name)));
        }
    }
    for p in &m.proxies {
        let Some((scheme, authority)) = p.destination() else {
            continue;
        };
        if m.upstreams.contains_key(&authority) {
            continue;
        }
        let addr = model::with_port(&authority);
        let addr = if scheme == "https" && !authority.contains(':') {
            addr.replace(":80", ":443")
        } else {
            addr
        };
        if !out.iter().any(|(a, _, _)| *a == addr) {
            out.push((addr, scheme == "https", format!("proxy_pass at {}", p.at)));
        }
    }
    out
}

/// The proxies that send to `addr` (directly, or through the upstream block `who` names).
fn proxies_to<'a>(m: &'a Model, addr: &str, who: &str) -> Vec<&'a Proxy> {
    let name = who.strip_prefix("upstream ").unwrap_or("");
    m.proxies
        .iter()
        .filter(|p| {
            p.destination()
                .is_some_and(|(_, a)| a == name || model::with_port(&a) == addr)
        })
        .collect()
}

/// Findings that need no probe: the config alone causes them.
pub fn config_findings(m: &Model, r: &mut Report) {
    for p in &m.proxies {
        let Some((_, authority)) = p.destination() else {
            continue;
        };
        if let Some(up) = m.upstreams.get(&authority) {
            if let Some(n) = up.keepalive {
                let mut missing = Vec::new();
                if p.http_version != "1.1" {
                    missing.push(format!(
                        "proxy_http_version 1.1 (in force: {})",
                        p.http_version
                    ));
                }
                if p.connection.as_deref() != Some("") {
                    missing.push("proxy_set_header Connection \"\"".to_string());
                }
                if !missing.is_empty() {
                    r.finding(
                        Layer::Config,
                        &p.at,
                        format!("upstream {} has `keepalive {n}` ({}) but location {} proxies to it without {}: nginx sends `Connection: close` and keeps no connection — no pooling at all", up.name, up.at, p.location, missing.join(" and ")),
                        format!("add `proxy_http_version 1.1;` and `proxy_set_header Connection \"\";` where {} is (a proxy_set_header in a location replaces every inherited one: repeat it there)", p.at),
                    );
                }
            }
            continue;
        }
        let host = authority
            .rsplit_once(':')
            .map_or(authority.as_str(), |(h, _)| h);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.parse::<IpAddr>().is_err() && !host.starts_with("unix") {
            r.finding(
                Layer::Config,
                &p.at,
                format!("proxy_pass {} names a host nginx resolves once, at start: when {host}'s address changes (a redeploy, a new pod), nginx keeps sending to the old one until reloaded", p.url),
                format!("let nginx re-resolve: a `resolver` and a variable (`set $up {host}; proxy_pass http://$up...;`), or an upstream block with `zone` and `server {host} resolve;`"),
            );
        }
    }
    for up in m.upstreams.values() {
        for s in up
            .servers
            .iter()
            .filter(|s| !s.resolve && !s.addr.starts_with("unix:"))
        {
            let host = s.addr.rsplit_once(':').map_or(s.addr.as_str(), |(h, _)| h);
            let host = host.trim_start_matches('[').trim_end_matches(']');
            if host.parse::<IpAddr>().is_err() {
                r.finding(
                    Layer::Config,
                    &s.at,
                    format!("server {} in upstream {} is a name nginx resolves once, at start: when its address changes (a container restart, a redeploy), nginx keeps sending to the old one until reloaded", s.addr, up.name),
                    format!("add `resolve` to the server and a `zone` and `resolver` to upstream {} (nginx 1.27.3+ or Plus), or reload nginx whenever the address changes", up.name),
                );
            }
        }
        let live: Vec<_> = up.servers.iter().filter(|s| !s.backup && !s.down).collect();
        if live.len() > 2 {
            continue;
        }
        for s in live.iter().filter(|s| s.max_fails == Some(1)) {
            let window = s.fail_timeout.unwrap_or(Duration::from_secs(10));
            r.finding(
                Layer::Config,
                &s.at,
                format!("server {} in upstream {} has max_fails=1 (fail_timeout {}) in a pool of {}: one failed attempt (a keep-alive race, a restart) takes it out for {}, and with the other server(s) out too nginx answers 502 \"no live upstreams\"", s.addr, up.name, ms(window), live.len(), ms(window)),
                "raise max_fails (3 or more) or set max_fails=0 on a pool this small, and let health checks, not single failures, take servers out",
            );
        }
    }
}

/// Probes with the upstream's own behaviour: head size, latency, idle close.
async fn measure(
    m: &Model,
    addr: &str,
    who: &str,
    requests: usize,
    idle_wait: Option<Duration>,
    r: &mut Report,
) {
    let proxies = proxies_to(m, addr, who);
    let Ok(resolved) = probe::resolve(addr, Duration::from_secs(2)).await else {
        return;
    };
    let Some(sock) = resolved.first().copied() else {
        return;
    };
    let read_timeout = proxies
        .iter()
        .map(|p| p.read_timeout)
        .min()
        .unwrap_or(Duration::from_secs(60));
    let deadline = (read_timeout * 2).clamp(Duration::from_secs(1), Duration::from_secs(30));
    let mut times = Vec::new();
    // The first response, and its connection when it may be reused (for the idle wait).
    let mut first: Option<(probe::Exchange, Option<tokio::net::TcpStream>)> = None;
    let mut conn = None;
    let start = tokio::time::Instant::now();
    let mut timed_out = false;
    while times.len() < requests.max(1) && start.elapsed() < Duration::from_secs(15) {
        let mut s = match conn.take() {
            Some(s) => s,
            None => match probe::connect(sock, Duration::from_secs(2)).await {
                Ok(s) => s,
                Err(_) => break,
            },
        };
        match probe::exchange(&mut s, addr, "/", deadline).await {
            Ok(ex) => {
                times.push(ex.latency);
                let reusable = !ex.closes;
                match (&first, reusable) {
                    (None, true) => first = Some((ex, Some(s))),
                    (None, false) => first = Some((ex, None)),
                    (Some(_), true) => conn = Some(s),
                    (Some(_), false) => {}
                }
            }
            Err(probe::ExchangeError::TimedOut(_)) => {
                timed_out = true;
                break;
            }
            Err(_) => break,
        }
    }
    times.sort();
    if let Some(p99) = times.get(((times.len() as f64 * 0.99).ceil() as usize).saturating_sub(1)) {
        r.fact(
            Layer::Timeouts,
            addr,
            format!("{} sequential GET /: p99 {}", times.len(), ms(*p99)),
        );
    }
    for p in &proxies {
        let slowest = if timed_out {
            Some(deadline)
        } else {
            times.last().copied()
        };
        if let Some(t) = slowest.filter(|t| *t >= p.read_timeout) {
            r.finding(
                Layer::Timeouts,
                &p.at,
                format!("{addr} ({who}) took {}{} to answer GET /, at or above proxy_read_timeout {} in force at {}: nginx answers 504 \"upstream timed out\"", if timed_out { "more than " } else { "" }, ms(t), ms(p.read_timeout), p.at),
                "fix the slow path, or set proxy_read_timeout above the real worst case for this location",
            );
        }
    }
    let Some((ex, stream)) = first else { return };
    for p in &proxies {
        if ex.header_bytes > p.buffer_size {
            r.finding(
                Layer::Http,
                &p.at,
                format!("{addr} ({who}) sends a {}-byte response head, above proxy_buffer_size {} in force at {}: nginx answers 502 \"upstream sent too big header\"", ex.header_bytes, p.buffer_size, p.at),
                format!("set `proxy_buffer_size {}k;` (and proxy_buffers to match) for this location, or shrink the headers", ex.header_bytes.div_ceil(1024).next_power_of_two()),
            );
        }
    }
    let up = who
        .strip_prefix("upstream ")
        .and_then(|n| m.upstreams.get(n));
    let (Some(up), Some(stream)) = (up.filter(|u| u.keepalive.is_some()), stream) else {
        return;
    };
    let wait = idle_wait
        .unwrap_or(Duration::from_secs(10))
        .min(up.keepalive_timeout + Duration::from_secs(1));
    match probe::idle_close(stream, wait).await {
        Some(closed) if closed < up.keepalive_timeout => r.finding(
            Layer::Timeouts,
            addr,
            format!("{addr} closes idle connections after ≈{}, but nginx reuses idle connections of upstream {} for up to keepalive_timeout {}: a request sent as the upstream closes fails (\"upstream prematurely closed connection\", 502)", ms(closed), up.name, ms(up.keepalive_timeout)),
            format!("set `keepalive_timeout` in upstream {} below ≈{} (e.g. {}ms), or raise the app's keep-alive timeout above nginx's", up.name, ms(closed), closed.mul_f64(0.5).as_millis().max(100)),
        ),
        Some(closed) => r.fact(Layer::Timeouts, addr, format!("closes idle connections after ≈{}, after nginx's keepalive_timeout", ms(closed))),
        None => r.fact(Layer::Timeouts, addr, format!("an idle connection was still open after {} (the wait)", ms(wait))),
    }
}
