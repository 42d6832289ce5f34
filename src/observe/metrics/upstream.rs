//! Upstream metrics read at scrape time. Health state, in-flight requests, idle connections and
//! queue depth are already in the upstream's own structs; health transitions and queue
//! rejections are counted there in plain atomics ([`TargetCounters`], [`UpstreamCounters`]).
//! The [`UpstreamCollector`] turns them into series when `/metrics` is scraped, so the
//! upstream code carries no metric handles and pays one relaxed add per (rare) event.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

use super::{counter_base, names};
use crate::upstream::health::state::State;
use crate::upstream::Upstream;

/// The health state names, in the order `state_index` numbers them.
pub const STATES: [&str; 5] = ["healthy", "unhealthy", "ejected", "draining", "starting"];

/// Every transition into `ejected` is a passive ejection.
const EJECTED: usize = 2;

fn state_index(s: State) -> usize {
    match s {
        State::Healthy => 0,
        State::Unhealthy => 1,
        State::Ejected { .. } => EJECTED,
        State::Draining => 3,
        State::Starting { .. } => 4,
    }
}

/// Health transitions of one target, by the state entered.
#[derive(Debug, Default)]
pub struct TargetCounters {
    transitions_to: [AtomicU64; STATES.len()],
}

impl TargetCounters {
    pub fn transition(&self, to: State) {
        self.transitions_to[state_index(to)].fetch_add(1, Ordering::Relaxed);
    }

    /// Transitions into `to` so far.
    pub fn transitions_to(&self, to: State) -> u64 {
        self.transitions_to[state_index(to)].load(Ordering::Relaxed)
    }
}

/// Why a request was turned away from an upstream's wait queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueReject {
    /// The queue already held `queue_size` requests.
    Full,
    /// The request waited `queue_timeout` without a slot freeing up.
    Timeout,
}

impl QueueReject {
    pub const ALL: [QueueReject; 2] = [QueueReject::Full, QueueReject::Timeout];

    pub fn as_str(self) -> &'static str {
        match self {
            QueueReject::Full => "queue_full",
            QueueReject::Timeout => "queue_timeout",
        }
    }
}

/// Queue rejections of one upstream, by reason.
#[derive(Debug, Default)]
pub struct UpstreamCounters {
    rejected: [AtomicU64; QueueReject::ALL.len()],
}

impl UpstreamCounters {
    pub fn queue_rejected(&self, why: QueueReject) {
        self.rejected[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn rejections(&self, why: QueueReject) -> u64 {
        self.rejected[why as usize].load(Ordering::Relaxed)
    }
}

/// Encodes every upstream's scrape-time series. Gauge names never end in `_total`, so
/// `counter_base` leaves them as they are.
pub struct UpstreamCollector {
    pub upstreams: Vec<Arc<Upstream>>,
}

impl fmt::Debug for UpstreamCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamCollector")
            .field("upstreams", &self.upstreams.len())
            .finish()
    }
}

impl UpstreamCollector {
    /// One metric family with a value per target; `value` returns `(extra label, value)` pairs.
    fn per_target<V>(
        &self,
        encoder: &mut DescriptorEncoder,
        (name, help, kind): (&str, &str, MetricType),
        extra: &str,
        value: impl Fn(&crate::upstream::Target) -> Vec<(&'static str, V)>,
        encode: impl Fn(&V, prometheus_client::encoding::MetricEncoder) -> fmt::Result,
    ) -> fmt::Result {
        let base = counter_base(name);
        let mut family = encoder.encode_descriptor(base, help, None, kind)?;
        for up in &self.upstreams {
            for t in &up.targets {
                for (label, v) in value(t) {
                    if extra.is_empty() {
                        let labels = [("upstream", &*up.name), ("target", &*t.addr)];
                        encode(&v, family.encode_family(&labels)?)?;
                    } else {
                        let labels = [
                            ("upstream", &*up.name),
                            ("target", &*t.addr),
                            (extra, label),
                        ];
                        encode(&v, family.encode_family(&labels)?)?;
                    }
                }
            }
        }
        Ok(())
    }
}

fn gauge(v: &i64, e: prometheus_client::encoding::MetricEncoder) -> fmt::Result {
    ConstGauge::new(*v).encode(e)
}

fn counter(v: &u64, e: prometheus_client::encoding::MetricEncoder) -> fmt::Result {
    ConstCounter::new(*v).encode(e)
}

impl Collector for UpstreamCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        use MetricType::{Counter, Gauge};
        let e = &mut encoder;
        self.per_target(
            e,
            (
                names::UPSTREAM_HEALTH_STATE,
                names::UPSTREAM_HEALTH_STATE_HELP,
                Gauge,
            ),
            "state",
            |t| {
                let now = state_index(t.state());
                (0..STATES.len())
                    .map(|i| (STATES[i], i64::from(i == now)))
                    .collect()
            },
            gauge,
        )?;
        self.per_target(
            e,
            (
                names::HEALTH_TRANSITIONS,
                names::HEALTH_TRANSITIONS_HELP,
                Counter,
            ),
            "to",
            |t| {
                (0..STATES.len())
                    .map(|i| {
                        (
                            STATES[i],
                            t.counters.transitions_to[i].load(Ordering::Relaxed),
                        )
                    })
                    .collect()
            },
            counter,
        )?;
        self.per_target(
            e,
            (names::EJECTIONS, names::EJECTIONS_HELP, Counter),
            "",
            |t| {
                vec![(
                    "",
                    t.counters.transitions_to[EJECTED].load(Ordering::Relaxed),
                )]
            },
            counter,
        )?;
        self.per_target(
            e,
            (
                names::UPSTREAM_IN_FLIGHT,
                names::UPSTREAM_IN_FLIGHT_HELP,
                Gauge,
            ),
            "",
            |t| vec![("", i64::from(t.in_flight()))],
            gauge,
        )?;
        self.per_target(
            e,
            (
                names::UPSTREAM_IDLE_CONNECTIONS,
                names::UPSTREAM_IDLE_CONNECTIONS_HELP,
                Gauge,
            ),
            "",
            |t| vec![("", i64::try_from(t.pool.idle_count()).unwrap_or(i64::MAX))],
            gauge,
        )?;
        self.per_target(
            e,
            (
                names::UPSTREAM_IDLE_LIMIT,
                names::UPSTREAM_IDLE_LIMIT_HELP,
                Gauge,
            ),
            "source",
            |t| {
                let l = t.pool.idle_limits();
                [
                    ("configured", Some(l.configured)),
                    ("announced", l.announced),
                    ("learned", l.learned),
                ]
                .into_iter()
                .filter_map(|(source, d)| Some((source, d?.as_secs_f64())))
                .collect()
            },
            |v: &f64, e| ConstGauge::new(*v).encode(e),
        )?;

        let mut depth =
            e.encode_descriptor(names::QUEUE_DEPTH, names::QUEUE_DEPTH_HELP, None, Gauge)?;
        for up in &self.upstreams {
            let v = i64::try_from(up.queue_depth()).unwrap_or(i64::MAX);
            ConstGauge::new(v).encode(depth.encode_family(&[("upstream", &*up.name)])?)?;
        }
        let base = counter_base(names::QUEUE_REJECTIONS);
        let mut rejections =
            e.encode_descriptor(base, names::QUEUE_REJECTIONS_HELP, None, Counter)?;
        for up in &self.upstreams {
            for why in QueueReject::ALL {
                let labels = [("upstream", &*up.name), ("reason", why.as_str())];
                ConstCounter::new(up.counters.rejections(why))
                    .encode(rejections.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}
