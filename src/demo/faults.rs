//! The fault injector: every few seconds it breaks one upstream in one of four ways, in rotation,
//! and repairs it a few seconds later. Each fault is one that real deployments hit every day and
//! that a proxy should absorb without the client noticing.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::upstreams::{DemoUpstream, Mode};

/// Quiet time before the first fault (the health checks mark targets healthy meanwhile).
pub const WARMUP: Duration = Duration::from_millis(1500);
/// How long a fault lasts.
pub const FAULT_LENGTH: Duration = Duration::from_secs(3);
/// Quiet time between two faults.
pub const GAP: Duration = Duration::from_millis(1500);

/// The four faults, in the order they are injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The process dies: open connections reset, the port refuses; back on the same port later.
    Kill,
    /// The app is up but not ready: 503 on `/health` and on every request.
    NotReady,
    /// The app closes idle keep-alive connections after a few milliseconds (the keep-alive race).
    QuickClose,
    /// The app answers slower than the route's per-try timeout.
    Slow,
}

impl Fault {
    pub const ROTATION: [Fault; 4] = [Fault::Kill, Fault::NotReady, Fault::QuickClose, Fault::Slow];

    pub fn describe(self) -> &'static str {
        match self {
            Fault::Kill => "killed (connections reset, port refuses)",
            Fault::NotReady => "not ready (503 on /health and requests)",
            Fault::QuickClose => "closes idle keep-alive connections after 8ms",
            Fault::Slow => "slow (1.5s, past the 300ms per-try timeout)",
        }
    }
}

/// What the summary line shows about faults.
#[derive(Default)]
pub struct FaultStatus {
    /// e.g. `up-2 killed (...)`; `None` between faults.
    pub current: Option<String>,
    pub injected: u32,
}

/// Injects faults in rotation over `upstreams` until the task is dropped.
pub async fn inject(upstreams: Vec<Arc<DemoUpstream>>, status: Arc<Mutex<FaultStatus>>) {
    tokio::time::sleep(WARMUP).await;
    for round in 0usize.. {
        let fault = Fault::ROTATION[round % Fault::ROTATION.len()];
        // Walk the upstreams too, so each fault hits a different one over time.
        let up = &upstreams[round % upstreams.len()];
        {
            let mut s = status.lock().expect("fault status lock");
            s.current = Some(format!("{} {}", up.name, fault.describe()));
            s.injected += 1;
        }
        match fault {
            Fault::Kill => up.kill(),
            Fault::NotReady => up.set_mode(Mode::NotReady),
            Fault::QuickClose => up.set_mode(Mode::QuickClose),
            Fault::Slow => up.set_mode(Mode::Slow),
        }
        tokio::time::sleep(FAULT_LENGTH).await;
        if fault == Fault::Kill {
            if let Err(e) = up.restart().await {
                eprintln!("demo: could not restart {} on {}: {e}", up.name, up.addr);
            }
        } else {
            up.set_mode(Mode::Normal);
        }
        status.lock().expect("fault status lock").current = None;
        tokio::time::sleep(GAP).await;
    }
}
