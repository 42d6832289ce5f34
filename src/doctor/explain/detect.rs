//! Picks a file's format from its first lines: the parser that understands most of them wins.
//!
//! Formats are tried in [`Format::ALL`] order, so ties go to the stricter shapes (JSON, the nginx
//! error prefix) before the looser ones (nginx access, whose prefix other logs can share).

use super::{Format, Line};

/// Lines read before deciding.
pub const SNIFF_LINES: usize = 64;

/// The format that understands most of `lines`; `None` when none understands any.
pub fn detect<'a>(lines: impl Iterator<Item = &'a str> + Clone) -> Option<Format> {
    let mut best: Option<(Format, usize)> = None;
    for format in Format::ALL {
        let hits = lines
            .clone()
            .filter(|l| !l.is_empty())
            .filter(|l| {
                matches!(
                    format.parse(l, &mut |_| {}),
                    Line::Understood(_) | Line::Request(..)
                )
            })
            .count();
        if hits > 0 && best.map_or(true, |(_, b)| hits > b) {
            best = Some((format, hits));
        }
    }
    best.map(|(f, _)| f)
}

/// Another format that understands `line`, for logs that interleave formats.
pub fn fallback(line: &str, tried: Option<Format>) -> Option<Format> {
    Format::ALL
        .into_iter()
        .filter(|f| Some(*f) != tried)
        .find(|f| {
            matches!(
                f.parse(line, &mut |_| {}),
                Line::Understood(_) | Line::Request(..)
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_format_is_recognised() {
        let cases = [
            (Format::NginxError, "2026/11/21 12:00:00 [error] 7#7: *1 connect() failed (111: Connection refused) while connecting to upstream, client: 1.1.1.1, server: _, request: \"GET / HTTP/1.1\", upstream: \"http://127.0.0.1:9/\""),
            (Format::NginxAccess, "1.1.1.1 - - [21/Nov/2026:12:00:00 +0000] \"GET / HTTP/1.1\" 502 10 \"-\" \"curl\""),
            (Format::Haproxy, "1.1.1.1:5 [21/Nov/2026:12:00:00.001] fe be/s1 0/0/-1/-1/3 503 0 - - SC-- 1/1/0/0/3 0/0 \"GET / HTTP/1.1\""),
            (Format::Envoy, "[2026-11-21T12:00:00.000Z] \"GET / HTTP/1.1\" 503 UF 0 91 1 - \"-\" \"curl\" \"id\" \"h\" \"10.0.0.1:80\""),
            (Format::Gatewise, "{\"time\":\"2026-11-21T12:00:00.123Z\",\"status\":200,\"cause\":null}"),
        ];
        for (want, line) in cases {
            let lines = ["garbage first line", line];
            assert_eq!(detect(lines.iter().copied()), Some(want), "{line}");
        }
        assert_eq!(detect(["nothing", "here"].iter().copied()), None);
    }
}
