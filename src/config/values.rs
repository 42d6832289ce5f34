//! Parsers for the small value syntaxes of the config file: durations (`"500ms"`, `"1m30s"`),
//! byte sizes (`65536`, `"64KiB"`), upstream targets (`host:port`), route host patterns and
//! status ranges. Each returns a message saying what was expected, never panics.

use std::time::Duration;

use super::HostPattern;

/// `"500ms"`, `"2s"`, `"1m"`, `"1h"`, or several of them run together (`"1m30s"`). Fractions are
/// allowed (`"1.5s"`). A bare number is refused: the unit is what makes a duration readable.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let expected =
        || format!("expected a duration like \"500ms\", \"2s\", \"1m\" or \"1h\", got {s:?}");
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err(expected());
    }
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(expected)?;
        let (num, tail) = rest.split_at(num_len);
        let unit_len = tail
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let value: f64 = num.parse().map_err(|_| expected())?;
        let secs = match unit {
            "ms" => value / 1000.0,
            "s" => value,
            "m" => value * 60.0,
            "h" => value * 3600.0,
            _ => return Err(expected()),
        };
        total += Duration::try_from_secs_f64(secs).map_err(|_| expected())?;
        rest = tail;
    }
    Ok(total)
}

/// A byte count written as an integer or a string with a unit: `"512B"`, `"64KiB"`, `"1MiB"`,
/// `"1GiB"` (powers of 1024) or `"64KB"`, `"1MB"`, `"1GB"` (powers of 1000).
pub fn parse_size(s: &str) -> Result<usize, String> {
    let expected = || format!("expected a size like 65536, \"64KiB\" or \"1MiB\", got {s:?}");
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: usize = num.parse().map_err(|_| expected())?;
    let mult: usize = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return Err(expected()),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

/// `host:port` with a DNS name, an IPv4 address or a bracketed IPv6 address, and a port 1-65535.
pub fn check_target(s: &str) -> Result<(), String> {
    // A URL is the most common slip (`http://127.0.0.1:3001`): say why it is refused.
    if let Some((scheme, _)) = s.split_once("://") {
        return Err(format!(
            "expected HOST:PORT without a scheme, got {s:?} (drop \"{scheme}://\"; a target names \
             an address, not a URL)"
        ));
    }
    let expected =
        || format!("expected HOST:PORT like \"127.0.0.1:3000\" or \"app.internal:80\", got {s:?}");
    let (host, port) = s.rsplit_once(':').ok_or_else(expected)?;
    match port.parse::<u16>() {
        Ok(p) if p > 0 => {}
        _ => return Err(expected()),
    }
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return v6
            .parse::<std::net::Ipv6Addr>()
            .map(|_| ())
            .map_err(|_| expected());
    }
    if is_dns_name(host) {
        Ok(())
    } else {
        Err(expected())
    }
}

/// Letters, digits, `-` and `_` in dot-separated labels (underscore is common in internal names).
fn is_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
}

/// `"*"`, an exact name (`"api.example.com"`) or a suffix wildcard (`"*.example.com"`). Stored
/// lower-case; ports are not part of a pattern (they are ignored when matching).
pub fn parse_host_pattern(s: &str) -> Result<HostPattern, String> {
    let lower = s.trim().to_ascii_lowercase();
    let expected =
        || format!("expected \"*\", a host name or \"*.example.com\" (no port), got {s:?}");
    if lower == "*" {
        return Ok(HostPattern::Any);
    }
    if let Some(suffix) = lower.strip_prefix("*.") {
        return if is_dns_name(suffix) {
            Ok(HostPattern::Suffix(format!(".{suffix}")))
        } else {
            Err(expected())
        };
    }
    if is_dns_name(&lower) {
        Ok(HostPattern::Exact(lower))
    } else {
        Err(expected())
    }
}

/// `"200-399"` (inclusive) or a single code (`200` or `"204"`); codes are 100-599.
pub fn parse_status_range(s: &str) -> Result<(u16, u16), String> {
    let expected = || format!("expected a status code or range like \"200-399\", got {s:?}");
    let (lo, hi) = s.split_once('-').unwrap_or((s, s));
    let lo: u16 = lo.trim().parse().map_err(|_| expected())?;
    let hi: u16 = hi.trim().parse().map_err(|_| expected())?;
    if !(100..=599).contains(&lo) || !(100..=599).contains(&hi) || lo > hi {
        return Err(expected());
    }
    Ok((lo, hi))
}

/// A status code a policy may list: 100-599.
pub fn check_status(code: u16) -> Result<(), String> {
    if (100..=599).contains(&code) {
        Ok(())
    } else {
        Err(format!("expected an HTTP status code 100-599, got {code}"))
    }
}

/// Listener and upstream names appear in logs and metric labels: keep them plain.
pub fn check_name(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "expected a name of letters, digits, '-', '_' or '.', got {s:?}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let ms = Duration::from_millis;
        let table = [
            ("500ms", Some(ms(500))),
            ("2s", Some(ms(2000))),
            ("1m", Some(ms(60_000))),
            ("1h", Some(ms(3_600_000))),
            ("1m30s", Some(ms(90_000))),
            ("1.5s", Some(ms(1500))),
            ("0s", Some(ms(0))),
            (" 3s ", Some(ms(3000))),
            ("", None),
            ("5", None),
            ("5 s", None),
            ("5sec", None),
            ("-1s", None),
            ("s", None),
            ("1..2s", None),
            ("2d", None),
        ];
        for (input, want) in table {
            assert_eq!(parse_duration(input).ok(), want, "input {input:?}");
        }
    }

    #[test]
    fn sizes() {
        let table = [
            ("65536", Some(65536)),
            ("512B", Some(512)),
            ("64KiB", Some(65536)),
            ("1MiB", Some(1 << 20)),
            ("2GiB", Some(2 << 30)),
            ("64KB", Some(64_000)),
            ("1MB", Some(1_000_000)),
            ("64 KiB", Some(65536)),
            ("", None),
            ("KiB", None),
            ("64kib", None),
            ("1.5MiB", None),
            ("-1", None),
            ("99999999999999999999GiB", None),
        ];
        for (input, want) in table {
            assert_eq!(parse_size(input).ok(), want, "input {input:?}");
        }
    }

    #[test]
    fn targets() {
        for ok in [
            "127.0.0.1:3000",
            "app.internal:80",
            "[::1]:8080",
            "my_svc:1",
        ] {
            assert_eq!(check_target(ok), Ok(()), "{ok}");
        }
        for bad in [
            "127.0.0.1",
            ":80",
            "host:0",
            "host:65536",
            "a b:80",
            "[zz]:80",
            "::1:80",
            "localhost",
            "foo:bar",
            "http://127.0.0.1:3001",
            "127.0.0.1:3001/",
        ] {
            assert!(check_target(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn host_patterns() {
        assert_eq!(parse_host_pattern("*"), Ok(HostPattern::Any));
        assert_eq!(
            parse_host_pattern("API.Example.com"),
            Ok(HostPattern::Exact("api.example.com".into()))
        );
        assert_eq!(
            parse_host_pattern("*.example.com"),
            Ok(HostPattern::Suffix(".example.com".into()))
        );
        for bad in [
            "",
            "*.",
            "a.*.com",
            "example.com:80",
            "*example.com",
            "a..b",
        ] {
            assert!(parse_host_pattern(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn status_ranges() {
        assert_eq!(parse_status_range("200-399"), Ok((200, 399)));
        assert_eq!(parse_status_range("204"), Ok((204, 204)));
        for bad in ["399-200", "200-", "abc", "99", "600", "200-600"] {
            assert!(parse_status_range(bad).is_err(), "{bad}");
        }
    }
}
