//! Acknowledgement counters that the publish backends share with the [`super::Publisher`]: events
//! acknowledged or failed, HTTP requests and the events they carried, per-user acceptances and
//! the HTTP paths' queueing and answer times.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use hdrhistogram::Histogram;

use crate::stats::{self, new_histogram, now_ns, Percentiles};

/// Acknowledgement counters shared with the backend tasks.
#[derive(Debug)]
pub(crate) struct Acks {
    ok: AtomicU64,
    errors: AtomicU64,
    /// HTTP requests sent (both HTTP paths), and the events they carried; since the last
    /// [`super::Publisher::take_totals`].
    requests: AtomicU64,
    requested: AtomicU64,
    first_error: Mutex<Option<String>>,
    /// Events accepted per user index since the last [`super::Publisher::take_totals`].
    per_user: Vec<AtomicU64>,
    /// HTTP paths, per event stamped in the measurement window since the last
    /// [`super::Publisher::take_totals`], µs from its `t` (when it was queued): until its request was
    /// handed to the connection, and until the answer.
    http_times: Mutex<HttpTimes>,
}

/// See [`Acks::sending`] and [`Acks::answered`].
#[derive(Debug)]
struct HttpTimes {
    wait: Histogram<u64>,
    answer: Histogram<u64>,
}

impl Acks {
    pub(super) fn new(users: u32) -> Self {
        Acks {
            ok: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            requested: AtomicU64::new(0),
            first_error: Mutex::new(None),
            per_user: (0..users).map(|_| AtomicU64::new(0)).collect(),
            http_times: Mutex::new(HttpTimes {
                wait: new_histogram(),
                answer: new_histogram(),
            }),
        }
    }

    fn times(&self) -> std::sync::MutexGuard<'_, HttpTimes> {
        self.http_times
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Records, for events stamped `ts`, the wait from being queued to their request being
    /// sent (time spent queued behind the lane's previous request).
    pub(crate) fn sending(&self, ts: impl Iterator<Item = u64>) {
        self.record(ts, |times| &mut times.wait);
    }

    /// Records, for events stamped `ts`, the time from being queued to the 200 answer.
    pub(crate) fn answered(&self, ts: impl Iterator<Item = u64>) {
        self.record(ts, |times| &mut times.answer);
    }

    /// Like the delivery latencies: only events stamped inside the measurement window.
    fn record(
        &self,
        ts: impl Iterator<Item = u64>,
        which: impl FnOnce(&mut HttpTimes) -> &mut Histogram<u64>,
    ) {
        let now = now_ns();
        let (start, end) = stats::window();
        let mut times = self.times();
        let histogram = which(&mut times);
        for t in ts.filter(|&t| t >= start && t < end) {
            histogram.saturating_record(now.saturating_sub(t) / 1000);
        }
    }

    /// Counts `n` acknowledged publishes.
    pub(crate) fn ok(&self, n: u64) {
        self.ok.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts one HTTP publish request carrying `events` events.
    pub(crate) fn request(&self, events: u64) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.requested.fetch_add(events, Ordering::Relaxed);
    }

    /// Counts one event accepted for the user with this index.
    pub(crate) fn accepted(&self, user_index: u32) {
        self.per_user[user_index as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a failed publish; keeps the first message.
    pub(crate) fn error(&self, what: impl FnOnce() -> String) {
        self.errors_n(1, what);
    }

    /// Counts `n` failed publishes (one failed request of `n` events); keeps the first message.
    pub(crate) fn errors_n(&self, n: u64, what: impl FnOnce() -> String) {
        self.errors.fetch_add(n, Ordering::Relaxed);
        let mut first = self
            .first_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if first.is_none() {
            *first = Some(what());
        }
    }

    /// Publishes acknowledged and failed so far (cumulative).
    pub(super) fn counts(&self) -> (u64, u64) {
        (
            self.ok.load(Ordering::Relaxed),
            self.errors.load(Ordering::Relaxed),
        )
    }

    /// Acknowledged and failed publishes together (cumulative).
    pub(super) fn acknowledged(&self) -> u64 {
        let (ok, errors) = self.counts();
        ok + errors
    }

    /// The first error's message, if any publish failed.
    pub(super) fn first_error(&self) -> Option<String> {
        self.first_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The counters and times that [`take_totals`](super::Publisher::take_totals) reports per window, reset.
    pub(super) fn take(&self) -> Taken {
        let (http_wait_us, http_answer_us) = {
            let mut times = self.times();
            let taken = (!times.wait.is_empty())
                .then(|| (Percentiles::of(&times.wait), Percentiles::of(&times.answer)));
            times.wait.reset();
            times.answer.reset();
            taken.unzip()
        };
        Taken {
            requests: self.requests.swap(0, Ordering::Relaxed),
            requested: self.requested.swap(0, Ordering::Relaxed),
            per_user: self
                .per_user
                .iter()
                .map(|c| c.swap(0, Ordering::Relaxed))
                .collect(),
            http_wait_us,
            http_answer_us,
        }
    }
}

/// What [`Acks::take`] hands over: see the fields of the same names in [`super::Totals`].
pub(super) struct Taken {
    pub(super) requests: u64,
    pub(super) requested: u64,
    pub(super) per_user: Vec<u64>,
    pub(super) http_wait_us: Option<Percentiles>,
    pub(super) http_answer_us: Option<Percentiles>,
}
