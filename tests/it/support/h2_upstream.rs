//! An HTTP/2 upstream on the plain `h2` crate (h2c, prior knowledge), with scripted misbehaviour:
//! a graceful GOAWAY after every N streams of a connection, `REFUSED_STREAM` for some streams
//! (never processed), or a reset after the request was processed. It records what it executed:
//! every request it processed, by its `x-id` header, so a test can count duplicate POSTs.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use h2::server::SendResponse;
use h2::Reason;
use http::{HeaderMap, Request, Response};
use tokio::net::TcpListener;

/// What the upstream does with the streams of each connection.
#[derive(Debug, Clone, Copy)]
pub enum Script {
    /// Answer every stream: 200, the request body echoed, `x-seen-authority` / `x-seen-host`.
    Answer,
    /// Answer, and after the Nth stream of a connection start a graceful shutdown (GOAWAY).
    GoAwayEvery(usize),
    /// Refuse every Nth stream overall with `REFUSED_STREAM`, unprocessed, unless its `x-id`
    /// was refused before (each request is refused at most once); answer the others.
    RefuseEvery(usize),
    /// Process the request (count it, read its body), then reset the stream `INTERNAL_ERROR`.
    ResetAfterProcessing,
}

#[derive(Default)]
pub struct Record {
    pub connections: AtomicUsize,
    pub streams: AtomicUsize,
    pub refused: AtomicUsize,
    pub goaways: AtomicUsize,
    refused_ids: Mutex<std::collections::HashSet<String>>,
    /// Processed requests per `x-id`.
    pub executed: Mutex<HashMap<String, usize>>,
}

impl Record {
    fn first_refusal<B>(&self, req: &Request<B>) -> bool {
        let id = req.headers().get("x-id").and_then(|v| v.to_str().ok());
        let id = id.unwrap_or("").to_string();
        self.refused_ids.lock().unwrap().insert(id)
    }

    pub fn executions(&self, id: &str) -> usize {
        self.executed.lock().unwrap().get(id).copied().unwrap_or(0)
    }

    pub fn duplicates(&self) -> Vec<(String, usize)> {
        let map = self.executed.lock().unwrap();
        map.iter()
            .filter(|(_, n)| **n > 1)
            .map(|(k, n)| (k.clone(), *n))
            .collect()
    }
}

pub struct H2Upstream {
    pub addr: SocketAddr,
    pub record: Arc<Record>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for H2Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn start(script: Script) -> H2Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let record = Arc::new(Record::default());
    let rec = record.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                continue;
            };
            rec.connections.fetch_add(1, Ordering::Relaxed);
            let rec = rec.clone();
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(socket).await else {
                    return;
                };
                let mut on_this_conn = 0;
                while let Some(next) = conn.accept().await {
                    let Ok((req, respond)) = next else { break };
                    on_this_conn += 1;
                    let n = rec.streams.fetch_add(1, Ordering::Relaxed) + 1;
                    let rec2 = rec.clone();
                    match script {
                        Script::RefuseEvery(k) if n % k == 0 && rec.first_refusal(&req) => {
                            rec.refused.fetch_add(1, Ordering::Relaxed);
                            let mut respond = respond;
                            respond.send_reset(Reason::REFUSED_STREAM);
                        }
                        Script::ResetAfterProcessing => {
                            tokio::spawn(async move {
                                let (_, _, _) = process(&rec2, req).await;
                                let mut respond = respond;
                                respond.send_reset(Reason::INTERNAL_ERROR);
                            });
                        }
                        _ => {
                            tokio::spawn(answer(rec2, req, respond));
                        }
                    }
                    if let Script::GoAwayEvery(every) = script {
                        if on_this_conn == every {
                            rec.goaways.fetch_add(1, Ordering::Relaxed);
                            conn.graceful_shutdown();
                        }
                    }
                }
            });
        }
    });
    H2Upstream { addr, record, task }
}

/// Reads the whole request (body and trailers) and counts it as executed.
async fn process(
    rec: &Record,
    req: Request<h2::RecvStream>,
) -> (http::request::Parts, Bytes, Option<HeaderMap>) {
    let (parts, mut body) = req.into_parts();
    let mut data = Vec::new();
    while let Some(chunk) = body.data().await {
        let Ok(chunk) = chunk else { break };
        let _ = body.flow_control().release_capacity(chunk.len());
        data.extend_from_slice(&chunk);
    }
    let trailers = body.trailers().await.ok().flatten();
    if let Some(id) = parts.headers.get("x-id").and_then(|v| v.to_str().ok()) {
        *rec.executed
            .lock()
            .unwrap()
            .entry(id.to_string())
            .or_default() += 1;
    }
    (parts, Bytes::from(data), trailers)
}

async fn answer(rec: Arc<Record>, req: Request<h2::RecvStream>, mut respond: SendResponse<Bytes>) {
    let (parts, body, trailers) = process(&rec, req).await;
    let mut resp = Response::builder()
        .status(200)
        .header(
            "x-seen-authority",
            parts.uri.authority().map_or("", |a| a.as_str()),
        )
        .header(
            "x-seen-host-count",
            parts.headers.get_all("host").iter().count(),
        )
        .header("x-seen-method", parts.method.as_str());
    if let Some(t) = &trailers {
        for (k, v) in t {
            resp = resp.header(format!("x-trailer-{k}"), v);
        }
    }
    let Ok(mut send) = respond.send_response(resp.body(()).unwrap(), false) else {
        return;
    };
    let _ = send.send_data(body, false);
    let mut out = HeaderMap::new();
    out.insert("x-upstream-trailer", "done".parse().unwrap());
    let _ = send.send_trailers(out);
}
