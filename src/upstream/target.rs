//! One target of an upstream: its pool, its in-flight count (bounded by `max_connections`) and
//! its health, with the few facts the balancer reads on every request cached in atomics.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use tokio::time::Instant;

use super::health::state::{State, TargetHealth, Transition};
use super::latency::PeakEwma;
use super::pool::{PoolSettings, TargetPool};
use crate::observe::metrics::TargetCounters;

/// Cached routing mode, so a pick reads an atomic instead of taking the health lock.
const NOT_ROUTABLE: u8 = 0;
const FULL: u8 = 1;
const RAMPING: u8 = 2;

pub struct Target {
    /// Unique for the life of the process: a target kept across a reload keeps its id, while
    /// its position in the upstream's list may change.
    pub id: u64,
    pub addr: Arc<str>,
    pub pool: TargetPool,
    in_flight: AtomicU32,
    /// Requests allowed in flight at once.
    max_in_flight: u32,
    health: Mutex<TargetHealth>,
    mode: AtomicU8,
    ejected: AtomicBool,
    /// Passive failures in a row, so a success need not take the health lock when there were none.
    failures: AtomicU32,
    /// The latest health transition, for `/status`: when, and `from -> to (reason)`.
    last_change: Mutex<Option<(std::time::SystemTime, String)>>,
    /// Signalled when a slot frees up or the health changes (shared by the upstream's targets).
    pub(super) changed: Arc<Notify>,
    /// Health transitions, for `/metrics`.
    pub counters: TargetCounters,
    /// Decaying latency estimate, for the `peak_ewma` balancer.
    pub latency: PeakEwma,
}

impl Target {
    pub(super) fn new(
        addr: &str,
        settings: PoolSettings,
        max_in_flight: Option<u32>,
        health: TargetHealth,
        changed: Arc<Notify>,
    ) -> Self {
        let addr: Arc<str> = Arc::from(addr);
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let target = Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            pool: TargetPool::new(addr.clone(), settings),
            addr,
            in_flight: AtomicU32::new(0),
            max_in_flight: max_in_flight.unwrap_or(u32::MAX),
            health: Mutex::new(health),
            mode: AtomicU8::new(NOT_ROUTABLE),
            ejected: AtomicBool::new(false),
            failures: AtomicU32::new(0),
            last_change: Mutex::new(None),
            changed,
            counters: TargetCounters::default(),
            latency: PeakEwma::new(Instant::now()),
        };
        target.refresh(&target.health.lock().expect("health lock"));
        target
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn has_capacity(&self) -> bool {
        self.in_flight() < self.max_in_flight
    }

    /// Takes an in-flight slot if one is free.
    pub fn try_start(self: &Arc<Self>) -> Option<InFlight> {
        let max = self.max_in_flight;
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| InFlight(self.clone()))
    }

    pub fn routable(&self) -> bool {
        self.mode.load(Ordering::Relaxed) != NOT_ROUTABLE
    }

    pub fn is_ejected(&self) -> bool {
        self.ejected.load(Ordering::Relaxed)
    }

    /// Share of traffic now: 0 when not routable, below 1 while ramping up after a return.
    pub fn weight(&self, now: Instant) -> f64 {
        match self.mode.load(Ordering::Relaxed) {
            NOT_ROUTABLE => 0.0,
            FULL => 1.0,
            _ => self.health.lock().expect("health lock").weight(now),
        }
    }

    /// A copy of the health facts (a reload seeds a replacement target at the same address).
    pub(super) fn health_now(&self) -> TargetHealth {
        self.health.lock().expect("health lock").clone()
    }

    pub fn state(&self) -> State {
        self.health.lock().expect("health lock").state()
    }

    /// Whether discovery says this target is terminating (`State::Draining`).
    pub fn is_draining(&self) -> bool {
        self.state() == State::Draining
    }

    /// Discovery marks the target draining (no new requests unless nothing else can serve) or
    /// back in rotation; nothing happens when it already is.
    pub fn set_draining(&self, draining: bool) {
        if self.is_draining() != draining {
            self.observe(|h| h.draining(draining, Instant::now()));
        }
    }

    /// Draining, but its checks pass and it is not ejected: it may serve when no other target
    /// can (in-flight ones finish either way).
    pub fn draining_but_up(&self) -> bool {
        let health = self.health.lock().expect("health lock");
        health.state() == State::Draining && health.up_underneath()
    }

    /// Applies one observation to the health state machine; logs and publishes a transition.
    pub fn observe(&self, f: impl FnOnce(&mut TargetHealth) -> Option<Transition>) {
        let mut health = self.health.lock().expect("health lock");
        let transition = f(&mut health);
        self.refresh(&health);
        drop(health);
        if let Some(t) = transition {
            self.counters.transition(t.to);
            *self.last_change.lock().expect("status lock") =
                Some((std::time::SystemTime::now(), t.to_string()));
            tracing::info!(target = %self.addr, from = t.from.as_str(), to = t.to.as_str(), reason = %t.reason, "health changed");
            self.changed.notify_waiters();
        }
    }

    /// Whether recent traffic to this target failed (a success then has something to reset).
    pub(super) fn failing(&self) -> bool {
        self.failures.load(Ordering::Relaxed) > 0
    }

    pub(super) fn note_traffic(&self, ok: bool) {
        if ok {
            self.failures.store(0, Ordering::Relaxed);
        } else {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The latest health transition and when it happened.
    pub fn last_change(&self) -> Option<(std::time::SystemTime, String)> {
        self.last_change.lock().expect("status lock").clone()
    }

    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.health.lock().expect("health lock").next_deadline()
    }

    fn refresh(&self, health: &TargetHealth) {
        let state = health.state();
        let mode = match state {
            State::Starting { .. } => RAMPING,
            s if s.routable() => FULL,
            _ => NOT_ROUTABLE,
        };
        self.mode.store(mode, Ordering::Relaxed);
        self.ejected
            .store(matches!(state, State::Ejected { .. }), Ordering::Relaxed);
    }
}

/// A request in flight on a target; dropping it frees the slot and wakes one queued request.
pub struct InFlight(Arc<Target>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let before = self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
        if before >= self.0.max_in_flight {
            self.0.changed.notify_waiters();
        }
    }
}
