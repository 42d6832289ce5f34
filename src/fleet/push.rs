//! `gatewise fleet push FILE`: validate like `gatewise check --offline`, then write the file to
//! etcd in one transaction (the config key and the push record together, or neither).

use std::path::Path;
use std::process::ExitCode;

use crate::cli::{FleetArgs, FleetCommand, FleetPushArgs};
use crate::config::ConfigErrors;

use super::etcd::{Etcd, EtcdError};

#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// The file is not a valid config: nothing was written.
    #[error("{0}")]
    Invalid(ConfigErrors),
    /// No usable etcd endpoint, or nothing to share.
    #[error("{0}")]
    Input(String),
    #[error("{0}")]
    Etcd(#[from] EtcdError),
}

impl PushError {
    /// 2: the input is wrong (as `check` exits for an invalid file); 1: etcd failed.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            PushError::Invalid(_) | PushError::Input(_) => ExitCode::from(2),
            PushError::Etcd(_) => ExitCode::from(1),
        }
    }
}

pub fn run(args: &FleetArgs) -> ExitCode {
    match &args.command {
        FleetCommand::Push(push) => push_command(push),
    }
}

fn push_command(args: &FleetPushArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    let pushed = runtime.block_on(push_file(&args.file, &args.etcd, args.prefix.as_deref()));
    match pushed {
        Ok(pushed) => {
            println!(
                "{}: pushed to {} at revision {} ({} routes, {} upstreams)",
                args.file.display(),
                pushed.key,
                pushed.revision,
                pushed.routes,
                pushed.upstreams
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            match &e {
                // `file:line:col: field: message` lines, as `gatewise check` prints them.
                PushError::Invalid(errors) => eprint!("{errors}"),
                e => eprintln!("{}: not pushed: {e}", args.file.display()),
            }
            e.exit_code()
        }
    }
}

/// What a push wrote.
#[derive(Debug, Clone)]
pub struct Pushed {
    pub key: String,
    pub revision: i64,
    pub routes: usize,
    pub upstreams: usize,
}

/// Validates `path` exactly as `gatewise check --offline` does and, if valid, writes it to etcd.
/// Endpoints and prefix: as given, else the file's own `[fleet]`; endpoints are checked like
/// `[fleet] etcd` (plain HTTP, loopback).
pub async fn push_file(
    path: &Path,
    endpoints: &[String],
    prefix: Option<&str>,
) -> Result<Pushed, PushError> {
    let config = crate::config::load(path).map_err(PushError::Invalid)?;
    if config.routes.is_empty() {
        return Err(PushError::Input(format!(
            "{}: no [[route]]: nothing to share (instances take the routes and upstreams)",
            path.display()
        )));
    }
    let src =
        std::fs::read_to_string(path).map_err(|e| PushError::Invalid(ConfigErrors::io(path, e)))?;
    let endpoints = if endpoints.is_empty() {
        match &config.fleet {
            Some(f) => f.etcd.clone(),
            None => {
                return Err(PushError::Input(
                    "no etcd endpoint: pass --etcd HOST:PORT or set [fleet] etcd in the file"
                        .to_string(),
                ))
            }
        }
    } else {
        endpoints
            .iter()
            .map(|e| crate::config::fleet_endpoint(e))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| PushError::Input(format!("--etcd {e}")))?
    };
    let prefix = match (prefix, &config.fleet) {
        (Some(""), _) => return Err(PushError::Input("--prefix must not be empty".into())),
        (Some(p), _) => p.to_string(),
        (None, Some(f)) => f.prefix.clone(),
        (None, None) => crate::config::DEFAULT_FLEET_PREFIX.to_string(),
    };
    let key = super::config_key(&prefix);
    let record = serde_json::json!({
        "file": path.display().to_string(),
        "at": humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        "by": format!("gatewise {}", env!("CARGO_PKG_VERSION")),
        "bytes": src.len(),
    });
    let etcd = Etcd::new(endpoints);
    let revision = etcd
        .put_all(&[
            (&key, src.as_bytes()),
            (&super::pushed_key(&prefix), record.to_string().as_bytes()),
        ])
        .await?;
    tracing::info!(key = %key, revision, "fleet config pushed");
    Ok(Pushed {
        key,
        revision,
        routes: config.routes.len(),
        upstreams: config.upstreams.len(),
    })
}
