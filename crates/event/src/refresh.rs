//! Which users' history TTLs a publisher refreshed recently, so that a user it keeps publishing
//! to gets the two TTL commands once per refresh interval instead of on every event.
//!
//! Two generations of user ids, each at most a third of the interval long: a user is skipped
//! only while it is in one of them, so never longer than the interval after its refresh.
//! Memory is bounded: a generation that reaches its capacity is retired early (which only
//! makes refreshes more frequent, never rarer).

use std::collections::HashSet;
use std::time::{Duration, Instant};

/// Users per generation before it is retired early (two generations: at most twice this).
const CAPACITY: usize = 100_000;

/// Recently refreshed users; see the module docs.
#[derive(Debug)]
pub(crate) struct Refreshes {
    generation: Duration,
    started: Instant,
    current: HashSet<u64>,
    previous: HashSet<u64>,
    capacity: usize,
}

impl Refreshes {
    /// Refresh each user at least once per `interval` (zero: on every event).
    pub(crate) fn new(interval: Duration, now: Instant) -> Refreshes {
        Refreshes::with_capacity(interval, now, CAPACITY)
    }

    fn with_capacity(interval: Duration, now: Instant, capacity: usize) -> Refreshes {
        Refreshes {
            generation: interval / 3,
            started: now,
            current: HashSet::new(),
            previous: HashSet::new(),
            capacity,
        }
    }

    /// Whether `user`'s TTLs must be refreshed by this publish (and record that they are).
    pub(crate) fn due(&mut self, user: u64, now: Instant) -> bool {
        if self.generation.is_zero() {
            return true;
        }
        let age = now.saturating_duration_since(self.started);
        if age >= self.generation || self.current.len() >= self.capacity {
            // The retired generation stays only if it started at most two generations ago,
            // so anything it holds was refreshed less than three generations (the interval)
            // before the current generation ends.
            self.previous = if age < 2 * self.generation {
                std::mem::take(&mut self.current)
            } else {
                self.current.clear();
                HashSet::new()
            };
            self.started = now;
        }
        if self.current.contains(&user) || self.previous.contains(&user) {
            return false;
        }
        self.current.insert(user);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_is_refreshed_once_per_interval_at_most_and_at_least() {
        let t0 = Instant::now();
        let interval = Duration::from_secs(30);
        let mut r = Refreshes::new(interval, t0);
        assert!(r.due(9, t0));
        assert!(!r.due(9, t0 + Duration::from_secs(1)));
        assert!(r.due(10, t0 + Duration::from_secs(1)));
        // Published to continuously: never skipped for an interval or more after a refresh.
        let mut last_refresh = t0;
        for s in 1..600u64 {
            let now = t0 + Duration::from_millis(s * 250);
            if r.due(9, now) {
                assert!(now - last_refresh <= interval, "refreshed late at {s}");
                last_refresh = now;
            } else {
                assert!(now - last_refresh < interval, "skipped at {s}");
            }
        }
    }

    #[test]
    fn sparse_publishes_are_refreshed_every_time() {
        let t0 = Instant::now();
        let mut r = Refreshes::new(Duration::from_secs(30), t0);
        for s in 0..10u64 {
            assert!(r.due(9, t0 + Duration::from_secs(s * 31)));
        }
        let mut every = Refreshes::new(Duration::ZERO, t0);
        assert!(every.due(9, t0));
        assert!(every.due(9, t0));
    }

    #[test]
    fn memory_is_bounded_and_a_full_generation_only_refreshes_sooner() {
        let t0 = Instant::now();
        let mut r = Refreshes::with_capacity(Duration::from_secs(30), t0, 4);
        for user in 0..100 {
            assert!(r.due(user, t0));
            assert!(r.current.len() + r.previous.len() <= 8);
        }
        // User 0 fell out of both generations: refreshed again, early but safe.
        assert!(r.due(0, t0));
    }
}
