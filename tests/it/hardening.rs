//! Hardening (issue #11), raw bytes in and out: one authority per request, internal addresses
//! kept from clients, failures that are no longer quiet.

use crate::support::upstream;
use crate::support::wire;
use crate::support::{self, host, route_of};

#[tokio::test]
async fn absolute_form_target_authority_is_the_one_host_everywhere() {
    // Before: routed and sent up as other.test, but X-Forwarded-Host, Forwarded host= and the
    // access log said h.test.
    let up = upstream::echo().await;
    let mut cfg = support::config(&[up.addr]);
    route_of(&mut cfg).host = host("other.test");
    let gw = support::start(cfg).await;
    let msg = wire::response(
        gw.addr,
        b"GET http://other.test/x HTTP/1.1\r\nHost: h.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(msg.status(), 200, "{msg:?}");
    assert_eq!(msg.header("x-echo-host"), Some("other.test"), "{msg:?}");
    assert_eq!(msg.header("x-echo-x-forwarded-host"), Some("other.test"));
    let forwarded = msg.header("x-echo-forwarded").unwrap();
    assert!(forwarded.contains("host=\"other.test\""), "{forwarded}");
    let line = gw.next_log();
    assert_eq!(line["host"], "other.test", "{line}");
    assert_eq!(line["path"], "/x", "{line}");

    // The Host header alone does not route an absolute-form request.
    let msg = wire::response(
        gw.addr,
        b"GET http://h.test/x HTTP/1.1\r\nHost: other.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(msg.status(), 404, "{msg:?}");
    assert_eq!(gw.next_log()["host"], "h.test");
}

/// This host's address on a non-loopback interface, for a client the gateway must treat as
/// remote (no packet is sent: connecting a UDP socket only picks the route's source address).
fn non_loopback_ip() -> Option<std::net::IpAddr> {
    let probe = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    probe.connect("192.0.2.1:9").ok()?;
    let ip = probe.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

#[tokio::test]
async fn generated_502_keeps_upstream_address_from_remote_clients() {
    // Before: every client read the upstream's address in Proxy-Status details and the body.
    let Some(remote_ip) = non_loopback_ip() else {
        panic!("this test needs a non-loopback interface to connect from");
    };
    let refused = upstream::closed_port().await;
    let hidden = refused.to_string();
    for expose in [false, true] {
        let mut cfg = support::config(&[refused]);
        cfg.listeners[0].listen = "0.0.0.0:0".parse().unwrap();
        cfg.listeners[0].expose_details = expose;
        // No outage hold: the refusal itself is the answer here (held: tests/it/hold.rs).
        support::upstream_of(&mut cfg).outage_hold = std::time::Duration::ZERO;
        let gw = support::start(cfg).await;
        let request =
            b"GET /x HTTP/1.1\r\nHost: a\r\nX-Request-Id: rid-7\r\nConnection: close\r\n\r\n";

        let remote = wire::response((remote_ip, gw.addr.port()).into(), request).await;
        let line = gw.next_log();
        let client = line["client"].as_str().unwrap();
        assert!(client.contains(&remote_ip.to_string()), "{line}");
        assert_eq!(
            line["attempts"][0]["target"], hidden,
            "the log always has it: {line}"
        );
        let ps = remote.header("proxy-status").unwrap().to_string();
        assert!(ps.starts_with("gatewise; error=connection_refused"), "{ps}");
        let body = String::from_utf8_lossy(&remote.body).to_string();
        assert!(
            body.contains("connection_refused") && body.contains("rid-7"),
            "{body}"
        );
        assert_eq!(remote.header("x-request-id"), Some("rid-7"));
        assert_eq!(
            ps.contains(&hidden),
            expose,
            "expose_details={expose}: {ps}"
        );
        assert_eq!(
            body.contains(&hidden),
            expose,
            "expose_details={expose}: {body}"
        );

        // A client on loopback is an operator on this host: it gets the details.
        let local = wire::response(
            (std::net::Ipv4Addr::LOCALHOST, gw.addr.port()).into(),
            request,
        )
        .await;
        let _ = gw.next_log();
        assert!(
            local.header("proxy-status").unwrap().contains(&hidden),
            "{local:?}"
        );
    }
}

#[tokio::test]
async fn upstream_5xx_passed_through_names_no_next_hop_to_remote_clients() {
    let Some(remote_ip) = non_loopback_ip() else {
        panic!("this test needs a non-loopback interface to connect from");
    };
    let up =
        wire::canned(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy").await;
    let mut cfg = support::config(&[up.addr]);
    cfg.listeners[0].listen = "0.0.0.0:0".parse().unwrap();
    let gw = support::start(cfg).await;
    let request = b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
    let remote = wire::response((remote_ip, gw.addr.port()).into(), request).await;
    assert_eq!(remote.status(), 503);
    assert_eq!(
        remote.header("proxy-status"),
        Some("gatewise; received-status=503"),
        "{remote:?}"
    );
    let local = wire::response(
        (std::net::Ipv4Addr::LOCALHOST, gw.addr.port()).into(),
        request,
    )
    .await;
    assert!(
        local
            .header("proxy-status")
            .unwrap()
            .contains(&format!("next-hop=\"{}\"", up.addr)),
        "{local:?}"
    );
}

#[tokio::test]
async fn trace_is_refused_with_405_unless_the_listener_allows_it() {
    // Before: TRACE went upstream with the client's cookies, and the upstream echoed them.
    let up = upstream::echo().await;
    let request =
        b"TRACE /x HTTP/1.1\r\nHost: a\r\nCookie: session=s3cret\r\nConnection: close\r\n\r\n";
    let gw = support::start(support::config(&[up.addr])).await;
    let msg = wire::response(gw.addr, request).await;
    assert_eq!(msg.status(), 405, "{msg:?}");
    let ps = msg.header("proxy-status").unwrap();
    assert!(ps.starts_with("gatewise; error=http_request_error"), "{ps}");
    assert!(
        String::from_utf8_lossy(&msg.body).contains("TRACE"),
        "{msg:?}"
    );
    let line = gw.next_log();
    assert_eq!(
        (line["status"].as_u64(), line["method"].as_str()),
        (Some(405), Some("TRACE"))
    );
    assert_eq!(line["cause"], "http_request_error", "{line}");
    assert_eq!(up.stats.requests(), 0);

    let mut cfg = support::config(&[up.addr]);
    cfg.listeners[0].allow_trace = true;
    let gw = support::start(cfg).await;
    let msg = wire::response(gw.addr, request).await;
    assert_eq!(msg.status(), 200, "{msg:?}");
    assert_eq!(msg.header("x-echo-method"), Some("trace"));
    assert_eq!(up.stats.requests(), 1);
}

/// Reads responses from a kept-alive socket until `n` whole ones arrived.
async fn read_responses(s: &mut tokio::net::TcpStream, n: usize) -> Vec<wire::Msg> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut out = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    while out.len() < n {
        while let Some(msg) = wire::decode(&buf, false, false, false) {
            buf = msg.rest.clone();
            out.push(msg);
            if out.len() == n {
                return out;
            }
        }
        let read = s.read(&mut chunk);
        let got = tokio::time::timeout(std::time::Duration::from_secs(10), read).await;
        let n = got.expect("a response in time").unwrap();
        assert!(n > 0, "closed after {} responses", out.len());
        buf.extend_from_slice(&chunk[..n]);
    }
    out
}

#[tokio::test]
async fn keep_alive_connection_is_served_again_after_going_idle() {
    // Idle client connections now hold only their socket between requests (hyper is put down
    // and rebuilt): every way a next request can arrive must still be served.
    use tokio::io::AsyncWriteExt;
    let up = upstream::echo().await;
    let gw = support::start(support::config(&[up.addr])).await;
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    for i in 0..3 {
        let req = format!("GET /seq{i} HTTP/1.1\r\nHost: a\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let msg = read_responses(&mut s, 1).await.remove(0);
        assert_eq!(msg.status(), 200, "{msg:?}");
    }
    s.write_all(b"GET /p1 HTTP/1.1\r\nHost: a\r\n\r\nGET /p2 HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let pair = read_responses(&mut s, 2).await;
    assert!(pair.iter().all(|m| m.status() == 200), "{pair:?}");
    s.write_all(
        b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    )
    .await
    .unwrap();
    let cont = read_responses(&mut s, 1).await.remove(0);
    assert_eq!(cont.status(), 100, "{cont:?}");
    s.write_all(b"hello").await.unwrap();
    let msg = read_responses(&mut s, 1).await.remove(0);
    assert_eq!(
        (msg.status(), msg.body.as_slice()),
        (200, &b"hello"[..]),
        "{msg:?}"
    );
    for i in 0..6 {
        let line = gw.next_log();
        assert_eq!(line["status"], 200, "line {i}: {line}");
    }
}
