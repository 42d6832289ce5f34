//! `worker_model = "per_worker"`: client connections are accepted and served on the worker
//! runtimes, each accepting on a duplicate of the one listening socket; the gateway's own runtime
//! (here the test's) keeps the accept loops off. A reload's new listener is served by the
//! workers too, and the drain waits for connections served on them.

use std::time::Duration;

use bytes::Bytes;
use gatewise::gateway::Gateway;
use gatewise::observe::access_log::AccessLog;
use gatewise::server::workers::Workers;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::support::{self, node::Node};

/// Tasks alive on the workers' runtimes.
fn worker_tasks(handles: &[tokio::runtime::Handle]) -> usize {
    handles.iter().map(|h| h.metrics().num_alive_tasks()).sum()
}

/// One keep-alive client connection that has made one request through `addr`.
async fn connected(
    addr: std::net::SocketAddr,
) -> hyper::client::conn::http1::SendRequest<Empty<Bytes>> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("/")
        .header("host", "workers.test")
        .body(Empty::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.into_body().collect().await.unwrap();
    sender
}

/// Waits (bounded) until `f` holds.
async fn until(what: &str, f: impl Fn() -> bool) {
    crate::support::poll_until(what, Duration::from_secs(10), f).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn connections_are_served_on_the_workers_and_drained_from_them() {
    let node = Node::start().await;
    let workers = Workers::start(2).unwrap();
    let handles = workers.handles();
    let mut config = support::config(&[node.addr]);
    config.drain_delay = Duration::ZERO;
    let gateway = Gateway::bind(&config, AccessLog::capture().0)
        .await
        .unwrap()
        .with_workers(handles.clone());
    let addr = gateway.listen_addrs()[0];
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(gateway.serve_until(async {
        let _ = stop_rx.await;
    }));

    // One accept loop per worker, then one task per client connection (and per upstream
    // connection) on the worker that accepted it.
    until("an accept loop on each worker", || {
        handles.iter().all(|h| h.metrics().num_alive_tasks() >= 1)
    })
    .await;
    let mut clients = Vec::new();
    for _ in 0..10 {
        clients.push(connected(addr).await);
    }
    assert!(
        worker_tasks(&handles) >= 2 + 10,
        "client connections run on the workers: {} tasks",
        worker_tasks(&handles)
    );
    assert_eq!(node.requests(), 10);

    // The drain closes an idle keep-alive connection that a worker serves, and waits for it.
    let kept = clients.pop().unwrap();
    drop(clients);
    let _ = stop_tx.send(());
    let open = tokio::time::timeout(Duration::from_secs(20), served)
        .await
        .expect("drain finished")
        .unwrap();
    assert_eq!(open, 0);
    until("the idle client connection closed by the drain", || {
        kept.is_closed()
    })
    .await;
    workers.stop(Duration::from_secs(5));
}
