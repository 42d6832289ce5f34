//! Discovery metrics: per upstream and source, errors, applied updates, the last usable answer
//! and the targets it gave. Written by the discovery apply path (`gateway/reload.rs`), a few
//! times a minute at most: plain families are fine here.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::{counter_base, names};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    upstream: String,
    source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetLabels {
    upstream: String,
    source: &'static str,
    readiness: &'static str,
}

#[derive(Default)]
pub struct DiscoveryMetrics {
    errors: Family<SourceLabels, Counter>,
    updates: Family<SourceLabels, Counter>,
    last_success: Family<SourceLabels, Gauge>,
    targets: Family<TargetLabels, Gauge>,
}

impl DiscoveryMetrics {
    pub(super) fn register(&self, registry: &mut Registry) {
        use names::*;
        registry.register(
            counter_base(DISCOVERY_ERRORS),
            DISCOVERY_ERRORS_HELP,
            self.errors.clone(),
        );
        registry.register(
            counter_base(DISCOVERY_UPDATES),
            DISCOVERY_UPDATES_HELP,
            self.updates.clone(),
        );
        registry.register(
            DISCOVERY_LAST_SUCCESS,
            DISCOVERY_LAST_SUCCESS_HELP,
            self.last_success.clone(),
        );
        registry.register(
            DISCOVERY_TARGETS,
            DISCOVERY_TARGETS_HELP,
            self.targets.clone(),
        );
    }

    fn labels(upstream: &str, source: &'static str) -> SourceLabels {
        SourceLabels {
            upstream: upstream.to_string(),
            source,
        }
    }

    /// A source started for `upstream`: its series exist (at 0) from now on.
    pub fn started(&self, upstream: &str, source: &'static str) {
        let l = Self::labels(upstream, source);
        self.errors.get_or_create_owned(&l);
        self.updates.get_or_create_owned(&l);
        self.last_success.get_or_create_owned(&l);
    }

    pub fn failed(&self, upstream: &str, source: &'static str) {
        self.errors
            .get_or_create(&Self::labels(upstream, source))
            .inc();
    }

    /// A usable answer at `unix_secs` with `ready` and `draining` targets; `changed`: it was
    /// applied (the set or a readiness differed).
    pub fn succeeded(
        &self,
        upstream: &str,
        source: &'static str,
        unix_secs: i64,
        (ready, draining): (usize, usize),
        changed: bool,
    ) {
        let l = Self::labels(upstream, source);
        if changed {
            self.updates.get_or_create(&l).inc();
        }
        self.last_success.get_or_create(&l).set(unix_secs);
        for (readiness, n) in [("ready", ready), ("draining", draining)] {
            let t = TargetLabels {
                upstream: upstream.to_string(),
                source,
                readiness,
            };
            self.targets.get_or_create(&t).set(n as i64);
        }
    }
}
