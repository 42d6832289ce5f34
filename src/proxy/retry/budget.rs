//! The per-route retry budget: retries may add at most `ratio` of the route's requests plus
//! `per_second` retries each second, so a failing pool cannot turn every request into
//! `1 + retries` requests (a retry storm) just when the remaining targets are busiest.
//!
//! Windowing. Two allowances, spent in this order:
//!
//! 1. **Per-second allowance**: `per_second` retries in each whole second (counted from the
//!    budget's creation), refilled when the second changes, never carried over. It lets a quiet
//!    route, whose ratio share is tiny, still retry the occasional keep-alive race. Spent first
//!    because it expires soonest.
//! 2. **Ratio share**: every request deposits `ratio` of a retry; deposits expire after
//!    [`BUDGET_WINDOW`] (10 one-second buckets). Retries taken from the share in the window may not
//!    exceed `ratio × requests in the window`. Expiry is the cap: a long healthy period does not
//!    bank credit for a later storm — at most one window of deposits is ever available.
//!
//! Hot path: [`RetryBudget::on_request`] is one load plus one `fetch_add` on the current second's
//! bucket (a CAS only when the second changes). [`RetryBudget::try_spend`] runs only on failures; it
//! sums 10 buckets and takes its retry with a CAS on the current bucket against the limit it
//! computed, so concurrent spenders within one second cannot over-spend. Each bucket packs
//! `(second, count)` into one `AtomicU64`, so a bucket is reset and counted atomically; no lock.
//! Only retries that straddle a second boundary may over-spend, by at most one per thread.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use tokio::time::Instant;

use crate::config::RouteConfig;

/// How long a request's deposit counts towards the ratio share.
pub const BUDGET_WINDOW: Duration = Duration::from_secs(BUCKETS as u64);

/// One bucket per second of the window.
const BUCKETS: usize = 10;

/// Shared by every task serving one route (`Send + Sync`; wrap in `Arc`).
#[derive(Debug)]
pub struct RetryBudget {
    /// Retries allowed per 1000 requests: `ratio × 1000`, rounded.
    per_mille: u64,
    per_second: u32,
    /// Second 0 of the buckets.
    start: Instant,
    /// Requests seen, per second of the window.
    requests: [AtomicU64; BUCKETS],
    /// Retries taken from the ratio share, per second of the window.
    spent: [AtomicU64; BUCKETS],
    /// Retries taken from the per-second allowance in the current second.
    allowance: AtomicU64,
}

fn pack(second: u32, count: u32) -> u64 {
    (u64::from(second) << 32) | u64::from(count)
}

fn unpack(v: u64) -> (u32, u32) {
    ((v >> 32) as u32, v as u32)
}

/// Adds one to `slot` for `second` unless its count has reached `limit`. A slot still holding an
/// older second is reset first; one holding a newer second (a caller with a stale `now`) is
/// counted as is, which only moves the count a second later.
fn add_within(slot: &AtomicU64, second: u32, limit: u32) -> bool {
    let mut current = slot.load(Relaxed);
    loop {
        let (epoch, count) = unpack(current);
        let (epoch, count) = if epoch < second {
            (second, 0)
        } else {
            (epoch, count)
        };
        if count >= limit {
            return false;
        }
        match slot.compare_exchange_weak(current, pack(epoch, count + 1), Relaxed, Relaxed) {
            Ok(_) => return true,
            Err(actual) => current = actual,
        }
    }
}

/// Sum of the counts of `slots` still inside the window at `second`, skipping index `skip`.
fn window_sum(slots: &[AtomicU64; BUCKETS], second: u32, skip: Option<usize>) -> u64 {
    slots
        .iter()
        .enumerate()
        .filter(|(i, _)| Some(*i) != skip)
        .map(|(_, slot)| unpack(slot.load(Relaxed)))
        .filter(|(epoch, _)| u64::from(*epoch) + BUCKETS as u64 > u64::from(second))
        .map(|(_, count)| u64::from(count))
        .sum()
}

impl RetryBudget {
    /// A budget allowing `ratio` (e.g. 0.2) of requests plus `per_second` retries each second.
    /// A negative or non-finite ratio counts as 0.
    pub fn new(ratio: f64, per_second: u32, now: Instant) -> Self {
        let per_mille = if ratio.is_finite() && ratio > 0.0 {
            (ratio * 1000.0).round().min(1e9) as u64
        } else {
            0
        };
        Self {
            per_mille,
            per_second,
            start: now,
            requests: Default::default(),
            spent: Default::default(),
            allowance: AtomicU64::new(0),
        }
    }

    /// The budget a route's `retry_budget_ratio` and `retry_budget_per_second` describe.
    pub fn for_route(route: &RouteConfig, now: Instant) -> Self {
        Self::new(route.retry_budget_ratio, route.retry_budget_per_second, now)
    }

    fn second(&self, now: Instant) -> u32 {
        let secs = now.saturating_duration_since(self.start).as_secs();
        secs.min(u64::from(u32::MAX)) as u32
    }

    /// Records one client request (once per request, not per attempt): deposits its ratio share.
    pub fn on_request(&self, now: Instant) {
        let second = self.second(now);
        let slot = &self.requests[second as usize % BUCKETS];
        let (epoch, _) = unpack(slot.load(Relaxed));
        if epoch >= second {
            // Common case: the bucket is this second's. 2^32 requests in one second would be
            // needed to carry into the epoch bits.
            slot.fetch_add(1, Relaxed);
        } else {
            add_within(slot, second, u32::MAX);
        }
    }

    /// Takes one retry if the budget allows it; `false` means "do not retry".
    pub fn try_spend(&self, now: Instant) -> bool {
        let second = self.second(now);
        if add_within(&self.allowance, second, self.per_second) {
            return true;
        }
        let index = second as usize % BUCKETS;
        let allowed = window_sum(&self.requests, second, None) * self.per_mille / 1000;
        let spent_before = window_sum(&self.spent, second, Some(index));
        let limit = allowed
            .saturating_sub(spent_before)
            .min(u64::from(u32::MAX)) as u32;
        add_within(&self.spent[index], second, limit)
    }

    /// Retries [`try_spend`](Self::try_spend) would grant now (for the status page and tests).
    pub fn available(&self, now: Instant) -> u64 {
        let second = self.second(now);
        let (epoch, used) = unpack(self.allowance.load(Relaxed));
        let used = if epoch < second { 0 } else { used };
        let allowance = u64::from(self.per_second.saturating_sub(used));
        let allowed = window_sum(&self.requests, second, None) * self.per_mille / 1000;
        allowance + allowed.saturating_sub(window_sum(&self.spent, second, None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    fn requests(budget: &RetryBudget, n: u32, now: Instant) {
        for _ in 0..n {
            budget.on_request(now);
        }
    }

    fn spend_all(budget: &RetryBudget, now: Instant) -> u32 {
        let mut n = 0;
        while budget.try_spend(now) {
            n += 1;
            assert!(n < 1_000_000, "budget never refuses");
        }
        n
    }

    #[test]
    fn ratio_allows_a_fifth_of_requests() {
        let t0 = Instant::now();
        let budget = RetryBudget::new(0.2, 0, t0);
        assert!(
            !budget.try_spend(t0),
            "no requests, no per-second allowance"
        );
        requests(&budget, 100, t0);
        assert_eq!(budget.available(t0), 20);
        assert_eq!(spend_all(&budget, t0), 20);
        assert_eq!(budget.available(t0), 0);
        // Five more requests deposit one more retry.
        requests(&budget, 5, t0);
        assert_eq!(spend_all(&budget, t0), 1);
    }

    #[test]
    fn per_second_allowance_refills_each_second_without_banking() {
        let t0 = Instant::now();
        let budget = RetryBudget::new(0.0, 10, t0);
        assert_eq!(spend_all(&budget, t0), 10);
        assert_eq!(spend_all(&budget, t0 + Duration::from_millis(999)), 0);
        assert_eq!(spend_all(&budget, t0 + Duration::from_secs(1)), 10);
        assert_eq!(spend_all(&budget, t0 + Duration::from_millis(1500)), 0);
        // Five idle seconds do not bank 50 retries.
        assert_eq!(budget.available(t0 + Duration::from_secs(7)), 10);
        assert_eq!(spend_all(&budget, t0 + Duration::from_secs(7)), 10);
    }

    #[test]
    fn defaults_combine_ratio_and_per_second() {
        let t0 = Instant::now();
        let budget = RetryBudget::for_route(&RouteConfig::new("l", "u"), t0);
        requests(&budget, 100, t0);
        assert_eq!(spend_all(&budget, t0), 30);
    }

    #[test]
    fn deposits_expire_after_the_window() {
        let t0 = Instant::now();
        let budget = RetryBudget::new(0.2, 0, t0);
        requests(&budget, 1000, t0);
        for _ in 0..150 {
            assert!(budget.try_spend(t0));
        }
        let t5 = t0 + Duration::from_secs(5);
        assert_eq!(
            budget.available(t5),
            50,
            "spending in an earlier second still counts"
        );
        requests(&budget, 100, t5);
        let t9 = t0 + Duration::from_millis(9_999);
        assert_eq!(budget.available(t9), 70);
        // t0's deposits and spends leave the window; t5's stay until t15.
        let t10 = t0 + BUDGET_WINDOW;
        assert_eq!(budget.available(t10), 20);
        assert_eq!(spend_all(&budget, t10), 20);
        assert_eq!(budget.available(t0 + Duration::from_secs(15)), 0);
    }

    #[test]
    fn reused_bucket_is_reset_not_added_to() {
        let t0 = Instant::now();
        let budget = RetryBudget::new(0.5, 0, t0);
        requests(&budget, 10, t0);
        // Same bucket index, next window: the old count must not leak in.
        let t10 = t0 + BUDGET_WINDOW;
        requests(&budget, 2, t10);
        assert_eq!(budget.available(t10), 1);
    }

    #[test]
    fn stale_now_does_not_wipe_newer_counts() {
        let t0 = Instant::now();
        let budget = RetryBudget::new(1.0, 0, t0);
        let t10 = t0 + BUDGET_WINDOW;
        requests(&budget, 4, t10);
        // A task that read the clock ten seconds ago lands in the same bucket.
        budget.on_request(t0);
        assert_eq!(budget.available(t10), 5);
    }

    #[test]
    fn concurrent_spenders_never_exceed_the_budget() {
        let t0 = Instant::now();
        let budget = RetryBudget::new(0.2, 10, t0);
        requests(&budget, 1000, t0);
        let granted = AtomicU32::new(0);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..100 {
                        if budget.try_spend(t0) {
                            granted.fetch_add(1, Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(granted.load(Relaxed), 210);
    }

    #[test]
    fn concurrent_deposits_and_spends_stay_within_ratio() {
        let t0 = Instant::now();
        let budget = RetryBudget::new(0.2, 10, t0);
        let granted = AtomicU32::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..1000 {
                        budget.on_request(t0);
                        for _ in 0..2 {
                            if budget.try_spend(t0) {
                                granted.fetch_add(1, Relaxed);
                            }
                        }
                    }
                });
            }
        });
        let granted = granted.load(Relaxed);
        // 4000 requests: 800 from the ratio, 10 from the allowance, never more.
        assert!(granted <= 810, "over-spent: {granted}");
        assert!(
            granted >= 800,
            "refused retries it had budget for: {granted}"
        );
    }

    #[test]
    fn budget_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<RetryBudget>();
    }

    #[test]
    fn bad_ratio_counts_as_zero() {
        let t0 = Instant::now();
        for ratio in [f64::NAN, -1.0, f64::INFINITY] {
            let budget = RetryBudget::new(ratio, 0, t0);
            requests(&budget, 100, t0);
            assert!(!budget.try_spend(t0), "ratio {ratio}");
        }
    }
}
