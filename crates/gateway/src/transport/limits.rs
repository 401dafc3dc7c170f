//! Per-address limits of the public port, checked before credentials are: open connections per
//! address (`--max-connections-per-ip`), connection attempts per second (`--connect-rate-per-ip`)
//! and failed authentications per second (`--auth-failures-per-ip`). Each refusal is a 429 with
//! `Retry-After`, counted in `connections_refused_total{reason}`.
//!
//! Memory stays bounded: open-connection counts exist only for addresses with open connections;
//! the token buckets (attempts: `governor`'s GCRA; failures: [`super::auth_budget`]) are dropped
//! by [`Limits::cleanup`], every [`CLEANUP_INTERVAL`], once they are full again (at the latest one
//! second after the address's last attempt).

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota};
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;

use super::auth_budget::FailureBudget;
use super::client_ip::AddrKey;
use super::public::json_error;

/// How often idle token buckets and expired blocks are dropped.
pub(crate) const CLEANUP_INTERVAL: Duration = Duration::from_secs(10);

/// `Retry-After` of refusals that end when another connection closes (per user, per address).
const SLOT_RETRY_AFTER: Duration = Duration::from_secs(10);

/// The per-address limits; 0 turns one off.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct LimitSettings {
    /// Most open connections (and handshakes in progress) per address.
    pub(crate) max_connections_per_ip: usize,
    /// Connection attempts per second per address (and burst).
    pub(crate) connect_rate_per_ip: u32,
    /// Failed authentications per second per address (and burst).
    pub(crate) auth_failures_per_ip: u32,
}

/// Why a connection attempt was refused with 429.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The user holds `--max-connections-per-user` connections on this node.
    PerUser,
    /// The address holds `--max-connections-per-ip` connections.
    PerIp,
    /// The address exceeded `--connect-rate-per-ip`; retry after this long.
    Rate(Duration),
    /// The address exceeded `--auth-failures-per-ip`; retry after this long.
    AuthRate(Duration),
}

impl Refused {
    /// The `connections_refused_total` label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Refused::PerUser => "per_user",
            Refused::PerIp => "per_ip",
            Refused::Rate(_) => "rate",
            Refused::AuthRate(_) => "auth_rate",
        }
    }

    /// The 429 answer: JSON error and `Retry-After` in whole seconds (at least 1).
    pub(crate) fn response(self) -> Response<Full<Bytes>> {
        let (message, wait) = match self {
            Refused::PerUser => ("Too many connections for this user", SLOT_RETRY_AFTER),
            Refused::PerIp => ("Too many connections from this address", SLOT_RETRY_AFTER),
            Refused::Rate(wait) => ("Too many connection attempts", wait),
            Refused::AuthRate(wait) => ("Too many failed authentications", wait),
        };
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        let mut res = json_error(StatusCode::TOO_MANY_REQUESTS, message);
        res.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        res
    }
}

/// The state of every per-address limit of one node.
pub(crate) struct Limits {
    max_per_ip: usize,
    open: DashMap<AddrKey, usize>,
    rate: Option<DefaultKeyedRateLimiter<AddrKey>>,
    failures: Option<FailureBudget>,
}

impl Limits {
    /// Limits with these settings.
    pub(crate) fn new(settings: LimitSettings) -> Arc<Self> {
        let rate = NonZeroU32::new(settings.connect_rate_per_ip)
            .map(|n| DefaultKeyedRateLimiter::dashmap(Quota::per_second(n)));
        Arc::new(Limits {
            max_per_ip: settings.max_connections_per_ip,
            open: DashMap::new(),
            rate,
            failures: NonZeroU32::new(settings.auth_failures_per_ip).map(FailureBudget::new),
        })
    }

    /// Admit a connection attempt from `addr` before its credentials are checked: its failure
    /// budget is not exhausted, it is within its attempt rate, and below its open connections.
    /// The slot (when the per-address limit is on) is held until it is dropped.
    pub(crate) fn admit(self: &Arc<Self>, addr: AddrKey) -> Result<Option<Slot>, Refused> {
        if let Some(failures) = &self.failures {
            failures.check(addr).map_err(Refused::AuthRate)?;
        }
        if let Some(rate) = &self.rate {
            rate.check_key(&addr)
                .map_err(|not_until| Refused::Rate(not_until.wait_time_from(rate.clock().now())))?;
        }
        if self.max_per_ip == 0 {
            return Ok(None);
        }
        let mut open = self.open.entry(addr).or_insert(0);
        // With a limit of at least 1, only an existing entry can be full: no 0 is left behind.
        if *open >= self.max_per_ip {
            return Err(Refused::PerIp);
        }
        *open += 1;
        Ok(Some(Slot {
            limits: self.clone(),
            addr,
        }))
    }

    /// An attempt from `addr` presented wrong credentials.
    pub(crate) fn auth_failed(&self, addr: AddrKey) {
        if let Some(failures) = &self.failures {
            failures.failed(addr);
        }
    }

    /// Forget full token buckets (run every [`CLEANUP_INTERVAL`]).
    pub(crate) fn cleanup(&self) {
        if let Some(rate) = &self.rate {
            rate.retain_recent();
            rate.shrink_to_fit();
        }
        if let Some(failures) = &self.failures {
            failures.cleanup();
        }
        self.open.shrink_to_fit();
    }

    /// Addresses currently tracked (open counts, buckets), for tests.
    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.open.len()
            + self.rate.as_ref().map_or(0, |r| r.len())
            + self.failures.as_ref().map_or(0, |f| f.len())
    }
}

/// One open connection (or handshake) counted against its address; freed on drop.
pub(crate) struct Slot {
    limits: Arc<Limits>,
    addr: AddrKey,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(mut open) = self.limits.open.get_mut(&self.addr) {
            *open = open.saturating_sub(1);
        }
        self.limits.open.remove_if(&self.addr, |_, n| *n == 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(last: u8) -> AddrKey {
        AddrKey::of(std::net::IpAddr::from([192, 0, 2, last]))
    }

    #[test]
    fn open_connections_per_address_are_capped_and_freed() {
        let limits = Limits::new(LimitSettings {
            max_connections_per_ip: 2,
            ..LimitSettings::default()
        });
        let a = limits.admit(addr(1)).unwrap();
        let b = limits.admit(addr(1)).unwrap();
        assert!(matches!(limits.admit(addr(1)), Err(Refused::PerIp)));
        let other = limits.admit(addr(2)).unwrap();
        drop(a);
        let c = limits.admit(addr(1)).unwrap();
        drop((b, c, other));
        assert_eq!(
            limits.tracked(),
            0,
            "no state is left for addresses without connections"
        );
    }

    #[test]
    fn connect_rate_refuses_beyond_the_burst_with_a_wait() {
        let limits = Limits::new(LimitSettings {
            connect_rate_per_ip: 3,
            ..LimitSettings::default()
        });
        let refused: Vec<_> = (0..10)
            .filter_map(|_| limits.admit(addr(1)).err())
            .collect();
        assert!(refused.len() >= 6, "{refused:?}");
        assert!(matches!(refused[0], Refused::Rate(w) if w <= Duration::from_secs(1)));
        assert!(
            limits.admit(addr(2)).is_ok(),
            "other addresses have their own bucket"
        );
    }

    #[test]
    fn failed_authentications_refuse_the_address_before_any_check() {
        let limits = Limits::new(LimitSettings {
            auth_failures_per_ip: 2,
            ..LimitSettings::default()
        });
        // Good credentials cost nothing.
        for _ in 0..20 {
            assert!(limits.admit(addr(1)).is_ok());
        }
        for _ in 0..3 {
            limits.auth_failed(addr(1));
        }
        assert!(matches!(limits.admit(addr(1)), Err(Refused::AuthRate(_))));
        assert!(limits.admit(addr(2)).is_ok());
    }

    #[test]
    fn retry_after_is_whole_seconds_at_least_one() {
        let res = Refused::Rate(Duration::from_millis(200)).response();
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(res.headers()[header::RETRY_AFTER], "1");
        let res = Refused::AuthRate(Duration::from_millis(2500)).response();
        assert_eq!(res.headers()[header::RETRY_AFTER], "3");
        assert_eq!(
            Refused::PerUser.response().headers()[header::RETRY_AFTER],
            "10"
        );
    }
}
