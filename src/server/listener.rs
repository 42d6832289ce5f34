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

use super::drain::{ConnectionDrain, DrainSignal};
use super::idle::{Activity, ClientIo, Tracked};
use crate::cause::Cause;
use crate::config::ListenerConfig;
use crate::observe::access_log::Record;
use crate::proxy::forward::{self, ListenerState};

/// Accepts connections until the gateway drains (the socket is closed on return, so new
/// connections are refused) or the task is dropped.
pub async fn serve(
    listener: TcpListener,
    config: ListenerConfig,
    state: Arc<ListenerState>,
    mut drain: DrainSignal,
) {
    let config = Arc::new(config);
    loop {
        let accepted = tokio::select! {
            biased;
            () = drain.closing() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                tokio::spawn(serve_connection(
                    stream,
                    peer,
                    config.clone(),
                    state.clone(),
                    drain.connection(),
                ));
            }
            Err(err) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(%err, listener = %config.name, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Serves one client connection in phases (see [`super::idle`]): the socket waits alone until
/// the client sends something, then hyper serves until the connection is idle again.
async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    config: Arc<ListenerConfig>,
    state: Arc<ListenerState>,
    mut drain: ConnectionDrain,
) {
    let _ = stream.set_nodelay(true);
    let activity = Arc::new(Activity::default());
    let svc_state = state.clone();
    let svc_activity = activity.clone();
    let service = service_fn(move |req| {
        let state = svc_state.clone();
        let busy = svc_activity.busy();
        let activity = svc_activity.clone();
        async move {
            let resp = forward::handle(&state, peer, req).await;
            if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS {
                activity.upgraded();
            }
            Ok::<_, Infallible>(resp.map(|body| Tracked::new(body, busy)))
        }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .max_buf_size(config.max_header_bytes.max(8192))
        .max_header_size(config.max_header_bytes)
        .writev(false)
        .max_headers(config.max_headers);
    let mut io = ClientIo::new(stream, activity);
    loop {
        // Idle: nothing but the socket, for as long as hyper would have waited for a head.
        let readable = tokio::select! {
            biased;
            () = drain.closing() => return,
            readable = tokio::time::timeout(config.header_read_timeout, io.stream.readable()) => readable,
        };
        if !matches!(readable, Ok(Ok(()))) {
            return;
        }
        // Boxed, so an idle connection's task does not carry hyper's connection inline.
        let mut conn = Box::new(builder.serve_connection(TokioIo::new(io), service.clone()));
        let result = tokio::select! {
            biased;
            result = &mut *conn => result,
            () = drain.closing() => {
                // Idle: closed now. Busy: the current response goes out with `Connection: close`.
                std::pin::Pin::new(&mut *conn).graceful_shutdown();
                let _ = (&mut *conn).await;
                return;
            }
        };
        let parts = conn.into_parts();
        let put_down = parts.io.inner().put_down;
        match result {
            // Put down at idle with nothing unread: wait for the next request.
            Ok(()) if put_down && parts.read_buf.is_empty() => {
                io = parts.io.into_inner().next_phase();
            }
            Ok(()) => return,
            Err(err) => return ended_with_error(&state, peer, err, parts).await,
        }
    }
}

/// A phase that ended with an error ends the connection; some are answered and logged.
async fn ended_with_error<S>(
    state: &ListenerState,
    peer: SocketAddr,
    err: hyper::Error,
    parts: http1::Parts<TokioIo<ClientIo>, S>,
) {
    if err.is_parse() || err.is_parse_too_large() {
        // hyper has answered 400 or 431 itself; the request never reached a route.
        let status = if err.is_parse_too_large() { 431 } else { 400 };
        tracing::debug!(%err, %peer, status, "malformed request");
        log_rejected(state, peer, status);
    } else if err.is_timeout() {
        // hyper's header_read_timeout: part of a request head was read (an idle connection
        // waits in `serve_connection` instead, and is closed silently).
        if !parts.read_buf.is_empty() {
            request_timeout(parts.io.into_inner().stream).await;
            tracing::debug!(%peer, read = parts.read_buf.len(), "request head timed out");
            log_rejected(state, peer, 408);
        }
    } else {
        tracing::debug!(%err, %peer, "client connection ended with an error");
    }
}

/// A request head that did not complete within `header_read_timeout` gets 408, as from nginx
/// and HAProxy, so the client (or its proxy) knows not to wait; bounded, as the client is slow.
async fn request_timeout(mut stream: TcpStream) {
    use tokio::io::AsyncWriteExt;
    let response = b"HTTP/1.1 408 Request Timeout\r\nProxy-Status: gatewise; error=http_request_error; details=\"request head not received within header_read_timeout\"\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(response).await?;
        stream.shutdown().await
    })
    .await;
}

/// Logs and counts a request that ended before reaching a route: hyper's own 400 or 431, or
/// our 408.
fn log_rejected(state: &ListenerState, peer: SocketAddr, status: u16) {
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
        incomplete: false,
        attempts: &[],
    });
}
