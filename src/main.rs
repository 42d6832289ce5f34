use std::process::ExitCode;

use clap::Parser;
use gatewise::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Explain(args) => gatewise::doctor::explain::run(&args),
        Command::Check(args) => gatewise::config::check::check_offline(&args.files),
        _ => ExitCode::from(2),
    }
}
