//! Prometheus metrics: every name in [`names`], documented in `docs/metrics.md`.
//!
//! Hot-path cost is the design constraint. Label sets are resolved once: at gateway build time
//! each route gets a [`RouteMetrics`] holding its own counter handles (retries and stops by
//! reason, its latency histogram), and request/attempt counters whose label includes a status
//! code are created on first use into a per-route or per-target slot table. Counting a request
//! or an attempt is then an atomic load plus an atomic add — no hashing, no allocation, no lock.
//! Only error requests (a cause other than `none`) go through a family lookup.
//! Upstream gauges and health counters are read at scrape time (see [`upstream`]).

mod acme;
pub mod discovery;
mod histogram;
pub mod names;
mod route;
#[cfg(test)]
mod tests;
mod tls;
pub mod upstream;

use std::borrow::Cow;
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

pub use histogram::{LatencyHistogram, BUCKETS};
pub use route::{RouteMetrics, TargetAttempts, UpstreamMetrics};
pub use tls::CertificateList;
pub use upstream::{QueueReject, TargetCounters, UpstreamCounters};

use crate::upstream::Upstream;

/// The `Content-Type` of the `/metrics` response (OpenMetrics text; Prometheus reads it).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The `cause` label of a request that ended without a gatewise-generated error.
pub const NO_CAUSE: &str = "none";

/// The `route` label of a request rejected before a route matched (bad request, no route).
pub const UNROUTED: &str = "";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: Arc<str>,
    status: u16,
    cause: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    route: Arc<str>,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TunnelLabels {
    route: Arc<str>,
    closed_by: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProtocolLabels {
    route: Arc<str>,
    client: &'static str,
    upstream: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GrpcLabels {
    route: Arc<str>,
    grpc_status: u32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnectionLabels {
    listener: String,
    protocol: &'static str,
}

/// One listener's client-connection counters, by the protocol the client chose: resolved when
/// the listener is built, so a connection costs one atomic increment.
#[derive(Clone)]
pub struct ClientConnections {
    pub h1: Counter,
    pub h2: Counter,
    /// Request heads begun and not completed in time (answered 408).
    pub header_timeouts: Counter,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AttemptLabels {
    upstream: Arc<str>,
    target: Arc<str>,
    outcome: Cow<'static, str>,
}

/// The metric families, shared by every route's handles.
#[derive(Default)]
struct Families {
    requests: Family<RequestLabels, Counter>,
    duration: Family<RouteLabels, LatencyHistogram>,
    attempts: Family<AttemptLabels, Counter>,
    retries: Family<ReasonLabels, Counter>,
    retry_stops: Family<ReasonLabels, Counter>,
    budget_exhausted: Family<RouteLabels, Counter>,
    tunnels_open: Family<RouteLabels, Gauge>,
    tunnels: Family<TunnelLabels, Counter>,
    client_connections: Family<ConnectionLabels, Counter>,
    client_header_timeouts: Family<ListenerLabels, Counter>,
    protocols: Family<ProtocolLabels, Counter>,
    grpc: Family<GrpcLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    listener: String,
}

/// The gateway's registry, and what route handles are built from.
pub struct Metrics {
    registry: Registry,
    families: Arc<Families>,
    /// The upstreams scraped for gauges; replaced by a reload.
    upstreams: upstream::UpstreamList,
    /// Reloads and the config generation.
    pub reloads: ReloadMetrics,
    /// Discovery sources: errors, updates, last success.
    pub discovery: discovery::DiscoveryMetrics,
}

/// Config reloads: how many by result, the generation serving, when the last one happened.
#[derive(Default)]
pub struct ReloadMetrics {
    results: Family<ResultLabels, Counter>,
    pub generation: prometheus_client::metrics::gauge::Gauge,
    pub last_reload: prometheus_client::metrics::gauge::Gauge,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

impl ReloadMetrics {
    /// One reload ended with `result` (`ok` or `failed`) at `unix_secs`.
    pub fn reloaded(&self, result: &'static str, unix_secs: i64) {
        self.results.get_or_create(&ResultLabels { result }).inc();
        self.last_reload.set(unix_secs);
    }
}

/// What a counter is registered as: the exposed name without `_total`, which the OpenMetrics
/// encoder appends to every counter.
fn counter_base(name: &str) -> &str {
    name.strip_suffix("_total").unwrap_or(name)
}

impl Metrics {
    /// Registers every family, and the scrape-time collector over `upstreams`.
    pub fn new<'a>(upstreams: impl IntoIterator<Item = &'a Arc<Upstream>>) -> Metrics {
        use names::*;
        let families = Arc::new(Families::default());
        let mut registry = Registry::default();
        let f = &families;
        registry.register(counter_base(REQUESTS), REQUESTS_HELP, f.requests.clone());
        registry.register(REQUEST_DURATION, REQUEST_DURATION_HELP, f.duration.clone());
        registry.register(
            counter_base(UPSTREAM_ATTEMPTS),
            UPSTREAM_ATTEMPTS_HELP,
            f.attempts.clone(),
        );
        registry.register(counter_base(RETRIES), RETRIES_HELP, f.retries.clone());
        registry.register(
            counter_base(RETRY_STOPS),
            RETRY_STOPS_HELP,
            f.retry_stops.clone(),
        );
        registry.register(
            counter_base(RETRY_BUDGET_EXHAUSTED),
            RETRY_BUDGET_EXHAUSTED_HELP,
            f.budget_exhausted.clone(),
        );
        registry.register(TUNNELS_OPEN, TUNNELS_OPEN_HELP, f.tunnels_open.clone());
        registry.register(counter_base(TUNNELS), TUNNELS_HELP, f.tunnels.clone());
        registry.register(
            counter_base(CLIENT_CONNECTIONS),
            CLIENT_CONNECTIONS_HELP,
            f.client_connections.clone(),
        );
        registry.register(
            counter_base(CLIENT_HEADER_TIMEOUTS),
            CLIENT_HEADER_TIMEOUTS_HELP,
            f.client_header_timeouts.clone(),
        );
        registry.register(
            counter_base(PROTOCOL_REQUESTS),
            PROTOCOL_REQUESTS_HELP,
            f.protocols.clone(),
        );
        registry.register(
            counter_base(GRPC_RESPONSES),
            GRPC_RESPONSES_HELP,
            f.grpc.clone(),
        );
        let list: Vec<Arc<Upstream>> = upstreams.into_iter().cloned().collect();
        let upstreams: upstream::UpstreamList = Arc::new(arc_swap::ArcSwap::from_pointee(list));
        registry.register_collector(Box::new(upstream::UpstreamCollector {
            upstreams: upstreams.clone(),
        }));
        let reloads = ReloadMetrics::default();
        for result in ["ok", "failed"] {
            // Created now, so both show as 0 before the first reload (rate() needs that).
            reloads
                .results
                .get_or_create_owned(&ResultLabels { result });
        }
        registry.register(counter_base(RELOADS), RELOADS_HELP, reloads.results.clone());
        registry.register(
            CONFIG_GENERATION,
            CONFIG_GENERATION_HELP,
            reloads.generation.clone(),
        );
        registry.register(
            CONFIG_LAST_RELOAD,
            CONFIG_LAST_RELOAD_HELP,
            reloads.last_reload.clone(),
        );
        let discovery = discovery::DiscoveryMetrics::default();
        discovery.register(&mut registry);
        Metrics {
            registry,
            families,
            upstreams,
            reloads,
            discovery,
        }
    }

    /// After a reload: the upstreams whose gauges `/metrics` reports.
    pub fn set_upstreams<'a>(&self, upstreams: impl IntoIterator<Item = &'a Arc<Upstream>>) {
        self.upstreams
            .store(Arc::new(upstreams.into_iter().cloned().collect()));
    }

    /// Exposes the fleet's connection, revision and update counters (`fleet/`).
    pub fn register_fleet(&mut self, fleet: &crate::fleet::FleetMetrics) {
        fleet.init();
        self.registry.register(
            names::FLEET_CONNECTED,
            names::FLEET_CONNECTED_HELP,
            fleet.connected.clone(),
        );
        self.registry.register(
            names::FLEET_REVISION,
            names::FLEET_REVISION_HELP,
            fleet.revision.clone(),
        );
        self.registry.register(
            counter_base(names::FLEET_UPDATES),
            names::FLEET_UPDATES_HELP,
            fleet.updates.clone(),
        );
    }

    /// Exposes the access log's dropped-line counter.
    pub fn register_access_log(&mut self, log: &crate::observe::access_log::AccessLog) {
        self.registry.register(
            counter_base(names::ACCESS_LOG_DROPPED),
            names::ACCESS_LOG_DROPPED_HELP,
            log.dropped().clone(),
        );
    }

    /// Exposes seconds to expiry of the certificates of each TLS listener; `stores` is the
    /// list the gateway keeps current (a reload changes it).
    pub fn register_certificates(&mut self, stores: tls::CertificateList) {
        self.registry
            .register_collector(Box::new(tls::CertificateCollector { stores }));
    }

    /// Exposes the automatic certificates (expiry, orders, last attempt).
    pub fn register_acme(&mut self, acme: Arc<crate::acme::Acme>) {
        self.registry
            .register_collector(Box::new(acme::AcmeCollector { acme }));
    }

    /// The handles of one route (`name` is the route label); built when the route is (at start
    /// or by a reload). Series with the same labels share one counter, so a rebuilt route keeps
    /// counting where the old one stopped.
    pub fn route(&self, name: &Arc<str>, upstream: &Upstream) -> Arc<RouteMetrics> {
        self.route_after(name, upstream, None)
    }

    /// [`Metrics::route`] for a route rebuilt because its upstream changed: the handles of
    /// targets `previous` already had are shared (a discovery update of 1 target among 1 000
    /// makes one target's handles, not 1 000).
    pub fn route_after(
        &self,
        name: &Arc<str>,
        upstream: &Upstream,
        previous: Option<&RouteMetrics>,
    ) -> Arc<RouteMetrics> {
        let previous = previous.and_then(RouteMetrics::upstream_metrics);
        let up = Arc::new(UpstreamMetrics::new(
            upstream,
            self.families.clone(),
            previous,
        ));
        Arc::new(RouteMetrics::new(
            name.clone(),
            Some(up),
            self.families.clone(),
        ))
    }

    /// The client-connection counters of listener `name` (`h1` and `h2`).
    pub fn client_connections(&self, name: &str) -> ClientConnections {
        let counter = |protocol| {
            let labels = ConnectionLabels {
                listener: name.to_string(),
                protocol,
            };
            self.families
                .client_connections
                .get_or_create_owned(&labels)
        };
        ClientConnections {
            h1: counter("h1"),
            h2: counter("h2"),
            header_timeouts: self.families.client_header_timeouts.get_or_create_owned(
                &ListenerLabels {
                    listener: name.to_string(),
                },
            ),
        }
    }

    /// Handles for requests rejected before a route matched (route label [`UNROUTED`]).
    pub fn unrouted(&self) -> Arc<RouteMetrics> {
        Arc::new(RouteMetrics::new(
            Arc::from(UNROUTED),
            None,
            self.families.clone(),
        ))
    }

    /// The text exposition, served as [`CONTENT_TYPE`].
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail; an encoder error would be a bug in a label value.
        if let Err(err) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(%err, "cannot encode metrics");
        }
        out
    }
}
