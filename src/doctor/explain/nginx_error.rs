//! nginx error log: `2026/11/21 12:00:00 [error] 7#7: *5 MESSAGE, client: …, upstream: "…"`.
//!
//! The message names the failing syscall or check, and its ` while …` tail says how far the
//! attempt got (connecting, sending, reading the header, reading the body); the cause needs both.
//! Lines of this format that are not about an upstream (missing files, client aborts) are
//! understood and carry no failure; upstream messages we cannot classify count as unknown.

use std::sync::LazyLock;

use memchr::memmem::{Finder, FinderRev};

use super::{time, Failure, Line};
use crate::cause::Cause;

// Searchers built once: building one per line cost more than the search itself.
static WHILE: LazyLock<FinderRev<'static>> = LazyLock::new(|| FinderRev::new(" while "));
static CLIENT: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(", client: "));
static UPSTREAM: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(", upstream: \""));
static REQUEST: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(", request: \""));

/// How far the attempt got, from the ` while …` context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Connect,
    Send,
    Header,
    Body,
    Unknown,
}

fn stage(msg: &str) -> Stage {
    let Some(at) = WHILE.rfind(msg.as_bytes()) else {
        return Stage::Unknown;
    };
    let ctx = &msg[at + 7..];
    if ctx.starts_with("connecting") || ctx.starts_with("SSL handshaking") {
        Stage::Connect
    } else if ctx.starts_with("sending request") || ctx.starts_with("sending to upstream") {
        Stage::Send
    } else if ctx.starts_with("reading response header") {
        Stage::Header
    } else if ctx.starts_with("reading upstream") || ctx.starts_with("sending to client") {
        Stage::Body
    } else {
        Stage::Unknown
    }
}

/// The errno inside `(111: Connection refused)`.
fn errno(msg: &str) -> Option<u32> {
    let open = msg.find(" failed (")? + 9;
    let rest = &msg[open..];
    rest[..rest.find(':')?].parse().ok()
}

/// A failed syscall on an upstream socket, by errno and stage.
fn syscall(msg: &str, st: Stage, connect: bool) -> (Cause, &'static str) {
    match errno(msg) {
        Some(111) => (Cause::ConnectionRefused, "(111: Connection refused)"),
        Some(2) => (Cause::ConnectionRefused, "(2: No such file or directory)"),
        Some(13) => (Cause::ConnectionRefused, "(13: Permission denied)"),
        Some(101) => (Cause::ConnectionRefused, "(101: Network is unreachable)"),
        Some(113) => (Cause::ConnectionRefused, "(113: No route to host)"),
        Some(99) => (
            Cause::ConnectionLimitReached,
            "(99: Cannot assign requested address)",
        ),
        Some(24) => (Cause::ConnectionLimitReached, "(24: Too many open files)"),
        Some(110) if connect || st == Stage::Connect => {
            (Cause::ConnectionTimeout, "(110: Connection timed out)")
        }
        Some(110) => (Cause::HttpResponseTimeout, "(110: Connection timed out)"),
        _ if connect => (Cause::ConnectionRefused, "connect() failed"),
        Some(104) if st == Stage::Body => (
            Cause::HttpResponseIncomplete,
            "(104: Connection reset by peer)",
        ),
        Some(104) => (
            Cause::ConnectionTerminated,
            "(104: Connection reset by peer)",
        ),
        Some(32) => (Cause::ConnectionTerminated, "(32: Broken pipe)"),
        _ if st == Stage::Body => (Cause::HttpResponseIncomplete, "recv() failed"),
        _ => (Cause::ConnectionTerminated, "recv()/send() failed"),
    }
}

/// Maps an upstream message to its cause and a stable label; `None` when it is not one.
pub fn classify(msg: &str) -> Option<(Cause, &'static str)> {
    let st = stage(msg);
    let s = msg;
    let found = if s.starts_with("connect() ") {
        syscall(s, st, true)
    } else if s.starts_with("upstream timed out") {
        match st {
            Stage::Connect => (
                Cause::ConnectionTimeout,
                "upstream timed out while connecting",
            ),
            _ => (
                Cause::HttpResponseTimeout,
                "upstream timed out while reading",
            ),
        }
    } else if s.starts_with("upstream prematurely closed connection") {
        match st {
            Stage::Body => (
                Cause::HttpResponseIncomplete,
                "upstream prematurely closed (body)",
            ),
            _ => (
                Cause::ConnectionTerminated,
                "upstream prematurely closed connection",
            ),
        }
    } else if s.starts_with("recv() failed")
        || s.starts_with("readv() failed")
        || s.starts_with("writev() failed")
        || s.starts_with("send() failed")
        || s.starts_with("sendfile() failed")
    {
        if st == Stage::Unknown && !s.contains("upstream") {
            return None; // a client socket, not an upstream one
        }
        syscall(s, st, false)
    } else if s.starts_with("socket() failed") {
        (Cause::ConnectionLimitReached, "socket() failed")
    } else if s.starts_with("upstream sent too big header") {
        (
            Cause::HttpResponseHeaderSectionSize,
            "upstream sent too big header",
        )
    } else if s.starts_with("upstream sent ") {
        (Cause::HttpProtocolError, "upstream sent invalid response")
    } else if s.starts_with("no live upstreams") {
        (Cause::DestinationUnavailable, "no live upstreams")
    } else if s.starts_with("upstream SSL certificate") {
        (Cause::TlsCertificateError, "upstream SSL certificate error")
    } else if s.starts_with("SSL_do_handshake() failed") {
        if s.contains("certificate verify failed") {
            (
                Cause::TlsCertificateError,
                "SSL_do_handshake() certificate verify failed",
            )
        } else {
            (Cause::TlsProtocolError, "SSL_do_handshake() failed")
        }
    } else if s.starts_with("peer closed connection in SSL handshake")
        || (st != Stage::Unknown && s.starts_with("SSL_"))
    {
        (Cause::TlsProtocolError, "SSL error with upstream")
    } else if s.contains(" could not be resolved") || s.starts_with("host not found in upstream") {
        (Cause::DnsError, "could not be resolved")
    } else {
        return None;
    };
    Some(found)
}

/// Messages about upstreams that are not failures of a request.
fn benign(msg: &str) -> bool {
    msg.starts_with("upstream server temporarily disabled")
        || msg.starts_with("an upstream response is buffered")
        || msg.starts_with("upstream sent more data than specified")
            && msg.contains("while reading upstream")
}

/// The value of `, NAME: "VALUE"` in the tail of the line.
fn quoted_field<'a>(tail: &'a str, key: &Finder<'_>) -> Option<&'a str> {
    let at = key.find(tail.as_bytes())? + key.needle().len();
    let rest = &tail[at..];
    Some(&rest[..rest.find('"')?])
}

/// `http://10.0.0.1:80/x` → `10.0.0.1:80`; `http://unix:/run/app.sock:/x` → `unix:/run/app.sock`.
pub fn upstream_target(url: &str) -> &str {
    let no_scheme = url.find("://").map_or(url, |i| &url[i + 3..]);
    if let Some(path) = no_scheme.strip_prefix("unix:") {
        return match path.find(":/") {
            Some(end) => &no_scheme[..end + 5],
            None => no_scheme,
        };
    }
    no_scheme.find('/').map_or(no_scheme, |i| &no_scheme[..i])
}

/// Parses one line of an nginx error log.
pub fn parse<'a>(line: &'a str, sink: &mut dyn FnMut(Failure<'a>)) -> Line {
    let b = line.as_bytes();
    let Some(minute) = time::ymd(b) else {
        return Line::Unknown;
    };
    if b.len() < 22 || b[10] != b' ' || &b[19..21] != b" [" {
        return Line::Unknown;
    }
    let rest = &line[21..];
    let Some(close) = memchr::memchr(b']', rest.as_bytes()) else {
        return Line::Unknown;
    };
    if rest.as_bytes().get(close + 1) != Some(&b' ') {
        return Line::Unknown;
    }
    let level = &rest[..close];
    let rest = &rest[close + 2..];
    // `PID#TID: ` then an optional `*CONNECTION `.
    let Some(colon) = memchr::memchr(b':', rest.as_bytes()) else {
        return Line::Unknown;
    };
    let pid = &rest.as_bytes()[..colon];
    if rest.as_bytes().get(colon + 1) != Some(&b' ') || memchr::memchr(b'#', pid).is_none() {
        return Line::Unknown;
    }
    let mut msg = &rest[colon + 2..];
    if msg.starts_with('*') {
        msg = msg.find(' ').map_or("", |i| &msg[i + 1..]);
    }
    let (msg, tail) = match CLIENT.find(msg.as_bytes()) {
        Some(i) => (&msg[..i], &msg[i..]),
        None => (msg, ""),
    };
    let Some((cause, code)) = classify(msg) else {
        let serious = matches!(level, "error" | "crit" | "alert" | "emerg");
        if serious && !benign(msg) && line.contains("upstream") {
            return Line::Unknown;
        }
        return Line::Understood(Some(minute));
    };
    let mut target = quoted_field(tail, &UPSTREAM).map(upstream_target);
    if target.is_none() && cause == Cause::DnsError {
        target = msg.find(" could not be resolved").map(|i| &msg[..i]);
    }
    sink(Failure {
        minute: Some(minute),
        cause: Some(cause),
        status: None,
        code,
        target,
        request: quoted_field(tail, &REQUEST),
        recovered: false,
    });
    Line::Understood(Some(minute))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(line: &str) -> Option<(Cause, Option<String>)> {
        let mut got = None;
        parse(line, &mut |f| {
            got = Some((f.cause.unwrap(), f.target.map(String::from)))
        });
        got
    }

    #[test]
    fn stage_decides_between_terminated_and_incomplete() {
        let pre = "2026/11/21 12:00:00 [error] 7#7: *5 ";
        let post = ", client: 127.0.0.1, server: _, request: \"GET / HTTP/1.1\", upstream: \"http://10.0.0.1:80/\"";
        let cases = [
            ("upstream prematurely closed connection while reading response header from upstream", Cause::ConnectionTerminated),
            ("upstream prematurely closed connection while reading upstream", Cause::HttpResponseIncomplete),
            ("recv() failed (104: Connection reset by peer) while reading response header from upstream", Cause::ConnectionTerminated),
            ("recv() failed (104: Connection reset by peer) while reading upstream", Cause::HttpResponseIncomplete),
            ("upstream timed out (110: Connection timed out) while connecting to upstream", Cause::ConnectionTimeout),
            ("upstream timed out (110: Connection timed out) while reading response header from upstream", Cause::HttpResponseTimeout),
            ("connect() failed (111: Connection refused) while connecting to upstream", Cause::ConnectionRefused),
            ("connect() to 10.0.0.1:80 failed (99: Cannot assign requested address) while connecting to upstream", Cause::ConnectionLimitReached),
        ];
        for (msg, want) in cases {
            let got = one(&format!("{pre}{msg}{post}"));
            assert_eq!(got, Some((want, Some("10.0.0.1:80".into()))), "{msg}");
        }
    }

    #[test]
    fn targets_from_urls() {
        assert_eq!(upstream_target("http://10.0.0.1:80/x/y"), "10.0.0.1:80");
        assert_eq!(
            upstream_target("fastcgi://127.0.0.1:9000"),
            "127.0.0.1:9000"
        );
        assert_eq!(upstream_target("http://backend/"), "backend");
        assert_eq!(
            upstream_target("http://unix:/run/app.sock:/x"),
            "unix:/run/app.sock"
        );
    }

    #[test]
    fn non_upstream_lines_are_understood_without_failure() {
        let l = "2026/11/21 12:00:00 [error] 7#7: *1 open() \"/x\" failed (2: No such file or directory), client: 1.2.3.4";
        assert_eq!(one(l), None);
        assert!(matches!(parse(l, &mut |_| {}), Line::Understood(Some(_))));
        let odd = "2026/11/21 12:00:00 [error] 7#7: *1 weird thing, client: 1.2.3.4, upstream: \"http://a/\"";
        assert_eq!(parse(odd, &mut |_| {}), Line::Unknown);
        assert_eq!(parse("hello world", &mut |_| {}), Line::Unknown);
    }
}
