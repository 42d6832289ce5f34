//! Streams one input (file, `-` for stdin, gzip detected by its magic bytes) into a [`Report`].
//!
//! Lines are read with `read_until` into one reused buffer: logs are often gigabytes, so
//! nothing is read whole and nothing is allocated per line unless the line is kept (a sample,
//! a new target name). The first [`SNIFF_LINES`] lines are held back to pick the format.

use std::borrow::Cow;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;

use flate2::read::MultiGzDecoder;

use super::detect::{self, SNIFF_LINES};
use super::{Format, Line, Report};

const BUF: usize = 256 * 1024;

/// Reads `path` (or stdin for `-`) into `report`.
pub fn explain_path(path: &Path, forced: Option<Format>, report: &mut Report) -> io::Result<()> {
    let name = path.display().to_string();
    let raw: Box<dyn Read> = if name == "-" {
        Box::new(io::stdin().lock())
    } else {
        Box::new(File::open(path)?)
    };
    let mut plain = BufReader::with_capacity(BUF, raw);
    let gzip = plain.fill_buf()?.starts_with(&[0x1f, 0x8b]);
    if gzip {
        // Multi-member: `cat a.gz b.gz` and rotated logs appended by logrotate stay readable.
        let mut unzipped = BufReader::with_capacity(BUF, MultiGzDecoder::new(plain));
        explain_reader(&mut unzipped, &name, forced, report)
    } else {
        explain_reader(&mut plain, &name, forced, report)
    }
}

/// Reads every line of `reader` into `report`; `forced` skips detection.
pub fn explain_reader(
    reader: &mut dyn BufRead,
    name: &str,
    forced: Option<Format>,
    report: &mut Report,
) -> io::Result<()> {
    let mut head: Vec<Vec<u8>> = Vec::new();
    let mut buf = Vec::with_capacity(8192);
    while head.len() < SNIFF_LINES {
        buf.clear();
        if reader.read_until(b'\n', &mut buf)? == 0 {
            break;
        }
        head.push(buf.clone());
    }
    let format = forced.or_else(|| {
        let texts: Vec<Cow<str>> = head.iter().map(|l| text(l)).collect();
        detect::detect(texts.iter().map(|t| t.as_ref()))
    });
    report.begin_file(name, format);
    let auto = forced.is_none();
    let mut number = 0u64;
    for line in &head {
        number += 1;
        one_line(report, format, auto, number, line);
    }
    loop {
        buf.clear();
        if reader.read_until(b'\n', &mut buf)? == 0 {
            return Ok(());
        }
        number += 1;
        one_line(report, format, auto, number, &buf);
    }
}

/// The line without its line ending; invalid UTF-8 is replaced, not rejected.
fn text(line: &[u8]) -> Cow<'_, str> {
    let end = line.len()
        - line
            .iter()
            .rev()
            .take_while(|b| matches!(b, b'\n' | b'\r'))
            .count();
    // `from_utf8` is the fast check; the lossy path is only for the rare broken line.
    match std::str::from_utf8(&line[..end]) {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => String::from_utf8_lossy(&line[..end]),
    }
}

fn one_line(report: &mut Report, format: Option<Format>, auto: bool, number: u64, raw: &[u8]) {
    let line = text(raw);
    if line.trim().is_empty() {
        return;
    }
    report.line_format = format;
    let mut parsed = match format {
        Some(f) => f.parse(&line, &mut |fail| report.failure(&fail)),
        None => Line::Unknown,
    };
    // Logs sometimes interleave formats (one syslog file for nginx and HAProxy).
    if parsed == Line::Unknown && auto {
        if let Some(other) = detect::fallback(&line, format) {
            report.line_format = Some(other);
            parsed = other.parse(&line, &mut |fail| report.failure(&fail));
        }
    }
    report.line(number, &line, parsed);
}
