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
use crate::cause::Cause;
use crate::upstream::health::state::State;
use crate::upstream::hold::HoldReject;
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

/// When a target last failed an attempt, and with what.
pub type LastCause = (std::time::SystemTime, Cause);

/// Health transitions of one target, by the state entered; failed attempts by cause (for the
/// status page's "recent causes").
#[derive(Debug, Default)]
pub struct TargetCounters {
    transitions_to: [AtomicU64; STATES.len()],
    causes: [AtomicU64; Cause::ALL.len()],
    last_cause: std::sync::Mutex<Option<LastCause>>,
}

impl TargetCounters {
    /// An attempt on this target failed with `cause`.
    pub fn failed(&self, cause: Cause) {
        self.causes[cause as usize].fetch_add(1, Ordering::Relaxed);
        *self.last_cause.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((std::time::SystemTime::now(), cause));
    }

    /// Failed attempts by cause since start (causes never seen left out), and the latest.
    pub fn causes(&self) -> (Vec<(Cause, u64)>, Option<LastCause>) {
        let counts = Cause::ALL
            .into_iter()
            .map(|c| (c, self.causes[c as usize].load(Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect();
        let last = *self.last_cause.lock().unwrap_or_else(|e| e.into_inner());
        (counts, last)
    }

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
/// The upstreams of the snapshot serving now; a reload stores a new list.
pub type UpstreamList = Arc<arc_swap::ArcSwap<Vec<Arc<Upstream>>>>;

pub struct UpstreamCollector {
    pub upstreams: UpstreamList,
}

impl fmt::Debug for UpstreamCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamCollector")
            .field("upstreams", &self.upstreams.load().len())
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
        for up in self.upstreams.load().iter() {
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
        for up in self.upstreams.load().iter() {
            let v = i64::try_from(up.queue_depth()).unwrap_or(i64::MAX);
            ConstGauge::new(v).encode(depth.encode_family(&[("upstream", &*up.name)])?)?;
        }
        let base = counter_base(names::QUEUE_REJECTIONS);
        let mut rejections =
            e.encode_descriptor(base, names::QUEUE_REJECTIONS_HELP, None, Counter)?;
        for up in self.upstreams.load().iter() {
            for why in QueueReject::ALL {
                let labels = [("upstream", &*up.name), ("reason", why.as_str())];
                ConstCounter::new(up.counters.rejections(why))
                    .encode(rejections.encode_family(&labels)?)?;
            }
        }
        self.encode_hold(e)
    }
}

impl UpstreamCollector {
    /// The outage hold of each upstream: held now, held in total, turned away.
    fn encode_hold(&self, e: &mut DescriptorEncoder) -> fmt::Result {
        use MetricType::{Counter, Gauge};
        let mut depth =
            e.encode_descriptor(names::HOLD_DEPTH, names::HOLD_DEPTH_HELP, None, Gauge)?;
        for up in self.upstreams.load().iter() {
            let v = i64::try_from(up.hold.depth()).unwrap_or(i64::MAX);
            ConstGauge::new(v).encode(depth.encode_family(&[("upstream", &*up.name)])?)?;
        }
        let base = counter_base(names::HELD_REQUESTS);
        let mut held = e.encode_descriptor(base, names::HELD_REQUESTS_HELP, None, Counter)?;
        for up in self.upstreams.load().iter() {
            ConstCounter::new(up.hold.entered())
                .encode(held.encode_family(&[("upstream", &*up.name)])?)?;
        }
        let base = counter_base(names::HOLD_REJECTIONS);
        let mut rejected = e.encode_descriptor(base, names::HOLD_REJECTIONS_HELP, None, Counter)?;
        for up in self.upstreams.load().iter() {
            for why in HoldReject::ALL {
                let labels = [("upstream", &*up.name), ("reason", why.as_str())];
                ConstCounter::new(up.hold.rejections(why))
                    .encode(rejected.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}
