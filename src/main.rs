use std::process::ExitCode;

use clap::Parser;
use gatewise::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    match cli.command {
        Command::Run(args) => gatewise::run::run(&args),
        Command::Check(args) => gatewise::config::check::check(&args),
        Command::Doctor(args) => gatewise::doctor::run(&args),
        Command::Demo(args) => gatewise::demo::run(&args),
        Command::Explain(args) => gatewise::doctor::explain::run(&args),
        Command::Fleet(args) => gatewise::fleet::push::run(&args),
    }
}

/// Diagnostics go to stderr (`RUST_LOG` filters, default `info`); stdout is the access log's.
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
