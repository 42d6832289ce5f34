//! gRPC through gatewise: calls pass untouched (trailers and `grpc-status` included); what
//! gatewise adds is for the calls it fails itself, which a gRPC client can only read in gRPC
//! form — HTTP 200, `grpc-status`, the cause in `grpc-message` — and the `grpc-timeout` a
//! client sets, which shortens the route's deadline.

use std::time::Duration;

use http::header::{HeaderValue, CONTENT_TYPE};
use http::{HeaderMap, Response, StatusCode};

use super::relay::ClientBody;
use crate::cause::Cause;

/// gRPC status codes gatewise answers with (grpc/doc/statuscodes.md).
pub const DEADLINE_EXCEEDED: u32 = 4;
pub const UNIMPLEMENTED: u32 = 12;
pub const INTERNAL: u32 = 13;
pub const UNAVAILABLE: u32 = 14;

/// Whether the request is a gRPC call: `content-type: application/grpc` or `application/grpc+…`
/// (gRPC-Web, `application/grpc-web…`, is not: its status lives in the body).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            let ct = ct.trim();
            let base = ct.split(';').next().unwrap_or("").trim();
            base.eq_ignore_ascii_case("application/grpc")
                || base
                    .get(..17)
                    .is_some_and(|p| p.eq_ignore_ascii_case("application/grpc+"))
        })
}

/// The gRPC status for a call gatewise fails with `cause`: timeouts are DEADLINE_EXCEEDED; no
/// route is UNIMPLEMENTED; a malformed request or gatewise's own failure is INTERNAL; every
/// other cause (refused, reset, no healthy target, a limit) is UNAVAILABLE, which gRPC clients
/// know they may retry.
pub fn status_for(cause: Cause) -> u32 {
    match cause {
        Cause::ConnectionTimeout | Cause::HttpResponseTimeout => DEADLINE_EXCEEDED,
        Cause::DestinationNotFound => UNIMPLEMENTED,
        Cause::HttpRequestError | Cause::ProxyInternalError => INTERNAL,
        _ => UNAVAILABLE,
    }
}

/// Turns a generated error response into its gRPC form: a trailers-only response (HTTP 200,
/// `content-type: application/grpc`, `grpc-status`, `grpc-message` = `cause[: detail]`, no
/// body). `Proxy-Status`, `X-Request-Id` and `Retry-After` stay; the HTTP status is kept in
/// `Proxy-Status` terms by the cause.
pub fn answer(
    resp: Response<ClientBody>,
    status: u32,
    cause: Cause,
    detail: &str,
) -> Response<ClientBody> {
    let (mut parts, _) = resp.into_parts();
    parts.status = StatusCode::OK;
    parts
        .headers
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    parts.headers.remove(http::header::CONNECTION);
    parts
        .headers
        .insert("grpc-status", HeaderValue::from(status));
    let message = if detail.is_empty() {
        cause.as_str().to_string()
    } else {
        format!("{}: {detail}", cause.as_str())
    };
    if let Ok(v) = HeaderValue::from_str(&percent_encode(&message)) {
        parts.headers.insert("grpc-message", v);
    }
    Response::from_parts(parts, ClientBody::empty())
}

/// The `grpc-status` in a header map (a trailers-only response's head, or trailers).
pub fn status_of(headers: &HeaderMap) -> Option<u32> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// The route's deadline, shortened by the call's `grpc-timeout` when that is shorter.
pub fn route_timeout(route: Duration, headers: &HeaderMap) -> Duration {
    match headers
        .get("grpc-timeout")
        .and_then(|v| grpc_timeout(v.as_bytes()))
    {
        Some(t) => route.min(t),
        None => route,
    }
}

/// Parses a `grpc-timeout` value: 1 to 8 digits and a unit (`H`, `M`, `S`, `m`, `u`, `n`).
pub fn grpc_timeout(value: &[u8]) -> Option<Duration> {
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// `grpc-message` is percent-encoded: bytes outside printable ASCII, and `%`, as `%XX`.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_requests_are_told_by_content_type() {
        let h = |ct: &str| {
            let mut m = HeaderMap::new();
            m.insert(CONTENT_TYPE, ct.parse().unwrap());
            is_grpc(&m)
        };
        assert!(h("application/grpc"));
        assert!(h("application/grpc+proto"));
        assert!(h("Application/GRPC; charset=utf-8"));
        assert!(!h("application/grpc-web"));
        assert!(!h("application/json"));
        assert!(!is_grpc(&HeaderMap::new()));
    }

    #[test]
    fn grpc_timeout_values() {
        assert_eq!(grpc_timeout(b"100m"), Some(Duration::from_millis(100)));
        assert_eq!(grpc_timeout(b"2S"), Some(Duration::from_secs(2)));
        assert_eq!(grpc_timeout(b"1H"), Some(Duration::from_secs(3600)));
        assert_eq!(grpc_timeout(b"5u"), Some(Duration::from_micros(5)));
        assert_eq!(grpc_timeout(b"123456789S"), None);
        assert_eq!(grpc_timeout(b"S"), None);
        assert_eq!(grpc_timeout(b"10x"), None);
        assert_eq!(grpc_timeout(b"-1S"), None);
        let mut h = HeaderMap::new();
        h.insert("grpc-timeout", "250m".parse().unwrap());
        assert_eq!(
            route_timeout(Duration::from_secs(30), &h),
            Duration::from_millis(250)
        );
        h.insert("grpc-timeout", "99H".parse().unwrap());
        assert_eq!(
            route_timeout(Duration::from_secs(30), &h),
            Duration::from_secs(30)
        );
    }

    #[test]
    fn failures_map_to_grpc_statuses() {
        assert_eq!(status_for(Cause::HttpResponseTimeout), DEADLINE_EXCEEDED);
        assert_eq!(status_for(Cause::ConnectionTimeout), DEADLINE_EXCEEDED);
        assert_eq!(status_for(Cause::ConnectionRefused), UNAVAILABLE);
        assert_eq!(status_for(Cause::ConnectionTerminated), UNAVAILABLE);
        assert_eq!(status_for(Cause::DestinationUnavailable), UNAVAILABLE);
        assert_eq!(status_for(Cause::ConnectionLimitReached), UNAVAILABLE);
        assert_eq!(status_for(Cause::DestinationNotFound), UNIMPLEMENTED);
    }

    #[test]
    fn answer_is_trailers_only_grpc_with_proxy_status_kept() {
        let id = HeaderValue::from_static("rid");
        let resp =
            super::super::response::error_response(Cause::ConnectionRefused, "127.0.0.1:1", 2, &id);
        let resp = answer(
            resp,
            UNAVAILABLE,
            Cause::ConnectionRefused,
            "127.0.0.1:1 100%",
        );
        assert_eq!(resp.status(), 200);
        let h = resp.headers();
        assert_eq!(h["content-type"], "application/grpc");
        assert_eq!(h["grpc-status"], "14");
        assert_eq!(h["grpc-message"], "connection_refused: 127.0.0.1:1 100%25");
        assert!(h["proxy-status"]
            .to_str()
            .unwrap()
            .starts_with("gatewise; error=connection_refused"));
        assert_eq!(h["x-request-id"], "rid");
        assert!(http_body::Body::is_end_stream(resp.body()));
    }
}
