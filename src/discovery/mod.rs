//! Discovery: where an upstream's targets come from when they change under the proxy.
//!
//! A [`Source`] runs for one upstream and sends the FULL current set of targets ([`Report`])
//! whenever it changes, each with its readiness ([`Readiness::Ready`], or
//! [`Readiness::Draining`]: in-flight requests finish, no new ones unless nothing else can
//! serve). Sources know nothing about pools or health: every report goes through the one apply
//! path the file reload also uses (`gateway/reload.rs`, one task, so the two never race), which
//! builds the upstream again keyed by address — a target still listed keeps its `Arc<Target>`
//! (pool, health, ejection, counters), waiters move to the new upstream — and swaps the snapshot.
//! No request waits on any of it.
//!
//! A source that cannot tell sends [`Report::Failed`]; an empty set counts as a failure too.
//! Either way the last good set keeps serving, and the failure is logged, shown in `/status`
//! ([`DiscoveryStatus`]) and counted (`gatewise_discovery_errors_total`). A pool is never emptied
//! by discovery.
//!
//! Sources: [`dns`] (`discovery = "dns"`), [`kubernetes`] (`discovery = { kubernetes = {...} }`).
//! The static `targets` list is no source at all.

pub mod dns;
pub mod dns_wire;
pub mod kubernetes;
pub mod resolver;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::SystemTime;

use serde::Serialize;
use tokio::sync::mpsc;

use crate::config::{Config, Discovery, UpstreamConfig};

/// Whether a discovered target takes new requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    /// Terminating: requests in flight finish; no new ones unless nothing else can serve.
    Draining,
}

/// One target a source found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovered {
    /// `"host:port"` or `"ip:port"` (`"[v6]:port"`), as a target string.
    pub addr: String,
    pub readiness: Readiness,
}

/// What a source says.
#[derive(Debug, Clone)]
pub enum Report {
    /// The full current set.
    Targets(Vec<Discovered>),
    /// The source cannot tell now (why); the last good set keeps serving.
    Failed(String),
}

/// A discovery source: runs until `tx` is closed, sending the FULL current set whenever it
/// changes, or Failed(reason) when it cannot tell (the last good set is kept).
pub trait Source: Send + 'static {
    fn run(self: Box<Self>, tx: mpsc::Sender<Report>) -> Pin<Box<dyn Future<Output = ()> + Send>>;
}

/// The source an upstream's config asks for; `None` for the static list.
pub fn source_for(upstream: &str, config: &UpstreamConfig) -> Option<Box<dyn Source>> {
    match &config.discovery {
        Discovery::Static => None,
        Discovery::Dns(dns) => Some(Box::new(dns::DnsSource::new(
            upstream,
            config.targets.clone(),
            dns.clone(),
        ))),
        Discovery::Kubernetes(k8s) => Some(Box::new(kubernetes::Kubernetes {
            settings: k8s.clone(),
            upstream: upstream.to_string(),
        })),
    }
}

/// Whether `a` and `b` (file configs of one upstream) ask for the same source with the same
/// input: then a reload keeps the discovered targets and the running source.
pub fn same_source(a: &UpstreamConfig, b: &UpstreamConfig) -> bool {
    a.discovery == b.discovery && a.targets == b.targets
}

/// A report, sorted and without duplicate addresses (a target listed twice is ready if either
/// says so). Sorted, so a source answering the same set in another order changes nothing.
pub fn normalize(mut set: Vec<Discovered>) -> Vec<Discovered> {
    set.sort_by(|a, b| a.addr.cmp(&b.addr).then(ready_first(a, b)));
    set.dedup_by(|later, first| later.addr == first.addr);
    set
}

fn ready_first(a: &Discovered, b: &Discovered) -> std::cmp::Ordering {
    let rank = |d: &Discovered| matches!(d.readiness, Readiness::Draining) as u8;
    rank(a).cmp(&rank(b))
}

/// A report from the source of `upstream`, tagged so a report from a source a reload replaced
/// is ignored.
pub struct Update {
    pub upstream: String,
    pub source_id: u64,
    pub report: Report,
}

/// Makes a source for an upstream (again after a reload that restarts it).
pub type SourceFactory = std::sync::Arc<dyn Fn() -> Box<dyn Source> + Send + Sync>;

struct Running {
    /// The file config it was started for.
    config: UpstreamConfig,
    id: u64,
    _task: crate::gateway::AbortOnDrop,
}

/// The running sources, one per upstream with a discovery source; reconciled with the config
/// at start and after every reload.
pub struct Sources {
    tx: mpsc::Sender<Update>,
    rx: Option<mpsc::Receiver<Update>>,
    running: BTreeMap<String, Running>,
    next_id: u64,
    /// Sources given in code instead of the one the config names (tests, embedding).
    overrides: BTreeMap<String, SourceFactory>,
}

impl Default for Sources {
    fn default() -> Self {
        let (tx, rx) = mpsc::channel(64);
        Sources {
            tx,
            rx: Some(rx),
            running: BTreeMap::new(),
            next_id: 1,
            overrides: BTreeMap::new(),
        }
    }
}

impl Sources {
    /// The reports of every source, for the apply loop (once).
    pub fn take_reports(&mut self) -> Option<mpsc::Receiver<Update>> {
        self.rx.take()
    }

    /// Upstream `name`, when its config sets `discovery`, runs the sources `factory` makes
    /// instead of the one the config names.
    pub fn set_override(&mut self, name: &str, factory: SourceFactory) {
        self.overrides.insert(name.to_string(), factory);
    }

    /// Starts a source for every upstream of `config` that has one and is not running with the
    /// same input; stops the others. Returns the upstreams whose source (re)started.
    pub fn reconcile(&mut self, config: &Config, status: &DiscoveryStatus) -> Vec<String> {
        self.running.retain(|name, r| {
            config
                .upstreams
                .get(name)
                .is_some_and(|c| same_source(&r.config, c))
        });
        status.retain(|name| self.running.contains_key(name));
        let mut started = Vec::new();
        for (name, cfg) in &config.upstreams {
            if self.running.contains_key(name) {
                continue;
            }
            let source = match self.overrides.get(name) {
                Some(make) if cfg.discovery != Discovery::Static => Some(make()),
                _ => source_for(name, cfg),
            };
            let Some(source) = source else {
                continue;
            };
            let id = self.next_id;
            self.next_id += 1;
            let (tx, mut rx) = mpsc::channel::<Report>(4);
            let out = self.tx.clone();
            let upstream = name.clone();
            let task = tokio::spawn(async move {
                let run = crate::gateway::AbortOnDrop(tokio::spawn(source.run(tx)));
                while let Some(report) = rx.recv().await {
                    let update = Update {
                        upstream: upstream.clone(),
                        source_id: id,
                        report,
                    };
                    if out.send(update).await.is_err() {
                        break;
                    }
                }
                drop(run);
            });
            tracing::info!(upstream = %name, source = cfg.discovery.source_name(), targets = ?cfg.targets, "discovery started");
            status.started(name, cfg.discovery.source_name());
            self.running.insert(
                name.clone(),
                Running {
                    config: cfg.clone(),
                    id,
                    _task: crate::gateway::AbortOnDrop(task),
                },
            );
            started.push(name.clone());
        }
        started
    }

    /// Whether `update` comes from the source running now for its upstream.
    pub fn is_current(&self, update: &Update) -> bool {
        self.running
            .get(&update.upstream)
            .is_some_and(|r| r.id == update.source_id)
    }

    /// The source name of a running upstream's discovery (`dns`, ...).
    pub fn source_name(&self, upstream: &str) -> &'static str {
        self.running
            .get(upstream)
            .map_or("static", |r| r.config.discovery.source_name())
    }
}

/// Per upstream with a discovery source: what it last said, for `/status`.
#[derive(Default)]
pub struct DiscoveryStatus(Mutex<BTreeMap<String, SourceStatus>>);

#[derive(Debug, Clone, Serialize)]
pub struct SourceStatus {
    pub source: &'static str,
    /// The last usable answer (`null` before the first).
    #[serde(serialize_with = "rfc3339_opt")]
    pub last_success: Option<SystemTime>,
    /// Targets from the last usable answer, by readiness.
    pub ready: usize,
    pub draining: usize,
    /// Failures since start (the last good set kept serving through each).
    pub errors: u64,
    /// The latest failure, if the source has failed since its last usable answer.
    pub failing: Option<SourceFailure>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SourceFailure {
    #[serde(serialize_with = "rfc3339")]
    pub since: SystemTime,
    #[serde(serialize_with = "rfc3339")]
    pub at: SystemTime,
    pub reason: String,
}

fn rfc3339<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_millis(*t))
}

fn rfc3339_opt<S: serde::Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => rfc3339(t, s),
        None => s.serialize_none(),
    }
}

impl DiscoveryStatus {
    fn with<R>(&self, f: impl FnOnce(&mut BTreeMap<String, SourceStatus>) -> R) -> R {
        f(&mut self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn all(&self) -> BTreeMap<String, SourceStatus> {
        self.with(|m| m.clone())
    }

    pub fn get(&self, upstream: &str) -> Option<SourceStatus> {
        self.with(|m| m.get(upstream).cloned())
    }

    fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.with(|m| m.retain(|k, _| keep(k)));
    }

    fn started(&self, upstream: &str, source: &'static str) {
        self.with(|m| {
            m.insert(
                upstream.to_string(),
                SourceStatus {
                    source,
                    last_success: None,
                    ready: 0,
                    draining: 0,
                    errors: 0,
                    failing: None,
                },
            )
        });
    }

    pub fn failed(&self, upstream: &str, reason: &str) {
        let now = SystemTime::now();
        self.with(|m| {
            if let Some(s) = m.get_mut(upstream) {
                s.errors += 1;
                let since = s.failing.as_ref().map_or(now, |f| f.since);
                s.failing = Some(SourceFailure {
                    since,
                    at: now,
                    reason: reason.to_string(),
                });
            }
        });
    }

    pub fn succeeded(&self, upstream: &str, (ready, draining): (usize, usize)) {
        self.with(|m| {
            if let Some(s) = m.get_mut(upstream) {
                s.last_success = Some(SystemTime::now());
                s.ready = ready;
                s.draining = draining;
                s.failing = None;
            }
        });
    }
}

/// Ready and draining targets in a set.
pub fn counts(set: &[Discovered]) -> (usize, usize) {
    let draining = set
        .iter()
        .filter(|d| d.readiness == Readiness::Draining)
        .count();
    (set.len() - draining, draining)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn d(addr: &str, readiness: Readiness) -> Discovered {
        Discovered {
            addr: addr.to_string(),
            readiness,
        }
    }

    #[test]
    fn normalize_sorts_and_prefers_ready_duplicates() {
        let set = normalize(vec![
            d("10.0.0.2:80", Readiness::Ready),
            d("10.0.0.1:80", Readiness::Draining),
            d("10.0.0.1:80", Readiness::Ready),
        ]);
        assert_eq!(
            set,
            vec![
                d("10.0.0.1:80", Readiness::Ready),
                d("10.0.0.2:80", Readiness::Ready)
            ]
        );
        assert_eq!(counts(&set), (2, 0));
    }

    fn dns_config(names: &[&str]) -> Config {
        let mut c = Config::quick(
            "127.0.0.1:0".parse().unwrap(),
            names.iter().map(|n| n.to_string()).collect(),
        );
        let up = c.upstreams.values_mut().next().unwrap();
        up.discovery = Discovery::Dns(crate::config::DnsDiscovery {
            interval: std::time::Duration::from_secs(5),
            nameserver: None,
        });
        c
    }

    #[tokio::test]
    async fn a_discovered_change_keeps_targets_by_address_and_a_reload_keeps_the_set() {
        use crate::gateway::Snapshot;
        use crate::observe::metrics::Metrics;
        let metrics = Metrics::new(std::iter::empty());
        let config = dns_config(&["app.internal:8080"]);
        let first = Snapshot::build(config.clone(), None, &metrics).unwrap();
        // No answer yet: no targets (requests wait in the outage hold), not the names.
        assert!(first.upstreams["default"].targets.is_empty());
        let addrs = |s: &Snapshot| -> Vec<String> {
            s.upstreams["default"]
                .targets
                .iter()
                .map(|t| t.addr.to_string())
                .collect()
        };
        let two = vec!["10.0.0.1:8080".to_string(), "10.0.0.2:8080".to_string()];
        let second = first
            .with_discovered("default", two.clone(), &metrics)
            .unwrap();
        assert_eq!(addrs(&second), two);
        assert_eq!(
            second.generation, first.generation,
            "discovery is not a config generation"
        );
        let kept = second.upstreams["default"].targets[1].clone();
        let three = vec!["10.0.0.2:8080".to_string(), "10.0.0.3:8080".to_string()];
        let third = second
            .with_discovered("default", three.clone(), &metrics)
            .unwrap();
        assert_eq!(addrs(&third), three);
        assert!(Arc::ptr_eq(&third.upstreams["default"].targets[0], &kept));
        // A reload with the same source keeps the discovered set (and the targets)...
        let mut reloaded = config.clone();
        reloaded.routes[0].retries = 5;
        let fourth = Snapshot::build(reloaded.clone(), Some(&third), &metrics).unwrap();
        assert_eq!(addrs(&fourth), three);
        assert!(Arc::ptr_eq(
            &fourth.upstreams["default"],
            &third.upstreams["default"]
        ));
        // ...and one that changes the names starts over from nothing.
        let mut renamed = reloaded;
        renamed.upstreams.get_mut("default").unwrap().targets = vec!["other.internal:80".into()];
        let fifth = Snapshot::build(renamed, Some(&fourth), &metrics).unwrap();
        assert!(addrs(&fifth).is_empty());
    }
}
