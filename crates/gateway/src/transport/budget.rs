//! The budget of frames a client may send: the protocol is receive-only (clients send pongs and
//! maybe a keep-alive), so a client sending more than `--client-frame-rate` frames in a
//! one-second window is flooding and is closed with 1008. This bounds the CPU a client costs
//! and the pongs it can make the server queue.

use tokio::time::{Duration, Instant};

/// A fixed one-second window of frames.
pub(super) struct FrameBudget {
    window_start: Instant,
    count: u32,
    max: u32,
}

impl FrameBudget {
    /// A fresh window starting at `now`, allowing `max` frames per window.
    pub(super) fn new(now: Instant, max: u32) -> Self {
        FrameBudget {
            window_start: now,
            count: 0,
            max,
        }
    }

    /// Count one frame received at `now`; false when the client is over its budget.
    pub(super) fn admit(&mut self, now: Instant) -> bool {
        if now.duration_since(self.window_start) >= Duration::from_secs(1) {
            self.window_start = now;
            self.count = 0;
        }
        self.count = self.count.saturating_add(1);
        self.count <= self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_refills_each_second() {
        let t0 = Instant::now();
        let mut budget = FrameBudget::new(t0, 32);
        for _ in 0..32 {
            assert!(budget.admit(t0));
        }
        assert!(!budget.admit(t0 + Duration::from_millis(999)));
        assert!(budget.admit(t0 + Duration::from_secs(1)));
    }
}
