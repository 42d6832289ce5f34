//! HTTP/1.1 client connections held between requests (src/server/h1.rs): every way a next
//! request can arrive on a held connection is served as before, and a request head that never
//! completes is answered 408, logged and counted — while a connection that was merely idle is
//! closed without a word.

use std::time::Duration;

use gatewise::config::ListenerTlsConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::tls::{pair, tls_connect, write_pair, TempDir, TestCa};
use crate::support::{self, get, upstream, websocket, wire};

/// Short, so the timeout tests take a second of real time (the gateway runs on real sockets,
/// where paused time would fire timeouts while bytes are in flight); longer than
/// [`until_held`], which must not idle a connection out.
const HEAD_TIMEOUT: Duration = Duration::from_secs(1);

/// Lets a connection's hyper state be put down: the gateway keeps it for 100 ms after the last
/// response (src/server/h1.rs, GRACE). Time passing is what is tested, not a readiness wait.
async fn until_held() {
    tokio::time::sleep(Duration::from_millis(300)).await;
}

/// Reads whole responses from a kept-alive stream until `n` arrived.
async fn responses<S: AsyncReadExt + Unpin>(s: &mut S, n: usize) -> Vec<wire::Msg> {
    let mut buf = Vec::new();
    let mut out = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        while let Some(msg) = wire::decode(&buf, false, false, false) {
            buf = msg.rest.clone();
            out.push(msg);
            if out.len() == n {
                assert!(buf.is_empty(), "bytes after the last response: {buf:?}");
                return out;
            }
        }
        let read = tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk)).await;
        let got = read.expect("a response in time").unwrap();
        assert!(got > 0, "closed after {} responses", out.len());
        buf.extend_from_slice(&chunk[..got]);
    }
}

/// Reads until the peer closes (bounded).
async fn to_eof<S: AsyncReadExt + Unpin>(s: &mut S) -> Vec<u8> {
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    assert!(
        read.is_ok(),
        "never closed; got {:?}",
        String::from_utf8_lossy(&out)
    );
    out
}

async fn metrics(gw: &support::TestGateway) -> String {
    let url = format!("http://{}/metrics", gw.admin.unwrap());
    let (_, body) = get(&support::client(), &url).await;
    String::from_utf8(body.to_vec()).unwrap()
}

fn counter(text: &str, prefix: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .map_or(0, |v| v.parse().unwrap())
}

async fn gateway_with_head_timeout() -> (upstream::Mock, support::TestGateway) {
    let up = upstream::echo().await;
    let mut cfg = support::config(&[up.addr]);
    cfg.admin.listen = Some("127.0.0.1:0".parse().unwrap());
    cfg.listeners[0].header_read_timeout = HEAD_TIMEOUT;
    let gw = support::start(cfg).await;
    (up, gw)
}

const TIMEOUTS: &str = "gatewise_client_header_timeouts_total{listener=\"public\"}";

#[tokio::test]
async fn a_request_head_that_never_completes_is_answered_408_logged_and_counted() {
    // Was: closed after the header read timeout with nothing written, logged or counted.
    let (up, gw) = gateway_with_head_timeout().await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /slow HTTP/1.1\r\nHost: a\r\nX-Half: ")
        .await
        .unwrap();
    let raw = to_eof(&mut s).await;
    let msg = wire::decode(&raw, false, false, true).expect("a response");
    assert_eq!(msg.status(), 408, "{msg:?}");
    assert_eq!(msg.header("connection"), Some("close"));
    assert!(msg.complete, "{msg:?}");
    let line = gw.next_log();
    assert_eq!(line["status"], 408, "{line}");
    assert_eq!(line["cause"], "http_request_error", "{line}");
    assert_eq!(line["method"], "-", "{line}");
    let text = metrics(&gw).await;
    assert_eq!(counter(&text, TIMEOUTS), 1, "{text}");
    assert_eq!(up.stats.requests(), 0);
}

#[tokio::test]
async fn a_head_begun_on_a_kept_alive_connection_is_answered_408() {
    // After a request with a body (the connection hyper keeps serving) and after a held one.
    let (_up, gw) = gateway_with_head_timeout().await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"POST /b HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi")
        .await
        .unwrap();
    assert_eq!(responses(&mut s, 1).await[0].status(), 200);
    s.write_all(b"GET /held HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(responses(&mut s, 1).await[0].status(), 200);
    until_held().await;
    s.write_all(b"GET /never HTTP/1.1\r\nHo").await.unwrap();
    let raw = to_eof(&mut s).await;
    let msg = wire::decode(&raw, false, false, true).expect("a response");
    assert_eq!(msg.status(), 408, "{msg:?}");
    for _ in 0..2 {
        assert_eq!(gw.next_log()["status"], 200);
    }
    assert_eq!(gw.next_log()["status"], 408);
    assert_eq!(counter(&metrics(&gw).await, TIMEOUTS), 1);
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_silently_not_408() {
    let (_up, gw) = gateway_with_head_timeout().await;
    // Idle after a held exchange, idle after a body exchange, and idle from the start.
    let mut held = TcpStream::connect(gw.addr).await.unwrap();
    held.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(responses(&mut held, 1).await[0].status(), 200);
    let mut bodied = TcpStream::connect(gw.addr).await.unwrap();
    bodied
        .write_all(b"PUT / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\nx")
        .await
        .unwrap();
    assert_eq!(responses(&mut bodied, 1).await[0].status(), 200);
    let mut fresh = TcpStream::connect(gw.addr).await.unwrap();
    for s in [&mut held, &mut bodied, &mut fresh] {
        let rest = to_eof(s).await;
        assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    }
    for _ in 0..2 {
        assert_eq!(gw.next_log()["status"], 200);
    }
    assert_eq!(counter(&metrics(&gw).await, TIMEOUTS), 0);
    assert!(
        gw.log.recv_timeout(Duration::from_millis(100)).is_err(),
        "no access-log line for an idle close"
    );
}

#[tokio::test]
async fn pipelined_requests_split_across_exchanges_are_answered_in_order_and_kept_alive() {
    // A held connection must not lose bytes hyper read past a response (the next pipelined
    // request, whole or in part), nor add `Connection: close` to a response.
    let up = upstream::echo().await;
    let gw = support::start(support::config(&[up.addr])).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nSeq: one\r\n\r\nGET / HTTP/1.1\r\nSeq: two\r\nHo")
        .await
        .unwrap();
    let first = responses(&mut s, 1).await.remove(0);
    // The half head of `two` is in hyper's buffer when the connection is put down.
    until_held().await;
    s.write_all(b"st: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\nSeq: three\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\nSeq: four\r\n\r\n")
        .await
        .unwrap();
    let rest = responses(&mut s, 3).await;
    let all: Vec<&wire::Msg> = std::iter::once(&first).chain(rest.iter()).collect();
    for (msg, seq) in all.iter().zip(["one", "two", "three", "four"]) {
        assert_eq!(msg.status(), 200, "{msg:?}");
        assert_eq!(msg.header("x-echo-seq"), Some(seq), "{msg:?}");
        assert_ne!(msg.header("connection"), Some("close"), "{msg:?}");
    }
    // Still open and served.
    s.write_all(b"GET /five HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(responses(&mut s, 1).await[0].status(), 200);
    assert_eq!(up.stats.requests(), 5);
}

#[tokio::test]
async fn a_websocket_upgrade_after_a_held_exchange_keeps_the_bytes_sent_behind_it() {
    // The 101 now hands the socket over from our own driver (hyper reports a manual upgrade):
    // a frame the client wrote in the same packet as its upgrade request must reach the tunnel.
    let (up, _closes) = websocket::ws_upstream().await;
    let gw = support::start(support::config(&[up.addr])).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /plain HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    // The WebSocket server answers plain HTTP with an error; what matters is the exchange.
    let _ = responses(&mut s, 1).await;
    until_held().await;
    // A masked text frame "hi" (mask 1,2,3,4) right behind the upgrade request.
    let frame = [0x81, 0x82, 1, 2, 3, 4, b'h' ^ 1, b'i' ^ 2];
    let mut req = b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n".to_vec();
    req.extend_from_slice(&frame);
    s.write_all(&req).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let echoed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_string();
                assert!(head.starts_with("HTTP/1.1 101"), "{head}");
                if buf.len() >= end + 4 + 4 {
                    return buf[end + 4..end + 8].to_vec();
                }
            }
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed: {:?}", String::from_utf8_lossy(&buf));
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .expect("the echo in time");
    assert_eq!(echoed, [0x81, 0x02, b'h', b'i']);
}

#[tokio::test]
async fn a_tls_connection_is_held_between_requests_and_times_out_a_partial_head_with_408() {
    let dir = TempDir::new();
    let ca = TestCa::new("test ca");
    let (cert, key) = write_pair(&dir, "a", &ca.issue(&["a.test"]));
    let up = upstream::echo().await;
    let mut cfg = support::config(&[up.addr]);
    cfg.listeners[0].header_read_timeout = HEAD_TIMEOUT;
    cfg.listeners[0].tls = Some(ListenerTlsConfig {
        certificates: vec![pair(&cert, &key)],
        handshake_timeout: Duration::from_secs(5),
        reload_interval: Duration::from_secs(60),
        expiry_warning: Duration::from_secs(14 * 86400),
        acme: None,
    });
    let gw = support::start(cfg).await;
    let mut tls = tls_connect(gw.addr, "a.test", &ca.cert_pem).await.unwrap();
    for seq in ["a", "b"] {
        let req = format!("GET / HTTP/1.1\r\nHost: a\r\nSeq: {seq}\r\n\r\n");
        tls.write_all(req.as_bytes()).await.unwrap();
        let msg = responses(&mut tls, 1).await.remove(0);
        assert_eq!(msg.header("x-echo-seq"), Some(seq), "{msg:?}");
        until_held().await;
    }
    tls.write_all(b"GET /c HTTP/1.1\r\n").await.unwrap();
    let mut raw = Vec::new();
    // The gateway closes after its 408 (a close_notify, or a plain close).
    let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut raw)).await;
    let msg = wire::decode(&raw, false, false, true).expect("a response");
    assert_eq!(msg.status(), 408, "{msg:?}");
}
