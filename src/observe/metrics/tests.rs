use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;

use super::*;
use crate::cause::Cause;
use crate::proxy::retry::{RetryReason, StopReason};

/// Handles index arrays by `enum as usize`: that needs `ALL` in declaration order.
#[test]
fn all_lists_are_in_declaration_order() {
    for (i, c) in Cause::ALL.into_iter().enumerate() {
        assert_eq!(c as usize, i, "{c:?}");
    }
    for (i, r) in RetryReason::ALL.into_iter().enumerate() {
        assert_eq!(r as usize, i, "{r:?}");
    }
    for (i, r) in StopReason::ALL.into_iter().enumerate() {
        assert_eq!(r as usize, i, "{r:?}");
    }
    for (i, r) in QueueReject::ALL.into_iter().enumerate() {
        assert_eq!(r as usize, i, "{r:?}");
    }
}

fn upstream() -> Arc<Upstream> {
    let targets = vec!["127.0.0.1:1".into(), "127.0.0.1:2".into()];
    let config = crate::config::UpstreamConfig::new(targets);
    Arc::new(Upstream::new("api", config))
}

#[test]
fn counts_show_in_the_exposition_with_their_labels() {
    let up = upstream();
    let metrics = Metrics::new([&up]);
    let route = metrics.route(&Arc::from("web#0"), &up);
    route.request(200, None, Duration::from_millis(3));
    route.request(200, None, Duration::from_millis(3));
    route.request(
        502,
        Some(Cause::ConnectionRefused),
        Duration::from_millis(1),
    );
    route.attempt(&up.targets[0], None, Some(Cause::ConnectionRefused));
    route.attempt(&up.targets[1], Some(StatusCode::OK), None);
    route.retry(RetryReason::NotSent);
    route.retry_stop(StopReason::BudgetExhausted);
    metrics
        .unrouted()
        .request(404, Some(Cause::DestinationNotFound), Duration::ZERO);
    up.counters.queue_rejected(QueueReject::Full);

    let text = metrics.encode();
    for line in [
        r#"gatewise_requests_total{route="web#0",status="200",cause="none"} 2"#,
        r#"gatewise_requests_total{route="web#0",status="502",cause="connection_refused"} 1"#,
        r#"gatewise_requests_total{route="",status="404",cause="destination_not_found"} 1"#,
        r#"gatewise_request_duration_seconds_count{route="web#0"} 3"#,
        r#"gatewise_request_duration_seconds_bucket{le="0.001",route="web#0"} 1"#,
        r#"gatewise_upstream_attempts_total{upstream="api",target="127.0.0.1:1",outcome="connection_refused"} 1"#,
        r#"gatewise_upstream_attempts_total{upstream="api",target="127.0.0.1:2",outcome="200"} 1"#,
        r#"gatewise_retries_total{route="web#0",reason="not_sent"} 1"#,
        r#"gatewise_retries_total{route="web#0",reason="status"} 0"#,
        r#"gatewise_retry_stops_total{route="web#0",reason="budget_exhausted"} 1"#,
        r#"gatewise_retry_budget_exhausted_total{route="web#0"} 1"#,
        r#"gatewise_queue_rejections_total{upstream="api",reason="queue_full"} 1"#,
        r#"gatewise_queue_rejections_total{upstream="api",reason="queue_timeout"} 0"#,
        r#"gatewise_queue_depth{upstream="api"} 0"#,
        r#"gatewise_upstream_in_flight{upstream="api",target="127.0.0.1:1"} 0"#,
        r#"gatewise_ejections_total{upstream="api",target="127.0.0.1:2"} 0"#,
    ] {
        assert!(text.contains(line), "missing {line} in\n{text}");
    }
    assert!(text.ends_with("# EOF\n"));
}

#[test]
fn two_routes_on_one_upstream_share_the_attempt_series() {
    let up = upstream();
    let metrics = Metrics::new([&up]);
    let a = metrics.route(&Arc::from("a"), &up);
    let b = metrics.route(&Arc::from("b"), &up);
    a.attempt(&up.targets[0], Some(StatusCode::OK), None);
    b.attempt(&up.targets[0], Some(StatusCode::OK), None);
    let text = metrics.encode();
    let line =
        r#"gatewise_upstream_attempts_total{upstream="api",target="127.0.0.1:1",outcome="200"} 2"#;
    assert!(text.contains(line), "{text}");
}

/// Every exposed name is documented: `docs/metrics.md` and `names.rs` change together.
#[test]
fn every_metric_name_is_documented() {
    let docs = include_str!("../../../docs/metrics.md");
    let names: Vec<&str> = include_str!("names.rs")
        .split('"')
        .filter(|s| s.starts_with("gatewise_"))
        .collect();
    assert!(names.len() >= 14, "{names:?}");
    for name in names {
        assert!(
            docs.contains(&format!("`{name}`")),
            "{name} missing from docs/metrics.md"
        );
    }
}

#[test]
fn tunnels_show_open_and_ended_by_who_closed() {
    let up = upstream();
    let metrics = Metrics::new([&up]);
    let route = metrics.route(&Arc::from("web#0"), &up);
    route.tunnel_opened();
    route.tunnel_opened();
    route.tunnel_closed("idle_timeout");
    let text = metrics.encode();
    for line in [
        r#"gatewise_tunnels_open{route="web#0"} 1"#,
        r#"gatewise_tunnels_total{route="web#0",closed_by="idle_timeout"} 1"#,
    ] {
        assert!(text.contains(line), "{line} not in {text}");
    }
}

#[test]
fn reload_counters_belong_to_their_own_gateway() {
    let (a, b) = (Metrics::new([]), Metrics::new([]));
    a.reloads.reloaded("failed", 1);
    a.reloads.reloaded("ok", 2);
    assert!(a
        .encode()
        .contains("gatewise_config_reloads_total{result=\"failed\"} 1"));
    assert!(b
        .encode()
        .contains("gatewise_config_reloads_total{result=\"failed\"} 0"));
}

/// A large (discovered) pool: attempts are found by id through the index, and a route rebuilt
/// for a changed pool shares the handles of the targets kept.
#[test]
fn attempts_in_a_large_pool_count_on_their_target_and_survive_a_rebuild() {
    let targets = (1..=40).map(|p| format!("127.0.0.1:{p}")).collect();
    let up = Arc::new(Upstream::new(
        "big",
        crate::config::UpstreamConfig::new(targets),
    ));
    let metrics = Metrics::new([&up]);
    let route = metrics.route(&Arc::from("r"), &up);
    route.attempt(&up.targets[37], Some(StatusCode::OK), None);
    let mut cfg = up.config.clone();
    cfg.targets.remove(0);
    let next = Arc::new(up.rebuild(cfg).unwrap());
    let rebuilt = metrics.route_after(&Arc::from("r"), &next, Some(&route));
    // targets[37] is now at 36: the same target, the same handles.
    assert!(Arc::ptr_eq(&up.targets[37], &next.targets[36]));
    rebuilt.attempt(&next.targets[36], Some(StatusCode::OK), None);
    let text = metrics.encode();
    let line =
        r#"gatewise_upstream_attempts_total{upstream="big",target="127.0.0.1:38",outcome="200"} 2"#;
    assert!(text.contains(line), "{text}");
}
