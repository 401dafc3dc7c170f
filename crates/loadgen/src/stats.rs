//! Delivery accounting: per-connection sequence tracking, per-thread recorders (latency
//! histogram + counters), the measurement window and summaries.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use hdrhistogram::Histogram;
use serde::Serialize;

static BASE: LazyLock<Instant> = LazyLock::new(Instant::now);

/// Monotonic nanoseconds since the process-wide base instant (the `t` carried in events).
pub fn now_ns() -> u64 {
    // u64 nanoseconds overflow after 584 years.
    BASE.elapsed().as_nanos() as u64
}

/// New latency histogram in microseconds (1 µs .. 100 s, 3 significant digits).
pub fn new_histogram() -> Histogram<u64> {
    // The bounds are constants that satisfy the constructor's preconditions.
    Histogram::new_with_bounds(1, 100_000_000, 3).expect("valid histogram bounds")
}

/// How one received sequence number relates to the ones seen before on the same connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqClass {
    /// Exactly the next one.
    InOrder,
    /// Newer than expected; this many sequence numbers were skipped (maybe arriving later).
    Gap(u64),
    /// Older than the newest seen and not seen before: arrived out of order.
    Late,
    /// Seen before.
    Duplicate,
}

/// Per-connection receive state: the newest sequence number and a 64-entry window of which of
/// the preceding ones were seen, so late arrivals and duplicates are told apart.
#[derive(Debug, Default, Clone, Copy)]
pub struct SeqTracker {
    last: u64,
    /// Bit k set = sequence `last - k` was received.
    seen: u64,
}

impl SeqTracker {
    /// Classifies `seq` (sequences start at 1; 0 is treated as a duplicate) and records it.
    pub fn observe(&mut self, seq: u64) -> SeqClass {
        if seq > self.last {
            let d = seq - self.last;
            self.seen = if d >= 64 { 0 } else { self.seen << d } | 1;
            self.last = seq;
            if d == 1 {
                SeqClass::InOrder
            } else {
                SeqClass::Gap(d - 1)
            }
        } else {
            let k = self.last - seq;
            if seq == 0 || (k < 64 && self.seen & (1 << k) != 0) {
                SeqClass::Duplicate
            } else {
                if k < 64 {
                    self.seen |= 1 << k;
                }
                SeqClass::Late
            }
        }
    }
}

/// Counters and latency histogram of deliveries, kept per runtime thread.
#[derive(Debug, Clone)]
pub struct Recorder {
    /// Latency (µs) of deliveries published inside the measurement window.
    pub latency: Histogram<u64>,
    /// Data messages received (with or without benchmark fields).
    pub messages: u64,
    /// Deliveries whose sequence number was new for the connection.
    pub unique: u64,
    /// Deliveries published inside the measurement window.
    pub measured: u64,
    /// Deliveries seen before on the same connection.
    pub duplicated: u64,
    /// Deliveries that arrived after a newer one (late, but not lost).
    pub out_of_order: u64,
    /// Times a connection saw a sequence jump.
    pub gaps: u64,
    /// Deliveries for another user than the connection's.
    pub misrouted: u64,
    /// Data messages without the benchmark fields.
    pub unparsed: u64,
    /// Connections that closed or failed after being established.
    pub disconnected: u64,
    /// Close frames received from the server, by close code (1005 = no code).
    pub close_codes: BTreeMap<u16, u64>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            latency: new_histogram(),
            messages: 0,
            unique: 0,
            measured: 0,
            duplicated: 0,
            out_of_order: 0,
            gaps: 0,
            misrouted: 0,
            unparsed: 0,
            disconnected: 0,
            close_codes: BTreeMap::new(),
        }
    }
}

impl Recorder {
    /// Records one delivery with its classification and publish time `t` (ns since base).
    #[inline]
    pub fn delivery(&mut self, class: SeqClass, t: u64, now: u64, window: (u64, u64)) {
        match class {
            SeqClass::InOrder => self.unique += 1,
            SeqClass::Gap(_) => {
                self.unique += 1;
                self.gaps += 1;
            }
            SeqClass::Late => {
                self.unique += 1;
                self.out_of_order += 1;
            }
            SeqClass::Duplicate => {
                self.duplicated += 1;
                return;
            }
        }
        if t >= window.0 && t < window.1 {
            self.measured += 1;
            self.latency.saturating_record(now.saturating_sub(t) / 1000);
        }
    }

    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: &Recorder) {
        // Both histograms have the same bounds, so adding cannot fail.
        let _ = self.latency.add(&other.latency);
        self.messages += other.messages;
        self.unique += other.unique;
        self.measured += other.measured;
        self.duplicated += other.duplicated;
        self.out_of_order += other.out_of_order;
        self.gaps += other.gaps;
        self.misrouted += other.misrouted;
        self.unparsed += other.unparsed;
        self.disconnected += other.disconnected;
        for (code, n) in &other.close_codes {
            *self.close_codes.entry(*code).or_default() += n;
        }
    }
}

static WINDOW_START: AtomicU64 = AtomicU64::new(u64::MAX);
static WINDOW_END: AtomicU64 = AtomicU64::new(u64::MAX);

/// Sets the measurement window: deliveries whose `t` lies in `[start, end)` get their latency
/// recorded and count as measured.
pub fn set_window(start: u64, end: u64) {
    WINDOW_START.store(start, Ordering::Relaxed);
    WINDOW_END.store(end, Ordering::Relaxed);
}

/// The current measurement window.
pub fn window() -> (u64, u64) {
    (
        WINDOW_START.load(Ordering::Relaxed),
        WINDOW_END.load(Ordering::Relaxed),
    )
}

type Shared = Arc<Mutex<Recorder>>;

static REGISTRY: Mutex<Vec<Shared>> = Mutex::new(Vec::new());

thread_local! {
    static LOCAL: Shared = {
        let r: Shared = Arc::default();
        lock(&REGISTRY).push(r.clone());
        r
    };
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs `f` with this thread's recorder locked (uncontended except while a snapshot is taken).
pub fn with_local<R>(f: impl FnOnce(&mut Recorder) -> R) -> R {
    LOCAL.with(|r| f(&mut lock(r)))
}

/// Merges all threads' recorders and resets their delivery counters; `disconnected` and
/// `close_codes` stay cumulative over the whole run.
pub fn take_all() -> Recorder {
    let mut total = Recorder::default();
    for r in lock(&REGISTRY).iter() {
        let mut g = lock(r);
        total.merge(&g);
        let fresh = Recorder {
            disconnected: g.disconnected,
            close_codes: std::mem::take(&mut g.close_codes),
            ..Recorder::default()
        };
        *g = fresh;
    }
    total
}

/// Sum of unique deliveries and disconnections over all threads, without resetting.
pub fn peek_counts() -> (u64, u64) {
    lock(&REGISTRY).iter().fold((0, 0), |(u, d), r| {
        let g = lock(r);
        (u + g.unique, d + g.disconnected)
    })
}

/// Percentiles of a histogram, in its unit (µs).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Percentiles {
    /// Number of samples.
    pub count: u64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Maximum.
    pub max: u64,
    /// Mean.
    pub mean: f64,
}

impl Percentiles {
    /// Summarises `h`.
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Percentiles {
            count: h.len(),
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            mean: (h.mean() * 10.0).round() / 10.0,
        }
    }
}

/// Loss accounting of a run: `expected` = Σ over users of events published to the user × the
/// user's established connections; `lost` = expected − unique deliveries.
pub fn lost(expected: u64, unique: u64) -> u64 {
    expected.saturating_sub(unique)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_classification() {
        let mut t = SeqTracker::default();
        assert_eq!(t.observe(1), SeqClass::InOrder);
        assert_eq!(t.observe(2), SeqClass::InOrder);
        assert_eq!(t.observe(2), SeqClass::Duplicate);
        assert_eq!(t.observe(5), SeqClass::Gap(2));
        assert_eq!(t.observe(4), SeqClass::Late);
        assert_eq!(t.observe(4), SeqClass::Duplicate);
        assert_eq!(t.observe(3), SeqClass::Late);
        assert_eq!(t.observe(1), SeqClass::Duplicate);
        assert_eq!(t.observe(6), SeqClass::InOrder);
        assert_eq!(t.observe(200), SeqClass::Gap(193));
        assert_eq!(t.observe(100), SeqClass::Late); // outside the window: assumed new
        assert_eq!(t.observe(0), SeqClass::Duplicate);
    }

    #[test]
    fn loss_and_duplicate_accounting() {
        // One user, two connections, 10 events published. Connection A gets all once plus two
        // duplicates; connection B misses 3 and 7 and gets 9 before 8.
        let mut rec = Recorder::default();
        let window = (0, u64::MAX);
        let mut a = SeqTracker::default();
        for s in [1, 2, 3, 3, 4, 5, 6, 7, 8, 9, 10, 10] {
            rec.delivery(a.observe(s), 0, 5_000, window);
        }
        let mut b = SeqTracker::default();
        for s in [1, 2, 4, 5, 6, 9, 8, 10] {
            rec.delivery(b.observe(s), 0, 5_000, window);
        }
        let expected = 10 * 2;
        assert_eq!(rec.unique, 18);
        assert_eq!(rec.duplicated, 2);
        assert_eq!(rec.out_of_order, 1);
        assert_eq!(rec.gaps, 2);
        assert_eq!(lost(expected, rec.unique), 2);
        assert_eq!(rec.measured, 18);
        assert_eq!(Percentiles::of(&rec.latency).p50, 5);
    }

    #[test]
    fn window_limits_latency_samples() {
        let mut rec = Recorder::default();
        let mut t = SeqTracker::default();
        rec.delivery(t.observe(1), 10, 2_000_010, (100, 200));
        rec.delivery(t.observe(2), 150, 1_500_150, (100, 200));
        assert_eq!(rec.unique, 2);
        assert_eq!(rec.measured, 1);
        assert_eq!(Percentiles::of(&rec.latency).max, 1500);
    }
}
