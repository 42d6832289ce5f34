//! `gatewise check` (live) and `gatewise doctor` as the real binary, against in-process upstreams
//! that each exhibit one condition; every test asserts the finding and the exit code.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http::Response;
use http_body_util::Full;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::upstream::{self, Mock};

/// Runs the binary with `args` (async, so the in-process upstreams keep serving).
async fn gatewise(args: &[&str]) -> (i32, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_gatewise"))
        .args(args)
        .output()
        .await
        .expect("run gatewise");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A config file with one upstream over `targets`; `extra_upstream`/`extra_route` are TOML lines.
fn config_file(name: &str, targets: &[String], extra_upstream: &str, extra_route: &str) -> PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("doctor");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.toml"));
    let targets: Vec<String> = targets.iter().map(|t| format!("{t:?}")).collect();
    std::fs::write(
        &path,
        format!(
            "[admin]\nlisten = \"off\"\n[[listener]]\nname = \"public\"\nlisten = \"127.0.0.1:0\"\n\
             [[route]]\nupstream = \"app\"\n{extra_route}\n\
             [upstream.app]\ntargets = [{}]\n{extra_upstream}\n",
            targets.join(", ")
        ),
    )
    .unwrap();
    path
}

/// Reads one request head; `false` on EOF.
async fn read_head(stream: &mut TcpStream) -> bool {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut chunk).await {
            Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return false,
        }
    }
    true
}

/// Answers every request after `delay`, keep-alive.
async fn slow(delay: Duration) -> Mock {
    upstream::raw(move |mut s, _| async move {
        while read_head(&mut s).await {
            tokio::time::sleep(delay).await;
            let resp = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
            if s.write_all(resp.as_bytes()).await.is_err() {
                return;
            }
        }
    })
    .await
}

/// A TLS-only port: whatever arrives that is not a usable handshake gets a fatal TLS alert
/// record (as TLS servers answer a plain HTTP request), then the connection is closed.
async fn tls_only() -> Mock {
    upstream::raw(|mut s, _| async move {
        let mut buf = [0u8; 1024];
        if let Ok(n) = s.read(&mut buf).await {
            if n > 0 {
                // alert, TLS 1.2, length 2: fatal (2), unexpected_message (10)
                let _ = s
                    .write_all(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x0a])
                    .await;
            }
        }
    })
    .await
}

/// A free port right next to a listening one, so the listening one is its nearest neighbour.
async fn port_next_to(listening: SocketAddr) -> SocketAddr {
    for candidate in [
        listening.port() + 1,
        listening.port() - 1,
        listening.port() + 2,
    ] {
        let addr = SocketAddr::from(([127, 0, 0, 1], candidate));
        if let Ok(socket) = tokio::net::TcpSocket::new_v4() {
            // Bound, never listening: refused, and no other test can be handed it meanwhile.
            if socket.bind(addr).is_ok() {
                std::mem::forget(socket);
                return addr;
            }
        }
    }
    panic!("no free port next to {listening}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_names_the_wrong_port_and_the_one_listening_next_to_it() {
    let up = upstream::ok("hi").await;
    let wrong = port_next_to(up.addr).await;
    let file = config_file("wrong-port", &[wrong.to_string()], "", "");
    let (code, out, _) = gatewise(&["check", file.to_str().unwrap()]).await;
    assert_eq!(code, 1, "{out}");
    let line = out
        .lines()
        .find(|l| l.contains(&format!("nothing listens on {wrong};")))
        .unwrap_or_else(|| panic!("{out}"));
    // The two nearest listening ports are named; ours is one of them (another test's socket
    // may be as near on a busy machine).
    assert!(line.contains(&up.addr.to_string()), "{line}");
    assert!(
        line.contains("is listening") && line.contains("wrong port?"),
        "{line}"
    );

    // The same file with the right port: clean, exit 0. Offline: never probes, exit 0.
    let good = config_file("right-port", &[up.addr.to_string()], "", "");
    let (code, out, _) = gatewise(&["check", good.to_str().unwrap()]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("No findings."), "{out}");
    assert!(out.contains("gatewise check: "), "{out}");
    let (code, out, _) = gatewise(&["check", "--offline", file.to_str().unwrap()]).await;
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("nothing listens"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_exit_2_on_a_config_error_and_probes_nothing() {
    let file = config_file("bad", &["localhost".to_string()], "", "");
    let (code, out, err) = gatewise(&["check", file.to_str().unwrap()]).await;
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("upstream.app.targets"), "{err}");
    assert!(
        !out.contains("gatewise check:"),
        "probed an invalid file: {out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_says_a_tls_port_is_configured_as_plain_http() {
    let tls = tls_only().await;
    let file = config_file("tls", &[tls.addr.to_string()], "", "");
    let (code, out, _) = gatewise(&["check", file.to_str().unwrap()]).await;
    assert_eq!(code, 1, "{out}");
    let want = format!(
        "{} speaks TLS but upstream app is configured as plain HTTP",
        tls.addr
    );
    assert!(out.contains(&want), "{out}");
    let https = config_file(
        "tls-https",
        &[tls.addr.to_string()],
        "protocol = \"https\"\ninsecure_skip_verify = true",
        "",
    );
    // Under `protocol = "https"` the port gets a real handshake (the gateway's connector), and
    // this one ends every handshake with an alert: named as the gateway would answer it.
    let (code, out, _) = gatewise(&["check", https.to_str().unwrap()]).await;
    assert_eq!(code, 1, "{out}");
    let want = format!("the TLS handshake with {} (server name 127.0.0.1) failed: target ended the handshake (alert UnexpectedMessage)", tls.addr);
    assert!(out.contains(&want), "{out}");
    assert!(out.contains("502 tls_protocol_error"), "{out}");
    assert!(!out.contains("configured as plain HTTP"), "{out}");
    // The reverse: TLS expected, plain HTTP answers.
    let plain = upstream::ok("hi").await;
    let url = format!("https://{}/", plain.addr);
    let (code, out, _) = gatewise(&["doctor", &url]).await;
    assert_eq!(code, 1, "{out}");
    let want = format!("{} speaks plain HTTP but default expects TLS", plain.addr);
    assert!(out.contains(&want), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_a_name_that_does_not_resolve() {
    let file = config_file(
        "dns",
        &["gatewise-doctor-test.invalid:80".to_string()],
        "",
        "",
    );
    let (code, out, _) = gatewise(&["check", file.to_str().unwrap()]).await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("gatewise-doctor-test.invalid:80 (upstream app) does not resolve"),
        "{out}"
    );
    assert!(out.contains("DNS       finding"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_a_health_path_answering_503() {
    let up = upstream::serve(|req| {
        let status = if req.uri().path() == "/health" {
            503
        } else {
            200
        };
        Response::builder()
            .status(status)
            .body(Full::new(Bytes::new()))
            .unwrap()
    })
    .await;
    let health = "[upstream.app.health]\npath = \"/health\"\n";
    let file = config_file("health", &[up.addr.to_string()], health, "");
    let (code, out, _) = gatewise(&["check", file.to_str().unwrap()]).await;
    assert_eq!(code, 1, "{out}");
    let want = format!(
        "the health check GET /health on {} answers 503, outside the expected 200-399",
        up.addr
    );
    assert!(out.contains(&want), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_measures_an_idle_close_of_1s_and_flags_the_4s_pool() {
    let up = upstream::idle_closer(Duration::from_secs(1), None).await;
    let url = format!("http://{}/", up.addr);
    let (code, out, _) = gatewise(&["doctor", &url, "--requests", "3"]).await;
    assert_eq!(code, 1, "{out}");
    let line = out
        .lines()
        .find(|l| l.contains("closes idle connections after ≈"))
        .unwrap_or_else(|| panic!("{out}"));
    let secs: f64 = line
        .split('≈')
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap();
    // ≈1 s: at least the upstream's idle time, well below the 4 s pool limit.
    assert!((1.0..3.0).contains(&secs), "{secs} in {line}");
    assert!(line.contains("idle_timeout 4.0 s"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_flags_a_32k_response_head_against_a_16k_limit() {
    let big = "x".repeat(32 * 1024);
    // Small on the health path, 32 KiB on the real one: measured where the traffic goes.
    let up = upstream::serve(move |req| {
        let value = if req.uri().path() == "/health" {
            "small"
        } else {
            big.as_str()
        };
        Response::builder()
            .header("x-big", value)
            .body(Full::new(Bytes::from_static(b"ok")))
            .unwrap()
    })
    .await;
    let limit =
        "max_response_header_bytes = \"16KiB\"\n[upstream.app.health]\npath = \"/health\"\n";
    let file = config_file("bighead", &[up.addr.to_string()], limit, "");
    let (code, out, _) = gatewise(&[
        "doctor",
        "--config",
        file.to_str().unwrap(),
        "--requests",
        "2",
        "--idle-wait",
        "200ms",
    ])
    .await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("above max_response_header_bytes 16.0 KiB of upstream app"),
        "{out}"
    );
    assert!(out.contains("http_response_header_section_size"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_flags_a_slow_upstream_against_a_short_per_try_timeout() {
    let up = slow(Duration::from_millis(400)).await;
    let route = "per_try_timeout = \"200ms\"\n";
    let file = config_file("slow", &[up.addr.to_string()], "", route);
    let (code, out, _) = gatewise(&[
        "doctor",
        "--config",
        file.to_str().unwrap(),
        "--requests",
        "3",
        "--idle-wait",
        "200ms",
    ])
    .await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("3 sequential GET /: p50"), "{out}");
    assert!(out.contains("at or above per_try_timeout 200 ms"), "{out}");
}

/// `--json` against the schema documented in docs/doctor.md: version, every key, the types, the
/// layers in order with a verdict from the documented set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_json_follows_the_documented_schema() {
    let up = upstream::ok("hi").await;
    let wrong = port_next_to(up.addr).await;
    let file = config_file("json", &[up.addr.to_string(), wrong.to_string()], "", "");
    let (code, out, _) = gatewise(&[
        "doctor",
        "--json",
        "--config",
        file.to_str().unwrap(),
        "--requests",
        "2",
        "--idle-wait",
        "200ms",
    ])
    .await;
    assert_eq!(code, 1, "{out}");
    let r: Value = serde_json::from_str(&out).expect("JSON");
    let doc =
        std::fs::read_to_string(format!("{}/docs/doctor.md", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let schema = &doc[doc.find("## JSON schema").expect("schema section")..];
    assert!(schema.contains(&format!("`{}`", r["schema"].as_str().unwrap())));
    let keys: Vec<&String> = r.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["facts", "findings", "layers", "schema", "subject"]);
    let layers: Vec<&str> = r["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["layer"].as_str().unwrap())
        .collect();
    assert_eq!(
        layers,
        ["dns", "tcp", "tls", "http", "health", "timeouts", "config"]
    );
    for l in r["layers"].as_array().unwrap() {
        let v = l["verdict"].as_str().unwrap();
        assert!(["ok", "finding", "not checked"].contains(&v), "{v}");
        assert!(schema.contains(&format!("`{}`", l["layer"].as_str().unwrap())));
    }
    for f in r["findings"].as_array().unwrap() {
        for key in ["layer", "target", "message", "fix"] {
            assert!(f[key].is_string(), "{key} in {f}");
            assert!(schema.contains(&format!("`{key}`")), "{key}");
        }
    }
    for f in r["facts"].as_array().unwrap() {
        for key in ["layer", "target", "text"] {
            assert!(f[key].is_string(), "{key} in {f}");
            assert!(schema.contains(&format!("`{key}`")), "{key}");
        }
    }
    assert_eq!(r["layers"][1]["verdict"], "finding");
    assert!(r["findings"][0]["message"]
        .as_str()
        .unwrap()
        .contains(&format!("nothing listens on {wrong}")));
}

/// A port that answers a request with something that is not HTTP (an SSH banner): named, with
/// the bytes, not mistaken for TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_says_a_port_answers_something_that_is_not_http() {
    let ssh = upstream::raw(|mut s, _| async move {
        let _ = s.write_all(b"SSH-2.0-OpenSSH_9.2p1\r\n").await;
        let mut buf = [0u8; 1024];
        let _ = s.read(&mut buf).await;
    })
    .await;
    let file = config_file("ssh", &[ssh.addr.to_string()], "", "");
    let (code, out, _) = gatewise(&["check", file.to_str().unwrap()]).await;
    assert_eq!(code, 1, "{out}");
    let want = format!(
        "{} answered an HTTP request with bytes that are not HTTP: \"SSH-2.0-OpenSSH_",
        ssh.addr
    );
    assert!(out.contains(&want), "{out}");
    assert!(!out.contains("speaks TLS"), "{out}");
}

/// A TLS port that stays silent on a plain request (it waits for the rest of a "record") and
/// answers a ClientHello with a handshake record: still found to speak TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_finds_tls_behind_a_port_silent_to_plain_http() {
    let tls = upstream::raw(|mut s, _| async move {
        let mut buf = [0u8; 1024];
        if let Ok(n) = s.read(&mut buf).await {
            if n > 0 && buf[0] == 0x16 {
                // handshake, TLS 1.2: the first bytes of a ServerHello record
                let _ = s.write_all(&[0x16, 0x03, 0x03, 0x00, 0x31, 0x02]).await;
            } else {
                let _ = s.read(&mut buf).await; // waits for bytes that never come
            }
        }
    })
    .await;
    let file = config_file("silent-tls", &[tls.addr.to_string()], "", "");
    let (code, out, _) = gatewise(&["check", file.to_str().unwrap()]).await;
    assert_eq!(code, 1, "{out}");
    let want = format!(
        "{} speaks TLS but upstream app is configured as plain HTTP",
        tls.addr
    );
    assert!(out.contains(&want), "{out}");
}

/// A TLS upstream whose certificate, for `upstream.test`, is signed by a test CA written to a
/// file; the config trusts that CA (`ca_file`) and sends that name (`sni`), as a gateway would.
async fn tls_target(
    name: &str,
    health: &str,
) -> (
    crate::support::tls::TlsUpstream,
    crate::support::tls::TempDir,
    PathBuf,
) {
    use crate::support::tls::{tls_upstream, TempDir, TestCa};
    let dir = TempDir::new();
    let ca = TestCa::new("doctor test ca");
    let up = tls_upstream(&ca.issue(&["upstream.test"]), None).await;
    let ca_file = dir.write("ca.pem", &ca.cert_pem);
    let tls = format!(
        "protocol = \"https\"\nca_file = {:?}\nsni = \"upstream.test\"\n[upstream.app.health]\npath = \"{health}\"\n",
        ca_file.display().to_string()
    );
    let file = config_file(name, &[up.addr.to_string()], &tls, "");
    (up, dir, file)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_speaks_http2_to_a_target_that_chooses_h2_by_alpn() {
    // Was: "h2 not checked" for every TLS target; an `h2` upstream now gets its exchange and
    // health verdict over HTTP/2, as the pool would speak to it.
    use crate::support::tls::{tls_upstream_alpn, TempDir, TestCa};
    let dir = TempDir::new();
    let ca = TestCa::new("doctor h2 ca");
    let up = tls_upstream_alpn(&ca.issue(&["upstream.test"]), None, &[b"h2"]).await;
    let ca_file = dir.write("ca.pem", &ca.cert_pem);
    let tls = format!(
        "protocol = \"h2\"\nca_file = {:?}\nsni = \"upstream.test\"\n[upstream.app.health]\npath = \"/status/503\"\n",
        ca_file.display().to_string()
    );
    let file = config_file("tls-h2", &[up.addr.to_string()], &tls, "");
    let (code, out, _) = gatewise(&["check", file.to_str().unwrap()]).await;
    assert_eq!(code, 1, "{out}");
    let addr = up.addr;
    for want in [
        format!("{addr} speaks TLS, as configured: TLSv1.3 handshake with server name upstream.test, ALPN h2"),
        "GET /status/503 over h2: 503".to_string(),
        format!("the health check GET /status/503 on {addr} answers 503, outside the expected 200-399"),
    ] {
        assert!(out.contains(&want), "missing {want:?} in\n{out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_exchanges_http_over_tls_through_the_gateways_connector() {
    // Was: an https upstream got no HTTP exchange and no health verdict at all ("the exchange
    // over TLS is not probed yet"); the dial now goes through the pool's connector.
    let (up, _dir, file) = tls_target("tls-health", "/status/503").await;
    let (code, out, _) = gatewise(&["doctor", "--config", file.to_str().unwrap()]).await;
    assert_eq!(code, 1, "{out}");
    let addr = up.addr;
    for want in [
        format!("{addr} speaks TLS, as configured: TLSv1.3 handshake with server name upstream.test, ALPN http/1.1"),
        format!("the health check GET /status/503 on {addr} answers 503, outside the expected 200-399"),
        // The doctor's measurements ran over TLS too.
        "sequential GET /".to_string(),
    ] {
        assert!(out.contains(&want), "missing {want:?} in\n{out}");
    }
    assert!(
        up.handshakes.load(std::sync::atomic::Ordering::SeqCst) >= 2,
        "{out}"
    );

    // A healthy one: the health verdict over TLS is a fact, and `check` exits clean.
    let (up, _dir, file) = tls_target("tls-ok", "/ready").await;
    let (code, out, _) = gatewise(&["check", file.to_str().unwrap()]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("GET /ready: HTTP/1.1 200"), "{out}");
    assert!(
        out.contains(&format!("{} speaks TLS, as configured", up.addr)),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_names_the_certificate_problem_with_the_upstreams_tls_settings() {
    use crate::support::tls::{tls_upstream, TestCa};
    let ca = TestCa::new("untrusted ca");
    let up = tls_upstream(&ca.issue(&["upstream.test"]), None).await;
    // The system's roots do not know the test CA: what the gateway would answer 502 for.
    let tls = "protocol = \"https\"\nsni = \"upstream.test\"\n";
    let file = config_file("tls-untrusted", &[up.addr.to_string()], tls, "");
    let (code, out, _) = gatewise(&["check", file.to_str().unwrap()]).await;
    assert_eq!(code, 1, "{out}");
    let want = format!(
        "the TLS handshake with {} (server name upstream.test) failed:",
        up.addr
    );
    assert!(out.contains(&want), "{out}");
    assert!(out.contains("unknown issuer"), "{out}");
    assert!(out.contains("502 tls_certificate_error"), "{out}");
}
