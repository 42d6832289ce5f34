//! The outage hold (R6): when no target of an upstream can take a request — none is routable,
//! or every one refused the connection before a byte was written — the request waits for a
//! target to come back instead of failing.
//!
//! One mechanism for a crash, a restart of every replica and an app that is not up yet when
//! gatewise starts: the wait is bounded by the upstream's `outage_hold` (counted from the first
//! time the request was held, never past the route deadline) and by `outage_hold_queue`
//! requests held at once; past either, the fast 503 `destination_unavailable` with `Retry-After`.
//! Held requests wait on the upstream's health `Notify` (no polling). Once woken they leave in
//! waves: a fair semaphore of [`RELEASE_AT_ONCE`] turns, each kept until the request's next
//! attempt has ended, hands the backlog to a returning upstream in arrival order (tokio's
//! `Notify` wakes its oldest waiter first, the semaphore grants turns in the order asked) and a
//! wave at a time: a restarted app with a short accept queue drops the connects of a backlog
//! sent at once (measured with `scripts/outage-load.py`). Then they go through the normal pick,
//! so `max_connections` and the wait queue pace them further.
//!
//! Here: [`Held`], the time one request spent held (it lives in the request's log record, so a
//! client that hangs up mid-hold still logs how long it waited); [`Hold`], the upstream's count
//! of held requests and its counters; and the hold's side of [`Upstream`].

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::health::active::{jittered, FAST_RECOVERY_INTERVAL};
use super::Upstream;
use crate::cause::{Cause, Phase, UpstreamError};

/// Held requests of one upstream that may be between their wake-up and the end of their next
/// attempt at once: a returning upstream gets the backlog in waves of this size.
pub const RELEASE_AT_ONCE: usize = 16;

/// The time one request spent in the outage hold.
#[derive(Debug, Default)]
pub struct Held {
    /// When the request was first held: the `outage_hold` bound counts from here.
    first: Option<Instant>,
    /// Set while the request is held now.
    since: Option<Instant>,
    /// Held time of earlier, finished holds.
    done: Duration,
    /// This request's turn to leave the hold, kept until its next attempt ends.
    turn: Option<OwnedSemaphorePermit>,
}

impl Held {
    /// Total time held, the current hold included.
    pub fn total(&self) -> Duration {
        self.done + self.since.map_or(Duration::ZERO, |s| s.elapsed())
    }

    /// Whether the request was ever held.
    pub fn ever(&self) -> bool {
        self.first.is_some()
    }

    /// Starts (or continues) a hold now; returns when the request was first held.
    pub(super) fn start(&mut self, now: Instant) -> Instant {
        self.since.get_or_insert(now);
        *self.first.get_or_insert(now)
    }

    /// Ends the current hold, if any.
    pub(super) fn stop(&mut self) {
        if let Some(since) = self.since.take() {
            self.done += since.elapsed();
        }
    }

    /// The attempt that followed a release from the hold has ended: the next held request may
    /// go.
    pub fn end_turn(&mut self) {
        self.turn = None;
    }
}

/// Why a request was turned away from the hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldReject {
    /// It waited `outage_hold` (or until the route deadline) and no target came back.
    Timeout,
    /// `outage_hold_queue` requests were held already.
    Full,
}

impl HoldReject {
    pub const ALL: [HoldReject; 2] = [HoldReject::Timeout, HoldReject::Full];

    pub fn as_str(self) -> &'static str {
        match self {
            HoldReject::Timeout => "hold_timeout",
            HoldReject::Full => "hold_full",
        }
    }
}

/// One upstream's hold: requests held now, their release turns, and counters for `/metrics`.
#[derive(Debug)]
pub struct Hold {
    depth: AtomicUsize,
    /// Fair (FIFO): turns are granted in the order they were asked for.
    release: Arc<Semaphore>,
    entered: AtomicU64,
    rejected: [AtomicU64; HoldReject::ALL.len()],
}

impl Default for Hold {
    fn default() -> Self {
        Self {
            depth: AtomicUsize::new(0),
            release: Arc::new(Semaphore::new(RELEASE_AT_ONCE)),
            entered: AtomicU64::new(0),
            rejected: Default::default(),
        }
    }
}

impl Hold {
    /// Requests held now.
    pub fn depth(&self) -> usize {
        self.depth.load(Ordering::Relaxed)
    }

    /// Requests that were held, each counted once however often it re-entered the hold.
    pub fn entered(&self) -> u64 {
        self.entered.load(Ordering::Relaxed)
    }

    pub fn rejections(&self, why: HoldReject) -> u64 {
        self.rejected[why as usize].load(Ordering::Relaxed)
    }

    pub(super) fn reject(&self, why: HoldReject) {
        self.rejected[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// A place in the hold if fewer than `max` requests are held; `first` says whether this
    /// request is held for the first time (it is counted once).
    pub(super) fn try_enter(&self, max: usize, first: bool) -> Option<HoldSlot<'_>> {
        self.depth
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        if first {
            self.entered.fetch_add(1, Ordering::Relaxed);
        }
        Some(HoldSlot(&self.depth))
    }
}

/// A place in the hold, given back on drop (also when the client hangs up mid-hold).
pub(super) struct HoldSlot<'a>(&'a AtomicUsize);

impl Drop for HoldSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Upstream {
    /// R6 for a request whose every attempt was refused before a byte was written while targets
    /// still look routable (the checks have not seen the crash yet): it waits in the hold for a
    /// health change or a passing check, then tries again. Same bounds as the hold in
    /// [`acquire`](Self::acquire).
    pub async fn wait_for_return(
        &self,
        held: &mut Held,
        deadline: Instant,
    ) -> Result<(), UpstreamError> {
        let changed = self.changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let (slot, until) = self.enter_hold(held, deadline)?;
        // Without active checks nothing would announce the return: try again on the
        // fast-recovery pace instead (a refused connect costs next to nothing).
        let retry_at = match self.config.health {
            Some(_) => until,
            None => (Instant::now() + jittered(FAST_RECOVERY_INTERVAL)).min(until),
        };
        let woken = tokio::select! {
            () = changed => true,
            () = tokio::time::sleep_until(retry_at) => retry_at < until,
        };
        // Replaced by a reload: the caller moves to the successor at once.
        if woken && self.successor().is_some() {
            drop(slot);
            held.stop();
            return Ok(());
        }
        if woken {
            self.take_turn(held, until).await;
        }
        drop(slot);
        held.stop();
        if woken {
            Ok(())
        } else {
            Err(self.unavailable(held, Some(HoldReject::Timeout)))
        }
    }

    /// A place in the outage hold and when the wait ends, or the 503 when the hold is off,
    /// full, or this request's `outage_hold` is used up.
    pub(super) fn enter_hold(
        &self,
        held: &mut Held,
        deadline: Instant,
    ) -> Result<(HoldSlot<'_>, Instant), UpstreamError> {
        let bound = self.config.outage_hold;
        if bound.is_zero() {
            return Err(self.unavailable(held, None));
        }
        let now = Instant::now();
        let first_time = !held.ever();
        let until = (held.start(now) + bound).min(deadline);
        if until <= now {
            held.stop();
            return Err(self.unavailable(held, Some(HoldReject::Timeout)));
        }
        let Some(slot) = self
            .hold
            .try_enter(self.config.outage_hold_queue, first_time)
        else {
            held.stop();
            return Err(self.unavailable(held, Some(HoldReject::Full)));
        };
        if !self.pace.hurrying() {
            // Requests are held: probe fast so a returning target is seen at once (H6).
            self.update_pace();
        }
        Ok((slot, until))
    }

    /// Fast active checks while nothing serves: every target down, or requests held.
    pub(super) fn update_pace(&self) {
        self.pace
            .set_hurry(self.hold.depth() > 0 || !self.has_routable_target());
    }

    /// The fast 503: no target, after the hold (`why`) or with the hold off (`None`).
    pub(super) fn unavailable(&self, held: &Held, why: Option<HoldReject>) -> UpstreamError {
        let mut detail = format!("{}: no healthy target", self.name);
        if self.never_healthy() {
            detail.push_str(": it has never been healthy (no target passed a check since start)");
            if !self.warned_never_healthy.swap(true, Ordering::Relaxed) {
                tracing::warn!(upstream = %self.name, "upstream has never been healthy: requests wait up to outage_hold, then get 503");
            }
        }
        if let Some(why) = why {
            self.hold.reject(why);
            let ms = held.total().as_millis();
            match why {
                HoldReject::Timeout => detail.push_str(&format!("; held {ms}ms")),
                HoldReject::Full => detail.push_str(&format!(
                    "; outage hold full ({} requests held)",
                    self.config.outage_hold_queue
                )),
            }
        }
        UpstreamError::before_send(Cause::DestinationUnavailable, Phase::Queue, detail)
    }

    /// Waits (never past `until`) for this held request's turn to leave the hold.
    pub(super) async fn take_turn(&self, held: &mut Held, until: Instant) {
        if held.turn.is_none() {
            let turn = self.hold.release.clone().acquire_owned();
            if let Ok(Ok(turn)) = tokio::time::timeout_at(until, turn).await {
                held.turn = Some(turn);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn held_time_adds_up_and_counts_the_current_hold() {
        let mut held = Held::default();
        assert!(!held.ever());
        let t0 = Instant::now();
        assert_eq!(held.start(t0), t0);
        tokio::time::advance(Duration::from_millis(300)).await;
        assert_eq!(
            held.total(),
            Duration::from_millis(300),
            "ongoing hold counts"
        );
        held.stop();
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(
            held.total(),
            Duration::from_millis(300),
            "not held meanwhile"
        );
        // Held again: the bound still counts from the first hold.
        assert_eq!(held.start(Instant::now()), t0);
        tokio::time::advance(Duration::from_millis(200)).await;
        held.stop();
        assert_eq!(held.total(), Duration::from_millis(500));
    }

    #[test]
    fn the_hold_is_bounded_and_counts_each_request_once() {
        let hold = Hold::default();
        let a = hold.try_enter(2, true).expect("room");
        let b = hold.try_enter(2, false).expect("room");
        assert!(hold.try_enter(2, true).is_none(), "full at 2");
        assert_eq!((hold.depth(), hold.entered()), (2, 1));
        drop(a);
        drop(b);
        assert_eq!(hold.depth(), 0);
    }
}
