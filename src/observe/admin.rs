//! The admin listener (loopback by default, never the public port): `GET /` lists the
//! endpoints; `/live`, `/ready`, `/status` (HTML for browsers, JSON otherwise), `/metrics`,
//! `POST /reload`. Every answer has a `Content-Type`. With `admin.token` set (required when the
//! admin listener is not on loopback) every endpoint except `/live` and `/ready` needs
//! `Authorization: Bearer TOKEN`.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::status;
use crate::gateway::Shared;
use crate::observe::metrics;

const TEXT: &str = "text/plain; charset=utf-8";
const JSON: &str = "application/json";
const HTML: &str = "text/html; charset=utf-8";

/// What `GET /` answers: every endpoint and what it is for.
const INDEX: &str = "gatewise admin\n\
GET  /live     200 while the process runs\n\
GET  /ready    200 when every route has a healthy target; 503 (with the reason) otherwise or while draining\n\
GET  /status   routes, upstreams, targets, recent causes, last reload (HTML for browsers; JSON with Accept: application/json or ?format=json)\n\
GET  /metrics  Prometheus / OpenMetrics text\n\
POST /reload   reload the config file; answers the diff applied, or every error with line:col (JSON)\n";

/// Serves admin requests until the task is dropped.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(respond(&shared, req).await) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn answer(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// Does the request carry the admin token (when one is configured)?
fn authorized<B>(shared: &Shared, req: &Request<B>) -> bool {
    let config = shared.snapshot.load().config.clone();
    let Some(token) = config.admin.token.as_deref() else {
        return true;
    };
    let given = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    constant_time_eq(given.trim().as_bytes(), token.as_bytes())
}

/// Compares without an early exit, so the time taken says nothing about the token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (i, x) in a.iter().enumerate() {
        diff |= usize::from(x ^ b.get(i % b.len().max(1)).copied().unwrap_or(0));
    }
    diff == 0
}

/// HTML for a browser (or `?format=html`), JSON for everything else (curl, scripts).
fn wants_html<B>(req: &Request<B>) -> bool {
    let query = req.uri().query().unwrap_or("");
    if query.split('&').any(|kv| kv == "format=json") {
        return false;
    }
    if query.split('&').any(|kv| kv == "format=html") {
        return true;
    }
    req.headers()
        .get(http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/html"))
}

async fn respond<B>(shared: &Shared, req: Request<B>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let open = matches!(path, "/live" | "/ready");
    if !open && !authorized(shared, &req) {
        let mut resp = answer(
            StatusCode::UNAUTHORIZED,
            TEXT,
            "admin token required: Authorization: Bearer TOKEN\n",
        );
        resp.headers_mut()
            .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return resp;
    }
    match (req.method(), path) {
        (&Method::GET | &Method::HEAD, "/") => answer(StatusCode::OK, TEXT, INDEX),
        (_, "/live") => answer(StatusCode::OK, TEXT, "live\n"),
        (_, "/ready") => match shared.not_ready() {
            None => answer(StatusCode::OK, TEXT, "ready\n"),
            Some(why) => answer(
                StatusCode::SERVICE_UNAVAILABLE,
                TEXT,
                format!("not ready: {why}\n"),
            ),
        },
        (_, "/status") if wants_html(&req) => answer(
            StatusCode::OK,
            HTML,
            status::html(&status::document(shared)),
        ),
        (_, "/status") => answer(
            StatusCode::OK,
            JSON,
            format!("{:#}\n", status::document(shared)),
        ),
        (_, "/metrics") => answer(
            StatusCode::OK,
            metrics::CONTENT_TYPE,
            shared.metrics.encode(),
        ),
        (&Method::POST, "/reload") => {
            let outcome = shared.reload("admin").await;
            let status = match (outcome.ok, outcome.generation) {
                (true, _) => StatusCode::OK,
                (false, 0) => StatusCode::SERVICE_UNAVAILABLE,
                (false, _) => StatusCode::UNPROCESSABLE_ENTITY,
            };
            let body = serde_json::to_string_pretty(&outcome).unwrap_or_default() + "\n";
            answer(status, JSON, body)
        }
        (_, "/reload") => {
            let mut resp = answer(StatusCode::METHOD_NOT_ALLOWED, TEXT, "use POST /reload\n");
            resp.headers_mut()
                .insert(http::header::ALLOW, HeaderValue::from_static("POST"));
            resp
        }
        _ => answer(
            StatusCode::NOT_FOUND,
            TEXT,
            "unknown admin path; GET / lists the endpoints\n",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"s3cret", b"s3cret"));
        assert!(!constant_time_eq(b"s3cre", b"s3cret"));
        assert!(!constant_time_eq(b"s3cret!", b"s3cret"));
        assert!(!constant_time_eq(b"", b"s3cret"));
        assert!(!constant_time_eq(b"S3cret", b"s3cret"));
    }
}
