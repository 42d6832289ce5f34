//! `[upstream.NAME]` with its `health` and `passive` sub-tables → [`UpstreamConfig`].
//!
//! Split from `validate.rs` only for size; it uses the same error collector, so every problem in
//! an upstream is reported along with the rest of the file.

use toml::Spanned;

use super::file::{
    IntOrStr, RawBalance, RawHealth, RawHealthKind, RawPassive, RawUpstream, RawUpstreamEntry,
};
use super::validate::Cx;
use super::validate_tls;
use super::{
    defaults, values, Balance, Discovery, DnsDiscovery, HealthCheckKind, HealthConfig,
    PassiveConfig, UpstreamConfig, UpstreamProtocol,
};

/// Converts one upstream; `None` when its name is unusable or its body could not be read (the
/// error is already recorded, and routes still see the name so they do not report it missing).
pub(super) fn upstream_config(
    cx: &mut Cx<'_>,
    entry: RawUpstreamEntry,
) -> Option<(String, UpstreamConfig)> {
    let RawUpstreamEntry {
        name,
        body,
        health,
        passive,
    } = entry;
    let field = format!("upstream.{}", name.get_ref());
    let name_ok = cx
        .check(values::check_name(name.get_ref()), name.span(), &field)
        .is_some();
    let span = body.span();
    let health = health
        .and_then(Spanned::into_inner)
        .map(|h| health_config(cx, h, &format!("{field}.health")));
    let passive = match passive {
        Some(p) => p
            .into_inner()
            .map(|p| passive_config(cx, p, &format!("{field}.passive")))
            .unwrap_or_default(),
        None => PassiveConfig::default(),
    };
    let body = body.into_inner()?;
    let RawUpstream {
        targets,
        balance,
        protocol,
        connect_timeout,
        idle_timeout,
        learn_idle_timeout,
        max_idle_per_target,
        max_connections,
        queue_size,
        queue_timeout,
        body_idle_timeout,
        max_response_header_bytes,
        slow_start,
        panic_threshold,
        outage_hold,
        outage_hold_queue,
        ca_file,
        sni,
        client_cert,
        client_key,
        insecure_skip_verify,
        discovery,
        dns_interval,
        dns_nameserver,
        h2_max_streams,
        h2_max_connections,
    } = body;
    let f = |key: &str| format!("{field}.{key}");
    let discovery = discovery_config(cx, discovery, dns_interval, dns_nameserver, &field);
    let srv_allowed = matches!(discovery, Discovery::Dns(_));
    let targets = match targets {
        // The Service's endpoints are the targets; a list beside it would be ignored.
        t if matches!(discovery, Discovery::Kubernetes(_)) => {
            if let Some(t) = t {
                cx.err(
                    t.span(),
                    &f("targets"),
                    "leave targets out with discovery = { kubernetes = ... }: the targets are \
                     the Service's endpoints",
                );
            }
            Vec::new()
        }
        None => {
            cx.missing(
                span.clone(),
                &f("targets"),
                "required: a list of \"host:port\" targets",
            );
            Vec::new()
        }
        Some(t) if t.get_ref().is_empty() => {
            cx.err(
                t.span(),
                &f("targets"),
                "must list at least one \"host:port\" target",
            );
            Vec::new()
        }
        Some(t) => {
            let mut out: Vec<String> = Vec::new();
            for target in t.into_inner() {
                let srv = srv_allowed && is_srv_name(target.get_ref());
                if !srv
                    && cx
                        .check(
                            values::check_target(target.get_ref()),
                            target.span(),
                            &f("targets"),
                        )
                        .is_none()
                {
                    continue;
                }
                if out.contains(target.get_ref()) {
                    cx.err(
                        target.span(),
                        &f("targets"),
                        format!("duplicate target {:?}", target.get_ref()),
                    );
                }
                out.push(target.into_inner());
            }
            out
        }
    };
    let mut upstream_protocol = UpstreamProtocol::Http1;
    if let Some(p) = protocol {
        upstream_protocol = match p.get_ref().as_str() {
            "http1" => UpstreamProtocol::Http1,
            "https" => UpstreamProtocol::Https,
            "h2c" => UpstreamProtocol::H2c,
            "h2" => UpstreamProtocol::H2,
            "auto" => UpstreamProtocol::Auto,
            other => {
                cx.err(
                    p.span(),
                    &f("protocol"),
                    format!(
                        "expected \"http1\", \"https\", \"h2c\", \"h2\" or \"auto\", \
                         got {other:?}"
                    ),
                );
                UpstreamProtocol::Http1
            }
        };
    }
    let https = upstream_protocol.is_tls();
    let positive = |cx: &mut Cx<'_>, v: Option<Spanned<u32>>, key: &str, default: u32| match v {
        Some(v) if *v.get_ref() == 0 => {
            cx.err(v.span(), &f(key), "must be at least 1");
            default
        }
        Some(v) => v.into_inner(),
        None => default,
    };
    let h2_max_streams = positive(
        cx,
        h2_max_streams,
        "h2_max_streams",
        defaults::H2_MAX_STREAMS,
    );
    let h2_max_connections = positive(
        cx,
        h2_max_connections,
        "h2_max_connections",
        defaults::H2_MAX_CONNECTIONS,
    );
    let tls_keys = validate_tls::RawUpstreamTls {
        ca_file,
        sni,
        client_cert,
        client_key,
        insecure_skip_verify,
    };
    let tls = validate_tls::upstream_tls(cx, tls_keys, https, &field);
    let max_connections = match max_connections {
        Some(m) if *m.get_ref() == 0 => {
            cx.err(
                m.span(),
                &f("max_connections"),
                "must be at least 1 (leave it out for no limit)",
            );
            None
        }
        m => m.map(Spanned::into_inner),
    };
    let config = UpstreamConfig {
        targets,
        balance: match balance {
            None => defaults::BALANCE,
            Some(RawBalance::RoundRobin) => Balance::RoundRobin,
            Some(RawBalance::LeastRequest) => Balance::LeastRequest,
            Some(RawBalance::PeakEwma) => Balance::PeakEwma,
        },
        connect_timeout: cx.duration(
            connect_timeout,
            &f("connect_timeout"),
            defaults::CONNECT_TIMEOUT,
            true,
        ),
        idle_timeout: cx.duration(
            idle_timeout,
            &f("idle_timeout"),
            defaults::IDLE_TIMEOUT,
            true,
        ),
        learn_idle_timeout: learn_idle_timeout.unwrap_or(defaults::LEARN_IDLE_TIMEOUT),
        max_idle_per_target: max_idle_per_target.unwrap_or(defaults::MAX_IDLE_PER_TARGET),
        max_connections,
        queue_size: queue_size.unwrap_or(defaults::QUEUE_SIZE),
        queue_timeout: cx.duration(
            queue_timeout,
            &f("queue_timeout"),
            defaults::QUEUE_TIMEOUT,
            true,
        ),
        body_idle_timeout: cx.duration(
            body_idle_timeout,
            &f("body_idle_timeout"),
            defaults::BODY_IDLE_TIMEOUT,
            true,
        ),
        max_response_header_bytes: cx.size(
            max_response_header_bytes,
            &f("max_response_header_bytes"),
            defaults::MAX_RESPONSE_HEADER_BYTES,
        ),
        health,
        passive,
        slow_start: cx.duration(slow_start, &f("slow_start"), defaults::SLOW_START, false),
        panic_threshold: panic_threshold.and_then(|p| {
            let span = p.span();
            cx.check(percent_threshold(*p.get_ref()), span, &f("panic_threshold"))
                .flatten()
        }),
        outage_hold: cx.duration(outage_hold, &f("outage_hold"), defaults::OUTAGE_HOLD, false),
        outage_hold_queue: outage_hold_queue.unwrap_or(defaults::OUTAGE_HOLD_QUEUE),
        tls,
        discovery,
        protocol: upstream_protocol,
        h2_max_streams,
        h2_max_connections,
    };
    name_ok.then(|| (name.into_inner(), config))
}

/// `panic_threshold` is a percent of healthy targets, 0-100; 0 turns panic mode off. A value
/// between 0 and 1 is almost surely a fraction written by mistake, so it is refused.
fn percent_threshold(p: f64) -> Result<Option<f64>, String> {
    if p == 0.0 {
        Ok(None)
    } else if p > 0.0 && p < 1.0 {
        Err(format!(
            "is a percent 0-100, got {p}: write {} for {p} as a fraction",
            p * 100.0
        ))
    } else if (1.0..=100.0).contains(&p) {
        Ok(Some(p / 100.0))
    } else {
        Err(format!("expected a percent 0-100, got {p}"))
    }
}

fn health_config(cx: &mut Cx<'_>, raw: RawHealth, field: &str) -> HealthConfig {
    let RawHealth {
        kind,
        path,
        interval,
        timeout,
        expected_status,
        rise,
        fall,
    } = raw;
    let f = |key: &str| format!("{field}.{key}");
    let kind = match kind.unwrap_or(RawHealthKind::Http) {
        RawHealthKind::Tcp => {
            for (key, given) in [
                ("path", path.as_ref().map(|p| p.span())),
                (
                    "expected_status",
                    expected_status.as_ref().map(|e| e.span()),
                ),
            ] {
                if let Some(at) = given {
                    cx.err(at, &f(key), "only applies to type = \"http\"");
                }
            }
            HealthCheckKind::Tcp
        }
        RawHealthKind::Http => {
            let path = match path {
                None => "/".to_string(),
                Some(p) if p.get_ref().starts_with('/') => p.into_inner(),
                Some(p) => {
                    cx.err(
                        p.span(),
                        &f("path"),
                        format!("must start with '/', got {:?}", p.get_ref()),
                    );
                    "/".to_string()
                }
            };
            let expected_status = match expected_status {
                None => defaults::HEALTH_EXPECTED_STATUS,
                Some(e) => {
                    let at = e.span();
                    let r = match e.into_inner() {
                        IntOrStr::Int(n) => values::parse_status_range(&n.to_string()),
                        IntOrStr::Str(s) => values::parse_status_range(&s),
                    };
                    cx.check(r, at, &f("expected_status"))
                        .unwrap_or(defaults::HEALTH_EXPECTED_STATUS)
                }
            };
            HealthCheckKind::Http {
                path,
                expected_status,
            }
        }
    };
    HealthConfig {
        kind,
        interval: cx.duration(interval, &f("interval"), defaults::HEALTH_INTERVAL, true),
        timeout: cx.duration(timeout, &f("timeout"), defaults::HEALTH_TIMEOUT, true),
        rise: cx.nonzero(rise, &f("rise"), defaults::HEALTH_RISE),
        fall: cx.nonzero(fall, &f("fall"), defaults::HEALTH_FALL),
    }
}

fn passive_config(cx: &mut Cx<'_>, raw: RawPassive, field: &str) -> PassiveConfig {
    let RawPassive {
        consecutive_failures,
        base_ejection,
        max_ejection,
        max_ejected_percent,
        failure_statuses,
    } = raw;
    let f = |key: &str| format!("{field}.{key}");
    let at = max_ejection
        .as_ref()
        .or(base_ejection.as_ref())
        .map(|m| m.span());
    let base_ejection = cx.duration(
        base_ejection,
        &f("base_ejection"),
        defaults::BASE_EJECTION,
        true,
    );
    let max_ejection = cx.duration(
        max_ejection,
        &f("max_ejection"),
        defaults::MAX_EJECTION,
        true,
    );
    if let (Some(at), true) = (at, max_ejection < base_ejection) {
        cx.err(
            at,
            &f("max_ejection"),
            format!("{max_ejection:?} is shorter than base_ejection {base_ejection:?}"),
        );
    }
    let max_ejected_percent = match max_ejected_percent {
        Some(p) if *p.get_ref() == 0 || *p.get_ref() > 100 => {
            cx.err(p.span(), &f("max_ejected_percent"), format!("expected a percent 1-100, got {} (consecutive_failures = 0 turns ejection off)", p.get_ref()));
            defaults::MAX_EJECTED_PERCENT
        }
        Some(p) => p.into_inner(),
        None => defaults::MAX_EJECTED_PERCENT,
    };
    PassiveConfig {
        consecutive_failures: consecutive_failures.unwrap_or(defaults::CONSECUTIVE_FAILURES),
        base_ejection,
        max_ejection,
        max_ejected_percent,
        failure_statuses: cx.statuses(failure_statuses, &f("failure_statuses"), &[]),
    }
}

/// `discovery` and the `dns_*` keys. Unknown sources and `dns_*` keys without `discovery = "dns"`
/// are refused (a key that would silently do nothing is an error).
fn discovery_config(
    cx: &mut Cx<'_>,
    discovery: Option<Spanned<toml::Value>>,
    dns_interval: Option<super::file::Str>,
    dns_nameserver: Option<super::file::Str>,
    field: &str,
) -> Discovery {
    let f = |key: &str| format!("{field}.{key}");
    let known = "expected \"dns\" or { kubernetes = { service = \"...\", port = \"...\" } } \
                 (leave `discovery` out for the static `targets` list)";
    let source = match discovery {
        None => Discovery::Static,
        Some(d) => {
            let span = d.span();
            match d.into_inner() {
                toml::Value::String(s) if s == "dns" => {
                    let interval = cx.duration(
                        dns_interval.clone(),
                        &f("dns_interval"),
                        defaults::DNS_INTERVAL,
                        true,
                    );
                    let nameserver = dns_nameserver.clone().and_then(|n| {
                        let span = n.span();
                        let parsed = n.get_ref().parse::<std::net::SocketAddr>().map_err(|_| {
                            format!(
                                "expected IP:PORT of a nameserver like \"10.0.0.2:53\", got {:?}",
                                n.get_ref()
                            )
                        });
                        cx.check(parsed, span, &f("dns_nameserver"))
                    });
                    Discovery::Dns(DnsDiscovery {
                        interval,
                        nameserver,
                    })
                }
                toml::Value::String(s) if s == "static" => Discovery::Static,
                toml::Value::String(other) => {
                    cx.err(
                        span,
                        &f("discovery"),
                        format!("unknown discovery source {other:?}: {known}"),
                    );
                    Discovery::Static
                }
                toml::Value::Table(t) if t.len() == 1 && t.contains_key("kubernetes") => {
                    kubernetes_config(cx, t, span, &f("discovery.kubernetes"))
                }
                toml::Value::Table(t) => {
                    let keys: Vec<&String> = t.keys().collect();
                    cx.err(
                        span,
                        &f("discovery"),
                        format!("unknown discovery source {keys:?}: {known}"),
                    );
                    Discovery::Static
                }
                other => {
                    cx.err(
                        span,
                        &f("discovery"),
                        format!("expected a source name, got {}: {known}", other.type_str()),
                    );
                    Discovery::Static
                }
            }
        }
    };
    if !matches!(source, Discovery::Dns(_)) {
        for (key, value) in [
            ("dns_interval", dns_interval),
            ("dns_nameserver", dns_nameserver),
        ] {
            if let Some(v) = value {
                cx.err(
                    v.span(),
                    &f(key),
                    format!("{key} applies only with discovery = \"dns\""),
                );
            }
        }
    }
    source
}

/// `discovery = { kubernetes = { service, namespace, port, kubeconfig, api_server } }`.
fn kubernetes_config(
    cx: &mut Cx<'_>,
    mut table: toml::Table,
    span: std::ops::Range<usize>,
    field: &str,
) -> Discovery {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Raw {
        service: String,
        namespace: Option<String>,
        port: toml::Value,
        kubeconfig: Option<String>,
        api_server: Option<String>,
    }
    let value = table
        .remove("kubernetes")
        .unwrap_or(toml::Value::Boolean(false));
    let raw: Raw = match value.try_into() {
        Ok(raw) => raw,
        Err(e) => {
            let why = e.message().trim().to_string();
            cx.err(
                span,
                field,
                format!("{why}: expected {{ service = \"app\", port = \"http\" }} with optional namespace, kubeconfig, api_server"),
            );
            return Discovery::Static;
        }
    };
    let Raw {
        service,
        namespace,
        port,
        kubeconfig,
        api_server,
    } = raw;
    let port = match port {
        toml::Value::String(s) => s,
        toml::Value::Integer(n) if (1..=65535).contains(&n) => n.to_string(),
        other => {
            cx.err(
                span.clone(),
                &format!("{field}.port"),
                format!("expected a port name of the Service (\"http\") or a number 1-65535, got {other}"),
            );
            String::new()
        }
    };
    let settings = super::KubernetesDiscovery {
        service,
        namespace,
        port,
        kubeconfig: kubeconfig.map(|p| cx.path(&p)),
        api_server,
    };
    for (key, problem) in crate::discovery::kubernetes::problems(&settings) {
        cx.err(span.clone(), &format!("{field}.{key}"), problem);
    }
    Discovery::Kubernetes(settings)
}

/// `_service._proto.name`: an SRV name, whose records give hosts and ports (DNS discovery).
pub fn is_srv_name(s: &str) -> bool {
    let mut labels = s.split('.');
    let (Some(service), Some(proto)) = (labels.next(), labels.next()) else {
        return false;
    };
    let rest: Vec<&str> = labels.collect();
    service.len() > 1
        && service.starts_with('_')
        && proto.len() > 1
        && proto.starts_with('_')
        && !rest.is_empty()
        && rest
            .iter()
            .all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
}
