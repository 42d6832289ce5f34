//! TLS to upstreams (`protocol = "https"`) through the one connector: verification and its
//! failures named, `ca_file`, `sni`, mTLS, pooling, retries, the protocol mismatches, and the
//! health checks going through the same connector.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use gatewise::config::UpstreamTlsConfig;

use crate::support::tls::{pair, self_signed, tls_upstream, write_pair, TempDir, TestCa};
use crate::support::{self, assert_generated, config, get, upstream, upstream_of};

fn upstream_tls(ca_file: Option<std::path::PathBuf>) -> UpstreamTlsConfig {
    UpstreamTlsConfig {
        ca_file,
        sni: None,
        client_cert: None,
        insecure_skip_verify: false,
    }
}

#[tokio::test]
async fn self_signed_upstream_is_a_502_tls_certificate_error_with_the_reason() {
    let up = tls_upstream(&self_signed(&["127.0.0.1"]), None).await;
    let mut c = config(&[up.addr]);
    let dir = TempDir::new();
    // Trust some other CA: the system store may be empty on a CI machine.
    let other = dir.write("other-ca.pem", &TestCa::new("other").cert_pem);
    upstream_of(&mut c).tls = Some(upstream_tls(Some(other)));
    let gw = support::start(c).await;
    let (parts, _) = get(&support::client(), &gw.url("/")).await;
    let ps = assert_generated(&parts, 502, "tls_certificate_error");
    assert!(ps.contains("unknown issuer"), "{ps}");
    let line = gw.next_log();
    assert_eq!(line["attempts"][0]["request_sent"], false, "{line}");
}

#[tokio::test]
async fn expired_and_misnamed_upstream_certificates_say_so() {
    let ca = TestCa::new("test ca");
    let dir = TempDir::new();
    let ca_file = dir.write("ca.pem", &ca.cert_pem);
    let expired = tls_upstream(&ca.issue_expired(&["127.0.0.1"]), None).await;
    let misnamed = tls_upstream(&ca.issue(&["other.test"]), None).await;
    for (addr, want) in [
        (expired.addr, "certificate expired".to_string()),
        (
            misnamed.addr,
            r#"name mismatch: certificate is not valid for \"127.0.0.1\""#.to_string(),
        ),
    ] {
        let mut c = config(&[addr]);
        upstream_of(&mut c).tls = Some(upstream_tls(Some(ca_file.clone())));
        let gw = support::start(c).await;
        let (parts, _) = get(&support::client(), &gw.url("/")).await;
        let ps = assert_generated(&parts, 502, "tls_certificate_error");
        assert!(ps.contains(&want), "{ps}");
    }
}

#[tokio::test]
async fn ca_file_makes_a_private_ca_upstream_pass_and_its_connections_are_pooled() {
    let ca = TestCa::new("private ca");
    let dir = TempDir::new();
    let ca_file = dir.write("ca.pem", &ca.cert_pem);
    let up = tls_upstream(&ca.issue(&["127.0.0.1"]), None).await;
    let mut c = config(&[up.addr]);
    upstream_of(&mut c).tls = Some(upstream_tls(Some(ca_file)));
    let gw = support::start(c).await;
    let client = support::client();
    for path in ["/one", "/two", "/three"] {
        let (parts, body) = get(&client, &gw.url(path)).await;
        assert_eq!(parts.status, 200);
        assert_eq!(body, path.as_bytes());
        assert_eq!(parts.headers["x-client-cert"], "no");
    }
    assert_eq!(
        up.handshakes.load(Ordering::SeqCst),
        1,
        "one pooled TLS connection"
    );
}

#[tokio::test]
async fn sni_override_is_the_name_sent_and_verified() {
    let ca = TestCa::new("private ca");
    let dir = TempDir::new();
    let ca_file = dir.write("ca.pem", &ca.cert_pem);
    let up = tls_upstream(&ca.issue(&["api.internal"]), None).await;
    let mut c = config(&[up.addr]);
    let mut tls = upstream_tls(Some(ca_file));
    tls.sni = Some("api.internal".into());
    upstream_of(&mut c).tls = Some(tls);
    let gw = support::start(c).await;
    let (parts, _) = get(&support::client(), &gw.url("/")).await;
    assert_eq!(parts.status, 200);
}

#[tokio::test]
async fn mtls_client_certificate_is_presented() {
    let ca = TestCa::new("private ca");
    let dir = TempDir::new();
    let ca_file = dir.write("ca.pem", &ca.cert_pem);
    let (client_cert, client_key) = write_pair(&dir, "client", &ca.issue(&["gatewise.client"]));
    let up = tls_upstream(&ca.issue(&["127.0.0.1"]), Some(&ca.cert_pem)).await;
    let mut c = config(&[up.addr]);
    let mut tls = upstream_tls(Some(ca_file));
    tls.client_cert = Some(pair(&client_cert, &client_key));
    upstream_of(&mut c).tls = Some(tls);
    let gw = support::start(c).await;
    let (parts, _) = get(&support::client(), &gw.url("/")).await;
    assert_eq!(parts.status, 200);
    assert_eq!(parts.headers["x-client-cert"], "yes");
}

#[tokio::test]
async fn https_upstream_that_speaks_plain_http_is_named() {
    let plain = upstream::echo().await;
    let dir = TempDir::new();
    let ca_file = dir.write("ca.pem", &TestCa::new("ca").cert_pem);
    let mut c = config(&[plain.addr]);
    upstream_of(&mut c).tls = Some(upstream_tls(Some(ca_file)));
    // No outage hold: the handshake failure itself is the answer (held: tests/it/hold.rs).
    upstream_of(&mut c).outage_hold = std::time::Duration::ZERO;
    let gw = support::start(c).await;
    let (parts, _) = get(&support::client(), &gw.url("/")).await;
    let ps = assert_generated(&parts, 502, "tls_protocol_error");
    assert!(
        ps.contains(r#"target speaks plain HTTP; protocol = \"https\" is set"#),
        "{ps}"
    );
}

#[tokio::test]
async fn plain_upstream_that_speaks_tls_is_named() {
    let ca = TestCa::new("ca");
    let up = tls_upstream(&ca.issue(&["127.0.0.1"]), None).await;
    let mut c = config(&[up.addr]);
    support::route_of(&mut c).retries = 0;
    let gw = support::start(c).await;
    let (parts, _) = get(&support::client(), &gw.url("/")).await;
    let ps = assert_generated(&parts, 502, "tls_protocol_error");
    assert!(
        ps.contains(r#"target speaks TLS; protocol = \"https\" is not set"#),
        "{ps}"
    );
}

#[tokio::test]
async fn tls_handshake_failure_is_retried_on_another_target() {
    let ca = TestCa::new("ca");
    let dir = TempDir::new();
    let ca_file = dir.write("ca.pem", &ca.cert_pem);
    let bad = tls_upstream(&self_signed(&["127.0.0.1"]), None).await;
    let good = tls_upstream(&ca.issue(&["127.0.0.1"]), None).await;
    let mut c = config(&[bad.addr, good.addr]);
    upstream_of(&mut c).tls = Some(upstream_tls(Some(ca_file)));
    let gw = support::start(c).await;
    let client = support::client();
    // A POST: retried only because no byte of it was written.
    for _ in 0..4 {
        let req = http::Request::post(gw.url("/p"))
            .body(http_body_util::Full::new(bytes::Bytes::from_static(b"x")))
            .unwrap();
        let (parts, _) = support::send(&client, req).await;
        assert_eq!(parts.status, 200);
    }
}

#[tokio::test]
async fn health_checks_go_through_the_same_connector() {
    use gatewise::upstream::connect::Endpoint;
    use gatewise::upstream::health::active::probe_endpoint;
    use gatewise::upstream::tls::TlsClient;
    let ca = TestCa::new("ca");
    let dir = TempDir::new();
    let ca_file = dir.write("ca.pem", &ca.cert_pem);
    let good = tls_upstream(&ca.issue(&["127.0.0.1"]), None).await;
    let bad = tls_upstream(&self_signed(&["127.0.0.1"]), None).await;
    let client = Arc::new(
        TlsClient::new(
            &upstream_tls(Some(ca_file)),
            gatewise::config::UpstreamProtocol::Https,
        )
        .unwrap(),
    );
    let check = gatewise::config::HealthConfig::http("/health");
    let ok = probe_endpoint(
        &Endpoint::new(&good.addr.to_string(), Some(&client)),
        &check,
    )
    .await;
    assert!(ok.ok, "{ok:?}");
    assert_eq!(ok.detail, "status 200");
    let failed = probe_endpoint(&Endpoint::new(&bad.addr.to_string(), Some(&client)), &check).await;
    assert!(!failed.ok);
    assert!(
        failed
            .detail
            .starts_with("tls_certificate_error: unknown issuer"),
        "{failed:?}"
    );
}

#[tokio::test]
async fn a_target_that_refuses_our_missing_client_certificate_says_so() {
    let ca = TestCa::new("private ca");
    let dir = TempDir::new();
    let ca_file = dir.write("ca.pem", &ca.cert_pem);
    let up = tls_upstream(&ca.issue(&["127.0.0.1"]), Some(&ca.cert_pem)).await;
    let mut c = config(&[up.addr]);
    upstream_of(&mut c).tls = Some(upstream_tls(Some(ca_file)));
    support::route_of(&mut c).retries = 0;
    let gw = support::start(c).await;
    let (parts, _) = get(&support::client(), &gw.url("/")).await;
    let ps = assert_generated(&parts, 502, "tls_certificate_error");
    assert!(ps.contains("target refused our client certificate"), "{ps}");
}

#[tokio::test]
async fn insecure_skip_verify_accepts_a_self_signed_target() {
    let up = tls_upstream(&self_signed(&["elsewhere.test"]), None).await;
    let mut c = config(&[up.addr]);
    let mut tls = upstream_tls(None);
    tls.insecure_skip_verify = true;
    upstream_of(&mut c).tls = Some(tls);
    let gw = support::start(c).await;
    let (parts, _) = get(&support::client(), &gw.url("/")).await;
    assert_eq!(parts.status, 200);
}
