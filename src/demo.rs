//! `gatewise demo` (built in a later step).

use std::process::ExitCode;

use crate::cli::DemoArgs;

pub fn run(_args: &DemoArgs) -> ExitCode {
    ExitCode::from(2)
}
