//! TLS termination on a listener, with real clients (rustls, curl) and certificates made at
//! test time; the upstream side is in `tls_upstream.rs`.

use std::time::Duration;

use gatewise::config::ListenerTlsConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::tls::{pair, served_names, tls_connect, write_pair, TempDir, TestCa, H1};
use crate::support::{self, config, get, upstream};

fn listener_tls(pairs: Vec<gatewise::config::CertKeyPaths>) -> ListenerTlsConfig {
    ListenerTlsConfig {
        certificates: pairs,
        handshake_timeout: Duration::from_millis(300),
        reload_interval: Duration::from_millis(50),
        expiry_warning: Duration::from_secs(14 * 86400),
        acme: None,
    }
}

#[tokio::test]
async fn two_sni_names_are_served_their_own_certificates() {
    let dir = TempDir::new();
    let ca = TestCa::new("test ca");
    let (a_cert, a_key) = write_pair(&dir, "a", &ca.issue(&["a.test"]));
    let (b_cert, b_key) = write_pair(&dir, "b", &ca.issue(&["b.test", "*.b.test"]));
    let up = upstream::echo().await;
    let mut c = config(&[up.addr]);
    c.listeners[0].tls = Some(listener_tls(vec![
        pair(&a_cert, &a_key),
        pair(&b_cert, &b_key),
    ]));
    let gw = support::start(c).await;

    for (sni, want) in [
        ("a.test", "a.test"),
        ("b.test", "b.test"),
        ("www.b.test", "b.test"),
        // An unknown name gets the first certificate (the default).
        ("unknown.test", "a.test"),
    ] {
        let tls = match tls_connect(gw.addr, sni, &ca.cert_pem).await {
            Ok(tls) => tls,
            // The default certificate is not valid for an unknown name: the client refuses
            // it, which proves which one was sent.
            Err(e) => {
                assert_eq!(sni, "unknown.test", "{e}");
                assert!(
                    e.to_string()
                        .contains(r#"only valid for DnsName("a.test")"#),
                    "{e}"
                );
                continue;
            }
        };
        assert_eq!(served_names(&tls)[0], want, "SNI {sni}");
        // The client offers http/1.1 only and gets it (h2 by ALPN: tests/it/http2.rs).
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
        let mut h1 = H1::over(tls).await;
        let (parts, _) = h1.get(sni, "/x").await;
        assert_eq!(parts.status, 200);
        assert_eq!(parts.headers["x-echo-x-forwarded-proto"], "https");
        let forwarded = parts.headers["x-echo-forwarded"].to_str().unwrap();
        assert!(forwarded.ends_with(";proto=https"), "{forwarded}");
        assert_eq!(gw.next_log()["scheme"], "https");
    }
}

#[tokio::test]
async fn a_second_connection_resumes_the_session_with_tls12_and_tls13() {
    use crate::support::tls::{client_config, client_config_versions, tls_connect_with};
    let dir = TempDir::new();
    let ca = TestCa::new("test ca");
    let (cert, key) = write_pair(&dir, "r", &ca.issue(&["r.test"]));
    let up = upstream::echo().await;
    let mut c = config(&[up.addr]);
    c.listeners[0].tls = Some(listener_tls(vec![pair(&cert, &key)]));
    let gw = support::start(c).await;
    let tls13 = client_config(&ca.cert_pem);
    let tls12 = client_config_versions(&ca.cert_pem, &[&rustls::version::TLS12]);
    for (config, version) in [
        (tls13, rustls::ProtocolVersion::TLSv1_3),
        (tls12, rustls::ProtocolVersion::TLSv1_2),
    ] {
        for round in 0..2 {
            let tls = tls_connect_with(gw.addr, "r.test", config.clone())
                .await
                .unwrap();
            let conn = tls.get_ref().1;
            assert_eq!(conn.protocol_version(), Some(version));
            let kind = conn.handshake_kind();
            let mut h1 = H1::over(tls).await;
            // A full exchange, so the TLS 1.3 ticket sent after the handshake is read.
            assert_eq!(h1.get("r.test", "/").await.0.status, 200);
            let want = if round == 0 {
                rustls::HandshakeKind::Full
            } else {
                rustls::HandshakeKind::Resumed
            };
            assert_eq!(kind, Some(want), "{version:?} round {round}");
        }
    }
}

#[tokio::test]
async fn replaced_certificate_files_reach_new_handshakes_and_open_connections_keep_working() {
    let dir = TempDir::new();
    let ca = TestCa::new("test ca");
    let (cert, key) = write_pair(&dir, "site", &ca.issue(&["site.test", "old.site.test"]));
    let up = upstream::echo().await;
    let mut c = config(&[up.addr]);
    c.listeners[0].tls = Some(listener_tls(vec![pair(&cert, &key)]));
    let gw = support::start(c).await;

    let old = tls_connect(gw.addr, "site.test", &ca.cert_pem)
        .await
        .unwrap();
    assert!(served_names(&old).contains(&"old.site.test".to_string()));
    let mut old = H1::over(old).await;
    assert_eq!(old.get("site.test", "/").await.0.status, 200);

    write_pair(&dir, "site", &ca.issue(&["site.test", "new.site.test"]));
    // The store is polled every 50ms: wait until a new handshake sees the new certificate.
    let mut seen_new = false;
    for _ in 0..200 {
        let tls = tls_connect(gw.addr, "site.test", &ca.cert_pem)
            .await
            .unwrap();
        if served_names(&tls).contains(&"new.site.test".to_string()) {
            seen_new = true;
            let mut h1 = H1::over(tls).await;
            assert_eq!(h1.get("site.test", "/").await.0.status, 200);
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        seen_new,
        "new handshakes never got the replaced certificate"
    );
    // The connection made before the swap still serves requests.
    let (parts, _) = old.get("site.test", "/still").await;
    assert_eq!(parts.status, 200);
}

#[test]
fn a_half_replaced_pair_keeps_the_previous_certificate_until_both_files_agree() {
    use gatewise::server::tls::CertStore;
    let dir = TempDir::new();
    let ca = TestCa::new("test ca");
    let (cert, key) = write_pair(&dir, "site", &ca.issue(&["old.test"]));
    let store = CertStore::load(&[pair(&cert, &key)]).unwrap();
    assert!(!store.reload_if_changed().unwrap(), "nothing changed");
    // The new certificate lands first, its key a moment later (two separate writes).
    let new = ca.issue(&["new.test"]);
    dir.write("site.pem", &new.cert);
    let err = store.reload_if_changed().unwrap_err().to_string();
    assert!(err.contains("does not match the certificate"), "{err}");
    assert_eq!(
        store.infos()[0].names,
        ["old.test"],
        "old pair still served"
    );
    dir.write("site.key", &new.key);
    assert!(store.reload_if_changed().unwrap());
    assert_eq!(store.infos()[0].names, ["new.test"]);
}

#[tokio::test]
async fn stalls_garbage_and_plain_http_on_the_tls_port_are_closed_not_hung() {
    let dir = TempDir::new();
    let ca = TestCa::new("ca");
    let (cert, key) = write_pair(&dir, "s", &ca.issue(&["s.test"]));
    let up = upstream::echo().await;
    let mut c = config(&[up.addr]);
    c.listeners[0].tls = Some(listener_tls(vec![pair(&cert, &key)]));
    let gw = support::start(c).await;
    let read_all = |mut s: TcpStream| async move {
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
            .await
            .expect("the gateway closed the connection")
            .ok();
        out
    };
    // Silent client: closed after the 300ms handshake timeout.
    let silent = TcpStream::connect(gw.addr).await.unwrap();
    assert!(read_all(silent).await.is_empty());
    // A TLS record header, then nothing: the same.
    let mut stalled = TcpStream::connect(gw.addr).await.unwrap();
    stalled
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00])
        .await
        .unwrap();
    assert!(read_all(stalled).await.is_empty());
    // Garbage: closed.
    let mut garbage = TcpStream::connect(gw.addr).await.unwrap();
    garbage.write_all(&[0u8; 64]).await.unwrap();
    assert!(read_all(garbage).await.is_empty());
    // Plain HTTP: a plain-text 400 that says why.
    let mut plain = TcpStream::connect(gw.addr).await.unwrap();
    plain
        .write_all(b"GET / HTTP/1.1\r\nhost: s.test\r\n\r\n")
        .await
        .unwrap();
    let answer = String::from_utf8(read_all(plain).await).unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{answer}"
    );
    assert!(answer.contains("this port speaks HTTPS"), "{answer}");
    // And the port still serves real clients.
    let tls = tls_connect(gw.addr, "s.test", &ca.cert_pem).await.unwrap();
    assert_eq!(H1::over(tls).await.get("s.test", "/").await.0.status, 200);
}

#[tokio::test]
async fn curl_with_the_test_ca_gets_each_sni_name_its_certificate() {
    let dir = TempDir::new();
    let ca = TestCa::new("test ca");
    let ca_file = dir.write("ca.pem", &ca.cert_pem);
    let (a_cert, a_key) = write_pair(&dir, "a", &ca.issue(&["a.test"]));
    let (b_cert, b_key) = write_pair(&dir, "b", &ca.issue(&["b.test"]));
    let up = upstream::echo().await;
    let mut c = config(&[up.addr]);
    c.listeners[0].tls = Some(listener_tls(vec![
        pair(&a_cert, &a_key),
        pair(&b_cert, &b_key),
    ]));
    let gw = support::start(c).await;
    for name in ["a.test", "b.test"] {
        let port = gw.addr.port();
        let args = vec![
            "--silent".to_string(),
            "--show-error".into(),
            "--max-time".into(),
            "10".into(),
            "--cacert".into(),
            ca_file.display().to_string(),
            "--resolve".into(),
            format!("{name}:{port}:127.0.0.1"),
            "--write-out".into(),
            "%{http_code} %{ssl_verify_result}".into(),
            "--output".into(),
            "/dev/null".into(),
            format!("https://{name}:{port}/hello"),
        ];
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new("curl")
                .args(&args)
                .output()
                .expect("curl is installed (.ci/run installs it)")
        })
        .await
        .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "curl {name}: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // 200, and verification result 0 (ok): curl checked the name against the certificate.
        assert_eq!(stdout, "200 0", "{name}");
    }
}

#[tokio::test]
async fn redirect_https_answers_308_to_the_same_host_and_path() {
    let up = upstream::echo().await;
    let mut c = config(&[up.addr]);
    c.listeners[0].redirect_https = true;
    let gw = support::start(c).await;
    let req = http::Request::get(gw.url("/a/b?c=1"))
        .header("host", "example.com:8080")
        .body(http_body_util::Full::default())
        .unwrap();
    let (parts, _) = support::send(&support::client(), req).await;
    assert_eq!(parts.status, 308);
    assert_eq!(parts.headers["location"], "https://example.com/a/b?c=1");
    assert_eq!(up.stats.requests(), 0);
}

#[tokio::test]
async fn certificate_expiry_is_in_status_and_metrics() {
    let dir = TempDir::new();
    let ca = TestCa::new("ca");
    let (cert, key) = write_pair(&dir, "old", &ca.issue_expired(&["old.test"]));
    let up = upstream::echo().await;
    let mut c = config(&[up.addr]);
    c.listeners[0].tls = Some(listener_tls(vec![pair(&cert, &key)]));
    c.admin.listen = Some("127.0.0.1:0".parse().unwrap());
    let gw = support::start(c).await;
    let admin = gw.admin.unwrap();
    let client = support::client();
    let (_, body) = get(&client, &format!("http://{admin}/status")).await;
    let status: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let cert = &status["certificates"]["public"][0];
    assert_eq!(cert["names"][0], "old.test", "{status}");
    assert!(cert["seconds_to_expiry"].as_i64().unwrap() < 0, "{cert}");
    let (_, body) = get(&client, &format!("http://{admin}/metrics")).await;
    let text = String::from_utf8_lossy(&body);
    let line = text
        .lines()
        .find(|l| l.starts_with("gatewise_tls_certificate_expiry_seconds{"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(line.contains("listener=\"public\""), "{line}");
    assert!(line.contains("certificate=\"old.test\""), "{line}");
    let value: i64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(value < 0, "{line}");
}

#[test]
fn check_names_the_tls_file_and_line_at_fault_and_resolves_paths_from_the_config_dir() {
    let dir = TempDir::new();
    let ca = TestCa::new("ca");
    write_pair(&dir, "good", &ca.issue(&["good.test"]));
    dir.write("other.key", &ca.issue(&["other.test"]).key);
    dir.write("ca.pem", &ca.cert_pem);
    let run = |config: &std::path::Path| {
        // From another directory: relative paths are the config file's, not the cwd's.
        std::process::Command::new(env!("CARGO_BIN_EXE_gatewise"))
            .current_dir(std::env::temp_dir())
            .args(["check", "--offline"])
            .arg(config)
            .output()
            .unwrap()
    };
    let good = dir.write(
        "good.toml",
        r#"[[listener]]
name = "public"
listen = "127.0.0.1:8443"
tls = { cert = "good.pem", key = "good.key" }
[[route]]
upstream = "app"
[upstream.app]
targets = ["127.0.0.1:3001"]
protocol = "https"
ca_file = "ca.pem"
sni = "app.internal"
"#,
    );
    let out = run(&good);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let bad = dir.write(
        "bad.toml",
        r#"[[listener]]
name = "public"
listen = "127.0.0.1:8443"
tls = { certificates = [
  { cert = "missing.pem", key = "good.key" },
  { cert = "good.pem", key = "other.key" },
] }
[[route]]
upstream = "app"
[upstream.app]
targets = ["127.0.0.1:3001"]
ca_file = "ca.pem"
[upstream.two]
targets = ["127.0.0.1:3002"]
protocol = "spdy"
[[listener]]
name = "both"
listen = "127.0.0.1:9443"
tls = { cert = "good.pem", key = "good.key" }
redirect_https = true
"#,
    );
    let out = run(&bad);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let f = bad.display();
    let missing = dir.0.join("missing.pem");
    for want in [
        format!(
            "{f}:5:12: listener[0].tls.certificates[0].cert: cannot read {}",
            missing.display()
        ),
        format!("{f}:6:30: listener[0].tls.certificates[1].key: "),
        "does not match the certificate in".to_string(),
        format!("{f}:12:11: upstream.app.ca_file: only applies with protocol = \"https\""),
        format!("{f}:15:12: upstream.two.protocol: expected \"http1\", \"https\", \"h2c\""),
        format!("{f}:20:18: listener[1].redirect_https: is for a plain listener"),
    ] {
        assert!(stderr.contains(&want), "missing {want:?} in:\n{stderr}");
    }
}
