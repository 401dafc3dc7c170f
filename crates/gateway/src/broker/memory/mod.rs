//! The embedded broker: publishing hands the event straight to this node's registry, and keeps
//! a per-user in-memory ring with the same id, resume and resync semantics as Redis history.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dashmap::DashMap;
use gleepost_event::history::splice_id;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Utf8Bytes;

pub(crate) use self::rings::RingLimits;
use self::rings::Rings;
use super::{Dispatcher, Published};
use crate::history::Replay;
use crate::registry::{Subscribed, Subscriptions, UserId};

mod rings;

/// In-process broker for a single node.
pub(crate) struct MemoryBroker {
    dispatcher: Dispatcher,
    /// Subscriptions are immediate: every user shares this already-confirmed receiver.
    confirmed: Subscribed,
    _confirmed_tx: watch::Sender<bool>,
    history: Option<Arc<Rings>>,
    /// Token revocations: user → (revoke JWTs issued before this unix time, until).
    revoked: DashMap<UserId, (u64, Instant)>,
    /// Revocations left after the last sweep of expired ones: the next runs when the map has
    /// doubled since (at least [`SWEEP_AT`]), so expired entries of users that never come back
    /// cost at most as much as the live ones.
    swept: AtomicUsize,
}

/// The revocation map is swept of expired entries no sooner than at this size.
const SWEEP_AT: usize = 1024;

impl MemoryBroker {
    /// A broker delivering into `dispatcher`, keeping history within `limits` (none when its
    /// size is 0).
    pub(crate) fn new(dispatcher: Dispatcher, limits: RingLimits) -> Self {
        let (tx, rx) = watch::channel(true);
        let history = limits.history.enabled().then(|| Rings::new(limits));
        MemoryBroker {
            dispatcher,
            confirmed: rx,
            _confirmed_tx: tx,
            history,
            revoked: DashMap::new(),
            swept: AtomicUsize::new(0),
        }
    }

    /// Deliver an encoded event (no id) to every local connection of each user; returns the
    /// ids assigned (empty when history is off).
    pub(crate) fn publish(&self, users: &[UserId], event: Bytes) -> Published {
        let online = users
            .iter()
            .map(|&u| (u, self.dispatcher.connections_of(u) > 0))
            .collect();
        Published {
            ids: self.deliver(users, event),
            online,
            failed: Vec::new(),
        }
    }

    /// Close every connection of each user; per user, 1 when this node held one, else 0.
    pub(crate) fn disconnect(&self, users: &[UserId]) -> Vec<(UserId, u64)> {
        users
            .iter()
            .map(|&u| (u, u64::from(self.dispatcher.disconnect(u) > 0)))
            .collect()
    }

    /// Refuse the users' JWTs issued before `before` for `ttl` (a later call for a user keeps
    /// the later time).
    pub(crate) fn revoke(&self, users: &[UserId], before: u64, ttl: Duration) {
        let until = Instant::now() + ttl;
        for &user in users {
            let mut entry = self.revoked.entry(user).or_insert((before, until));
            if entry.0 <= before {
                *entry = (before, until);
            }
        }
        let len = self.revoked.len();
        if len >= SWEEP_AT.max(2 * self.swept.load(Ordering::Relaxed)) {
            let now = Instant::now();
            self.revoked.retain(|_, (_, until)| *until > now);
            self.swept.store(self.revoked.len(), Ordering::Relaxed);
        }
    }

    /// The time before which `user`'s JWTs are revoked, while the revocation lasts.
    pub(crate) fn revoked_before(&self, user: UserId) -> Option<u64> {
        let (before, until) = *self.revoked.get(&user)?;
        if Instant::now() < until {
            return Some(before);
        }
        self.revoked
            .remove_if(&user, |_, (_, u)| *u <= Instant::now());
        None
    }

    /// Connections of each user (this node is the only one).
    pub(crate) fn presence(&self, users: &[UserId]) -> Vec<(UserId, u64)> {
        users
            .iter()
            .map(|&u| (u, self.dispatcher.connections_of(u) as u64))
            .collect()
    }

    /// Hand the event to the users' connections (and history); returns the ids assigned.
    fn deliver(&self, users: &[UserId], event: Bytes) -> Vec<(UserId, String)> {
        let entered = Instant::now();
        let Some(rings) = &self.history else {
            if let Some(text) = self.utf8(event) {
                for &user in users {
                    self.dispatcher.dispatch(user, text.clone(), entered);
                }
            }
            return Vec::new();
        };
        let mut ids = Vec::with_capacity(users.len());
        for &user in users {
            let frame = |id: &str| self.utf8(splice_id(&event, id));
            let deliver = |text| {
                self.dispatcher.dispatch(user, text, entered);
            };
            if let Some(id) = rings.append(user, entered, frame, deliver) {
                ids.push((user, id));
            }
        }
        ids
    }

    fn utf8(&self, bytes: Bytes) -> Option<Utf8Bytes> {
        match Utf8Bytes::try_from(bytes) {
            Ok(text) => Some(text),
            // Encoded events are serde_json output, always UTF-8; count it if that ever breaks.
            Err(_) => {
                self.dispatcher
                    .metrics()
                    .events_dropped
                    .with_label_values(&["not_utf8"])
                    .inc();
                None
            }
        }
    }

    /// Events of `user` after the wire id `since`.
    pub(crate) fn replay(&self, user: UserId, since: &str) -> Replay {
        match &self.history {
            Some(rings) => rings.replay(user, since),
            None => Replay::Resync {
                reason: "history_off",
                latest: None,
            },
        }
    }
}

impl Subscriptions for MemoryBroker {
    fn subscribe(&self, _user: UserId) -> Subscribed {
        self.confirmed.clone()
    }

    fn unsubscribe(&self, _user: UserId) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::outbox::QueueLimits;
    use crate::registry::Registry;
    use gleepost_event::{EventId, HistoryConfig};

    fn broker(ttl: Duration) -> MemoryBroker {
        broker_of(ttl, 1 << 30)
    }

    fn broker_of(ttl: Duration, max_bytes: usize) -> MemoryBroker {
        let limits = QueueLimits {
            max_events: 8,
            max_bytes: 1024,
        };
        let registry = Arc::new(Registry::new(limits, 0, 0));
        let metrics = Arc::new(Metrics::new().unwrap());
        let limits = RingLimits {
            history: HistoryConfig { size: 10, ttl },
            max_replay: 100,
            max_replay_bytes: 1 << 20,
            max_bytes,
        };
        MemoryBroker::new(Dispatcher::new(registry, metrics), limits)
    }

    fn id(broker: &MemoryBroker, user: UserId) -> EventId {
        let ids = broker
            .publish(&[user], Bytes::from_static(br#"{"type":"x","data":1}"#))
            .ids;
        EventId::parse(&ids[0].1).unwrap()
    }

    #[tokio::test]
    async fn expired_revocations_of_users_that_never_come_back_are_swept() {
        let broker = broker(Duration::from_secs(60));
        let live: Vec<UserId> = (1..=10).collect();
        broker.revoke(&live, 100, Duration::from_secs(3600));
        for batch in 0..50u64 {
            let users: Vec<UserId> = (0..100).map(|i| 1_000 + batch * 100 + i).collect();
            broker.revoke(&users, 100, Duration::ZERO);
        }
        let kept = broker.revoked.len();
        assert!(kept <= SWEEP_AT + 100, "{kept} revocations kept of 5,010");
        assert!(live.iter().all(|&u| broker.revoked_before(u) == Some(100)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_swept_ring_never_gives_an_id_again() {
        let broker = broker(Duration::from_millis(1));
        let first = id(&broker, 1);
        // The ring's TTL passes (its clock is std's), then the sweep runs (tokio's, paused).
        std::thread::sleep(Duration::from_millis(5));
        tokio::time::sleep(Duration::from_secs(61)).await;
        assert!(broker.history.as_ref().unwrap().is_empty(), "not swept");
        let second = id(&broker, 1);
        assert_eq!(first.epoch, second.epoch);
        assert!(
            (second.ms, second.seq) > (first.ms, first.seq),
            "{first:?} then {second:?}"
        );
        // Ids grow per user whatever other users publish in between.
        let other = id(&broker, 2);
        assert!(id(&broker, 1).ms > second.ms && other.ms > second.ms);
    }

    #[tokio::test]
    async fn a_replay_over_its_byte_bound_is_a_resync() {
        let broker = broker(Duration::from_secs(60));
        let since = id(&broker, 1);
        let since = format!("{}-{}-{}", since.epoch, since.ms, since.seq);
        let big = format!(r#"{{"type":"x","data":"{}"}}"#, "a".repeat(600 << 10));
        broker.publish(&[1], Bytes::from(big.clone()));
        assert!(matches!(broker.replay(1, &since), Replay::Events(e) if e.len() == 1));
        broker.publish(&[1], Bytes::from(big));
        let replay = broker.replay(1, &since);
        assert!(matches!(
            replay,
            Replay::Resync {
                reason: "too_many",
                ..
            }
        ));
    }

    #[tokio::test]
    async fn the_rings_stay_under_their_byte_bound_dropping_the_least_recent_users() {
        let broker = broker_of(Duration::from_secs(60), 10_000);
        let event = format!(r#"{{"type":"x","data":"{}"}}"#, "a".repeat(900));
        let mut first = Vec::new();
        for user in 1..=30 {
            let ids = broker.publish(&[user], Bytes::from(event.clone())).ids;
            first.push(ids[0].1.clone());
            let stored = broker.history.as_ref().unwrap().bytes();
            assert!(stored <= 10_000, "{stored} bytes stored after user {user}");
        }
        // The oldest users' rings went, the latest users' are whole.
        assert!(matches!(
            broker.replay(1, &first[0]),
            Replay::Resync {
                reason: "trimmed",
                ..
            }
        ));
        broker.publish(&[30], Bytes::from(event));
        assert!(matches!(broker.replay(30, &first[29]), Replay::Events(e) if e.len() == 1));
    }
}
