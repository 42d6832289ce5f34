//! The access-log line of a [`Record`], written straight into bytes: the same JSON, field for
//! field, that `serde_json` makes of the `Serialize` derive on [`Record`] (a test checks it), at
//! a third of its cost per request (`docs/performance.md`): no serializer state machine per
//! field, and strings that need no escaping (nearly all) are copied whole.

use std::io::Write;

use super::access_log::{Attempt, Record};
use crate::cause::millis;

/// Appends `record` as one JSON object (no newline).
pub fn write(out: &mut Vec<u8>, r: &Record<'_>) {
    out.extend_from_slice(b"{\"time\":\"");
    // RFC 3339 with milliseconds: only digits and `-:.TZ`, nothing to escape.
    let _ = write!(out, "{}", humantime::format_rfc3339_millis(r.time));
    out.extend_from_slice(b"\",\"request_id\":");
    string(out, r.request_id);
    out.extend_from_slice(b",\"client\":\"");
    // An address as text has nothing to escape either.
    let _ = write!(out, "{}", r.client);
    out.extend_from_slice(b"\",\"method\":");
    string(out, r.method);
    out.extend_from_slice(b",\"host\":");
    string(out, r.host);
    out.extend_from_slice(b",\"path\":");
    string(out, r.path);
    out.extend_from_slice(b",\"route\":");
    optional(out, r.route);
    out.extend_from_slice(b",\"upstream\":");
    optional(out, r.upstream);
    out.extend_from_slice(b",\"target\":");
    optional(out, r.target);
    out.extend_from_slice(b",\"status\":");
    number(out, u64::from(r.status));
    out.extend_from_slice(b",\"scheme\":");
    string(out, r.scheme);
    out.extend_from_slice(b",\"protocol\":");
    string(out, r.protocol);
    if let Some(upstream_protocol) = r.upstream_protocol {
        out.extend_from_slice(b",\"upstream_protocol\":");
        string(out, upstream_protocol);
    }
    if let Some(grpc_status) = r.grpc_status {
        out.extend_from_slice(b",\"grpc_status\":");
        number(out, u64::from(grpc_status));
    }
    out.extend_from_slice(b",\"duration_ms\":");
    number(out, millis(r.duration_ms));
    out.extend_from_slice(b",\"bytes_in\":");
    number(out, r.bytes_in);
    out.extend_from_slice(b",\"bytes_out\":");
    number(out, r.bytes_out);
    out.extend_from_slice(b",\"cause\":");
    optional(out, r.cause.map(|c| c.as_str()));
    out.extend_from_slice(b",\"retry_stop\":");
    optional(out, r.retry_stop);
    out.extend_from_slice(b",\"held_ms\":");
    number(out, millis(r.held_ms));
    out.extend_from_slice(b",\"incomplete\":");
    boolean(out, r.incomplete);
    out.extend_from_slice(b",\"attempts\":[");
    for (i, a) in r.attempts.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        attempt(out, a);
    }
    out.push(b']');
    if let Some(tunnel) = &r.tunnel {
        out.extend_from_slice(b",\"tunnel\":{\"closed_by\":");
        string(out, tunnel.closed_by);
        out.push(b'}');
    }
    out.push(b'}');
}

fn attempt(out: &mut Vec<u8>, a: &Attempt) {
    out.extend_from_slice(b"{\"target\":");
    string(out, &a.target);
    out.extend_from_slice(b",\"cause\":");
    optional(out, a.cause.map(|c| c.as_str()));
    out.extend_from_slice(b",\"status\":");
    match a.status {
        Some(s) => number(out, u64::from(s)),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"request_sent\":");
    boolean(out, a.request_sent);
    out.extend_from_slice(b",\"reused\":");
    boolean(out, a.reused);
    out.extend_from_slice(b",\"duration_ms\":");
    number(out, millis(a.duration_ms));
    if a.hedge {
        out.extend_from_slice(b",\"hedge\":true");
    }
    if a.cancelled {
        out.extend_from_slice(b",\"cancelled\":true");
    }
    out.push(b'}');
}

fn optional(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => string(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

fn boolean(out: &mut Vec<u8>, b: bool) {
    out.extend_from_slice(if b { b"true" } else { b"false" });
}

fn number(out: &mut Vec<u8>, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

/// A JSON string, escaped as serde_json escapes: `"` and `\`, the control characters (`\n`,
/// `\r`, `\t`, `\b`, `\f` by name, the rest as `\u00XX`); everything else, UTF-8 included, as is.
fn string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut plain = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[plain..i]);
        plain = i + 1;
        if escape.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
        } else {
            out.extend_from_slice(escape);
        }
    }
    out.extend_from_slice(&bytes[plain..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::cause::Cause;
    use crate::observe::access_log::Tunnel;

    fn same_as_serde(r: &Record<'_>) {
        let mut ours = Vec::new();
        write(&mut ours, r);
        let theirs = serde_json::to_vec(r).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&ours),
            String::from_utf8_lossy(&theirs)
        );
    }

    #[test]
    fn every_field_is_written_as_serde_json_writes_it() {
        let attempts = [
            Attempt {
                target: "10.0.0.1:80".into(),
                cause: Some(Cause::ConnectionRefused),
                status: None,
                request_sent: false,
                reused: true,
                duration_ms: Duration::from_micros(1500),
                hedge: false,
                cancelled: false,
            },
            Attempt {
                target: "[2001:db8::1]:8080".into(),
                cause: None,
                status: Some(503),
                request_sent: true,
                reused: false,
                duration_ms: Duration::from_secs(3),
                hedge: true,
                cancelled: true,
            },
        ];
        let all_kinds = "\"quoted\" back\\slash \n\r\t\u{8}\u{c}\u{1}\u{1f}\u{7f} é 日本";
        let full = Record {
            time: SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_000_000_123),
            request_id: "0123456789abcdef0123456789abcdef",
            client: "[2001:db8::7]:50000".parse().unwrap(),
            method: "PATCH",
            host: "example.com:8443",
            path: all_kinds,
            route: Some("api"),
            upstream: Some("backend"),
            target: Some("10.0.0.2:80"),
            status: 502,
            scheme: "https",
            protocol: "h2",
            upstream_protocol: Some("h2"),
            grpc_status: Some(u32::MAX),
            duration_ms: Duration::from_nanos(u64::MAX),
            bytes_in: u64::MAX,
            bytes_out: 0,
            cause: Some(Cause::HttpResponseTimeout),
            retry_stop: Some("budget_exhausted"),
            held_ms: Duration::from_millis(250),
            incomplete: true,
            attempts: &attempts,
            tunnel: Some(Tunnel {
                closed_by: "client",
            }),
        };
        same_as_serde(&full);
        let bare = Record {
            time: SystemTime::UNIX_EPOCH,
            request_id: "",
            client: "127.0.0.1:1".parse().unwrap(),
            method: "-",
            host: "",
            path: "",
            route: None,
            upstream: None,
            target: None,
            status: 0,
            scheme: "http",
            protocol: "h1",
            upstream_protocol: None,
            grpc_status: None,
            duration_ms: Duration::ZERO,
            bytes_in: 0,
            bytes_out: 0,
            cause: None,
            retry_stop: None,
            held_ms: Duration::ZERO,
            incomplete: false,
            attempts: &[],
            tunnel: None,
        };
        same_as_serde(&bare);
        for s in [
            all_kinds,
            "\u{0}",
            "\\",
            "\"",
            "a\u{1b}[31m",
            "plain/path?q=1",
        ] {
            same_as_serde(&Record { host: s, ..bare });
        }
    }
}
