//! Jittered exponential backoff between attempts.
//!
//! Full jitter: retry `n` waits a uniform random time in `[0, min(CAP, BASE × 2^(n-1))]`. The
//! delay is short on purpose: the retry goes to a *different* target, whose health does not
//! improve by waiting, so the wait exists only to spread the retries of many requests that hit
//! the same failure at the same instant (one target dying fails every in-flight request at
//! once) instead of landing them on the survivors in one burst. Why these numbers: docs/retries.md.

use std::time::Duration;

/// Upper bound of the first retry's delay.
pub const BACKOFF_BASE: Duration = Duration::from_millis(10);
/// No retry waits longer than this, however many retries a route allows.
pub const BACKOFF_CAP: Duration = Duration::from_millis(250);

/// The delay before retry number `retry_number` (1 for the first retry; 0 is treated as 1).
pub fn backoff(retry_number: u32, rng: &mut fastrand::Rng) -> Duration {
    let doublings = retry_number.saturating_sub(1).min(16);
    let ceiling = BACKOFF_BASE.saturating_mul(1 << doublings).min(BACKOFF_CAP);
    let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(rng.u64(0..=nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_stay_within_the_doubling_ceiling() {
        let mut rng = fastrand::Rng::with_seed(7);
        for (n, ceiling_ms) in [
            (0, 10),
            (1, 10),
            (2, 20),
            (3, 40),
            (4, 80),
            (5, 160),
            (6, 250),
        ] {
            let ceiling = Duration::from_millis(ceiling_ms);
            let mut max = Duration::ZERO;
            for _ in 0..2000 {
                let d = backoff(n, &mut rng);
                assert!(d <= ceiling, "retry {n}: {d:?} > {ceiling:?}");
                max = max.max(d);
            }
            // Full jitter uses the whole range, not a sliver of it.
            assert!(
                max >= ceiling * 9 / 10,
                "retry {n}: max {max:?} of {ceiling:?}"
            );
        }
    }

    #[test]
    fn huge_retry_numbers_are_capped() {
        let mut rng = fastrand::Rng::with_seed(1);
        for n in [7, 20, 64, u32::MAX] {
            assert!(backoff(n, &mut rng) <= BACKOFF_CAP);
        }
    }

    #[test]
    fn delays_are_jittered() {
        let mut rng = fastrand::Rng::with_seed(3);
        let first: Vec<Duration> = (0..50).map(|_| backoff(1, &mut rng)).collect();
        let distinct = first.iter().collect::<std::collections::HashSet<_>>().len();
        assert!(distinct > 40, "only {distinct} distinct delays of 50");
    }
}
