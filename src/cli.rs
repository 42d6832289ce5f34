//! Command-line types only; `main.rs` dispatches on them.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "gatewise",
    version,
    about = "A reverse proxy that explains every 5xx it returns"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway: from a config file, the quick form (--listen/--to), or with neither the
    /// embedded default (127.0.0.1:8080 -> 127.0.0.1:3000, admin on 127.0.0.1:9901).
    Run(RunArgs),
    /// Validate config files (every error with its line and column), then probe every upstream
    /// target: resolves? listening? TLS or plain? health path? (`--offline`: validate only).
    Check(CheckArgs),
    /// Probe an upstream the way a gateway would and measure it against the configured limits:
    /// DNS, TCP, TLS, HTTP, health, the real keep-alive idle timeout, latency.
    Doctor(DoctorArgs),
    /// Run demo upstreams, the gateway in front and client traffic, with a live summary.
    Demo(DemoArgs),
    /// Read nginx, HAProxy, Envoy or gatewise logs and report causes, culprits and fixes.
    Explain(ExplainArgs),
    /// Share routes and upstreams between gatewise instances through etcd (docs/fleet.md).
    Fleet(FleetArgs),
}

#[derive(Debug, Args)]
pub struct FleetArgs {
    #[command(subcommand)]
    pub command: FleetCommand,
}

#[derive(Debug, Subcommand)]
pub enum FleetCommand {
    /// Validate FILE exactly like `gatewise check --offline`, then write it to etcd in one
    /// transaction; every instance watching the prefix applies its routes and upstreams. An
    /// invalid file is refused before anything is written (exit 2).
    Push(FleetPushArgs),
}

#[derive(Debug, Args)]
pub struct FleetPushArgs {
    /// The config file to share (TOML; its `[[route]]` and `[upstream.*]` are what instances take).
    pub file: PathBuf,
    /// etcd endpoint HOST:PORT (loopback, plain HTTP); repeat for several. Default: the file's
    /// `[fleet]` etcd.
    #[arg(long)]
    pub etcd: Vec<String>,
    /// Key prefix. Default: the file's `[fleet]` prefix, else "/gatewise/".
    #[arg(long)]
    pub prefix: Option<String>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Config file (TOML).
    #[arg(long, short, conflicts_with_all = ["listen", "to"])]
    pub config: Option<PathBuf>,
    /// Address to listen on (quick form).
    #[arg(long, requires = "to")]
    pub listen: Option<SocketAddr>,
    /// Upstream target HOST:PORT (quick form); repeat for several.
    #[arg(long, requires = "listen")]
    pub to: Vec<String>,
    /// Worker threads (default: one per core).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Admin listener address for the quick form (`off` to disable).
    #[arg(long)]
    pub admin: Option<String>,
    /// Binary upgrade: take the listening sockets over from the gatewise running this config
    /// (through its upgrade socket), serve them, then let it drain and exit (docs/reload.md).
    #[arg(long, requires = "config")]
    pub takeover: bool,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Only parse and validate; do not probe upstreams.
    #[arg(long)]
    pub offline: bool,
    /// Config files to check.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// The upstream to probe: `http://host:port/path`, `https://host/path` or `host:port`.
    pub url: Option<String>,
    /// Probe every target of this gatewise config against its settings.
    #[arg(long, short)]
    pub config: Option<std::path::PathBuf>,
    /// Read an nginx config (following `include`), probe its upstreams, name its 502 causes.
    #[arg(long)]
    pub nginx: Option<std::path::PathBuf>,
    /// Print the report as JSON (schema in docs/doctor.md).
    #[arg(long)]
    pub json: bool,
    /// Sequential requests for the latency sample.
    #[arg(long, default_value_t = 20)]
    pub requests: usize,
    /// Longest wait for the upstream to close an idle connection (default: the pool's
    /// idle_timeout + 2s).
    #[arg(long)]
    pub idle_wait: Option<String>,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long)]
    pub duration: Option<u64>,
    /// Gateway listen address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Client requests per second.
    #[arg(long, default_value_t = 200)]
    pub rate: u32,
    /// Inject no faults (a baseline to compare with).
    #[arg(long)]
    pub no_faults: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Auto,
    NginxError,
    NginxAccess,
    Haproxy,
    Envoy,
    Gatewise,
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// Log format; `auto` detects it per file.
    #[arg(long, value_enum, default_value = "auto")]
    pub format: LogFormat,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Log files (`-` for stdin; `.gz` read transparently).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}
