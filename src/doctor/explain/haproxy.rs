//! HAProxy HTTP and TCP logs: the two-letter termination state says who ended the session and when.
//!
//! `client:port [21/Nov/2026:12:00:00.123] fe be/srv Tq/Tw/Tc/Tr/Ta status bytes - - SC-- a/f/b/s/r q/q "GET / HTTP/1.1"`
//! (HTTP) or `… fe be/srv Tw/Tc/Tt bytes SC a/f/b/s/r q/q` (TCP), with or without a syslog prefix.
//! The first letter is the side (`S` server, `s` server timeout, `P` proxy, `R` resource, `C`/`c`
//! client), the second the stage (`C` connect, `H` headers, `D` data, `Q` queue). `<NOSRV>` means
//! no server could be chosen. A non-zero retry count on a served request means earlier connection
//! attempts failed and were hidden from the client.

use memchr::memchr_iter;

use super::{time, Failure, Line};
use crate::cause::Cause;

/// Cause for a termination state; `None` when the upstream is not to blame.
pub fn cause_of(state: &str, server: &str, status: i32) -> Option<Cause> {
    let mut c = state.chars();
    let (side, stage) = (c.next()?, c.next().unwrap_or('-'));
    let cause = match (side, stage) {
        ('s' | 'S', 'Q') => Cause::ConnectionLimitReached,
        _ if server == "<NOSRV>" && matches!(side, 'S' | 's' | '-') && status == 503 => {
            Cause::DestinationUnavailable
        }
        ('s', 'C') => Cause::ConnectionTimeout,
        ('S', 'C') => Cause::ConnectionRefused,
        ('S', 'H') => Cause::ConnectionTerminated,
        ('s', 'H') | ('s', 'D') => Cause::HttpResponseTimeout,
        ('S', 'D') => Cause::HttpResponseIncomplete,
        ('P', 'H' | 'D') => Cause::HttpProtocolError,
        ('R', _) => Cause::ConnectionLimitReached,
        ('I', _) => Cause::ProxyInternalError,
        ('D' | 'K' | 'U', _) => Cause::ConnectionTerminated,
        _ => return None,
    };
    Some(cause)
}

/// Finds `[dd/Mon/yyyy:` and returns its offset.
fn accept_date(line: &str) -> Option<usize> {
    let b = line.as_bytes();
    memchr_iter(b'[', b).find(|&i| time::clf(&b[i + 1..]).is_some() && i > 0 && b[i - 1] == b' ')
}

/// Syslog lines HAProxy writes about servers, not requests.
fn is_event(line: &str) -> bool {
    line.contains(" is DOWN")
        || line.contains(" is UP")
        || line.contains("has no server available")
        || line.contains("Proxy ") && line.contains(" started")
}

/// Parses one HAProxy log line.
pub fn parse<'a>(line: &'a str, sink: &mut dyn FnMut(Failure<'a>)) -> Line {
    let Some(open) = accept_date(line) else {
        return if line.contains("haproxy") && is_event(line) {
            Line::Understood(None)
        } else {
            Line::Unknown
        };
    };
    let minute = time::clf(&line.as_bytes()[open + 1..]);
    let Some(close) = line[open..].find("] ") else {
        return Line::Unknown;
    };
    let rest = &line[open + close + 2..];
    let (head, request) = match rest.find('"') {
        Some(q) => (&rest[..q], rest[q + 1..].split('"').next()),
        None => (rest, None),
    };
    let mut tok = head.split(' ').filter(|t| !t.is_empty());
    let (Some(_frontend), Some(be_srv), Some(timers)) = (tok.next(), tok.next(), tok.next()) else {
        return Line::Unknown;
    };
    let Some((backend, server)) = be_srv.split_once('/') else {
        return Line::Unknown;
    };
    let http = timers.split('/').count() == 5;
    let (status, state) = if http {
        let status = tok.next().and_then(|s| s.parse::<i32>().ok());
        let state = tok.nth(3); // skip bytes and the two captured cookies
        (status, state)
    } else {
        (Some(-1), tok.nth(1))
    };
    let (Some(status), Some(state), Some(conns)) = (status, state, tok.next()) else {
        return Line::Unknown;
    };
    if state.len() < 2 || !state.is_ascii() || conns.split('/').count() != 5 {
        return Line::Unknown;
    }
    let retries: u32 = conns
        .rsplit('/')
        .next()
        .unwrap_or("0")
        .trim_start_matches('+')
        .parse()
        .unwrap_or(0);
    // `backend/server`; the backend alone when no server was chosen (like nginx's group name).
    let target = if server == "<NOSRV>" {
        Some(backend)
    } else {
        Some(be_srv)
    };
    let http_status = (status > 0).then_some(status as u16);
    match cause_of(state, server, status) {
        Some(cause) => {
            // A connect-stage failure was retried `retries` times before it was logged: each
            // retry was one more failed attempt of the same kind.
            let attempts = if state.as_bytes()[1] == b'C' {
                retries.min(100) + 1
            } else {
                1
            };
            for _ in 0..attempts {
                sink(Failure {
                    minute,
                    cause: Some(cause),
                    status: http_status,
                    code: &state[..2],
                    target,
                    request,
                    recovered: false,
                });
            }
        }
        None if status == 502 || status == 503 || status == 504 => {}
        None => {
            // Served after `retries` failed connection attempts (HAProxy retries only those by
            // default); which server failed is not logged, so the cause stays open and the
            // target is the backend.
            for _ in 0..retries.min(100) {
                sink(Failure {
                    minute,
                    cause: None,
                    status: http_status,
                    code: "retried",
                    target: Some(backend),
                    request,
                    recovered: true,
                });
            }
        }
    }
    match http_status {
        Some(status) => Line::Request(minute, status),
        None => Line::Understood(minute),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Seen = Vec<(Option<Cause>, Option<String>, bool)>;

    fn run(line: &str) -> (Line, Seen) {
        let mut got = Vec::new();
        let l = parse(line, &mut |f| {
            got.push((f.cause, f.target.map(String::from), f.recovered))
        });
        (l, got)
    }

    #[test]
    fn http_states() {
        // sC after 3 retries: four connection attempts timed out.
        let l = "Nov 21 12:00:01 lb haproxy[12]: 10.0.0.9:5123 [21/Nov/2026:12:00:01.002] web~ app/s1 0/0/-1/-1/1002 503 217 - - sC-- 1/1/0/0/3 0/0 \"GET /x HTTP/1.1\"";
        let (line, got) = run(l);
        assert!(matches!(line, Line::Request(Some(_), 503)));
        assert_eq!(
            got,
            vec![(Some(Cause::ConnectionTimeout), Some("app/s1".into()), false); 4]
        );
        let nosrv = "127.0.0.1:4 [21/Nov/2026:12:00:01.002] web app/<NOSRV> 0/-1/-1/-1/0 503 217 - - SC-- 1/1/0/0/0 0/0 \"GET / HTTP/1.1\"";
        assert_eq!(
            run(nosrv).1,
            vec![(
                Some(Cause::DestinationUnavailable),
                Some("app".into()),
                false
            )]
        );
    }

    #[test]
    fn retries_on_success_are_recovered_failures() {
        let l = "127.0.0.1:4 [21/Nov/2026:12:00:01.002] web app/s2 0/0/1/2/3 200 10 - - ---- 1/1/0/0/+2 0/0 \"GET / HTTP/1.1\"";
        let got = run(l).1;
        assert_eq!(got.len(), 2);
        assert!(got.iter().all(|g| g.0.is_none() && g.2));
    }

    #[test]
    fn tcp_and_client_states() {
        let tcp = "127.0.0.1:4 [21/Nov/2026:12:00:01.002] db db/pg1 0/-1/5 0 SC 1/1/0/0/0 0/0";
        assert_eq!(
            run(tcp).1,
            vec![(Some(Cause::ConnectionRefused), Some("db/pg1".into()), false)]
        );
        let client = "127.0.0.1:4 [21/Nov/2026:12:00:01.002] web app/s1 0/0/1/-1/9 -1 0 - - CH-- 1/1/0/0/0 0/0 \"GET / HTTP/1.1\"";
        assert_eq!(run(client), (run(client).0, vec![]));
        assert_eq!(run("garbage").0, Line::Unknown);
    }
}
