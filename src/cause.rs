//! The cause vocabulary, shared by every module: what went wrong on the way to an upstream, and
//! how that becomes a status. It lives at the crate root because the proxy, the upstream pool,
//! the server, the access log, metrics and `explain` all speak it.
//!
//! An [`UpstreamError`] is classified where it is produced (connect, send, response head, body),
//! never by parsing messages afterwards. Its [`Cause`] is an RFC 9209 `Proxy-Status` error type;
//! the status code, the `Proxy-Status` header, the access-log field and the metric label all
//! derive from it.

use std::fmt;
use std::time::Duration;

use http::StatusCode;

/// RFC 9209 `Proxy-Status` error types gatewise produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Cause {
    DnsError,
    DestinationNotFound,
    DestinationUnavailable,
    ConnectionRefused,
    ConnectionTerminated,
    ConnectionTimeout,
    ConnectionLimitReached,
    TlsProtocolError,
    TlsCertificateError,
    HttpRequestError,
    HttpResponseIncomplete,
    HttpResponseHeaderSectionSize,
    HttpResponseTimeout,
    HttpProtocolError,
    HttpUpgradeFailed,
    ProxyInternalError,
}

impl Cause {
    pub const ALL: [Cause; 16] = [
        Cause::DnsError,
        Cause::DestinationNotFound,
        Cause::DestinationUnavailable,
        Cause::ConnectionRefused,
        Cause::ConnectionTerminated,
        Cause::ConnectionTimeout,
        Cause::ConnectionLimitReached,
        Cause::TlsProtocolError,
        Cause::TlsCertificateError,
        Cause::HttpRequestError,
        Cause::HttpResponseIncomplete,
        Cause::HttpResponseHeaderSectionSize,
        Cause::HttpResponseTimeout,
        Cause::HttpProtocolError,
        Cause::HttpUpgradeFailed,
        Cause::ProxyInternalError,
    ];

    /// The RFC 9209 token, as it appears in `Proxy-Status`, logs and metrics.
    ///
    /// ```
    /// use gatewise::cause::Cause;
    /// assert_eq!(Cause::ConnectionRefused.as_str(), "connection_refused");
    /// assert_eq!(Cause::from_token("http_response_timeout"), Some(Cause::HttpResponseTimeout));
    /// assert_eq!(Cause::HttpResponseTimeout.status(), 504);
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::DnsError => "dns_error",
            Cause::DestinationNotFound => "destination_not_found",
            Cause::DestinationUnavailable => "destination_unavailable",
            Cause::ConnectionRefused => "connection_refused",
            Cause::ConnectionTerminated => "connection_terminated",
            Cause::ConnectionTimeout => "connection_timeout",
            Cause::ConnectionLimitReached => "connection_limit_reached",
            Cause::TlsProtocolError => "tls_protocol_error",
            Cause::TlsCertificateError => "tls_certificate_error",
            Cause::HttpRequestError => "http_request_error",
            Cause::HttpResponseIncomplete => "http_response_incomplete",
            Cause::HttpResponseHeaderSectionSize => "http_response_header_section_size",
            Cause::HttpResponseTimeout => "http_response_timeout",
            Cause::HttpProtocolError => "http_protocol_error",
            Cause::HttpUpgradeFailed => "http_upgrade_failed",
            Cause::ProxyInternalError => "proxy_internal_error",
        }
    }

    pub fn from_token(token: &str) -> Option<Cause> {
        Cause::ALL.into_iter().find(|c| c.as_str() == token)
    }

    /// The status a client sees when this cause ends the request.
    ///
    /// 502: the upstream answered wrongly or hung up. 503: gatewise chose not to send.
    /// 504: the upstream did not answer in time. 400/404: the request itself.
    pub fn status(self) -> StatusCode {
        match self {
            Cause::HttpRequestError => StatusCode::BAD_REQUEST,
            Cause::DestinationNotFound => StatusCode::NOT_FOUND,
            Cause::DestinationUnavailable | Cause::ConnectionLimitReached => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Cause::ConnectionTimeout | Cause::HttpResponseTimeout => StatusCode::GATEWAY_TIMEOUT,
            Cause::DnsError
            | Cause::ConnectionRefused
            | Cause::ConnectionTerminated
            | Cause::TlsProtocolError
            | Cause::TlsCertificateError
            | Cause::HttpResponseIncomplete
            | Cause::HttpResponseHeaderSectionSize
            | Cause::HttpProtocolError
            | Cause::HttpUpgradeFailed => StatusCode::BAD_GATEWAY,
            Cause::ProxyInternalError => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Seconds a client should wait before trying again; set on every 503.
    pub fn retry_after(self) -> Option<u32> {
        (self.status() == StatusCode::SERVICE_UNAVAILABLE).then_some(1)
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How far one attempt got before it failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for a connection slot (queue) or choosing a target.
    Queue,
    /// Resolving or connecting; nothing was written.
    Connect,
    /// Writing the request (head or body).
    RequestSent,
    /// Request written, waiting for or reading the response head.
    ResponseHead,
    /// Response head delivered to the client; streaming the body.
    ResponseBody,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Queue => "queue",
            Phase::Connect => "connect",
            Phase::RequestSent => "request_sent",
            Phase::ResponseHead => "response_head",
            Phase::ResponseBody => "response_body",
        }
    }
}

/// One failed attempt (or a request that could not be attempted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamError {
    pub cause: Cause,
    pub phase: Phase,
    /// Did any byte of the request reach the upstream socket?
    pub request_sent: bool,
    /// Did any byte of a response come back?
    pub response_bytes: bool,
    /// Was the attempt made on a pooled (reused) connection?
    pub reused: bool,
    /// The upstream said it did not process the request: an HTTP/2 stream it refused
    /// (`REFUSED_STREAM`) or one above the last-stream-id of its GOAWAY (RFC 9113 §8.7).
    pub unprocessed: bool,
    /// Short human detail, e.g. the target address or the limit that was hit.
    pub detail: String,
}

impl UpstreamError {
    /// An error before anything was written (connect, DNS, queue).
    pub fn before_send(cause: Cause, phase: Phase, detail: impl Into<String>) -> Self {
        Self {
            cause,
            phase,
            request_sent: false,
            response_bytes: false,
            reused: false,
            unprocessed: false,
            detail: detail.into(),
        }
    }
}

impl fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} during {}", self.cause, self.phase.as_str())?;
        if !self.detail.is_empty() {
            write!(f, " ({})", self.detail)?;
        }
        Ok(())
    }
}

impl std::error::Error for UpstreamError {}

/// Maps a connect-time I/O error to its cause.
///
/// Anything about reaching *this* target counts as refused (retried on another target, counted
/// against this one): no listener, no route, network down or unreachable, a local firewall or
/// SELinux, no source address for it (EADDRNOTAVAIL: local ports to it exhausted, or an IPv6
/// target on a host without IPv6), an address family the host lacks. Running out of file
/// descriptors would fail on every target: `connection_limit_reached`, our limit, nobody's
/// fault upstream. Anything else is named as ours rather than blamed on the target. (`explain`
/// reads nginx's errno lines the same way, except that it files EADDRNOTAVAIL under the limit.)
pub fn connect_cause(err: &std::io::Error) -> Cause {
    use std::io::ErrorKind::*;
    const ENFILE: i32 = 23;
    const EMFILE: i32 = 24;
    const EAFNOSUPPORT: i32 = 97;
    match err.kind() {
        ConnectionRefused | HostUnreachable | NetworkUnreachable | NetworkDown
        | PermissionDenied | NotFound | AddrNotAvailable => Cause::ConnectionRefused,
        TimedOut => Cause::ConnectionTimeout,
        ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof => {
            Cause::ConnectionTerminated
        }
        _ => match err.raw_os_error() {
            Some(EAFNOSUPPORT) => Cause::ConnectionRefused,
            Some(EMFILE | ENFILE) => Cause::ConnectionLimitReached,
            _ => Cause::ProxyInternalError,
        },
    }
}

/// The `details` of a failed connect: the target, plus the system's words unless it was a plain
/// refusal (`10.0.0.5:80: No route to host (os error 113)`).
pub fn connect_detail(addr: &str, err: &std::io::Error) -> String {
    if err.kind() == std::io::ErrorKind::ConnectionRefused {
        addr.to_string()
    } else {
        format!("{addr}: {err}")
    }
}

/// Renders a duration as milliseconds for logs.
pub fn millis(d: Duration) -> u64 {
    d.as_millis().min(u64::MAX as u128) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_errors_blame_the_target_only_when_it_is_about_the_target() {
        let table = [
            (111, Cause::ConnectionRefused),     // ECONNREFUSED
            (113, Cause::ConnectionRefused),     // EHOSTUNREACH
            (101, Cause::ConnectionRefused),     // ENETUNREACH
            (13, Cause::ConnectionRefused),      // EACCES (SELinux)
            (1, Cause::ConnectionRefused),       // EPERM (local firewall)
            (110, Cause::ConnectionTimeout),     // ETIMEDOUT
            (104, Cause::ConnectionTerminated),  // ECONNRESET
            (99, Cause::ConnectionRefused),      // EADDRNOTAVAIL: no source address for it
            (100, Cause::ConnectionRefused),     // ENETDOWN
            (97, Cause::ConnectionRefused),      // EAFNOSUPPORT: IPv6 target, no IPv6 here
            (24, Cause::ConnectionLimitReached), // EMFILE
            (23, Cause::ConnectionLimitReached), // ENFILE
            (22, Cause::ProxyInternalError),     // EINVAL: ours, not the target's
        ];
        for (errno, want) in table {
            let err = std::io::Error::from_raw_os_error(errno);
            assert_eq!(connect_cause(&err), want, "errno {errno}: {err}");
        }
    }

    #[test]
    fn connect_details_name_the_target_and_any_unusual_error() {
        let refused = std::io::Error::from_raw_os_error(111);
        assert_eq!(connect_detail("10.0.0.5:80", &refused), "10.0.0.5:80");
        let unreachable = std::io::Error::from_raw_os_error(113);
        let detail = connect_detail("10.0.0.5:80", &unreachable);
        assert!(detail.starts_with("10.0.0.5:80: "), "{detail}");
        assert!(detail.contains("113"), "{detail}");
    }
}
