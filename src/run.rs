//! `gatewise run`: build the config (file or quick form), start the runtime, serve until a signal.

use std::process::ExitCode;

use crate::cli::RunArgs;
use crate::config::{self, Config, HealthCheckKind, HealthConfig, WorkerModel};
use crate::gateway::Gateway;
use crate::lifecycle::upgrade;
use crate::observe::access_log::AccessLog;

/// The config `gatewise run` was asked for, or the reason it cannot have it.
pub fn config_from_args(args: &RunArgs) -> Result<Config, String> {
    let mut config = match (&args.config, args.listen) {
        (Some(path), _) => config::load(path).map_err(|e| e.to_string())?,
        (None, Some(listen)) => quick_config(listen, check_quick_targets(&args.to)?),
        (None, None) => embedded_default(),
    };
    if let Some(admin) = &args.admin {
        config.admin.listen = match admin.as_str() {
            "off" => None,
            addr => Some(addr.parse().map_err(|e| format!("--admin {addr}: {e}"))?),
        };
    }
    if args.workers.is_some() {
        config.workers = args.workers;
    }
    Ok(config)
}

/// The `--to` values, checked by the same rule as `targets` in a file: a value the file would
/// refuse (`localhost`, `foo:bar`, `http://127.0.0.1:3001`) is refused here too, every one named,
/// rather than starting a gateway whose every request fails.
pub fn check_quick_targets(to: &[String]) -> Result<Vec<String>, String> {
    let mut errors = Vec::new();
    let mut targets: Vec<String> = Vec::new();
    for t in to {
        if let Err(e) = config::check_target(t) {
            errors.push(format!("--to {t:?}: {e}"));
        } else if targets.contains(t) {
            errors.push(format!("--to {t:?}: duplicate target"));
        } else {
            targets.push(t.clone());
        }
    }
    if errors.is_empty() {
        Ok(targets)
    } else {
        Err(errors.join("\ngatewise: "))
    }
}

/// The config of `gatewise run` with no arguments: `examples/quick-equivalent.toml`, built in,
/// i.e. the quick form `--listen 127.0.0.1:8080 --to 127.0.0.1:3000`.
pub fn embedded_default() -> Config {
    tracing::info!(
        "no --config or --listen/--to given: running the embedded default \
         (examples/quick-equivalent.toml: 127.0.0.1:8080 -> 127.0.0.1:3000, admin 127.0.0.1:9901)"
    );
    quick_config(
        std::net::SocketAddr::from(([127, 0, 0, 1], 8080)),
        vec!["127.0.0.1:3000".to_string()],
    )
}

/// The quick form with its sane defaults: a TCP health check on every target, retries on.
pub fn quick_config(listen: std::net::SocketAddr, targets: Vec<String>) -> Config {
    let mut config = Config::quick(listen, targets);
    for upstream in config.upstreams.values_mut() {
        let mut health = HealthConfig::http("/");
        health.kind = HealthCheckKind::Tcp;
        upstream.health = Some(health);
    }
    config
}

/// Runs the gateway until SIGINT/SIGTERM. Exit 2 when it cannot start.
pub fn run(args: &RunArgs) -> ExitCode {
    let config = match config_from_args(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("gatewise: {e}");
            return ExitCode::from(2);
        }
    };
    let runtimes = match Runtimes::build(config.workers, config.worker_model) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("gatewise: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let Runtimes { runtime, workers } = runtimes;
    let worker_handles = workers.as_ref().map(|w| w.handles()).unwrap_or_default();
    let (log, writer) = match AccessLog::start(&config.access_log) {
        Ok(started) => started,
        Err(e) => {
            eprintln!("gatewise: access log: {e}");
            return ExitCode::from(2);
        }
    };
    let config_path = args.config.clone();
    let upgrade_socket = config_path.as_ref().map(|p| {
        config
            .upgrade_socket
            .clone()
            .unwrap_or_else(|| upgrade::default_socket(p))
    });
    // A binary upgrade takes the running process's sockets before binding anything itself.
    let (inherited, handover) = match (&upgrade_socket, args.takeover) {
        (Some(path), true) => match upgrade::take_over(path) {
            Ok((inherited, stream)) => (inherited, Some(stream)),
            Err(e) => {
                eprintln!("gatewise: --takeover: {e}");
                return ExitCode::from(2);
            }
        },
        _ => (upgrade::Inherited::default(), None),
    };
    let code = runtime.block_on(async move {
        // Registered first: SIGHUP's default action would end the process.
        let hangups = Hangups::new();
        tokio::spawn(reopen_log_on_sigusr1(log.clone()));
        let gateway = match Gateway::bind_inherited(&config, log, inherited).await {
            Ok(g) => g,
            Err(e) => {
                eprintln!("gatewise: {e:#}");
                return ExitCode::from(2);
            }
        };
        let gateway = match config_path {
            Some(path) => gateway.with_config_path(path),
            None => gateway,
        };
        let gateway = gateway.with_workers(worker_handles);
        tokio::spawn(hangups.reload(gateway.shared()));
        if let Some(stream) = handover {
            // Bound and about to accept: the old process may stop accepting now.
            if let Err(e) = upgrade::ready(stream) {
                tracing::warn!(err = %e, "binary upgrade: could not tell the old process");
            }
        }
        // The next upgrade asks this process (the old one's socket file is replaced).
        let handed_over = tokio::sync::oneshot::channel::<()>();
        match upgrade_socket.as_deref().map(upgrade::listen) {
            Some(Ok(listener)) => {
                let listener = tokio::net::UnixListener::from_std({
                    listener.set_nonblocking(true).ok();
                    listener
                });
                match listener {
                    Ok(listener) => {
                        let (shared, done) = (gateway.shared(), handed_over.0);
                        tokio::spawn(async move {
                            upgrade::serve_handover(listener, shared).await;
                            let _ = done.send(());
                        });
                    }
                    Err(e) => tracing::warn!(err = %e, "upgrade socket unusable; binary upgrades are off"),
                }
            }
            Some(Err(e)) => tracing::warn!(err = %e, "cannot listen on the upgrade socket; binary upgrades are off"),
            None => {}
        }
        let mut upgraded = handed_over.1;
        crate::lifecycle::systemd::notify("READY=1");
        // The first SIGTERM/SIGINT drains (docs/config.md, "Shutdown"); a second one stops at
        // once. Both are read from the same streams, so two quick signals are never one.
        let mut signals = StopSignals::new();
        let (first_tx, first_rx) = tokio::sync::oneshot::channel::<()>();
        let watch_signals = async move {
            signals.next().await;
            tracing::info!("signal received: draining (a second signal stops at once)");
            let _ = first_tx.send(());
            signals.next().await;
        };
        let first = async {
            tokio::select! {
                _ = first_rx => {}
                Ok(()) = &mut upgraded => {}
            }
        };
        tokio::select! {
            _ = gateway.serve_until(first) => {}
            () = watch_signals => tracing::warn!("second signal: stopping without waiting"),
        }
        ExitCode::SUCCESS
    });
    // Shutting the runtime down drops every task and with them every handle on the access log,
    // so the writer can drain the last lines and stop. Both waits are bounded: blocking work
    // (a DNS lookup) or a stuck log destination must not keep the process alive.
    if let Some(workers) = workers {
        workers.stop(std::time::Duration::from_secs(1));
    }
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    if let Some(writer) = writer {
        writer.finish(std::time::Duration::from_secs(2));
    }
    code
}

/// The runtimes of `gatewise run`: the one `run` blocks on (signals, reloads, admin, health
/// checks), and with `worker_model = "per_worker"` the worker threads that serve client
/// connections, each with its own event loop (`server/workers.rs`).
pub struct Runtimes {
    pub runtime: tokio::runtime::Runtime,
    pub workers: Option<crate::server::workers::Workers>,
}

impl Runtimes {
    /// `workers` threads (default: one per core) as `model` says. `per_worker`: a small
    /// current-thread runtime for control on the main thread, plus the workers. `work_stealing`:
    /// one runtime for everything ([`build_runtime`]).
    pub fn build(workers: Option<usize>, model: WorkerModel) -> std::io::Result<Runtimes> {
        match model {
            WorkerModel::WorkStealing => Ok(Runtimes {
                runtime: build_runtime(workers)?,
                workers: None,
            }),
            WorkerModel::PerWorker => {
                let n = workers
                    .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
                Ok(Runtimes {
                    runtime: tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?,
                    workers: Some(crate::server::workers::Workers::start(n)?),
                })
            }
        }
    }
}

/// A runtime with `workers` threads (default: one per core). One worker gets a current-thread
/// runtime: no work-stealing bookkeeping or cross-thread wake-ups (measured: ~15% less CPU per
/// request than a one-thread multi-threaded runtime).
pub fn build_runtime(workers: Option<usize>) -> std::io::Result<tokio::runtime::Runtime> {
    if workers == Some(1) {
        return tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = workers {
        builder.worker_threads(n.max(1));
    }
    builder.enable_all().thread_name("gatewise-worker").build()
}

/// SIGUSR1 reopens the access-log file (after an external rotation moved it away).
async fn reopen_log_on_sigusr1(log: AccessLog) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut usr1) = signal(SignalKind::user_defined1()) else {
            return;
        };
        while usr1.recv().await.is_some() {
            log.reopen();
            tracing::info!("SIGUSR1: reopening the access log");
        }
    }
    #[cfg(not(unix))]
    drop(log);
}

/// SIGHUP (what `systemctl reload` and a closed terminal send): reload, never exit.
struct Hangups {
    #[cfg(unix)]
    hup: Option<tokio::signal::unix::Signal>,
}

impl Hangups {
    fn new() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Hangups {
                hup: signal(SignalKind::hangup()).ok(),
            }
        }
        #[cfg(not(unix))]
        Hangups {}
    }

    async fn reload(self, shared: std::sync::Arc<crate::gateway::Shared>) {
        #[cfg(unix)]
        {
            let Some(mut hup) = self.hup else { return };
            while hup.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading the config file");
                // The outcome is logged by the reload itself.
                shared.reload("sighup").await;
            }
        }
        #[cfg(not(unix))]
        drop((self, shared));
    }
}

/// SIGTERM and SIGINT, each registered once for the life of the process.
struct StopSignals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
}

impl StopSignals {
    fn new() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            StopSignals {
                term: signal(SignalKind::terminate()).ok(),
                int: signal(SignalKind::interrupt()).ok(),
            }
        }
        #[cfg(not(unix))]
        StopSignals {}
    }

    /// The next SIGTERM or SIGINT.
    async fn next(&mut self) {
        #[cfg(unix)]
        {
            async fn recv(s: &mut Option<tokio::signal::unix::Signal>) {
                match s {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending().await,
                }
            }
            tokio::select! {
                () = recv(&mut self.term) => {}
                () = recv(&mut self.int) => {}
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}
