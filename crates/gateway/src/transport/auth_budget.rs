//! The failed-authentication budget of each client address (`--auth-failures-per-ip`): a token
//! bucket of N tokens refilled at N per second; every failed credential check takes one, and an
//! address whose bucket holds less than one token is refused before any check (no JWT
//! verification, no Redis lookup). The bucket may go into debt: checks that were already in flight
//! when it ran empty still cost their token, so an address that floods with many attempts at once
//! waits that much longer, and over time its checks that fail stay within N per second (plus one
//! burst and what it had in flight). Successful checks cost nothing: a client that
//! authenticates is only ever refused while its address is in the red.

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use dashmap::DashMap;

use super::client_ip::AddrKey;

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Failure budgets by address.
pub(crate) struct FailureBudget {
    per_sec: f64,
    burst: f64,
    buckets: DashMap<AddrKey, Bucket>,
}

impl FailureBudget {
    /// `per_sec` failures per second, bursts of as many.
    pub(crate) fn new(per_sec: NonZeroU32) -> Self {
        let per_sec = f64::from(per_sec.get());
        FailureBudget {
            per_sec,
            burst: per_sec,
            buckets: DashMap::new(),
        }
    }

    fn refill(&self, bucket: &mut Bucket, now: Instant) {
        let earned = now.saturating_duration_since(bucket.at).as_secs_f64() * self.per_sec;
        bucket.tokens = (bucket.tokens + earned).min(self.burst);
        bucket.at = now;
    }

    /// May an attempt from `addr` have its credentials checked? `Err` with the wait until its
    /// bucket holds a token again.
    pub(crate) fn check(&self, addr: AddrKey) -> Result<(), Duration> {
        let Some(mut bucket) = self.buckets.get_mut(&addr) else {
            return Ok(()); // never failed (or forgotten at a full budget)
        };
        self.refill(&mut bucket, Instant::now());
        if bucket.tokens >= 1.0 {
            return Ok(());
        }
        Err(Duration::from_secs_f64(
            (1.0 - bucket.tokens) / self.per_sec,
        ))
    }

    /// A credential check of an attempt from `addr` failed: it costs one token.
    pub(crate) fn failed(&self, addr: AddrKey) {
        let now = Instant::now();
        let mut bucket = self.buckets.entry(addr).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        self.refill(&mut bucket, now);
        bucket.tokens -= 1.0;
    }

    /// Forget addresses whose budget is full again (indistinguishable from new ones).
    pub(crate) fn cleanup(&self) {
        let now = Instant::now();
        self.buckets.retain(|_, bucket| {
            self.refill(bucket, now);
            bucket.tokens < self.burst
        });
        self.buckets.shrink_to_fit();
    }

    /// Addresses tracked.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(last: u8) -> AddrKey {
        AddrKey::of(std::net::IpAddr::from([192, 0, 2, last]))
    }

    fn budget(n: u32) -> FailureBudget {
        FailureBudget::new(NonZeroU32::new(n).unwrap())
    }

    #[test]
    fn failures_beyond_the_budget_refuse_the_address() {
        let b = budget(3);
        for _ in 0..3 {
            assert!(b.check(addr(1)).is_ok());
            b.failed(addr(1));
        }
        let wait = b.check(addr(1)).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        assert!(
            b.check(addr(2)).is_ok(),
            "other addresses have their own budget"
        );
    }

    #[test]
    fn checks_in_flight_when_the_budget_ran_out_put_it_in_debt() {
        let b = budget(2);
        // Ten attempts passed the check at once, then all failed.
        for _ in 0..10 {
            b.failed(addr(1));
        }
        // Eight failures over budget: about four seconds to wait, not half a second.
        let wait = b.check(addr(1)).unwrap_err();
        assert!(wait > Duration::from_secs(4), "{wait:?}");
    }

    #[test]
    fn successes_cost_nothing_and_take_no_memory() {
        let b = budget(2);
        for _ in 0..100 {
            assert!(b.check(addr(1)).is_ok());
        }
        assert_eq!(b.len(), 0);
    }

    #[test]
    fn full_budgets_are_forgotten() {
        let b = budget(2);
        b.failed(addr(1));
        b.failed(addr(2));
        if let Some(mut bucket) = b.buckets.get_mut(&addr(1)) {
            bucket.at -= Duration::from_secs(1);
        }
        b.cleanup();
        // addr(1) refilled; addr(2) is still refilling (unless a whole second passed).
        assert!(b.len() <= 1);
        assert!(!b.buckets.contains_key(&addr(1)));
    }
}
