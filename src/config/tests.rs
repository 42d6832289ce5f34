//! Whole-file tests of [`parse`]: the spec's sample, defaults, and a file with many errors.
//! Value syntaxes (durations, sizes, targets, hosts) are tested next to their parsers.

use std::time::Duration;

use super::*;

/// The sample from the spec's "Interfaces" section; its keys must keep working.
const SPEC_SAMPLE: &str = r#"
[admin]
listen = "127.0.0.1:9901"

[[listener]]
name = "public"
listen = "127.0.0.1:8080"

[[route]]
listener = "public"
host = "*"
path_prefix = "/"
upstream = "app"
timeout = "30s"
per_try_timeout = "5s"
retries = 2

[upstream.app]
targets = ["127.0.0.1:3001", "127.0.0.1:3002", "127.0.0.1:3003"]
balance = "round_robin"
connect_timeout = "1s"
idle_timeout = "4s"
max_connections = 256
queue_timeout = "2s"

[upstream.app.health]
path = "/health"
interval = "500ms"
timeout = "300ms"
rise = 2
fall = 2

[upstream.app.passive]
consecutive_failures = 3
base_ejection = "5s"
max_ejected_percent = 50
"#;

#[test]
fn spec_sample_parses_to_the_expected_config() {
    let config = parse(SPEC_SAMPLE, "spec.toml").unwrap();
    let targets = ["127.0.0.1:3001", "127.0.0.1:3002", "127.0.0.1:3003"];
    let mut app = UpstreamConfig::new(targets.iter().map(|t| t.to_string()).collect());
    app.max_connections = Some(256);
    app.balance = Balance::RoundRobin;
    app.health = Some(HealthConfig {
        interval: Duration::from_millis(500),
        timeout: Duration::from_millis(300),
        ..HealthConfig::http("/health")
    });
    app.passive.consecutive_failures = 3;
    let mut expected = Config::quick("127.0.0.1:8080".parse().unwrap(), Vec::new());
    expected.routes = vec![RouteConfig::new("public", "app")];
    expected.upstreams = [("app".to_string(), app)].into_iter().collect();
    assert_eq!(config, expected);
}

#[test]
fn omitted_fields_take_their_defaults() {
    let src = r#"
[[listener]]
name = "only"
listen = "127.0.0.1:0"

[[route]]
upstream = "u"

[upstream.u]
targets = ["backend:80"]
"#;
    let config = parse(src, "min.toml").unwrap();
    assert_eq!(config.workers, None);
    assert_eq!(
        config.admin.listen,
        Some(defaults::ADMIN_LISTEN.parse().unwrap())
    );
    assert_eq!(config.access_log, AccessLog::Stdout);
    assert_eq!(config.drain_delay, defaults::DRAIN_DELAY);
    assert_eq!(config.shutdown_timeout, defaults::SHUTDOWN_TIMEOUT);
    assert_eq!(
        config.listeners,
        vec![ListenerConfig::new("only", "127.0.0.1:0".parse().unwrap())]
    );
    // The route's listener is implied by there being exactly one.
    assert_eq!(config.routes, vec![RouteConfig::new("only", "u")]);
    assert_eq!(
        config.upstreams["u"],
        UpstreamConfig::new(vec!["backend:80".into()])
    );
}

#[test]
fn every_key_is_converted() {
    let src = r#"
workers = 3
access_log = "/var/log/gatewise.log"
[admin]
listen = "off"
[[listener]]
name = "a"
listen = "[::1]:8443"
header_read_timeout = "1m30s"
max_header_bytes = "16KiB"
max_headers = 50
expose_details = true
allow_trace = true
[[listener]]
name = "b"
listen = "127.0.0.1:8080"
[[route]]
listener = "b"
host = "*.Example.com"
path_prefix = "/api"
upstream = "u"
timeout = "10s"
per_try_timeout = "2s"
retries = 0
retry_non_idempotent = true
retry_on_status = [503]
replay_buffer = 1024
retry_budget_ratio = 0.5
retry_budget_per_second = 3
tunnel_idle_timeout = "10m"
[upstream.u]
targets = ["10.0.0.1:80"]
balance = "least_request"
protocol = "http1"
learn_idle_timeout = false
max_idle_per_target = 8
queue_size = 0
body_idle_timeout = "1h"
max_response_header_bytes = "1MiB"
slow_start = "0s"
panic_threshold = 25
outage_hold = "0s"
outage_hold_queue = 7
[upstream.u.health]
type = "tcp"
[upstream.u.passive]
consecutive_failures = 0
max_ejection = "10s"
failure_statuses = [500, 502]
"#;
    let c = parse(src, "all.toml").unwrap();
    assert_eq!(c.workers, Some(3));
    assert_eq!(
        c.access_log,
        AccessLog::File("/var/log/gatewise.log".into())
    );
    assert_eq!(c.admin.listen, None);
    let a = &c.listeners[0];
    assert_eq!(
        (
            a.listen.port(),
            a.header_read_timeout,
            a.max_header_bytes,
            a.max_headers
        ),
        (8443, Duration::from_secs(90), 16384, 50)
    );
    assert!(a.expose_details && a.allow_trace);
    assert!(!c.listeners[1].expose_details && !c.listeners[1].allow_trace);
    let r = &c.routes[0];
    assert_eq!(
        (r.listener.as_str(), &r.host, r.path_prefix.as_str()),
        ("b", &HostPattern::Suffix(".example.com".into()), "/api")
    );
    assert_eq!(
        (
            r.timeout,
            r.per_try_timeout,
            r.retries,
            r.retry_non_idempotent
        ),
        (Duration::from_secs(10), Duration::from_secs(2), 0, true)
    );
    assert_eq!(
        (
            r.retry_on_status.as_slice(),
            r.replay_buffer,
            r.retry_budget_ratio,
            r.retry_budget_per_second
        ),
        (&[503][..], 1024, 0.5, 3)
    );
    assert_eq!(r.tunnel_idle_timeout, Duration::from_secs(600));
    let u = &c.upstreams["u"];
    assert_eq!(
        (
            u.balance,
            u.max_idle_per_target,
            u.queue_size,
            u.max_response_header_bytes
        ),
        (Balance::LeastRequest, 8, 0, 1 << 20)
    );
    assert!(!u.learn_idle_timeout);
    assert_eq!(
        (u.body_idle_timeout, u.slow_start, u.panic_threshold),
        (Duration::from_secs(3600), Duration::ZERO, Some(0.25))
    );
    assert_eq!((u.outage_hold, u.outage_hold_queue), (Duration::ZERO, 7));
    assert_eq!(
        u.health.as_ref().map(|h| &h.kind),
        Some(&HealthCheckKind::Tcp)
    );
    assert_eq!(
        (u.passive.consecutive_failures, u.passive.max_ejection),
        (0, Duration::from_secs(10))
    );
    assert_eq!(u.passive.failure_statuses, vec![500, 502]);
}

/// Each line marked `# <- error` must produce an error on that line, and nothing else may.
const MANY_ERRORS: &str = r#"workers = 0 # <- error
unknown_top = 1 # <- error
[[listener]]
name = "public"
listen = "127.0.0.1:99999" # <- error
colour = "red" # <- error
[[route]]
upstream = "nope" # <- error
path_prefix = "api" # <- error
timeout = "1s"
per_try_timeout = "2s" # <- error
retries = "two" # <- error
[upstream.app]
targets = ["127.0.0.1", "app:80"] # <- error
protocol = "h3" # <- error
panic_threshold = 150 # <- error
outage_hold = "soon" # <- error
[upstream.app.health]
interval = "fast" # <- error
expected_status = "399-200" # <- error
fall = 0 # <- error
[upstream.app.passive]
max_ejected_percent = 101 # <- error
typo = 1 # <- error
"#;

#[test]
fn every_error_is_reported_with_its_line() {
    let errors = parse(MANY_ERRORS, "bad.toml").unwrap_err().0;
    let got: Vec<usize> = errors.iter().map(|e| e.line).collect();
    let want: Vec<usize> = MANY_ERRORS
        .lines()
        .enumerate()
        .filter(|(_, l)| l.ends_with("# <- error"))
        .map(|(i, _)| i + 1)
        .collect();
    assert_eq!(got, want, "{}", ConfigErrors(errors.clone()));
    assert!(errors.iter().all(|e| e.file == "bad.toml" && e.column >= 1));
    let field = |line: usize| {
        errors
            .iter()
            .find(|e| e.line == line)
            .unwrap()
            .field
            .as_str()
    };
    assert_eq!(field(5), "listener[0].listen");
    assert_eq!(field(6), "listener[0].colour");
    assert_eq!(field(12), "route[0].retries");
    assert_eq!(field(15), "upstream.app.protocol");
    assert_eq!(field(17), "upstream.app.outage_hold");
    assert_eq!(field(24), "upstream.app.passive.typo");
    let protocol = errors.iter().find(|e| e.line == 15).unwrap();
    assert_eq!(protocol.column, 12);
    assert!(
        protocol
            .message
            .contains("\"h2c\", \"h2\" or \"auto\", got \"h3\""),
        "{}",
        protocol.message
    );
}

#[test]
fn missing_sections_and_ambiguous_listener_are_errors() {
    let errors = parse("", "empty.toml").unwrap_err().0;
    let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(fields, ["listener", "route"]);

    let src = r#"
[[listener]]
name = "a"
listen = "127.0.0.1:1"
[[listener]]
name = "b"
listen = "127.0.0.1:1"
[[route]]
upstream = "u"
[upstream.u]
targets = []
"#;
    let errors = parse(src, "t.toml").unwrap_err().0;
    let got: Vec<(usize, &str)> = errors.iter().map(|e| (e.line, e.field.as_str())).collect();
    assert_eq!(
        got,
        [
            (7, "listener[1].listen"),
            (8, "route[0].listener"),
            (11, "upstream.u.targets")
        ]
    );
}

#[test]
fn a_hedge_that_could_never_start_is_an_error_on_its_line() {
    let src = r#"
[[listener]]
name = "a"
listen = "127.0.0.1:1"
[[route]]
upstream = "u"
per_try_timeout = "1s"
hedge_after = "1s"
[upstream.u]
targets = ["127.0.0.1:2"]
"#;
    let errors = parse(src, "t.toml").unwrap_err().0;
    let got: Vec<(usize, &str)> = errors.iter().map(|e| (e.line, e.field.as_str())).collect();
    assert_eq!(got, [(8, "route[0].hedge_after")]);
    assert!(
        errors[0].message.contains("could never start"),
        "{}",
        errors[0].message
    );
    let no_retries = src.replace(
        "hedge_after = \"1s\"",
        "hedge_after = \"50ms\"\nretries = 0",
    );
    let errors = parse(&no_retries, "t.toml").unwrap_err().0;
    assert_eq!(
        (errors[0].line, errors[0].field.as_str()),
        (8, "route[0].hedge_after")
    );
    assert!(
        errors[0].message.contains("retries"),
        "{}",
        errors[0].message
    );
    let hedged = parse(
        &src.replace("\"1s\"\n[upstream", "\"150ms\"\n[upstream"),
        "t.toml",
    )
    .unwrap();
    assert_eq!(
        hedged.routes[0].hedge_after,
        Some(Duration::from_millis(150))
    );
    // Defaults: no hedging, learning on, peak EWMA.
    let ok = parse(&src.replace("hedge_after = \"1s\"\n", ""), "t.toml").unwrap();
    assert_eq!(ok.routes[0].hedge_after, None);
    assert!(ok.upstreams["u"].learn_idle_timeout);
    assert_eq!(ok.upstreams["u"].balance, Balance::PeakEwma);
}

#[test]
fn syntax_errors_carry_their_position() {
    let errors = parse("workers = 2\n[[listener]\n", "syn.toml")
        .unwrap_err()
        .0;
    assert_eq!(errors.len(), 1);
    assert_eq!((errors[0].line, errors[0].field.as_str()), (2, ""));
}

#[test]
fn quick_equivalent_example_is_the_quick_form() {
    let src = include_str!("../../examples/quick-equivalent.toml");
    let config = parse(src, "quick-equivalent.toml").unwrap();
    let quick = crate::run::quick_config(
        "127.0.0.1:8080".parse().unwrap(),
        vec!["127.0.0.1:3000".into()],
    );
    assert_eq!(config, quick);
    assert_eq!(config, crate::run::embedded_default());
    let no_args = crate::cli::RunArgs {
        config: None,
        listen: None,
        to: Vec::new(),
        workers: None,
        admin: None,
        takeover: false,
    };
    assert_eq!(crate::run::config_from_args(&no_args), Ok(config));
}

/// Truncated or damaged files must give errors, never a panic (spans near the end of the input,
/// multi-byte characters, half-written tables).
#[test]
fn damaged_files_never_panic() {
    let src = format!(
        "{}\n# é ü\n",
        include_str!("../../examples/multi-route.toml")
    );
    let boundaries: Vec<usize> = src.char_indices().map(|(i, _)| i).step_by(7).collect();
    for &cut in &boundaries {
        let _ = parse(&src[..cut], "cut.toml");
        let mut damaged = src.clone();
        damaged.remove(cut);
        let _ = parse(&damaged, "damaged.toml");
    }
    assert!(parse(&src, "whole.toml").is_ok());
}

#[test]
fn tunnel_idle_timeout_defaults_to_an_hour_and_refuses_zero() {
    let src = |extra: &str| {
        format!(
            "[[listener]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\n[[route]]\nupstream = \"u\"\n{extra}\n[upstream.u]\ntargets = [\"127.0.0.1:2\"]\n"
        )
    };
    let c = parse(&src(""), "t.toml").unwrap();
    assert_eq!(c.routes[0].tunnel_idle_timeout, Duration::from_secs(3600));
    let errors = parse(&src("tunnel_idle_timeout = \"0s\""), "t.toml")
        .unwrap_err()
        .0;
    assert_eq!(errors.len(), 1, "{}", ConfigErrors(errors.clone()));
    assert_eq!(
        (errors[0].line, errors[0].field.as_str()),
        (6, "route[0].tunnel_idle_timeout")
    );
}

#[test]
fn discovery_dns_and_its_keys_are_read_and_misuse_is_refused() {
    let base = "[[listener]]\nname = \"l\"\nlisten = \"127.0.0.1:0\"\n\
                [[route]]\nupstream = \"app\"\n[upstream.app]\n";
    let ok = format!(
        "{base}targets = [\"app.internal:8080\", \"_http._tcp.app.internal\"]\n\
         discovery = \"dns\"\ndns_interval = \"2s\"\ndns_nameserver = \"10.0.0.2:53\"\n"
    );
    let c = parse(&ok, "d.toml").unwrap();
    assert_eq!(
        c.upstreams["app"].discovery,
        Discovery::Dns(DnsDiscovery {
            interval: Duration::from_secs(2),
            nameserver: Some("10.0.0.2:53".parse().unwrap()),
        })
    );
    let default = format!("{base}targets = [\"app.internal:8080\"]\ndiscovery = \"dns\"\n");
    let c = parse(&default, "d.toml").unwrap();
    assert_eq!(
        c.upstreams["app"].discovery,
        Discovery::Dns(DnsDiscovery {
            interval: defaults::DNS_INTERVAL,
            nameserver: None,
        })
    );
    let static_ = parse(&format!("{base}targets = [\"a:1\"]\n"), "d.toml").unwrap();
    assert_eq!(static_.upstreams["app"].discovery, Discovery::Static);

    let refused = |extra: &str| -> Vec<String> {
        let src = format!("{base}{extra}");
        parse(&src, "d.toml")
            .unwrap_err()
            .0
            .into_iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect()
    };
    let e = refused("targets = [\"a:1\"]\ndiscovery = \"consul\"\n");
    assert!(
        e[0].contains("unknown discovery source \"consul\""),
        "{e:?}"
    );
    let e = refused("targets = [\"a:1\"]\ndiscovery = { zookeeper = {} }\n");
    assert!(
        e[0].contains("unknown discovery source [\"zookeeper\"]"),
        "{e:?}"
    );
    let e = refused("targets = [\"a:1\"]\ndns_interval = \"1s\"\n");
    assert!(
        e[0].contains("applies only with discovery = \"dns\""),
        "{e:?}"
    );
    // An SRV name is a DNS discovery input, not a static target.
    let e = refused("targets = [\"_http._tcp.app.internal\"]\n");
    assert!(e[0].starts_with("upstream.app.targets"), "{e:?}");
    let e = refused("targets = [\"a:1\"]\ndiscovery = \"dns\"\ndns_nameserver = \"ns1\"\n");
    assert!(e[0].contains("expected IP:PORT of a nameserver"), "{e:?}");
}

#[test]
fn worker_model_is_per_worker_unless_work_stealing_is_asked_for() {
    let body = "[[listener]]\nname = \"l\"\nlisten = \"127.0.0.1:0\"\n[[route]]\nupstream = \"u\"\n[upstream.u]\ntargets = [\"127.0.0.1:2\"]\n";
    assert_eq!(
        parse(body, "t.toml").unwrap().worker_model,
        WorkerModel::PerWorker
    );
    let stealing = format!("worker_model = \"work_stealing\"\n{body}");
    assert_eq!(
        parse(&stealing, "t.toml").unwrap().worker_model,
        WorkerModel::WorkStealing
    );
    let bogus = format!("worker_model = \"threads\"\n{body}");
    let errors = parse(&bogus, "t.toml").unwrap_err().0;
    let got: Vec<(usize, &str)> = errors.iter().map(|e| (e.line, e.field.as_str())).collect();
    assert_eq!(got, [(1, "worker_model")]);
    assert!(
        errors[0]
            .message
            .contains("\"per_worker\" or \"work_stealing\""),
        "{}",
        errors[0].message
    );
}
