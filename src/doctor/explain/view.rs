//! What clients saw, per file: the requests that failed for them (once each, by status and by
//! what caused it), apart from the failed attempts a retry hid — and the words for both.

use std::collections::BTreeMap;

use super::causes;
use super::report::CauseKey;

/// What one file says clients saw, apart from the attempts that failed behind their backs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileView {
    /// Client requests in the file (access-log lines); 0 for an error log.
    pub requests: u64,
    /// Requests answered with a status of 500 or more, by status, then by what caused it
    /// (`client_label`): one per request, however many attempts it took.
    pub failed: BTreeMap<u16, BTreeMap<&'static str, u64>>,
    /// Failed attempts of requests that still ended below 500, by cause ([`cause_label`]).
    pub hidden: BTreeMap<&'static str, u64>,
    /// Every failed attempt the file names (an error log only has these).
    pub attempts: u64,
}

impl FileView {
    /// Requests that failed for clients.
    pub fn failed_requests(&self) -> u64 {
        self.failed.values().flat_map(|m| m.values()).sum()
    }

    pub fn hidden_attempts(&self) -> u64 {
        self.hidden.values().sum()
    }
}

/// The report's word for a failure: the cause, `retried_unnamed` for an attempt a retry hid but
/// the log does not say why it failed (HAProxy's retry count, nginx's `$upstream_status 502, 200`),
/// `unclassified` for a proxy-made 5xx of unknown reason.
pub fn cause_label(cause: CauseKey, recovered: bool) -> &'static str {
    match (cause, recovered) {
        (None, true) => RETRIED_UNNAMED,
        (c, _) => causes::name(c),
    }
}

/// A hidden attempt whose failure the log does not name.
pub const RETRIED_UNNAMED: &str = "retried_unnamed";
/// A 5xx with no failed attempt behind it: the upstream's own response, passed through.
pub const UPSTREAM_5XX: &str = "upstream_response";

/// What caused a 5xx a client saw: the last failed attempt of its line, or none at all.
pub fn client_label(last: Option<CauseKey>) -> &'static str {
    last.map_or(UPSTREAM_5XX, |c| causes::name(c))
}
