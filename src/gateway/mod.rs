//! Assembling a running gateway from a [`Config`]: the first [`Snapshot`], bound sockets, the
//! admin listener; then serving them, reloading on request ([`reload`]) and draining at the end.

pub mod reload;
pub mod snapshot;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::config::Config;
use crate::lifecycle::upgrade::Inherited;
use crate::observe::access_log::AccessLog;
use crate::observe::metrics::Metrics;
use crate::server::drain::Drain;
use reload::{Live, ReloadOutcome, ReloadRequest, ReloadStatus};
pub use snapshot::Snapshot;

/// State shared by the whole gateway (the admin listener and every listener read it).
pub struct Shared {
    /// The configuration serving now; loaded once per request, swapped by a reload.
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    pub metrics: Metrics,
    /// Set when shutdown began: `/ready` answers 503 from then on.
    pub draining: AtomicBool,
    /// The last reload and its result, for `/status`.
    pub reloads: ReloadStatus,
    /// What each discovery source last said, for `/status`.
    pub discovery: crate::discovery::DiscoveryStatus,
    reload_tx: mpsc::Sender<ReloadRequest>,
    /// The listening sockets serving now (duplicates, by listener name) and the admin
    /// listener's: what a binary upgrade hands to the new process.
    pub sockets: std::sync::Mutex<Vec<(String, std::os::fd::OwnedFd)>>,
    pub admin_socket: Option<std::os::fd::OwnedFd>,
    /// The certificate store of each TLS listener, by listener name (`/status`, `/metrics`).
    pub certificates: crate::observe::metrics::CertificateList,
    /// Set when a new process took the sockets over: the drain skips `drain_delay` (the new
    /// process is already serving) and the process exits once its requests are done.
    pub handed_over: AtomicBool,
    /// Automatic certificates (ACME) and their open challenges.
    pub acme: Arc<crate::acme::Acme>,
    /// The fleet config's source (`[fleet]`): etcd connected or not, the revision serving.
    pub fleet: Arc<crate::fleet::FleetStatus>,
}

impl Shared {
    /// `None` when every route has a target that can take traffic; otherwise why not.
    pub fn not_ready(&self) -> Option<String> {
        if self.draining.load(Ordering::Relaxed) {
            return Some("draining: gatewise is shutting down".to_string());
        }
        if let Some(why) = self.fleet.not_ready() {
            return Some(why);
        }
        self.snapshot.load().not_ready()
    }

    /// Asks for a reload from the config file and waits for its outcome. `source` says who
    /// asked (`sighup`, `file`, `admin`), for the log.
    pub async fn reload(&self, source: &'static str) -> ReloadOutcome {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let request = ReloadRequest {
            source,
            reply: Some(reply),
        };
        if self.reload_tx.send(request).await.is_err() {
            return ReloadOutcome::unavailable("gatewise is shutting down");
        }
        answer
            .await
            .unwrap_or_else(|_| ReloadOutcome::unavailable("gatewise is shutting down"))
    }
}

/// A gateway with its sockets bound, ready to serve.
pub struct Gateway {
    live: Live,
    admin: Option<TcpListener>,
    shared: Arc<Shared>,
    reload_rx: mpsc::Receiver<ReloadRequest>,
    drain: Drain,
}

impl Gateway {
    /// Builds the first snapshot and binds every socket (port 0 picks a free port).
    pub async fn bind(config: &Config, access_log: AccessLog) -> anyhow::Result<Gateway> {
        Self::bind_inherited(config, access_log, Inherited::default()).await
    }

    /// [`Gateway::bind`], using the sockets a previous process handed over (binary upgrade)
    /// for the listeners they match, and binding the rest.
    pub async fn bind_inherited(
        config: &Config,
        access_log: AccessLog,
        mut inherited: Inherited,
    ) -> anyhow::Result<Gateway> {
        let mut metrics = Metrics::new(std::iter::empty());
        metrics.register_access_log(&access_log);
        let admin = match (config.admin.listen, inherited.admin.take()) {
            (Some(addr), Some(socket)) if matches(addr, &socket) => {
                Some(TcpListener::from_std(socket)?)
            }
            (Some(addr), _) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("admin: cannot listen on {addr}"))?,
            ),
            (None, _) => None,
        };
        let admin_socket = match &admin {
            Some(a) => Some(std::os::fd::AsFd::as_fd(a).try_clone_to_owned()?),
            None => None,
        };
        let fleet = Arc::new(crate::fleet::FleetStatus::new(config.fleet.as_ref()));
        if config.fleet.is_some() {
            metrics.register_fleet(&fleet.metrics);
        }
        let certificates = crate::observe::metrics::CertificateList::default();
        metrics.register_certificates(certificates.clone());
        let acme = Arc::new(crate::acme::Acme::default());
        metrics.register_acme(acme.clone());
        let snapshot =
            Snapshot::build(config.clone(), None, &metrics).map_err(anyhow::Error::msg)?;
        metrics.set_upstreams(snapshot.upstreams.values());
        metrics.reloads.generation.set(1);
        let (reload_tx, reload_rx) = mpsc::channel(16);
        let shared = Arc::new(Shared {
            snapshot: Arc::new(ArcSwap::from_pointee(snapshot)),
            metrics,
            draining: AtomicBool::new(false),
            reloads: ReloadStatus::default(),
            discovery: crate::discovery::DiscoveryStatus::default(),
            reload_tx,
            sockets: std::sync::Mutex::new(Vec::new()),
            admin_socket,
            certificates,
            handed_over: AtomicBool::new(false),
            acme,
            fleet,
        });
        let drain = Drain::default();
        let live = Live::bind(shared.clone(), access_log, drain.signal(), &mut inherited).await?;
        Ok(Gateway {
            live,
            admin,
            shared,
            reload_rx,
            drain,
        })
    }

    /// The file reloads read (SIGHUP, a change of the file, `POST /reload`). Without one, a
    /// reload request is answered with an error and the running config is kept.
    pub fn with_config_path(mut self, path: PathBuf) -> Gateway {
        self.live.set_config_path(path);
        self
    }

    /// Upstream `name` (whose config sets `discovery`) takes its targets from the sources
    /// `factory` makes instead of the one the config names: for tests and for programs that
    /// embed gatewise with a source of their own.
    pub fn with_discovery_source(
        mut self,
        upstream: &str,
        factory: crate::discovery::SourceFactory,
    ) -> Gateway {
        self.live.set_discovery_source(upstream, factory);
        self
    }

    /// Accept and serve client connections on these runtimes (one accept loop per worker on
    /// each listening socket) rather than on the runtime that serves the gateway, which keeps
    /// the admin listener, reloads and health checks (`server/workers.rs`).
    pub fn with_workers(mut self, workers: Vec<tokio::runtime::Handle>) -> Gateway {
        self.live.set_workers(workers);
        self
    }

    /// Addresses the listeners are bound to, in config order.
    pub fn listen_addrs(&self) -> Vec<SocketAddr> {
        self.live.listen_addrs()
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// Serves every listener and the admin listener until the returned future is dropped.
    pub async fn serve(self) {
        self.serve_until(std::future::pending()).await;
    }

    /// Serves until `shutdown` resolves, then drains (`server/drain.rs`): `/ready` 503 at once,
    /// still serving for `drain_delay`; then listeners close and open connections finish their
    /// requests, for up to `shutdown_timeout`. Returns when that is done, with the number of
    /// connections still open at the timeout (0 when all finished). Reloads are applied while
    /// serving (not during the drain).
    pub async fn serve_until(self, shutdown: impl Future<Output = ()>) -> usize {
        let Gateway {
            mut live,
            admin,
            shared,
            mut reload_rx,
            drain,
        } = self;
        let admin_task = admin.map(|admin| {
            tracing::info!(addr = %admin.local_addr().map(|a| a.to_string()).unwrap_or_default(), "admin listening");
            AbortOnDrop(tokio::spawn(crate::observe::admin::serve(
                admin,
                shared.clone(),
            )))
        });
        live.start();
        live.log_routes();
        tokio::select! {
            () = shutdown => {}
            () = live.run(&mut reload_rx) => {}
        }
        shared.draining.store(true, Ordering::Relaxed);
        crate::lifecycle::systemd::notify("STOPPING=1");
        let config = shared.snapshot.load().config.clone();
        let mut admin_task = admin_task;
        if shared.handed_over.load(Ordering::Relaxed) {
            // The new process answers /ready and the rest from now on.
            admin_task = None;
            tracing::info!("the new process serves the sockets: finishing in-flight requests");
        } else {
            tracing::info!(
                drain_delay_ms = config.drain_delay.as_millis() as u64,
                "draining: /ready answers 503; still serving until the delay ends"
            );
            tokio::time::sleep(config.drain_delay).await;
        }
        tracing::info!(
            shutdown_timeout_ms = config.shutdown_timeout.as_millis() as u64,
            "closing listeners; waiting for in-flight requests"
        );
        // Reload requests from now on are answered "shutting down".
        drop(reload_rx);
        live.release_drain();
        let open = drain.close_and_wait(config.shutdown_timeout).await;
        match open {
            0 => tracing::info!("drained: every connection finished"),
            open => tracing::warn!(open, "shutdown timeout: closing connections still open"),
        }
        drop((live, admin_task));
        open
    }
}

/// Whether an inherited socket serves the configured address (port 0: any port on that IP,
/// the one the previous process was given).
pub(crate) fn matches(configured: SocketAddr, socket: &std::net::TcpListener) -> bool {
    socket.local_addr().is_ok_and(|bound| {
        bound == configured || (configured.port() == 0 && bound.ip() == configured.ip())
    })
}

/// A spawned task that ends when its owner does.
pub(crate) struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
