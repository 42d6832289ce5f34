//! Fleet (S3): several gatewise instances sharing routes and upstreams through etcd.
//!
//! One key, `PREFIX` + `config`, holds a whole gatewise config file as pushed by
//! `gatewise fleet push` (validated first, written in one transaction with `PREFIX` + `pushed`,
//! who pushed what and when). Each instance watches that key; a change is merged with the
//! instance's own file — the fleet's `[[route]]` and `[upstream.*]` replace the file's, every
//! other setting (listeners, admin, process settings) stays local — and applied through the
//! same validate + diff + swap as a file reload (`gateway/reload.rs`). An invalid change is
//! refused as a whole and reported; the running config serves on. Health state is never shared:
//! each instance checks its targets itself.
//!
//! etcd unreachable: the running config serves on, the status says so, the watch reconnects
//! with backoff and resumes from the last revision seen (or reads the key again if that revision
//! was compacted away). docs/fleet.md has the operator's view.

pub mod etcd;
pub mod push;

use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::config::{Config, FleetConfig};
use etcd::{Etcd, EtcdError, Event};

/// The key holding the fleet config, under `prefix`.
pub fn config_key(prefix: &str) -> String {
    format!("{prefix}config")
}

/// The key recording the last push (JSON: file, host, time), under `prefix`.
pub fn pushed_key(prefix: &str) -> String {
    format!("{prefix}pushed")
}

/// While the watch is up, etcd is asked this often whether it still answers (a watch on a
/// silently dead connection would otherwise wait forever).
const PROBE_INTERVAL: Duration = Duration::from_secs(5);
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// What the watch sends to the reload loop.
#[derive(Debug)]
pub enum FleetUpdate {
    /// The fleet config at `revision` (the key's mod revision), or why its value is no text;
    /// `source` names it in errors.
    Config {
        revision: i64,
        text: Result<String, String>,
        source: String,
    },
    /// The key does not exist (never pushed, or deleted) as of `revision`.
    Absent { revision: i64 },
}

/// The fleet config serving, parsed.
pub struct FleetDoc {
    /// `etcd:KEY`, as errors name it.
    pub source: String,
    pub config: Config,
}

/// The instance's config with the fleet's routes and upstreams in place of its own. Every
/// fleet route must name a listener this instance has.
pub fn merge(local: &Config, fleet: &Config, source: &str) -> Result<Config, Vec<String>> {
    let names: Vec<&str> = local.listeners.iter().map(|l| l.name.as_str()).collect();
    let errors: Vec<String> = fleet
        .routes
        .iter()
        .filter(|r| !names.contains(&r.listener.as_str()))
        .map(|r| {
            format!(
                "{source}: route {}: listener {:?} is not a listener of this instance (its \
                 listeners: {})",
                r.name,
                r.listener,
                names.join(", ")
            )
        })
        .collect();
    if !errors.is_empty() {
        return Err(errors);
    }
    let mut merged = local.clone();
    merged.routes = fleet.routes.clone();
    merged.upstreams = fleet.upstreams.clone();
    Ok(merged)
}

/// The fleet as `/status`, `/ready` and `/metrics` see it.
pub struct FleetStatus {
    state: Mutex<Option<FleetState>>,
    pub metrics: FleetMetrics,
}

/// `/status` → `fleet`.
#[derive(Debug, Clone, Serialize)]
pub struct FleetState {
    pub etcd: Vec<String>,
    pub key: String,
    /// The watch is established.
    pub connected: bool,
    /// Why etcd cannot be reached (while not connected).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When `connected` last changed.
    #[serde(serialize_with = "rfc3339_opt")]
    pub since: Option<SystemTime>,
    /// The key was read at least once since start (until then the instance is not ready).
    pub read: bool,
    /// Mod revision of the fleet config serving; `None`: the file's own routes serve.
    pub revision: Option<i64>,
    /// The key is missing in etcd (never pushed, or deleted): the running config is kept.
    pub missing: bool,
    /// Times the key was read whole: once at start, then after a compaction took the history
    /// a reconnecting watch needed (other reconnects resume from the last revision seen).
    pub reads: u64,
    /// The last change refused, with its errors; cleared when a later one applies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<Refused>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Refused {
    pub revision: i64,
    pub errors: Vec<String>,
}

fn rfc3339_opt<S: serde::Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.collect_str(&humantime::format_rfc3339_millis(*t)),
        None => s.serialize_none(),
    }
}

/// `gatewise_fleet_*` (docs/metrics.md).
#[derive(Default, Clone)]
pub struct FleetMetrics {
    pub connected: Gauge,
    pub revision: Gauge,
    pub updates: Family<ResultLabel, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct ResultLabel {
    result: &'static str,
}

impl FleetMetrics {
    fn count(&self, result: &'static str) {
        self.updates.get_or_create(&ResultLabel { result }).inc();
    }

    /// Creates both results, so they show as 0 before the first update.
    pub fn init(&self) {
        for result in ["applied", "refused"] {
            self.updates.get_or_create_owned(&ResultLabel { result });
        }
    }
}

impl FleetStatus {
    pub fn new(fleet: Option<&FleetConfig>) -> FleetStatus {
        let state = fleet.map(|f| FleetState {
            etcd: f.etcd.clone(),
            key: config_key(&f.prefix),
            connected: false,
            error: None,
            since: None,
            read: false,
            revision: None,
            missing: false,
            reads: 0,
            refused: None,
        });
        FleetStatus {
            state: Mutex::new(state),
            metrics: FleetMetrics::default(),
        }
    }

    /// `None` without `[fleet]`.
    pub fn state(&self) -> Option<FleetState> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<FleetState>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn update(&self, f: impl FnOnce(&mut FleetState)) {
        if let Some(state) = self.lock().as_mut() {
            f(state);
        }
    }

    /// Why `/ready` should say 503: the fleet config has not been read yet.
    pub fn not_ready(&self) -> Option<String> {
        let state = self.lock();
        let state = state.as_ref()?;
        (!state.read).then(|| match &state.error {
            Some(e) => format!("fleet: the fleet config was never read from etcd ({e})"),
            None => "fleet: waiting for the first read of the fleet config from etcd".to_string(),
        })
    }

    fn connected(&self) {
        self.metrics.connected.set(1);
        self.update(|s| {
            if !s.connected {
                s.since = Some(SystemTime::now());
            }
            s.connected = true;
            s.error = None;
        });
    }

    /// Returns whether this is news (connected before, or a different error).
    fn disconnected(&self, error: &EtcdError) -> bool {
        self.metrics.connected.set(0);
        let mut news = false;
        let message = error.to_string();
        self.update(|s| {
            news = s.connected || s.since.is_none();
            if s.connected || s.since.is_none() {
                s.since = Some(SystemTime::now());
            }
            s.connected = false;
            s.error = Some(message);
        });
        news
    }

    /// The reload loop applied (`ok`) or refused the fleet config at `revision`.
    pub fn applied(&self, revision: i64, ok: bool, errors: Vec<String>) {
        self.metrics.count(if ok { "applied" } else { "refused" });
        if ok {
            self.metrics.revision.set(revision);
        }
        self.update(|s| {
            s.read = true;
            s.missing = false;
            if ok {
                s.revision = Some(revision);
                s.refused = None;
            } else {
                s.refused = Some(Refused { revision, errors });
            }
        });
    }

    /// The key is missing; `serving` says a fleet config read earlier still serves.
    pub fn absent(&self, revision: i64, serving: bool) {
        let key = self
            .lock()
            .as_ref()
            .map(|s| s.key.clone())
            .unwrap_or_default();
        if serving {
            tracing::warn!(key = %key, revision, "the fleet config was deleted from etcd; the running config is kept");
        } else {
            tracing::warn!(key = %key, "no fleet config in etcd yet (push one with `gatewise fleet push`); the file's routes serve");
        }
        self.update(|s| {
            s.read = true;
            s.missing = true;
        });
    }
}

/// Watches the fleet config key forever, sending every change to the reload loop; reconnects
/// with backoff. The first thing sent after start is the key as read.
pub async fn watch(
    fleet: FleetConfig,
    status: std::sync::Arc<FleetStatus>,
    tx: mpsc::Sender<FleetUpdate>,
) {
    let etcd = Etcd::new(fleet.etcd.clone());
    let key = config_key(&fleet.prefix);
    let source = format!("etcd:{key}");
    let mut watcher = Watcher {
        etcd,
        key,
        source,
        status,
        tx,
        next_revision: None,
        sent_revision: None,
        established: false,
    };
    let mut backoff = BACKOFF_FIRST;
    loop {
        match watcher.session().await {
            // The channel closed: the gateway is shutting down.
            Ok(Stop::Closed) => return,
            Ok(Stop::Compacted) => continue,
            Err(e) => {
                // A watch that was up before it failed starts the backoff over.
                if std::mem::take(&mut watcher.established) {
                    backoff = BACKOFF_FIRST;
                }
                if watcher.status.disconnected(&e) {
                    tracing::warn!(err = %e, key = %watcher.key, "fleet: etcd unreachable; the running config serves on, retrying");
                } else {
                    tracing::debug!(err = %e, "fleet: etcd still unreachable");
                }
            }
        }
        // Jitter, so a fleet does not reconnect in step.
        let wait = backoff.mul_f64(0.5 + fastrand::f64() / 2.0);
        tokio::time::sleep(wait).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

enum Stop {
    /// The update channel closed.
    Closed,
    /// The watch's start revision was compacted (or the store's history went back): read the
    /// key again at once.
    Compacted,
}

struct Watcher {
    etcd: Etcd,
    key: String,
    source: String,
    status: std::sync::Arc<FleetStatus>,
    tx: mpsc::Sender<FleetUpdate>,
    /// Where the next watch starts: one past the last revision seen. `None`: read the key.
    next_revision: Option<i64>,
    /// The mod revision last sent (so a re-read that finds no change sends nothing).
    sent_revision: Option<i64>,
    /// A watch was established since the last failure.
    established: bool,
}

impl Watcher {
    /// Reads the key if needed, then watches it until the watch ends.
    async fn session(&mut self) -> Result<Stop, EtcdError> {
        let start = match self.next_revision {
            Some(r) => r,
            None => {
                let (revision, kv) = self.etcd.get(&self.key).await?;
                self.status.update(|s| s.reads += 1);
                let (mod_revision, update) = match kv {
                    Some(kv) => (
                        kv.mod_revision,
                        self.update(kv.mod_revision, Some(&kv.value)),
                    ),
                    None => (0, self.update(revision, None)),
                };
                self.status.connected();
                if self.sent_revision != Some(mod_revision) {
                    self.sent_revision = Some(mod_revision);
                    if self.tx.send(update).await.is_err() {
                        return Ok(Stop::Closed);
                    }
                }
                revision + 1
            }
        };
        let mut stream = self.etcd.watch(&self.key, start).await?;
        self.next_revision = Some(start);
        let mut probe = tokio::time::interval(PROBE_INTERVAL);
        probe.reset();
        loop {
            let message = tokio::select! {
                m = stream.next() => m?,
                _ = probe.tick() => {
                    self.etcd.get(&self.key).await?;
                    continue;
                }
            };
            let Some(message) = message else {
                return Err(EtcdError::Unreachable("etcd ended the watch".into()));
            };
            if message.canceled {
                if message.compact_revision > 0 {
                    tracing::info!(
                        from = start,
                        compacted_to = message.compact_revision,
                        "fleet: the revisions missed were compacted; reading the fleet config again"
                    );
                    self.next_revision = None;
                    return Ok(Stop::Compacted);
                }
                return Err(EtcdError::Refused(format!(
                    "etcd canceled the watch: {}",
                    message.cancel_reason
                )));
            }
            if message.created && message.revision < start - 1 {
                // The store is behind what this instance saw: a new cluster, or one restored
                // from a backup. Revisions no longer mean what they did; read the key again.
                tracing::warn!(
                    seen = start - 1,
                    now = message.revision,
                    "fleet: etcd's revision went back (new or restored cluster); reading the fleet config again"
                );
                self.next_revision = None;
                self.sent_revision = None;
                return Ok(Stop::Compacted);
            }
            if message.created {
                self.established = true;
                self.status.connected();
                tracing::info!(key = %self.key, from = start, "fleet: watching the fleet config in etcd");
            }
            // Only the newest change of a batch matters: each one is a whole config.
            let Some(last) = message.events.last() else {
                continue;
            };
            let (revision, update) = match last {
                Event::Put(kv) => (
                    kv.mod_revision,
                    self.update(kv.mod_revision, Some(&kv.value)),
                ),
                Event::Delete { mod_revision, .. } => {
                    (*mod_revision, self.update(*mod_revision, None))
                }
            };
            self.next_revision = Some(revision + 1);
            self.sent_revision = Some(revision);
            if self.tx.send(update).await.is_err() {
                return Ok(Stop::Closed);
            }
        }
    }

    /// What the key's value at `revision` (`None`: the key is gone) means for the reload loop.
    fn update(&self, revision: i64, value: Option<&[u8]>) -> FleetUpdate {
        match value {
            None => FleetUpdate::Absent { revision },
            Some(value) => FleetUpdate::Config {
                revision,
                // Not UTF-8 is refused, never repaired: a replaced byte could change a value.
                text: String::from_utf8(value.to_vec())
                    .map_err(|e| format!("the value is not UTF-8 text: {e}")),
                source: self.source.clone(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(src: &str) -> Config {
        crate::config::parse(src, "t.toml").expect("valid")
    }

    const LOCAL: &str = "[admin]\nlisten = \"127.0.0.1:9999\"\n\
        [[listener]]\nname = \"public\"\nlisten = \"0.0.0.0:8080\"\n\
        [[route]]\nupstream = \"boot\"\n[upstream.boot]\ntargets = [\"127.0.0.1:1\"]\n\
        [fleet]\n";

    #[test]
    fn the_fleet_replaces_routes_and_upstreams_and_nothing_else() {
        let local = parse(LOCAL);
        let fleet = parse(
            "[admin]\nlisten = \"off\"\n[[listener]]\nname = \"public\"\nlisten = \"127.0.0.1:1\"\n\
             [[route]]\nname = \"api\"\nupstream = \"api\"\n[upstream.api]\ntargets = [\"127.0.0.1:2\"]\n",
        );
        let merged = merge(&local, &fleet, "etcd:/g/config").unwrap();
        assert_eq!(merged.listeners, local.listeners);
        assert_eq!(merged.admin, local.admin);
        assert_eq!(merged.fleet, local.fleet);
        assert_eq!(merged.routes, fleet.routes);
        assert_eq!(
            merged.upstreams.keys().collect::<Vec<_>>(),
            ["api"],
            "the file's own upstreams give way"
        );
    }

    #[test]
    fn a_route_on_a_listener_this_instance_lacks_is_refused() {
        let fleet = parse(
            "[[listener]]\nname = \"internal\"\nlisten = \"127.0.0.1:1\"\n\
             [[route]]\nname = \"api\"\nupstream = \"api\"\n[upstream.api]\ntargets = [\"127.0.0.1:2\"]\n",
        );
        let errors = merge(&parse(LOCAL), &fleet, "etcd:/g/config").unwrap_err();
        assert_eq!(
            errors,
            ["etcd:/g/config: route api: listener \"internal\" is not a listener of this instance \
              (its listeners: public)"]
        );
    }

    #[test]
    fn not_ready_until_the_fleet_config_was_read() {
        let status = FleetStatus::new(parse(LOCAL).fleet.as_ref());
        assert!(status
            .not_ready()
            .unwrap()
            .contains("waiting for the first read"));
        status.disconnected(&EtcdError::Unreachable("refused".into()));
        assert!(status.not_ready().unwrap().contains("never read"));
        status.absent(5, false);
        assert_eq!(status.not_ready(), None);
        assert!(FleetStatus::new(None).not_ready().is_none());
    }
}
