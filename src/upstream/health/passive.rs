//! Passive health: which request attempt outcomes count against a target.
//!
//! Only failures the *target* caused count: it refused, hung up, timed out, spoke broken HTTP
//! or TLS, or answered with a status the operator listed in `failure_statuses`. Outcomes that
//! are ours or the client's (our queue was full, no target was available, the request itself
//! was bad, our own bug) are neutral: they neither count as a failure nor reset the count, since
//! they say nothing about the target. A reused pooled connection that died before any response
//! byte is the keep-alive race (field guide row 4), which the retry handles on a fresh
//! connection; it is neutral too, or a busy healthy target would be ejected for it.

use crate::cause::{Cause, UpstreamError};
use crate::config::PassiveConfig;

/// What one attempt says about its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Success,
    Failure,
    /// Says nothing about the target.
    Neutral,
}

impl Verdict {
    /// The `ok` argument of `TargetHealth::traffic`, or `None` when nothing should be reported.
    pub fn as_traffic(self) -> Option<bool> {
        match self {
            Verdict::Success => Some(true),
            Verdict::Failure => Some(false),
            Verdict::Neutral => None,
        }
    }
}

/// An attempt that got a response head with `status`.
pub fn classify_status(status: u16, cfg: &PassiveConfig) -> Verdict {
    if cfg.failure_statuses.contains(&status) {
        Verdict::Failure
    } else {
        Verdict::Success
    }
}

/// An attempt that failed with `err`.
pub fn classify_error(err: &UpstreamError) -> Verdict {
    if err.unprocessed {
        // A refused stream or a GOAWAY (a graceful restart, a stream limit): nothing wrong
        // with the target.
        return Verdict::Neutral;
    }
    let keep_alive_race = err.reused && !err.response_bytes;
    match cause_verdict(err.cause) {
        Verdict::Failure
            if keep_alive_race
                && matches!(
                    err.cause,
                    Cause::ConnectionTerminated | Cause::HttpResponseIncomplete
                ) =>
        {
            Verdict::Neutral
        }
        verdict => verdict,
    }
}

/// The verdict of a cause on its own. No wildcard arm: a new cause must be decided here.
pub fn cause_verdict(cause: Cause) -> Verdict {
    match cause {
        // The target is down, unreachable, slow or broken.
        Cause::DnsError
        | Cause::ConnectionRefused
        | Cause::ConnectionTimeout
        | Cause::ConnectionTerminated
        | Cause::TlsProtocolError
        | Cause::TlsCertificateError
        | Cause::HttpResponseIncomplete
        | Cause::HttpResponseTimeout
        | Cause::HttpProtocolError => Verdict::Failure,
        // Ours: the queue, the pool's availability, the route table, our own bug.
        Cause::ConnectionLimitReached
        | Cause::DestinationUnavailable
        | Cause::DestinationNotFound
        | Cause::ProxyInternalError
        // The client's request was bad.
        | Cause::HttpRequestError
        // The target answered; the answer is about this request (a huge header, a refused
        // upgrade), not about the target's health.
        | Cause::HttpResponseHeaderSectionSize
        | Cause::HttpUpgradeFailed => Verdict::Neutral,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cause::Phase;

    #[test]
    fn every_cause_has_the_intended_verdict() {
        let failures = [
            "dns_error",
            "connection_refused",
            "connection_timeout",
            "connection_terminated",
            "tls_protocol_error",
            "tls_certificate_error",
            "http_response_incomplete",
            "http_response_timeout",
            "http_protocol_error",
        ];
        for cause in Cause::ALL {
            let want = if failures.contains(&cause.as_str()) {
                Verdict::Failure
            } else {
                Verdict::Neutral
            };
            assert_eq!(cause_verdict(cause), want, "{cause}");
        }
        for ours in [
            "connection_limit_reached",
            "destination_unavailable",
            "http_request_error",
        ] {
            let cause = Cause::from_token(ours).unwrap();
            assert_eq!(cause_verdict(cause), Verdict::Neutral, "{ours}");
        }
    }

    fn error(cause: Cause, reused: bool, response_bytes: bool) -> UpstreamError {
        UpstreamError {
            cause,
            phase: Phase::ResponseHead,
            request_sent: true,
            response_bytes,
            reused,
            unprocessed: false,
            detail: String::new(),
        }
    }

    #[test]
    fn keep_alive_race_on_a_reused_connection_is_neutral() {
        use Cause::*;
        // (cause, reused, response bytes, verdict)
        let cases = [
            (ConnectionTerminated, true, false, Verdict::Neutral),
            (HttpResponseIncomplete, true, false, Verdict::Neutral),
            (ConnectionTerminated, false, false, Verdict::Failure),
            (ConnectionTerminated, true, true, Verdict::Failure),
            (HttpResponseIncomplete, true, true, Verdict::Failure),
            (HttpResponseTimeout, true, false, Verdict::Failure),
            (ConnectionRefused, false, false, Verdict::Failure),
            (ConnectionLimitReached, false, false, Verdict::Neutral),
        ];
        for (cause, reused, bytes, want) in cases {
            let got = classify_error(&error(cause, reused, bytes));
            assert_eq!(got, want, "{cause} reused={reused} response_bytes={bytes}");
        }
    }

    #[test]
    fn statuses_count_only_when_listed() {
        let mut cfg = PassiveConfig::default();
        assert_eq!(
            classify_status(503, &cfg),
            Verdict::Success,
            "none listed by default"
        );
        cfg.failure_statuses = vec![502, 503];
        assert_eq!(classify_status(503, &cfg), Verdict::Failure);
        assert_eq!(classify_status(500, &cfg), Verdict::Success);
        assert_eq!(classify_status(200, &cfg), Verdict::Success);
    }

    #[test]
    fn verdict_maps_to_traffic_observation() {
        assert_eq!(Verdict::Success.as_traffic(), Some(true));
        assert_eq!(Verdict::Failure.as_traffic(), Some(false));
        assert_eq!(Verdict::Neutral.as_traffic(), None);
    }
}
