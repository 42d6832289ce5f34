//! A target's decaying latency estimate for the `peak_ewma` balancer (the model is
//! linkerd2-proxy's default balancer, tower's `PeakEwma`).
//!
//! Each attempt's time to the response head updates it: a sample above the estimate replaces it
//! at once (the peak: a target that turns slow is seen on its first slow answer), a sample below
//! it is blended in with weight `1 - e^(-Δt/τ)`, Δt being the time since the last update. Read
//! without traffic, the estimate decays toward zero with the same τ, so a target that was slow
//! once is tried again after a while instead of being shunned for ever. The balancer multiplies
//! it by the target's requests in flight + 1, so a target that has stopped answering is avoided
//! before its first slow answer comes back: its in-flight count only grows.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// τ of the decay (linkerd2-proxy's default).
pub const DECAY: Duration = Duration::from_secs(10);
/// The estimate of a target not measured yet (linkerd2-proxy's default).
pub const DEFAULT_RTT: Duration = Duration::from_millis(30);
/// A failed attempt counts as at least this slow, so a target failing fast does not look fast.
pub const FAILURE_PENALTY: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct PeakEwma(Mutex<Estimate>);

#[derive(Debug)]
struct Estimate {
    /// Seconds.
    rtt: f64,
    at: Instant,
}

impl PeakEwma {
    pub fn new(now: Instant) -> Self {
        Self(Mutex::new(Estimate {
            rtt: DEFAULT_RTT.as_secs_f64(),
            at: now,
        }))
    }

    /// One attempt's time to its response head (or to its failure, with `failed`).
    pub fn observe(&self, rtt: Duration, failed: bool, now: Instant) {
        let rtt = if failed {
            rtt.max(FAILURE_PENALTY)
        } else {
            rtt
        };
        self.0
            .lock()
            .expect("ewma lock")
            .update(rtt.as_secs_f64(), now);
    }

    /// The estimate now, in seconds, decayed for the time since the last update.
    pub fn estimate(&self, now: Instant) -> f64 {
        let mut e = self.0.lock().expect("ewma lock");
        e.update(0.0, now);
        e.rtt
    }
}

impl Estimate {
    fn update(&mut self, rtt: f64, now: Instant) {
        if rtt > self.rtt {
            self.rtt = rtt;
        } else {
            let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
            let decay = (-elapsed / DECAY.as_secs_f64()).exp();
            self.rtt = self.rtt * decay + rtt * (1.0 - decay);
        }
        self.at = self.at.max(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slow_answer_is_taken_at_once_and_decays_with_tau() {
        let mut now = Instant::now();
        let e = PeakEwma::new(now);
        assert!((e.estimate(now) - 0.030).abs() < 1e-9);
        e.observe(Duration::from_secs(3), false, now);
        assert!((e.estimate(now) - 3.0).abs() < 1e-9);
        // One τ later without traffic: e^-1 of it.
        now += DECAY;
        assert!((e.estimate(now) - 3.0 / std::f64::consts::E).abs() < 1e-6);
    }

    #[test]
    fn fast_answers_pull_the_estimate_down_by_elapsed_time() {
        let mut now = Instant::now();
        let e = PeakEwma::new(now);
        e.observe(Duration::from_secs(1), false, now);
        now += DECAY;
        e.observe(Duration::from_millis(1), false, now);
        let v = e.estimate(now);
        let want = 1.0 / std::f64::consts::E + 0.001 * (1.0 - 1.0 / std::f64::consts::E);
        assert!((v - want).abs() < 1e-6, "{v}");
    }

    #[test]
    fn a_fast_failure_does_not_look_fast() {
        let now = Instant::now();
        let e = PeakEwma::new(now);
        e.observe(Duration::from_micros(200), true, now);
        assert!(e.estimate(now) >= FAILURE_PENALTY.as_secs_f64());
    }
}
