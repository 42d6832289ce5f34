//! The core proxy: bodies intact, headers rewritten, pooling, errors named with their cause.

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::upstream::{self, Mock};
use crate::support::{self, client, get, send};

#[tokio::test]
async fn get_post_head_bodies_arrive_intact() {
    let up = upstream::echo().await;
    let gw = support::start(support::config(&[up.addr])).await;
    let c = client();

    let (parts, body) = get(&c, &gw.url("/hello")).await;
    assert_eq!(parts.status, 200);
    assert_eq!(parts.headers["x-echo-method"], "GET");
    assert!(body.is_empty());

    // 1 MiB of varied bytes, larger than the replay buffer: streamed, not buffered.
    let payload: Vec<u8> = (0..1024 * 1024u32).map(|i| (i * 31 % 251) as u8).collect();
    let req = Request::post(gw.url("/upload"))
        .body(Full::new(Bytes::from(payload.clone())))
        .unwrap();
    let (parts, body) = send(&c, req).await;
    assert_eq!(parts.status, 200);
    assert_eq!(parts.headers["x-echo-method"], "POST");
    assert_eq!(body.as_ref(), payload.as_slice());

    let req = Request::head(gw.url("/")).body(Full::default()).unwrap();
    let (parts, body) = send(&c, req).await;
    assert_eq!(parts.status, 200);
    assert_eq!(parts.headers["x-echo-method"], "HEAD");
    assert!(body.is_empty());
}

#[tokio::test]
async fn forwarding_headers_are_set_and_hop_by_hop_stripped() {
    let up = upstream::serve(|req| {
        let mut resp = http::Response::builder()
            .header("connection", "x-drop-me")
            .header("x-drop-me", "1")
            .header("keep-alive", "timeout=30");
        for (name, value) in req.headers() {
            resp = resp.header(format!("x-echo-{name}"), value);
        }
        resp.body(Full::default()).unwrap()
    })
    .await;
    let gw = support::start(support::config(&[up.addr])).await;
    let req = Request::get(gw.url("/"))
        .header("connection", "keep-alive, x-secret")
        .header("x-secret", "s")
        .header("proxy-authorization", "Basic eA==")
        .header("te", "trailers, deflate")
        .header("x-request-id", "req-42")
        .header("host", "app.example")
        .body(Full::default())
        .unwrap();
    let (parts, _) = send(&client(), req).await;
    let h = &parts.headers;
    assert!(!h.contains_key("x-echo-x-secret"));
    assert!(!h.contains_key("x-echo-proxy-authorization"));
    // The client's TE is hop-by-hop; the upstream gets gatewise's own: it relays trailers.
    assert_eq!(h["x-echo-te"], "trailers");
    assert_eq!(h["x-echo-x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-echo-x-forwarded-proto"], "http");
    assert_eq!(h["x-echo-x-forwarded-host"], "app.example");
    assert_eq!(
        h["x-echo-forwarded"],
        "for=127.0.0.1;host=\"app.example\";proto=http"
    );
    assert_eq!(h["x-echo-host"], "app.example");
    assert_eq!(h["x-echo-via"], "1.1 gatewise");
    assert_eq!(h["x-echo-x-request-id"], "req-42");
    // And on the way back.
    assert!(!h.contains_key("x-drop-me"));
    assert!(!h.contains_key("keep-alive"));
    assert_eq!(h["via"], "1.1 gatewise");
}

#[tokio::test]
async fn a_request_id_is_generated_when_absent() {
    let up = upstream::echo().await;
    let gw = support::start(support::config(&[up.addr])).await;
    let (parts, _) = get(&client(), &gw.url("/")).await;
    let id = parts.headers["x-echo-x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(id.len(), 32);
    assert_eq!(gw.next_log()["request_id"], id.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_upstream_is_502_connection_refused_in_header_and_log() {
    let addr = upstream::closed_port().await;
    let mut cfg = support::config(&[addr]);
    // With the outage hold on, a wholly refusing upstream holds the request (tests/it/hold.rs).
    support::upstream_of(&mut cfg).outage_hold = Duration::ZERO;
    let gw = support::start(cfg).await;
    let (parts, body) = get(&client(), &gw.url("/x")).await;
    let ps = support::assert_generated(&parts, 502, "connection_refused");
    assert!(ps.contains(&addr.to_string()), "{ps}");
    let body = String::from_utf8_lossy(&body);
    assert!(
        body.contains("gatewise") && body.contains("connection_refused"),
        "{body}"
    );
    let line = gw.next_log();
    assert_eq!(line["status"], 502);
    assert_eq!(line["cause"], "connection_refused");
    assert_eq!(line["attempts"][0]["request_sent"], false);
    assert!(body.contains(line["request_id"].as_str().unwrap()));
}

#[tokio::test]
async fn silent_upstream_is_504_http_response_timeout() {
    let up = upstream::hang().await;
    let mut cfg = support::config(&[up.addr]);
    support::route_of(&mut cfg).per_try_timeout = Duration::from_millis(300);
    support::route_of(&mut cfg).retries = 0;
    let gw = support::start(cfg).await;
    let (parts, _) = get(&client(), &gw.url("/slow")).await;
    support::assert_generated(&parts, 504, "http_response_timeout");
    assert_eq!(gw.next_log()["cause"], "http_response_timeout");
}

#[tokio::test]
async fn pooled_connections_are_reused() {
    let up = upstream::ok("hi").await;
    let gw = support::start(support::config(&[up.addr])).await;
    let c = client();
    for _ in 0..20 {
        let (parts, body) = get(&c, &gw.url("/")).await;
        assert_eq!(parts.status, 200);
        assert_eq!(body, "hi");
    }
    assert_eq!(up.stats.requests(), 20);
    assert_eq!(
        up.stats.accepts(),
        1,
        "sequential requests share one upstream connection"
    );
}

#[tokio::test]
async fn idle_connection_closed_by_upstream_is_not_handed_out_again() {
    let up: Mock = upstream::idle_closer(Duration::from_millis(100), None).await;
    let gw = support::start(support::config(&[up.addr])).await;
    let c = client();
    assert_eq!(get(&c, &gw.url("/")).await.0.status, 200);
    let _ = gw.next_log();
    // The upstream closes the idle pooled connection; the next request must not use it.
    up.stats
        .wait_for(|s| s.closed.load(std::sync::atomic::Ordering::SeqCst) == 1)
        .await;
    assert_eq!(get(&c, &gw.url("/")).await.0.status, 200);
    let line = gw.next_log();
    assert_eq!(line["attempts"].as_array().unwrap().len(), 1, "{line}");
    assert_eq!(line["attempts"][0]["reused"], false, "{line}");
    assert_eq!(up.stats.accepts(), 2);
}

#[tokio::test]
async fn malformed_request_gets_400() {
    let up = upstream::ok("hi").await;
    let gw = support::start(support::config(&[up.addr])).await;
    for raw in [
        &b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: x\r\n\r\n"[..],
        b"\x16\x03\x01\x02\x00garbage\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    ] {
        let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(raw).await.unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("HTTP/1.1 400"), "{raw:?} → {text}");
    }
    assert_eq!(up.stats.requests(), 0);
}

#[tokio::test]
async fn http10_request_without_host_gets_each_targets_address_as_host() {
    // The first target refuses; a retried request must carry the second target's address.
    let refused = upstream::closed_port().await;
    let up = upstream::echo().await;
    let gw = support::start(support::config(&[refused, up.addr])).await;
    for _ in 0..4 {
        let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(b"GET /old HTTP/1.0\r\n\r\n").await.unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains(" 200 OK"), "{text}");
        assert!(
            text.contains(&format!("x-echo-host: {}", up.addr)),
            "{text}"
        );
    }
}

#[tokio::test]
async fn pool_without_idle_connections_still_proxies() {
    let up = upstream::ok("hi").await;
    let mut cfg = support::config(&[up.addr]);
    support::upstream_of(&mut cfg).max_idle_per_target = 0;
    let gw = support::start(cfg).await;
    let c = client();
    for _ in 0..3 {
        assert_eq!(get(&c, &gw.url("/")).await.0.status, 200);
    }
    assert_eq!(up.stats.accepts(), 3, "nothing is pooled");
}

#[tokio::test]
async fn request_body_that_never_arrives_is_bounded_by_the_route_deadline() {
    let up = upstream::echo().await;
    let mut cfg = support::config(&[up.addr]);
    support::route_of(&mut cfg).timeout = Duration::from_millis(500);
    let gw = support::start(cfg).await;
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nonly ten b")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(text.contains("error=http_request_error"), "{text}");
    assert_eq!(up.stats.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_hanging_up_while_waiting_is_logged_as_499() {
    let up = upstream::hang().await;
    let gw = support::start(support::config(&[up.addr])).await;
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /gone HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    up.stats.wait_for(|st| st.accepts() == 1).await;
    drop(s);
    let line = gw.next_log();
    assert_eq!(line["status"], 499, "{line}");
    assert_eq!(line["path"], "/gone");
    assert_eq!(line["incomplete"], true);
}

#[tokio::test]
async fn small_chunked_body_is_replayed_on_another_target() {
    // A chunked PUT (idempotent) meets a target that resets after reading it; its small body
    // arrived whole with the head, so it is replayable and the retry succeeds elsewhere.
    let bad = upstream::raw(|mut stream, _| async move {
        let mut buf = [0u8; 4096];
        let _ = stream.read(&mut buf).await;
        #[allow(deprecated)]
        let _ = stream.set_linger(Some(Duration::ZERO));
    })
    .await;
    let good = upstream::echo().await;
    let gw = support::start(support::config(&[bad.addr, good.addr])).await;
    for _ in 0..4 {
        let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(
            b"PUT /doc HTTP/1.1\r\nHost: a\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        )
        .await
        .unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(text.ends_with("hello"), "{text}");
    }
    assert!(
        bad.stats.accepts() > 0,
        "some PUTs met the resetting target first"
    );
}

#[tokio::test]
async fn oversized_request_head_gets_431() {
    let up = upstream::ok("hi").await;
    let gw = support::start(support::config(&[up.addr])).await;
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let big = "a".repeat(100 * 1024);
    let req = format!("GET / HTTP/1.1\r\nHost: a\r\nX-Big: {big}\r\n\r\n");
    let _ = s.write_all(req.as_bytes()).await;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 431"));
    assert_eq!(up.stats.requests(), 0);
    assert_eq!(gw.next_log()["cause"], "http_request_error");
}

#[tokio::test]
async fn no_route_is_404_destination_not_found() {
    let up = upstream::ok("hi").await;
    let mut cfg = support::config(&[up.addr]);
    support::route_of(&mut cfg).host = support::host("only.example");
    let gw = support::start(cfg).await;
    let (parts, _) = get(&client(), &gw.url("/")).await;
    support::assert_generated(&parts, 404, "destination_not_found");
}

#[tokio::test]
async fn expect_100_continue_is_answered_and_body_forwarded() {
    let up = upstream::echo().await;
    let gw = support::start(support::config(&[up.addr])).await;
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 1024];
    let n = s.read(&mut buf).await.unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 100 Continue"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    s.write_all(b"hello").await.unwrap();
    let mut out = Vec::new();
    loop {
        let n = s.read(&mut buf).await.unwrap();
        out.extend_from_slice(&buf[..n]);
        if n == 0 || out.ends_with(b"hello") {
            break;
        }
    }
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("200 OK") && text.ends_with("hello"), "{text}");
    assert!(
        !text.contains("x-echo-expect"),
        "Expect is answered here, not forwarded"
    );
}

#[tokio::test]
async fn admin_listener_answers_live_and_ready() {
    let up = upstream::ok("hi").await;
    let mut cfg = support::config(&[up.addr]);
    cfg.admin.listen = Some("127.0.0.1:0".parse().unwrap());
    let gw = support::start(cfg).await;
    let admin = gw.admin.expect("admin is on");
    let c = client();
    let (live, _) = get(&c, &format!("http://{admin}/live")).await;
    assert_eq!(live.status, 200);
    let (ready, _) = get(&c, &format!("http://{admin}/ready")).await;
    assert_eq!(ready.status, 200);
    assert_ne!(admin, gw.addr, "admin never shares the public port");
}

#[tokio::test]
async fn oversized_upstream_response_head_is_502_header_section_size() {
    let up = upstream::serve(|_| {
        http::Response::builder()
            .header("set-cookie", "a".repeat(80 * 1024))
            .body(Full::default())
            .unwrap()
    })
    .await;
    let cfg = support::config(&[up.addr]);
    let gw = support::start(cfg).await;
    let (parts, _) = get(&client(), &gw.url("/")).await;
    support::assert_generated(&parts, 502, "http_response_header_section_size");
}
