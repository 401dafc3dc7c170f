//! The Redis broker's link state, shared by the handle, the subscriber and the probe: whether
//! the pub/sub connection is subscribed, when the self-probe last came back, and the Redis time
//! known delivered (the gap-repair point of users without a delivered event). A leaf: it knows
//! nothing of the tasks that update it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Link state behind methods (atomics, no locks).
pub(super) struct State {
    /// Time base of the probe timestamps.
    base: Instant,
    /// The pub/sub connection is up and every wanted channel is subscribed.
    subscribed: AtomicBool,
    /// Nanoseconds since `base` since when every link's probe has come back (0: not yet).
    last_probe_back: AtomicU64,
    /// Newest Redis time (ms) known to have been delivered on the subscription.
    delivered_ms: AtomicU64,
    /// The first such time (0: none yet).
    first_delivered_ms: AtomicU64,
    /// The node is exiting: its presence must no longer count.
    left: AtomicBool,
}

impl State {
    /// Nothing subscribed, no probe back yet.
    pub(super) fn new() -> Self {
        State {
            base: Instant::now(),
            subscribed: AtomicBool::new(false),
            last_probe_back: AtomicU64::new(0),
            delivered_ms: AtomicU64::new(0),
            first_delivered_ms: AtomicU64::new(0),
            left: AtomicBool::new(false),
        }
    }

    /// Nanoseconds since the time base (the probe's clock).
    pub(super) fn now_nanos(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Every wanted channel is subscribed on a live connection (or no longer is).
    pub(super) fn set_subscribed(&self, subscribed: bool) {
        self.subscribed.store(subscribed, Ordering::Release);
    }

    /// True while the pub/sub connection is up and subscribed.
    pub(super) fn is_subscribed(&self) -> bool {
        self.subscribed.load(Ordering::Acquire)
    }

    /// Every link's probe came back at `at` or later (ns of [`State::now_nanos`]): the
    /// oldest of the links' latest returns.
    pub(super) fn probes_back_since(&self, at: u64) {
        self.last_probe_back.store(at, Ordering::Release);
    }

    /// True when a probe came back within `timeout`.
    pub(super) fn probe_fresh(&self, timeout: Duration) -> bool {
        let back = self.last_probe_back.load(Ordering::Acquire);
        back != 0 && self.now_nanos().saturating_sub(back) < timeout.as_nanos() as u64
    }

    /// Everything published before Redis time `ms` was delivered (never moves back).
    pub(super) fn delivered_until(&self, ms: u64) {
        self.delivered_ms.fetch_max(ms, Ordering::AcqRel);
        let _ =
            self.first_delivered_ms
                .compare_exchange(0, ms, Ordering::AcqRel, Ordering::Acquire);
    }

    /// The first Redis time known delivered (0: none yet): the earliest repair point of users
    /// that were wanted before any was known.
    pub(super) fn first_delivered_ms(&self) -> u64 {
        self.first_delivered_ms.load(Ordering::Acquire)
    }

    /// The newest Redis time known delivered (0: none).
    pub(super) fn delivered_ms(&self) -> u64 {
        self.delivered_ms.load(Ordering::Acquire)
    }

    /// The node is exiting (never undone).
    pub(super) fn leave(&self) {
        self.left.store(true, Ordering::Release);
    }

    /// True once the node is exiting.
    pub(super) fn has_left(&self) -> bool {
        self.left.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_delivered_time_stays_while_the_newest_moves_on() {
        let state = State::new();
        assert_eq!(state.first_delivered_ms(), 0);
        state.delivered_until(100);
        state.delivered_until(300);
        state.delivered_until(200);
        assert_eq!(
            (state.first_delivered_ms(), state.delivered_ms()),
            (100, 300)
        );
    }
}
