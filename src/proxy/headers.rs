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

/// The hop-by-hop headers, by bit in [`remove_hop_by_hop`]'s mask. `Trailer` is not one
/// (RFC 9110 §6.6.2): it names the trailer fields end to end, and an HTTP/1.1 hop sends
/// trailers only when it lists them.
fn hop_by_hop_bit(name: &HeaderName) -> u16 {
    match name {
        n if *n == header::CONNECTION => 1,
        n if *n == KEEP_ALIVE => 1 << 1,
        n if *n == PROXY_CONNECTION => 1 << 2,
        n if *n == header::TE => 1 << 3,
        n if *n == header::UPGRADE => 1 << 4,
        n if *n == header::PROXY_AUTHORIZATION => 1 << 5,
        n if *n == header::PROXY_AUTHENTICATE => 1 << 6,
        _ => 0,
    }
}

/// Removes hop-by-hop headers, and those the `Connection` header names (and `Expect` with
/// `expect`). One pass over the names finds them, so the common message with none (or only
/// `Connection: keep-alive`) costs one lookup per header present and no allocation.
fn remove_hop_by_hop(headers: &mut HeaderMap, expect: bool) {
    let mut found = 0u16;
    for name in headers.keys() {
        found |= hop_by_hop_bit(name);
        if expect && *name == header::EXPECT {
            found |= 1 << 7;
        }
    }
    if found == 0 {
        return;
    }
    // Names the `Connection` header lists besides `keep-alive` and `close` (rare).
    let mut listed: Vec<HeaderName> = Vec::new();
    if found & 1 != 0 {
        for value in headers.get_all(header::CONNECTION) {
            let Ok(value) = value.to_str() else { continue };
            for token in value.split(',') {
                let token = token.trim();
                if token.eq_ignore_ascii_case("keep-alive") || token.eq_ignore_ascii_case("close") {
                    continue;
                }
                if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                    if !is_framing(&name) {
                        listed.push(name);
                    }
                }
            }
        }
    }
    let names = [
        &header::CONNECTION,
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &header::TE,
        &header::UPGRADE,
        &header::PROXY_AUTHORIZATION,
        &header::PROXY_AUTHENTICATE,
        &header::EXPECT,
    ];
    for (bit, name) in names.into_iter().enumerate() {
        if found & (1 << bit) != 0 {
            headers.remove(name);
        }
    }
    for name in listed {
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
    remove_hop_by_hop(headers, true);
    drop_unbalanced_forwarded(headers);

    // The values this hop adds are written into one buffer and sliced out of it: one
    // allocation for all of them, and the copies of the head kept for retries (and the request
    // id kept for the log) share it instead of copying.
    let mut added = Added::default();
    // Every earlier hop's line, in order (a value that is not text is dropped: it cannot be
    // forwarded as a header value anyway).
    for prev in headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
    {
        added.push(prev.as_bytes());
        added.push(b", ");
    }
    push_ip(&mut added, client.ip());
    let xff = 0..added.len();
    forwarded_element(&mut added, headers, client, proto);
    let forwarded = xff.end..added.len();
    let id = match headers.get(&X_REQUEST_ID) {
        Some(id) if !id.is_empty() => None,
        _ => {
            let start = added.len();
            added.push(&request_id_digits());
            Some(start..added.len())
        }
    };
    let added = added.freeze();
    let value = |range: std::ops::Range<usize>| HeaderValue::from_maybe_shared(added.slice(range));

    if let Ok(v) = value(xff) {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
    if let Some(host) = headers.get(header::HOST).cloned() {
        headers.insert(X_FORWARDED_HOST.clone(), host);
    }
    if let Ok(v) = value(forwarded) {
        headers.append(header::FORWARDED, v);
    }
    headers.append(header::VIA, VIA_VALUE.clone());

    match id.map(value) {
        Some(Ok(id)) => {
            headers.insert(X_REQUEST_ID.clone(), id.clone());
            id
        }
        Some(Err(_)) => HeaderValue::from_static(""),
        None => headers
            .get(&X_REQUEST_ID)
            .cloned()
            .unwrap_or_else(|| HeaderValue::from_static("")),
    }
}

/// The bytes of the values one request gains, written in place: on the stack while they fit
/// (almost always), then in one heap buffer that the values share.
struct Added {
    len: usize,
    inline: [u8; ADDED_INLINE],
    /// Used instead of `inline` once the values outgrow it (a long `X-Forwarded-For` chain).
    heap: Option<Vec<u8>>,
}

/// Room for an IPv6 `X-Forwarded-For`, its `Forwarded` element with a long host, and a request id.
const ADDED_INLINE: usize = 232;

impl Default for Added {
    fn default() -> Self {
        Added {
            len: 0,
            inline: [0; ADDED_INLINE],
            heap: None,
        }
    }
}

impl Added {
    fn len(&self) -> usize {
        self.heap.as_ref().map_or(self.len, Vec::len)
    }

    fn push(&mut self, bytes: &[u8]) {
        if let Some(heap) = &mut self.heap {
            heap.extend_from_slice(bytes);
        } else if let Some(room) = self.inline.get_mut(self.len..self.len + bytes.len()) {
            room.copy_from_slice(bytes);
            self.len += bytes.len();
        } else {
            let mut heap = Vec::with_capacity(self.len + bytes.len() + 64);
            heap.extend_from_slice(&self.inline[..self.len]);
            heap.extend_from_slice(bytes);
            self.heap = Some(heap);
        }
    }

    /// One allocation: the inline bytes move into the buffer that the values' `Bytes` share.
    fn freeze(self) -> bytes::Bytes {
        match self.heap {
            Some(heap) => bytes::Bytes::from(heap),
            None => bytes::Bytes::from_owner(InlineBytes(self.len, self.inline)),
        }
    }
}

struct InlineBytes(usize, [u8; ADDED_INLINE]);

impl AsRef<[u8]> for InlineBytes {
    fn as_ref(&self) -> &[u8] {
        &self.1[..self.0]
    }
}

/// An IP address as text (`192.0.2.7`, `2001:db8::7`); IPv4 without `fmt`, which costs more
/// than the rest of the header rewriting.
fn push_ip(out: &mut Added, ip: std::net::IpAddr) {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let mut buf = [0u8; 15];
            let mut n = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf[n] = b'.';
                    n += 1;
                }
                if octet >= 100 {
                    buf[n] = b'0' + octet / 100;
                    n += 1;
                }
                if octet >= 10 {
                    buf[n] = b'0' + octet / 10 % 10;
                    n += 1;
                }
                buf[n] = b'0' + octet % 10;
                n += 1;
            }
            out.push(&buf[..n]);
        }
        std::net::IpAddr::V6(v6) => out.push(v6.to_string().as_bytes()),
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
fn forwarded_element(out: &mut Added, headers: &HeaderMap, client: SocketAddr, proto: &str) {
    match client.ip() {
        ip @ std::net::IpAddr::V4(_) => {
            out.push(b"for=");
            push_ip(out, ip);
        }
        ip @ std::net::IpAddr::V6(_) => {
            out.push(b"for=\"[");
            push_ip(out, ip);
            out.push(b"]\"");
        }
    }
    let host = headers.get(header::HOST).map(HeaderValue::as_bytes);
    if let Some(host) = host.filter(|h| {
        h.iter()
            .all(|&b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
    }) {
        out.push(b";host=\"");
        out.push(host);
        out.push(b"\"");
    }
    out.push(b";proto=");
    out.push(proto.as_bytes());
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
    remove_hop_by_hop(headers, false);
    headers.append(header::VIA, VIA_VALUE.clone());
    (keep_alive, close)
}

/// 128 random bits as 32 hex digits.
pub fn new_request_id() -> HeaderValue {
    HeaderValue::from_bytes(&request_id_digits()).expect("hex is a valid header value")
}

fn request_id_digits() -> [u8; 32] {
    let mut buf = [0u8; 32];
    let n: u128 = ((fastrand::u64(..) as u128) << 64) | fastrand::u64(..) as u128;
    for (i, b) in buf.iter_mut().enumerate() {
        let nibble = ((n >> (124 - 4 * i)) & 0xf) as u8;
        *b = b"0123456789abcdef"[nibble as usize];
    }
    buf
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
    fn added_values_are_right_past_the_inline_buffer_and_for_every_octet() {
        // A chain longer than the inline room moves the values to the heap mid-way.
        let chain: Vec<String> = (0..40).map(|i| format!("10.0.{i}.{}", 255 - i)).collect();
        let chain = chain.join(", ");
        let mut h = map(&[("host", "example.com"), ("x-forwarded-for", &chain)]);
        let id = prepare_request(&mut h, "100.9.10.0:1".parse().unwrap(), "http");
        assert_eq!(
            h["x-forwarded-for"],
            format!("{chain}, 100.9.10.0").as_str()
        );
        assert_eq!(
            h["forwarded"],
            "for=100.9.10.0;host=\"example.com\";proto=http"
        );
        assert_eq!(h["x-request-id"], id);
        assert!(id.as_bytes().iter().all(u8::is_ascii_hexdigit) && id.len() == 32);
        for ip in ["0.0.0.0", "255.255.255.255", "1.20.199.9"] {
            let mut h = map(&[]);
            prepare_request(&mut h, format!("{ip}:1").parse().unwrap(), "http");
            assert_eq!(h["x-forwarded-for"], ip);
        }
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
