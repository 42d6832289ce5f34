//! HTTP/2 to upstreams (`protocol = "h2c"`): requests from HTTP/1.1 clients go out as streams of
//! one shared connection, `:authority` instead of `Host`; streams the upstream did not process
//! (a GOAWAY, `REFUSED_STREAM`) are retried for any method, while a stream reset after the
//! upstream processed it is not retried for a POST.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use gatewise::config::UpstreamProtocol;
use http::Request;
use http_body_util::Full;

use crate::support::goaway_proxy;
use crate::support::h2_upstream::{self, Script};
use crate::support::{self, config, route_of, upstream_of};

fn h2c_config(addr: std::net::SocketAddr) -> gatewise::config::Config {
    let mut c = config(&[addr]);
    upstream_of(&mut c).protocol = UpstreamProtocol::H2c;
    c
}

#[tokio::test]
async fn http1_client_reaches_an_h2c_upstream_with_one_authority() {
    let up = h2_upstream::start(Script::Answer).await;
    let gw = support::start(h2c_config(up.addr)).await;
    let client = support::client();
    for i in 0..5 {
        let req = Request::post(gw.url("/p?q=1"))
            .header("host", "app.example")
            .header("x-id", format!("one-{i}"))
            .body(Full::new(Bytes::from(format!("body {i}"))))
            .unwrap();
        let (parts, body) = support::send(&client, req).await;
        assert_eq!(parts.status, 200, "{parts:?}");
        assert_eq!(body, format!("body {i}"));
        // The authority went once, as `:authority`; no Host beside it.
        assert_eq!(parts.headers["x-seen-authority"], "app.example");
        assert_eq!(parts.headers["x-seen-host-count"], "0");
        assert_eq!(parts.headers["x-seen-method"], "POST");
        let line = gw.next_log();
        assert_eq!(line["upstream_protocol"], "h2", "{line}");
        assert_eq!(line["protocol"], "h1", "{line}");
    }
    // One multiplexed connection carried them all.
    assert_eq!(up.record.connections.load(Ordering::Relaxed), 1);
}

/// `concurrency` tasks send `total` requests, every other one a POST with a unique `x-id`;
/// returns the statuses that were not 200.
async fn load(gw: &support::TestGateway, total: usize, concurrency: usize) -> Vec<String> {
    let client = support::client();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, next, url) = (client.clone(), next.clone(), gw.url("/load"));
        tasks.push(tokio::spawn(async move {
            let mut bad = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return bad;
                }
                let method = if i % 2 == 0 { "POST" } else { "GET" };
                let req = Request::builder()
                    .method(method)
                    .uri(&url)
                    .header("x-id", format!("req-{i}"))
                    .body(Full::new(Bytes::from(format!("payload {i}"))))
                    .unwrap();
                match client.request(req).await {
                    Ok(resp) if resp.status() == 200 => {
                        let _ = http_body_util::BodyExt::collect(resp.into_body()).await;
                    }
                    Ok(resp) => bad.push(format!(
                        "{method} {i}: {} {:?}",
                        resp.status(),
                        resp.headers().get("proxy-status")
                    )),
                    Err(e) => bad.push(format!("{method} {i}: {e}")),
                }
            }
        }));
    }
    let mut bad = Vec::new();
    for t in tasks {
        bad.extend(t.await.unwrap());
    }
    bad
}

fn assert_each_post_once(record: &h2_upstream::Record, total: usize) {
    assert!(record.duplicates().is_empty(), "{:?}", record.duplicates());
    for i in (0..total).step_by(2) {
        assert_eq!(record.executions(&format!("req-{i}")), 1, "POST req-{i}");
    }
}

#[tokio::test]
async fn streams_above_a_goaway_last_stream_id_are_retried_and_run_once() {
    let up = h2_upstream::start(Script::Answer).await;
    // Every connection is cut by a GOAWAY after 40 streams; streams in flight past it are
    // held back (never reach the upstream) and reported above the last-stream-id. (Their
    // retries spend from the route's retry budget like any other: 20% of requests + 10/s.)
    let cutter = goaway_proxy::start(up.addr, 40).await;
    let gw = support::start(h2c_config(cutter.addr)).await;
    let total = 400;
    let bad = load(&gw, total, 8).await;
    let held_back = cutter.counts.held_back.load(Ordering::Relaxed);
    eprintln!(
        "held back {held_back}, goaways {}",
        cutter.counts.goaways.load(Ordering::Relaxed)
    );
    assert!(bad.is_empty(), "client errors: {bad:?}");
    assert!(held_back > 0, "no stream landed above a GOAWAY");
    assert!(cutter.counts.goaways.load(Ordering::Relaxed) >= 5);
    assert_each_post_once(&up.record, total);
}

/// The polite GOAWAY (`h2`'s graceful shutdown: GOAWAY at 2^31-1, a ping, then the real one):
/// streams the client queued after it are handed back by hyper, the rest finish.
#[tokio::test]
async fn graceful_goaway_every_few_streams_loses_no_request_and_repeats_no_post() {
    let up = h2_upstream::start(Script::GoAwayEvery(10)).await;
    let gw = support::start(h2c_config(up.addr)).await;
    let total = 400;
    let bad = load(&gw, total, 16).await;
    assert!(bad.is_empty(), "client errors: {bad:?}");
    assert!(up.record.goaways.load(Ordering::Relaxed) >= 5);
    assert!(up.record.connections.load(Ordering::Relaxed) >= 5);
    assert_each_post_once(&up.record, total);
}

#[tokio::test]
async fn refused_streams_are_retried_for_any_method_and_run_once() {
    let up = h2_upstream::start(Script::RefuseEvery(7)).await;
    let gw = support::start(h2c_config(up.addr)).await;
    let total = 300;
    let bad = load(&gw, total, 16).await;
    assert!(bad.is_empty(), "client errors: {bad:?}");
    let refused = up.record.refused.load(Ordering::Relaxed);
    assert!(refused >= total / 10, "refused {refused}");
    assert_each_post_once(&up.record, total);
    // Refusals are no fault of the target: it stays in the pool, and one connection served all.
    assert_eq!(up.record.connections.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn a_stream_reset_after_processing_is_not_retried_for_post() {
    let up = h2_upstream::start(Script::ResetAfterProcessing).await;
    let mut c = h2c_config(up.addr);
    route_of(&mut c).retries = 2;
    let gw = support::start(c).await;
    let client = support::client();
    let req = Request::post(gw.url("/pay"))
        .header("x-id", "pay-1")
        .body(Full::new(Bytes::from_static(b"charge")))
        .unwrap();
    let (parts, _) = support::send(&client, req).await;
    support::assert_generated(&parts, 502, "connection_terminated");
    assert_eq!(up.record.executions("pay-1"), 1);
    let line = gw.next_log();
    assert_eq!(line["attempts"].as_array().unwrap().len(), 1, "{line}");
    assert_eq!(line["retry_stop"], "non_idempotent", "{line}");
}

mod over_tls {
    use super::*;
    use gatewise::config::UpstreamTlsConfig;

    use crate::support::tls::{tls_upstream_alpn, TempDir, TestCa};
    use crate::support::{assert_generated, get};

    /// A gateway to one TLS upstream offering `alpn`, with `protocol`.
    async fn through(
        protocol: UpstreamProtocol,
        alpn: &[&[u8]],
    ) -> (
        support::TestGateway,
        crate::support::tls::TlsUpstream,
        TempDir,
    ) {
        let ca = TestCa::new("h2 ca");
        let dir = TempDir::new();
        let ca_file = dir.write("ca.pem", &ca.cert_pem);
        let up = tls_upstream_alpn(&ca.issue(&["127.0.0.1"]), None, alpn).await;
        let mut c = config(&[up.addr]);
        let u = upstream_of(&mut c);
        u.protocol = protocol;
        // A refusal is answered at once rather than held for a target to come back.
        u.outage_hold = std::time::Duration::ZERO;
        u.tls = Some(UpstreamTlsConfig {
            ca_file: Some(ca_file),
            sni: None,
            client_cert: None,
            insecure_skip_verify: false,
        });
        (support::start(c).await, up, dir)
    }

    #[tokio::test]
    async fn h2_over_tls_shares_one_connection() {
        let (gw, up, _dir) = through(UpstreamProtocol::H2, &[b"h2", b"http/1.1"]).await;
        let client = support::client();
        for path in ["/a", "/b", "/c"] {
            let (parts, body) = get(&client, &gw.url(path)).await;
            assert_eq!(parts.status, 200, "{parts:?}");
            assert_eq!(parts.headers["x-version"], "HTTP/2.0");
            assert_eq!(body, path.as_bytes());
            assert_eq!(gw.next_log()["upstream_protocol"], "h2");
        }
        assert_eq!(up.handshakes.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn auto_speaks_what_alpn_chose() {
        let client = support::client();
        let (gw, _up, _dir) = through(UpstreamProtocol::Auto, &[b"h2", b"http/1.1"]).await;
        let (parts, _) = get(&client, &gw.url("/")).await;
        assert_eq!(parts.headers["x-version"], "HTTP/2.0");
        let (gw, _up, _dir) = through(UpstreamProtocol::Auto, &[b"http/1.1"]).await;
        let (parts, _) = get(&client, &gw.url("/")).await;
        assert_eq!(parts.headers["x-version"], "HTTP/1.1");
        assert_eq!(gw.next_log()["upstream_protocol"], "h1");
    }

    #[tokio::test]
    async fn h2_to_a_target_that_does_not_agree_to_h2_is_refused_not_downgraded() {
        let client = support::client();
        // No ALPN at all on the target: the handshake completes without a protocol.
        let (gw, _up, _dir) = through(UpstreamProtocol::H2, &[]).await;
        let (parts, _) = get(&client, &gw.url("/")).await;
        let ps = assert_generated(&parts, 502, "tls_protocol_error");
        assert!(ps.contains("did not choose h2"), "{ps}");
        // ALPN without h2: the target refuses the handshake.
        let (gw, _up, _dir) = through(UpstreamProtocol::H2, &[b"http/1.1"]).await;
        let (parts, _) = get(&client, &gw.url("/")).await;
        assert_generated(&parts, 502, "tls_protocol_error");
    }
}
