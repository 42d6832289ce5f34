//! Envoy access log, default text format: response flags name the failure.
//!
//! `[START_TIME] "METHOD PATH PROTOCOL" CODE FLAGS RX TX DURATION UPSTREAM_TIME "XFF" "UA"
//! "REQUEST_ID" "AUTHORITY" "UPSTREAM_HOST"`. FLAGS is `-` or a comma list such as `UF,URX`;
//! `URX` (retries exhausted) only qualifies another flag, so alone it blames nothing.

use super::{time, Failure, Line};
use crate::cause::Cause;

/// Cause of one response flag; `None` for flags that do not blame an upstream.
pub fn flag_cause(flag: &str) -> Option<Cause> {
    let cause = match flag {
        "UH" | "LH" => Cause::DestinationUnavailable,
        "UF" => Cause::ConnectionRefused,
        "UO" => Cause::ConnectionLimitReached,
        "NR" | "NC" => Cause::DestinationNotFound,
        "UT" | "UMSDR" | "SI" => Cause::HttpResponseTimeout,
        "UR" | "UC" => Cause::ConnectionTerminated,
        "UPE" => Cause::HttpProtocolError,
        "DF" => Cause::DnsError,
        "LR" | "OM" => Cause::ProxyInternalError,
        _ => return None,
    };
    Some(cause)
}

/// The flag that decides the cause: the first one that blames something.
fn deciding_flag(flags: &str) -> Option<(&str, Cause)> {
    flags.split(',').find_map(|f| flag_cause(f).map(|c| (f, c)))
}

/// Parses one line of an Envoy access log in the default format.
pub fn parse<'a>(line: &'a str, sink: &mut dyn FnMut(Failure<'a>)) -> Line {
    let b = line.as_bytes();
    if b.first() != Some(&b'[') {
        return Line::Unknown;
    }
    let Some(minute) = time::ymd(&b[1..]) else {
        return Line::Unknown;
    };
    let Some(req_open) = line.find("] \"") else {
        return Line::Unknown;
    };
    let after = &line[req_open + 3..];
    let Some(req_close) = after.find('"') else {
        return Line::Unknown;
    };
    let request = &after[..req_close];
    let rest = &after[req_close + 1..];
    let mut tok = rest.split(' ').filter(|t| !t.is_empty());
    let (Some(code), Some(flags)) = (tok.next(), tok.next()) else {
        return Line::Unknown;
    };
    let Ok(status) = code.parse::<u16>() else {
        return Line::Unknown;
    };
    if flags != "-" && !flags.bytes().all(|c| c.is_ascii_uppercase() || c == b',') {
        return Line::Unknown;
    }
    let Some((flag, cause)) = deciding_flag(flags) else {
        return Line::Request(Some(minute), status);
    };
    // The fifth quoted field after the request is %UPSTREAM_HOST%.
    let upstream = rest.split('"').skip(1).step_by(2).nth(4);
    sink(Failure {
        minute: Some(minute),
        cause: Some(cause),
        status: Some(status),
        code: flag,
        target: upstream.filter(|h| !h.is_empty() && *h != "-"),
        request: Some(request),
        recovered: false,
    });
    Line::Request(Some(minute), status)
}

#[cfg(test)]
mod tests {
    use super::*;

    type Seen<'a> = Vec<(Option<Cause>, &'a str, Option<&'a str>)>;

    fn run(line: &str) -> (Line, Seen<'_>) {
        let mut got = Vec::new();
        let l = parse(line, &mut |f| got.push((f.cause, f.code, f.target)));
        (l, got)
    }

    #[test]
    fn flags_map_and_upstream_host_is_read() {
        let l = r#"[2026-11-21T12:00:00.123Z] "GET /x HTTP/1.1" 503 UF,URX 0 91 3 - "-" "curl/8.5" "7b1c" "app.local" "10.0.0.1:8080""#;
        assert_eq!(
            run(l).1,
            vec![(Some(Cause::ConnectionRefused), "UF", Some("10.0.0.1:8080"))]
        );
        let uh = r#"[2026-11-21T12:00:00.123Z] "GET /x HTTP/1.1" 503 UH 0 19 0 - "-" "curl/8.5" "7b1c" "app.local" "-""#;
        assert_eq!(
            run(uh).1,
            vec![(Some(Cause::DestinationUnavailable), "UH", None)]
        );
    }

    #[test]
    fn successes_and_client_flags_carry_no_failure() {
        let ok = r#"[2026-11-21T12:00:00.123Z] "GET /x HTTP/1.1" 200 - 0 91 3 2 "-" "curl/8.5" "7b1c" "app.local" "10.0.0.1:8080""#;
        assert!(matches!(run(ok), (Line::Request(Some(_), _), ref v) if v.is_empty()));
        let dc = r#"[2026-11-21T12:00:00.123Z] "GET /x HTTP/1.1" 0 DC 0 0 3 - "-" "curl/8.5" "7b1c" "app.local" "10.0.0.1:8080""#;
        assert!(run(dc).1.is_empty());
        assert_eq!(run("[2026-11-21T12:00:00.123Z] nope").0, Line::Unknown);
    }
}
