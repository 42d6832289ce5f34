//! The outage hold (R6): when no target of an upstream can take a request — none is routable,
//! or every one refused the connection before a byte was written — the request waits for a
//! target to come back instead of failing.
//!
//! One mechanism for a crash, a restart of every replica and an app that is not up yet when
//! gatewise starts: the wait is bounded by the upstream's `outage_hold` (counted from the first
//! time the request was held, never past the route deadline) and by `outage_hold_queue`
//! requests held at once; past either, the fast 503 `destination_unavailable` with `Retry-After`.
//! Held requests wait on the upstream's health `Notify` (no polling) and, once a target is back,
//! go through the normal pick, so `max_connections` and the wait queue pace them.
//!
//! This file keeps the bookkeeping: [`Held`], the time one request spent held (it lives in the
//! request's log record, so a client that hangs up mid-hold still logs how long it waited), and
//! [`Hold`], the upstream's count of held requests and its counters.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// The time one request spent in the outage hold.
#[derive(Debug, Default, Clone, Copy)]
pub struct Held {
    /// When the request was first held: the `outage_hold` bound counts from here.
    first: Option<Instant>,
    /// Set while the request is held now.
    since: Option<Instant>,
    /// Held time of earlier, finished holds.
    done: Duration,
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

/// One upstream's hold: requests held now, and counters for `/metrics`.
#[derive(Debug, Default)]
pub struct Hold {
    depth: AtomicUsize,
    entered: AtomicU64,
    rejected: [AtomicU64; HoldReject::ALL.len()],
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
