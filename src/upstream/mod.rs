//! Upstreams: targets, their health, our own connection pool, and balancing.
//!
//! [`Upstream::acquire`] is where a request gets a target: among the targets that may take
//! traffic (health, slow-start weight, panic mode) and have a free slot (`max_connections`), the
//! balancer picks one, preferring targets this request has not tried. When none can be had, the
//! request waits — in the bounded queue while targets are merely busy, in the outage hold
//! (`hold.rs`) while no target is routable — and past those bounds fails fast with a 503 cause,
//! never hangs.

pub mod balancer;
pub mod connect;
pub mod h2;
pub mod health;
pub mod hold;
mod idle_learn;
pub mod io;
pub mod latency;
pub mod pool;
mod target;
pub mod tls;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::cause::{Cause, Phase, UpstreamError};
use crate::config::UpstreamConfig;
use crate::observe::metrics::{QueueReject, UpstreamCounters};
use balancer::{Balancer, Candidate, Tried};
use health::active::Pace;
use health::passive;
use health::pool_rules::{may_eject, panic_mode};
use health::state::{Policy, State, TargetHealth};
use hold::{Held, Hold, HoldReject};
use pool::PoolSettings;
pub use target::{InFlight, Target};
use tls::TlsClient;

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
    eject_lock: Arc<std::sync::Mutex<()>>,
    /// Some target has been routable since start; until then `/ready` and the 503s say the
    /// upstream has never been healthy.
    ever_routable: AtomicBool,
    /// When a target first became routable: targets passing their first check within one check
    /// interval of it start at full weight with it (cold start); later ones ramp.
    routable_since: OnceLock<Instant>,
    /// "Never healthy" is logged once, at the first request it turns away.
    warned_never_healthy: AtomicBool,
    /// Requests waiting for a target to come back (R6).
    pub hold: Arc<Hold>,
    /// Set when a reload replaced this upstream: requests still working on it (held, queued)
    /// move to the successor.
    successor: arc_swap::ArcSwapOption<Upstream>,
    /// How often active checks run now: faster while nothing serves (H6).
    pace: Arc<Pace>,
    /// Queue rejections, for `/metrics`.
    pub counters: Arc<UpstreamCounters>,
    /// `protocol = "https"`: the TLS client its pools and health checks share.
    tls: Option<Arc<TlsClient>>,
    /// Per target: kept from the previous config by a reload, health already known.
    kept: Vec<bool>,
}

/// Targets one request has tried, by id: positions in an upstream's list can change with a
/// reload, ids cannot. Remembers the first 8 (a request makes `retries + 1` attempts).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TriedTargets {
    ids: [u64; 8],
    len: usize,
}

impl TriedTargets {
    pub fn insert(&mut self, id: u64) {
        if self.len < self.ids.len() && !self.ids[..self.len].contains(&id) {
            self.ids[self.len] = id;
            self.len += 1;
        }
    }

    pub fn contains(&self, id: u64) -> bool {
        self.ids[..self.len].contains(&id)
    }

    /// The same set as positions in `targets`, for the balancer.
    fn positions(&self, targets: &[Arc<Target>]) -> Tried {
        let mut tried = Tried::default();
        for (i, t) in targets.iter().enumerate() {
            if self.contains(t.id) {
                tried.insert(i);
            }
        }
        tried
    }
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
    /// An upstream as `config` says; panics when its TLS files cannot be loaded (they were
    /// checked by validation: use [`Upstream::try_new`] where they may have changed since).
    pub fn new(name: &str, config: UpstreamConfig) -> Self {
        Self::try_new(name, config).unwrap_or_else(|e| panic!("{e}"))
    }

    /// An upstream as `config` says, or why its TLS client cannot be built.
    pub fn try_new(name: &str, config: UpstreamConfig) -> Result<Self, String> {
        Self::build(name, config, None)
    }

    /// The same upstream with a changed config (a reload): targets whose address is still
    /// listed keep their `Arc<Target>` — pool, health, ejection, slow-start ramp, counters —
    /// as long as nothing about how a target is reached or judged changed; the others are new
    /// and start as a target joining a pool. Waiters and counters carry over too.
    pub fn rebuild(&self, config: UpstreamConfig) -> Result<Self, String> {
        let keep = same_target_settings(&self.config, &config);
        Self::build(&self.name, config, Some((self, keep)))
    }

    fn build(
        name: &str,
        config: UpstreamConfig,
        previous: Option<(&Upstream, bool)>,
    ) -> Result<Self, String> {
        let tls = match &config.tls {
            Some(cfg) => {
                if cfg.insecure_skip_verify {
                    tracing::warn!(upstream = name, "insecure_skip_verify = true: the targets' certificates are NOT verified; anyone on the path can impersonate them");
                }
                let client = TlsClient::new(cfg, config.protocol)
                    .map_err(|e| format!("upstream {name}: {e}"))?;
                Some(Arc::new(client))
            }
            None => None,
        };
        let settings = PoolSettings {
            connect_timeout: config.connect_timeout,
            idle_timeout: config.idle_timeout,
            max_idle: config.max_idle_per_target,
            max_response_header_bytes: config.max_response_header_bytes,
            tls: tls.clone(),
            learn_idle_timeout: config.learn_idle_timeout,
            protocol: config.protocol,
            h2_max_streams: config.h2_max_streams,
            h2_max_connections: config.h2_max_connections,
        };
        let changed = previous.map_or_else(|| Arc::new(Notify::new()), |(p, _)| p.changed.clone());
        let policy = Policy::from_upstream(&config);
        let serving = previous.is_some_and(|(p, _)| p.has_routable_target());
        let mut kept_flags = Vec::with_capacity(config.targets.len());
        // The previous targets by address: a discovered pool may have a thousand.
        let by_addr: std::collections::HashMap<&str, &Arc<Target>> = previous
            .map(|(p, _)| p.targets.iter().map(|t| (&*t.addr, t)).collect())
            .unwrap_or_default();
        let targets = config
            .targets
            .iter()
            .map(|addr| {
                let same_address = by_addr.get(addr.as_str()).copied();
                if let Some(t) = same_address.filter(|_| previous.is_some_and(|(_, keep)| keep)) {
                    kept_flags.push(true);
                    return t.clone();
                }
                // Same address, but how it is reached or judged changed: a new target (new
                // pool), whose health starts where the old one's was, under the new thresholds.
                kept_flags.push(same_address.is_some());
                let health = match same_address {
                    Some(old) => old.health_now().with_policy(policy),
                    None if serving => TargetHealth::added(policy, Instant::now()),
                    None => TargetHealth::new(policy),
                };
                Arc::new(Target::new(
                    addr,
                    settings.clone(),
                    config.max_connections,
                    health,
                    changed.clone(),
                ))
            })
            .collect::<Vec<Arc<Target>>>();
        let ever_routable = targets.iter().any(|t| t.routable())
            || previous.is_some_and(|(p, _)| !p.never_healthy());
        let routable_since = OnceLock::new();
        if let Some(since) = previous.and_then(|(p, _)| p.routable_since.get().copied()) {
            let _ = routable_since.set(since);
        } else if ever_routable {
            let _ = routable_since.set(Instant::now());
        }
        let interval = config
            .health
            .as_ref()
            .map_or(crate::config::defaults::HEALTH_INTERVAL, |h| h.interval);
        Ok(Self {
            tls,
            kept: kept_flags,
            ever_routable: AtomicBool::new(ever_routable),
            routable_since,
            warned_never_healthy: AtomicBool::new(false),
            // Requests held by the upstream this one replaces stay in the same hold (bounds,
            // turns, counters), and the checks keep its pace.
            hold: previous.map_or_else(Arc::default, |(p, _)| p.hold.clone()),
            pace: match previous {
                Some((p, _)) if p.pace.normal() == interval => p.pace.clone(),
                _ => Arc::new(Pace::new(interval)),
            },
            successor: arc_swap::ArcSwapOption::empty(),
            name: Arc::from(name),
            balancer: Balancer::new(config.balance),
            config,
            targets,
            changed,
            queued: AtomicUsize::new(0),
            eject_lock: previous.map_or_else(Arc::default, |(p, _)| p.eject_lock.clone()),
            counters: previous.map_or_else(Arc::default, |(p, _)| p.counters.clone()),
        })
    }

    /// A reload replaced this upstream by `next`: requests waiting here move over.
    pub fn succeeded_by(&self, next: Arc<Upstream>) {
        self.successor.store(Some(next));
        self.changed.notify_waiters();
    }

    /// The upstream serving in this one's place after reloads, if a reload replaced it.
    pub fn successor(&self) -> Option<Arc<Upstream>> {
        let mut next = self.successor.load_full()?;
        while let Some(further) = next.successor.load_full() {
            next = further;
        }
        Some(next)
    }

    /// The error a request waiting here gets when a reload replaced the upstream; the forward
    /// loop moves it to the successor instead of answering it.
    fn replaced(&self) -> UpstreamError {
        UpstreamError::before_send(
            Cause::DestinationUnavailable,
            Phase::Queue,
            format!("{}: replaced by a reload", self.name),
        )
    }

    /// Requests waiting in the queue now.
    pub fn queue_depth(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Whether any target may take traffic now (the gateway's `/ready`); a draining target
    /// that is otherwise up counts when it is the only kind left (it serves then).
    pub fn has_routable_target(&self) -> bool {
        self.targets.iter().any(|t| t.routable())
            || self.targets.iter().any(|t| t.draining_but_up())
    }

    /// Whether no target has been routable since start (the app was never up).
    pub fn never_healthy(&self) -> bool {
        !self.ever_routable.load(Ordering::Relaxed)
    }

    /// Whether some routable target is not in `tried`: a retry could go somewhere new.
    pub fn has_untried_routable(&self, tried: TriedTargets) -> bool {
        self.targets
            .iter()
            .any(|t| t.routable() && !tried.contains(t.id))
    }

    /// A target and an in-flight slot on it for the next attempt, preferring targets not in
    /// `tried`. Waits while targets are busy (queue) or none is routable (outage hold, adding
    /// to `held`), never past `deadline`.
    pub async fn acquire(
        &self,
        tried: TriedTargets,
        deadline: Instant,
        held: &mut Held,
    ) -> Result<(Arc<Target>, InFlight), UpstreamError> {
        // The common case takes a target at once, without registering as a waiter.
        if let Pick::Got(target, slot) = self.try_pick(tried) {
            return Ok((target, slot));
        }
        // Boxed: rare, and its future would otherwise enlarge every request's.
        let got = Box::pin(self.acquire_waiting(tried, deadline, held)).await;
        held.stop();
        got
    }

    async fn acquire_waiting(
        &self,
        tried: TriedTargets,
        deadline: Instant,
        held: &mut Held,
    ) -> Result<(Arc<Target>, InFlight), UpstreamError> {
        let mut queue: Option<(QueueSlot<'_>, Instant)> = None;
        let mut hold: Option<(hold::HoldSlot<'_>, Instant)> = None;
        loop {
            // Registered before looking, so a change between the look and the wait is not missed.
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let wait_until = match self.try_pick(tried) {
                Pick::Got(target, slot) => return Ok((target, slot)),
                Pick::Saturated => {
                    // Back from an outage: a held request now waits for a slot like any other,
                    // so `max_connections` and the queue pace the backlog.
                    hold = None;
                    held.stop();
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
                Pick::NoneRoutable => {
                    queue = None;
                    held.end_turn();
                    if hold.is_none() {
                        hold = Some(self.enter_hold(held, deadline)?);
                    }
                    hold.as_ref().map_or(deadline, |(_, until)| *until)
                }
            };
            tokio::select! {
                () = &mut changed => {
                    if self.successor.load().is_some() {
                        return Err(self.replaced());
                    }
                    if let Some((_, until)) = &hold {
                        // Leaving the hold: in arrival order, a wave at a time.
                        self.take_turn(held, *until).await;
                    }
                }
                () = tokio::time::sleep_until(wait_until) => {
                    return Err(match self.try_pick(tried) {
                        Pick::Got(target, slot) => return Ok((target, slot)),
                        Pick::Saturated => self.limit_error(QueueReject::Timeout),
                        Pick::NoneRoutable => {
                            drop(hold);
                            held.stop();
                            self.unavailable(held, Some(HoldReject::Timeout))
                        }
                    });
                }
            }
        }
    }

    /// A target this request has not tried, with a free slot, now or never (for a hedge).
    pub fn try_acquire_untried(&self, tried: TriedTargets) -> Option<(Arc<Target>, InFlight)> {
        match self.try_pick(tried) {
            Pick::Got(target, slot) if !tried.contains(target.id) => Some((target, slot)),
            _ => None,
        }
    }

    fn try_pick(&self, tried: TriedTargets) -> Pick {
        let now = Instant::now();
        let tried = tried.positions(&self.targets);
        let healthy = self.targets.iter().filter(|t| t.routable()).count();
        // Panic mode spreads load when few targets are healthy; with none healthy (or none ever
        // healthy yet) it does not apply: that is the outage hold.
        let panic =
            healthy > 0 && panic_mode(healthy, self.targets.len(), self.config.panic_threshold);
        // Nothing routable: draining targets that are otherwise up serve rather than nobody
        // (discovery drains them; their replacements are not up yet).
        let fallback = healthy == 0;
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
            let serves_anyway =
                (panic && t.state() != State::Draining) || (fallback && t.draining_but_up());
            let weight = if serves_anyway { 1.0 } else { t.weight(now) };
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

    /// Has the pool had a routable target for longer than one check interval? Until then a
    /// target passing its first check starts at full weight (cold start); afterwards it ramps.
    fn warm(&self, now: Instant) -> bool {
        self.routable_since
            .get()
            .is_some_and(|since| now >= *since + self.pace.normal())
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

    /// Passive health: what one attempt on `target` says about it.
    pub fn observe(
        &self,
        target: &Target,
        err: Option<&UpstreamError>,
        status: Option<http::StatusCode>,
    ) {
        if let Some(e) = err {
            target.counters.failed(e.cause);
        }
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
            let pace = self.pace.clone();
            let prober = health::active::ConfiguredProbe::new(cfg, self.tls.clone())
                .h2c(self.config.protocol == crate::config::UpstreamProtocol::H2c);
            let known = self.kept.clone();
            tokio::spawn(health::active::run_checks_known(addrs, known, pace, prober, move |i, outcome| {
                let target = &me.targets[i];
                let first_result = first[i].swap(false, Ordering::Relaxed);
                if !outcome.ok && first_result {
                    tracing::warn!(upstream = %me.name, target = %target.addr, detail = %outcome.detail, "first health check failed; no traffic to this target until one passes");
                } else if !outcome.ok {
                    tracing::debug!(target = %target.addr, detail = %outcome.detail, "health check failed");
                }
                let now = Instant::now();
                // A target that becomes ready while others serve ramps up (slow start).
                let others_serve = me
                    .targets
                    .iter()
                    .any(|t| !Arc::ptr_eq(t, target) && t.routable());
                target.observe(|h| {
                    // Slow start only for a target joining a pool that already serves; with
                    // nothing else serving, one pass brings it back at full weight (H6).
                    h.set_ramp_first(others_serve && me.warm(now));
                    h.set_pool_down(!others_serve);
                    h.active_check(outcome.ok, now)
                });
                if target.routable() {
                    me.ever_routable.store(true, Ordering::Relaxed);
                    let _ = me.routable_since.set(now);
                }
                if outcome.ok && me.hold.depth() > 0 {
                    // Requests held after every target refused them: this target answers
                    // again, let them try (no transition may come: it never looked down).
                    me.changed.notify_waiters();
                }
                me.update_pace();
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
            self.update_pace();
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

/// Whether targets built for `a` can serve `b` unchanged: everything but the upstream-level
/// policy (target list, balancing, queue, panic mode, health-check details other than the
/// thresholds, body idle timeout, outage hold) must be equal. Every field is named here, so a
/// new one must be sorted into one side or the other to compile. No clone: with discovery this
/// runs for every update of a pool that may have a thousand targets.
fn same_target_settings(a: &UpstreamConfig, b: &UpstreamConfig) -> bool {
    let UpstreamConfig {
        // Upstream-level: may change with the targets kept.
        targets: _,
        balance: _,
        queue_size: _,
        queue_timeout: _,
        panic_threshold: _,
        body_idle_timeout: _,
        outage_hold: _,
        outage_hold_queue: _,
        // Target-level: how a target is reached and judged.
        connect_timeout,
        idle_timeout,
        learn_idle_timeout,
        max_idle_per_target,
        max_connections,
        max_response_header_bytes,
        health,
        passive,
        slow_start,
        tls,
        discovery,
        protocol,
        h2_max_streams,
        h2_max_connections,
    } = a;
    let thresholds = |h: &Option<crate::config::HealthConfig>| h.as_ref().map(|h| (h.rise, h.fall));
    *connect_timeout == b.connect_timeout
        && *idle_timeout == b.idle_timeout
        && *learn_idle_timeout == b.learn_idle_timeout
        && *max_idle_per_target == b.max_idle_per_target
        && *max_connections == b.max_connections
        && *max_response_header_bytes == b.max_response_header_bytes
        && thresholds(health) == thresholds(&b.health)
        && *passive == b.passive
        && *slow_start == b.slow_start
        && *tls == b.tls
        && *discovery == b.discovery
        && *protocol == b.protocol
        && *h2_max_streams == b.h2_max_streams
        && *h2_max_connections == b.h2_max_connections
}
