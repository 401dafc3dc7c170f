//! A connection's one timer: the next ping, the pong deadline and the credential expiry share
//! a single `Sleep`, so an idle connection holds one timer entry.

use std::time::Duration;

use tokio::time::Instant as TokioInstant;

/// What the connection's timer is waiting for.
pub(super) struct Timer {
    /// When the next ping is sent.
    pub(super) next_ping: TokioInstant,
    /// When an unanswered ping times out (set while a ping awaits its pong).
    pub(super) pong_due: Option<TokioInstant>,
    /// Payload of the last ping (random): only a pong that carries it answers the ping.
    pub(super) ping_payload: u64,
    /// When the credentials expire, if they do.
    pub(super) expiry: Option<TokioInstant>,
}

/// What a timer expiry means.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Due {
    /// The credentials expired.
    Expired,
    /// A ping went unanswered.
    PongTimeout,
    /// Time to send a ping.
    Ping,
    /// Nothing is due yet.
    Nothing,
}

impl Timer {
    /// The earliest of the next ping, the pong deadline and the expiry.
    pub(super) fn deadline(&self) -> TokioInstant {
        let mut at = self.next_ping;
        for t in [self.pong_due, self.expiry].into_iter().flatten() {
            at = at.min(t);
        }
        at
    }

    /// Advance to `now`; a ping that is sent starts a pong deadline unless one is running.
    pub(super) fn fire(
        &mut self,
        now: TokioInstant,
        interval: Duration,
        pong_timeout: Duration,
    ) -> Due {
        if self.expiry.is_some_and(|t| t <= now) {
            return Due::Expired;
        }
        if self.pong_due.is_some_and(|t| t <= now) {
            return Due::PongTimeout;
        }
        if self.next_ping <= now {
            self.next_ping = now + interval;
            self.pong_due.get_or_insert(now + pong_timeout);
            return Due::Ping;
        }
        Due::Nothing
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timer_pings_then_times_out_without_pong() {
        let t0 = TokioInstant::now();
        let (interval, pong) = (Duration::from_secs(30), Duration::from_secs(10));
        let mut timer = Timer {
            next_ping: t0 + interval,
            pong_due: None,
            ping_payload: 0,
            expiry: None,
        };
        assert_eq!(timer.deadline(), t0 + interval);
        assert_eq!(timer.fire(t0, interval, pong), Due::Nothing);
        assert_eq!(timer.fire(t0 + interval, interval, pong), Due::Ping);
        assert_eq!(timer.deadline(), t0 + interval + pong);
        assert_eq!(
            timer.fire(t0 + interval + pong, interval, pong),
            Due::PongTimeout
        );
    }

    #[test]
    fn timer_pong_clears_deadline_and_expiry_wins() {
        let t0 = TokioInstant::now();
        let (interval, pong) = (Duration::from_secs(30), Duration::from_secs(10));
        let mut timer = Timer {
            next_ping: t0,
            pong_due: None,
            ping_payload: 0,
            expiry: Some(t0 + Duration::from_secs(45)),
        };
        assert_eq!(timer.fire(t0, interval, pong), Due::Ping);
        timer.pong_due = None; // the pong arrived
        assert_eq!(timer.deadline(), t0 + interval);
        assert_eq!(timer.fire(t0 + interval, interval, pong), Due::Ping);
        assert_eq!(timer.deadline(), t0 + interval + pong);
        assert_eq!(
            timer.fire(t0 + Duration::from_secs(45), interval, pong),
            Due::Expired
        );
    }
}
