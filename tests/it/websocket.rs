//! WebSocket through gatewise with a real client and a real server (tokio-tungstenite): echo,
//! ping/pong, close codes both ways, refusals, failures, bad upgrade requests, the idle timeout
//! and the drain.

use std::time::Duration;

use futures_util::SinkExt;
use gatewise::gateway::Gateway;
use gatewise::observe::access_log::AccessLog;
use http::Response;
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::support::websocket::{
    assert_ends, connect, handshake, next, raw, until_end, ws_upstream,
};
use crate::support::{self, client, get, upstream};

// Multi-threaded: `next_log` blocks its thread while the tunnel task writes the line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_of_text_binary_a_1mib_frame_and_ping_pong() {
    let (up, _closes) = ws_upstream().await;
    let mut cfg = support::config(&[up.addr]);
    cfg.admin.listen = Some("127.0.0.1:0".parse().unwrap());
    let gw = support::start(cfg).await;
    let mut ws = connect(gw.addr, "/chat").await;

    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::text("hello"));
    ws.send(Message::binary(vec![0u8, 1, 2, 255]))
        .await
        .unwrap();
    assert_eq!(next(&mut ws).await, Message::binary(vec![0u8, 1, 2, 255]));
    let big: Vec<u8> = (0..1 << 20).map(|i| (i % 253) as u8).collect();
    ws.send(Message::binary(big.clone())).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::binary(big));
    ws.send(Message::Ping(b"are you there".to_vec().into()))
        .await
        .unwrap();
    assert_eq!(
        next(&mut ws).await,
        Message::Pong(b"are you there".to_vec().into())
    );

    // While open: one tunnel in the gauge, no access-log line yet.
    let c = client();
    let metrics_url = format!("http://{}/metrics", gw.admin.unwrap());
    let text = String::from_utf8(get(&c, &metrics_url).await.1.to_vec()).unwrap();
    assert!(
        text.contains(r#"gatewise_tunnels_open{route="*/"} 1"#),
        "{text}"
    );
    assert!(gw.log.try_recv().is_err(), "the line is written at close");

    // The client hangs up without a close handshake: the tunnel closes, named after it.
    drop(ws);
    let line = gw.next_log();
    assert_eq!(line["status"], 101, "{line}");
    assert_eq!(line["tunnel"]["closed_by"], "client", "{line}");
    assert_eq!(line["cause"], serde_json::Value::Null, "{line}");
    assert_eq!(line["path"], "/chat");
    // Both ways carried the 1 MiB message and its framing.
    assert!(line["bytes_in"].as_u64().unwrap() > 1 << 20, "{line}");
    assert!(line["bytes_out"].as_u64().unwrap() > 1 << 20, "{line}");
    let text = String::from_utf8(get(&c, &metrics_url).await.1.to_vec()).unwrap();
    for want in [
        r#"gatewise_tunnels_open{route="*/"} 0"#,
        r#"gatewise_tunnels_total{route="*/",closed_by="client"} 1"#,
        r#"gatewise_requests_total{route="*/",status="101",cause="none"} 1"#,
    ] {
        assert!(text.contains(want), "{want} missing from {text}");
    }
    // The upstream connection of a tunnel never went back to the pool.
    assert_eq!(up.stats.accepts(), 1);
}

// Multi-threaded: `next_log` blocks its thread while the tunnel task writes the line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_codes_pass_through_both_ways() {
    let (up, mut closes) = ws_upstream().await;
    let gw = support::start(support::config(&[up.addr])).await;

    // Client-initiated: the upstream sees the client's code and reason, the client its echo.
    let mut ws = connect(gw.addr, "/chat").await;
    let frame = CloseFrame {
        code: CloseCode::from(4001),
        reason: "client done".into(),
    };
    ws.close(Some(frame.clone())).await.unwrap();
    let echoed = until_end(&mut ws).await;
    assert_eq!(
        echoed.map(|r| r.ok()),
        Some(Some(Message::Close(Some(frame.clone()))))
    );
    let seen = tokio::time::timeout(Duration::from_secs(20), closes.recv())
        .await
        .expect("the upstream got the close frame");
    assert_eq!(seen, Some(Some(frame)));
    // The server closes the TCP connection first (RFC 6455 §7.1.1), whoever began the close.
    assert_ends(&mut ws).await;
    drop(ws);
    let line = gw.next_log();
    assert_eq!(line["status"], 101, "{line}");
    assert_eq!(line["tunnel"]["closed_by"], "upstream", "{line}");

    // Upstream-initiated: the client sees the upstream's code and reason.
    let mut ws = connect(gw.addr, "/upstream-closes").await;
    let got = until_end(&mut ws).await.map(|r| r.ok());
    let want = CloseFrame {
        code: CloseCode::from(4002),
        reason: "server going away".into(),
    };
    assert_eq!(got, Some(Some(Message::Close(Some(want)))));
    // The client's reply reaches the upstream, which then closes.
    assert_ends(&mut ws).await;
    drop(ws);
    let line = gw.next_log();
    assert_eq!(line["tunnel"]["closed_by"], "upstream", "{line}");
    assert!(
        line["bytes_in"].as_u64().unwrap() > 0,
        "the reply went up: {line}"
    );
}

#[tokio::test]
async fn an_upstream_that_refuses_the_upgrade_gives_its_own_answer() {
    let up = upstream::serve(|req| {
        // Upgrade and Connection reached the upstream as the client sent them.
        assert_eq!(req.headers()["upgrade"], "websocket");
        assert_eq!(req.headers()["connection"], "upgrade");
        Response::builder()
            .status(403)
            .body(Full::from("origin not allowed"))
            .unwrap()
    })
    .await;
    let gw = support::start(support::config(&[up.addr])).await;
    let err = tokio_tungstenite::connect_async(format!("ws://{}/chat", gw.addr))
        .await
        .expect_err("refused");
    let WsError::Http(resp) = err else {
        panic!("expected the HTTP answer, got {err}")
    };
    assert_eq!(resp.status(), 403);
    assert!(!resp.headers().contains_key("proxy-status"), "{resp:?}");
    assert_eq!(resp.body().as_deref(), Some(&b"origin not allowed"[..]));
    let line = gw.next_log();
    assert_eq!(line["status"], 403, "{line}");
    assert!(line.get("tunnel").is_none(), "{line}");
}

#[tokio::test]
async fn upstream_down_gives_a_generated_502_with_the_connect_cause() {
    let mut cfg = support::config(&[upstream::closed_port().await]);
    // No outage hold: the refusal itself is the answer (the hold: tests/it/hold.rs).
    support::upstream_of(&mut cfg).outage_hold = std::time::Duration::ZERO;
    let gw = support::start(cfg).await;
    let text = raw(gw.addr, &handshake("/chat", ""), "\r\n\r\n").await;
    assert!(text.starts_with("HTTP/1.1 502"), "{text}");
    assert!(
        text.contains("proxy-status: gatewise; error=connection_refused"),
        "{text}"
    );
    assert_eq!(gw.next_log()["cause"], "connection_refused");
}

#[tokio::test]
async fn an_upstream_that_drops_the_upgrade_unanswered_is_http_upgrade_failed() {
    // Reads the request, then closes without a byte.
    let up = upstream::raw(|mut stream, _| async move {
        let mut buf = [0u8; 4096];
        let _ = stream.read(&mut buf).await;
    })
    .await;
    let mut cfg = support::config(&[up.addr]);
    support::route_of(&mut cfg).retries = 0;
    let gw = support::start(cfg).await;
    let text = raw(gw.addr, &handshake("/chat", ""), "\r\n\r\n").await;
    assert!(text.starts_with("HTTP/1.1 502"), "{text}");
    assert!(
        text.contains("proxy-status: gatewise; error=http_upgrade_failed"),
        "{text}"
    );
    let line = gw.next_log();
    assert_eq!(line["cause"], "http_upgrade_failed", "{line}");
    // The attempt itself says what happened on the socket.
    assert_eq!(line["attempts"][0]["request_sent"], true, "{line}");
}

#[tokio::test]
async fn upgrade_on_http10_or_with_a_body_is_refused_with_a_cause() {
    let up = upstream::ok("plain").await;
    let gw = support::start(support::config(&[up.addr])).await;
    let http10 =
        "GET /chat HTTP/1.0\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n";
    let with_body = handshake("/chat", "Content-Length: 5\r\n") + "hello";
    for (request, says) in [(http10.to_string(), "HTTP/1.1"), (with_body, "body")] {
        let text = raw(gw.addr, &request, "\r\n\r\n").await;
        // (hyper answers in the client's version.)
        assert!(
            text.starts_with("HTTP/1.") && text.contains(" 400 "),
            "{text}"
        );
        assert!(
            text.contains("proxy-status: gatewise; error=http_request_error"),
            "{text}"
        );
        assert!(text.contains(says), "{text}");
        assert_eq!(gw.next_log()["cause"], "http_request_error");
    }
    assert_eq!(up.stats.requests(), 0, "nothing reached the upstream");
}

#[tokio::test]
async fn upgrade_to_h2c_is_not_forwarded_and_the_request_is_served_as_http11() {
    let up = upstream::serve(|req| {
        let upgrade = req.headers().contains_key("upgrade");
        let settings = req.headers().contains_key("http2-settings");
        let path = req.uri().path().to_string();
        Response::new(Full::from(format!(
            "{path} upgrade={upgrade} settings={settings};"
        )))
    })
    .await;
    let gw = support::start(support::config(&[up.addr])).await;
    // A second request on the same connection: still HTTP/1.1 after the upgrade that was not.
    let request = "GET /first HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\n\
                   Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n\
                   GET /second HTTP/1.1\r\nHost: a\r\n\r\n";
    let text = raw(gw.addr, request, "/second upgrade=false settings=false;").await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.contains("/first upgrade=false settings=false;"),
        "{text}"
    );
    assert!(
        text.contains("/second upgrade=false settings=false;"),
        "{text}"
    );
}

// Multi-threaded: `next_log` blocks its thread while the tunnel task writes the line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_tunnel_is_closed_at_the_idle_timeout() {
    let (up, _closes) = ws_upstream().await;
    let mut cfg = support::config(&[up.addr]);
    // Long enough that a loaded machine still echoes within it; the end is waited on, not timed.
    support::route_of(&mut cfg).tunnel_idle_timeout = Duration::from_secs(1);
    let gw = support::start(cfg).await;
    let mut ws = connect(gw.addr, "/chat").await;
    ws.send(Message::text("one")).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::text("one"));
    // Then silence: the tunnel ends without a close frame from anyone.
    let end = until_end(&mut ws).await;
    assert!(!matches!(end, Some(Ok(Message::Close(_)))), "{end:?}");
    let line = gw.next_log();
    assert_eq!(line["tunnel"]["closed_by"], "idle_timeout", "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_stays_open_through_the_drain_delay_and_ends_at_shutdown_timeout() {
    let (up, _closes) = ws_upstream().await;
    let mut cfg = support::config(&[up.addr]);
    cfg.drain_delay = Duration::from_millis(300);
    cfg.shutdown_timeout = Duration::from_secs(3);
    let (log, lines) = AccessLog::capture();
    let gateway = Gateway::bind(&cfg, log).await.unwrap();
    let addr = gateway.listen_addrs()[0];
    let (stop, stopped) = oneshot::channel::<()>();
    let done = tokio::spawn(gateway.serve_until(async {
        let _ = stopped.await;
    }));
    let mut ws = connect(addr, "/chat").await;
    stop.send(()).unwrap();

    // The drain delay passes and the listener closes...
    let closed = async {
        while TcpStream::connect(addr).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), closed)
        .await
        .expect("the listener closes after drain_delay");
    // ...and the tunnel still carries messages.
    ws.send(Message::text("still here")).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::text("still here"));
    assert!(!done.is_finished(), "the drain waits for the tunnel");

    // shutdown_timeout ends the wait, counting the tunnel, and cuts it.
    let open = tokio::time::timeout(Duration::from_secs(20), done)
        .await
        .expect("shutdown_timeout ends the wait")
        .unwrap();
    assert_eq!(open, 1, "the tunnel was still open");
    let end = until_end(&mut ws).await;
    assert!(!matches!(end, Some(Ok(_))), "{end:?}");
    let line = lines
        .recv_timeout(Duration::from_secs(10))
        .expect("the tunnel's line");
    let line: serde_json::Value = serde_json::from_slice(&line).unwrap();
    assert_eq!(line["tunnel"]["closed_by"], "shutdown", "{line}");
}

#[tokio::test]
async fn a_101_to_a_plain_request_is_a_protocol_error_not_a_tunnel() {
    let up = upstream::raw(|mut stream, _| async move {
        let mut buf = [0u8; 4096];
        let _ = stream.read(&mut buf).await;
        let reply = "HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: x\r\n\r\n";
        let _ = stream.write_all(reply.as_bytes()).await;
        let _ = stream.read(&mut buf).await;
    })
    .await;
    let mut cfg = support::config(&[up.addr]);
    support::route_of(&mut cfg).retries = 0;
    let gw = support::start(cfg).await;
    let (parts, _) = get(&client(), &gw.url("/plain")).await;
    support::assert_generated(&parts, 502, "http_protocol_error");
    assert!(gw.next_log().get("tunnel").is_none());
}

#[tokio::test]
async fn the_101_is_the_upstreams_with_no_body_framing() {
    let (up, _closes) = ws_upstream().await;
    let gw = support::start(support::config(&[up.addr])).await;
    let text = raw(gw.addr, &handshake("/chat", ""), "\r\n\r\n").await;
    let head = text.to_ascii_lowercase();
    assert!(
        head.starts_with("http/1.1 101 switching protocols\r\n"),
        "{text}"
    );
    // The upstream's answer to RFC 6455's example key, and the upgrade headers back.
    for want in [
        "sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo=",
        "connection: upgrade",
        "upgrade: websocket",
        "via: 1.1 gatewise",
    ] {
        assert!(head.contains(want), "{want} missing from {text}");
    }
    // A 1xx response has no body: no framing header may say otherwise.
    assert!(
        !head.contains("content-length") && !head.contains("transfer-encoding"),
        "{text}"
    );
}

// Multi-threaded: `next_log` blocks its thread while the tunnel task writes the line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_never_sent_goes_to_another_target() {
    let (up, _closes) = ws_upstream().await;
    let down = upstream::closed_port().await;
    let mut cfg = support::config(&[down, up.addr]);
    cfg.upstreams.values_mut().next().unwrap().health = None;
    let gw = support::start(cfg).await;
    // Round robin over two targets: at least one of two handshakes starts on the refused one.
    let mut retried = Vec::new();
    for i in 0..2 {
        let mut ws = connect(gw.addr, "/chat").await;
        let text = format!("message {i}");
        ws.send(Message::text(text.clone())).await.unwrap();
        assert_eq!(next(&mut ws).await, Message::text(text));
        drop(ws);
        let line = gw.next_log();
        let attempts = line["attempts"].as_array().unwrap().clone();
        if attempts.len() > 1 {
            retried.push(attempts);
        }
    }
    assert!(!retried.is_empty(), "no handshake met the refused target");
    use serde_json::{json, Value};
    for attempts in retried {
        let outcomes: Vec<_> = attempts
            .iter()
            .map(|a| {
                (
                    a["cause"].clone(),
                    a["request_sent"].clone(),
                    a["status"].clone(),
                )
            })
            .collect();
        assert_eq!(
            outcomes,
            [
                (json!("connection_refused"), json!(false), Value::Null),
                (Value::Null, json!(true), json!(101)),
            ]
        );
    }
}
