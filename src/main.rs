use std::process::ExitCode;

use clap::Parser;
use gatewise::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Explain(args) => gatewise::doctor::explain::run(&args),
        _ => ExitCode::from(2),
    }
}
