//! The raw TOML shape of a config file (serde, unknown fields refused).
//!
//! [`read`] parses the document once, then deserializes each section on its own — every
//! `[[listener]]`, every `[[route]]`, every `[upstream.NAME]` and its `health` / `passive`
//! sub-tables — so that an unknown key or a wrong type in two sections gives two errors instead of
//! stopping at the first. Values that validation needs to point at are kept `Spanned`.

use std::ops::Range;

use serde::de::{DeserializeOwned, IntoDeserializer};
use serde::Deserialize;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

pub type Str = Spanned<String>;

/// The whole file, read section by section. A section that failed to deserialize is `None`
/// (its error is already reported) so validation can skip checks that would only echo it.
#[derive(Debug, Default)]
pub struct RawFile {
    pub workers: Option<Spanned<usize>>,
    pub worker_model: Option<Str>,
    pub admin: Option<RawAdmin>,
    pub access_log: Option<Str>,
    pub drain_delay: Option<Str>,
    pub watch_config: Option<bool>,
    pub upgrade_socket: Option<Str>,
    pub shutdown_timeout: Option<Str>,
    pub listeners: Vec<Spanned<Option<RawListener>>>,
    pub routes: Vec<Spanned<Option<RawRoute>>>,
    pub upstreams: Vec<RawUpstreamEntry>,
    /// `[acme]`: where automatic certificates come from and are kept.
    pub acme: Option<Spanned<Option<RawAcme>>>,
    pub fleet: Option<Spanned<RawFleet>>,
}

/// `[acme]`: settings shared by every `tls = { acme = ... }` listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAcme {
    pub directory: Option<Str>,
    pub staging: Option<Spanned<bool>>,
    pub ca_bundle: Option<Str>,
    pub state_dir: Option<Str>,
    pub renew_before: Option<Str>,
}

/// `tls = { acme = { email, domains, challenge } }` on a listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListenerAcme {
    pub email: Option<Str>,
    pub domains: Option<Spanned<Vec<Str>>>,
    pub challenge: Option<Str>,
}

/// `[fleet]`: etcd endpoints and the key prefix.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFleet {
    pub etcd: Option<Spanned<Vec<Str>>>,
    pub prefix: Option<Str>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub listen: Option<Str>,
    pub token: Option<Str>,
    pub token_file: Option<Str>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    pub name: Option<Str>,
    pub listen: Option<Str>,
    pub header_read_timeout: Option<Str>,
    pub max_header_bytes: Option<Spanned<IntOrStr>>,
    pub max_headers: Option<Spanned<usize>>,
    pub expose_details: Option<bool>,
    pub allow_trace: Option<bool>,
    pub tls: Option<Spanned<RawListenerTls>>,
    pub redirect_https: Option<Spanned<bool>>,
    pub h2_max_concurrent_streams: Option<Spanned<u32>>,
    pub h2_initial_stream_window: Option<Spanned<IntOrStr>>,
    pub h2_initial_connection_window: Option<Spanned<IntOrStr>>,
    pub h2_keepalive_interval: Option<Str>,
    pub h2_keepalive_timeout: Option<Str>,
    pub h2_max_pending_accept_reset_streams: Option<Spanned<usize>>,
    pub h2_max_local_error_reset_streams: Option<Spanned<usize>>,
}

/// `tls = { cert, key }` or `tls = { certificates = [{ cert, key }, ...] }` on a listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListenerTls {
    pub cert: Option<Str>,
    pub key: Option<Str>,
    pub certificates: Option<Spanned<Vec<Spanned<RawCertPair>>>>,
    pub handshake_timeout: Option<Str>,
    pub reload_interval: Option<Str>,
    pub expiry_warning: Option<Str>,
    pub acme: Option<Spanned<RawListenerAcme>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCertPair {
    pub cert: Option<Str>,
    pub key: Option<Str>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: Option<Str>,
    pub listener: Option<Str>,
    pub host: Option<Str>,
    pub path_prefix: Option<Str>,
    pub upstream: Option<Str>,
    pub timeout: Option<Str>,
    pub per_try_timeout: Option<Str>,
    pub hedge_after: Option<Str>,
    pub retries: Option<u32>,
    pub retry_non_idempotent: Option<bool>,
    pub retry_on_status: Option<Vec<Spanned<u16>>>,
    pub replay_buffer: Option<Spanned<IntOrStr>>,
    pub retry_budget_ratio: Option<Spanned<f64>>,
    pub retry_budget_per_second: Option<u32>,
    pub tunnel_idle_timeout: Option<Str>,
}

/// One `[upstream.NAME]` with its sub-tables, each read separately.
#[derive(Debug)]
pub struct RawUpstreamEntry {
    pub name: Str,
    pub body: Spanned<Option<RawUpstream>>,
    pub health: Option<Spanned<Option<RawHealth>>>,
    pub passive: Option<Spanned<Option<RawPassive>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub targets: Option<Spanned<Vec<Str>>>,
    pub balance: Option<RawBalance>,
    pub protocol: Option<Str>,
    pub connect_timeout: Option<Str>,
    pub idle_timeout: Option<Str>,
    pub learn_idle_timeout: Option<bool>,
    pub max_idle_per_target: Option<usize>,
    pub max_connections: Option<Spanned<u32>>,
    pub queue_size: Option<usize>,
    pub queue_timeout: Option<Str>,
    pub body_idle_timeout: Option<Str>,
    pub max_response_header_bytes: Option<Spanned<IntOrStr>>,
    pub slow_start: Option<Str>,
    pub panic_threshold: Option<Spanned<f64>>,
    pub outage_hold: Option<Str>,
    pub outage_hold_queue: Option<usize>,
    pub ca_file: Option<Str>,
    pub sni: Option<Str>,
    pub client_cert: Option<Str>,
    pub client_key: Option<Str>,
    pub insecure_skip_verify: Option<Spanned<bool>>,
    /// A source name (`"dns"`) or an inline table naming one; read in `validate_upstream.rs`.
    pub discovery: Option<Spanned<toml::Value>>,
    pub dns_interval: Option<Str>,
    pub dns_nameserver: Option<Str>,
    pub h2_max_streams: Option<Spanned<u32>>,
    pub h2_max_connections: Option<Spanned<u32>>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RawBalance {
    RoundRobin,
    LeastRequest,
    PeakEwma,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    #[serde(rename = "type")]
    pub kind: Option<RawHealthKind>,
    pub path: Option<Str>,
    pub interval: Option<Str>,
    pub timeout: Option<Str>,
    pub expected_status: Option<Spanned<IntOrStr>>,
    pub rise: Option<Spanned<u32>>,
    pub fall: Option<Spanned<u32>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RawHealthKind {
    Http,
    Tcp,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPassive {
    pub consecutive_failures: Option<u32>,
    pub base_ejection: Option<Str>,
    pub max_ejection: Option<Str>,
    pub max_ejected_percent: Option<Spanned<u32>>,
    pub failure_statuses: Option<Vec<Spanned<u16>>>,
}

/// A value written either as an integer or as a string (`65536` or `"64KiB"`, `200` or
/// `"200-399"`); validation gives the string its meaning.
#[derive(Debug, Clone, PartialEq)]
pub enum IntOrStr {
    Int(i64),
    Str(String),
}

impl<'de> Deserialize<'de> for IntOrStr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = IntOrStr;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an integer or a string")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<IntOrStr, E> {
                Ok(IntOrStr::Int(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<IntOrStr, E> {
                i64::try_from(v)
                    .map(IntOrStr::Int)
                    .map_err(|_| E::custom("integer too large"))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<IntOrStr, E> {
                Ok(IntOrStr::Str(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// A problem found while reading the TOML: a syntax error, an unknown key or a wrong type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadError {
    pub span: Range<usize>,
    /// Dotted path of the section (or key) involved.
    pub field: String,
    pub message: String,
}

const TOP_KEYS: &str =
    "workers, worker_model, admin, access_log, drain_delay, shutdown_timeout, watch_config, upgrade_socket, listener, route, upstream, acme, fleet";

/// Reads `src` section by section. `Err` means the TOML itself is malformed (nothing else is
/// worth checking); `Ok` carries whatever could be read plus the per-section errors.
pub fn read(src: &str) -> Result<(RawFile, Vec<ReadError>), Vec<ReadError>> {
    let (root, syntax) = DeTable::parse_recoverable(src);
    if !syntax.is_empty() {
        return Err(syntax.iter().map(|e| toml_error(e, "")).collect());
    }
    let mut raw = RawFile::default();
    let mut errors = Vec::new();
    for (key, value) in root.into_inner() {
        let key_span = key.span();
        match key.get_ref().as_ref() {
            "workers" => raw.workers = section(value, "workers", &mut errors),
            "worker_model" => raw.worker_model = section(value, "worker_model", &mut errors),
            "access_log" => raw.access_log = section(value, "access_log", &mut errors),
            "drain_delay" => raw.drain_delay = section(value, "drain_delay", &mut errors),
            "watch_config" => raw.watch_config = section(value, "watch_config", &mut errors),
            "upgrade_socket" => raw.upgrade_socket = section(value, "upgrade_socket", &mut errors),
            "shutdown_timeout" => {
                raw.shutdown_timeout = section(value, "shutdown_timeout", &mut errors)
            }
            "admin" => raw.admin = section(value, "admin", &mut errors),
            "listener" => raw.listeners = array_of_tables(value, "listener", &mut errors),
            "route" => raw.routes = array_of_tables(value, "route", &mut errors),
            "upstream" => raw.upstreams = upstreams(value, &mut errors),
            "acme" => raw.acme = Some(spanned_section(value, "acme", &mut errors)),
            "fleet" => raw.fleet = section(value, "fleet", &mut errors),
            other => errors.push(ReadError {
                span: key_span,
                field: other.to_string(),
                message: format!("unknown key `{other}`, expected one of {TOP_KEYS}"),
            }),
        }
    }
    for e in &mut errors {
        // A wrong-type error points at the value; name its key so the field path is exact.
        if e.message.starts_with("unknown field") {
            continue;
        }
        if let Some(key) = key_at(src, e.span.start).filter(|k| *k != e.field) {
            e.field = format!("{}.{key}", e.field);
        }
    }
    Ok((raw, errors))
}

/// The key of the `key = value` line holding byte offset `at`, if that line is one.
fn key_at(src: &str, at: usize) -> Option<&str> {
    let start = src.get(..at)?.rfind('\n').map_or(0, |i| i + 1);
    let (key, _) = src[start..].split_once('=')?;
    let key = key.trim();
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    bare.then_some(key)
}

/// Deserializes one value; on failure records the error and gives `None`. In a table, the key
/// at fault is dropped and the rest read again, so every bad key of a section is reported and the
/// good ones still reach validation (a dropped key falls back to its default there).
fn section<T: DeserializeOwned>(
    value: Spanned<DeValue<'_>>,
    field: &str,
    errors: &mut Vec<ReadError>,
) -> Option<T> {
    let span = value.span();
    let mut value = value.into_inner();
    loop {
        let attempt = Spanned::new(span.clone(), value.clone());
        let e = match T::deserialize(attempt.into_deserializer()) {
            Ok(v) => return Some(v),
            Err(e) => e,
        };
        errors.push(toml_error(&e, field));
        let (DeValue::Table(table), Some(at)) = (&mut value, e.span()) else {
            return None;
        };
        let bad = table
            .iter()
            .find(|(k, v)| k.span().start <= at.start && at.start < v.span().end)
            .map(|(k, _)| k.clone())?;
        table.remove(&bad);
    }
}

fn spanned_section<T: DeserializeOwned>(
    value: Spanned<DeValue<'_>>,
    field: &str,
    errors: &mut Vec<ReadError>,
) -> Spanned<Option<T>> {
    let span = value.span();
    Spanned::new(span, section(value, field, errors))
}

fn array_of_tables<T: DeserializeOwned>(
    value: Spanned<DeValue<'_>>,
    name: &str,
    errors: &mut Vec<ReadError>,
) -> Vec<Spanned<Option<T>>> {
    let span = value.span();
    match value.into_inner() {
        DeValue::Array(items) => items
            .into_iter()
            .enumerate()
            .map(|(i, item)| spanned_section(item, &format!("{name}[{i}]"), errors))
            .collect(),
        _ => {
            errors.push(ReadError {
                span,
                field: name.to_string(),
                message: format!("expected one or more [[{name}]] tables"),
            });
            Vec::new()
        }
    }
}

fn upstreams(value: Spanned<DeValue<'_>>, errors: &mut Vec<ReadError>) -> Vec<RawUpstreamEntry> {
    let span = value.span();
    let DeValue::Table(table) = value.into_inner() else {
        errors.push(ReadError {
            span,
            field: "upstream".to_string(),
            message: "expected [upstream.NAME] tables".to_string(),
        });
        return Vec::new();
    };
    let mut out = Vec::new();
    for (name, value) in table {
        let name = Spanned::new(name.span(), name.get_ref().to_string());
        let field = format!("upstream.{}", name.get_ref());
        let span = value.span();
        let DeValue::Table(body) = value.into_inner() else {
            errors.push(ReadError {
                span,
                field,
                message: "expected a table [upstream.NAME]".to_string(),
            });
            continue;
        };
        // Split off the sub-tables so each one is checked (and reported) on its own.
        let (mut rest, mut health, mut passive) = (DeTable::new(), None, None);
        for (k, v) in body {
            match k.get_ref().as_ref() {
                "health" => health = Some(spanned_section(v, &format!("{field}.health"), errors)),
                "passive" => {
                    passive = Some(spanned_section(v, &format!("{field}.passive"), errors))
                }
                _ => {
                    rest.insert(k, v);
                }
            }
        }
        let body = spanned_section(Spanned::new(span, DeValue::Table(rest)), &field, errors);
        out.push(RawUpstreamEntry {
            name,
            body,
            health,
            passive,
        });
    }
    out
}

/// Turns a toml/serde error into a [`ReadError`], naming the offending key when serde says it.
fn toml_error(e: &toml::de::Error, section: &str) -> ReadError {
    let message = e.message().trim_end().to_string();
    let key = message
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split('`').next());
    let field = match (key, section.is_empty()) {
        (Some(k), true) => k.to_string(),
        (Some(k), false) => format!("{section}.{k}"),
        (None, _) => section.to_string(),
    };
    ReadError {
        span: e.span().unwrap_or(0..0),
        field,
        message,
    }
}
