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
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;

use arc_swap::ArcSwap;

use super::drain::{ConnectionDrain, DrainSignal};
use super::tls::Terminator;
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
    tls: Arc<arc_swap::ArcSwapOption<Terminator>>,
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
                let _ = stream.set_nodelay(true);
                // Settings (and the TLS side) are read per connection: a reload changes them
                // for new connections.
                let (config, state) = (config.load_full(), state.clone());
                let conn_drain = drain.connection();
                match tls.load_full() {
                    None => {
                        tokio::spawn(serve_connection(stream, peer, config, state, conn_drain));
                    }
                    // The handshake runs in the connection's own task, so a slow client never
                    // holds up the accept loop.
                    Some(tls) => {
                        tokio::spawn(async move {
                            if let Some(stream) = tls.accept(stream).await {
                                serve_connection(stream, peer, config, state, conn_drain).await;
                            }
                        });
                    }
                }
            }
            Err(err) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(%err, listener = %state.name, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn serve_connection<IO>(
    stream: IO,
    peer: SocketAddr,
    config: Arc<ListenerConfig>,
    state: Arc<ListenerState>,
    mut drain: ConnectionDrain,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc_state = state.clone();
    let tunnels = drain.tunnels();
    let redirect = config.redirect_https;
    let service = service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        let state = svc_state.clone();
        // Only a request that may upgrade gets the handle (no extension map on every request).
        if req.headers().contains_key(hyper::header::UPGRADE) {
            req.extensions_mut().insert(tunnels.clone());
        }
        async move {
            if redirect {
                return Ok::<_, Infallible>(super::redirect::to_https(&state, peer, &req));
            }
            Ok::<_, Infallible>(forward::handle(&state, peer, req).await)
        }
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
        scheme: state.scheme,
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
