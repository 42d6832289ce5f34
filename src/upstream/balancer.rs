//! Picking a target for one attempt: round robin, least request or peak EWMA (power of two
//! choices by latency × load), over the targets that may take traffic, preferring targets this
//! request has not tried yet.

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
    /// Decaying latency estimate in seconds (`peak_ewma` only; 0 for the other policies).
    pub latency: f64,
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

    /// Whether picks read [`Candidate::latency`] (the others need not compute it).
    pub fn reads_latency(&self) -> bool {
        self.policy == Balance::PeakEwma
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
            Balance::PeakEwma => peak_ewma(candidates, &usable),
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

/// Power of two choices: two distinct usable targets at random, the one with the lower cost wins.
/// Cost = latency estimate × (requests in flight + 1), so a slow target and a target that has
/// stopped answering (its in-flight count only grows) get less. Two random choices rather than
/// the global minimum: every gateway that reads the same estimates would otherwise send its next
/// requests to the same target at once.
///
/// Slow start caps a ramping target's share at its weight: it enters the draw only with a
/// probability equal to its weight, so a fast target that has just come back is not handed every
/// request at once. (Dividing the cost by the weight would not: a target ten times faster than
/// the others would still win every pair at weight 0.1.)
fn peak_ewma(candidates: &[Candidate], usable: &dyn Fn(usize) -> bool) -> Option<usize> {
    // Reservoir sampling of two among the entrants, in one pass and without allocating.
    let (mut pair, mut seen) = ([usize::MAX; 2], 0usize);
    for i in (0..candidates.len()).filter(|&i| usable(i)) {
        let w = candidates[i].weight;
        if w < 1.0 && fastrand::f64() >= w {
            continue;
        }
        seen += 1;
        if seen <= 2 {
            pair[seen - 1] = i;
        } else if fastrand::usize(..seen) < 2 {
            pair[fastrand::usize(..2)] = i;
        }
    }
    let cost = |i: usize| candidates[i].latency * (f64::from(candidates[i].in_flight) + 1.0);
    match seen {
        // Every usable target is ramping and none entered: share by weight, as round robin does.
        0 => weighted_random(candidates, usable),
        1 => Some(pair[0]),
        _ if cost(pair[1]) < cost(pair[0]) => Some(pair[1]),
        _ => Some(pair[0]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(weight: f64, in_flight: u32) -> Candidate {
        Candidate {
            weight,
            in_flight,
            latency: 0.03,
        }
    }

    fn timed(latency: f64, in_flight: u32) -> Candidate {
        Candidate {
            weight: 1.0,
            in_flight,
            latency,
        }
    }

    #[test]
    fn peak_ewma_never_picks_the_costlier_of_two() {
        let b = Balancer::new(Balance::PeakEwma);
        // Target 0 answered slowly; 1 and 2 are fast, 2 is busier.
        let cands = [timed(3.0, 0), timed(0.002, 0), timed(0.002, 3)];
        let mut picks = [0usize; 3];
        for _ in 0..3000 {
            picks[b.pick(&cands, Tried::default()).unwrap()] += 1;
        }
        assert_eq!(picks[0], 0, "{picks:?}");
        // 1 wins every pair it is in (2 of 3 pairs); 2 wins only against 0.
        assert!(picks[1] > picks[2] * 3 / 2, "{picks:?}");
        assert!(picks[2] > 0, "{picks:?}");
    }

    #[test]
    fn peak_ewma_avoids_a_target_whose_requests_pile_up() {
        let b = Balancer::new(Balance::PeakEwma);
        // Same estimate, but target 0 has requests stuck in flight.
        let cands = [timed(0.03, 4), timed(0.03, 1), timed(0.03, 0)];
        for _ in 0..1000 {
            assert_ne!(b.pick(&cands, Tried::default()), Some(0));
        }
    }

    #[test]
    fn peak_ewma_caps_a_ramping_target_at_its_weight() {
        let b = Balancer::new(Balance::PeakEwma);
        // The ramping target is ten times faster, yet gets about its 10% weight, not everything.
        let ramping = Candidate {
            weight: 0.1,
            in_flight: 0,
            latency: 0.002,
        };
        let cands = [ramping, timed(0.02, 0)];
        let got = (0..10_000)
            .filter(|_| b.pick(&cands, Tried::default()) == Some(0))
            .count();
        assert!((600..1500).contains(&got), "ramping target got {got}");
        // Only ramping targets, none drawn: still a pick, by weight.
        let all_ramping = [Candidate {
            weight: 0.01,
            ..ramping
        }];
        assert_eq!(b.pick(&all_ramping, Tried::default()), Some(0));
        // Untried targets first.
        let mut tried = Tried::default();
        tried.insert(1);
        let full = [timed(1.0, 5), timed(0.001, 0)];
        let mut tried0 = Tried::default();
        tried0.insert(0);
        assert_eq!(b.pick(&full, tried0), Some(1));
        assert_eq!(b.pick(&full, tried), Some(0));
        assert_eq!(
            b.pick(&[c(0.0, 0), timed(1.0, 9)], Tried::default()),
            Some(1)
        );
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
