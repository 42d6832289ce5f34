//! Picking a target for one attempt: round robin or least request, over the targets that may take
//! traffic, preferring targets this request has not tried yet.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::config::Balance;

/// Targets one request has already tried (by index; targets past 64 are not remembered, which
/// only weakens the "prefer untried" preference for very large pools).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tried(u64);

impl Tried {
    pub fn insert(&mut self, index: usize) {
        if index < 64 {
            self.0 |= 1 << index;
        }
    }

    pub fn contains(&self, index: usize) -> bool {
        index < 64 && self.0 & (1 << index) != 0
    }
}

/// What the balancer needs to know of a target at pick time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    /// Share of traffic in [0, 1]: 0 means "do not route", below 1 means slow start.
    pub weight: f64,
    /// Requests in flight on this target.
    pub in_flight: u32,
}

/// Balancing state of one upstream.
#[derive(Debug)]
pub struct Balancer {
    policy: Balance,
    next: AtomicUsize,
}

impl Balancer {
    pub fn new(policy: Balance) -> Self {
        Self {
            policy,
            next: AtomicUsize::new(fastrand::usize(..1024)),
        }
    }

    /// Picks a target index among `candidates` with weight > 0, preferring ones not in `tried`.
    /// Falls back to tried targets when every routable target was tried.
    pub fn pick(&self, candidates: &[Candidate], tried: Tried) -> Option<usize> {
        self.pick_among(candidates, |i| !tried.contains(i))
            .or_else(|| self.pick_among(candidates, |_| true))
    }

    fn pick_among(
        &self,
        candidates: &[Candidate],
        allowed: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        let usable = |i: usize| candidates[i].weight > 0.0 && allowed(i);
        let ramping = candidates
            .iter()
            .enumerate()
            .any(|(i, c)| usable(i) && c.weight < 1.0);
        match self.policy {
            Balance::RoundRobin if ramping => weighted_random(candidates, &usable),
            Balance::RoundRobin => {
                // The k-th usable target, so a target after an unusable one gets no extra share.
                let n = (0..candidates.len()).filter(|&i| usable(i)).count();
                if n == 0 {
                    return None;
                }
                let k = self.next.fetch_add(1, Ordering::Relaxed) % n;
                (0..candidates.len()).filter(|&i| usable(i)).nth(k)
            }
            Balance::LeastRequest => least_request(candidates, &usable),
        }
    }
}

/// Random choice proportional to weight: used while some target is in slow start.
fn weighted_random(candidates: &[Candidate], usable: &dyn Fn(usize) -> bool) -> Option<usize> {
    let total: f64 = (0..candidates.len())
        .filter(|&i| usable(i))
        .map(|i| candidates[i].weight)
        .sum();
    if total <= 0.0 {
        return None;
    }
    let mut point = fastrand::f64() * total;
    let mut last = None;
    for i in (0..candidates.len()).filter(|&i| usable(i)) {
        last = Some(i);
        point -= candidates[i].weight;
        if point < 0.0 {
            return Some(i);
        }
    }
    last
}

/// Fewest in-flight requests per unit of weight; ties broken at random so equal targets share.
fn least_request(candidates: &[Candidate], usable: &dyn Fn(usize) -> bool) -> Option<usize> {
    let score = |i: usize| (candidates[i].in_flight as f64 + 1.0) / candidates[i].weight;
    let offset = fastrand::usize(..candidates.len().max(1));
    let n = candidates.len();
    (0..n)
        .map(|k| (offset + k) % n)
        .filter(|&i| usable(i))
        .min_by(|&a, &b| score(a).total_cmp(&score(b)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(weight: f64, in_flight: u32) -> Candidate {
        Candidate { weight, in_flight }
    }

    #[test]
    fn round_robin_cycles_over_routable_targets() {
        let b = Balancer::new(Balance::RoundRobin);
        let cands = [c(1.0, 0), c(0.0, 0), c(1.0, 0)];
        let picks: Vec<_> = (0..6)
            .map(|_| b.pick(&cands, Tried::default()).unwrap())
            .collect();
        assert!(picks.iter().all(|&i| i != 1));
        assert_eq!(picks.iter().filter(|&&i| i == 0).count(), 3);
    }

    #[test]
    fn untried_targets_come_first_then_tried_ones() {
        let b = Balancer::new(Balance::RoundRobin);
        let cands = [c(1.0, 0), c(1.0, 0)];
        let mut tried = Tried::default();
        tried.insert(0);
        for _ in 0..10 {
            assert_eq!(b.pick(&cands, tried), Some(1));
        }
        tried.insert(1);
        assert!(b.pick(&cands, tried).is_some());
        assert_eq!(b.pick(&[c(0.0, 0)], Tried::default()), None);
    }

    #[test]
    fn least_request_prefers_idle_targets() {
        let b = Balancer::new(Balance::LeastRequest);
        let cands = [c(1.0, 5), c(1.0, 1), c(1.0, 3)];
        for _ in 0..10 {
            assert_eq!(b.pick(&cands, Tried::default()), Some(1));
        }
    }

    #[test]
    fn slow_start_weight_shapes_the_share() {
        let b = Balancer::new(Balance::RoundRobin);
        let cands = [c(1.0, 0), c(0.1, 0)];
        let ramping = (0..10_000)
            .filter(|_| b.pick(&cands, Tried::default()) == Some(1))
            .count();
        // Expected share 0.1 / 1.1 ≈ 9%.
        assert!(
            (500..1400).contains(&ramping),
            "ramping target got {ramping}"
        );
    }

    #[test]
    fn tried_set_ignores_indices_past_64() {
        let mut t = Tried::default();
        t.insert(3);
        t.insert(70);
        assert!(t.contains(3));
        assert!(!t.contains(70));
    }
}
