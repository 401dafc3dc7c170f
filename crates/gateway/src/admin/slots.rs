//! The admin port's connection cap, with a reserved share.
//!
//! At most `max` connections are open, and at most `max - max / 8` (keeping at least one) of
//! them may be handling a complete publish request ("busy"); a publish beyond that is answered
//! 503. When a connection arrives at the cap, the open connection that has waited longest for
//! its request (idle keep-alive, or still sending its headers or body) is closed to make room;
//! busy ones are never closed. The reserved share guarantees there is always one to close, so a
//! new connection is always admitted: neither clients without the API key (refused from their
//! headers) nor key holders (capped in flight) can keep `/healthz` or `/metrics` from being
//! served.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use prometheus::{IntCounter, IntGauge};
use tokio::sync::Notify;

/// The open admin connections.
pub(crate) struct Slots {
    max: usize,
    max_busy: usize,
    epoch: Instant,
    next_id: AtomicU64,
    open: Mutex<Open>,
    gauge: IntGauge,
    evicted: IntCounter,
}

#[derive(Default)]
struct Open {
    slots: HashMap<u64, Arc<Slot>>,
    busy: usize,
}

/// One open connection's state.
pub(crate) struct Slot {
    id: u64,
    /// A complete request is being handled: not evictable. Changed under the `open` lock.
    busy: AtomicBool,
    /// Since when (milliseconds after the epoch) the connection waits for its next request.
    waiting_since: AtomicU64,
    evict: Notify,
}

/// A connection's handle on its slot, shared with the requests it serves.
#[derive(Clone)]
pub(crate) struct SlotRef {
    slots: Arc<Slots>,
    slot: Arc<Slot>,
}

/// Holds a slot; frees it on drop.
pub(crate) struct SlotGuard(pub(crate) SlotRef);

impl Slots {
    /// A cap of `max` connections (at least two: one may be busy, one is reserved); `gauge`
    /// follows the open count, `evicted` counts the connections closed to make room.
    pub(crate) fn new(max: usize, gauge: IntGauge, evicted: IntCounter) -> Arc<Slots> {
        let max = max.max(2);
        Arc::new(Slots {
            max,
            max_busy: max - (max / 8).max(1),
            epoch: Instant::now(),
            next_id: AtomicU64::new(0),
            open: Mutex::new(Open::default()),
            gauge,
            evicted,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Open> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A slot for a new connection; at the cap the longest-waiting connection that is not busy
    /// is evicted (there is one: busy connections are fewer than the cap).
    pub(crate) fn admit(self: &Arc<Self>) -> SlotGuard {
        let mut open = self.lock();
        if open.slots.len() >= self.max {
            let victim = open
                .slots
                .values()
                .filter(|s| !s.busy.load(Ordering::Acquire))
                .min_by_key(|s| s.waiting_since.load(Ordering::Acquire))
                .map(|s| s.id);
            if let Some(victim) = victim.and_then(|id| open.slots.remove(&id)) {
                victim.evict.notify_one();
                self.evicted.inc();
            }
        }
        let slot = Arc::new(Slot {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            busy: AtomicBool::new(false),
            waiting_since: AtomicU64::new(self.now_ms()),
            evict: Notify::new(),
        });
        open.slots.insert(slot.id, slot.clone());
        self.gauge.set(open.slots.len() as i64);
        SlotGuard(SlotRef {
            slots: self.clone(),
            slot,
        })
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

impl SlotRef {
    /// When the request now awaited must be complete (headers and body), `timeout` after the
    /// connection started waiting for it.
    pub(crate) fn deadline(&self, timeout: Duration) -> Instant {
        let since = self.slot.waiting_since.load(Ordering::Acquire);
        self.slots.epoch + Duration::from_millis(since) + timeout
    }

    /// The complete request is to be handled: the connection becomes busy (not evictable) until
    /// [`SlotRef::idle`]. False when the busy share is used up, or the connection was evicted.
    pub(crate) fn busy(&self) -> bool {
        let mut open = self.slots.lock();
        if open.busy >= self.slots.max_busy || !open.slots.contains_key(&self.slot.id) {
            return false;
        }
        if !self.slot.busy.swap(true, Ordering::AcqRel) {
            open.busy += 1;
        }
        true
    }

    /// The response is out: the connection waits for its next request from now on.
    pub(crate) fn idle(&self) {
        let mut open = self.slots.lock();
        self.release(&mut open);
        self.slot
            .waiting_since
            .store(self.slots.now_ms(), Ordering::Release);
    }

    fn release(&self, open: &mut Open) {
        if self.slot.busy.swap(false, Ordering::AcqRel) {
            open.busy -= 1;
        }
    }

    /// Resolves when the connection was evicted (it no longer counts as open).
    pub(crate) async fn evicted(&self) {
        self.slot.evict.notified().await;
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        let mut open = self.0.slots.lock();
        // A request dropped while busy (the client left) frees its share.
        self.0.release(&mut open);
        // An evicted slot was removed already.
        open.slots.remove(&self.0.slot.id);
        self.0.slots.gauge.set(open.slots.len() as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slots(max: usize) -> Arc<Slots> {
        let gauge = IntGauge::new("g", "g").unwrap();
        let evicted = IntCounter::new("e", "e").unwrap();
        Slots::new(max, gauge, evicted)
    }

    #[tokio::test]
    async fn at_the_cap_the_longest_waiting_connection_that_is_not_busy_goes() {
        let slots = slots(2);
        let first = slots.admit();
        std::thread::sleep(Duration::from_millis(5));
        let second = slots.admit();
        let third = slots.admit();
        // `first` waited longest: evicted, and its drop does not free another slot.
        tokio::time::timeout(Duration::from_secs(5), first.0.evicted())
            .await
            .unwrap();
        assert_eq!(slots.evicted.get(), 1);
        assert!(!first.0.busy(), "an evicted connection cannot become busy");
        drop(first);
        assert_eq!(slots.gauge.get(), 2);
        // Of two slots one is reserved: a second busy connection is refused.
        assert!(second.0.busy());
        assert!(!third.0.busy());
        // The busy one is never evicted.
        let fourth = slots.admit();
        tokio::time::timeout(Duration::from_secs(5), third.0.evicted())
            .await
            .unwrap();
        second.0.idle();
        assert!(fourth.0.busy());
        drop((second, third, fourth));
        assert_eq!(slots.gauge.get(), 0);
        assert_eq!(slots.lock().busy, 0);
    }

    #[test]
    fn the_reserved_share_is_an_eighth_and_at_least_one() {
        for (max, busy) in [(1, 1), (2, 1), (8, 7), (16, 14), (512, 448)] {
            assert_eq!(slots(max).max_busy, busy, "max {max}");
        }
    }
}
