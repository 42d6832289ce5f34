//! HTTP/2 on the client side: h2c with prior knowledge and h2 by ALPN, with hyper's h2 client and
//! curl, in front of HTTP/1.1 upstreams; bodies and trailers across the translation, client
//! resets, and the drain's GOAWAY.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use gatewise::config::ListenerTlsConfig;
use http::Request;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::support::tls::{
    client_config_alpn, pair, tls_connect_with, write_pair, TempDir, TestCa,
};
use crate::support::{self, config, upstream};

type Body = BoxBody<Bytes, Infallible>;

fn empty() -> Body {
    Full::default().boxed()
}

/// An HTTP/2 client connection over `io` (its task runs until the connection ends).
async fn h2_over<IO>(io: IO) -> SendRequest<Body>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .handshake(TokioIo::new(io))
        .await
        .expect("HTTP/2 handshake");
    tokio::spawn(conn);
    sender
}

/// h2c with prior knowledge: the client starts with the HTTP/2 preface on a plain connection.
async fn h2c(addr: SocketAddr) -> SendRequest<Body> {
    h2_over(TcpStream::connect(addr).await.unwrap()).await
}

async fn send(
    sender: &mut SendRequest<Body>,
    req: Request<Body>,
) -> (http::response::Parts, Bytes) {
    let resp = sender.send_request(req).await.expect("response");
    let (parts, body) = resp.into_parts();
    (parts, body.collect().await.expect("body").to_bytes())
}

/// FNV-1a: a checksum both ends compute over a body.
fn checksum(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_streams_on_one_connection_reach_an_http1_upstream() {
    let up = upstream::echo().await;
    let gw = support::start(config(&[up.addr])).await;
    let sender = h2c(gw.addr).await;
    let authority = format!("app.test:{}", gw.addr.port());
    let mut tasks = Vec::new();
    for i in 0..100 {
        let mut sender = sender.clone();
        let url = format!("http://{authority}/item/{i}");
        tasks.push(tokio::spawn(async move {
            let body = format!("request body {i}").repeat(10);
            let req = Request::post(url)
                .header("cookie", "a=1")
                .header("cookie", format!("n={i}"))
                .body(Full::new(Bytes::from(body.clone())).boxed())
                .unwrap();
            let (parts, got) = send(&mut sender, req).await;
            (i, body, parts, got)
        }));
    }
    for task in tasks {
        let (i, sent, parts, got) = task.await.unwrap();
        assert_eq!(parts.status, 200, "stream {i}");
        assert_eq!(parts.version, http::Version::HTTP_2);
        assert_eq!(got, sent.as_bytes(), "stream {i}: body intact");
        let echoed = |name: &str| parts.headers.get(format!("x-echo-{name}"));
        // The upstream got HTTP/1.1 with one Host: the client's :authority.
        assert_eq!(echoed("host").unwrap(), authority.as_str());
        assert_eq!(parts.headers.get_all("x-echo-host").iter().count(), 1);
        assert_eq!(echoed("x-forwarded-host").unwrap(), authority.as_str());
        assert_eq!(echoed("via").unwrap(), "2 gatewise");
        let forwarded = echoed("forwarded").unwrap().to_str().unwrap();
        assert!(
            forwarded.contains(&format!("host=\"{authority}\"")),
            "{forwarded}"
        );
        // Split cookie fields arrive as the one line HTTP/1.1 allows.
        assert_eq!(echoed("cookie").unwrap(), format!("a=1; n={i}").as_str());
        assert_eq!(echoed("x-echo-method"), None);
    }
    for _ in 0..100 {
        let line = gw.next_log();
        assert_eq!(line["protocol"], "h2", "{line}");
        assert_eq!(line["status"], 200);
        assert_eq!(line["host"], authority.as_str());
    }
}

#[tokio::test]
async fn http1_on_a_plain_listener_is_still_http1_and_connections_are_counted_by_protocol() {
    let up = upstream::echo().await;
    let mut cfg = config(&[up.addr]);
    cfg.admin.listen = Some("127.0.0.1:0".parse().unwrap());
    let listener = cfg.listeners[0].name.clone();
    let gw = support::start(cfg).await;
    let (parts, _) = support::get(&support::client(), &gw.url("/")).await;
    assert_eq!(parts.status, 200);
    assert_eq!(parts.version, http::Version::HTTP_11);
    assert_eq!(gw.next_log()["protocol"], "h1");
    for _ in 0..2 {
        let req = Request::get(gw.url("/")).body(empty()).unwrap();
        assert_eq!(send(&mut h2c(gw.addr).await, req).await.0.status, 200);
        assert_eq!(gw.next_log()["protocol"], "h2");
    }
    // A fresh client: the admin request is not on the gateway listener.
    let metrics = format!("http://{}/metrics", gw.admin.unwrap());
    let (_, body) = support::get(&support::client(), &metrics).await;
    let text = String::from_utf8_lossy(&body);
    for (protocol, n) in [("h1", 1), ("h2", 2)] {
        let line = format!(
            "gatewise_client_connections_total{{listener=\"{listener}\",protocol=\"{protocol}\"}} {n}"
        );
        assert!(text.contains(&line), "{line} in\n{text}");
    }
}

#[tokio::test]
async fn a_1mib_post_crosses_h2_to_h1_intact_with_and_without_a_length() {
    // The upstream answers with the checksum of what it received.
    let up = upstream::serve(|req| {
        let sum = checksum(req.body());
        let len = req.body().len();
        let te = req.headers().contains_key("transfer-encoding");
        http::Response::builder()
            .header("x-sum", sum.to_string())
            .header("x-len", len.to_string())
            .header("x-chunked", te.to_string())
            .body(Full::default())
            .unwrap()
    })
    .await;
    let gw = support::start(config(&[up.addr])).await;
    let mut sender = h2c(gw.addr).await;
    let data: Bytes = (0..1024 * 1024).map(|i| (i * 31 % 251) as u8).collect();
    let want = checksum(&data).to_string();

    // With content-length (a Full body): larger than the replay buffer, so it streams.
    let req = Request::post(format!("http://{}/upload", gw.addr))
        .body(Full::new(data.clone()).boxed())
        .unwrap();
    let (parts, _) = send(&mut sender, req).await;
    assert_eq!(parts.status, 200);
    assert_eq!(parts.headers["x-len"], "1048576");
    assert_eq!(parts.headers["x-sum"], want.as_str());

    // Without a length (DATA frames until END_STREAM): chunked to the HTTP/1.1 upstream.
    let chunks: Vec<Result<Frame<Bytes>, Infallible>> = data
        .chunks(16 * 1024)
        .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
        .collect();
    let body = StreamBody::new(futures_util::stream::iter(chunks)).boxed();
    let req = Request::post(format!("http://{}/upload", gw.addr))
        .body(body)
        .unwrap();
    let (parts, _) = send(&mut sender, req).await;
    assert_eq!(parts.status, 200);
    assert_eq!(parts.headers["x-len"], "1048576");
    assert_eq!(parts.headers["x-sum"], want.as_str());
    assert_eq!(parts.headers["x-chunked"], "true");
}

#[tokio::test]
async fn chunked_response_trailers_from_an_http1_upstream_reach_an_h2_client() {
    let up = upstream::raw(|mut stream, _| async move {
        let mut buf = vec![0u8; 65536];
        let _ = stream.read(&mut buf).await;
        let resp = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-checksum\r\n\
                    connection: keep-alive\r\nkeep-alive: timeout=5\r\n\r\n\
                    5\r\nhello\r\n6\r\n world\r\n0\r\nx-checksum: abc123\r\n\r\n";
        let _ = stream.write_all(resp.as_bytes()).await;
        let _ = stream.read(&mut buf).await;
    })
    .await;
    let gw = support::start(config(&[up.addr])).await;
    let mut sender = h2c(gw.addr).await;
    let req = Request::get(format!("http://{}/t", gw.addr))
        .header("te", "trailers")
        .body(empty())
        .unwrap();
    let resp = sender.send_request(req).await.expect("response");
    assert_eq!(resp.status(), 200);
    // hyper would refuse connection-specific fields on HTTP/2; gatewise removed them first.
    for gone in ["connection", "keep-alive", "transfer-encoding"] {
        assert!(!resp.headers().contains_key(gone), "{gone} sent over h2");
    }
    // `Trailer` is end to end (RFC 9110 §6.6.2), and allowed in HTTP/2.
    assert_eq!(resp.headers()["trailer"], "x-checksum");
    let collected = resp.into_body().collect().await.expect("body");
    let trailers = collected.trailers().cloned().expect("trailers");
    assert_eq!(trailers["x-checksum"], "abc123");
    assert_eq!(collected.to_bytes(), "hello world");
    assert_eq!(gw.next_log()["status"], 200);
}

/// Runs curl with `args`; returns its stdout.
async fn curl(args: Vec<String>) -> String {
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl")
            .args(&args)
            .output()
            .expect("curl is installed (.ci/run installs it)")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "curl: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn curl_args(extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = ["--silent", "--show-error", "--max-time", "10"]
        .map(String::from)
        .to_vec();
    args.extend(["--write-out", "%{http_code} %{http_version}"].map(String::from));
    args.extend(["--output", "/dev/null"].map(String::from));
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn listener_tls(cert: &std::path::Path, key: &std::path::Path) -> ListenerTlsConfig {
    ListenerTlsConfig {
        certificates: vec![pair(cert, key)],
        handshake_timeout: Duration::from_secs(5),
        reload_interval: Duration::from_secs(60),
        expiry_warning: Duration::from_secs(86400),
        acme: None,
    }
}

#[tokio::test]
async fn curl_speaks_h2c_with_prior_knowledge_and_h2_over_tls() {
    let up = upstream::ok("ok").await;
    let gw = support::start(config(&[up.addr])).await;
    let out = curl(curl_args(&["--http2-prior-knowledge", &gw.url("/plain")])).await;
    assert_eq!(out, "200 2");
    let line = gw.next_log();
    assert_eq!(
        (line["protocol"].as_str(), line["scheme"].as_str()),
        (Some("h2"), Some("http"))
    );

    let dir = TempDir::new();
    let ca = TestCa::new("test ca");
    let ca_file = dir.write("ca.pem", &ca.cert_pem);
    let (cert, key) = write_pair(&dir, "s", &ca.issue(&["s.test"]));
    let mut c = config(&[up.addr]);
    c.listeners[0].tls = Some(listener_tls(&cert, &key));
    let tls_gw = support::start(c).await;
    let port = tls_gw.addr.port();
    let (resolve, url) = (
        format!("s.test:{port}:127.0.0.1"),
        format!("https://s.test:{port}/tls"),
    );
    let ca_arg = ca_file.display().to_string();
    let common = ["--cacert", ca_arg.as_str(), "--resolve", resolve.as_str()];
    let h2 = [&common[..], &["--http2", url.as_str()]].concat();
    assert_eq!(curl(curl_args(&h2)).await, "200 2");
    let line = tls_gw.next_log();
    assert_eq!(
        (line["protocol"].as_str(), line["scheme"].as_str()),
        (Some("h2"), Some("https"))
    );
    // A client that asks for HTTP/1.1 on the same listener still gets it.
    let h1 = [&common[..], &["--http1.1", url.as_str()]].concat();
    assert_eq!(curl(curl_args(&h1)).await, "200 1.1");
    assert_eq!(tls_gw.next_log()["protocol"], "h1");
}

#[tokio::test]
async fn h2_over_tls_is_chosen_by_alpn() {
    let dir = TempDir::new();
    let ca = TestCa::new("test ca");
    let (cert, key) = write_pair(&dir, "s", &ca.issue(&["s.test"]));
    let up = upstream::echo().await;
    let mut c = config(&[up.addr]);
    c.listeners[0].tls = Some(listener_tls(&cert, &key));
    let gw = support::start(c).await;
    let both = client_config_alpn(&ca.cert_pem, &[b"h2", b"http/1.1"]);
    let tls = tls_connect_with(gw.addr, "s.test", both).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let mut sender = h2_over(tls).await;
    let req = Request::get("https://s.test/over-tls")
        .body(empty())
        .unwrap();
    let (parts, _) = send(&mut sender, req).await;
    assert_eq!(parts.status, 200);
    assert_eq!(parts.headers["x-echo-host"], "s.test");
    assert_eq!(parts.headers["x-echo-x-forwarded-proto"], "https");
    let line = gw.next_log();
    assert_eq!(line["protocol"], "h2");
    assert_eq!(line["scheme"], "https");
}

#[tokio::test]
async fn h2_connect_and_a_host_that_differs_from_the_authority_are_refused() {
    let up = upstream::echo().await;
    let gw = support::start(config(&[up.addr])).await;
    let mut sender = h2c(gw.addr).await;
    let req = Request::get(format!("http://a.test:{}/", gw.addr.port()))
        .header("host", "b.test")
        .body(empty())
        .unwrap();
    let (parts, body) = send(&mut sender, req).await;
    support::assert_generated(&parts, 400, "http_request_error");
    assert!(!parts.headers.contains_key("connection"));
    assert!(String::from_utf8_lossy(&body).contains("differs from :authority"));
    assert_eq!(up.stats.requests(), 0);
    // CONNECT (and so WebSocket over HTTP/2, RFC 8441) is refused, not tunnelled.
    let req = Request::connect(format!("a.test:{}", gw.addr.port()))
        .body(empty())
        .unwrap();
    let (parts, body) = send(&mut sender, req).await;
    support::assert_generated(&parts, 400, "http_request_error");
    assert!(String::from_utf8_lossy(&body).contains("CONNECT is not supported"));
    assert_eq!(up.stats.requests(), 0);
    // The connection is still good for the next stream.
    let req = Request::get(format!("http://a.test:{}/", gw.addr.port()))
        .body(empty())
        .unwrap();
    assert_eq!(send(&mut sender, req).await.0.status, 200);
}

/// An upstream that counts requests and connection closes, answers `GET /hang` never and
/// `GET /half` with a head and half a body, then waits for its peer to close.
async fn stalling() -> (upstream::Mock, Arc<AtomicUsize>, Arc<Notify>) {
    let (closed, changed) = (Arc::new(AtomicUsize::new(0)), Arc::new(Notify::new()));
    let (c, n) = (closed.clone(), changed.clone());
    let up = upstream::raw(move |mut stream, _| {
        let (closed, changed) = (c.clone(), n.clone());
        async move {
            let mut buf = vec![0u8; 65536];
            let n = stream.read(&mut buf).await.unwrap_or(0);
            if buf[..n].starts_with(b"GET /half") {
                let head = "HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhalf.";
                let _ = stream.write_all(head.as_bytes()).await;
            }
            changed.notify_one();
            // Until gatewise closes the connection (EOF or reset).
            while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
            closed.fetch_add(1, Ordering::SeqCst);
            changed.notify_one();
        }
    })
    .await;
    (up, closed, changed)
}

// Multi-threaded: `next_log` blocks its thread while the gateway writes the line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_reset_by_the_client_cancels_the_upstream_request_and_logs_499() {
    let (up, closed, changed) = stalling().await;
    let mut cfg = config(&[up.addr]);
    support::route_of(&mut cfg).timeout = Duration::from_secs(60);
    support::route_of(&mut cfg).per_try_timeout = Duration::from_secs(60);
    let gw = support::start(cfg).await;
    let mut sender = h2c(gw.addr).await;

    // Before the response head: dropping the response future sends RST_STREAM(CANCEL).
    let req = Request::get(format!("http://{}/hang", gw.addr))
        .body(empty())
        .unwrap();
    let pending = sender.send_request(req);
    let waiting = tokio::spawn(pending);
    let upstream_has_it = changed.notified();
    tokio::time::timeout(Duration::from_secs(10), upstream_has_it)
        .await
        .expect("the request reached the upstream");
    waiting.abort();
    let line = gw.next_log();
    assert_eq!(line["status"], 499, "{line}");
    assert_eq!(line["protocol"], "h2");
    wait_until(&changed, || closed.load(Ordering::SeqCst) == 1).await;

    // Mid-response: the client reads the head and part of the body, then resets the stream.
    let req = Request::get(format!("http://{}/half", gw.addr))
        .body(empty())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first, "half.");
    drop(body);
    let line = gw.next_log();
    assert_eq!(line["status"], 200, "{line}");
    assert_eq!(line["incomplete"], true, "{line}");
    // The upstream connection was closed mid-response, never put back in the pool.
    wait_until(&changed, || closed.load(Ordering::SeqCst) == 2).await;
    assert_eq!(up.stats.accepts(), 2);
    // The client's connection serves on.
    let req = Request::get(format!("http://{}/half", gw.addr))
        .body(empty())
        .unwrap();
    assert_eq!(sender.send_request(req).await.unwrap().status(), 200);
}

async fn wait_until(changed: &Notify, f: impl Fn() -> bool) {
    loop {
        let next = changed.notified();
        if f() {
            return;
        }
        tokio::time::timeout(Duration::from_secs(10), next)
            .await
            .expect("condition reached in time");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_sends_goaway_and_lets_an_in_flight_stream_finish() {
    let (arrived, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let (a, r) = (arrived.clone(), release.clone());
    let up = upstream::raw(move |mut stream, _| {
        let (arrived, release) = (a.clone(), r.clone());
        async move {
            let mut buf = vec![0u8; 65536];
            while let Ok(n) = stream.read(&mut buf).await {
                if n == 0 {
                    return;
                }
                if buf[..n].starts_with(b"GET /slow") {
                    arrived.notify_one();
                    release.notified().await;
                }
                let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\ndone";
                if stream.write_all(ok).await.is_err() {
                    return;
                }
            }
        }
    })
    .await;
    let mut cfg = config(&[up.addr]);
    cfg.drain_delay = Duration::ZERO;
    cfg.shutdown_timeout = Duration::from_secs(30);
    let gateway = gatewise::gateway::Gateway::bind(
        &cfg,
        gatewise::observe::access_log::AccessLog::capture().0,
    )
    .await
    .unwrap();
    let addr = gateway.listen_addrs()[0];
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let done = tokio::spawn(gateway.serve_until(async {
        let _ = stopped.await;
    }));

    let mut sender = h2c(addr).await;
    let mut slow_sender = sender.clone();
    let slow = tokio::spawn(async move {
        let req = Request::get(format!("http://{addr}/slow"))
            .body(empty())
            .unwrap();
        send(&mut slow_sender, req).await
    });
    arrived.notified().await;
    stop.send(()).unwrap();
    // After the GOAWAY the client may open no new stream on this connection.
    let refused = async {
        loop {
            let req = Request::get(format!("http://{addr}/"))
                .body(empty())
                .unwrap();
            match sender.send_request(req).await {
                Ok(resp) => assert_eq!(resp.status(), 200),
                Err(err) => break err,
            }
        }
    };
    let err = tokio::time::timeout(Duration::from_secs(20), refused)
        .await
        .expect("the connection stops taking new streams");
    assert!(
        !slow.is_finished(),
        "the in-flight stream is still open: {err}"
    );
    release.notify_one();
    let (parts, body) = slow.await.unwrap();
    assert_eq!(parts.status, 200);
    assert_eq!(body, "done");
    let open = tokio::time::timeout(Duration::from_secs(20), done)
        .await
        .expect("the gateway finishes once the stream is done")
        .unwrap();
    assert_eq!(open, 0, "nothing was cut");
}
