//! Graceful shutdown: readiness 503 at once, serving on through `drain_delay`, then listeners
//! closed, idle connections closed, in-flight requests finished with `Connection: close`, and
//! `shutdown_timeout` bounding the wait.

use std::sync::Arc;
use std::time::Duration;

use gatewise::gateway::Gateway;
use gatewise::observe::access_log::AccessLog;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, Notify};

use crate::support::{self, client, get, upstream};

/// An upstream answering `GET /slow` only once `release` is notified (after notifying
/// `arrived`), and anything else at once; keep-alive.
async fn gated(arrived: Arc<Notify>, release: Arc<Notify>) -> upstream::Mock {
    upstream::raw(move |mut stream, _| {
        let (arrived, release) = (arrived.clone(), release.clone());
        async move {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                let Ok(n) = stream.read(&mut chunk).await else {
                    return;
                };
                if n == 0 {
                    return;
                }
                buf.extend_from_slice(&chunk[..n]);
                while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buf[..end]).to_string();
                    buf.drain(..end + 4);
                    if head.starts_with("GET /slow") {
                        arrived.notify_one();
                        release.notified().await;
                    }
                    let reply = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                    if stream.write_all(reply).await.is_err() {
                        return;
                    }
                }
            }
        }
    })
    .await
}

/// A raw client exchange: sends `request`, reads until the peer closes or `until` is seen.
async fn exchange(stream: &mut TcpStream, request: &str, until: &str) -> String {
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    while !String::from_utf8_lossy(&out).contains(until) {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&chunk[..n]),
        }
    }
    String::from_utf8_lossy(&out).to_string()
}

struct Started {
    addr: std::net::SocketAddr,
    admin: std::net::SocketAddr,
    stop: oneshot::Sender<()>,
    done: tokio::task::JoinHandle<usize>,
}

async fn start(cfg: gatewise::config::Config) -> Started {
    let gateway = Gateway::bind(&cfg, AccessLog::capture().0).await.unwrap();
    let (addr, admin) = (gateway.listen_addrs()[0], gateway.admin_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    let done = tokio::spawn(gateway.serve_until(async {
        let _ = stopped.await;
    }));
    Started {
        addr,
        admin,
        stop,
        done,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_then_closes_and_in_flight_requests_finish() {
    let (arrived, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let up = gated(arrived.clone(), release.clone()).await;
    let mut cfg = support::config(&[up.addr]);
    cfg.admin.listen = Some("127.0.0.1:0".parse().unwrap());
    cfg.drain_delay = Duration::from_secs(2);
    let gw = start(cfg).await;
    let c = client();
    let ready = format!("http://{}/ready", gw.admin);
    assert_eq!(get(&c, &ready).await.0.status, 200);

    // An idle keep-alive client connection, and a request in flight on the upstream.
    let mut idle = TcpStream::connect(gw.addr).await.unwrap();
    let first = exchange(&mut idle, "GET / HTTP/1.1\r\nHost: a\r\n\r\n", "ok").await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    let addr = gw.addr;
    let slow = tokio::spawn(async move {
        let mut s = TcpStream::connect(addr).await.unwrap();
        exchange(
            &mut s,
            "GET /slow HTTP/1.1\r\nHost: a\r\n\r\n",
            "\r\n\r\nok",
        )
        .await
    });
    arrived.notified().await;

    gw.stop.send(()).unwrap();
    // Readiness says 503 at once...
    let body = loop {
        let (parts, body) = get(&c, &ready).await;
        if parts.status == 503 {
            break body;
        }
    };
    assert!(String::from_utf8_lossy(&body).contains("draining"));
    // ...while traffic is still served, on a new connection too.
    let mut fresh = TcpStream::connect(gw.addr).await.unwrap();
    let during = exchange(&mut fresh, "GET / HTTP/1.1\r\nHost: a\r\n\r\n", "ok").await;
    assert!(during.starts_with("HTTP/1.1 200"), "{during}");

    // After the delay the listener closes: new connections are refused.
    let closed = async {
        while TcpStream::connect(gw.addr).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), closed)
        .await
        .expect("the listener closes after drain_delay");
    // The idle keep-alive connection is closed.
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(20), idle.read(&mut buf))
        .await
        .expect("idle connection closed");
    assert_eq!(n.unwrap_or(0), 0, "EOF on the idle connection");
    // The in-flight request still completes, told that the connection closes.
    assert!(!gw.done.is_finished(), "waits for the in-flight request");
    release.notify_one();
    let text = slow.await.unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );
    assert!(text.ends_with("ok"), "{text}");
    let open = tokio::time::timeout(Duration::from_secs(20), gw.done)
        .await
        .expect("the gateway finishes once the request is done")
        .unwrap();
    assert_eq!(open, 0, "nothing was cut");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_timeout_bounds_the_wait_for_a_stuck_request() {
    let (arrived, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let up = gated(arrived.clone(), release).await;
    let mut cfg = support::config(&[up.addr]);
    cfg.admin.listen = Some("127.0.0.1:0".parse().unwrap());
    cfg.drain_delay = Duration::ZERO;
    cfg.shutdown_timeout = Duration::from_millis(300);
    let gw = start(cfg).await;
    let addr = gw.addr;
    let _stuck = tokio::spawn(async move {
        let mut s = TcpStream::connect(addr).await.unwrap();
        exchange(&mut s, "GET /slow HTTP/1.1\r\nHost: a\r\n\r\n", "never").await
    });
    arrived.notified().await;
    gw.stop.send(()).unwrap();
    // A guard against a hang, not a timing assertion: the wait ends at shutdown_timeout.
    let open = tokio::time::timeout(Duration::from_secs(20), gw.done)
        .await
        .expect("shutdown_timeout ends the wait")
        .unwrap();
    assert_eq!(open, 1, "the stuck request's connection was still open");
}
