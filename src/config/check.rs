//! `gatewise check`: parse and validate config files, then (without `--offline`) probe every
//! upstream target they name (`doctor::check_configs`).
//!
//! Errors go to stderr as `file:line:col: field: message`, one per line, so editors and CI can
//! jump to them; a good file prints a one-line summary to stdout.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::cli::CheckArgs;

/// Exit 2 when a file is invalid (its targets are not probed), else 1 when a probe found
/// something, 0 when all is well.
pub fn check(args: &CheckArgs) -> ExitCode {
    let (configs, ok) = validate(&args.files);
    if args.offline {
        return if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(2)
        };
    }
    let probed = crate::doctor::check_configs(&configs);
    if ok {
        probed
    } else {
        ExitCode::from(2)
    }
}

/// Checks every file (all of them, even after a bad one); exit 0 when all are valid, 2 otherwise.
pub fn check_offline(files: &[PathBuf]) -> ExitCode {
    if validate(files).1 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    }
}

/// The valid configs (named by their path) and whether every file was valid.
fn validate(files: &[PathBuf]) -> (Vec<(String, super::Config)>, bool) {
    let mut ok = true;
    let mut configs = Vec::new();
    for path in files {
        match super::load(path) {
            Ok(c) => {
                println!(
                    "{}: ok ({} listeners, {} routes, {} upstreams)",
                    path.display(),
                    c.listeners.len(),
                    c.routes.len(),
                    c.upstreams.len()
                );
                configs.push((path.display().to_string(), c));
            }
            Err(errors) => {
                ok = false;
                eprint!("{errors}");
            }
        }
    }
    (configs, ok)
}
