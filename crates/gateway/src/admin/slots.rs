//! The admin port's connection cap.
//!
//! At most `max` connections are open. When another one arrives, the open connection that has
//! waited longest for its request (idle keep-alive, or still sending its headers or body) is
//! closed to make room; only connections whose complete request is being handled are never
//! closed. A client without the API key cannot keep a request "being handled" (it is refused
//! from its headers), so it can never keep `/healthz` or `/metrics` from being served.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use prometheus::{IntCounter, IntGauge};
use tokio::sync::Notify;

/// The open admin connections.
pub(crate) struct Slots {
    max: usize,
    epoch: Instant,
    next_id: AtomicU64,
    open: Mutex<HashMap<u64, Arc<Slot>>>,
    gauge: IntGauge,
    evicted: IntCounter,
}

/// One open connection's state, shared with the requests it serves.
pub(crate) struct Slot {
    id: u64,
    epoch: Instant,
    /// A complete request is being handled: not evictable.
    busy: AtomicBool,
    /// Since when (milliseconds after `epoch`) the connection waits for its next request.
    waiting_since: AtomicU64,
    evict: Notify,
}

/// Holds a slot; frees it on drop.
pub(crate) struct SlotGuard {
    slots: Arc<Slots>,
    /// The connection's state.
    pub(crate) slot: Arc<Slot>,
}

impl Slots {
    /// A cap of `max` connections (at least one); `gauge` follows the open count, `evicted`
    /// counts the connections closed to make room.
    pub(crate) fn new(max: usize, gauge: IntGauge, evicted: IntCounter) -> Arc<Slots> {
        Arc::new(Slots {
            max: max.max(1),
            epoch: Instant::now(),
            next_id: AtomicU64::new(0),
            open: Mutex::new(HashMap::new()),
            gauge,
            evicted,
        })
    }

    /// A slot for a new connection, evicting the longest-waiting one at the cap; `None` when
    /// every open connection is handling a request.
    pub(crate) fn admit(self: &Arc<Self>) -> Option<SlotGuard> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if open.len() >= self.max {
            let victim = open
                .values()
                .filter(|s| !s.busy.load(Ordering::Acquire))
                .min_by_key(|s| s.waiting_since.load(Ordering::Acquire))
                .map(|s| s.id)?;
            if let Some(victim) = open.remove(&victim) {
                victim.evict.notify_one();
                self.evicted.inc();
            }
        }
        let slot = Arc::new(Slot {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            epoch: self.epoch,
            busy: AtomicBool::new(false),
            waiting_since: AtomicU64::new(ms_since(self.epoch)),
            evict: Notify::new(),
        });
        open.insert(slot.id, slot.clone());
        self.gauge.set(open.len() as i64);
        Some(SlotGuard {
            slots: self.clone(),
            slot,
        })
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        let mut open = self
            .slots
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // An evicted slot was removed already.
        open.remove(&self.slot.id);
        self.slots.gauge.set(open.len() as i64);
    }
}

impl Slot {
    /// When the request now awaited must be complete (headers and body), `timeout` after the
    /// connection started waiting for it.
    pub(crate) fn deadline(&self, timeout: Duration) -> Instant {
        let since = Duration::from_millis(self.waiting_since.load(Ordering::Acquire));
        self.epoch + since + timeout
    }

    /// The complete request is being handled: not evictable until [`Slot::idle`].
    pub(crate) fn busy(&self) {
        self.busy.store(true, Ordering::Release);
    }

    /// The response is out: the connection waits for its next request from now on.
    pub(crate) fn idle(&self) {
        self.waiting_since
            .store(ms_since(self.epoch), Ordering::Release);
        self.busy.store(false, Ordering::Release);
    }

    /// Resolves when the connection was evicted (it no longer counts as open).
    pub(crate) async fn evicted(&self) {
        self.evict.notified().await;
    }
}

fn ms_since(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
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
    async fn at_the_cap_the_longest_waiting_idle_connection_goes() {
        let slots = slots(2);
        let first = slots.admit().unwrap();
        std::thread::sleep(Duration::from_millis(5));
        let second = slots.admit().unwrap();
        let third = slots.admit().unwrap();
        // `first` waited longest: evicted, and its drop does not free another slot.
        tokio::time::timeout(Duration::from_secs(5), first.slot.evicted())
            .await
            .unwrap();
        assert_eq!(slots.evicted.get(), 1);
        drop(first);
        assert_eq!(slots.gauge.get(), 2);
        // Busy connections are never evicted; with every connection busy, none is admitted.
        second.slot.busy();
        third.slot.busy();
        assert!(slots.admit().is_none());
        third.slot.idle();
        let fourth = slots.admit().unwrap();
        assert_eq!(slots.evicted.get(), 2);
        drop((second, third, fourth));
        assert_eq!(slots.gauge.get(), 0);
    }
}
