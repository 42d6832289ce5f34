//! The framing of every message gatewise writes — requests up, responses down — decided here
//! and nowhere else (RFC 9112 §6).
//!
//! hyper decodes what it reads (chunked, by length, or to EOF) and hands over the decoded body,
//! so the `Content-Length` and `Transfer-Encoding` a message arrived with describe bytes on a wire
//! we read, not the bytes we write. hyper frames what it writes from the body's size *and* from a
//! `Content-Length` left in the header map, trusting the header: a stale one cuts the body short
//! without any error (issue #11: an upstream's `Content-Length` kept next to its chunked body).
//! So both are removed from every forwarded message and the framing is set again from the
//! decoded body: its length when known, chunked otherwise (hyper falls back to close-delimited
//! for an HTTP/1.0 client). Only a response that has no body but describes one — to a HEAD, or
//! a 304 — keeps the `Content-Length` it came with.

use http::header::{HeaderMap, HeaderValue, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{Method, StatusCode};

/// A transfer coding other than `chunked`: gatewise only undoes chunked, so forwarding the bytes
/// under any other coding would misdescribe them.
fn other_coding(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("?").split(','))
        .map(str::trim)
        .find(|c| !c.eq_ignore_ascii_case("chunked"))
        .map(str::to_string)
}

/// Checks a client request's transfer codings (hyper has already refused one that does not end
/// in `chunked`, and dropped a `Content-Length` sent with `Transfer-Encoding`).
pub fn check_request(headers: &HeaderMap) -> Result<(), &'static str> {
    match other_coding(headers) {
        Some(_) => Err("transfer codings other than chunked are not supported"),
        None => Ok(()),
    }
}

/// Frames the request sent upstream. `length`: the body's size when known (a buffered body, or a
/// declared `Content-Length`), `None` for a body of unknown length still streaming.
pub fn request(headers: &mut HeaderMap, length: Option<u64>) {
    let had_length = headers.remove(CONTENT_LENGTH).is_some();
    let had_coding = headers.remove(TRANSFER_ENCODING).is_some();
    match length {
        // No body: a request that said so (`Content-Length: 0`, or an empty chunked body) says
        // so upstream too, as some servers answer a bodiless POST with 411.
        Some(0) if !(had_length || had_coding) => {}
        Some(len) => {
            headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
        }
        // Set here, not left to hyper: for a GET or HEAD of unknown length it would send no
        // body at all.
        None => {
            headers.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        }
    }
}

/// Frames the response sent to the client: the upstream's framing headers go, hyper frames the
/// decoded body. Refuses a response under a transfer coding gatewise does not undo.
pub fn response(
    method: &Method,
    status: StatusCode,
    headers: &mut HeaderMap,
) -> Result<(), String> {
    if headers.contains_key(TRANSFER_ENCODING) {
        if let Some(coding) = other_coding(headers) {
            return Err(format!(
                "unsupported transfer coding {coding:?} in the response"
            ));
        }
        // RFC 9112 §6.3: with Transfer-Encoding, Content-Length is ignored, and a proxy
        // forwarding the message must remove it.
        headers.remove(TRANSFER_ENCODING);
        headers.remove(CONTENT_LENGTH);
        return Ok(());
    }
    let describes_absent_body = *method == Method::HEAD || status == StatusCode::NOT_MODIFIED;
    if !describes_absent_body {
        headers.remove(CONTENT_LENGTH);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::test_headers as map;

    #[test]
    fn response_with_length_and_chunked_loses_both() {
        let mut h = map(&[("content-length", "5"), ("transfer-encoding", "chunked")]);
        response(&Method::GET, StatusCode::OK, &mut h).unwrap();
        assert!(h.is_empty(), "{h:?}");
    }

    #[test]
    fn head_and_304_keep_the_length_they_describe() {
        for (method, status) in [
            (Method::HEAD, StatusCode::OK),
            (Method::GET, StatusCode::NOT_MODIFIED),
        ] {
            let mut h = map(&[("content-length", "1234")]);
            response(&method, status, &mut h).unwrap();
            assert_eq!(h["content-length"], "1234");
        }
        let mut h = map(&[("content-length", "1234")]);
        response(&Method::GET, StatusCode::OK, &mut h).unwrap();
        assert!(
            !h.contains_key("content-length"),
            "hyper sets it from the body"
        );
    }

    #[test]
    fn other_transfer_codings_are_refused_both_ways() {
        let mut h = map(&[("transfer-encoding", "gzip, chunked")]);
        assert!(response(&Method::GET, StatusCode::OK, &mut h).is_err());
        let h = map(&[
            ("transfer-encoding", "chunked"),
            ("transfer-encoding", "gzip"),
        ]);
        assert!(check_request(&h).is_err());
        assert!(check_request(&map(&[("transfer-encoding", "Chunked")])).is_ok());
    }

    #[test]
    fn request_framing_follows_the_body() {
        let mut h = map(&[("content-length", "5"), ("transfer-encoding", "chunked")]);
        request(&mut h, None);
        assert_eq!(h["transfer-encoding"], "chunked");
        assert!(!h.contains_key("content-length"));

        let mut h = map(&[("transfer-encoding", "chunked")]);
        request(&mut h, Some(5));
        assert_eq!(h["content-length"], "5");
        assert!(!h.contains_key("transfer-encoding"));

        let mut h = map(&[("content-length", "0")]);
        request(&mut h, Some(0));
        assert_eq!(h["content-length"], "0");

        let mut h = HeaderMap::new();
        request(&mut h, Some(0));
        assert!(h.is_empty());
    }
}
