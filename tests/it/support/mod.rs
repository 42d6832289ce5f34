//! Test fixtures: mock upstreams with scripted behaviour, a gateway on port 0, a client, and
//! the captured access log.

pub mod bodies;
pub mod dns;
pub mod etcd;
pub mod goaway_proxy;
pub mod h2_upstream;
pub mod kube;
pub mod node;
pub mod pebble;
pub mod tls;
pub mod traffic;
pub mod upstream;
pub mod websocket;
pub mod wire;

use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::Duration;

use bytes::Bytes;
use gatewise::config::{Config, HostPattern, RouteConfig, UpstreamConfig};
use gatewise::gateway::Gateway;
use gatewise::observe::access_log::AccessLog;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;

pub type TestClient = Client<HttpConnector, Full<Bytes>>;

/// A running gateway: its public address and its access-log lines.
pub struct TestGateway {
    pub addr: SocketAddr,
    pub admin: Option<SocketAddr>,
    pub log: mpsc::Receiver<Vec<u8>>,
    _task: tokio::task::JoinHandle<()>,
}

impl TestGateway {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The next access-log line, parsed; waits for it (the line is written when the body ends).
    pub fn next_log(&self) -> serde_json::Value {
        let line = self
            .log
            .recv_timeout(Duration::from_secs(10))
            .expect("an access-log line");
        serde_json::from_slice(&line).expect("access-log line is JSON")
    }
}

/// A one-listener, one-route config over `targets`, admin off, listening on port 0.
pub fn config(targets: &[SocketAddr]) -> Config {
    let mut c = Config::quick(
        "127.0.0.1:0".parse().unwrap(),
        targets.iter().map(|a| a.to_string()).collect(),
    );
    c.admin.listen = None;
    c
}

/// The single upstream of a [`config`].
pub fn upstream_of(c: &mut Config) -> &mut UpstreamConfig {
    c.upstreams.values_mut().next().unwrap()
}

/// The single route of a [`config`].
pub fn route_of(c: &mut Config) -> &mut RouteConfig {
    &mut c.routes[0]
}

pub fn host(pattern: &str) -> HostPattern {
    match pattern {
        "*" => HostPattern::Any,
        p if p.starts_with("*.") => HostPattern::Suffix(p[1..].to_string()),
        p => HostPattern::Exact(p.to_string()),
    }
}

pub async fn start(config: Config) -> TestGateway {
    let (log, rx) = AccessLog::capture();
    let gateway = Gateway::bind(&config, log).await.expect("gateway binds");
    let addr = gateway.listen_addrs()[0];
    let admin = gateway.admin_addr();
    let task = tokio::spawn(gateway.serve());
    TestGateway {
        addr,
        admin,
        log: rx,
        _task: task,
    }
}

pub fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Sends a request and reads the whole response.
pub async fn send(
    client: &TestClient,
    req: http::Request<Full<Bytes>>,
) -> (http::response::Parts, Bytes) {
    let resp = client.request(req).await.expect("response");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    (parts, body)
}

/// The `Proxy-Status` of a response gatewise generated, after checking its status and cause.
pub fn assert_generated(parts: &http::response::Parts, status: u16, cause: &str) -> String {
    assert_eq!(parts.status, status, "{parts:?}");
    let ps = parts.headers["proxy-status"].to_str().unwrap().to_string();
    assert!(ps.starts_with(&format!("gatewise; error={cause}")), "{ps}");
    ps
}

pub async fn get(client: &TestClient, url: &str) -> (http::response::Parts, Bytes) {
    send(
        client,
        http::Request::get(url).body(Full::default()).unwrap(),
    )
    .await
}

/// Polls `cond` every 5 ms until it holds, for conditions the gateway reaches on its own (a
/// reload, a watch, a renewal) with nothing to await; fails the test after `limit`.
pub async fn poll_until(what: &str, limit: std::time::Duration, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for: {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}
