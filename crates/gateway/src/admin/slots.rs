//! The admin port's connection cap, with a reserved share.
//!
//! At most `max` connections are open, and at most `max - max / 8` (keeping at least one)
//! complete publish requests are handled at once ("busy"; an HTTP/1.1 connection carries one
//! at a time, an HTTP/2 connection several); a publish beyond that is answered 503. When a
//! connection arrives at the cap, the open connection without a busy request that has waited
//! longest for its next request (idle keep-alive, or still sending headers or a body) is closed
//! to make room; connections with busy requests are never closed. The reserved share
//! guarantees there is always one to close (busy connections are at most the busy requests),
//! so a new connection is always admitted: neither clients without the API key (refused from
//! their headers) nor key holders (capped in flight) can keep `/healthz` or `/metrics` from
//! being served.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
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
    in_flight: IntGauge,
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
    /// Complete requests being handled: not evictable while above 0. Changed under the `open`
    /// lock.
    busy: AtomicUsize,
    /// Requests whose handler runs (busy or not). Changed under the `open` lock.
    requests: AtomicUsize,
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

/// One request's share of its connection's slot, from the call of its handler to its drop
/// (answered, or abandoned by the client).
pub(crate) struct RequestSlot {
    slot: SlotRef,
    /// [`RequestSlot::busy`] counted this request.
    counted: AtomicBool,
}

impl Slots {
    /// A cap of `max` connections (at least two: one may be busy, one is reserved); `gauge`
    /// follows the open count, `in_flight` the busy requests, `evicted` counts the connections
    /// closed to make room.
    pub(crate) fn new(
        max: usize,
        gauge: IntGauge,
        in_flight: IntGauge,
        evicted: IntCounter,
    ) -> Arc<Slots> {
        let max = max.max(2);
        Arc::new(Slots {
            max,
            max_busy: max - (max / 8).max(1),
            epoch: Instant::now(),
            next_id: AtomicU64::new(0),
            open: Mutex::new(Open::default()),
            gauge,
            in_flight,
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
                .filter(|s| s.busy.load(Ordering::Acquire) == 0)
                .min_by_key(|s| s.waiting_since.load(Ordering::Acquire))
                .map(|s| s.id);
            if let Some(victim) = victim.and_then(|id| open.slots.remove(&id)) {
                victim.evict.notify_one();
                self.evicted.inc();
            }
        }
        let slot = Arc::new(Slot {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            busy: AtomicUsize::new(0),
            requests: AtomicUsize::new(0),
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

    /// A request's handler starts: the connection has a request open until the returned
    /// share is dropped.
    pub(crate) fn begin(&self) -> RequestSlot {
        let _open = self.slots.lock();
        self.slot.requests.fetch_add(1, Ordering::AcqRel);
        RequestSlot {
            slot: self.clone(),
            counted: AtomicBool::new(false),
        }
    }

    /// When the connection has had no open request since: `None` while one is open.
    pub(crate) fn idle_since(&self) -> Option<Instant> {
        let _open = self.slots.lock();
        if self.slot.requests.load(Ordering::Acquire) > 0 {
            return None;
        }
        let since = self.slot.waiting_since.load(Ordering::Acquire);
        Some(self.slots.epoch + Duration::from_millis(since))
    }

    /// Resolves when the connection was evicted (it no longer counts as open).
    pub(crate) async fn evicted(&self) {
        self.slot.evict.notified().await;
    }
}

impl RequestSlot {
    /// The complete request is to be handled: its connection is busy (not evictable) until
    /// this share is dropped. False when the busy share of the port is used up, or the
    /// connection was evicted.
    pub(crate) fn busy(&self) -> bool {
        let slots = &self.slot.slots;
        let mut open = slots.lock();
        if open.busy >= slots.max_busy || !open.slots.contains_key(&self.slot.slot.id) {
            return false;
        }
        if !self.counted.swap(true, Ordering::AcqRel) {
            self.slot.slot.busy.fetch_add(1, Ordering::AcqRel);
            open.busy += 1;
            slots.in_flight.set(open.busy as i64);
        }
        true
    }
}

impl Drop for RequestSlot {
    /// The request is answered (or its client left): its busy share is freed, and the
    /// connection waits for its next request from now on.
    fn drop(&mut self) {
        let slots = &self.slot.slots;
        let mut open = slots.lock();
        if self.counted.swap(false, Ordering::AcqRel) {
            self.slot.slot.busy.fetch_sub(1, Ordering::AcqRel);
            open.busy -= 1;
            slots.in_flight.set(open.busy as i64);
        }
        self.slot.slot.requests.fetch_sub(1, Ordering::AcqRel);
        self.slot
            .slot
            .waiting_since
            .store(slots.now_ms(), Ordering::Release);
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        let mut open = self.0.slots.lock();
        // Busy shares are the requests' (an HTTP/2 request's handler may outlive its
        // connection); an evicted slot was removed already.
        open.slots.remove(&self.0.slot.id);
        self.0.slots.gauge.set(open.slots.len() as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slots(max: usize) -> Arc<Slots> {
        let gauge = IntGauge::new("g", "g").unwrap();
        let in_flight = IntGauge::new("f", "f").unwrap();
        let evicted = IntCounter::new("e", "e").unwrap();
        Slots::new(max, gauge, in_flight, evicted)
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
        assert!(
            !first.0.begin().busy(),
            "an evicted connection cannot become busy"
        );
        drop(first);
        assert_eq!(slots.gauge.get(), 2);
        // Of two slots one is reserved: a second busy request is refused.
        let request = second.0.begin();
        assert!(request.busy());
        assert!(!third.0.begin().busy());
        // The busy one is never evicted.
        let fourth = slots.admit();
        tokio::time::timeout(Duration::from_secs(5), third.0.evicted())
            .await
            .unwrap();
        drop(request);
        assert!(fourth.0.begin().busy());
        drop((second, third, fourth));
        assert_eq!(slots.gauge.get(), 0);
        assert_eq!(slots.lock().busy, 0);
    }

    /// Several requests of one (HTTP/2) connection: each counts in the busy share, the
    /// connection is idle only once all are dropped, and a request that outlives its
    /// connection still frees its share.
    #[test]
    fn requests_of_one_connection_count_one_by_one() {
        let slots = slots(16);
        let conn = slots.admit();
        let (a, b) = (conn.0.begin(), conn.0.begin());
        assert!(a.busy() && b.busy() && a.busy());
        assert_eq!(slots.lock().busy, 2);
        assert_eq!(slots.in_flight.get(), 2);
        assert!(conn.0.idle_since().is_none());
        drop(a);
        assert!(conn.0.idle_since().is_none());
        drop(conn);
        assert_eq!(slots.gauge.get(), 0);
        assert_eq!(slots.lock().busy, 1);
        drop(b);
        assert_eq!(slots.lock().busy, 0);
        assert_eq!(slots.in_flight.get(), 0);
        let conn = slots.admit();
        let before = Instant::now();
        drop(conn.0.begin());
        assert!(conn
            .0
            .idle_since()
            .is_some_and(|t| t + Duration::from_millis(2) >= before));
    }

    #[test]
    fn the_reserved_share_is_an_eighth_and_at_least_one() {
        for (max, busy) in [(1, 1), (2, 1), (8, 7), (16, 14), (512, 448)] {
            assert_eq!(slots(max).max_busy, busy, "max {max}");
        }
    }
}
