//! The client request before it goes anywhere: checked, and its body made replayable when small.

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, COOKIE, HOST, VIA};
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
        // Over HTTP/2 too: extended CONNECT (RFC 8441, WebSocket over h2) is not offered, so
        // a client falls back to HTTP/1.1 for WebSocket.
        return Err("CONNECT is not supported");
    }
    if head.version == Version::HTTP_2 {
        match (head.uri.authority(), first) {
            (None, None) => return Err("HTTP/2 request without :authority or Host"),
            // RFC 9113 §8.3.1: malformed; forwarding either would let routing and the
            // upstream disagree about the site.
            (Some(a), Some(h)) if !a.as_str().as_bytes().eq_ignore_ascii_case(h.as_bytes()) => {
                return Err("HTTP/2 request whose Host differs from :authority")
            }
            _ => {}
        }
    }
    super::framing::check_request(&head.headers)
}

/// `h1` or `h2`: the protocol a client request came in with, for the access log.
pub fn protocol(version: Version) -> &'static str {
    if version == Version::HTTP_2 {
        "h2"
    } else {
        "h1"
    }
}

/// Whether the client takes response trailers: any HTTP/2 client, and an HTTP/1.1 one that
/// sent `TE: trailers`.
pub fn accepts_trailers(head: &Parts) -> bool {
    head.version == Version::HTTP_2
        || head.headers.get_all(http::header::TE).iter().any(|v| {
            v.to_str().is_ok_and(|v| {
                v.split(',').any(|t| {
                    t.split(';')
                        .next()
                        .unwrap_or("")
                        .trim()
                        .eq_ignore_ascii_case("trailers")
                })
            })
        })
}

/// Gives an HTTP/2 request the shape of an HTTP/1.1 one, before anything reads its headers:
/// its `:authority` (hyper puts it in the URI) becomes the `Host` header when the client sent
/// none, so routing, `X-Forwarded-Host`, `Forwarded: host=`, the log and the upstream all use
/// that one authority (a `Host` that differs is refused by [`validate`]); and its `Cookie`
/// fields, which HTTP/2 lets a client split, are joined into one with `; ` as HTTP/1.1 requires
/// (RFC 9113 §8.2.3). HTTP/1 requests are left as they are.
pub fn from_h2(head: &mut Parts) {
    if head.version != Version::HTTP_2 {
        return;
    }
    if !head.headers.contains_key(HOST) {
        if let Some(v) = head
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        {
            head.headers.insert(HOST, v);
        }
    }
    let mut cookies = head.headers.get_all(COOKIE).iter();
    if let (Some(first), Some(_)) = (cookies.next(), cookies.next()) {
        let mut joined = first.as_bytes().to_vec();
        for c in head.headers.get_all(COOKIE).iter().skip(1) {
            joined.extend_from_slice(b"; ");
            joined.extend_from_slice(c.as_bytes());
        }
        if let Ok(v) = HeaderValue::from_bytes(&joined) {
            head.headers.insert(COOKIE, v);
        }
    }
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
    if head.version == Version::HTTP_2 {
        // `Via` names the protocol this hop received (RFC 9110 §7.6.3); `prepare_request`
        // appended ours last, as `1.1`.
        let mut vias: Vec<HeaderValue> = head.headers.get_all(VIA).iter().cloned().collect();
        if let Some(ours) = vias.last_mut() {
            *ours = HeaderValue::from_static("2 gatewise");
        }
        head.headers.remove(VIA);
        vias.into_iter().for_each(|v| {
            head.headers.append(VIA, v);
        });
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

    fn h2(req: http::request::Builder) -> Parts {
        head(req.version(Version::HTTP_2).body(()).unwrap())
    }

    #[test]
    fn h2_authority_becomes_the_one_host() {
        let mut h = h2(Request::get("https://app.example:8443/a?b=1"));
        assert!(validate(&h).is_ok());
        from_h2(&mut h);
        assert_eq!(h.headers["host"], "app.example:8443");
        let up = upstream_head(h);
        assert_eq!(up.uri, "/a?b=1");
        assert_eq!(up.version, Version::HTTP_11);
        assert_eq!(up.headers.get_all("host").iter().count(), 1);
        assert_eq!(up.headers["host"], "app.example:8443");
        let mut h = h2(Request::get("https://a/")
            .header("via", "1.1 edge")
            .header("via", "1.1 gatewise"));
        from_h2(&mut h);
        let vias: Vec<_> = upstream_head(h)
            .headers
            .get_all("via")
            .iter()
            .cloned()
            .collect();
        assert_eq!(vias, ["1.1 edge", "2 gatewise"]);
        // Host alone (no :authority) is kept; the same name in both is fine.
        let mut h = h2(Request::get("/x").header("host", "b.example"));
        from_h2(&mut h);
        assert!(validate(&h).is_ok());
        assert_eq!(upstream_head(h).headers["host"], "b.example");
        let same = h2(Request::get("https://A.example/").header("host", "a.example"));
        assert!(validate(&same).is_ok());
    }

    #[test]
    fn h2_requests_that_cannot_be_forwarded_are_refused() {
        let differs = h2(Request::get("https://a.example/").header("host", "b.example"));
        assert_eq!(
            validate(&differs),
            Err("HTTP/2 request whose Host differs from :authority")
        );
        let neither = h2(Request::get("/"));
        assert!(validate(&neither).is_err());
        let connect = h2(Request::connect("a.example:443"));
        assert_eq!(validate(&connect), Err("CONNECT is not supported"));
    }

    #[test]
    fn h2_cookie_fields_are_joined_for_http1() {
        let mut h = h2(Request::get("https://a/")
            .header("cookie", "a=1")
            .header("cookie", "b=2")
            .header("cookie", "c=3"));
        from_h2(&mut h);
        assert_eq!(h.headers.get_all("cookie").iter().count(), 1);
        assert_eq!(h.headers["cookie"], "a=1; b=2; c=3");
        // HTTP/1.1 requests are not touched.
        let mut h1 = head(
            Request::get("/")
                .header("cookie", "a=1")
                .header("cookie", "b=2")
                .body(())
                .unwrap(),
        );
        from_h2(&mut h1);
        assert_eq!(h1.headers.get_all("cookie").iter().count(), 2);
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
