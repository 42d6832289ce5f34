//! Client traffic for chaos tests: requests in a loop, each with a unique `x-request-id`,
//! bounded in count, with every outcome recorded.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::Full;

use super::TestClient;

/// One request's result: status (0 for a transport error) and its id.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub status: u16,
    pub id: String,
    pub proxy_status: Option<String>,
}

/// Sends requests from `workers` concurrent loops until `stop` is set (or `max` per worker),
/// pausing `gap` between requests of one loop.
pub async fn run(
    client: TestClient,
    url: String,
    method: Method,
    workers: usize,
    gap: Duration,
    max: usize,
    stop: Arc<AtomicBool>,
) -> Vec<Outcome> {
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..workers {
        let (client, url, method, stop) =
            (client.clone(), url.clone(), method.clone(), stop.clone());
        tasks.spawn(async move {
            let mut out = Vec::new();
            for i in 0..max {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let id = format!("w{w}-{i}");
                let body = if method == Method::POST {
                    Bytes::from(format!("payload {id}"))
                } else {
                    Bytes::new()
                };
                let req = Request::builder()
                    .method(method.clone())
                    .uri(&url)
                    .header("x-request-id", &id)
                    .body(Full::new(body))
                    .unwrap();
                let (status, proxy_status) =
                    match tokio::time::timeout(Duration::from_secs(10), send_checked(&client, req))
                        .await
                    {
                        Ok(Some((s, ps))) => (s, ps),
                        _ => (0, None),
                    };
                out.push(Outcome {
                    status,
                    id,
                    proxy_status,
                });
                if !gap.is_zero() {
                    tokio::time::sleep(gap).await;
                }
            }
            out
        });
    }
    let mut all = Vec::new();
    while let Some(r) = tasks.join_next().await {
        all.extend(r.unwrap());
    }
    all
}

async fn send_checked(
    client: &TestClient,
    req: Request<Full<Bytes>>,
) -> Option<(u16, Option<String>)> {
    let resp = client.request(req).await.ok()?;
    let status = resp.status().as_u16();
    let ps = resp
        .headers()
        .get("proxy-status")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let _ = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .ok()?;
    Some((status, ps))
}

/// Outcomes that are not 2xx, for assertion messages.
pub fn errors(outcomes: &[Outcome]) -> Vec<&Outcome> {
    outcomes
        .iter()
        .filter(|o| !(200..300).contains(&o.status))
        .collect()
}
