//! The client request before it goes anywhere: checked, and its body made replayable when small.

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, HOST};
use http::request::Parts;
use http::{HeaderValue, Method, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::error::Cause;
use crate::body::UpstreamBody;

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
    Ok(())
}

/// The request body, kept so it can be sent again, or streamed once.
pub enum RequestBody {
    /// Fits the replay buffer (empty bodies too): every attempt gets a copy.
    Replayable(Bytes),
    /// Larger or of unknown length: streamed to the first attempt that sends it.
    Stream(Option<Incoming>),
}

impl RequestBody {
    /// Reads a body whose declared length fits `limit`; anything else streams.
    pub async fn read(
        body: Incoming,
        head: &Parts,
        limit: usize,
    ) -> Result<RequestBody, (Cause, String)> {
        if http_body::Body::is_end_stream(&body) {
            return Ok(RequestBody::Replayable(Bytes::new()));
        }
        let declared = head
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        match declared {
            Some(len) if len <= limit as u64 => match body.collect().await {
                Ok(collected) => Ok(RequestBody::Replayable(collected.to_bytes())),
                Err(e) => Err((
                    Cause::HttpRequestError,
                    format!("reading request body: {e}"),
                )),
            },
            _ => Ok(RequestBody::Stream(Some(body))),
        }
    }

    pub fn replayable(&self) -> bool {
        matches!(self, RequestBody::Replayable(_))
    }

    /// Request bytes known up front (for the access log).
    pub fn known_len(&self, head: &Parts) -> u64 {
        match self {
            RequestBody::Replayable(b) => b.len() as u64,
            RequestBody::Stream(_) => head
                .headers
                .get(CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
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

/// The upstream request head, made from the client's in place: origin-form URI, HTTP/1.1,
/// `Host` kept (or taken from an absolute-form URI).
pub fn upstream_head(mut head: Parts) -> Parts {
    if let Some(authority) = head.uri.authority() {
        if let Ok(v) = HeaderValue::from_str(authority.as_str()) {
            head.headers.insert(HOST, v);
        }
    }
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
        let up = upstream_head(h);
        assert_eq!(up.uri, "/a?b=1");
        assert_eq!(up.headers["host"], "example.com:8080");
        assert_eq!(up.version, Version::HTTP_11);
    }
}
