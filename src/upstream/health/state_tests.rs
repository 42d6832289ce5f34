//! Every transition of [`TargetHealth`], the ejection multiplier and cap, the slow-start ramp
//! and the pool-level helpers, all without a socket.

use super::*;

const SEC: Duration = Duration::from_secs(1);

/// rise 2, fall 2, eject after 3 failures for 10s × n up to 30s, 20s slow start.
fn policy(active_check: bool) -> Policy {
    Policy {
        active_check,
        rise: 2,
        fall: 2,
        consecutive_failures: 3,
        base_ejection: 10 * SEC,
        max_ejection: 30 * SEC,
        slow_start: 20 * SEC,
    }
}

#[derive(Debug, Clone, Copy)]
enum Step {
    Pass,
    Fail,
    Ok,
    Err,
    /// A traffic failure the pool refuses to eject for.
    ErrNoRoom,
    Drain,
    Back,
    Tick,
    /// The caller says no other target of the pool is routable (fast recovery applies)...
    PoolDown,
    /// ...or that one is again.
    PoolUp,
    /// The caller says the pool already serves (a first pass ramps).
    PoolServes,
}

/// Applies `steps`, each at `t0 + secs`, and returns the last step's transition.
fn run(h: &mut TargetHealth, t0: Instant, steps: &[(u64, Step)]) -> Option<Transition> {
    let mut last = None;
    for &(secs, step) in steps {
        let now = t0 + Duration::from_secs(secs);
        last = match step {
            Step::Pass => h.active_check(true, now),
            Step::Fail => h.active_check(false, now),
            Step::Ok => h.traffic(true, now, true),
            Step::Err => h.traffic(false, now, true),
            Step::ErrNoRoom => h.traffic(false, now, false),
            Step::Drain => h.draining(true, now),
            Step::Back => h.draining(false, now),
            Step::Tick => h.tick(now),
            Step::PoolDown => {
                h.set_pool_down(true);
                None
            }
            Step::PoolUp => {
                h.set_pool_down(false);
                None
            }
            Step::PoolServes => {
                h.set_ramp_first(true);
                None
            }
        };
    }
    last
}

use Step::*;

/// (name, active check?, steps, last transition as (from, to) or None, final state).
type Row = (
    &'static str,
    bool,
    &'static [(u64, Step)],
    Option<(&'static str, &'static str)>,
    &'static str,
);

#[rustfmt::skip]
const TABLE: &[Row] = &[
    ("no check starts healthy", false, &[], None, "healthy"),
    ("check starts unhealthy", true, &[], None, "unhealthy"),
    ("first failing check: still unhealthy", true, &[(0, Fail)], None, "unhealthy"),
    ("first pass: healthy at once", true, &[(0, Pass)], Some(("unhealthy", "healthy")), "healthy"),
    ("fails before the first pass: one pass still enough", true, &[(0, Fail), (1, Fail), (2, Pass)], Some(("unhealthy", "healthy")), "healthy"),
    ("one failed check below fall", true, &[(0, Pass), (1, Fail)], None, "healthy"),
    ("fall failed checks", true, &[(0, Pass), (1, Fail), (2, Fail)], Some(("healthy", "unhealthy")), "unhealthy"),
    ("a pass resets the fall count", true, &[(0, Pass), (1, Fail), (2, Pass), (3, Fail)], None, "healthy"),
    ("after fall, one pass is not rise", true, &[(0, Pass), (1, Fail), (2, Fail), (3, Pass)], None, "unhealthy"),
    ("after fall, rise passes: starting", true, &[(0, Pass), (1, Fail), (2, Fail), (3, Pass), (4, Pass)], Some(("unhealthy", "starting")), "starting"),
    ("a fail resets the rise count", true, &[(0, Pass), (1, Fail), (2, Fail), (3, Pass), (4, Fail), (5, Pass)], None, "unhealthy"),
    ("starting ends after the window", true, &[(0, Pass), (1, Fail), (2, Fail), (3, Pass), (4, Pass), (24, Tick)], Some(("starting", "healthy")), "healthy"),
    ("starting, tick before the window ends", true, &[(0, Pass), (1, Fail), (2, Fail), (3, Pass), (4, Pass), (23, Tick)], None, "starting"),
    ("starting fails fall checks", true, &[(0, Pass), (1, Fail), (2, Fail), (3, Pass), (4, Pass), (5, Fail), (6, Fail)], Some(("starting", "unhealthy")), "unhealthy"),
    ("traffic failures below threshold", false, &[(0, Err), (1, Err)], None, "healthy"),
    ("consecutive traffic failures eject", false, &[(0, Err), (1, Err), (2, Err)], Some(("healthy", "ejected")), "ejected"),
    ("a success resets the failure count", false, &[(0, Err), (1, Err), (2, Ok), (3, Err), (4, Err)], None, "healthy"),
    ("pool refuses: stays routable", false, &[(0, Err), (1, Err), (2, ErrNoRoom)], None, "healthy"),
    ("pool refused, next failure with room ejects", false, &[(0, Err), (1, Err), (2, ErrNoRoom), (3, Err)], Some(("healthy", "ejected")), "ejected"),
    ("tick before ejection ends", false, &[(0, Err), (1, Err), (2, Err), (11, Tick)], None, "ejected"),
    ("ejection ends: starting", false, &[(0, Err), (1, Err), (2, Err), (12, Tick)], Some(("ejected", "starting")), "starting"),
    ("late tick past ejection and window: healthy", false, &[(0, Err), (1, Err), (2, Err), (40, Tick)], Some(("ejected", "healthy")), "healthy"),
    ("passing check does not end an ejection", true, &[(0, Pass), (1, Err), (2, Err), (3, Err), (4, Pass), (5, Pass)], None, "ejected"),
    ("traffic while ejected is ignored", false, &[(0, Err), (1, Err), (2, Err), (3, Err), (4, Err), (5, Err)], None, "ejected"),
    ("ejected then fall checks: unhealthy", true, &[(0, Pass), (1, Err), (2, Err), (3, Err), (4, Fail), (5, Fail)], Some(("ejected", "unhealthy")), "unhealthy"),
    ("checks saw the outage end: its ejection ends too", true, &[(0, Pass), (1, Err), (2, Err), (3, Err), (4, Fail), (5, Fail), (6, Pass), (7, Pass)], Some(("unhealthy", "starting")), "starting"),
    ("ejection expires while unhealthy: no transition", true, &[(0, Pass), (1, Err), (2, Err), (3, Err), (4, Fail), (5, Fail), (13, Tick)], None, "unhealthy"),
    ("recovers after ejection expired: starting", true, &[(0, Pass), (1, Err), (2, Err), (3, Err), (4, Fail), (5, Fail), (13, Tick), (14, Pass), (15, Pass)], Some(("unhealthy", "starting")), "starting"),
    ("traffic while unhealthy is ignored", true, &[(0, Fail), (1, Err), (2, Err), (3, Err)], None, "unhealthy"),
    ("starting target can be ejected", false, &[(0, Err), (1, Err), (2, Err), (12, Tick), (13, Err), (14, Err), (15, Err)], Some(("starting", "ejected")), "ejected"),
    ("healthy drains", false, &[(0, Drain)], Some(("healthy", "draining")), "draining"),
    ("unhealthy drains", true, &[(0, Drain)], Some(("unhealthy", "draining")), "draining"),
    ("ejected drains", false, &[(0, Err), (1, Err), (2, Err), (3, Drain)], Some(("ejected", "draining")), "draining"),
    ("draining comes back: starting", false, &[(0, Drain), (1, Back)], Some(("draining", "starting")), "starting"),
    ("unhealthy draining comes back: unhealthy", true, &[(0, Drain), (1, Back)], Some(("draining", "unhealthy")), "unhealthy"),
    ("checks while draining change no state", true, &[(0, Drain), (1, Pass)], None, "draining"),
    ("check passed while draining shows after back", true, &[(0, Drain), (1, Pass), (2, Back)], Some(("draining", "starting")), "starting"),
    ("traffic while draining is ignored", false, &[(0, Drain), (1, Err), (2, Err), (3, Err), (4, Back)], Some(("draining", "starting")), "starting"),
    ("ejection ending while draining stays draining", false, &[(0, Err), (1, Err), (2, Err), (3, Drain), (20, Tick)], None, "draining"),
    // Fast recovery (H6): with every target down, one pass brings a target back at full weight.
    ("pool down: one pass is enough, no ramp", true, &[(0, Pass), (1, Fail), (2, Fail), (3, PoolDown), (4, Pass)], Some(("unhealthy", "healthy")), "healthy"),
    ("pool down: the outage's ejection ends with the pass", true, &[(0, Pass), (1, Err), (2, Err), (3, Err), (4, Fail), (5, Fail), (6, PoolDown), (7, Pass)], Some(("unhealthy", "healthy")), "healthy"),
    ("pool serving again: rise applies", true, &[(0, Pass), (1, Fail), (2, Fail), (3, PoolDown), (3, PoolUp), (4, Pass)], None, "unhealthy"),
    ("pool down does not shorten fall", true, &[(0, Pass), (1, PoolDown), (2, Fail)], None, "healthy"),
    ("pool down: a failing check keeps it down", true, &[(0, Pass), (1, Fail), (2, Fail), (3, PoolDown), (4, Fail)], None, "unhealthy"),
    ("pool down: passive ejection alone is not ended by a pass", true, &[(0, Pass), (1, Err), (2, Err), (3, Err), (4, PoolDown), (5, Pass)], None, "ejected"),
    // Cold start: a first pass is at full weight unless the pool already serves.
    ("cold start: first pass at full weight", true, &[(0, Fail), (1, Pass)], Some(("unhealthy", "healthy")), "healthy"),
    ("first pass into a serving pool ramps", true, &[(0, PoolServes), (1, Pass)], Some(("unhealthy", "starting")), "starting"),
];

#[test]
fn transition_table() {
    let t0 = Instant::now();
    for &(name, active, steps, want, state) in TABLE {
        let mut h = TargetHealth::new(policy(active));
        let got = run(&mut h, t0, steps);
        let got = got.map(|t| (t.from.as_str(), t.to.as_str()));
        assert_eq!(got, want, "{name}: transition");
        assert_eq!(h.state().as_str(), state, "{name}: state");
    }
}

#[test]
fn reasons_name_what_happened() {
    let t0 = Instant::now();
    let mut h = TargetHealth::new(policy(true));
    assert_eq!(
        h.active_check(true, t0).unwrap().reason,
        Reason::FirstCheckPassed
    );
    h.active_check(false, t0);
    assert_eq!(
        h.active_check(false, t0).unwrap().reason,
        Reason::ChecksFailed { fall: 2 }
    );
    h.active_check(true, t0);
    assert_eq!(
        h.active_check(true, t0).unwrap().reason,
        Reason::ChecksPassed { rise: 2 }
    );
    assert_eq!(
        h.tick(t0 + 20 * SEC).unwrap().reason,
        Reason::SlowStartEnded
    );
    h.active_check(false, t0 + 21 * SEC);
    h.active_check(false, t0 + 21 * SEC);
    h.set_pool_down(true);
    assert_eq!(
        h.active_check(true, t0 + 22 * SEC).unwrap().reason,
        Reason::FastRecovery
    );
    h.traffic(false, t0, true);
    h.traffic(false, t0, true);
    let t = h.traffic(false, t0, true).unwrap();
    assert_eq!(
        t.reason,
        Reason::TrafficFailures {
            count: 3,
            ejected_for: 10 * SEC
        }
    );
    assert_eq!(
        t.to,
        State::Ejected {
            until: t0 + 10 * SEC
        }
    );
    assert_eq!(
        t.to_string(),
        "healthy -> ejected (3 consecutive traffic failures, ejected for 10000ms)"
    );
    let t = h.tick(t0 + 10 * SEC).unwrap();
    assert_eq!(t.reason, Reason::EjectionEnded);
    assert_eq!(
        t.to,
        State::Starting {
            since: t0 + 10 * SEC
        }
    );
    assert_eq!(
        h.draining(true, t0).unwrap().reason,
        Reason::DiscoveryDraining
    );
    assert_eq!(h.draining(false, t0).unwrap().reason, Reason::DiscoveryBack);
}

/// Ejects `h` with three failures at `at` and returns the ejection length.
fn eject(h: &mut TargetHealth, at: Instant) -> Duration {
    h.traffic(false, at, true);
    h.traffic(false, at, true);
    match h.traffic(false, at, true).map(|t| t.reason) {
        Some(Reason::TrafficFailures { ejected_for, .. }) => ejected_for,
        other => panic!("expected an ejection, got {other:?}"),
    }
}

#[test]
fn ejection_grows_with_repeats_and_is_capped() {
    let mut h = TargetHealth::new(policy(false));
    let mut now = Instant::now();
    let mut lengths = Vec::new();
    for _ in 0..5 {
        let d = eject(&mut h, now);
        lengths.push(d.as_secs());
        now += d;
        h.tick(now);
        // Back for a short while only, then failing again.
        now += SEC;
    }
    assert_eq!(lengths, [10, 20, 30, 30, 30]);
    assert_eq!(h.ejections(), 5);
}

#[test]
fn ejection_multiplier_resets_after_max_ejection_without_ejection() {
    let mut h = TargetHealth::new(policy(false));
    let t0 = Instant::now();
    assert_eq!(eject(&mut h, t0), 10 * SEC);
    h.tick(t0 + 10 * SEC);
    // Back at 10s; 29s later is not yet max_ejection (30s) since the return.
    assert_eq!(eject(&mut h, t0 + 39 * SEC), 20 * SEC);
    h.tick(t0 + 59 * SEC);
    // Back at 59s; at 89s it has been 30s: forgiven.
    assert_eq!(eject(&mut h, t0 + 89 * SEC), 10 * SEC);
    assert_eq!(h.ejections(), 1);
}

#[test]
fn passive_ejection_off_with_zero_threshold() {
    let mut p = policy(false);
    p.consecutive_failures = 0;
    let mut h = TargetHealth::new(p);
    let now = Instant::now();
    for _ in 0..100 {
        assert_eq!(h.traffic(false, now, true), None);
    }
    assert!(h.routable());
}

#[test]
fn weight_ramps_linearly_with_a_floor() {
    let t0 = Instant::now();
    let mut h = TargetHealth::new(policy(false));
    h.draining(true, t0);
    assert_eq!(h.weight(t0), 0.0);
    h.draining(false, t0);
    assert_eq!(h.state(), State::Starting { since: t0 });
    assert_eq!(h.weight(t0), SLOW_START_FLOOR);
    assert_eq!(
        h.weight(t0 + SEC),
        SLOW_START_FLOOR,
        "5% is under the floor"
    );
    assert!((h.weight(t0 + 5 * SEC) - 0.25).abs() < 1e-9);
    assert!((h.weight(t0 + 10 * SEC) - 0.5).abs() < 1e-9);
    assert_eq!(
        h.weight(t0 + 25 * SEC),
        1.0,
        "past the window before the tick"
    );
    assert_eq!(h.next_deadline(), Some(t0 + 20 * SEC));
    h.tick(t0 + 20 * SEC);
    assert_eq!(h.weight(t0 + 20 * SEC), 1.0);
    assert_eq!(h.next_deadline(), None);
    eject(&mut h, t0 + 21 * SEC);
    assert_eq!(h.weight(t0 + 21 * SEC), 0.0);
    assert_eq!(h.next_deadline(), Some(t0 + 31 * SEC));
}

#[test]
fn zero_slow_start_goes_straight_to_healthy() {
    let mut p = policy(false);
    p.slow_start = Duration::ZERO;
    let t0 = Instant::now();
    let mut h = TargetHealth::new(p);
    eject(&mut h, t0);
    let t = h.tick(t0 + 10 * SEC).unwrap();
    assert_eq!((t.from.as_str(), t.to), ("ejected", State::Healthy));
    assert_eq!(h.weight(t0 + 10 * SEC), 1.0);
    let mut added = TargetHealth::added(p, t0);
    assert_eq!(added.state(), State::Healthy);
    assert_eq!(added.tick(t0), None);
}

#[test]
fn added_target_ramps_from_its_first_pass() {
    let t0 = Instant::now();
    let mut h = TargetHealth::added(policy(true), t0);
    assert_eq!(h.state(), State::Unhealthy);
    let t = h.active_check(true, t0 + SEC).unwrap();
    assert_eq!(t.to, State::Starting { since: t0 + SEC });
    let h = TargetHealth::added(policy(false), t0);
    assert_eq!(h.state(), State::Starting { since: t0 });
}

#[test]
fn zero_rise_and_fall_mean_one() {
    let mut cfg = UpstreamConfig::new(vec!["a:1".into()]);
    let mut hc = crate::config::HealthConfig::http("/health");
    hc.rise = 0;
    hc.fall = 0;
    cfg.health = Some(hc);
    let p = Policy::from_upstream(&cfg);
    assert_eq!((p.active_check, p.rise, p.fall), (true, 1, 1));
    let p = Policy::from_upstream(&UpstreamConfig::new(vec![]));
    assert!(!p.active_check);
    assert_eq!(
        p.consecutive_failures,
        crate::config::defaults::CONSECUTIVE_FAILURES
    );
}
