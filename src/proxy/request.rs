//! The client request before it goes anywhere: checked, and its body made replayable when small.

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, HOST};
use http::request::Parts;
use http::{HeaderValue, Method, Uri, Version};
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::pin::Pin;
use std::task::Poll;
use tokio::time::Instant;

use crate::body::{Streamed, UpstreamBody};
use crate::cause::Cause;

/// Checks what hyper's parser lets through but a proxy must not forward. Returns the reason.
pub fn validate(head: &Parts) -> Result<(), &'static str> {
    let mut hosts = head.headers.get_all(HOST).iter();
    let first = hosts.next();
    if hosts.next().is_some() {
        return Err("more than one Host header");
    }
    if first.is_none() && head.version == Version::HTTP_11 && head.uri.authority().is_none() {
        return Err("HTTP/1.1 request without a Host header");
    }
    if head.method == Method::CONNECT {
        return Err("CONNECT is not supported");
    }
    super::framing::check_request(&head.headers)
}

/// The request body, kept so it can be sent again, or streamed once.
pub enum RequestBody {
    /// Fits the replay buffer (empty bodies too): every attempt gets a copy.
    Replayable(Bytes),
    /// Larger, or not all here yet: streamed to the first attempt that sends it.
    Stream(Option<Streamed>),
}

impl RequestBody {
    /// Makes the body replayable when it fits `limit`: a body with a declared length that fits is
    /// read (by `deadline`); a body of unknown length (chunked) is kept if all of it has already
    /// arrived — gatewise never waits for more of it, so a slow stream is not held back.
    /// Anything else streams, starting with what was read.
    pub async fn read(
        body: Incoming,
        head: &Parts,
        limit: usize,
        deadline: Instant,
    ) -> Result<RequestBody, (Cause, String)> {
        if http_body::Body::is_end_stream(&body) {
            return Ok(RequestBody::Replayable(Bytes::new()));
        }
        match declared_length(head) {
            Some(len) if len <= limit as u64 => {
                match tokio::time::timeout_at(deadline, body.collect()).await {
                    Ok(Ok(collected)) => Ok(RequestBody::Replayable(collected.to_bytes())),
                    Ok(Err(e)) => Err((
                        Cause::HttpRequestError,
                        format!("reading request body: {e}"),
                    )),
                    Err(_) => Err((
                        Cause::HttpRequestError,
                        format!(
                            "request body of {len} bytes not received before the route deadline"
                        ),
                    )),
                }
            }
            Some(_) => Ok(RequestBody::Stream(Some(Streamed::new(Vec::new(), body)))),
            None => read_what_arrived(body, limit).await,
        }
    }

    pub fn replayable(&self) -> bool {
        matches!(self, RequestBody::Replayable(_))
    }

    /// Request bytes known up front (for the access log).
    pub fn known_len(&self, head: &Parts) -> u64 {
        match self {
            RequestBody::Replayable(b) => b.len() as u64,
            RequestBody::Stream(_) => declared_length(head).unwrap_or(0),
        }
    }

    /// The body's length when known (what [`super::framing::request`] sends upstream); `None`
    /// for a body of unknown length that streams.
    pub fn length(&self, head: &Parts) -> Option<u64> {
        match self {
            RequestBody::Replayable(b) => Some(b.len() as u64),
            RequestBody::Stream(_) => declared_length(head),
        }
    }

    /// The body for the next attempt; `None` once a streamed body was used.
    pub fn for_attempt(&mut self) -> Option<UpstreamBody> {
        match self {
            RequestBody::Replayable(b) if b.is_empty() => Some(UpstreamBody::Empty),
            RequestBody::Replayable(b) => Some(UpstreamBody::Full(Some(b.clone()))),
            RequestBody::Stream(body) => body.take().map(UpstreamBody::Stream),
        }
    }
}

fn declared_length(head: &Parts) -> Option<u64> {
    head.headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// Takes the frames of a body of unknown length that are already here, without waiting on the
/// network: when no frame is ready, it yields once so hyper's connection task can decode bytes
/// already read, and stops at the next miss.
async fn read_what_arrived(
    mut body: Incoming,
    limit: usize,
) -> Result<RequestBody, (Cause, String)> {
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut size = 0usize;
    let mut yielded = false;
    loop {
        let next = std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx))).await;
        match next {
            Poll::Ready(None) => {
                let mut all = bytes::BytesMut::with_capacity(size);
                chunks.iter().for_each(|c| all.extend_from_slice(c));
                return Ok(RequestBody::Replayable(all.freeze()));
            }
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => {
                    yielded = false;
                    size += data.len();
                    chunks.push(data);
                    if size > limit {
                        break;
                    }
                }
                // Trailers: rare on requests; stream them rather than replay.
                Err(_) => break,
            },
            Poll::Ready(Some(Err(e))) => {
                return Err((
                    Cause::HttpRequestError,
                    format!("reading request body: {e}"),
                ))
            }
            Poll::Pending if !yielded => {
                yielded = true;
                tokio::task::yield_now().await;
            }
            Poll::Pending => break,
        }
    }
    Ok(RequestBody::Stream(Some(Streamed::new(chunks, body))))
}

/// An absolute-form target (`GET http://a.test/x`) names the authority; the `Host` header is
/// then ignored (RFC 9112 §3.2.2): it is replaced by the target's host and port (never its
/// userinfo), so that every later reader of `Host` sees the one authority the request is for.
pub fn authority_as_host(head: &mut Parts) {
    let Some(authority) = head.uri.authority() else {
        return;
    };
    let host = match authority.port() {
        Some(port) => HeaderValue::from_str(&format!("{}:{port}", authority.host())),
        None => HeaderValue::from_str(authority.host()),
    };
    if let Ok(host) = host {
        head.headers.insert(HOST, host);
    }
}

/// The upstream request head, made from the client's in place: origin-form URI, HTTP/1.1,
/// `Host` kept (see [`authority_as_host`] for an absolute-form URI).
pub fn upstream_head(mut head: Parts) -> Parts {
    if head.uri.scheme().is_some() {
        if let Some(pq) = head.uri.path_and_query() {
            head.uri = Uri::from(pq.clone());
        }
    }
    head.version = Version::HTTP_11;
    head
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;

    fn head(req: Request<()>) -> Parts {
        req.into_parts().0
    }

    #[test]
    fn host_rules() {
        let ok = head(Request::get("/").header("host", "a").body(()).unwrap());
        assert!(validate(&ok).is_ok());
        let none = head(Request::get("/").body(()).unwrap());
        assert!(validate(&none).is_err());
        let two = head(
            Request::get("/")
                .header("host", "a")
                .header("host", "b")
                .body(())
                .unwrap(),
        );
        assert!(validate(&two).is_err());
        let http10 = head(
            Request::get("/")
                .version(Version::HTTP_10)
                .body(())
                .unwrap(),
        );
        assert!(validate(&http10).is_ok());
    }

    #[test]
    fn absolute_form_becomes_origin_form_with_its_host() {
        let h = head(
            Request::get("http://example.com:8080/a?b=1")
                .header("host", "other")
                .body(())
                .unwrap(),
        );
        let mut h = h;
        authority_as_host(&mut h);
        let up = upstream_head(h);
        assert_eq!(up.uri, "/a?b=1");
        assert_eq!(up.headers["host"], "example.com:8080");
        assert_eq!(up.version, Version::HTTP_11);

        let mut h = head(
            Request::get("http://user:pw@example.com/a")
                .header("host", "other")
                .body(())
                .unwrap(),
        );
        authority_as_host(&mut h);
        assert_eq!(h.headers["host"], "example.com", "no userinfo in Host");
    }
}
