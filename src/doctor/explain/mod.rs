//! `gatewise explain`: reads proxy logs and reports causes, culprits and fixes.
//!
//! Each foreign format has its own line parser (`nginx_error`, `nginx_access`, `haproxy`, `envoy`,
//! `gatewise_log`) that turns one line into zero or more [`Failure`]s named in the RFC 9209 cause
//! vocabulary of [`Cause`]. [`input`] streams files (plain, gzip or stdin) line by line with one
//! reused buffer, [`detect`] picks the format per file from its first lines, [`report`] tallies
//! failures by cause, target and minute and finds the episodes, [`render`] prints them with the
//! fix for each cause from [`causes`]. Lines no parser understands are counted and sampled.

pub mod causes;
pub mod detect;
pub mod envoy;
pub mod gatewise_log;
pub mod haproxy;
pub mod input;
mod join;
pub mod nginx_access;
pub mod nginx_error;
pub mod render;
pub mod report;
#[cfg(test)]
mod robustness;
mod time;
mod view;

use std::process::ExitCode;

use crate::cause::Cause;
use crate::cli::{ExplainArgs, LogFormat};

pub use report::Report;

/// A minute of wall-clock time as `YYYY-MM-DDTHH:MM` (ASCII), the timeline's bucket.
///
/// Kept as bytes so that comparing and hashing are cheap and ordering is chronological.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Minute(pub [u8; 16]);

impl Minute {
    pub fn as_str(&self) -> &str {
        // Built only from ASCII digits and separators by `time`.
        std::str::from_utf8(&self.0).unwrap_or("????-??-??T??:??")
    }
}

/// One failed upstream attempt (or a request the proxy could not send), as a log tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure<'a> {
    /// When, to the minute, if the line says.
    pub minute: Option<Minute>,
    /// `None`: the log shows a proxy-made 5xx but not why (e.g. a plain nginx access log).
    pub cause: Option<Cause>,
    /// Status the client saw, when the line says.
    pub status: Option<u16>,
    /// The foreign message or code this came from, e.g. `SC`, `UF`, `upstream timed out`.
    pub code: &'a str,
    /// Upstream address or name, when the line says.
    pub target: Option<&'a str>,
    /// The client request (`GET /x HTTP/1.1` or just the path), when the line says.
    pub request: Option<&'a str>,
    /// A later attempt of the same request succeeded: the client never saw this failure.
    pub recovered: bool,
}

/// What a parser made of one line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Line {
    /// The line has this format; its failures (if any) went to the sink.
    Understood(Option<Minute>),
    /// The line is one client request (an access-log line) that ended with `status`; its failed
    /// attempts (if any) went to the sink first. What clients saw is counted from these.
    Request(Option<Minute>, u16),
    /// Not this format, or a message of it we cannot classify.
    Unknown,
}

/// The concrete formats (`auto` resolved).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    NginxError,
    NginxAccess,
    Haproxy,
    Envoy,
    Gatewise,
}

impl Format {
    pub const ALL: [Format; 5] = [
        Format::Gatewise,
        Format::NginxError,
        Format::Haproxy,
        Format::Envoy,
        Format::NginxAccess,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Format::NginxError => "nginx-error",
            Format::NginxAccess => "nginx-access",
            Format::Haproxy => "haproxy",
            Format::Envoy => "envoy",
            Format::Gatewise => "gatewise",
        }
    }

    /// `None` for `auto`.
    pub fn from_cli(f: LogFormat) -> Option<Format> {
        match f {
            LogFormat::Auto => None,
            LogFormat::NginxError => Some(Format::NginxError),
            LogFormat::NginxAccess => Some(Format::NginxAccess),
            LogFormat::Haproxy => Some(Format::Haproxy),
            LogFormat::Envoy => Some(Format::Envoy),
            LogFormat::Gatewise => Some(Format::Gatewise),
        }
    }

    /// Parses one line (without its newline), handing each failure to `sink`.
    pub fn parse<'a>(self, line: &'a str, sink: &mut dyn FnMut(Failure<'a>)) -> Line {
        match self {
            Format::NginxError => nginx_error::parse(line, sink),
            Format::NginxAccess => nginx_access::parse(line, sink),
            Format::Haproxy => haproxy::parse(line, sink),
            Format::Envoy => envoy::parse(line, sink),
            Format::Gatewise => gatewise_log::parse(line, sink),
        }
    }
}

/// Runs `gatewise explain`; exit 0 when nothing failed, 1 with findings, 2 on usage errors
/// (bad arguments, unreadable files, a file in no format we know).
pub fn run(args: &ExplainArgs) -> ExitCode {
    let forced = Format::from_cli(args.format);
    let mut report = Report::default();
    let mut io_error = false;
    for path in &args.files {
        if let Err(err) = input::explain_path(path, forced, &mut report) {
            eprintln!("gatewise explain: {}: {err}", path.display());
            io_error = true;
        }
    }
    // A file no parser recognised is most likely the wrong file: say so, never "no failures".
    for file in report
        .files
        .iter()
        .filter(|f| f.format.is_none() && f.lines > 0)
    {
        eprintln!(
            "gatewise explain: {}: format not recognised from its first lines; try --format",
            file.path
        );
        io_error = true;
    }
    report.join_nginx();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let written = if args.json {
        render::json(&report, &mut out)
    } else {
        render::text(&report, &mut out)
    };
    if let Err(err) = written {
        if err.kind() != std::io::ErrorKind::BrokenPipe {
            eprintln!("gatewise explain: writing the report: {err}");
            return ExitCode::from(2);
        }
    }
    if io_error {
        ExitCode::from(2)
    } else if report.failures() > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
