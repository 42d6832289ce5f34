//! One attempt: a connection to one target (pooled or new), the request sent, the response head
//! read — and, when that fails, an [`UpstreamError`] classified right here, where we still know
//! whether request bytes left and response bytes came back.

use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;

use crate::body::UpstreamBody;
use crate::cause::{Cause, Phase, UpstreamError};
use crate::upstream::io::{IoSnapshot, IoStats};
use crate::upstream::pool::Conn;
use crate::upstream::Target;

/// What an attempt got to before it ended; read after a per-try timeout cancels it.
#[derive(Default)]
pub struct Progress {
    pub reused: bool,
    /// Counters of the connection the request went out on, and their values before sending.
    sending: Option<(Arc<IoStats>, IoSnapshot)>,
}

impl Progress {
    /// (request bytes written, response bytes read) since the request was handed to the connection.
    pub fn io(&self) -> (bool, bool) {
        match &self.sending {
            Some((stats, before)) => {
                let now = stats.snapshot();
                (now.written > before.written, now.read > before.read)
            }
            None => (false, false),
        }
    }

    /// The error for a per-try timeout that fired at this point.
    pub fn timeout_error(&self, detail: String) -> UpstreamError {
        let (request_sent, response_bytes) = self.io();
        UpstreamError {
            cause: Cause::HttpResponseTimeout,
            phase: if self.sending.is_some() {
                Phase::ResponseHead
            } else {
                Phase::Connect
            },
            request_sent,
            response_bytes,
            reused: self.reused,
            detail,
        }
    }
}

/// A failed attempt, with the request handed back when none of it was sent (so even a
/// streamed body can go to the next target).
pub type Failure = (UpstreamError, Option<Request<UpstreamBody>>);

/// Sends `req` to `target` and waits for the response head.
///
/// Pooled connections that turn out closed before anything was written are dropped and the
/// request moves to the next one (finally a fresh connection): nothing was sent, so this is safe
/// for any method and is not a retry.
pub async fn send(
    target: &Target,
    mut req: Request<UpstreamBody>,
    progress: &mut Progress,
) -> Result<(Response<Incoming>, Conn), Failure> {
    loop {
        let mut conn = match target.pool.take_idle() {
            Some(conn) => conn,
            None => match target.pool.connect().await {
                Ok(conn) => conn,
                Err(err) => return Err((err, Some(req))),
            },
        };
        progress.reused = conn.reused;
        if conn.reused && conn.sender.ready().await.is_err() {
            continue;
        }
        progress.sending = Some((conn.stats.clone(), conn.stats.snapshot()));
        match conn.sender.try_send_request(req).await {
            Ok(resp) => return Ok((resp, conn)),
            Err(mut err) => match err.take_message() {
                Some(unsent) if conn.reused => {
                    req = unsent;
                    progress.sending = None;
                }
                unsent => return Err((classify(err.error(), progress, &target.addr), unsent)),
            },
        }
    }
}

/// Names the cause of a failed exchange from hyper's error kind and the socket counters.
fn classify(err: &hyper::Error, progress: &Progress, addr: &str) -> UpstreamError {
    let (request_sent, response_bytes) = progress.io();
    let cause = if err.is_parse_too_large() {
        Cause::HttpResponseHeaderSectionSize
    } else if err.is_parse() || err.is_parse_status() {
        Cause::HttpProtocolError
    } else if err.is_user() {
        // The client's own body failed (it hung up mid-upload).
        Cause::HttpRequestError
    } else if response_bytes {
        Cause::HttpResponseIncomplete
    } else {
        Cause::ConnectionTerminated
    };
    // A TLS record where an HTTP status line should be: the target wants TLS.
    let tls_answer = cause == Cause::HttpProtocolError
        && progress
            .sending
            .as_ref()
            .and_then(|(stats, _)| stats.first_byte())
            .is_some_and(|b| b == 0x15 || b == 0x16);
    let tls_failure = crate::upstream::tls::rustls_error_in(err)
        .map(|e| crate::upstream::tls::tls_error_words(e, addr));
    let (cause, detail) = if tls_answer {
        (
            Cause::TlsProtocolError,
            format!("{addr}: target speaks TLS; protocol = \"https\" is not set"),
        )
    } else if let Some((tls_cause, words)) = tls_failure {
        // A TLS alert after the handshake (e.g. our client certificate refused under TLS 1.3).
        (tls_cause, format!("{addr}: {words}"))
    } else {
        (cause, format!("{addr}: {err}"))
    };
    let phase = if response_bytes || cause == Cause::HttpProtocolError || tls_answer {
        Phase::ResponseHead
    } else if request_sent {
        Phase::RequestSent
    } else {
        Phase::Connect
    };
    UpstreamError {
        cause,
        phase,
        request_sent,
        response_bytes,
        reused: progress.reused,
        detail,
    }
}
