//! Timestamps of the supported formats, cut down to the [`Minute`] they fall in.
//!
//! Only the digits are checked and copied: the timeline needs a bucket, not a calendar, and
//! logs are read at hundreds of MB/s. Time zones are kept as written (one file, one zone).

use super::Minute;

fn digits(b: &[u8]) -> bool {
    b.iter().all(u8::is_ascii_digit)
}

fn build(year: &[u8], month: &[u8], day: &[u8], hour: &[u8], min: &[u8]) -> Option<Minute> {
    if !(digits(year) && digits(month) && digits(day) && digits(hour) && digits(min)) {
        return None;
    }
    let mut m = *b"0000-00-00T00:00";
    m[0..4].copy_from_slice(year);
    m[5..7].copy_from_slice(month);
    m[8..10].copy_from_slice(day);
    m[11..13].copy_from_slice(hour);
    m[14..16].copy_from_slice(min);
    Some(Minute(m))
}

/// `2026/11/21 12:00:00` (nginx error log) or `2026-11-21T12:00:00` (ISO 8601, Envoy, gatewise).
pub fn ymd(s: &[u8]) -> Option<Minute> {
    if s.len() < 16 || !matches!(s[10], b' ' | b'T') || s[13] != b':' {
        return None;
    }
    let sep = s[4];
    if !matches!(sep, b'/' | b'-') || s[7] != sep {
        return None;
    }
    build(&s[0..4], &s[5..7], &s[8..10], &s[11..13], &s[14..16])
}

/// `21/Nov/2026:12:00:00` (common log format, HAProxy).
pub fn clf(s: &[u8]) -> Option<Minute> {
    if s.len() < 17 || s[2] != b'/' || s[6] != b'/' || s[11] != b':' || s[14] != b':' {
        return None;
    }
    let month: &[u8] = match &s[3..6] {
        b"Jan" => b"01",
        b"Feb" => b"02",
        b"Mar" => b"03",
        b"Apr" => b"04",
        b"May" => b"05",
        b"Jun" => b"06",
        b"Jul" => b"07",
        b"Aug" => b"08",
        b"Sep" => b"09",
        b"Oct" => b"10",
        b"Nov" => b"11",
        b"Dec" => b"12",
        _ => return None,
    };
    build(&s[7..11], month, &s[0..2], &s[12..14], &s[15..17])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_agree_on_the_minute() {
        let want = "2026-11-21T12:05";
        assert_eq!(ymd(b"2026/11/21 12:05:59 [error]").unwrap().as_str(), want);
        assert_eq!(ymd(b"2026-11-21T12:05:00.123Z").unwrap().as_str(), want);
        assert_eq!(clf(b"21/Nov/2026:12:05:01 +0000").unwrap().as_str(), want);
    }

    #[test]
    fn rejects_near_misses() {
        assert!(ymd(b"2026/11-21 12:05:59").is_none());
        assert!(ymd(b"2026/1x/21 12:05:59").is_none());
        assert!(ymd(b"2026/11/21").is_none());
        assert!(clf(b"21/Foo/2026:12:05:01").is_none());
        assert!(clf(b"21/Nov/2026 12:05:01").is_none());
    }
}
