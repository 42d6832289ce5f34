//! Upstreams: targets, their health, our own connection pool, and balancing.
//!
//! [`Upstream::acquire`] is where a request gets a target: among the targets that may take
//! traffic (health, slow-start weight, panic mode) and have a free slot (`max_connections`), the
//! balancer picks one, preferring targets this request has not tried. When none can be had, the
//! request waits — in the bounded queue while targets are merely busy, or for the first health
//! answer while no target has ever been healthy — and otherwise fails fast with a 503 cause, never hangs.

pub mod balancer;
pub mod health;
mod idle_learn;
pub mod io;
pub mod latency;
pub mod pool;
mod target;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::cause::{Cause, Phase, UpstreamError};
use crate::config::UpstreamConfig;
use crate::observe::metrics::{QueueReject, UpstreamCounters};
use balancer::{Balancer, Candidate, Tried};
use health::passive;
use health::pool_rules::{may_eject, panic_mode};
use health::state::{Policy, State, TargetHealth};
use pool::PoolSettings;
pub use target::{InFlight, Target};

/// A named pool of targets with one balancing policy.
pub struct Upstream {
    pub name: Arc<str>,
    pub config: UpstreamConfig,
    pub targets: Vec<Arc<Target>>,
    balancer: Balancer,
    /// Signalled when a slot frees up or a target's health changes.
    changed: Arc<Notify>,
    /// Requests waiting in the queue now.
    queued: AtomicUsize,
    /// Serialises passive-health decisions that may eject a target.
    eject_lock: std::sync::Mutex<()>,
    /// Some target has been routable since start. Until then requests wait for the first one
    /// (startup gating); afterwards "no target" is a fast 503.
    ever_routable: AtomicBool,
    /// Queue rejections, for `/metrics`.
    pub counters: UpstreamCounters,
}

/// Why no target could be had right now.
enum Pick {
    Got(Arc<Target>, InFlight),
    /// Targets may take traffic but every one is at `max_connections`.
    Saturated,
    /// No target may take traffic.
    NoneRoutable,
}

impl Upstream {
    pub fn new(name: &str, config: UpstreamConfig) -> Self {
        let settings = PoolSettings {
            connect_timeout: config.connect_timeout,
            idle_timeout: config.idle_timeout,
            max_idle: config.max_idle_per_target,
            max_response_header_bytes: config.max_response_header_bytes,
            learn_idle_timeout: config.learn_idle_timeout,
        };
        let changed = Arc::new(Notify::new());
        let policy = Policy::from_upstream(&config);
        let targets = config
            .targets
            .iter()
            .enumerate()
            .map(|(i, addr)| {
                Arc::new(Target::new(
                    i,
                    addr,
                    settings.clone(),
                    config.max_connections,
                    TargetHealth::new(policy),
                    changed.clone(),
                ))
            })
            .collect::<Vec<Arc<Target>>>();
        let ever_routable = AtomicBool::new(targets.iter().any(|t| t.routable()));
        Self {
            ever_routable,
            name: Arc::from(name),
            balancer: Balancer::new(config.balance),
            config,
            targets,
            changed,
            queued: AtomicUsize::new(0),
            eject_lock: std::sync::Mutex::new(()),
            counters: UpstreamCounters::default(),
        }
    }

    /// Requests waiting in the queue now.
    pub fn queue_depth(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Whether any target may take traffic now (the gateway's `/ready`).
    pub fn has_routable_target(&self) -> bool {
        self.targets.iter().any(|t| t.routable())
    }

    /// A target and an in-flight slot on it for the next attempt, preferring targets not in
    /// `tried`. Waits while targets are busy (queue) or health is not yet known (startup), never
    /// past `deadline`.
    pub async fn acquire(
        &self,
        tried: Tried,
        deadline: Instant,
    ) -> Result<(Arc<Target>, InFlight), UpstreamError> {
        // The common case takes a target at once, without registering as a waiter.
        if let Pick::Got(target, slot) = self.try_pick(tried) {
            return Ok((target, slot));
        }
        let mut queue: Option<(QueueSlot<'_>, Instant)> = None;
        loop {
            // Registered before looking, so a change between the look and the wait is not missed.
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let wait_until = match self.try_pick(tried) {
                Pick::Got(target, slot) => return Ok((target, slot)),
                Pick::Saturated => {
                    if queue.is_none() {
                        let slot = self
                            .enter_queue()
                            .ok_or_else(|| self.limit_error(QueueReject::Full))?;
                        queue = Some((slot, Instant::now() + self.config.queue_timeout));
                    }
                    queue
                        .as_ref()
                        .map_or(deadline, |(_, until)| (*until).min(deadline))
                }
                Pick::NoneRoutable if !self.ever_routable.load(Ordering::Relaxed) => deadline,
                Pick::NoneRoutable => return Err(self.unavailable()),
            };
            tokio::select! {
                () = &mut changed => {}
                () = tokio::time::sleep_until(wait_until) => {
                    return Err(match self.try_pick(tried) {
                        Pick::Got(target, slot) => return Ok((target, slot)),
                        Pick::Saturated => self.limit_error(QueueReject::Timeout),
                        Pick::NoneRoutable => self.unavailable(),
                    });
                }
            }
        }
    }

    /// A target this request has not tried, with a free slot, now or never (for a hedge).
    pub fn try_acquire_untried(&self, tried: Tried) -> Option<(Arc<Target>, InFlight)> {
        match self.try_pick(tried) {
            Pick::Got(target, slot) if !tried.contains(target.index) => Some((target, slot)),
            _ => None,
        }
    }

    fn try_pick(&self, tried: Tried) -> Pick {
        let now = Instant::now();
        let healthy = self.targets.iter().filter(|t| t.routable()).count();
        // Panic mode spreads load when few targets are healthy; with none healthy (or none ever
        // healthy yet) it does not apply: that is a fast 503, or the startup wait.
        let panic =
            healthy > 0 && panic_mode(healthy, self.targets.len(), self.config.panic_threshold);
        let mut saturated = false;
        // Pools are small: candidates live on the stack up to 16 targets.
        let mut stack = [Candidate {
            weight: 0.0,
            in_flight: 0,
            latency: 0.0,
        }; 16];
        let mut heap = Vec::new();
        let candidates: &mut [Candidate] = if self.targets.len() <= stack.len() {
            &mut stack[..self.targets.len()]
        } else {
            heap.resize(self.targets.len(), stack[0]);
            &mut heap
        };
        for (slot, t) in candidates.iter_mut().zip(&self.targets) {
            let weight = if panic && t.state() != State::Draining {
                1.0
            } else {
                t.weight(now)
            };
            let weight = if weight > 0.0 && !t.has_capacity() {
                saturated = true;
                0.0
            } else {
                weight
            };
            *slot = Candidate {
                weight,
                in_flight: t.in_flight(),
                latency: if self.balancer.reads_latency() {
                    t.latency.estimate(now)
                } else {
                    0.0
                },
            };
        }
        // A slot can be taken between the look and the grab; pick again a few times.
        for _ in 0..4 {
            let Some(i) = self.balancer.pick(candidates, tried) else {
                break;
            };
            match self.targets[i].try_start() {
                Some(slot) => return Pick::Got(self.targets[i].clone(), slot),
                None => {
                    candidates[i].weight = 0.0;
                    saturated = true;
                }
            }
        }
        if saturated {
            Pick::Saturated
        } else {
            Pick::NoneRoutable
        }
    }

    fn enter_queue(&self) -> Option<QueueSlot<'_>> {
        let size = self.config.queue_size;
        self.queued
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < size).then_some(n + 1)
            })
            .ok()
            .map(|_| QueueSlot(&self.queued))
    }

    fn limit_error(&self, why: QueueReject) -> UpstreamError {
        self.counters.queue_rejected(why);
        let detail = format!(
            "{}: every target at max_connections, {}",
            self.name,
            why.as_str()
        );
        UpstreamError::before_send(Cause::ConnectionLimitReached, Phase::Queue, detail)
    }

    fn unavailable(&self) -> UpstreamError {
        let detail = format!("{}: no healthy target", self.name);
        UpstreamError::before_send(Cause::DestinationUnavailable, Phase::Queue, detail)
    }

    /// Passive health: what one attempt on `target` says about it.
    pub fn observe(
        &self,
        target: &Target,
        err: Option<&UpstreamError>,
        status: Option<http::StatusCode>,
    ) {
        let verdict = match (err, status) {
            (Some(e), _) => passive::classify_error(e),
            (None, Some(s)) => passive::classify_status(s.as_u16(), &self.config.passive),
            (None, None) => passive::Verdict::Neutral,
        };
        match verdict.as_traffic() {
            Some(true) if !target.failing() => {}
            Some(ok) => {
                target.note_traffic(ok);
                // Counting and ejecting under one lock, so two targets failing at once cannot
                // both be ejected past `max_ejected_percent`. Only failures and first
                // successes after failures get here.
                let _one_at_a_time = self.eject_lock.lock().expect("eject lock");
                let ejected = self.targets.iter().filter(|t| t.is_ejected()).count();
                let allowed = may_eject(
                    ejected,
                    self.targets.len(),
                    self.config.passive.max_ejected_percent,
                );
                target.observe(|h| h.traffic(ok, Instant::now(), allowed));
            }
            None => {}
        }
    }

    /// Runs active checks and the health clock (ejection ends, slow-start ends) until dropped.
    pub async fn run_health(self: Arc<Self>) {
        let checks = self.config.health.clone().map(|cfg| {
            let me = self.clone();
            let addrs = self.config.targets.clone();
            // The first check of each target is worth a line when it fails: a target that is
            // down from the start has no transition to log, and would otherwise be silent.
            let first: Vec<AtomicBool> = addrs.iter().map(|_| AtomicBool::new(true)).collect();
            tokio::spawn(health::active::run_checks(addrs, cfg, move |i, outcome| {
                let target = &me.targets[i];
                let first_result = first[i].swap(false, Ordering::Relaxed);
                if !outcome.ok && first_result {
                    tracing::warn!(target = %target.addr, detail = %outcome.detail, "first health check failed; no traffic to this target until one passes");
                } else if !outcome.ok {
                    tracing::debug!(target = %target.addr, detail = %outcome.detail, "health check failed");
                }
                // A target that becomes ready while others serve ramps up (slow start).
                let others_serve = me.targets.iter().any(|t| t.index != i && t.routable());
                target.observe(|h| {
                    h.set_ramp_first(others_serve);
                    h.active_check(outcome.ok, Instant::now())
                });
                if target.routable() {
                    me.ever_routable.store(true, Ordering::Relaxed);
                }
            }))
        });
        let _abort_checks = AbortOnDrop(checks);
        loop {
            let changed = self.changed.notified();
            let next = self.targets.iter().filter_map(|t| t.next_deadline()).min();
            match next {
                Some(at) => {
                    tokio::select! {
                        () = changed => {}
                        () = tokio::time::sleep_until(at) => {}
                    }
                }
                None => changed.await,
            }
            let now = Instant::now();
            for t in &self.targets {
                t.observe(|h| h.tick(now));
            }
        }
    }
}

struct AbortOnDrop(Option<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(task) = &self.0 {
            task.abort();
        }
    }
}

/// A place in an upstream's wait queue, given back on drop.
struct QueueSlot<'a>(&'a AtomicUsize);

impl Drop for QueueSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
