//! Upstreams: targets, their health, our own connection pool, and balancing.

pub mod balancer;
pub mod health;
pub mod io;
pub mod pool;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use crate::config::UpstreamConfig;
use balancer::{Balancer, Candidate, Tried};
use pool::{PoolSettings, TargetPool};

/// One `host:port` an upstream sends to.
pub struct Target {
    pub addr: Arc<str>,
    pub pool: TargetPool,
    in_flight: AtomicU32,
}

impl Target {
    fn new(addr: &str, settings: PoolSettings) -> Self {
        let addr: Arc<str> = Arc::from(addr);
        Self {
            pool: TargetPool::new(addr.clone(), settings),
            addr,
            in_flight: AtomicU32::new(0),
        }
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts a request in flight until the guard drops.
    pub fn start_request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }
}

/// A request in flight on a target; dropping it ends the count.
pub struct InFlight(Arc<Target>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A named pool of targets with one balancing policy.
pub struct Upstream {
    pub name: Arc<str>,
    pub config: UpstreamConfig,
    pub targets: Vec<Arc<Target>>,
    balancer: Balancer,
}

impl Upstream {
    pub fn new(name: &str, config: UpstreamConfig) -> Self {
        let settings = PoolSettings {
            connect_timeout: config.connect_timeout,
            idle_timeout: config.idle_timeout,
            max_idle: config.max_idle_per_target,
            max_response_header_bytes: config.max_response_header_bytes,
        };
        let targets = config
            .targets
            .iter()
            .map(|addr| Arc::new(Target::new(addr, settings.clone())))
            .collect();
        Self {
            name: Arc::from(name),
            balancer: Balancer::new(config.balance),
            config,
            targets,
        }
    }

    /// Picks a target for the next attempt, preferring ones not in `tried`.
    pub fn pick(&self, tried: Tried) -> Option<usize> {
        let mut candidates = [Candidate {
            weight: 0.0,
            in_flight: 0,
        }; 16];
        if self.targets.len() <= candidates.len() {
            let cands = &mut candidates[..self.targets.len()];
            self.fill_candidates(cands);
            self.balancer.pick(cands, tried)
        } else {
            let mut cands = vec![candidates[0]; self.targets.len()];
            self.fill_candidates(&mut cands);
            self.balancer.pick(&cands, tried)
        }
    }

    fn fill_candidates(&self, out: &mut [Candidate]) {
        for (slot, target) in out.iter_mut().zip(&self.targets) {
            *slot = Candidate {
                weight: 1.0,
                in_flight: target.in_flight(),
            };
        }
    }
}

impl Upstream {
    /// Whether any target may take traffic now.
    pub fn has_routable_target(&self) -> bool {
        !self.targets.is_empty()
    }
}
