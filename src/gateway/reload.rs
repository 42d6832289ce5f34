//! Reload: what is serving ([`Live`]: listener sockets, accept loops, health tasks) and how a
//! new config replaces it — the spec's semantics: validate fully first and keep the running
//! config on any error; diff by identity; bind new listener addresses before traffic moves;
//! one atomic swap of the [`Snapshot`]; then retire removed listeners (they stop accepting, their
//! connections finish) and restart health checks only for upstreams that changed.
//!
//! Triggers: SIGHUP (`run.rs`), `POST /reload` (admin), and a change of the config file — its
//! directory is watched, so an editor's rename-over and a Kubernetes ConfigMap's symlink swap are
//! both seen; events are debounced, and a file whose content did not change is not reloaded.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

use super::{AbortOnDrop, Shared, Snapshot};
use crate::config::reload::Diff;
use crate::config::{Config, ConfigErrors, ListenerConfig};
use crate::lifecycle::upgrade::Inherited;
use crate::observe::access_log::AccessLog;
use crate::proxy::forward::ListenerState;
use crate::server::drain::DrainSignal;
use crate::server::tls::Terminator;
use crate::upstream::Upstream;

/// Quiet time after a file event before the file is read: editors write in several steps.
pub const DEBOUNCE: Duration = Duration::from_millis(200);

/// A request to reload from the config file.
pub struct ReloadRequest {
    pub source: &'static str,
    pub reply: Option<oneshot::Sender<ReloadOutcome>>,
}

/// One config error, as the `POST /reload` answer lists it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ReloadError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub field: String,
    pub message: String,
}

/// What a reload did: the diff applied, or every error and the generation still serving.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadOutcome {
    pub ok: bool,
    /// The generation serving after the attempt.
    pub generation: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub applied: Option<Diff>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<ReloadError>,
    /// One line for a person.
    pub message: String,
}

impl ReloadOutcome {
    pub fn unavailable(why: &str) -> Self {
        ReloadOutcome {
            ok: false,
            generation: 0,
            applied: None,
            errors: Vec::new(),
            message: why.to_string(),
        }
    }
}

/// The last reload, for `/status`.
#[derive(Default)]
pub struct ReloadStatus(Mutex<Option<LastReload>>);

#[derive(Debug, Clone, Serialize)]
pub struct LastReload {
    #[serde(serialize_with = "rfc3339")]
    pub at: SystemTime,
    pub source: &'static str,
    pub ok: bool,
    pub message: String,
}

fn rfc3339<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_millis(*t))
}

impl ReloadStatus {
    pub fn last(&self) -> Option<LastReload> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, last: LastReload) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(last);
    }
}

/// One listener that is serving (or bound, about to).
struct LiveListener {
    /// The TLS side (`None`: plain), read per connection so a reload can change certificates.
    tls: Arc<arc_swap::ArcSwapOption<Terminator>>,
    /// Polls the certificate files of a TLS listener.
    tls_watch: Option<AbortOnDrop>,
    /// A duplicate of the listening socket, for a binary upgrade's handover.
    fd: std::os::fd::OwnedFd,
    /// As configured (port 0 stays 0): a reload keeps the socket while this is unchanged.
    listen: SocketAddr,
    bound: SocketAddr,
    config: Arc<ArcSwap<ListenerConfig>>,
    state: Arc<ListenerState>,
    /// The socket until the accept loops start, then the loops, one per worker (aborting them
    /// closes the socket; connections already accepted are tasks of their own and finish).
    socket: Option<TcpListener>,
    tasks: Vec<AbortOnDrop>,
}

/// Everything serving the current snapshot that a reload may replace.
pub struct Live {
    shared: Arc<Shared>,
    access_log: AccessLog,
    /// Registers new listeners with the drain; released when the drain begins.
    drain: Option<DrainSignal>,
    config_path: Option<PathBuf>,
    /// The config directory's watcher and its events, until `run` takes them.
    watcher: Option<(notify::RecommendedWatcher, mpsc::Receiver<()>)>,
    /// The file content last applied, so an event without a change does nothing.
    applied_source: Option<String>,
    /// The config as this instance's file gives it (before the fleet's routes and upstreams
    /// replace its own), kept to merge the next fleet change with.
    local: Config,
    /// The fleet config serving (`None`: none read yet, or no `[fleet]`).
    fleet_doc: Option<crate::fleet::FleetDoc>,
    /// In config order.
    listeners: Vec<(String, LiveListener)>,
    health: BTreeMap<String, (Arc<Upstream>, AbortOnDrop)>,
    /// The discovery sources running, one per upstream that has one.
    sources: crate::discovery::Sources,
    /// The worker runtimes that accept and serve connections (`worker_model = "per_worker"`);
    /// empty: the current runtime does.
    workers: Vec<tokio::runtime::Handle>,
}

impl Live {
    /// Binds every listener of the current snapshot; nothing is served until [`Live::start`].
    pub async fn bind(
        shared: Arc<Shared>,
        access_log: AccessLog,
        drain: DrainSignal,
        inherited: &mut Inherited,
    ) -> anyhow::Result<Live> {
        let local = Config::clone(&shared.snapshot.load().config);
        let mut live = Live {
            local,
            fleet_doc: None,
            shared,
            access_log,
            drain: Some(drain),
            config_path: None,
            watcher: None,
            applied_source: None,
            listeners: Vec::new(),
            health: BTreeMap::new(),
            sources: crate::discovery::Sources::default(),
            workers: Vec::new(),
        };
        let config = live.shared.snapshot.load().config.clone();
        for lc in &config.listeners {
            let socket = match inherited.take_listener(&lc.name) {
                Some(s) if super::matches(lc.listen, &s) => {
                    tracing::info!(listener = %lc.name, "serving the socket handed over by the previous process");
                    TcpListener::from_std(s)?
                }
                _ => TcpListener::bind(lc.listen).await.map_err(|e| {
                    anyhow::anyhow!("listener {}: cannot listen on {}: {e}", lc.name, lc.listen)
                })?,
            };
            let listener = live.listener(lc, socket)?;
            live.listeners.push((lc.name.clone(), listener));
        }
        Ok(live)
    }

    /// Reloads read `path`; with `watch_config` its directory is watched from now on (so a
    /// change made right after start is not missed).
    pub fn set_config_path(&mut self, path: PathBuf) {
        self.applied_source = std::fs::read_to_string(&path).ok();
        if self.shared.snapshot.load().config.watch_config {
            let (events_tx, events) = mpsc::channel::<()>(1);
            self.watcher = watch(&path, events_tx).map(|w| (w, events));
        }
        self.config_path = Some(path);
    }

    /// See [`crate::discovery::Sources::set_override`].
    pub fn set_discovery_source(
        &mut self,
        upstream: &str,
        factory: crate::discovery::SourceFactory,
    ) {
        self.sources.set_override(upstream, factory);
    }

    /// Connections are accepted and served on these runtimes from the next [`Live::start`].
    pub fn set_workers(&mut self, workers: Vec<tokio::runtime::Handle>) {
        self.workers = workers;
    }

    pub fn listen_addrs(&self) -> Vec<SocketAddr> {
        self.listeners.iter().map(|(_, l)| l.bound).collect()
    }

    fn listener(&self, lc: &ListenerConfig, socket: TcpListener) -> anyhow::Result<LiveListener> {
        let bound = socket.local_addr()?;
        let tls = terminator(lc, &self.shared.acme)?;
        Ok(LiveListener {
            tls: Arc::new(arc_swap::ArcSwapOption::new(tls.map(Arc::new))),
            tls_watch: None,
            fd: std::os::fd::AsFd::as_fd(&socket).try_clone_to_owned()?,
            listen: lc.listen,
            bound,
            config: Arc::new(ArcSwap::from_pointee(lc.clone())),
            state: Arc::new(ListenerState {
                name: lc.name.clone(),
                snapshot: self.shared.snapshot.clone(),
                access_log: self.access_log.clone(),
                unrouted: self.shared.metrics.unrouted(),
                connections: self.shared.metrics.client_connections(&lc.name),
                scheme: if lc.tls.is_some() { "https" } else { "http" },
                expose_details: lc.expose_details.into(),
                allow_trace: lc.allow_trace.into(),
                acme: self.shared.acme.challenges.clone(),
            }),
            socket: Some(socket),
            tasks: Vec::new(),
        })
    }

    /// Automatic certificates no serving listener uses stop renewing.
    fn retain_acme(&self) {
        let in_use: Vec<_> = self
            .listeners
            .iter()
            .filter_map(|(_, l)| l.tls.load_full()?.store.acme().cloned())
            .collect();
        self.shared.acme.retain(&in_use);
    }

    /// Starts the accept loops of bound listeners and the health checks of every upstream
    /// without them.
    pub fn start(&mut self) {
        for (name, l) in &mut self.listeners {
            let (Some(socket), Some(drain)) = (l.socket.take(), self.drain.as_ref()) else {
                continue;
            };
            tracing::info!(
                listener = %name,
                tls = l.config.load().tls.is_some(),
                // Last: scripts and tests read the address off the end of this line.
                addr = %l.bound,
                "listening"
            );
            let (config, state, tls, drain) = (
                l.config.clone(),
                l.state.clone(),
                l.tls.clone(),
                drain.clone(),
            );
            let serve = move |socket| {
                crate::server::listener::serve(
                    socket,
                    config.clone(),
                    state.clone(),
                    tls.clone(),
                    drain.clone(),
                )
            };
            match crate::server::workers::spawn_accept_loops(&self.workers, socket, serve) {
                Ok(tasks) => l.tasks = tasks.into_iter().map(AbortOnDrop).collect(),
                // Only a descriptor limit makes duplicating a bound socket fail.
                Err(err) => {
                    tracing::error!(listener = %name, %err, "cannot start the accept loops")
                }
            }
        }
        let mut certificates = Vec::new();
        for (name, l) in &mut self.listeners {
            let Some(tls) = l.tls.load_full() else {
                l.tls_watch = None;
                continue;
            };
            certificates.push((name.clone(), tls.store.clone()));
            if l.tls_watch.is_none() {
                tls.warn_expiry(name);
                l.tls_watch = Some(AbortOnDrop(tokio::spawn(tls.watch(name.clone()))));
            }
        }
        self.shared.certificates.store(Arc::new(certificates));
        self.retain_acme();
        let sockets = self
            .listeners
            .iter()
            .filter_map(|(name, l)| Some((name.clone(), l.fd.try_clone().ok()?)))
            .collect();
        *self
            .shared
            .sockets
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = sockets;
        self.restart_health();
        let config = self.shared.snapshot.load().config.clone();
        for name in self.sources.reconcile(&config, &self.shared.discovery) {
            let source = self.sources.source_name(&name);
            self.shared.metrics.discovery.started(&name, source);
        }
    }

    /// Starts health checks for every upstream that is new or was replaced (its old task ends).
    fn restart_health(&mut self) {
        let snapshot = self.shared.snapshot.load_full();
        self.health.retain(|name, (up, _)| {
            snapshot
                .upstreams
                .get(name)
                .is_some_and(|u| Arc::ptr_eq(u, up))
        });
        for (name, upstream) in &snapshot.upstreams {
            if !self.health.contains_key(name) {
                let task = AbortOnDrop(tokio::spawn(upstream.clone().run_health()));
                self.health.insert(name.clone(), (upstream.clone(), task));
            }
        }
    }

    /// Logs what routes where (once, at start: a reload logs its diff instead).
    pub fn log_routes(&self) {
        for route in &self.shared.snapshot.load().routes {
            tracing::info!(
                route = %route.name,
                host = %route.config.host,
                path_prefix = %route.config.path_prefix,
                upstream = %route.upstream.name,
                targets = ?route.upstream.config.targets,
                "routing"
            );
        }
    }

    /// Stops registering connections with the drain, so it can finish, and lets go of the
    /// listening sockets (the accept loops end; the duplicates kept for a handover close).
    pub fn release_drain(&mut self) {
        self.drain = None;
        self.listeners.clear();
        self.shared
            .sockets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// Applies reload requests and config-file changes, forever.
    pub async fn run(&mut self, requests: &mut mpsc::Receiver<ReloadRequest>) {
        let (_watcher, mut events) = match self.watcher.take() {
            Some((w, events)) => (Some(w), events),
            None => (None, mpsc::channel::<()>(1).1),
        };
        // The fleet config's watch, when `[fleet]` is set: its changes arrive here.
        let (fleet_tx, mut fleet_updates) = mpsc::channel(4);
        let _fleet_watch = self.local.fleet.clone().map(|fleet| {
            AbortOnDrop(tokio::spawn(crate::fleet::watch(
                fleet,
                self.shared.fleet.clone(),
                fleet_tx,
            )))
        });
        let mut discovered = self
            .sources
            .take_reports()
            .unwrap_or_else(|| mpsc::channel(1).1);
        loop {
            // One task applies reloads and discovery reports, so the two never race: a reload
            // builds on the discovered targets, a report on the reloaded config.
            tokio::select! {
                Some(update) = fleet_updates.recv() => {
                    self.fleet_changed(update).await;
                }
                Some(update) = discovered.recv() => self.discovered(update),
                Some(request) = requests.recv() => {
                    let outcome = self.reload(request.source).await;
                    if let Some(reply) = request.reply {
                        let _ = reply.send(outcome);
                    }
                }
                Some(()) = events.recv() => {
                    // Debounce: wait for a quiet moment, then read once.
                    while let Ok(Some(())) = tokio::time::timeout(DEBOUNCE, events.recv()).await {}
                    self.file_changed().await;
                }
                else => std::future::pending::<()>().await,
            }
        }
    }

    /// Applies one discovery report: a changed set swaps in the upstream built again keyed by
    /// address (see [`Snapshot::with_discovered`]); readiness changes mark targets draining or
    /// back; a failure or an empty set keeps the last good set and is reported.
    fn discovered(&mut self, update: crate::discovery::Update) {
        use crate::discovery::{counts, normalize, Readiness, Report};
        if !self.sources.is_current(&update) {
            return;
        }
        let name = update.upstream;
        let source = self.sources.source_name(&name);
        let set = match update.report {
            Report::Failed(reason) => return self.discovery_failed(&name, source, &reason),
            Report::Targets(set) if set.is_empty() => {
                return self.discovery_failed(
                    &name,
                    source,
                    "the source answered an empty set (never applied: a pool is not emptied by discovery)",
                )
            }
            Report::Targets(set) => normalize(set),
        };
        let old = self.shared.snapshot.load_full();
        let Some(current) = old.upstreams.get(&name) else {
            return;
        };
        let same_addrs = current.targets.len() == set.len()
            && current
                .targets
                .iter()
                .zip(&set)
                .all(|(t, d)| *t.addr == d.addr);
        let same_readiness = same_addrs
            && current
                .targets
                .iter()
                .zip(&set)
                .all(|(t, d)| t.is_draining() == (d.readiness == Readiness::Draining));
        // The new set is built first and its readiness marked before the swap: a target turning
        // draining in the same update as another change never takes a request it should not.
        let next = if same_addrs {
            None
        } else {
            let targets: Vec<String> = set.iter().map(|d| d.addr.clone()).collect();
            match old.with_discovered(&name, targets, &self.shared.metrics) {
                Ok(s) => Some(Arc::new(s)),
                Err(e) => return self.discovery_failed(&name, source, &e),
            }
        };
        if !same_readiness {
            let marked = next.as_ref().unwrap_or(&old);
            if let Some(up) = marked.upstreams.get(&name) {
                for (t, d) in up.targets.iter().zip(&set) {
                    if *t.addr == d.addr {
                        t.set_draining(d.readiness == Readiness::Draining);
                    }
                }
            }
        }
        if let Some(snapshot) = next {
            self.shared
                .metrics
                .set_upstreams(snapshot.upstreams.values());
            self.shared.snapshot.store(snapshot.clone());
            if let Some(next) = snapshot.upstreams.get(&name) {
                if !Arc::ptr_eq(current, next) {
                    current.succeeded_by(next.clone());
                }
            }
            let added = set
                .iter()
                .filter(|d| !current.targets.iter().any(|t| *t.addr == d.addr))
                .count();
            let removed = current.targets.len() + added - set.len();
            tracing::info!(upstream = %name, source, added, removed, targets = set.len(), "discovery: targets changed");
        }
        if !same_addrs {
            self.restart_health();
        }
        let unix = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let counts = counts(&set);
        self.shared.discovery.succeeded(&name, counts);
        self.shared
            .metrics
            .discovery
            .succeeded(&name, source, unix, counts, !same_readiness);
    }

    fn discovery_failed(&self, upstream: &str, source: &'static str, reason: &str) {
        let kept = self
            .shared
            .snapshot
            .load()
            .upstreams
            .get(upstream)
            .map_or(0, |u| u.targets.len());
        tracing::warn!(
            upstream,
            source,
            reason,
            kept,
            "discovery failed; the last good targets keep serving"
        );
        self.shared.discovery.failed(upstream, reason);
        self.shared.metrics.discovery.failed(upstream, source);
    }

    /// A file event: reload if the content differs from what was applied last.
    async fn file_changed(&mut self) {
        let Some(path) = self.config_path.clone() else {
            return;
        };
        match std::fs::read_to_string(&path) {
            Ok(src) if Some(&src) == self.applied_source.as_ref() => {}
            Ok(_) => {
                self.reload("file").await;
            }
            // Between an editor's delete and its new file, or a ConfigMap swap in progress:
            // the next event brings the file back; until then the running config serves.
            Err(e) => tracing::warn!(
                file = %path.display(),
                err = %e,
                "config file changed but cannot be read; the running config is kept"
            ),
        }
    }

    /// Reads, validates and applies the config file. On any error the running config serves on.
    pub async fn reload(&mut self, source: &'static str) -> ReloadOutcome {
        crate::lifecycle::systemd::reloading();
        // With a fleet, the file's routes and upstreams give way to the fleet's (`fleet/`).
        let candidate = match self.config_path.clone() {
            None => Err(message_only(
                "no config file: gatewise was started without --config, nothing to reload",
            )),
            Some(path) => read(&path).and_then(|(local, src)| {
                let merged = match &self.fleet_doc {
                    Some(doc) => crate::fleet::merge(&local, &doc.config, &doc.source)
                        .map_err(|e| e.into_iter().map(message_error).collect::<Vec<_>>())?,
                    None => local.clone(),
                };
                Ok((merged, local, src))
            }),
        };
        let outcome = match candidate {
            Err(errors) => Err(errors),
            Ok((merged, local, src)) => {
                let applied = self.apply(merged).await;
                if applied.is_ok() {
                    self.applied_source = Some(src);
                    self.local = local;
                }
                applied
            }
        };
        self.report(source, outcome)
    }

    /// Applies a change of the fleet config read from etcd: merged with this instance's file
    /// and applied exactly like a file reload (validated, diffed, swapped; refused as a whole).
    pub async fn fleet_changed(&mut self, update: crate::fleet::FleetUpdate) -> ReloadOutcome {
        crate::lifecycle::systemd::reloading();
        let fleet = self.shared.fleet.clone();
        let (revision, text, source) = match update {
            crate::fleet::FleetUpdate::Config {
                revision,
                text,
                source,
            } => (revision, text, source),
            crate::fleet::FleetUpdate::Absent { revision } => {
                fleet.absent(revision, self.fleet_doc.is_some());
                crate::lifecycle::systemd::notify("READY=1");
                return ReloadOutcome::unavailable("no fleet config in etcd");
            }
        };
        let candidate = text
            .map_err(|e| message_only(&format!("{source}: {e}")))
            .and_then(|text| crate::config::parse(&text, &source).map_err(errors_of))
            .and_then(|config| {
                crate::fleet::merge(&self.local, &config, &source)
                    .map(|merged| (merged, config))
                    .map_err(|e| e.into_iter().map(message_error).collect())
            });
        let outcome = match candidate {
            Err(errors) => Err(errors),
            Ok((merged, config)) => {
                let applied = self.apply(merged).await;
                if applied.is_ok() {
                    self.fleet_doc = Some(crate::fleet::FleetDoc { source, config });
                }
                applied
            }
        };
        let outcome = self.report("fleet", outcome);
        let errors: Vec<String> = outcome.errors.iter().map(describe).collect();
        fleet.applied(revision, outcome.ok, errors);
        outcome
    }

    /// Logs, counts and records (for `/status`) what a reload did.
    fn report(
        &mut self,
        source: &'static str,
        outcome: Result<Diff, Vec<ReloadError>>,
    ) -> ReloadOutcome {
        let generation = self.shared.snapshot.load().generation;
        let unix = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let outcome = match outcome {
            Ok(diff) => {
                tracing::info!(generation, source, changes = %diff, "config reloaded");
                self.shared.metrics.reloads.reloaded("ok", unix);
                self.shared
                    .metrics
                    .reloads
                    .generation
                    .set(generation as i64);
                ReloadOutcome {
                    ok: true,
                    generation,
                    message: format!("generation {generation}: {diff}"),
                    applied: Some(diff),
                    errors: Vec::new(),
                }
            }
            Err(errors) => {
                let lines: Vec<String> = errors.iter().map(describe).collect();
                tracing::warn!(
                    generation,
                    source,
                    errors = %lines.join("; "),
                    "config reload failed; the running config is kept"
                );
                self.shared.metrics.reloads.reloaded("failed", unix);
                ReloadOutcome {
                    ok: false,
                    generation,
                    applied: None,
                    message: format!(
                        "reload failed ({} error{}); generation {generation} still serves",
                        errors.len(),
                        if errors.len() == 1 { "" } else { "s" }
                    ),
                    errors,
                }
            }
        };
        self.shared.reloads.set(LastReload {
            at: SystemTime::now(),
            source,
            ok: outcome.ok,
            message: outcome.message.clone(),
        });
        crate::lifecycle::systemd::notify("READY=1");
        outcome
    }

    /// Applies a validated config: bind what is new, swap, then retire and restart what changed.
    async fn apply(&mut self, config: Config) -> Result<Diff, Vec<ReloadError>> {
        let old = self.shared.snapshot.load_full();
        let diff = Diff::between(&old.config, &config);
        // Bind every new or moved listener before anything changes: a port in use fails the
        // whole reload with the running config untouched.
        let mut bound: Vec<(String, LiveListener)> = Vec::new();
        let mut errors = Vec::new();
        #[allow(clippy::type_complexity)]
        // Certificates of kept TLS listeners, loaded now so a bad file fails the reload.
        let mut new_tls: Vec<(String, Option<Terminator>)> = Vec::new();
        for lc in &config.listeners {
            let kept = self
                .listeners
                .iter()
                .find(|(name, l)| *name == lc.name && l.listen == lc.listen);
            if let Some((_, l)) = kept {
                let old = l.config.load();
                if old.tls.is_some() != lc.tls.is_some() {
                    errors.push(message_error(format!(
                        "listener {}: switching between plain and TLS on the same address needs \
                         a restart (or a new address)",
                        lc.name
                    )));
                } else if old.tls != lc.tls {
                    match terminator(lc, &self.shared.acme) {
                        Ok(t) => new_tls.push((lc.name.clone(), t)),
                        Err(e) => errors.push(message_error(e.to_string())),
                    }
                } else if let Some(t) = l.tls.load_full() {
                    // Same settings: the files are read again all the same (a reload is also how
                    // an operator says "the certificates changed").
                    let store = t.store.clone();
                    let read = tokio::task::spawn_blocking(move || store.reload_if_changed()).await;
                    match read {
                        Ok(Ok(true)) => {
                            tracing::info!(listener = %lc.name, "TLS certificates reloaded")
                        }
                        Ok(Ok(false)) => {}
                        Ok(Err(e)) => {
                            errors.push(message_error(format!("listener {}: {e}", lc.name)))
                        }
                        Err(e) => errors.push(message_error(format!("listener {}: {e}", lc.name))),
                    }
                }
                continue;
            }
            match TcpListener::bind(lc.listen).await {
                Ok(socket) => match self.listener(lc, socket) {
                    Ok(l) => bound.push((lc.name.clone(), l)),
                    Err(e) => errors.push(message_error(format!("listener {}: {e}", lc.name))),
                },
                Err(e) => errors.push(message_error(format!(
                    "listener {}: cannot listen on {}: {e}",
                    lc.name, lc.listen
                ))),
            }
        }
        if !errors.is_empty() {
            // Managers started for certificates of the refused config stop again.
            drop((bound, new_tls));
            self.retain_acme();
            return Err(errors);
        }
        let snapshot = match Snapshot::build(config, Some(&old), &self.shared.metrics) {
            Ok(s) => s,
            Err(e) => {
                drop((bound, new_tls));
                self.retain_acme();
                return Err(vec![message_error(e)]);
            }
        };
        let new_config = snapshot.config.clone();
        self.shared
            .metrics
            .set_upstreams(snapshot.upstreams.values());
        let snapshot = Arc::new(snapshot);
        self.shared.snapshot.store(snapshot.clone());
        // Requests still waiting on a replaced upstream (held, queued) move to its successor.
        for (name, before) in &old.upstreams {
            match snapshot.upstreams.get(name) {
                Some(after) if !Arc::ptr_eq(before, after) => before.succeeded_by(after.clone()),
                _ => {}
            }
        }
        // Listeners: kept ones take their new settings; the rest are replaced or retired.
        let mut next = Vec::with_capacity(new_config.listeners.len());
        for lc in &new_config.listeners {
            let pos = self
                .listeners
                .iter()
                .position(|(name, l)| *name == lc.name && l.listen == lc.listen);
            match pos {
                Some(i) => {
                    let (name, mut l) = self.listeners.remove(i);
                    l.config.store(Arc::new(lc.clone()));
                    use std::sync::atomic::Ordering::Relaxed;
                    l.state.expose_details.store(lc.expose_details, Relaxed);
                    l.state.allow_trace.store(lc.allow_trace, Relaxed);
                    if let Some(pos) = new_tls.iter().position(|(n, _)| *n == name) {
                        let (_, t) = new_tls.remove(pos);
                        l.tls.store(t.map(Arc::new));
                        // A new store: its own watch, started below.
                        l.tls_watch = None;
                    }
                    next.push((name, l));
                }
                None => {
                    if let Some(i) = bound.iter().position(|(name, _)| *name == lc.name) {
                        next.push(bound.remove(i));
                    }
                }
            }
        }
        for (name, l) in self.listeners.drain(..) {
            // Stop listening now rather than when the aborted accept loop is dropped: a client
            // connecting after the reload is refused, never queued on a socket about to close.
            // (Only here: on the drain path the socket may live on in a new process.)
            // SAFETY: shutdown on a descriptor we own; it only changes the socket's state.
            unsafe {
                libc::shutdown(std::os::fd::AsRawFd::as_raw_fd(&l.fd), libc::SHUT_RDWR);
            }
            tracing::info!(listener = %name, addr = %l.bound, "listener retired: no longer accepting; open connections finish");
        }
        self.listeners = next;
        self.start();
        Ok(diff)
    }
}

/// The TLS side of a listener as configured (its files loaded and checked), or `None`: plain.
/// An `acme` certificate is taken from the gateway's (its renewal task started if new).
fn terminator(lc: &ListenerConfig, acme: &crate::acme::Acme) -> anyhow::Result<Option<Terminator>> {
    match &lc.tls {
        None => Ok(None),
        Some(tc) => {
            let side = tc.acme.as_ref().map(|ac| crate::server::tls::AcmeSide {
                managed: acme.managed(ac, tc.reload_interval),
                challenges: acme.challenges.clone(),
            });
            Terminator::with_acme(tc, side)
        }
        .map(Some)
        .map_err(|e| anyhow::anyhow!("listener {}: {e}", lc.name)),
    }
}

/// Reads and validates the config file; the content is kept to tell real changes from events.
fn read(path: &Path) -> Result<(Config, String), Vec<ReloadError>> {
    let src = std::fs::read_to_string(path).map_err(|e| errors_of(ConfigErrors::io(path, e)))?;
    crate::config::parse(&src, &path.display().to_string())
        .map(|c| (c, src))
        .map_err(errors_of)
}

fn errors_of(errors: ConfigErrors) -> Vec<ReloadError> {
    errors
        .0
        .into_iter()
        .map(|e| ReloadError {
            file: e.file,
            line: e.line,
            column: e.column,
            field: e.field,
            message: e.message,
        })
        .collect()
}

fn message_error(message: String) -> ReloadError {
    ReloadError {
        file: String::new(),
        line: 0,
        column: 0,
        field: String::new(),
        message,
    }
}

fn message_only(message: &str) -> Vec<ReloadError> {
    vec![message_error(message.to_string())]
}

/// `file:line:col: field: message`, as `gatewise check` prints it.
fn describe(e: &ReloadError) -> String {
    match (e.line, e.field.is_empty()) {
        (0, _) if e.file.is_empty() => e.message.clone(),
        (0, _) => format!("{}: {}", e.file, e.message),
        (_, true) => format!("{}:{}:{}: {}", e.file, e.line, e.column, e.message),
        (_, false) => format!(
            "{}:{}:{}: {}: {}",
            e.file, e.line, e.column, e.field, e.message
        ),
    }
}

/// Watches the directory holding `path` (not the file: editors and ConfigMaps replace it).
/// Every event is a hint; the content decides whether anything changed.
fn watch(path: &Path, events: mpsc::Sender<()>) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let handler = move |event: notify::Result<notify::Event>| {
        if event.is_ok() {
            // Full means an event is already pending: one is enough.
            let _ = events.try_send(());
        }
    };
    let watcher = notify::recommended_watcher(handler).and_then(|mut w| {
        w.watch(&dir, notify::RecursiveMode::NonRecursive)?;
        Ok(w)
    });
    match watcher {
        Ok(w) => {
            tracing::info!(dir = %dir.display(), "watching the config file's directory for changes");
            Some(w)
        }
        Err(e) => {
            tracing::warn!(dir = %dir.display(), err = %e, "cannot watch the config file; reload with SIGHUP or POST /reload");
            None
        }
    }
}
