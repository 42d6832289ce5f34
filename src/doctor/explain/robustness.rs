//! Deterministic no-panic test: every parser gets thousands of mutated and random lines.
//!
//! The cargo-fuzz targets in `fuzz/` explore further; this runs in the normal test suite with a
//! fixed seed, so a panic found once stays found. It also checks the contract the format
//! fallback relies on: a line a parser calls unknown leaves no failure behind.

use std::io::Cursor;

use super::{input, render, Format, Line, Report};

const SEEDS: [&str; 6] = [
    include_str!("../../../tests/fixtures/explain/nginx-error.log"),
    include_str!("../../../tests/fixtures/explain/nginx-access.log"),
    include_str!("../../../tests/fixtures/explain/haproxy.log"),
    include_str!("../../../tests/fixtures/explain/envoy.log"),
    include_str!("../../../tests/fixtures/explain/gatewise.log"),
    "",
];

/// Bytes that matter to the parsers' shapes, plus some multi-byte UTF-8.
const SPICE: &[&str] = &[
    "\"",
    "[",
    "]",
    ",",
    ", ",
    ":",
    " : ",
    "/",
    "{",
    "}",
    "=",
    " ",
    "-",
    "*",
    "#",
    "é",
    "🦀",
    "\\",
    "(",
    ")",
    " while ",
    ", upstream: \"",
    "://",
    "unix:",
    "502",
    "<NOSRV>",
    "UF,",
    "\"cause\":",
    "2026/11/21 12:00:00 [error] 1#1: ",
];

fn mutate(rng: &mut fastrand::Rng, line: &str) -> String {
    let mut b = line.as_bytes().to_vec();
    for _ in 0..rng.usize(1..6) {
        let at = rng.usize(..=b.len());
        match rng.u8(..6) {
            0 if !b.is_empty() => {
                let i = rng.usize(..b.len());
                b[i] = rng.u8(..);
            }
            1 => b
                .splice(at..at, SPICE[rng.usize(..SPICE.len())].bytes())
                .for_each(drop),
            2 => b.truncate(at),
            3 if at < b.len() => {
                let end = rng.usize(at..=b.len());
                b.drain(at..end);
            }
            4 => {
                let j = rng.usize(..=b.len());
                let copy = b[at.min(j)..at.max(j)].to_vec();
                b.splice(at..at, copy).for_each(drop);
            }
            _ => {
                let n = rng.usize(..8);
                let junk: Vec<u8> = std::iter::repeat_with(|| rng.u8(..)).take(n).collect();
                b.splice(at..at, junk).for_each(drop);
            }
        }
    }
    String::from_utf8_lossy(&b).into_owned()
}

#[test]
fn parsers_survive_mutated_and_random_lines() {
    let mut rng = fastrand::Rng::with_seed(0x6761_7465_7769_7365);
    let seeds: Vec<&str> = SEEDS.iter().flat_map(|s| s.lines()).collect();
    let mut corpus = Vec::new();
    for i in 0..6000 {
        let line = if i % 10 == 0 {
            let len = rng.usize(..300);
            String::from_utf8_lossy(
                &std::iter::repeat_with(|| rng.u8(..))
                    .take(len)
                    .collect::<Vec<_>>(),
            )
            .into_owned()
        } else {
            let seed = seeds[rng.usize(..seeds.len())];
            mutate(&mut rng, seed)
        };
        for format in Format::ALL {
            let mut failures = 0;
            let parsed = format.parse(&line, &mut |_| failures += 1);
            if parsed == Line::Unknown {
                assert_eq!(
                    failures, 0,
                    "{format:?} reported failures for an unknown line: {line:?}"
                );
            }
        }
        corpus.push(line);
    }
    // The whole pipeline too: detection, fallback, tally, episodes, both renderings.
    let text = corpus.join("\n");
    let mut report = Report::default();
    input::explain_reader(&mut Cursor::new(text.as_bytes()), "fuzz", None, &mut report).unwrap();
    // Random bytes include newlines, so count lines the way the reader splits them.
    let lines = text.split('\n').filter(|l| !l.trim().is_empty()).count();
    assert_eq!(report.lines(), lines as u64);
    let before = report.failures();
    report.join_nginx();
    assert!(
        report.failures() <= before,
        "a join only ever removes a double count"
    );
    render::text(&report, &mut Vec::new()).unwrap();
    render::json(&report, &mut Vec::new()).unwrap();
}
