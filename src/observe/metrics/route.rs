//! Per-route and per-target handles: the label sets resolved once, so the request path only
//! touches atomics.

use std::borrow::Cow;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::StatusCode;
use prometheus_client::metrics::counter::Counter;

use super::{
    AttemptLabels, Families, GrpcLabels, LatencyHistogram, ProtocolLabels, ReasonLabels,
    RequestLabels, RouteLabels, TunnelLabels, NO_CAUSE,
};
use crate::cause::Cause;
use crate::proxy::retry::{RetryReason, StopReason};
use crate::upstream::Upstream;

/// Status codes with a slot of their own (hyper accepts 100..=999; the rest are looked up).
const SLOTS: std::ops::Range<u16> = 100..600;

/// Counters created on first use into a fixed slot: afterwards one acquire load finds them.
struct Lazy(Box<[OnceLock<Counter>]>);

impl Lazy {
    fn new(n: usize) -> Lazy {
        Lazy((0..n).map(|_| OnceLock::new()).collect())
    }

    fn inc(&self, slot: usize, make: impl FnOnce() -> Counter) {
        self.0[slot].get_or_init(make).inc();
    }
}

/// Attempts on one target, by outcome.
pub struct TargetAttempts {
    /// [`crate::upstream::Target::id`].
    id: u64,
    upstream: Arc<str>,
    target: Arc<str>,
    by_status: Lazy,
    by_cause: Lazy,
    families: Arc<Families>,
}

impl TargetAttempts {
    fn counter(&self, outcome: Cow<'static, str>) -> Counter {
        let labels = AttemptLabels {
            upstream: self.upstream.clone(),
            target: self.target.clone(),
            outcome,
        };
        self.families.attempts.get_or_create_owned(&labels)
    }

    /// One attempt ended with `status` received, or failed with `cause`.
    pub fn record(&self, status: Option<StatusCode>, cause: Option<Cause>) {
        match (cause, status) {
            (Some(c), _) => self
                .by_cause
                .inc(c as usize, || self.counter(c.as_str().into())),
            (None, Some(s)) if SLOTS.contains(&s.as_u16()) => {
                let slot = usize::from(s.as_u16() - SLOTS.start);
                self.by_status
                    .inc(slot, || self.counter(s.as_u16().to_string().into()));
            }
            (None, Some(s)) => {
                self.counter(s.as_u16().to_string().into()).inc();
            }
            (None, None) => {}
        }
    }
}

/// The handles of one upstream's targets (found by target id); shared by routes.
pub struct UpstreamMetrics {
    pub targets: Vec<Arc<TargetAttempts>>,
    /// Positions by target id, for pools past [`SCAN_LIMIT`] targets (discovery makes pools of
    /// hundreds); smaller pools are scanned.
    index: Option<std::collections::HashMap<u64, usize>>,
}

/// Up to this many targets a scan over ids costs about what a hash lookup does.
const SCAN_LIMIT: usize = 16;

impl UpstreamMetrics {
    fn find(&self, id: u64) -> Option<&TargetAttempts> {
        match &self.index {
            Some(index) => index.get(&id).map(|i| &*self.targets[*i]),
            None => self.targets.iter().find(|t| t.id == id).map(|t| &**t),
        }
    }
}

impl UpstreamMetrics {
    /// Handles for `upstream`'s targets; those of a target `previous` already had (same id: a
    /// target kept by a reload or a discovery update) are shared, not made again.
    pub(super) fn new(
        upstream: &Upstream,
        families: Arc<Families>,
        previous: Option<&UpstreamMetrics>,
    ) -> UpstreamMetrics {
        let known: std::collections::HashMap<u64, &Arc<TargetAttempts>> = previous
            .map(|p| p.targets.iter().map(|t| (t.id, t)).collect())
            .unwrap_or_default();
        let targets = upstream
            .targets
            .iter()
            .map(|t| match known.get(&t.id) {
                Some(kept) => Arc::clone(kept),
                None => Arc::new(TargetAttempts {
                    id: t.id,
                    upstream: upstream.name.clone(),
                    target: t.addr.clone(),
                    by_status: Lazy::new(SLOTS.len()),
                    by_cause: Lazy::new(Cause::ALL.len()),
                    families: families.clone(),
                }),
            })
            .collect::<Vec<Arc<TargetAttempts>>>();
        let index = (targets.len() > SCAN_LIMIT)
            .then(|| targets.iter().enumerate().map(|(i, t)| (t.id, i)).collect());
        UpstreamMetrics { targets, index }
    }
}

/// The handles one route counts with.
pub struct RouteMetrics {
    route: Arc<str>,
    /// Requests with cause `none`, by status.
    ok_by_status: Lazy,
    duration: LatencyHistogram,
    retries: [Counter; RetryReason::ALL.len()],
    stops: [Counter; StopReason::ALL.len()],
    budget_exhausted: Counter,
    /// By (client, upstream) protocol: `[h1, h2] × [none, h1, h2]`.
    by_protocol: Lazy,
    /// gRPC calls by `grpc-status` 0..=16 (others are looked up).
    grpc_by_status: Lazy,
    upstream: Option<Arc<UpstreamMetrics>>,
    families: Arc<Families>,
}

impl RouteMetrics {
    /// The per-target handles of the route's upstream.
    pub(super) fn upstream_metrics(&self) -> Option<&UpstreamMetrics> {
        self.upstream.as_deref()
    }

    pub(super) fn new(
        route: Arc<str>,
        upstream: Option<Arc<UpstreamMetrics>>,
        families: Arc<Families>,
    ) -> RouteMetrics {
        // Created now, so every reason shows as 0 before its first event (rate() needs that).
        let reason =
            |family: &prometheus_client::metrics::family::Family<ReasonLabels, Counter>,
             reason: &'static str| {
                family.get_or_create_owned(&ReasonLabels {
                    route: route.clone(),
                    reason,
                })
            };
        let labels = RouteLabels {
            route: route.clone(),
        };
        RouteMetrics {
            ok_by_status: Lazy::new(SLOTS.len()),
            duration: families.duration.get_or_create_owned(&labels),
            retries: RetryReason::ALL.map(|r| reason(&families.retries, r.as_str())),
            stops: StopReason::ALL.map(|r| reason(&families.retry_stops, r.as_str())),
            budget_exhausted: families.budget_exhausted.get_or_create_owned(&labels),
            by_protocol: Lazy::new(6),
            grpc_by_status: Lazy::new(17),
            route,
            upstream,
            families,
        }
    }

    /// A request ended: `status` sent to the client, `cause` if gatewise generated the response
    /// or the body was cut, `elapsed` since it was received.
    pub fn request(&self, status: u16, cause: Option<Cause>, elapsed: Duration) {
        self.duration.observe(elapsed);
        let counter = || {
            let labels = RequestLabels {
                route: self.route.clone(),
                status,
                cause: cause.map_or(NO_CAUSE, Cause::as_str),
            };
            self.families.requests.get_or_create_owned(&labels)
        };
        match cause {
            None if SLOTS.contains(&status) => {
                self.ok_by_status
                    .inc(usize::from(status - SLOTS.start), counter);
            }
            _ => {
                counter().inc();
            }
        }
    }

    /// The protocols of one request's two sides: `client` (`h1`/`h2`) and the one spoken to
    /// the target that answered (`None` when none did).
    pub fn protocols(&self, client: &'static str, upstream: Option<&'static str>) {
        let c = usize::from(client == "h2");
        let u = match upstream {
            None => 0,
            Some("h2") => 2,
            Some(_) => 1,
        };
        self.by_protocol.inc(c * 3 + u, || {
            self.families
                .protocols
                .get_or_create_owned(&ProtocolLabels {
                    route: self.route.clone(),
                    client: ["h1", "h2"][c],
                    upstream: ["none", "h1", "h2"][u],
                })
        });
    }

    /// A gRPC call ended with `grpc_status`.
    pub fn grpc_status(&self, grpc_status: u32) {
        let counter = || {
            self.families.grpc.get_or_create_owned(&GrpcLabels {
                route: self.route.clone(),
                grpc_status,
            })
        };
        match usize::try_from(grpc_status) {
            Ok(slot) if slot < 17 => self.grpc_by_status.inc(slot, counter),
            _ => {
                counter().inc();
            }
        }
    }

    /// One attempt on `target` of the route's upstream ended.
    pub fn attempt(
        &self,
        target: &crate::upstream::Target,
        status: Option<StatusCode>,
        cause: Option<Cause>,
    ) {
        if let Some(t) = self.upstream.as_ref().and_then(|u| u.find(target.id)) {
            t.record(status, cause);
        }
    }

    pub fn retry(&self, reason: RetryReason) {
        self.retries[reason as usize].inc();
    }

    /// An upgraded connection of this route opened (tunnels are rare: looked up, not cached).
    pub fn tunnel_opened(&self) {
        let labels = RouteLabels {
            route: self.route.clone(),
        };
        self.families.tunnels_open.get_or_create(&labels).inc();
    }

    /// A tunnel of this route ended; `closed_by` is a [`crate::proxy::tunnel::ClosedBy`] word.
    pub fn tunnel_closed(&self, closed_by: &'static str) {
        let labels = RouteLabels {
            route: self.route.clone(),
        };
        self.families.tunnels_open.get_or_create(&labels).dec();
        let labels = TunnelLabels {
            route: self.route.clone(),
            closed_by,
        };
        self.families.tunnels.get_or_create(&labels).inc();
    }

    /// A failed attempt was not retried; budget exhaustion also counts on its own counter.
    pub fn retry_stop(&self, reason: StopReason) {
        self.stops[reason as usize].inc();
        if reason == StopReason::BudgetExhausted {
            self.budget_exhausted.inc();
        }
    }
}
