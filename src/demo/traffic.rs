//! The demo's client: a steady stream of small requests to the gateway at a fixed rate, a mix of
//! `GET`s and `POST`s. Each request runs in its own task, so a slow answer never delays the next.
//!
//! `POST`s carry an `Idempotency-Key`, as a well-behaved client of a payments-style API does: it
//! lets the gateway resend a `POST` whose connection died before any answer. A `POST` answered
//! with a 503 is still never resent (the upstream gave a definite answer), which the summary shows.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::Notify;

/// One request in this many is a `POST`.
const POST_EVERY: u64 = 4;
/// A request with no answer by then counts as a client-side error.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// What the client itself saw.
#[derive(Default)]
pub struct ClientStats {
    pub sent: AtomicU64,
    /// Requests that got a complete response (any status).
    pub answered: AtomicU64,
    /// Requests that got no response at all (gateway unreachable, client timeout).
    pub transport_errors: AtomicU64,
    pub in_flight: AtomicU64,
    /// Signalled when a request finishes.
    pub finished: Notify,
}

/// Sends `rate` requests per second to `gateway` until the task is dropped.
pub async fn run(gateway: SocketAddr, rate: u32, stats: Arc<ClientStats>) {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build_http();
    let period = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let mut ticker = tokio::time::interval(period);
    // After a stall, keep the pace instead of sending a burst to catch up.
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for n in 0u64.. {
        ticker.tick().await;
        let req = request(gateway, n);
        let (client, stats) = (client.clone(), stats.clone());
        stats.sent.fetch_add(1, Ordering::Relaxed);
        stats.in_flight.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let result = tokio::time::timeout(CLIENT_TIMEOUT, async {
                let resp = client.request(req).await?;
                // Read the whole body: a response cut short is an error the client would see.
                resp.into_body().collect().await?;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
            })
            .await;
            let counter = match result {
                Ok(Ok(())) => &stats.answered,
                _ => &stats.transport_errors,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            stats.in_flight.fetch_sub(1, Ordering::Relaxed);
            stats.finished.notify_waiters();
        });
    }
}

fn request(gateway: SocketAddr, n: u64) -> Request<Full<Bytes>> {
    let (method, body) = if n % POST_EVERY == POST_EVERY - 1 {
        (Method::POST, Bytes::from(format!("{{\"order\":{n}}}")))
    } else {
        (Method::GET, Bytes::new())
    };
    let mut builder = Request::builder()
        .method(method.clone())
        .uri(format!("http://{gateway}/items/{n}"));
    if method == Method::POST {
        builder = builder
            .header(http::header::CONTENT_TYPE, "application/json")
            .header("idempotency-key", format!("demo-{n}"));
    }
    builder.body(Full::new(body)).expect("valid request")
}
