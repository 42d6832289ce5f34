//! Fuzzes config parsing and validation on arbitrary text: no input may panic; an accepted
//! config is one `gatewise run` could start from (every route's listener and upstream exist),
//! and every rejection names at least one error that can be printed.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    match gatewise::config::parse(src, "fuzz.toml") {
        Ok(config) => {
            assert!(!config.listeners.is_empty());
            for route in &config.routes {
                assert!(config.listeners.iter().any(|l| l.name == route.listener));
                assert!(config.upstreams.contains_key(&route.upstream));
                assert!(route.path_prefix.starts_with('/'));
            }
        }
        Err(errors) => {
            let text = errors.to_string();
            assert!(!text.is_empty());
        }
    }
});
