//! Header rewriting at the proxy boundary: hop-by-hop headers removed in both directions,
//! `X-Forwarded-*`, `Forwarded`, `Via` and `X-Request-Id` added on the way up.

use std::net::SocketAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static VIA_VALUE: HeaderValue = HeaderValue::from_static("1.1 gatewise");

/// Headers that describe one connection, never forwarded (RFC 9110 §7.6.1). The framing headers
/// (`Transfer-Encoding`, `Content-Length`) are [`super::framing`]'s alone: always replaced there,
/// never removed here, even when `Connection` names them.
fn is_framing(name: &HeaderName) -> bool {
    *name == header::TRANSFER_ENCODING || *name == header::CONTENT_LENGTH
}

/// `Trailer` is not one (RFC 9110 §6.6.2): it names the trailer fields end to end, and an
/// HTTP/1.1 hop sends trailers only when it lists them.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    *name == header::CONNECTION
        || *name == KEEP_ALIVE
        || *name == PROXY_CONNECTION
        || *name == header::TE
        || *name == header::UPGRADE
        || *name == header::PROXY_AUTHORIZATION
        || *name == header::PROXY_AUTHENTICATE
}

/// Removes hop-by-hop headers, and those the `Connection` header names. One pass finds them,
/// so the common message with none (or only `Connection: keep-alive`) costs no lookups.
fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let mut found: Vec<HeaderName> = Vec::new();
    for name in headers.keys() {
        if is_hop_by_hop(name) {
            found.push(name.clone());
        }
    }
    if found.is_empty() {
        return;
    }
    for value in headers.get_all(header::CONNECTION) {
        let Ok(value) = value.to_str() else { continue };
        for listed in value.split(',') {
            let listed = listed.trim();
            if listed.eq_ignore_ascii_case("keep-alive") || listed.eq_ignore_ascii_case("close") {
                continue;
            }
            if let Ok(name) = HeaderName::from_bytes(listed.as_bytes()) {
                if !is_framing(&name) {
                    found.push(name);
                }
            }
        }
    }
    for name in found {
        headers.remove(name);
    }
}

/// Rewrites a client request's headers for the upstream; `proto` is how the client reached us
/// (`"http"` or `"https"`). Returns the request id (taken from the client's `X-Request-Id` or
/// generated).
pub fn prepare_request(
    headers: &mut HeaderMap,
    client: SocketAddr,
    proto: &'static str,
) -> HeaderValue {
    remove_hop_by_hop(headers);
    headers.remove(header::EXPECT);

    use std::fmt::Write;
    let mut xff = String::with_capacity(48);
    // Every earlier hop's line, in order (a value that is not text is dropped: it cannot be
    // forwarded as a header value anyway).
    for prev in headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
    {
        xff.push_str(prev);
        xff.push_str(", ");
    }
    let _ = write!(xff, "{}", client.ip());
    if let Ok(v) = HeaderValue::from_str(&xff) {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
    if let Some(host) = headers.get(header::HOST).cloned() {
        headers.insert(X_FORWARDED_HOST.clone(), host);
    }
    drop_unbalanced_forwarded(headers);
    headers.append(header::FORWARDED, forwarded_element(headers, client, proto));
    headers.append(header::VIA, VIA_VALUE.clone());

    match headers.get(&X_REQUEST_ID) {
        Some(id) if !id.is_empty() => id.clone(),
        _ => {
            let id = new_request_id();
            headers.insert(X_REQUEST_ID.clone(), id.clone());
            id
        }
    }
}

/// Removes incoming `Forwarded` lines whose quoted strings do not close: joined with ours by the
/// upstream, an open quote would swallow our element and let the client's `for=` pass as the
/// last hop's.
fn drop_unbalanced_forwarded(headers: &mut HeaderMap) {
    let balanced = |v: &HeaderValue| {
        let (mut quoted, mut escaped) = (false, false);
        for &b in v.as_bytes() {
            match b {
                _ if escaped => escaped = false,
                b'\\' if quoted => escaped = true,
                b'"' => quoted = !quoted,
                _ => {}
            }
        }
        !quoted
    };
    if headers.get_all(header::FORWARDED).iter().all(balanced) {
        return;
    }
    let kept: Vec<HeaderValue> = headers
        .get_all(header::FORWARDED)
        .iter()
        .filter(|v| balanced(v))
        .cloned()
        .collect();
    headers.remove(header::FORWARDED);
    for v in kept {
        headers.append(header::FORWARDED, v);
    }
}

/// This hop's RFC 7239 `Forwarded` element, appended after those of earlier hops:
/// `for=192.0.2.7;host="example.com";proto=http` (an IPv6 client is quoted and bracketed; a Host
/// that cannot be a quoted string is left out rather than forwarded mangled).
fn forwarded_element(headers: &HeaderMap, client: SocketAddr, proto: &str) -> HeaderValue {
    use std::fmt::Write;
    let mut v = String::with_capacity(64);
    match client.ip() {
        std::net::IpAddr::V4(ip) => {
            let _ = write!(v, "for={ip}");
        }
        std::net::IpAddr::V6(ip) => {
            let _ = write!(v, "for=\"[{ip}]\"");
        }
    }
    let host = headers.get(header::HOST).map(HeaderValue::as_bytes);
    if let Some(host) = host.filter(|h| {
        h.iter()
            .all(|&b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
    }) {
        v.push_str(";host=\"");
        v.push_str(std::str::from_utf8(host).unwrap_or_default());
        v.push('"');
    }
    v.push_str(";proto=");
    v.push_str(proto);
    // The string's buffer becomes the value: no second copy.
    HeaderValue::from_maybe_shared(bytes::Bytes::from(v)).expect("built from visible ASCII only")
}

/// Rewrites an upstream response's headers for the client. Returns the upstream's
/// `Keep-Alive: timeout=` and whether it asked to close the connection.
pub fn prepare_response(headers: &mut HeaderMap) -> (Option<std::time::Duration>, bool) {
    let keep_alive = headers
        .get(&KEEP_ALIVE)
        .and_then(|v| crate::upstream::pool::keep_alive_timeout(v.as_bytes()));
    let close = headers
        .get_all(header::CONNECTION)
        .iter()
        .any(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
    remove_hop_by_hop(headers);
    headers.append(header::VIA, VIA_VALUE.clone());
    (keep_alive, close)
}

/// 128 random bits as 32 hex digits.
pub fn new_request_id() -> HeaderValue {
    let mut buf = [0u8; 32];
    let n: u128 = ((fastrand::u64(..) as u128) << 64) | fastrand::u64(..) as u128;
    for (i, b) in buf.iter_mut().enumerate() {
        let nibble = ((n >> (124 - 4 * i)) & 0xf) as u8;
        *b = b"0123456789abcdef"[nibble as usize];
    }
    HeaderValue::from_bytes(&buf).expect("hex is a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::test_headers as map;

    #[test]
    fn requests_from_a_tls_listener_say_https() {
        let mut h = map(&[("host", "example.com")]);
        prepare_request(&mut h, "192.0.2.7:5555".parse().unwrap(), "https");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(
            h["forwarded"],
            "for=192.0.2.7;host=\"example.com\";proto=https"
        );
    }

    #[test]
    fn request_loses_hop_by_hop_and_gains_forwarding_headers() {
        let mut h = map(&[
            ("host", "example.com"),
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("upgrade", "h2c"),
            ("expect", "100-continue"),
            ("x-forwarded-for", "10.0.0.1"),
            ("x-keep", "yes"),
        ]);
        let id = prepare_request(&mut h, "192.0.2.7:5555".parse().unwrap(), "http");
        for gone in [
            "connection",
            "x-secret",
            "keep-alive",
            "te",
            "upgrade",
            "expect",
        ] {
            assert!(!h.contains_key(gone), "{gone} should be removed");
        }
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 192.0.2.7");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "example.com");
        assert_eq!(
            h["forwarded"],
            "for=192.0.2.7;host=\"example.com\";proto=http"
        );
        assert_eq!(h["via"], "1.1 gatewise");
        assert_eq!(h["x-keep"], "yes");
        assert_eq!(h["x-request-id"], id);
        assert_eq!(id.len(), 32);
    }

    #[test]
    fn every_forwarded_for_line_is_kept() {
        let mut h = map(&[
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-for", "10.0.0.2, 10.0.0.3"),
        ]);
        prepare_request(&mut h, "192.0.2.9:1".parse().unwrap(), "http");
        assert_eq!(
            h["x-forwarded-for"],
            "10.0.0.1, 10.0.0.2, 10.0.0.3, 192.0.2.9"
        );
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
    }

    #[test]
    fn forwarded_keeps_earlier_hops_and_quotes_what_needs_it() {
        let mut h = map(&[
            ("forwarded", "for=10.0.0.1;proto=https"),
            ("host", "app.example:8443"),
        ]);
        prepare_request(&mut h, "[2001:db8::7]:1".parse().unwrap(), "http");
        let all: Vec<_> = h.get_all("forwarded").iter().collect();
        assert_eq!(
            all,
            [
                "for=10.0.0.1;proto=https",
                "for=\"[2001:db8::7]\";host=\"app.example:8443\";proto=http"
            ]
        );
        // A client's line with an open quote would swallow ours downstream: dropped.
        let mut h = map(&[
            ("forwarded", "for=10.0.0.1"),
            ("forwarded", "for=6.6.6.6;x=\"open"),
            ("forwarded", "for=10.0.0.2;x=\"a\\\"b\""),
        ]);
        prepare_request(&mut h, "192.0.2.1:1".parse().unwrap(), "http");
        let all: Vec<_> = h.get_all("forwarded").iter().collect();
        assert_eq!(
            all,
            [
                "for=10.0.0.1",
                "for=10.0.0.2;x=\"a\\\"b\"",
                "for=192.0.2.1;proto=http"
            ]
        );
        // A Host with a quote cannot be a quoted string: left out, the rest still sent.
        let mut h = map(&[("host", "a\"b")]);
        prepare_request(&mut h, "192.0.2.1:1".parse().unwrap(), "http");
        assert_eq!(h["forwarded"], "for=192.0.2.1;proto=http");
    }

    #[test]
    fn client_request_id_is_kept() {
        let mut h = map(&[("x-request-id", "abc-123")]);
        assert_eq!(
            prepare_request(&mut h, "[::1]:1".parse().unwrap(), "http"),
            "abc-123"
        );
        assert_eq!(h["x-forwarded-for"], "::1");
    }

    #[test]
    fn response_reports_keep_alive_and_close() {
        let mut h = map(&[
            ("keep-alive", "timeout=3"),
            ("connection", "close"),
            ("a", "b"),
        ]);
        let (ka, close) = prepare_response(&mut h);
        assert_eq!(ka, Some(std::time::Duration::from_secs(3)));
        assert!(close);
        assert!(!h.contains_key("keep-alive") && !h.contains_key("connection"));
        assert_eq!(h["via"], "1.1 gatewise");
    }

    #[test]
    fn request_ids_differ() {
        assert_ne!(new_request_id(), new_request_id());
    }
}
