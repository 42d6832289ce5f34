//! The admin listener (localhost by default, never the public port): `/live`, `/ready`,
//! `/status` and `/metrics`.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::gateway::Shared;
use crate::observe::metrics;

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
                async move { Ok::<_, Infallible>(respond(&shared, &req)) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Every upstream and target: health state, load, pool, latest transition.
fn status_json(shared: &Shared) -> String {
    let upstreams: serde_json::Map<String, serde_json::Value> = shared
        .upstreams
        .iter()
        .map(|(name, up)| {
            let targets: Vec<serde_json::Value> = up
                .targets
                .iter()
                .map(|t| {
                    let last = t.last_change().map(|(at, what)| {
                        serde_json::json!({
                            "at": humantime::format_rfc3339_millis(at).to_string(),
                            "change": what,
                        })
                    });
                    let limits = t.pool.idle_limits();
                    let ms = |d: Option<std::time::Duration>| d.map(|d| d.as_millis() as u64);
                    serde_json::json!({
                        "target": &*t.addr,
                        "state": t.state().as_str(),
                        "in_flight": t.in_flight(),
                        "idle_connections": t.pool.idle_count(),
                        "idle_limit_ms": {
                            "configured": ms(Some(limits.configured)),
                            "announced": ms(limits.announced),
                            "learned": ms(limits.learned),
                        },
                        "last_change": last,
                    })
                })
                .collect();
            (name.clone(), serde_json::json!({ "targets": targets }))
        })
        .collect();
    let ready = shared.not_ready();
    let doc = serde_json::json!({
        "ready": ready.is_none(),
        "not_ready_reason": ready,
        "upstreams": upstreams,
    });
    format!("{doc:#}\n")
}

fn respond<B>(shared: &Shared, req: &Request<B>) -> Response<Full<Bytes>> {
    let (status, body) = match req.uri().path() {
        "/live" => (StatusCode::OK, "live\n".to_string()),
        "/ready" => match shared.not_ready() {
            None => (StatusCode::OK, "ready\n".to_string()),
            Some(why) => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
            ),
        },
        "/status" => (StatusCode::OK, status_json(shared)),
        "/metrics" => {
            let mut resp = Response::new(Full::new(Bytes::from(shared.metrics.encode())));
            let content_type = HeaderValue::from_static(metrics::CONTENT_TYPE);
            resp.headers_mut().insert(CONTENT_TYPE, content_type);
            return resp;
        }
        _ => (StatusCode::NOT_FOUND, "unknown admin path\n".to_string()),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp
}
