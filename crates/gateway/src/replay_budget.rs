//! Each user's budget of history replays on this node. A user's connections (WebSocket and
//! SSE resumes, long-polls with `since`) may be sent at most [`READS_PER_MINUTE`] full replays
//! (`--max-replay-bytes` each) of history per minute; beyond, a resume gets `resync`
//! (`too_many`) without a read. Without it, one account looping over an old id kept Redis busy
//! reading megabytes for it: 20 polling loops of 4 MB answers took 12 s of Redis CPU in 20 s,
//! and another user's reads went from 2 to 126 ms (hostile-client probe, 2026-12-02).
//!
//! A read reserves a full replay before it starts (so concurrent reads cannot overdraw the
//! budget) and is charged what it returned once it is done.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::registry::UserId;

/// Full replays a user may be sent per minute per node.
pub(crate) const READS_PER_MINUTE: u64 = 16;

/// The budget's window.
const WINDOW: Duration = Duration::from_secs(60);

/// Users tracked before old windows are swept.
const SWEEP_ABOVE: usize = 4096;

/// Bytes of replay per user per minute.
pub(crate) struct ReplayBudget {
    max_read: u64,
    users: Mutex<Users>,
}

#[derive(Default)]
struct Users {
    windows: HashMap<UserId, Window>,
    swept: Option<Instant>,
}

struct Window {
    start: Instant,
    bytes: u64,
}

/// A read reserved in a user's budget; [`Reserved::settle`] charges what it returned.
#[must_use = "settle the reservation with the bytes read"]
pub(crate) struct Reserved<'a> {
    budget: &'a ReplayBudget,
    user: UserId,
    start: Instant,
}

impl ReplayBudget {
    /// A budget of [`READS_PER_MINUTE`] reads of `max_replay_bytes` per user.
    pub(crate) fn new(max_replay_bytes: usize) -> Self {
        ReplayBudget {
            max_read: u64::try_from(max_replay_bytes).unwrap_or(u64::MAX).max(1),
            users: Mutex::new(Users::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Users> {
        // Every critical section is a few map updates: a poisoned lock is still consistent.
        self.users.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reserve a read for `user` at `now`; `None` when the user's budget is spent.
    pub(crate) fn reserve(&self, user: UserId, now: Instant) -> Option<Reserved<'_>> {
        let mut users = self.lock();
        users.sweep(now);
        let window = users.windows.entry(user).or_insert(Window {
            start: now,
            bytes: 0,
        });
        if now.duration_since(window.start) >= WINDOW {
            *window = Window {
                start: now,
                bytes: 0,
            };
        }
        let limit = self.max_read.saturating_mul(READS_PER_MINUTE);
        if window.bytes.saturating_add(self.max_read) > limit {
            return None;
        }
        window.bytes += self.max_read;
        Some(Reserved {
            budget: self,
            user,
            start: window.start,
        })
    }
}

impl Users {
    /// Forget users whose window has passed, at most once a window, once there are many.
    fn sweep(&mut self, now: Instant) {
        if self.windows.len() <= SWEEP_ABOVE
            || self.swept.is_some_and(|at| now.duration_since(at) < WINDOW)
        {
            return;
        }
        self.windows
            .retain(|_, w| now.duration_since(w.start) < WINDOW);
        self.swept = Some(now);
    }
}

impl Reserved<'_> {
    /// The read returned `bytes`: give back the rest of the reservation.
    pub(crate) fn settle(self, bytes: usize) {
        let bytes = u64::try_from(bytes).unwrap_or(u64::MAX);
        let refund = self.budget.max_read.saturating_sub(bytes);
        let mut users = self.budget.lock();
        // Only into the window it was reserved in (a new window starts at zero).
        if let Some(w) = users.windows.get_mut(&self.user) {
            if w.start == self.start {
                w.bytes = w.bytes.saturating_sub(refund);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_reads_are_charged_what_they_returned_and_large_ones_run_out() {
        let budget = ReplayBudget::new(1000);
        let t0 = Instant::now();
        for _ in 0..100 {
            budget.reserve(9, t0).unwrap().settle(10);
        }
        for _ in 0..READS_PER_MINUTE - 1 {
            budget.reserve(9, t0).unwrap().settle(1000);
        }
        assert!(
            budget.reserve(9, t0).is_none(),
            "1,000 + 15,000 bytes spent"
        );
        assert!(
            budget.reserve(10, t0).is_some(),
            "another user's budget is its own"
        );
        let later = t0 + WINDOW;
        assert!(budget.reserve(9, later).is_some(), "a new window");
    }

    #[test]
    fn concurrent_reservations_cannot_overdraw() {
        let budget = ReplayBudget::new(1000);
        let t0 = Instant::now();
        let held: Vec<_> = (0..READS_PER_MINUTE)
            .map(|_| budget.reserve(9, t0).unwrap())
            .collect();
        assert!(budget.reserve(9, t0).is_none());
        held.into_iter().for_each(|r| r.settle(0));
        assert!(budget.reserve(9, t0).is_some());
    }

    #[test]
    fn old_windows_are_swept_once_there_are_many() {
        let budget = ReplayBudget::new(1000);
        let t0 = Instant::now();
        for user in 0..=SWEEP_ABOVE as u64 {
            budget.reserve(user, t0).unwrap().settle(0);
        }
        let _ = budget.reserve(1, t0 + WINDOW);
        assert_eq!(budget.lock().windows.len(), 1);
    }
}
