//! Fuzzes the gatewise_log line parser of `gatewise explain`: no input may panic, and a line the
//! parser calls unknown must not have reported a failure (the format fallback relies on it).
#![no_main]

use gatewise::doctor::explain::{Format, Line};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let line = String::from_utf8_lossy(data);
    let mut failures = 0;
    let parsed = Format::Gatewise.parse(&line, &mut |_| failures += 1);
    assert!(parsed != Line::Unknown || failures == 0);
});
