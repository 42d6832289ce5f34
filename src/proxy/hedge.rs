//! Hedged requests (route `hedge_after`): when the first attempt of an idempotent request with a
//! replayable body has not answered after `hedge_after`, a second attempt starts on another
//! target. The first good answer (a response whose status is not in `retry_on_status`) wins and
//! the other attempt is cancelled; when one fails, the other is waited for. A hedge spends one
//! retry from the route's budget and is an attempt like any other: logged (`"hedge": true`),
//! counted, and seen by health and the latency estimate.

use std::sync::Arc;
use std::time::Duration;

use http::header::HOST;
use http::Request;
use tokio::time::Instant;

use super::attempt::{self, AttemptOutcome};
use super::retry::RetryBudget;
use crate::body::UpstreamBody;
use crate::observe::access_log::Attempt;
use crate::observe::metrics::RouteMetrics;
use crate::upstream::TriedTargets;
use crate::upstream::{InFlight, Target, Upstream};

/// What a hedge needs, built by the forwarding loop only when the request may be hedged.
pub struct Hedge<'a> {
    pub after: Duration,
    /// The request for the hedge (same head, the replayable body again).
    pub req: Request<UpstreamBody>,
    /// The request had no `Host`: the hedge's is its own target's.
    pub host_from_target: bool,
    pub upstream: &'a Upstream,
    pub tried: TriedTargets,
    pub deadline: Instant,
    pub budget: &'a RetryBudget,
    pub metrics: &'a RouteMetrics,
    pub retry_on_status: &'a [u16],
}

/// What happened beyond the winning outcome when a hedge started.
pub struct Hedged {
    /// Both attempts of the pair, in the order they started.
    pub log: [Attempt; 2],
    /// The hedge's in-flight slot, when the hedge won (the caller holds the first's).
    pub won: Option<InFlight>,
    /// The hedge's target, so a retry after the pair prefers a third.
    pub hedge_target: u64,
}

/// [`attempt::run`], with a hedge after `hedge.after` when one is given and can be had.
pub async fn run(
    target: Arc<Target>,
    req: Request<UpstreamBody>,
    per_try: Duration,
    hedge: Option<Hedge<'_>>,
) -> (
    AttemptOutcome,
    Option<Request<UpstreamBody>>,
    Option<Hedged>,
) {
    let Some(mut h) = hedge else {
        let (outcome, unsent) = attempt::run(target, req, per_try).await;
        return (outcome, unsent, None);
    };
    let started = Instant::now();
    let first_target = target.clone();
    let first = attempt::run(target, req, per_try);
    tokio::pin!(first);
    tokio::select! {
        (outcome, unsent) = &mut first => return (outcome, unsent, None),
        () = tokio::time::sleep(h.after) => {}
    }
    // No answer yet: a hedge on another target with a free slot, if the budget allows one.
    let second = match h.upstream.try_acquire_untried(h.tried) {
        Some(picked) if h.budget.try_spend(Instant::now()) => picked,
        _ => {
            let (outcome, unsent) = first.await;
            return (outcome, unsent, None);
        }
    };
    let (second, slot) = second;
    if h.host_from_target {
        if let Ok(v) = http::HeaderValue::from_str(&second.addr) {
            h.req.headers_mut().insert(HOST, v);
        }
    }
    tracing::debug!(target = %second.addr, after = ?h.after, "no answer yet: hedging");
    let per_try_hedge = per_try
        .saturating_sub(started.elapsed())
        .min(h.deadline.saturating_duration_since(Instant::now()));
    let hedge_started = Instant::now();
    let hedged = attempt::run(second.clone(), h.req, per_try_hedge);
    tokio::pin!(hedged);
    let good = |o: &AttemptOutcome| !o.asks_retry(h.retry_on_status);
    // An attempt that ended badly is reported as it is, and the other one is waited for.
    let ended_badly = |o: &AttemptOutcome, hedge: bool| {
        o.report(h.upstream, h.metrics, h.retry_on_status);
        Attempt {
            hedge,
            ..o.log_entry()
        }
    };

    let (winner, unsent, loser, hedge_won) = tokio::select! {
        (a, unsent) = &mut first => {
            if good(&a) {
                (a, unsent, cancelled(&second, hedge_started, true), false)
            } else {
                let loser = ended_badly(&a, false);
                let (b, unsent) = hedged.await;
                (b, unsent, loser, true)
            }
        }
        (b, unsent) = &mut hedged => {
            if good(&b) {
                (b, unsent, cancelled(&first_target, started, false), true)
            } else {
                let loser = ended_badly(&b, true);
                let (a, unsent) = first.await;
                (a, unsent, loser, false)
            }
        }
    };
    let won = Attempt {
        hedge: hedge_won,
        ..winner.log_entry()
    };
    let log = if hedge_won {
        [loser, won]
    } else {
        [won, loser]
    };
    let hedged = Hedged {
        log,
        won: hedge_won.then_some(slot),
        hedge_target: second.id,
    };
    (winner, unsent, Some(hedged))
}

/// The log entry of an attempt cancelled because the other one answered first.
///
/// A first attempt out-raced by a hedge that started `hedge_after` later is an outlier, and its
/// wait only a floor of its latency: its target's estimate takes it as a failure (at least
/// `FAILURE_PENALTY`), so `peak_ewma` routes around the target for a while. Taking the wait as
/// a plain sample would tell the balancer "about `hedge_after`", which a busy fast target soon
/// costs more than, and the slow target would keep getting requests to hedge. A cancelled hedge
/// started late and says nothing about its target.
fn cancelled(target: &Target, started: Instant, hedge: bool) -> Attempt {
    let waited = started.elapsed();
    if !hedge {
        target.latency.observe(waited, true, Instant::now());
    }
    Attempt {
        target: target.addr.clone(),
        cause: None,
        status: None,
        request_sent: true,
        reused: false,
        duration_ms: waited,
        hedge,
        cancelled: true,
    }
}
