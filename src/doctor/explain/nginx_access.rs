//! nginx access log: `combined`, optionally followed by `$upstream_addr` / `$upstream_status`.
//!
//! The access log only knows that nginx answered 502 or 504 — the reason is in the error log —
//! so those are failures with an open cause, except one case it does tell: when no upstream was
//! live, `$upstream_addr` holds the upstream *group name* instead of an address.
//! Where the upstream lists are (the `log_format` is the user's) is found by shape: a list of
//! status codes (`502, 200`) next to a list of addresses of the same length (`10.0.0.1:80,
//! 10.0.0.2:80`); `key=value` and quoted forms work too. Lists joined by ` : ` (internal
//! redirects) are read as one list.

use super::{time, Failure, Line};
use crate::cause::Cause;

fn is_status(s: &str) -> bool {
    s == "-"
        || (s.len() == 3
            && s.bytes().all(|b| b.is_ascii_digit())
            && (b"12345").contains(&s.as_bytes()[0]))
}

/// `10.0.0.1:80`, `[::1]:80`, `unix:/run/app.sock` or an upstream group name.
fn is_addr(s: &str) -> bool {
    if s.starts_with("unix:") {
        return true;
    }
    match s.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty() && !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit())
        }
        None => is_group_name(s),
    }
}

fn is_group_name(s: &str) -> bool {
    s.bytes().any(|b| b.is_ascii_alphabetic())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// Splits the fields after `$status $body_bytes_sent` into comma-joined lists.
fn groups(extra: &str) -> Vec<Vec<&str>> {
    let mut out: Vec<Vec<&str>> = Vec::new();
    let mut open = false; // the previous item ended with `,` or ` : ` follows
    for raw in extra.split(' ') {
        if raw.is_empty() {
            continue;
        }
        if raw == ":" {
            open = !out.is_empty();
            continue;
        }
        let mut t = raw.trim_matches('"');
        if let Some((key, value)) = t.split_once('=') {
            if key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                t = value.trim_matches('"');
            }
        }
        let ends_list = t.ends_with(',');
        let item = t.trim_end_matches(',');
        match (open, out.last_mut()) {
            (true, Some(last)) => last.push(item),
            _ => out.push(vec![item]),
        }
        open = ends_list;
    }
    out
}

/// The `($upstream_addr, $upstream_status)` lists, if the line has them.
fn upstream_lists<'a>(groups: &[Vec<&'a str>]) -> Option<(Vec<&'a str>, Vec<&'a str>)> {
    let mut best: Option<(usize, usize, bool)> = None;
    for (si, s) in groups.iter().enumerate() {
        if !s.iter().all(|x| is_status(x)) || s.iter().all(|x| *x == "-") {
            continue;
        }
        for d in [-1isize, 1, -2, 2] {
            let ai = si as isize + d;
            let Some(a) = usize::try_from(ai).ok().and_then(|i| groups.get(i)) else {
                continue;
            };
            if a.len() == s.len() && a.iter().all(|x| is_addr(x) || *x == "-") {
                let ported = a.iter().any(|x| x.contains(':'));
                if best.map_or(true, |(_, _, p)| ported && !p) {
                    best = Some((ai as usize, si, ported));
                }
            }
        }
    }
    let (ai, si, _) = best?;
    Some((groups[ai].clone(), groups[si].clone()))
}

/// Parses one line of an nginx access log.
pub fn parse<'a>(line: &'a str, sink: &mut dyn FnMut(Failure<'a>)) -> Line {
    let Some(open) = line.find(" [") else {
        return Line::Unknown;
    };
    let Some(minute) = time::clf(&line.as_bytes()[open + 2..]) else {
        return Line::Unknown;
    };
    let Some(req) = line[open..].find("] \"").map(|i| open + i + 3) else {
        return Line::Unknown;
    };
    let Some(req_len) = line[req..].find('"') else {
        return Line::Unknown;
    };
    let request = &line[req..req + req_len];
    let mut rest = line[req + req_len + 1..].splitn(4, ' ');
    let (Some(""), Some(status), Some(_bytes)) = (rest.next(), rest.next(), rest.next()) else {
        return Line::Unknown;
    };
    let Ok(status) = status.parse::<u16>() else {
        return Line::Unknown;
    };
    let extra = rest.next().unwrap_or("");
    // Skip the quoted referer and user agent of `combined` so they cannot look like lists.
    let extra = extra.splitn(5, '"').nth(4).unwrap_or(extra);
    let recovered = status < 500;
    let Some((addrs, statuses)) = upstream_lists(&groups(extra)) else {
        if status == 502 || status == 504 {
            let code = if status == 502 { "502" } else { "504" };
            sink(Failure {
                minute: Some(minute),
                cause: None,
                status: Some(status),
                code,
                target: None,
                request: Some(request),
                recovered,
            });
        }
        return Line::Request(Some(minute), status);
    };
    for (addr, up) in addrs.iter().zip(&statuses) {
        let target = (*addr != "-").then_some(*addr);
        let (cause, code) = match *up {
            "502" if is_group_name(addr) => {
                (Some(Cause::DestinationUnavailable), "no live upstreams")
            }
            "502" => (None, "upstream_status 502"),
            "504" => (None, "upstream_status 504"),
            _ => continue,
        };
        sink(Failure {
            minute: Some(minute),
            cause,
            status: Some(status),
            code,
            target,
            request: Some(request),
            recovered,
        });
    }
    Line::Request(Some(minute), status)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(line: &str) -> Vec<(Option<Cause>, Option<&str>, bool)> {
        let mut got = Vec::new();
        parse(line, &mut |f| got.push((f.cause, f.target, f.recovered)));
        got
    }

    const PRE: &str = r#"10.1.1.1 - - [21/Nov/2026:12:00:00 +0000] "GET /a HTTP/1.1""#;

    #[test]
    fn lists_in_several_layouts() {
        let plain =
            format!(r#"{PRE} 200 5 "-" "curl/8" 10.0.0.1:80, 10.0.0.2:80 502, 200 0.001, 0.002"#);
        assert_eq!(run(&plain), vec![(None, Some("10.0.0.1:80"), true)]);
        let keyed = format!(
            r#"{PRE} 502 5 "-" "curl/8" rt=0.010 ua="10.0.0.1:80, 10.0.0.2:80" us="502, 502""#
        );
        assert_eq!(
            run(&keyed),
            vec![
                (None, Some("10.0.0.1:80"), false),
                (None, Some("10.0.0.2:80"), false)
            ]
        );
        // ` : ` joins the lists of an internal redirect.
        let redirect = format!(
            r#"{PRE} 200 5 "-" "curl/8" 10.0.0.1:80, 10.0.0.2:80 : 10.0.0.3:80 502, 504 : 200"#
        );
        let got = run(&redirect);
        assert_eq!(
            got,
            vec![
                (None, Some("10.0.0.1:80"), true),
                (None, Some("10.0.0.2:80"), true)
            ]
        );
        let nolive = format!(r#"{PRE} 502 5 "-" "curl/8" backend 502"#);
        assert_eq!(
            run(&nolive),
            vec![(Some(Cause::DestinationUnavailable), Some("backend"), false)]
        );
    }

    #[test]
    fn plain_combined_counts_proxy_made_5xx() {
        assert_eq!(
            run(&format!(r#"{PRE} 502 5 "-" "curl/8""#)),
            vec![(None, None, false)]
        );
        assert!(run(&format!(r#"{PRE} 200 5 "-" "curl/8""#)).is_empty());
        assert_eq!(parse("nope", &mut |_| {}), Line::Unknown);
    }
}
