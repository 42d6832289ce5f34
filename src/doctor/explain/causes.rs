//! What each cause means, what to check and how to fix it — the table behind every finding.
//!
//! Kept in code so the report and `docs/causes.md` say the same thing; a test checks that every
//! cause has an entry in the doc.

use crate::cause::Cause;

/// Advice for one cause.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Advice {
    pub meaning: &'static str,
    pub check: &'static str,
    pub fix: &'static str,
}

const fn a(meaning: &'static str, check: &'static str, fix: &'static str) -> Advice {
    Advice {
        meaning,
        check,
        fix,
    }
}

/// The advice for a cause; `None` is a proxy-made 5xx whose log does not say why.
pub fn advice(cause: Option<Cause>) -> Advice {
    let Some(cause) = cause else {
        return a(
            "the proxy answered 502/504 itself, but this log does not say why",
            "the proxy's error log for the same minutes (nginx: error.log)",
            "run `gatewise explain` on the error log too; add $upstream_addr and $upstream_status to the access log format",
        );
    };
    match cause {
        Cause::DnsError => a(
            "the upstream's name did not resolve",
            "the resolver the proxy uses, the record (A/AAAA/SRV), its TTL, search domains",
            "fix the record or the resolver; make the proxy re-resolve on an interval instead of only at start",
        ),
        Cause::DestinationNotFound => a(
            "no route or upstream is configured for this request",
            "the route table: host and path patterns, the upstream/cluster name",
            "add the route, or correct the host/path the client uses",
        ),
        Cause::DestinationUnavailable => a(
            "every target of the upstream was marked down, so the proxy did not try",
            "health checks and passive failure marking (nginx max_fails/fail_timeout, HAProxy check, Envoy outlier detection); whether the targets are really down",
            "bring targets back or fix the health check; avoid marking the whole pool down at once (panic threshold, max ejection percent)",
        ),
        Cause::ConnectionRefused => a(
            "nothing was listening on the target address (TCP RST on connect), or the address could not be reached at all (no route to host, network unreachable, connect blocked by a local firewall or SELinux)",
            "is the process up and bound to that address and port (0.0.0.0 vs 127.0.0.1), did a deploy or restart stop it",
            "drain a target (fail readiness, wait) before stopping it; start listening before reporting ready; retry connect failures on another target",
        ),
        Cause::ConnectionTerminated => a(
            "the upstream closed or reset the connection before sending a response",
            "upstream crashes or restarts, its keep-alive timeout versus the proxy's idle pool timeout, its body/header limits",
            "keep the proxy's idle timeout below the upstream's keep-alive timeout; drain before restarts; retry idempotent requests on a reused connection",
        ),
        Cause::ConnectionTimeout => a(
            "the TCP (or TLS) connection to the target was not established in time",
            "host reachable, firewall or security group dropping SYNs, listen backlog full, target overloaded",
            "fix the network path or capacity; keep the connect timeout short (1-3 s) and retry on another target",
        ),
        Cause::ConnectionLimitReached => a(
            "a connection limit was hit: per-target max connections/queue, or the proxy ran out of sockets or local ports",
            "queue and max-connection settings, ulimit -n, ephemeral port usage (TIME_WAIT), upstream keep-alive",
            "reuse connections (upstream keep-alive), raise the limit or the number of targets, widen the local port range",
        ),
        Cause::TlsProtocolError => a(
            "the TLS handshake with the upstream failed",
            "TLS versions and ciphers on both sides, SNI sent to the upstream, plain HTTP spoken to a TLS port or the reverse",
            "align protocol versions, send the right SNI, use https only toward TLS ports",
        ),
        Cause::TlsCertificateError => a(
            "the upstream's certificate was rejected (expired, untrusted or wrong name)",
            "certificate chain and expiry, the CA bundle the proxy trusts, the name the proxy verifies",
            "renew or complete the chain, configure the right CA and verified name",
        ),
        Cause::HttpRequestError => a(
            "the client's request was malformed",
            "the client, request headers and sizes",
            "fix the client; raise header limits only if the requests are legitimate",
        ),
        Cause::HttpResponseIncomplete => a(
            "the upstream started a response and stopped before its end",
            "upstream crashes mid-response, Content-Length mismatches, proxy or upstream timeouts during long bodies",
            "fix the upstream error; raise read timeouts for long streams; make the upstream finish responses before shutting down",
        ),
        Cause::HttpResponseHeaderSectionSize => a(
            "the upstream's response headers were larger than the proxy accepts",
            "large Set-Cookie or custom headers from the upstream; the proxy's buffer (nginx proxy_buffer_size)",
            "shrink the headers, or raise the proxy's header buffer (nginx: proxy_buffer_size 16k; proxy_buffers 8 16k)",
        ),
        Cause::HttpResponseTimeout => a(
            "the upstream accepted the request but did not answer in time",
            "slow endpoints, upstream saturation (thread pools, DB), the proxy's read timeout versus the real latency",
            "fix the slow path or add capacity; set the read timeout above the real p99; retry only idempotent requests",
        ),
        Cause::HttpProtocolError => a(
            "the upstream sent something that is not valid HTTP",
            "the upstream's response (invalid header, bad chunking, duplicate Content-Length), HTTP spoken to a non-HTTP port",
            "fix the upstream's response; point the proxy at the HTTP port with the right protocol",
        ),
        Cause::HttpUpgradeFailed => a(
            "a protocol upgrade (WebSocket) to the upstream failed",
            "Upgrade/Connection headers forwarded, the upstream's WebSocket endpoint",
            "forward Upgrade and Connection headers; use HTTP/1.1 to the upstream for WebSockets",
        ),
        Cause::ProxyInternalError => a(
            "the proxy itself failed or reset the request (overload, internal error)",
            "the proxy's own logs, memory and CPU, overload manager settings",
            "give the proxy resources; report the bug if it persists",
        ),
    }
}

/// Advice for `unclassified` when the access log already carries `$upstream_addr` and
/// `$upstream_status` (it must not ask for what is there).
pub fn advice_unclassified_with_upstream_fields() -> Advice {
    a(
        "the upstream attempt ended in 502/504 (nginx logs its own connect/read failures that way too), but this log does not say why",
        "the proxy's error log for the same minutes (nginx: error.log), and the upstream named in $upstream_addr",
        "run `gatewise explain` on the error log together with this access log",
    )
}

/// Advice for an attempt a retry hid whose failure the log does not name.
pub fn advice_retried_unnamed() -> Advice {
    a(
        "an attempt failed and a retry (or redispatch to another server) answered the client; the log counts the retry but does not say why the attempt failed",
        "HAProxy: the retry count (the last of the five connection counters, `+` = redispatched), `retries` and `option redispatch`, the servers' health checks; nginx: `$upstream_status` lists each attempt, the error log says why",
        "nothing reached the client; if these are frequent, find the failing server (health checks, error log) before the retries run out",
    )
}

/// The name a cause has in the report; `unclassified` for a proxy-made 5xx of unknown reason.
pub fn name(cause: Option<Cause>) -> &'static str {
    cause.map_or("unclassified", Cause::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docs_cover_every_cause() {
        let doc = include_str!("../../../docs/causes.md");
        for cause in Cause::ALL {
            assert!(
                doc.contains(&format!("`{}`", cause.as_str())),
                "{cause} missing in docs/causes.md"
            );
            let fix = advice(Some(cause)).fix;
            assert!(
                doc.contains(fix),
                "docs/causes.md lacks the fix for {cause}: {fix}"
            );
        }
    }
}
