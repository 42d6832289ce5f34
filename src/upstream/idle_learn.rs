//! The learned idle timeout of one target (feature map R7).
//!
//! Many upstreams close idle keep-alive connections after a short time without announcing it
//! (no `Keep-Alive: timeout=`). A request written on such a connection just as the upstream
//! closes it fails with `connection_terminated`, and a `POST` must not be resent. The pool's
//! connection driver sees the upstream close a connection while it idles in the pool; it reports
//! the idle age here. From the first such close on, the target's idle limit is [`MARGIN`] of the
//! smallest age seen (never below [`FLOOR`]), so no connection that old is handed out again.
//!
//! The estimate relaxes slowly: after [`RELAX_AFTER`] without an idle close it grows by
//! [`RELAX_STEP`], and once the limit it gives reaches the configured `idle_timeout` it is
//! forgotten. If the upstream still closes at the old age, the next close brings it back down;
//! meanwhile non-idempotent requests keep away from the last quarter of the limit (see
//! `TargetPool::take_idle`), so a probe costs no `POST`.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// The learned limit is this share of the smallest idle age at which the upstream closed.
pub const MARGIN: f64 = 0.75;
/// The learned limit never goes below this: one close at a tiny age (an upstream restart closes
/// every idle connection at once) must not turn pooling off.
pub const FLOOR: Duration = Duration::from_millis(50);
/// Without an idle close for this long, the estimate grows by [`RELAX_STEP`].
pub const RELAX_AFTER: Duration = Duration::from_secs(60);
pub const RELAX_STEP: f64 = 1.25;
/// A close must be this much below the smallest age seen to lower it; smaller differences are
/// the jitter of one upstream timer, and would only log a new limit per close.
const NOTICEABLE: f64 = 0.95;

pub struct LearnedIdle {
    /// `learn_idle_timeout` of the upstream.
    enabled: bool,
    /// The configured `idle_timeout`: a learned limit at or above it says nothing.
    ceiling: Duration,
    addr: std::sync::Arc<str>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The smallest idle age at which the upstream was seen to close (relaxed over time).
    smallest: Option<Duration>,
    /// The last idle close seen, or the last relax step.
    since: Option<Instant>,
}

impl LearnedIdle {
    pub fn new(enabled: bool, ceiling: Duration, addr: std::sync::Arc<str>) -> Self {
        Self {
            enabled,
            ceiling,
            addr,
            state: Mutex::new(State::default()),
        }
    }

    /// The upstream closed a connection that had idled in the pool for `age`.
    pub fn closed_idle(&self, age: Duration, now: Instant) {
        if !self.enabled {
            return;
        }
        let mut s = self.state.lock().expect("learned idle lock");
        s.since = Some(now);
        let lower = match s.smallest {
            Some(seen) => age.as_secs_f64() < seen.as_secs_f64() * NOTICEABLE,
            None => true,
        };
        if lower && limit_of(age) < self.ceiling {
            s.smallest = Some(age);
            tracing::info!(
                target = %self.addr,
                closed_after_ms = age.as_millis() as u64,
                idle_limit_ms = limit_of(age).as_millis() as u64,
                "upstream closes idle connections without announcing it; idle limit learned"
            );
        }
    }

    /// The learned idle limit now, if any (relaxed first when it is due).
    pub fn limit(&self, now: Instant) -> Option<Duration> {
        if !self.enabled {
            return None;
        }
        let mut s = self.state.lock().expect("learned idle lock");
        let (smallest, since) = (s.smallest?, s.since?);
        if now.saturating_duration_since(since) >= RELAX_AFTER {
            let relaxed = smallest.mul_f64(RELAX_STEP);
            s.since = Some(now);
            if limit_of(relaxed) >= self.ceiling {
                s.smallest = None;
                tracing::info!(target = %self.addr, "no idle close seen for a while; learned idle limit forgotten");
            } else {
                s.smallest = Some(relaxed);
                tracing::info!(
                    target = %self.addr,
                    idle_limit_ms = limit_of(relaxed).as_millis() as u64,
                    "no idle close seen for a while; learned idle limit relaxed"
                );
            }
        }
        s.smallest.map(limit_of)
    }
}

fn limit_of(smallest: Duration) -> Duration {
    smallest.mul_f64(MARGIN).max(FLOOR)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn learner(enabled: bool) -> LearnedIdle {
        LearnedIdle::new(enabled, Duration::from_secs(4), "t".into())
    }

    #[test]
    fn first_close_sets_a_limit_below_it() {
        let l = learner(true);
        let now = Instant::now();
        assert_eq!(l.limit(now), None);
        l.closed_idle(ms(200), now);
        assert_eq!(l.limit(now), Some(ms(150)));
        // A smaller age lowers it; jitter and larger ages do not.
        l.closed_idle(ms(195), now);
        assert_eq!(l.limit(now), Some(ms(150)));
        l.closed_idle(ms(400), now);
        assert_eq!(l.limit(now), Some(ms(150)));
        l.closed_idle(ms(100), now);
        assert_eq!(l.limit(now), Some(ms(75)));
    }

    #[test]
    fn the_limit_never_goes_below_the_floor() {
        let l = learner(true);
        let now = Instant::now();
        l.closed_idle(ms(2), now);
        assert_eq!(l.limit(now), Some(FLOOR));
    }

    #[test]
    fn closes_at_or_past_the_configured_limit_teach_nothing() {
        let l = learner(true);
        let now = Instant::now();
        l.closed_idle(Duration::from_secs(10), now);
        assert_eq!(l.limit(now), None);
    }

    #[test]
    fn learning_off_learns_nothing() {
        let l = learner(false);
        let now = Instant::now();
        l.closed_idle(ms(200), now);
        assert_eq!(l.limit(now), None);
    }

    #[test]
    fn relaxes_slowly_without_closes_then_forgets() {
        let l = learner(true);
        let mut now = Instant::now();
        l.closed_idle(ms(1000), now);
        assert_eq!(l.limit(now), Some(ms(750)));
        now += RELAX_AFTER - ms(1);
        assert_eq!(l.limit(now), Some(ms(750)), "not yet due");
        now += ms(1);
        assert_eq!(l.limit(now), Some(ms(937) + Duration::from_micros(500)));
        // A close at the old age brings it straight back.
        l.closed_idle(ms(1000), now);
        assert_eq!(l.limit(now), Some(ms(750)));
        // Steps until the limit reaches the configured 4 s, then nothing is learned.
        let mut steps = 0;
        while l.limit(now).is_some() {
            now += RELAX_AFTER;
            steps += 1;
            assert!(steps < 20);
        }
        assert!(steps >= 5, "relaxed in {steps} steps");
    }
}
