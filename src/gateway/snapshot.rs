//! The configuration serving now, as one value: routes by name, route tables by listener,
//! upstreams by name. Requests load it once (`ArcSwap`); a reload builds the next one from the
//! previous, keeping what did not change by identity — an upstream whose config is equal is the
//! same `Arc<Upstream>` (pools, health, ejections, counters), a changed one keeps the targets
//! whose address is still listed, and a route with the same name, config and upstream keeps its
//! retry budget.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::config::{Config, Discovery, UpstreamConfig};
use crate::observe::metrics::Metrics;
use crate::proxy::forward::Route;
use crate::proxy::retry::RetryBudget;
use crate::routing::RouteTable;
use crate::upstream::Upstream;

/// One generation of the gateway's configuration, ready to serve.
pub struct Snapshot {
    /// 1 at start, +1 for every applied reload.
    pub generation: u64,
    pub config: Arc<Config>,
    pub upstreams: BTreeMap<String, Arc<Upstream>>,
    /// Every route, in config order.
    pub routes: Vec<Arc<Route>>,
    /// Route tables by listener name.
    tables: HashMap<String, RouteTable<Arc<Route>>>,
}

impl Snapshot {
    /// Builds the snapshot for `config`. With `previous`, unchanged upstreams and routes are
    /// carried over by identity (see the module doc).
    /// Fails only when an upstream's TLS files cannot be loaded (they may have changed since
    /// validation read them).
    pub fn build(
        config: Config,
        previous: Option<&Snapshot>,
        metrics: &Metrics,
    ) -> Result<Snapshot, String> {
        let generation = previous.map_or(1, |p| p.generation + 1);
        Self::build_with(config, previous, metrics, None, generation)
    }

    /// The same snapshot with the targets of `upstream` (which has a discovery source) replaced
    /// by `targets` — the keyed update of a reload: targets still listed keep their pools and
    /// health, requests waiting move over. The config generation does not change.
    pub fn with_discovered(
        &self,
        upstream: &str,
        targets: Vec<String>,
        metrics: &Metrics,
    ) -> Result<Snapshot, String> {
        let config = (*self.config).clone();
        Self::build_with(
            config,
            Some(self),
            metrics,
            Some((upstream, targets)),
            self.generation,
        )
    }

    fn build_with(
        config: Config,
        previous: Option<&Snapshot>,
        metrics: &Metrics,
        discovered: Option<(&str, Vec<String>)>,
        generation: u64,
    ) -> Result<Snapshot, String> {
        let mut upstreams: BTreeMap<String, Arc<Upstream>> = BTreeMap::new();
        let mut discovered = discovered;
        for (name, cfg) in &config.upstreams {
            let old = previous.and_then(|p| p.upstreams.get(name));
            let cfg = match effective_config(name, cfg, previous, &mut discovered) {
                Some(effective) => std::borrow::Cow::Owned(effective),
                None => std::borrow::Cow::Borrowed(cfg),
            };
            let upstream = match old {
                Some(old) if old.config == *cfg => old.clone(),
                Some(old) => Arc::new(old.rebuild(cfg.into_owned())?),
                None => Arc::new(Upstream::try_new(name, cfg.into_owned())?),
            };
            upstreams.insert(name.clone(), upstream);
        }
        let mut routes = Vec::with_capacity(config.routes.len());
        let mut tables: HashMap<String, Vec<_>> = HashMap::new();
        for rc in &config.routes {
            // Validation guarantees the upstream exists.
            let Some(upstream) = upstreams.get(&rc.upstream) else {
                continue;
            };
            let old = previous.and_then(|p| p.routes.iter().find(|r| *r.name == *rc.name));
            let route = match old {
                Some(old) if old.config == *rc && Arc::ptr_eq(&old.upstream, upstream) => {
                    old.clone()
                }
                _ => {
                    let name: Arc<str> = Arc::from(rc.name.as_str());
                    Arc::new(Route {
                        metrics: metrics.route_after(&name, upstream, old.map(|o| &*o.metrics)),
                        name,
                        budget: RetryBudget::for_route(rc, tokio::time::Instant::now()),
                        config: rc.clone(),
                        upstream: upstream.clone(),
                    })
                }
            };
            tables.entry(rc.listener.clone()).or_default().push((
                rc.host.clone(),
                rc.path_prefix.clone(),
                route.clone(),
            ));
            routes.push(route);
        }
        Ok(Snapshot {
            generation,
            config: Arc::new(config),
            upstreams,
            routes,
            tables: tables
                .into_iter()
                .map(|(listener, entries)| (listener, RouteTable::new(entries)))
                .collect(),
        })
    }

    /// The route of listener `listener` for `host` and `path`.
    pub fn route(&self, listener: &str, host: &str, path: &str) -> Option<&Arc<Route>> {
        self.tables.get(listener)?.find(host, path)
    }

    /// Whether the config has this listener (routes are kept per listener).
    pub fn has_listener(&self, listener: &str) -> bool {
        self.config.listeners.iter().any(|l| l.name == listener)
    }

    /// `None` when every route has a target that can take traffic; otherwise why not.
    pub fn not_ready(&self) -> Option<String> {
        self.routes
            .iter()
            .find(|r| !r.upstream.has_routable_target())
            .map(|r| {
                let never = if r.upstream.never_healthy() {
                    " (it has never been healthy since start)"
                } else {
                    ""
                };
                format!(
                    "route {} has no healthy target in {}{never}",
                    r.name, r.upstream.name
                )
            })
    }
}

/// The config an upstream with a discovery source runs with: the file's, with `targets` the
/// discovered set — the one being applied (`discovered`), else the one serving now when the
/// source and its input are unchanged, else none yet (requests wait in the outage hold until
/// the source's first answer). `None` for a static upstream: the file's config as is.
fn effective_config(
    name: &str,
    cfg: &UpstreamConfig,
    previous: Option<&Snapshot>,
    discovered: &mut Option<(&str, Vec<String>)>,
) -> Option<UpstreamConfig> {
    if cfg.discovery == Discovery::Static {
        return None;
    }
    let targets = match discovered.take() {
        Some((upstream, targets)) if upstream == name => targets,
        other => {
            *discovered = other;
            previous
                .and_then(|p| {
                    let before = p.config.upstreams.get(name)?;
                    let serving = p.upstreams.get(name)?;
                    crate::discovery::same_source(before, cfg)
                        .then(|| serving.config.targets.clone())
                })
                .unwrap_or_default()
        }
    };
    let mut effective = cfg.clone();
    effective.targets = targets;
    Some(effective)
}
