//! `/metrics` on the admin listener: real traffic over a refused target and a good one, then the
//! series the docs promise, with their exact values.

use crate::support::{self, client, get, upstream};

/// The value of the series written exactly as `series` (name and labels), if exposed.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.parse().expect("a number"))
}

#[tokio::test]
async fn traffic_over_a_refused_target_shows_in_the_series() {
    let refused = upstream::closed_port().await;
    let good = upstream::ok("fine").await;
    let mut cfg = support::config(&[refused, good.addr]);
    cfg.admin.listen = Some("127.0.0.1:0".parse().unwrap());
    // One refused connect ejects the target, so exactly one attempt is refused.
    support::upstream_of(&mut cfg).passive.consecutive_failures = 1;
    // Ejected for longer than the test runs, so the scrape sees it ejected however slow it is.
    support::upstream_of(&mut cfg).passive.base_ejection = std::time::Duration::from_secs(60);
    let gw = support::start(cfg).await;
    let c = client();

    for _ in 0..6 {
        assert_eq!(get(&c, &gw.url("/")).await.0.status, 200);
        // The line is written after the request is counted: the counts below are final.
        gw.next_log();
    }

    let (parts, body) = get(&c, &format!("http://{}/metrics", gw.admin.unwrap())).await;
    assert_eq!(parts.status, 200);
    assert_eq!(
        parts.headers["content-type"],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let text = String::from_utf8(body.to_vec()).unwrap();
    let (bad, ok) = (refused.to_string(), good.addr.to_string());
    let expect = [
        (
            r#"gatewise_requests_total{route="*/",status="200",cause="none"}"#.to_string(),
            6.0,
        ),
        (
            r#"gatewise_request_duration_seconds_count{route="*/"}"#.to_string(),
            6.0,
        ),
        (
            format!(
                r#"gatewise_upstream_attempts_total{{upstream="default",target="{bad}",outcome="connection_refused"}}"#
            ),
            1.0,
        ),
        (
            format!(
                r#"gatewise_upstream_attempts_total{{upstream="default",target="{ok}",outcome="200"}}"#
            ),
            6.0,
        ),
        (
            r#"gatewise_retries_total{route="*/",reason="not_sent"}"#.to_string(),
            1.0,
        ),
        (
            r#"gatewise_retry_stops_total{route="*/",reason="budget_exhausted"}"#.to_string(),
            0.0,
        ),
        (
            format!(
                r#"gatewise_upstream_health_state{{upstream="default",target="{bad}",state="ejected"}}"#
            ),
            1.0,
        ),
        (
            format!(
                r#"gatewise_upstream_health_state{{upstream="default",target="{bad}",state="healthy"}}"#
            ),
            0.0,
        ),
        (
            format!(
                r#"gatewise_upstream_health_state{{upstream="default",target="{ok}",state="healthy"}}"#
            ),
            1.0,
        ),
        (
            format!(r#"gatewise_ejections_total{{upstream="default",target="{bad}"}}"#),
            1.0,
        ),
        (
            format!(
                r#"gatewise_health_transitions_total{{upstream="default",target="{bad}",to="ejected"}}"#
            ),
            1.0,
        ),
        (
            format!(r#"gatewise_upstream_in_flight{{upstream="default",target="{ok}"}}"#),
            0.0,
        ),
        (
            r#"gatewise_queue_depth{upstream="default"}"#.to_string(),
            0.0,
        ),
        ("gatewise_access_log_dropped_total".to_string(), 0.0),
    ];
    for (series, want) in expect {
        assert_eq!(value(&text, &series), Some(want), "{series} in\n{text}");
    }
}
