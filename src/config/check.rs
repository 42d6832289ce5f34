//! `gatewise check --offline`: parse and validate config files without touching the network.
//!
//! Errors go to stderr as `file:line:col: field: message`, one per line, so editors and CI can
//! jump to them; a good file prints a one-line summary to stdout.

use std::path::PathBuf;
use std::process::ExitCode;

/// Checks every file (all of them, even after a bad one); exit 0 when all are valid, 2 otherwise.
pub fn check_offline(files: &[PathBuf]) -> ExitCode {
    let mut ok = true;
    for path in files {
        match super::load(path) {
            Ok(c) => println!(
                "{}: ok ({} listeners, {} routes, {} upstreams)",
                path.display(),
                c.listeners.len(),
                c.routes.len(),
                c.upstreams.len()
            ),
            Err(errors) => {
                ok = false;
                eprint!("{errors}");
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    }
}
