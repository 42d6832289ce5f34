//! A lean etcd v3 client: JSON over HTTP/1.1 to etcd's gRPC gateway (`/v3/kv/range`,
//! `/v3/kv/txn`, `/v3/watch`), on the hyper client gatewise already has. Keys and values travel
//! base64-encoded, 64-bit integers as JSON strings. etcd 3.4 (Debian's) serves the gateway
//! under both `/v3/` and `/v3beta/`; 3.5 dropped `/v3beta/`, so `/v3/` is used.
//!
//! Why not the `etcd-client` crate: it brings tonic, prost and a protoc build step for four
//! calls; this is a few hundred lines over dependencies already in the tree.

use std::time::Duration;

use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use serde_json::{json, Value};

/// A unary call (and a watch's response head) must answer within this.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// A watch message larger than this is refused (a config is kilobytes).
const MAX_MESSAGE: usize = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// No endpoint answered (connection refused, timeout, reset).
    #[error("etcd unreachable: {0}")]
    Unreachable(String),
    /// etcd answered with an error.
    #[error("etcd refused the request: {0}")]
    Refused(String),
    /// etcd answered something this client does not understand.
    #[error("unexpected answer from etcd: {0}")]
    Protocol(String),
}

/// One key's value and the revision that last changed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub mod_revision: i64,
}

/// A change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Put(KeyValue),
    Delete { key: Vec<u8>, mod_revision: i64 },
}

/// One message of a watch stream.
#[derive(Debug, Clone, Default)]
pub struct WatchMessage {
    /// The store's revision when etcd sent this message.
    pub revision: i64,
    pub created: bool,
    pub canceled: bool,
    /// Non-zero when the watch was canceled because its start revision was compacted away.
    pub compact_revision: i64,
    pub cancel_reason: String,
    pub events: Vec<Event>,
}

/// The etcd endpoints of `[fleet]`, tried in order until one answers.
#[derive(Clone)]
pub struct Etcd {
    endpoints: Vec<String>,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Etcd {
    /// `endpoints` as `[fleet]` validated them: `http://host:port`.
    pub fn new(endpoints: Vec<String>) -> Etcd {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CALL_TIMEOUT));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Etcd { endpoints, client }
    }

    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// The value of `key` (if set) and the store's revision when it was read.
    pub async fn get(&self, key: &str) -> Result<(i64, Option<KeyValue>), EtcdError> {
        let answer = self
            .call("/v3/kv/range", json!({ "key": b64(key.as_bytes()) }))
            .await?;
        let r: RangeResponse = parse(&answer)?;
        let kv = r
            .kvs
            .into_iter()
            .next()
            .map(KeyValue::try_from)
            .transpose()?;
        Ok((r.header.revision, kv))
    }

    /// Puts every `(key, value)` in one transaction: all or none. Returns the new revision.
    pub async fn put_all(&self, puts: &[(&str, &[u8])]) -> Result<i64, EtcdError> {
        let success: Vec<Value> = puts
            .iter()
            .map(|(k, v)| json!({ "request_put": { "key": b64(k.as_bytes()), "value": b64(v) } }))
            .collect();
        let answer = self
            .call("/v3/kv/txn", json!({ "success": success }))
            .await?;
        let r: TxnResponse = parse(&answer)?;
        if !r.succeeded {
            return Err(EtcdError::Refused("the transaction did not succeed".into()));
        }
        Ok(r.header.revision)
    }

    /// Discards history before `revision` (tests and operators; gatewise never compacts).
    pub async fn compact(&self, revision: i64) -> Result<(), EtcdError> {
        self.call(
            "/v3/kv/compaction",
            json!({ "revision": revision.to_string(), "physical": true }),
        )
        .await
        .map(|_| ())
    }

    /// Watches `key` from `start_revision` on (events at that revision included).
    pub async fn watch(&self, key: &str, start_revision: i64) -> Result<WatchStream, EtcdError> {
        let body = json!({ "create_request": {
            "key": b64(key.as_bytes()),
            "start_revision": start_revision.to_string(),
        }});
        let body = self.send("/v3/watch", &body).await?;
        Ok(WatchStream {
            body,
            buf: BytesMut::new(),
        })
    }

    /// A unary call: the whole answer, or the first endpoint's error if none answered.
    async fn call(&self, path: &str, body: Value) -> Result<Bytes, EtcdError> {
        let incoming = self.send(path, &body).await?;
        let collected = tokio::time::timeout(CALL_TIMEOUT, incoming.collect())
            .await
            .map_err(|_| EtcdError::Unreachable(format!("{path}: no answer in {CALL_TIMEOUT:?}")))?
            .map_err(|e| EtcdError::Unreachable(format!("{path}: {e}")))?;
        Ok(collected.to_bytes())
    }

    /// Sends to each endpoint in turn until one answers 200; gives its body.
    async fn send(&self, path: &str, body: &Value) -> Result<Incoming, EtcdError> {
        let body = Bytes::from(body.to_string());
        let mut last = EtcdError::Unreachable("no endpoint configured".into());
        for endpoint in &self.endpoints {
            let request = hyper::Request::post(format!("{endpoint}{path}"))
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(Full::new(body.clone()))
                .map_err(|e| EtcdError::Protocol(e.to_string()))?;
            let response =
                match tokio::time::timeout(CALL_TIMEOUT, self.client.request(request)).await {
                    Err(_) => {
                        last = EtcdError::Unreachable(format!(
                            "{endpoint}: no answer in {CALL_TIMEOUT:?}"
                        ));
                        continue;
                    }
                    Ok(Err(e)) => {
                        last = EtcdError::Unreachable(format!("{endpoint}: {}", chain(&e)));
                        continue;
                    }
                    Ok(Ok(r)) => r,
                };
            if response.status().is_success() {
                return Ok(response.into_body());
            }
            let status = response.status();
            let text = tokio::time::timeout(CALL_TIMEOUT, response.into_body().collect())
                .await
                .ok()
                .and_then(|r| r.ok())
                .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
                .unwrap_or_default();
            // A 404 means no gateway at that path (not etcd, or an etcd without /v3): an
            // answer all the same, so the next endpoint is not tried for it.
            return Err(EtcdError::Refused(format!(
                "{endpoint}{path}: {status}: {}",
                error_message(&text)
            )));
        }
        Err(last)
    }
}

/// A watch in progress: newline-delimited JSON messages.
pub struct WatchStream {
    body: Incoming,
    buf: BytesMut,
}

impl WatchStream {
    /// The next message; `Ok(None)` when etcd ended the stream.
    pub async fn next(&mut self) -> Result<Option<WatchMessage>, EtcdError> {
        loop {
            if let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
                let line = self.buf.split_to(end + 1);
                let line = line.trim_ascii();
                if line.is_empty() {
                    continue;
                }
                return parse_watch(line).map(Some);
            }
            if self.buf.len() > MAX_MESSAGE {
                return Err(EtcdError::Protocol(format!(
                    "a watch message over {MAX_MESSAGE} bytes"
                )));
            }
            match self.body.frame().await {
                None => {
                    // A last message without its newline.
                    let rest = self.buf.split();
                    let rest = rest.trim_ascii();
                    return if rest.is_empty() {
                        Ok(None)
                    } else {
                        parse_watch(rest).map(Some)
                    };
                }
                Some(Err(e)) => return Err(EtcdError::Unreachable(format!("watch: {e}"))),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
            }
        }
    }
}

fn parse_watch(line: &[u8]) -> Result<WatchMessage, EtcdError> {
    let outer: WatchEnvelope = parse(line)?;
    if let Some(error) = outer.error {
        return Err(EtcdError::Refused(format!(
            "watch: {}",
            error_message(&error.to_string())
        )));
    }
    let r = outer
        .result
        .ok_or_else(|| EtcdError::Protocol("a watch message without result".into()))?;
    let mut events = Vec::with_capacity(r.events.len());
    for e in r.events {
        let kv = KeyValue::try_from(e.kv)?;
        events.push(match e.kind.as_deref() {
            None | Some("PUT") => Event::Put(kv),
            Some("DELETE") => Event::Delete {
                key: kv.key,
                mod_revision: kv.mod_revision,
            },
            Some(other) => return Err(EtcdError::Protocol(format!("event type {other:?}"))),
        });
    }
    Ok(WatchMessage {
        revision: r.header.revision,
        created: r.created,
        canceled: r.canceled,
        compact_revision: r.compact_revision,
        cancel_reason: r.cancel_reason,
        events,
    })
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn unb64(s: &str) -> Result<Vec<u8>, EtcdError> {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|e| EtcdError::Protocol(format!("base64: {e}")))
}

fn parse<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, EtcdError> {
    serde_json::from_slice(bytes).map_err(|e| {
        let shown = String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned();
        EtcdError::Protocol(format!("{e}: {shown}"))
    })
}

/// The `message` (or `error`) of a gateway error body, else the body itself.
fn error_message(text: &str) -> String {
    let v: Value = serde_json::from_str(text).unwrap_or(Value::Null);
    v.get("message")
        .or_else(|| v.get("error"))
        .and_then(Value::as_str)
        .map_or_else(|| text.trim().to_string(), str::to_string)
}

/// An error with its sources (hyper's own message is only "client error (Connect)").
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

/// etcd's JSON writes int64 as a string; accept a number too.
fn int64<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum N {
        S(String),
        I(i64),
    }
    match N::deserialize(d)? {
        N::I(i) => Ok(i),
        N::S(s) => s.parse().map_err(serde::de::Error::custom),
    }
}

#[derive(Deserialize, Default)]
struct Header {
    #[serde(default, deserialize_with = "int64")]
    revision: i64,
}

#[derive(Deserialize)]
struct RawKv {
    #[serde(default)]
    key: String,
    #[serde(default)]
    value: String,
    #[serde(default, deserialize_with = "int64")]
    mod_revision: i64,
}

impl TryFrom<RawKv> for KeyValue {
    type Error = EtcdError;
    fn try_from(kv: RawKv) -> Result<Self, EtcdError> {
        Ok(KeyValue {
            key: unb64(&kv.key)?,
            value: unb64(&kv.value)?,
            mod_revision: kv.mod_revision,
        })
    }
}

#[derive(Deserialize)]
struct RangeResponse {
    #[serde(default)]
    header: Header,
    #[serde(default)]
    kvs: Vec<RawKv>,
}

#[derive(Deserialize)]
struct TxnResponse {
    #[serde(default)]
    header: Header,
    #[serde(default)]
    succeeded: bool,
}

#[derive(Deserialize)]
struct WatchEnvelope {
    result: Option<RawWatch>,
    error: Option<Value>,
}

#[derive(Deserialize)]
struct RawWatch {
    #[serde(default)]
    header: Header,
    #[serde(default)]
    created: bool,
    #[serde(default)]
    canceled: bool,
    #[serde(default, deserialize_with = "int64")]
    compact_revision: i64,
    #[serde(default)]
    cancel_reason: String,
    #[serde(default)]
    events: Vec<RawEvent>,
}

#[derive(Deserialize)]
struct RawEvent {
    #[serde(rename = "type")]
    kind: Option<String>,
    kv: RawKv,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_messages_as_etcd_3_4_writes_them() {
        let created = br#"{"result":{"header":{"revision":"2"},"created":true}}"#;
        let m = parse_watch(created).unwrap();
        assert!(m.created && m.events.is_empty());
        assert_eq!(m.revision, 2);
        let put = br#"{"result":{"header":{"revision":"3"},"events":[{"kv":{"key":"Zm9v","create_revision":"2","mod_revision":"3","version":"2","value":"YmFy"}},{"type":"DELETE","kv":{"key":"Zm9v","mod_revision":"4"}}]}}"#;
        let m = parse_watch(put).unwrap();
        assert_eq!(
            m.events,
            [
                Event::Put(KeyValue {
                    key: b"foo".to_vec(),
                    value: b"bar".to_vec(),
                    mod_revision: 3
                }),
                Event::Delete {
                    key: b"foo".to_vec(),
                    mod_revision: 4
                }
            ]
        );
        let compacted =
            br#"{"result":{"header":{"raft_term":"2"},"canceled":true,"compact_revision":"2"}}"#;
        let m = parse_watch(compacted).unwrap();
        assert!(m.canceled);
        assert_eq!(m.compact_revision, 2);
        assert!(parse_watch(br#"{"error":{"message":"boom"}}"#).is_err());
        assert!(parse_watch(b"not json").is_err());
        assert!(parse_watch(br#"{"result":{"events":[{"kv":{"key":"!!"}}]}}"#).is_err());
    }
}
