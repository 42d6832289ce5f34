//! The API-server client: one HTTP/1.1 GET per list or watch, over the upstream connector
//! (TCP + our rustls setup), with the bearer token read again for every request (in a cluster
//! the kubelet rotates it on disk).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use super::slices::{SliceList, Status};
use crate::upstream::connect::{Connector, Endpoint};
use crate::upstream::tls::{self, TlsClient};

/// A list larger than this is refused rather than buffered.
const MAX_LIST_BYTES: usize = 64 << 20;
/// One watch event larger than this ends the watch.
const MAX_EVENT_BYTES: usize = 16 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const LIST_TIMEOUT: Duration = Duration::from_secs(60);

/// How requests prove who we are.
#[derive(Debug, Clone)]
pub enum Auth {
    None,
    Token(String),
    /// Read before each request: projected service-account tokens are rotated.
    TokenFile(PathBuf),
}

/// Where the API server is and how to talk to it.
#[derive(Debug, Clone)]
pub struct ApiServer {
    /// `https://host:port` or `http://host:port` with any path prefix, for messages.
    pub url: String,
    /// `host:port`.
    pub addr: String,
    /// The Host header.
    pub authority: String,
    /// A path the server URL carries (a proxy in front), without the trailing slash.
    pub prefix: String,
    pub tls: Option<Arc<TlsClient>>,
    pub auth: Auth,
}

/// Why a request got nothing usable.
#[derive(Debug)]
pub enum ApiError {
    /// 410: the version asked for is gone; list again.
    Gone,
    Failed(String),
}

impl ApiServer {
    /// Sends `GET path_and_query` and returns the response head and body once the status is
    /// 200; the connection lives as long as the body is read.
    async fn get(&self, path_and_query: &str) -> Result<Response, ApiError> {
        let failed = |what: String| ApiError::Failed(format!("{}: {what}", self.url));
        let stream = Connector::new(CONNECT_TIMEOUT)
            .connect(&Endpoint::new(&self.addr, self.tls.as_ref()))
            .await
            .map_err(|e| failed(format!("cannot connect: {}", e.detail)))?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| failed(format!("HTTP handshake: {e}")))?;
        let driver = AbortOnDrop(tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(err = %e, "Kubernetes API connection ended");
            }
        }));
        let mut req = Request::get(format!("{}{path_and_query}", self.prefix))
            .header(http::header::HOST, &self.authority)
            .header(http::header::ACCEPT, "application/json")
            .header(http::header::USER_AGENT, "gatewise");
        if let Some(token) = self.token().map_err(failed)? {
            req = req.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let req = req
            .body(Empty::<Bytes>::new())
            .map_err(|e| failed(format!("request: {e}")))?;
        let resp = send.send_request(req).await.map_err(|e| {
            // With TLS 1.3 a refused client certificate is known only now: name it.
            let why = match tls::rustls_error_in(&e) {
                Some(t) => tls::tls_error_words(t, &self.addr).1,
                None => e.to_string(),
            };
            failed(format!("GET {path_and_query}: {why}"))
        })?;
        let status = resp.status();
        if status == StatusCode::OK {
            return Ok(Response {
                body: resp.into_body(),
                _driver: driver,
            });
        }
        if status == StatusCode::GONE {
            return Err(ApiError::Gone);
        }
        // The body is a Status object whose message says why; read a little of it.
        let body = tokio::time::timeout(
            Duration::from_secs(5),
            Limited::new(resp.into_body(), 64 << 10).collect(),
        )
        .await
        .ok()
        .and_then(Result::ok)
        .map(|c| c.to_bytes())
        .unwrap_or_default();
        let message = serde_json::from_slice::<Status>(&body)
            .map(|s| s.message)
            .unwrap_or_else(|_| String::from_utf8_lossy(&body).trim().to_string());
        let hint = match status {
            StatusCode::UNAUTHORIZED => " (the token or client certificate was not accepted)",
            StatusCode::FORBIDDEN => {
                " (gatewise needs get, list and watch on endpointslices.discovery.k8s.io in \
                 this namespace: see deploy/kubernetes/rbac.yaml)"
            }
            _ => "",
        };
        Err(failed(format!(
            "GET {path_and_query}: {status}{hint}: {message}"
        )))
    }

    pub(super) fn token(&self) -> Result<Option<String>, String> {
        match &self.auth {
            Auth::None => Ok(None),
            Auth::Token(t) => Ok(Some(t.clone())),
            Auth::TokenFile(path) => std::fs::read_to_string(path)
                .map(|t| Some(t.trim().to_string()))
                .map_err(|e| format!("cannot read the token {}: {e}", path.display())),
        }
    }

    /// Lists the slices at `path` (a query selects them).
    pub async fn list(&self, path_and_query: &str) -> Result<SliceList, ApiError> {
        let fetch = async {
            let resp = self.get(path_and_query).await?;
            let body = Limited::new(resp.body, MAX_LIST_BYTES)
                .collect()
                .await
                .map_err(|e| ApiError::Failed(format!("{}: reading the list: {e}", self.url)))?
                .to_bytes();
            serde_json::from_slice::<SliceList>(&body).map_err(|e| {
                ApiError::Failed(format!("{}: unreadable EndpointSliceList: {e}", self.url))
            })
        };
        tokio::time::timeout(LIST_TIMEOUT, fetch)
            .await
            .unwrap_or_else(|_| {
                Err(ApiError::Failed(format!(
                    "{}: no list within {}s",
                    self.url,
                    LIST_TIMEOUT.as_secs()
                )))
            })
    }

    /// Starts a watch at `path`; its events are read line by line from the result.
    pub async fn watch(&self, path_and_query: &str) -> Result<Lines, ApiError> {
        let resp = self.get(path_and_query).await?;
        Ok(Lines {
            resp,
            buf: BytesMut::new(),
        })
    }
}

struct Response {
    body: Incoming,
    _driver: AbortOnDrop,
}

/// Ends the connection's task when the response is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A watch response, split into its newline-delimited events.
pub struct Lines {
    resp: Response,
    buf: BytesMut,
}

impl Lines {
    /// The next non-empty line; `Ok(None)` when the server ended the stream cleanly, an error
    /// when the connection broke or a line is too long.
    pub async fn next(&mut self) -> Result<Option<Bytes>, String> {
        loop {
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let line = self.buf.split_to(pos + 1).freeze();
                let line = line.slice(..pos);
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return Ok(Some(line));
            }
            if self.buf.len() > MAX_EVENT_BYTES {
                return Err(format!("a watch event over {MAX_EVENT_BYTES} bytes"));
            }
            match self.resp.body.frame().await {
                None => {
                    // A last line without its newline still counts.
                    if self.buf.iter().all(u8::is_ascii_whitespace) {
                        return Ok(None);
                    }
                    let rest = self.buf.split().freeze();
                    return Ok(Some(rest));
                }
                Some(Err(e)) => return Err(format!("watch connection broke: {e}")),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
            }
        }
    }
}
