//! Health states of a target as a pure function of observations.
//!
//! [`TargetHealth`] keeps a few facts about one target (is the active check up, is it ejected
//! until some instant, is discovery draining it, since when is it ramping up) and derives its
//! [`State`] from them. Every observation method returns `Some(Transition)` exactly when the
//! derived state changed, so the caller logs and counts each change once. Nothing here touches a
//! socket, a task or an atomic; time is the `now` the caller passes in.
//!
//! Rules (each one a deliberate choice, tested in `state_tests.rs`):
//! - With an active check, a target starts `Unhealthy`; the first passing check ever makes it
//!   routable at once (requests held at startup wait for it, H4/R6). `rise` applies only to
//!   recovery after `fall` failed checks took it down. Without an active check a target starts
//!   `Healthy`.
//! - Precedence when several facts hold: `Draining` > `Unhealthy` > `Ejected` > `Starting` >
//!   `Healthy`. Facts keep being tracked underneath, so e.g. an ejected target that also fails
//!   its checks shows `Unhealthy`, and shows `Ejected` again if checks recover first.
//! - A passing active check does NOT end a passive ejection early: the ejection was earned by
//!   real traffic failing, which is stronger evidence than a health endpoint answering (health
//!   endpoints often skip the database or the slow path), and the ejection is short anyway.
//!   Exception: when the checks themselves took the target down (`fall`) and then saw it
//!   recover (`rise`), the ejection belongs to that same outage and ends with it.
//! - Passive ejection lasts `base_ejection × n` capped at `max_ejection`, `n` = times ejected
//!   in a row. `n` resets once the target has gone `max_ejection` since its last ejection ended
//!   without being ejected again: after a quiet period as long as the longest penalty, older
//!   failures say nothing about it; a target that keeps failing soon after each return keeps
//!   escalating.
//! - Traffic failures count only while the target is routable: requests still in flight when
//!   it was ejected or marked down must not lengthen or restart the penalty.
//! - When the pool refuses an ejection (`may_eject` false) the failure count stays at the
//!   threshold, so the next failure asks again.
//! - Fast recovery (H6): while no other target of the pool is routable (the caller says so with
//!   [`TargetHealth::set_pool_down`]), ONE passing check brings a target that `fall` took down
//!   back, at full weight: nothing else serves, so `rise` and slow start would only lengthen the
//!   outage. Once something serves, `rise` and the ramp apply again.
//! - A target that becomes routable again (ejection over, checks recovered, discovery back)
//!   enters `Starting` for the slow-start window, measured from the moment it became routable
//!   (for an ejection: its `until`, even if `tick` comes late). The very first pass at gateway
//!   start does not ramp (cold start: the pool is starting together, nothing to protect it from)
//!   unless the caller says the pool already serves ([`TargetHealth::set_ramp_first`]); a target
//!   added to a running pool ([`TargetHealth::added`]) does.

use std::fmt;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::UpstreamConfig;

/// Smallest weight of a `Starting` target, so a lone starting target still gets traffic.
pub const SLOW_START_FLOOR: f64 = 0.1;

/// The health state of one target, as shown in logs, metrics and the status page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Healthy,
    /// Failed active checks (or none passed yet).
    Unhealthy,
    /// Passively ejected until an instant.
    Ejected {
        until: Instant,
    },
    /// Discovery says the target is terminating.
    Draining,
    /// Routable, with a weight ramping up since an instant.
    Starting {
        since: Instant,
    },
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Healthy => "healthy",
            State::Unhealthy => "unhealthy",
            State::Ejected { .. } => "ejected",
            State::Draining => "draining",
            State::Starting { .. } => "starting",
        }
    }

    /// May the balancer send requests to a target in this state?
    pub fn routable(self) -> bool {
        matches!(self, State::Healthy | State::Starting { .. })
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a state changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The first passing active check since start.
    FirstCheckPassed,
    /// `rise` active checks passed in a row after the target was down.
    ChecksPassed {
        rise: u32,
    },
    /// One active check passed while no target of the pool was routable (fast recovery, H6).
    FastRecovery,
    /// `fall` active checks failed in a row.
    ChecksFailed {
        fall: u32,
    },
    /// `count` traffic failures in a row; ejected for `ejected_for`.
    TrafficFailures {
        count: u32,
        ejected_for: Duration,
    },
    EjectionEnded,
    SlowStartEnded,
    DiscoveryDraining,
    DiscoveryBack,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::FirstCheckPassed => f.write_str("first active check passed"),
            Reason::ChecksPassed { rise } => write!(f, "{rise} active checks passed in a row"),
            Reason::FastRecovery => {
                f.write_str("active check passed while every target was down (fast recovery)")
            }
            Reason::ChecksFailed { fall } => write!(f, "{fall} active checks failed in a row"),
            Reason::TrafficFailures { count, ejected_for } => write!(
                f,
                "{count} consecutive traffic failures, ejected for {}ms",
                ejected_for.as_millis()
            ),
            Reason::EjectionEnded => f.write_str("ejection ended"),
            Reason::SlowStartEnded => f.write_str("slow start ended"),
            Reason::DiscoveryDraining => f.write_str("discovery: terminating"),
            Reason::DiscoveryBack => f.write_str("discovery: serving again"),
        }
    }
}

/// One state change, to be logged and counted once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub from: State,
    pub to: State,
    pub reason: Reason,
}

impl fmt::Display for Transition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} -> {} ({})", self.from, self.to, self.reason)
    }
}

/// The thresholds one target is judged by, taken from its upstream's config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Is an active check configured? Without one a target starts healthy.
    pub active_check: bool,
    pub rise: u32,
    pub fall: u32,
    /// Traffic failures in a row that eject; 0 turns passive ejection off.
    pub consecutive_failures: u32,
    pub base_ejection: Duration,
    pub max_ejection: Duration,
    /// Ramp window after becoming routable; zero turns slow start off.
    pub slow_start: Duration,
}

impl Policy {
    pub fn from_upstream(cfg: &UpstreamConfig) -> Self {
        let (rise, fall) = cfg.health.as_ref().map_or((1, 1), |h| (h.rise, h.fall));
        Self {
            active_check: cfg.health.is_some(),
            // A threshold of 0 would mean "change without evidence"; treat it as 1.
            rise: rise.max(1),
            fall: fall.max(1),
            consecutive_failures: cfg.passive.consecutive_failures,
            base_ejection: cfg.passive.base_ejection,
            max_ejection: cfg.passive.max_ejection,
            slow_start: cfg.slow_start,
        }
    }
}

/// Health of one target: facts gathered from observations, and the state derived from them.
#[derive(Debug, Clone)]
pub struct TargetHealth {
    policy: Policy,
    /// The active check's verdict (always true without a check).
    active_up: bool,
    /// Has the active check ever said up? Until then one pass is enough.
    ever_up: bool,
    /// Ramp on the first pass too (target joined a running pool).
    ramp_first: bool,
    /// No other target of the pool is routable: one pass is enough, and no ramp (fast recovery).
    pool_down: bool,
    passes: u32,
    fails: u32,
    traffic_failures: u32,
    ejected_until: Option<Instant>,
    /// Times ejected in a row (the `n` in `base × n`).
    ejections: u32,
    /// When the last ejection ended; `ejections` resets `max_ejection` after it.
    back_since: Option<Instant>,
    draining: bool,
    starting_since: Option<Instant>,
}

impl TargetHealth {
    /// A target known at gateway start: `Unhealthy` until its first check passes (then
    /// `Healthy` at once), or `Healthy` without an active check.
    pub fn new(policy: Policy) -> Self {
        Self {
            policy,
            active_up: !policy.active_check,
            ever_up: !policy.active_check,
            ramp_first: false,
            pool_down: false,
            passes: 0,
            fails: 0,
            traffic_failures: 0,
            ejected_until: None,
            ejections: 0,
            back_since: None,
            draining: false,
            starting_since: None,
        }
    }

    /// A target added to a running pool (discovery): it ramps up through `Starting` when it
    /// becomes routable, immediately so without an active check.
    pub fn added(policy: Policy, now: Instant) -> Self {
        let mut h = Self::new(policy);
        h.ramp_first = true;
        if h.active_up && !policy.slow_start.is_zero() {
            h.starting_since = Some(now);
        }
        h
    }

    /// The same facts judged by other thresholds (a reload changed them).
    pub fn with_policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub fn state(&self) -> State {
        if self.draining {
            State::Draining
        } else if !self.active_up {
            State::Unhealthy
        } else if let Some(until) = self.ejected_until {
            State::Ejected { until }
        } else if let Some(since) = self.starting_since {
            State::Starting { since }
        } else {
            State::Healthy
        }
    }

    pub fn routable(&self) -> bool {
        self.state().routable()
    }

    /// Routable but for draining: checks pass and no ejection (a draining target may still
    /// serve when nothing else can).
    pub fn up_underneath(&self) -> bool {
        self.active_up && self.ejected_until.is_none()
    }

    /// Times ejected in a row, for the status page.
    pub fn ejections(&self) -> u32 {
        self.ejections
    }

    /// Balancing weight in `[0, 1]`: 0 when not routable, 1 when healthy, a linear ramp with a
    /// floor of [`SLOW_START_FLOOR`] while starting.
    pub fn weight(&self, now: Instant) -> f64 {
        match self.state() {
            State::Healthy => 1.0,
            State::Starting { since } => {
                let window = self.policy.slow_start;
                if window.is_zero() {
                    return 1.0;
                }
                let elapsed = now.saturating_duration_since(since);
                (elapsed.as_secs_f64() / window.as_secs_f64()).clamp(SLOW_START_FLOOR, 1.0)
            }
            _ => 0.0,
        }
    }

    /// The next instant at which [`tick`](Self::tick) would change something, if any.
    pub fn next_deadline(&self) -> Option<Instant> {
        let ramp_end = self.starting_since.map(|s| s + self.policy.slow_start);
        match (self.ejected_until, ramp_end) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether the first passing check ever should ramp: the caller says so when the pool
    /// already has routable targets, so a late starter does not take a full share cold.
    pub fn set_ramp_first(&mut self, ramp: bool) {
        self.ramp_first = ramp;
    }

    /// Whether every other target of the pool is down now (fast recovery, H6): then one passing
    /// check brings this one back, at full weight.
    pub fn set_pool_down(&mut self, down: bool) {
        self.pool_down = down;
    }

    /// An active check result.
    pub fn active_check(&mut self, passed: bool, now: Instant) -> Option<Transition> {
        let before = self.state();
        let mut ramp = true;
        let reason;
        if passed {
            self.fails = 0;
            self.passes = self.passes.saturating_add(1);
            if self.active_up {
                return None;
            }
            if !self.ever_up {
                reason = Reason::FirstCheckPassed;
                ramp = self.ramp_first;
            } else if self.passes >= self.policy.rise || self.pool_down {
                reason = if self.passes >= self.policy.rise {
                    Reason::ChecksPassed {
                        rise: self.policy.rise,
                    }
                } else {
                    Reason::FastRecovery
                };
                // Returning to a pool that serves ramps; returning to one that does not (every
                // target down) takes the traffic at once.
                ramp = !self.pool_down;
                // The checks saw this outage begin and end: an ejection earned by traffic
                // failing during the same outage ends with it (otherwise a pool that was
                // wholly down would stay down for the ejection time after it came back).
                self.ejected_until = None;
            } else {
                return None;
            }
            self.active_up = true;
            self.ever_up = true;
        } else {
            self.passes = 0;
            self.fails = self.fails.saturating_add(1);
            if !self.active_up || self.fails < self.policy.fall {
                return None;
            }
            self.active_up = false;
            self.traffic_failures = 0;
            reason = Reason::ChecksFailed {
                fall: self.policy.fall,
            };
        }
        self.settle(before, now, ramp, reason)
    }

    /// The outcome of one request attempt, classified by the caller (see `passive.rs`).
    /// `may_eject` is the pool's answer to [`may_eject`](super::pool_rules::may_eject) now.
    pub fn traffic(&mut self, ok: bool, now: Instant, may_eject: bool) -> Option<Transition> {
        self.forgive(now);
        if ok {
            self.traffic_failures = 0;
            return None;
        }
        let before = self.state();
        if !before.routable() || self.policy.consecutive_failures == 0 {
            return None;
        }
        self.traffic_failures = self.traffic_failures.saturating_add(1);
        if self.traffic_failures < self.policy.consecutive_failures || !may_eject {
            return None;
        }
        let count = self.traffic_failures;
        self.ejections = self.ejections.saturating_add(1);
        let ejected_for = self
            .policy
            .base_ejection
            .saturating_mul(self.ejections)
            .min(self.policy.max_ejection);
        self.ejected_until = Some(now + ejected_for);
        self.back_since = None;
        self.traffic_failures = 0;
        self.settle(
            before,
            now,
            true,
            Reason::TrafficFailures { count, ejected_for },
        )
    }

    /// Discovery says the target is terminating (`true`) or serving again (`false`).
    pub fn draining(&mut self, draining: bool, now: Instant) -> Option<Transition> {
        let before = self.state();
        self.draining = draining;
        self.traffic_failures = 0;
        let reason = if draining {
            Reason::DiscoveryDraining
        } else {
            Reason::DiscoveryBack
        };
        self.settle(before, now, true, reason)
    }

    /// Time passing: ends an ejection, then a slow-start window, possibly both at once.
    pub fn tick(&mut self, now: Instant) -> Option<Transition> {
        self.forgive(now);
        let before = self.state();
        let mut reason = Reason::SlowStartEnded;
        if let Some(until) = self.ejected_until.filter(|u| now >= *u) {
            self.ejected_until = None;
            self.back_since = Some(until);
            reason = Reason::EjectionEnded;
            self.fix_start(before, until, true);
        }
        if let Some(since) = self.starting_since {
            if now >= since + self.policy.slow_start {
                self.starting_since = None;
            }
        }
        self.transition(before, reason)
    }

    /// Resets the ejection multiplier after a long enough time without a new ejection.
    fn forgive(&mut self, now: Instant) {
        if let Some(back) = self.back_since {
            if now.saturating_duration_since(back) >= self.policy.max_ejection {
                self.ejections = 0;
                self.back_since = None;
            }
        }
    }

    fn settle(
        &mut self,
        before: State,
        at: Instant,
        ramp: bool,
        reason: Reason,
    ) -> Option<Transition> {
        self.fix_start(before, at, ramp);
        self.transition(before, reason)
    }

    /// Starts the ramp when the target just became routable; forgets it when it stopped being.
    fn fix_start(&mut self, before: State, at: Instant, ramp: bool) {
        let routable = !self.draining && self.active_up && self.ejected_until.is_none();
        if !routable {
            self.starting_since = None;
        } else if !before.routable() {
            self.starting_since = (ramp && !self.policy.slow_start.is_zero()).then_some(at);
        }
    }

    fn transition(&self, before: State, reason: Reason) -> Option<Transition> {
        let after = self.state();
        (after != before).then_some(Transition {
            from: before,
            to: after,
            reason,
        })
    }
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
