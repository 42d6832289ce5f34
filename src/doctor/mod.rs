//! Diagnosing upstreams and proxies: `gatewise check` (probes every target of a config),
//! `gatewise doctor` (the same, plus measurements against the configured limits) and
//! `gatewise explain` (other proxies' logs → causes and fixes).
//!
//! [`probe`] observes (resolve, connect, what a port speaks, one HTTP exchange); [`target`] and
//! [`measure`] turn observations into facts and findings per layer; [`report`] prints them.

pub mod explain;
pub mod listening;
pub mod measure;
pub mod nginx;
pub mod probe;
pub mod report;
pub mod target;

use std::process::ExitCode;
use std::time::Duration;

use crate::cli::DoctorArgs;
use crate::config::{self, defaults, Config, HealthCheckKind};
use report::Report;
use target::{Depth, Expect};

/// Every target of every upstream of `config`, with what the config expects of it.
pub fn expectations(config: &Config) -> Vec<(String, Expect)> {
    let mut out = Vec::new();
    for (name, up) in &config.upstreams {
        let per_try = config
            .routes
            .iter()
            .filter(|r| &r.upstream == name)
            .map(|r| r.per_try_timeout)
            .min()
            .unwrap_or(defaults::PER_TRY_TIMEOUT);
        let health = match up.health.as_ref().map(|h| &h.kind) {
            Some(HealthCheckKind::Http {
                path,
                expected_status,
            }) => Some((path.clone(), *expected_status)),
            _ => None,
        };
        // An SRV name (DNS discovery) has no port to probe: its targets exist only once resolved.
        for t in up.targets.iter().filter(|t| !crate::config::is_srv_name(t)) {
            out.push((
                t.clone(),
                Expect {
                    upstream: name.clone(),
                    // `protocol = "https"`: the port must speak TLS.
                    tls: up.tls.is_some(),
                    tls_client: up.tls.as_ref().map(|t| target::tls_client(t, up.protocol)),
                    h2c: up.protocol == crate::config::UpstreamProtocol::H2c,
                    health: health.clone(),
                    path: "/".to_string(),
                    connect_timeout: up.connect_timeout,
                    idle_timeout: up.idle_timeout,
                    per_try_timeout: per_try,
                    max_response_header_bytes: up.max_response_header_bytes,
                },
            ));
        }
    }
    out
}

/// Probes every target in parallel and gathers one report.
pub async fn probe_all(subject: &str, targets: Vec<(String, Expect, Depth)>) -> Report {
    let mut set = tokio::task::JoinSet::new();
    for (t, e, depth) in targets {
        set.spawn(async move { target::probe(&t, &e, depth).await });
    }
    let mut report = Report {
        subject: subject.to_string(),
        ..Report::default()
    };
    while let Some(done) = set.join_next().await {
        match done {
            Ok(r) => report.merge(r),
            Err(e) => report.finding(
                report::Layer::Tcp,
                "-",
                format!("a probe failed: {e}"),
                "report this as a gatewise bug",
            ),
        }
    }
    report.sort();
    report
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
}

/// Probes the targets of validated configs (`gatewise check` without `--offline`); prints the
/// report and returns 0 clean, 1 findings.
pub fn check_configs(configs: &[(String, Config)]) -> ExitCode {
    let Ok(rt) = runtime() else {
        eprintln!("gatewise check: cannot start the runtime");
        return ExitCode::from(2);
    };
    let mut worst = 0;
    for (name, config) in configs {
        let targets = expectations(config)
            .into_iter()
            .map(|(t, e)| (t, e, Depth::Check))
            .collect();
        let mut report = rt.block_on(probe_all(name, targets));
        report.command = "check";
        let _ = report.text(&mut std::io::stdout().lock());
        worst = worst.max(report.exit_code());
    }
    ExitCode::from(worst)
}

/// `gatewise doctor URL | --config FILE | --nginx FILE`.
pub fn run(args: &DoctorArgs) -> ExitCode {
    let built = match (&args.url, &args.config, &args.nginx) {
        (Some(url), None, None) => from_url(url).map(|t| (url.clone(), vec![t])),
        (None, Some(path), None) => config::load(path)
            .map(|c| (path.display().to_string(), expectations(&c)))
            .map_err(|e| e.to_string().trim_end().to_string()),
        (None, None, Some(path)) => return run_nginx(path, args),
        _ => Err("give one of URL, --config FILE or --nginx FILE".to_string()),
    };
    let (subject, mut targets) = match built {
        Ok(b) => b,
        Err(e) => {
            eprintln!("gatewise doctor: {e}");
            return ExitCode::from(2);
        }
    };
    let (idle_wait, rt) = match idle_wait_and_runtime(args) {
        Ok(both) => both,
        Err(code) => return code,
    };
    // Every target at once, each with its own idle wait (its upstream's idle_timeout + 2 s).
    let targets = targets
        .drain(..)
        .map(|(t, e)| {
            let depth = Depth::Doctor {
                requests: args.requests.max(1),
                idle_wait: idle_wait.unwrap_or(e.idle_timeout + Duration::from_secs(2)),
            };
            (t, e, depth)
        })
        .collect();
    let report = rt.block_on(probe_all(&subject, targets));
    print(&report, args.json)
}

/// `--idle-wait` parsed, and a runtime to probe on; or the exit code after saying why not.
fn idle_wait_and_runtime(
    args: &DoctorArgs,
) -> Result<(Option<Duration>, tokio::runtime::Runtime), ExitCode> {
    let idle_wait = args
        .idle_wait
        .as_deref()
        .map(config::parse_duration)
        .transpose()
        .map_err(|e| {
            eprintln!("gatewise doctor: --idle-wait: {e}");
            ExitCode::from(2)
        })?;
    let rt = runtime().map_err(|_| {
        eprintln!("gatewise doctor: cannot start the runtime");
        ExitCode::from(2)
    })?;
    Ok((idle_wait, rt))
}

/// `gatewise doctor --nginx FILE`.
fn run_nginx(path: &std::path::Path, args: &DoctorArgs) -> ExitCode {
    let (idle_wait, rt) = match idle_wait_and_runtime(args) {
        Ok(both) => both,
        Err(code) => return code,
    };
    match rt.block_on(nginx::doctor(path, args.requests, idle_wait)) {
        Ok(report) => print(&report, args.json),
        Err(e) => {
            eprintln!("gatewise doctor: {e}");
            ExitCode::from(2)
        }
    }
}

/// Prints the report (text or `--json`); exit 0 clean, 1 findings, 2 when it cannot be written.
fn print(report: &Report, json: bool) -> ExitCode {
    let mut out = std::io::stdout().lock();
    let written = if json {
        serde_json::to_writer_pretty(&mut out, &report.to_json())
            .map_err(std::io::Error::from)
            .and_then(|()| std::io::Write::write_all(&mut out, b"\n"))
    } else {
        report.text(&mut out)
    };
    if let Err(e) = written {
        eprintln!("gatewise doctor: writing the report: {e}");
        return ExitCode::from(2);
    }
    ExitCode::from(report.exit_code())
}

/// `http://host:port/path`, `https://host/path` or `host:port`, with the defaults of the quick
/// form for everything the URL cannot say.
pub fn from_url(url: &str) -> Result<(String, Expect), String> {
    let (tls, rest) = match url.split_once("://") {
        Some(("http", r)) => (false, r),
        Some(("https", r)) => (true, r),
        Some((scheme, _)) => {
            return Err(format!(
                "{url}: unsupported scheme {scheme:?} (http or https)"
            ))
        }
        None => (false, url),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let has_port = authority.rsplit_once(':').is_some_and(|(h, p)| {
        !h.ends_with(':') && p.chars().all(|c| c.is_ascii_digit()) && !authority.ends_with(']')
    });
    let target = if has_port {
        authority.to_string()
    } else {
        format!("{authority}:{}", if tls { 443 } else { 80 })
    };
    config::check_target(&target).map_err(|e| format!("{url}: {e}"))?;
    let up = config::UpstreamConfig::new(vec![target.clone()]);
    Ok((
        target,
        Expect {
            upstream: "default".to_string(),
            tls,
            // The quick form's client: the system's roots, the URL's host as server name.
            tls_client: tls.then(|| target::default_tls_client(false)),
            h2c: false,
            health: None,
            path: path.to_string(),
            connect_timeout: up.connect_timeout,
            idle_timeout: up.idle_timeout,
            per_try_timeout: defaults::PER_TRY_TIMEOUT,
            max_response_header_bytes: up.max_response_header_bytes,
        },
    ))
}
