//! One listener: the accept loop and a task per client connection, each serving HTTP/1.1 with
//! the listener's limits (header read timeout, header size and count), or HTTP/2 (chosen by ALPN
//! on TLS, by the connection preface on plain listeners: h2c with prior knowledge) with its
//! `h2_*` limits, and handing every request to [`crate::proxy::forward::handle`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};

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
                        tokio::spawn(async move {
                            let wait = config.header_read_timeout;
                            match sniff_h2c(&stream, wait).await {
                                Some(h2) => {
                                    serve_connection(stream, h2, peer, config, state, conn_drain)
                                        .await
                                }
                                None => tracing::debug!(%peer, "client sent no request"),
                            }
                        });
                    }
                    // The handshake runs in the connection's own task, so a slow client never
                    // holds up the accept loop.
                    Some(tls) => {
                        tokio::spawn(async move {
                            if let Some(stream) = tls.accept(stream).await {
                                let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
                                serve_connection(stream, h2, peer, config, state, conn_drain).await;
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

/// The client connection preface of HTTP/2 (RFC 9113 §3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether a plain connection starts with the HTTP/2 preface (h2c with prior knowledge), read
/// with `peek` so the bytes stay for hyper and HTTP/1 pays no wrapper on its reads. Decided at
/// the first byte that differs, so an HTTP/1 request is known at once (`G`, or the second byte
/// of `POST`/`PUT`/`PATCH`). `None`: closed, or nothing decisive within `wait`.
async fn sniff_h2c(stream: &TcpStream, wait: Duration) -> Option<bool> {
    let sniff = async {
        let mut buf = [0u8; PREFACE.len()];
        loop {
            let n = stream.peek(&mut buf).await.ok()?;
            if n == 0 {
                return None;
            }
            if buf[..n] != PREFACE[..n] {
                return Some(false);
            }
            if n == PREFACE.len() {
                return Some(true);
            }
            // A preface split across packets: `peek` would return the same bytes at once
            // (the socket stays readable), so wait a little for the rest. Rare: clients send
            // the preface in one write.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(wait, sniff).await.ok().flatten()
}

async fn serve_connection<IO>(
    stream: IO,
    h2: bool,
    peer: SocketAddr,
    config: Arc<ListenerConfig>,
    state: Arc<ListenerState>,
    drain: ConnectionDrain,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    if !h2 {
        return super::h1::serve(stream, peer, config, state, drain).await;
    }
    let svc_state = state.clone();
    let redirect = config.redirect_https;
    let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let state = svc_state.clone();
        async move {
            let mut resp = respond(&state, peer, redirect, req).await;
            // Connection-specific fields are malformed in HTTP/2 (RFC 9113 §8.2.2); an
            // upstream's are gone already (headers.rs), this is our own `Connection: close`
            // after a bad request: HTTP/2 closes nothing for one bad stream.
            resp.headers_mut().remove(hyper::header::CONNECTION);
            Ok::<_, Infallible>(resp)
        }
    });
    state.connections.h2.inc();
    serve_h2(stream, peer, &config, service, drain).await
}

/// One request of either protocol: redirected to https on a `redirect_https` listener, else
/// proxied.
pub(super) async fn respond(
    state: &ListenerState,
    peer: SocketAddr,
    redirect: bool,
    req: hyper::Request<hyper::body::Incoming>,
) -> hyper::Response<crate::proxy::relay::ClientBody> {
    if let Some(answer) = crate::acme::answer_http01(&state.acme, &req) {
        answer
    } else if redirect {
        super::redirect::to_https(state, peer, &req)
    } else {
        forward::handle(state, peer, req).await
    }
}

/// One HTTP/2 connection: every stream is a request to the same service. The limits are all set
/// here, none left to hyper's defaults, so what a client can hold open is what the config says.
async fn serve_h2<IO, S>(
    stream: IO,
    peer: SocketAddr,
    config: &ListenerConfig,
    service: S,
    mut drain: ConnectionDrain,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming> + Send,
    S::Future: Send + 'static,
    S::ResBody: Send + 'static,
    <S::ResBody as hyper::body::Body>::Data: Send,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let limits = &config.h2;
    let conn = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        // One limit on a request head, whichever protocol carries it (HPACK-decoded size).
        .max_header_list_size(u32::try_from(config.max_header_bytes).unwrap_or(u32::MAX))
        .initial_stream_window_size(limits.initial_stream_window)
        .initial_connection_window_size(limits.initial_connection_window)
        .adaptive_window(false)
        .keep_alive_interval(limits.keepalive_interval)
        .keep_alive_timeout(limits.keepalive_timeout)
        .max_pending_accept_reset_streams(limits.max_pending_accept_reset_streams)
        .max_local_error_reset_streams(limits.max_local_error_reset_streams)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        biased;
        result = conn.as_mut() => result,
        () = drain.closing() => {
            // GOAWAY: the client opens no new stream here; the open ones run to their end.
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(err) = result {
        tracing::debug!(%err, %peer, "HTTP/2 client connection ended with an error");
    }
}

pub(super) fn log_rejected(state: &ListenerState, peer: SocketAddr, err: &hyper::Error) {
    let status = if err.is_parse_too_large() { 431 } else { 400 };
    tracing::debug!(%err, %peer, status, "malformed request");
    state
        .unrouted
        .request(status, Some(Cause::HttpRequestError), Duration::ZERO);
    state.access_log.write(&Record::unrouted(
        peer,
        state.scheme,
        "h1",
        status,
        Some(Cause::HttpRequestError),
    ));
}
