//! The one function that turns a cause into a response gatewise generates itself.

use http::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use http::Response;

use super::headers::X_REQUEST_ID;
use super::relay::ClientBody;
use crate::cause::Cause;

pub static PROXY_STATUS: http::HeaderName = http::HeaderName::from_static("proxy-status");

/// A generated error response: status from the cause, `Proxy-Status` naming gatewise, the cause,
/// the last target (or other detail) and the number of attempts, `Retry-After` on every 503, and a
/// short body a human can read.
pub fn error_response(
    cause: Cause,
    detail: &str,
    attempts: usize,
    request_id: &HeaderValue,
) -> Response<ClientBody> {
    let status = cause.status();
    let mut proxy_status = format!("gatewise; error={}", cause.as_str());
    if !detail.is_empty() {
        proxy_status.push_str("; details=");
        push_sf_string(&mut proxy_status, detail);
    }
    if attempts > 0 {
        proxy_status.push_str(&format!("; attempts={attempts}"));
    }
    let id = request_id.to_str().unwrap_or("-");
    let body = format!(
        "{} {}\ngatewise: {}{}{}\nrequest id: {}\n",
        status.as_str(),
        status.canonical_reason().unwrap_or(""),
        cause.as_str(),
        if detail.is_empty() { "" } else { " - " },
        detail,
        id
    );
    let mut resp = Response::new(ClientBody::full(body));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if let Ok(v) = HeaderValue::from_str(&proxy_status) {
        headers.insert(PROXY_STATUS.clone(), v);
    }
    headers.insert(X_REQUEST_ID.clone(), request_id.clone());
    if cause == Cause::HttpRequestError {
        // After a malformed request the connection's framing cannot be trusted.
        headers.insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    }
    if let Some(secs) = cause.retry_after() {
        headers.insert(RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}

/// `Proxy-Status` for an upstream's own 5xx passed through: says the status came from upstream,
/// and from which target when the client may know (see [`public_detail`]).
pub fn received_status(status: u16, target: Option<&str>) -> HeaderValue {
    let mut v = format!("gatewise; received-status={status}");
    if let Some(target) = target {
        v.push_str("; next-hop=");
        push_sf_string(&mut v, target);
    }
    HeaderValue::from_str(&v).unwrap_or(HeaderValue::from_static("gatewise"))
}

/// Whether a client may read upstream addresses and details in the responses gatewise
/// generates: only when its listener says so (`expose_details = true`) or it connects over
/// loopback (an operator on the host). Everyone else gets the cause and the request id; the
/// access log and `/status` have the rest.
pub fn trusted_client(expose_details: bool, client: std::net::IpAddr) -> bool {
    expose_details || client.to_canonical().is_loopback()
}

/// The detail a generated error may carry to this client. A detail about the client's own
/// request (which Host header, which path has no route) is the client's to read; one about an
/// upstream (its address, how its connection failed) is shown to a trusted client only.
pub fn public_detail(cause: Cause, detail: &str, trusted: bool) -> &str {
    let about_the_request = matches!(cause, Cause::HttpRequestError | Cause::DestinationNotFound);
    if trusted || about_the_request {
        detail
    } else {
        ""
    }
}

/// Appends `s` as an RFC 8941 sf-string: quoted, `\` and `"` escaped, non-printable ASCII dropped.
fn push_sf_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars().filter(|c| (' '..='~').contains(c)) {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_is_502_with_proxy_status() {
        let id = HeaderValue::from_static("rid1");
        let resp = error_response(Cause::ConnectionRefused, "127.0.0.1:3001", 3, &id);
        assert_eq!(resp.status(), 502);
        assert_eq!(
            resp.headers()["proxy-status"],
            "gatewise; error=connection_refused; details=\"127.0.0.1:3001\"; attempts=3"
        );
        assert_eq!(resp.headers()["x-request-id"], "rid1");
        assert!(resp.headers().get("retry-after").is_none());
    }

    #[test]
    fn every_503_has_retry_after_and_detail_is_escaped() {
        let id = HeaderValue::from_static("x");
        let resp = error_response(Cause::DestinationUnavailable, "a\"b\\c\n", 0, &id);
        assert_eq!(resp.status(), 503);
        assert_eq!(resp.headers()["retry-after"], "1");
        assert_eq!(
            resp.headers()["proxy-status"],
            "gatewise; error=destination_unavailable; details=\"a\\\"b\\\\c\""
        );
        for cause in Cause::ALL {
            let resp = error_response(cause, "", 0, &id);
            assert_eq!(
                resp.status() == 503,
                resp.headers().contains_key("retry-after")
            );
        }
    }

    #[test]
    fn upstream_details_only_for_trusted_clients() {
        let internet: std::net::IpAddr = "203.0.113.9".parse().unwrap();
        for loopback in ["127.0.0.1", "::1", "::ffff:127.0.0.1"] {
            assert!(
                trusted_client(false, loopback.parse().unwrap()),
                "{loopback}"
            );
        }
        assert!(!trusted_client(false, internet));
        assert!(trusted_client(true, internet));
        let addr = "10.0.0.5:8080";
        assert_eq!(public_detail(Cause::ConnectionRefused, addr, false), "");
        assert_eq!(public_detail(Cause::ConnectionRefused, addr, true), addr);
        assert_eq!(
            public_detail(Cause::HttpRequestError, "more than one Host header", false),
            "more than one Host header"
        );
        assert_eq!(received_status(502, None), "gatewise; received-status=502");
        assert_eq!(
            received_status(502, Some(addr)),
            "gatewise; received-status=502; next-hop=\"10.0.0.5:8080\""
        );
    }

    #[test]
    fn timeouts_are_504() {
        let id = HeaderValue::from_static("x");
        assert_eq!(
            error_response(Cause::HttpResponseTimeout, "", 1, &id).status(),
            504
        );
        assert_eq!(
            error_response(Cause::ConnectionTimeout, "", 1, &id).status(),
            504
        );
    }
}
