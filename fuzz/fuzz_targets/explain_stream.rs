//! Fuzzes the whole `gatewise explain` pipeline on arbitrary bytes: gzip sniffing aside, it
//! covers line splitting, format detection and fallback, the tallies, episodes and both reports.
#![no_main]

use std::io::Cursor;

use gatewise::doctor::explain::{input, render, Report};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut report = Report::default();
    input::explain_reader(&mut Cursor::new(data), "fuzz", None, &mut report).unwrap();
    report.join_nginx();
    render::text(&report, &mut std::io::sink()).unwrap();
    render::json(&report, &mut std::io::sink()).unwrap();
});
