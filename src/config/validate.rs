//! Raw file → typed [`Config`], collecting every error with its location.
//!
//! Conversion never stops at the first problem: each field that fails records a [`ConfigError`]
//! (file, 1-based line and column, dotted field path, what was expected) and a placeholder is used
//! so the remaining fields and the references between sections are still checked. Raw structs are
//! destructured exhaustively, so a field added to `file.rs` fails to compile until it is handled.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use super::file::{self, IntOrStr, RawAdmin, Str};
use super::{defaults, validate_routes, validate_upstream, values};
use super::{AccessLog, AdminConfig, Config, WorkerModel};

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    /// Dotted path of the field, e.g. `upstream.app.connect_timeout`.
    pub field: String,
    pub message: String,
}

/// Every problem found in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    pub fn io(path: &Path, err: std::io::Error) -> Self {
        ConfigErrors(vec![ConfigError {
            file: path.display().to_string(),
            line: 0,
            column: 0,
            field: String::new(),
            message: format!("cannot read: {err}"),
        }])
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for e in &self.0 {
            // Line 0 means the file as a whole (it could not be read); an empty field means a
            // TOML syntax error, which belongs to no field.
            match (e.line, e.field.is_empty()) {
                (0, _) => writeln!(f, "{}: {}", e.file, e.message)?,
                (_, true) => writeln!(f, "{}:{}:{}: {}", e.file, e.line, e.column, e.message)?,
                (_, false) => writeln!(
                    f,
                    "{}:{}:{}: {}: {}",
                    e.file, e.line, e.column, e.field, e.message
                )?,
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Parses and validates `src` (named `file` in errors).
pub fn parse(src: &str, file: &str) -> Result<Config, ConfigErrors> {
    let mut cx = Cx {
        src,
        file,
        errors: Vec::new(),
        acme_at: Vec::new(),
    };
    let raw = match file::read(src) {
        Ok((raw, errors)) => {
            for e in errors {
                cx.err(e.span, &e.field, e.message);
            }
            raw
        }
        Err(errors) => {
            for e in errors {
                cx.err(e.span, &e.field, e.message);
            }
            return Err(cx.finish());
        }
    };
    let config = build(&mut cx, raw);
    if cx.errors.is_empty() {
        Ok(config)
    } else {
        Err(cx.finish())
    }
}

/// Collects errors, turning byte spans into line and column, and parses common value kinds.
pub(super) struct Cx<'a> {
    src: &'a str,
    file: &'a str,
    errors: Vec<ConfigError>,
    /// Where each listener's `acme` table was written, in listener order (for the checks that
    /// need every listener, `validate_acme::global`).
    pub(super) acme_at: Vec<super::validate_acme::AcmeAt>,
}

impl Cx<'_> {
    pub(super) fn err(&mut self, span: Range<usize>, field: &str, message: impl fmt::Display) {
        let (line, column) = position(self.src, span.start);
        self.errors.push(ConfigError {
            file: self.file.to_string(),
            line,
            column,
            field: field.to_string(),
            message: message.to_string(),
        });
    }

    /// A file path as written in the config: relative paths are taken from the config file's
    /// directory, so a config works whatever directory gatewise is started from.
    pub(super) fn path(&self, written: &str) -> PathBuf {
        let dir = Path::new(self.file).parent().unwrap_or(Path::new(""));
        dir.join(written)
    }

    /// Records that a required field is absent, unless it was present but already reported as
    /// unreadable (then its key was dropped, and "required" would only repeat that error).
    pub(super) fn missing(&mut self, span: Range<usize>, field: &str, message: &str) {
        if !self.errors.iter().any(|e| e.field == field) {
            self.err(span, field, message);
        }
    }

    /// Records `r`'s error at `span` and gives `None`, or gives the value.
    pub(super) fn check<T>(
        &mut self,
        r: Result<T, String>,
        span: Range<usize>,
        field: &str,
    ) -> Option<T> {
        r.map_err(|m| self.err(span, field, m)).ok()
    }

    /// A duration field; `nonzero` refuses `"0s"` where zero would disable the thing silently.
    pub(super) fn duration(
        &mut self,
        v: Option<Str>,
        field: &str,
        default: Duration,
        nonzero: bool,
    ) -> Duration {
        let Some(v) = v else { return default };
        let span = v.span();
        match self.check(values::parse_duration(v.get_ref()), span.clone(), field) {
            Some(d) if nonzero && d.is_zero() => {
                self.err(span, field, "must be greater than zero");
                default
            }
            Some(d) => d,
            None => default,
        }
    }

    pub(super) fn size(
        &mut self,
        v: Option<Spanned<IntOrStr>>,
        field: &str,
        default: usize,
    ) -> usize {
        let Some(v) = v else { return default };
        let span = v.span();
        let r = match v.into_inner() {
            IntOrStr::Int(n) => {
                usize::try_from(n).map_err(|_| format!("expected a size in bytes, got {n}"))
            }
            IntOrStr::Str(s) => values::parse_size(&s),
        };
        match self.check(r, span.clone(), field) {
            Some(0) => {
                self.err(span, field, "must be greater than zero");
                default
            }
            Some(n) => n,
            None => default,
        }
    }

    /// A count that must be at least 1.
    pub(super) fn nonzero<T: Copy + PartialEq + From<u8>>(
        &mut self,
        v: Option<Spanned<T>>,
        field: &str,
        default: T,
    ) -> T {
        match v {
            Some(v) if *v.get_ref() == T::from(0) => {
                self.err(v.span(), field, "must be at least 1");
                default
            }
            Some(v) => *v.get_ref(),
            None => default,
        }
    }

    pub(super) fn statuses(
        &mut self,
        v: Option<Vec<Spanned<u16>>>,
        field: &str,
        default: &[u16],
    ) -> Vec<u16> {
        let Some(v) = v else { return default.to_vec() };
        v.into_iter()
            .filter_map(|s| {
                self.check(
                    values::check_status(*s.get_ref()).map(|_| *s.get_ref()),
                    s.span(),
                    field,
                )
            })
            .collect()
    }

    fn finish(mut self) -> ConfigErrors {
        self.errors.sort_by_key(|e| (e.line, e.column));
        ConfigErrors(self.errors)
    }
}

/// 1-based line and column (in characters) of byte `offset`.
fn position(src: &str, offset: usize) -> (usize, usize) {
    let before = src.get(..offset).unwrap_or(src);
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (
        before.matches('\n').count() + 1,
        before[line_start..].chars().count() + 1,
    )
}

fn build(cx: &mut Cx<'_>, raw: file::RawFile) -> Config {
    let file::RawFile {
        workers,
        worker_model,
        admin,
        access_log,
        drain_delay,
        watch_config,
        upgrade_socket,
        shutdown_timeout,
        listeners,
        routes,
        upstreams,
        acme,
        fleet,
    } = raw;
    let workers = workers.map(|w| cx.nonzero(Some(w), "workers", 1));
    let worker_model = worker_model_config(cx, worker_model);
    let (admin, admin_span) = admin_config(cx, admin);
    let access_log = access_log_config(cx, access_log);
    let drain_delay = cx.duration(drain_delay, "drain_delay", defaults::DRAIN_DELAY, false);
    let shutdown_timeout = cx.duration(
        shutdown_timeout,
        "shutdown_timeout",
        defaults::SHUTDOWN_TIMEOUT,
        false,
    );
    let (mut listeners, listeners_complete) = validate_routes::listener_configs(cx, listeners);
    super::validate_acme::global(cx, acme, &mut listeners);
    if let Some(admin_addr) = admin.listen {
        if let Some(l) = listeners
            .iter()
            .find(|l| l.listen == admin_addr && l.listen.port() != 0)
        {
            cx.err(
                admin_span.clone().unwrap_or(0..0),
                "admin.listen",
                format!("{admin_addr} is also the address of listener {:?}", l.name),
            );
        }
    }
    let upstream_names: Vec<String> = upstreams.iter().map(|u| u.name.get_ref().clone()).collect();
    let upstreams: BTreeMap<String, _> = upstreams
        .into_iter()
        .filter_map(|u| validate_upstream::upstream_config(cx, u))
        .collect();
    // With a fleet, routes may all come from etcd (docs/fleet.md): none in the file is fine.
    let routes = if routes.is_empty() && fleet.is_some() {
        Vec::new()
    } else {
        validate_routes::route_configs(cx, routes, &listeners, listeners_complete, &upstream_names)
    };
    Config {
        workers,
        worker_model,
        admin,
        access_log,
        watch_config: watch_config.unwrap_or(true),
        upgrade_socket: upgrade_socket.map(|p| PathBuf::from(p.into_inner())),
        drain_delay,
        shutdown_timeout,
        listeners,
        routes,
        upstreams,
        fleet: fleet.and_then(|f| super::validate_fleet::fleet_config(cx, f)),
    }
}

/// The admin settings, and where `admin.listen` was written (for a clash with a listener).
fn admin_config(cx: &mut Cx<'_>, admin: Option<RawAdmin>) -> (AdminConfig, Option<Range<usize>>) {
    let default = || {
        Some(
            defaults::ADMIN_LISTEN
                .parse()
                .expect("valid default address"),
        )
    };
    let (listen, token, token_file) = match admin {
        Some(RawAdmin {
            listen,
            token,
            token_file,
        }) => (listen, token, token_file),
        None => (None, None, None),
    };
    let span = listen.as_ref().map(|l| l.span());
    let listen = match listen {
        None => default(),
        Some(v) if v.get_ref() == "off" => None,
        Some(v) => cx
            .check(socket_addr(v.get_ref()), v.span(), "admin.listen")
            .or_else(default),
    };
    let token = admin_token(cx, token, token_file);
    if let (Some(addr), None) = (listen, &token) {
        if !addr.ip().is_loopback() {
            cx.err(
                span.clone().unwrap_or(0..0),
                "admin.listen",
                format!(
                    "{addr} is not a loopback address: set admin.token or admin.token_file, \
                     so that /status, /metrics and /reload are not open to the network"
                ),
            );
        }
    }
    (AdminConfig { listen, token }, span)
}

/// `admin.token` or the first line of `admin.token_file` (not both).
fn admin_token(cx: &mut Cx<'_>, token: Option<Str>, file: Option<Str>) -> Option<String> {
    match (token, file) {
        (Some(t), Some(f)) => {
            cx.err(
                f.span(),
                "admin.token_file",
                "set admin.token or admin.token_file, not both",
            );
            Some(t.into_inner())
        }
        (Some(t), None) if t.get_ref().trim().is_empty() => {
            cx.err(t.span(), "admin.token", "must not be empty");
            None
        }
        (Some(t), None) => Some(t.into_inner()),
        (None, Some(f)) => {
            let read = std::fs::read_to_string(f.get_ref())
                .map_err(|e| format!("cannot read {:?}: {e}", f.get_ref()))
                .and_then(|s| match s.lines().next().map(str::trim) {
                    Some(t) if !t.is_empty() => Ok(t.to_string()),
                    _ => Err(format!("{:?} holds no token", f.get_ref())),
                });
            cx.check(read, f.span(), "admin.token_file")
        }
        (None, None) => None,
    }
}

fn worker_model_config(cx: &mut Cx<'_>, v: Option<Str>) -> WorkerModel {
    let Some(v) = v else {
        return WorkerModel::default();
    };
    match v.get_ref().as_str() {
        "per_worker" => WorkerModel::PerWorker,
        "work_stealing" => WorkerModel::WorkStealing,
        other => {
            cx.err(
                v.span(),
                "worker_model",
                format!("expected \"per_worker\" or \"work_stealing\", got {other:?}"),
            );
            WorkerModel::default()
        }
    }
}

fn access_log_config(cx: &mut Cx<'_>, v: Option<Str>) -> AccessLog {
    let Some(v) = v else { return AccessLog::Stdout };
    match v.get_ref().as_str() {
        "stdout" => AccessLog::Stdout,
        "off" => AccessLog::Off,
        "" => {
            cx.err(
                v.span(),
                "access_log",
                "expected \"stdout\", \"off\" or a file path",
            );
            AccessLog::Stdout
        }
        path => AccessLog::File(PathBuf::from(path)),
    }
}

pub(super) fn socket_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse()
        .map_err(|_| format!("expected IP:PORT like \"127.0.0.1:8080\" or \"[::]:443\", got {s:?}"))
}

#[cfg(test)]
mod tests {
    use super::position;

    #[test]
    fn positions_are_one_based_in_characters() {
        let src = "a = 1\nbé = \"x\"\n";
        assert_eq!(position(src, 0), (1, 1));
        assert_eq!(position(src, 6), (2, 1));
        assert_eq!(position(src, src.find('=').unwrap()), (1, 3));
        assert_eq!(position(src, src.rfind('"').unwrap()), (2, 8));
    }
}
