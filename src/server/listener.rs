//! One listener: the accept loop and a task per client connection, each serving HTTP/1.1 with
//! the listener's limits (header read timeout, header size and count) and handing every request
//! to [`crate::proxy::forward::handle`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};

use arc_swap::ArcSwap;

use super::drain::{ConnectionDrain, DrainSignal};
use crate::cause::Cause;
use crate::config::ListenerConfig;
use crate::observe::access_log::Record;
use crate::proxy::forward::{self, ListenerState};

/// Accepts connections until the gateway drains (the socket is closed on return, so new
/// connections are refused) or the task is dropped.
pub async fn serve(
    listener: TcpListener,
    config: Arc<ArcSwap<ListenerConfig>>,
    state: Arc<ListenerState>,
    mut drain: DrainSignal,
) {
    loop {
        let accepted = tokio::select! {
            biased;
            () = drain.closing() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                // Settings are read per connection: a reload changes them for new connections.
                tokio::spawn(serve_connection(
                    stream,
                    peer,
                    config.load_full(),
                    state.clone(),
                    drain.connection(),
                ));
            }
            Err(err) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(%err, listener = %state.name, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    config: Arc<ListenerConfig>,
    state: Arc<ListenerState>,
    mut drain: ConnectionDrain,
) {
    let _ = stream.set_nodelay(true);
    let svc_state = state.clone();
    let tunnels = drain.tunnels();
    let service = service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        let state = svc_state.clone();
        // Only a request that may upgrade gets the handle (no extension map on every request).
        if req.headers().contains_key(hyper::header::UPGRADE) {
            req.extensions_mut().insert(tunnels.clone());
        }
        async move { Ok::<_, Infallible>(forward::handle(&state, peer, req).await) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .max_buf_size(config.max_header_bytes.max(8192))
        .max_header_size(config.max_header_bytes)
        .writev(false)
        .max_headers(config.max_headers)
        .serve_connection(TokioIo::new(stream), service)
        // A 101 hands the socket to the request's tunnel (proxy/upgrade.rs).
        .with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        biased;
        result = conn.as_mut() => result,
        () = drain.closing() => {
            // Idle: closed now. Busy: the current response goes out with `Connection: close`.
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(err) = result {
        if err.is_parse() || err.is_parse_too_large() {
            // hyper has answered 400 or 431 itself; the request never reached a route.
            log_rejected(&state, peer, &err);
        } else {
            tracing::debug!(%err, %peer, "client connection ended with an error");
        }
    }
}

fn log_rejected(state: &ListenerState, peer: SocketAddr, err: &hyper::Error) {
    let status = if err.is_parse_too_large() { 431 } else { 400 };
    tracing::debug!(%err, %peer, status, "malformed request");
    state
        .unrouted
        .request(status, Some(Cause::HttpRequestError), Duration::ZERO);
    state.access_log.write(&Record {
        time: SystemTime::now(),
        request_id: "",
        client: peer,
        method: "-",
        host: "",
        path: "",
        route: None,
        upstream: None,
        target: None,
        status,
        duration_ms: Duration::ZERO,
        bytes_in: 0,
        bytes_out: 0,
        cause: Some(Cause::HttpRequestError),
        retry_stop: None,
        held_ms: Duration::ZERO,
        incomplete: false,
        attempts: &[],
        tunnel: None,
    });
}
