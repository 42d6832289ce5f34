//! Fuzzes `gatewise doctor --nginx`'s config reader: the tokenizer, the block parser, the model
//! of upstreams and proxy settings, and the findings drawn from it. No input may panic (deep
//! nesting included), and every directive keeps a `file:line` location.
#![no_main]

use gatewise::doctor::nginx::{config_findings, model, parse};
use gatewise::doctor::report::Report;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut warnings = Vec::new();
    let tree = parse::parse_str(&text, "fuzz.conf", &mut warnings);
    assert!(tree.iter().all(|d| d.at.starts_with("fuzz.conf:")));
    let m = model::build(&tree);
    let mut report = Report::default();
    config_findings(&m, &mut report);
    let _ = report.to_json();
});
