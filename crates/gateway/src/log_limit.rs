//! Rate-limited logging for lines a remote peer can trigger at will (dropped connections,
//! malformed input): at most one line per interval per call site, reporting how many were
//! suppressed since the last one, so a flood cannot flood the logs.
//!
//! A [`LogLimit`] is lock-free (atomics only) and meant to live in a `static` next to its call
//! site, shared by every task: `static DROPPED: LogLimit = LogLimit::new(Duration::from_secs(1));`
//! then `if let Some(suppressed) = DROPPED.allow() { tracing::warn!(suppressed, "…") }`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// At most one log line per interval for one call site.
#[derive(Debug)]
pub(crate) struct LogLimit {
    interval_ms: u64,
    /// When the last line was allowed: milliseconds since [`epoch`] plus one; 0 = never.
    last: AtomicU64,
    /// Lines refused since the last allowed one.
    suppressed: AtomicU64,
}

impl LogLimit {
    /// A limiter allowing one line per `interval` (sub-millisecond parts are ignored).
    pub(crate) const fn new(interval: Duration) -> Self {
        LogLimit {
            // Saturates only for intervals of 584 million years.
            interval_ms: interval.as_millis() as u64,
            last: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(n)` when a line may be logged now, `n` being the lines suppressed since the last
    /// allowed one (mention it in the line); `None` (counted as suppressed) otherwise.
    pub(crate) fn allow(&self) -> Option<u64> {
        let now = now_ms().saturating_add(1);
        let last = self.last.load(Ordering::Acquire);
        let due = last == 0 || now.saturating_sub(last) >= self.interval_ms;
        // Of concurrent callers, only the one that moves `last` logs.
        if due
            && self
                .last
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            Some(self.suppressed.swap(0, Ordering::AcqRel))
        } else {
            self.suppressed.fetch_add(1, Ordering::AcqRel);
            None
        }
    }
}

/// Milliseconds since the first use of any limiter in this process (monotonic).
fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let elapsed = EPOCH.get_or_init(Instant::now).elapsed().as_millis();
    u64::try_from(elapsed).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn one_line_per_interval_with_the_suppressed_count() {
        let limit = LogLimit::new(Duration::from_millis(20));
        assert_eq!(limit.allow(), Some(0));
        for _ in 0..5 {
            assert_eq!(limit.allow(), None);
        }
        // Sleeping longer than the interval (a lower bound, not a timing assertion).
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(limit.allow(), Some(5));
        assert_eq!(limit.allow(), None);
    }

    #[test]
    fn concurrent_callers_log_once_and_lose_no_count() {
        let limit = Arc::new(LogLimit::new(Duration::from_secs(3600)));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let limit = limit.clone();
                std::thread::spawn(move || (0..1000).filter(|_| limit.allow().is_some()).count())
            })
            .collect();
        let allowed: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(allowed, 1);
        assert_eq!(limit.suppressed.load(Ordering::Acquire), 7999);
    }
}
