//! The embedded broker: publishing hands the event straight to this node's registry, and keeps
//! a per-user in-memory ring with the same id, resume and resync semantics as Redis history.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dashmap::DashMap;
use gleepost_event::history::{new_epoch, splice_id};
use gleepost_event::{EventId, HistoryConfig};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::{Dispatcher, Published};
use crate::history::Replay;
use crate::registry::{Subscribed, Subscriptions, UserId};

/// In-process broker for a single node.
pub(crate) struct MemoryBroker {
    dispatcher: Dispatcher,
    /// Subscriptions are immediate: every user shares this already-confirmed receiver.
    confirmed: Subscribed,
    _confirmed_tx: watch::Sender<bool>,
    history: Option<Arc<Rings>>,
    /// Token revocations: user → (revoke JWTs issued before this unix time, until).
    revoked: DashMap<UserId, (u64, Instant)>,
}

/// Per-user rings of recent events (frames with their ids).
struct Rings {
    epoch: String,
    /// The last sequence number given, over all users: an id is never given twice in an
    /// epoch, also after a user's ring was swept (a per-ring counter would start again at 1,
    /// and its ids would be taken for ones a client already has).
    last: AtomicU64,
    config: HistoryConfig,
    max_replay: usize,
    /// Most bytes of events one replay returns: SSE and long-poll copy them into one chunk.
    max_replay_bytes: usize,
    users: DashMap<UserId, Ring>,
}

struct Ring {
    touched: Instant,
    events: VecDeque<(u64, Utf8Bytes)>,
}

impl MemoryBroker {
    /// A broker delivering into `dispatcher`, keeping history per `history`; a replay returns
    /// at most `max_replay` events and `max_replay_bytes` of them (`resync` beyond).
    pub(crate) fn new(
        dispatcher: Dispatcher,
        history: HistoryConfig,
        max_replay: usize,
        max_replay_bytes: usize,
    ) -> Self {
        let (tx, rx) = watch::channel(true);
        let history = history.enabled().then(|| {
            let rings = Arc::new(Rings {
                epoch: new_epoch(),
                last: AtomicU64::new(0),
                config: history,
                max_replay,
                max_replay_bytes,
                users: DashMap::new(),
            });
            tokio::spawn(sweep(Arc::downgrade(&rings)));
            rings
        });
        MemoryBroker {
            dispatcher,
            confirmed: rx,
            _confirmed_tx: tx,
            history,
            revoked: DashMap::new(),
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
            let mut ring = rings.users.entry(user).or_insert_with(|| Ring {
                touched: entered,
                events: VecDeque::new(),
            });
            if entered.duration_since(ring.touched) > rings.config.ttl {
                ring.events.clear();
            }
            // Taken under the user's ring lock: per user, ids grow in the order of the ring.
            let seq = rings.last.fetch_add(1, Ordering::Relaxed) + 1;
            ring.touched = entered;
            let id = format!("{}-{seq}-0", rings.epoch);
            let Some(text) = self.utf8(splice_id(&event, &id)) else {
                continue;
            };
            ring.events.push_back((seq, text.clone()));
            while ring.events.len() > rings.config.size {
                ring.events.pop_front();
            }
            // Dispatch while holding the user's ring: concurrent publishes to one user reach
            // its connections in id order.
            self.dispatcher.dispatch(user, text, entered);
            drop(ring);
            ids.push((user, id));
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
        let Some(rings) = &self.history else {
            return Replay::Resync {
                reason: "history_off",
                latest: None,
            };
        };
        let ring = rings.users.get(&user);
        let latest = ring
            .as_ref()
            .and_then(|r| r.events.back())
            .map(|(seq, _)| format!("{}-{seq}-0", rings.epoch));
        let resync = |reason| Replay::Resync {
            reason,
            latest: latest.clone(),
        };
        let Some(id) = EventId::parse(since) else {
            return resync("unknown_id");
        };
        if id.epoch != rings.epoch {
            return resync("epoch_changed");
        }
        let Some(ring) = ring else {
            return resync("trimmed");
        };
        if ring.touched.elapsed() > rings.config.ttl {
            return resync("trimmed");
        }
        let Some(pos) = ring.events.iter().position(|(seq, _)| *seq == id.ms) else {
            return resync("trimmed");
        };
        let after = ring.events.len() - pos - 1;
        let bytes: usize = ring.events.iter().skip(pos + 1).map(|(_, t)| t.len()).sum();
        if after > rings.max_replay || bytes > rings.max_replay_bytes {
            return resync("too_many");
        }
        Replay::Events(
            ring.events
                .iter()
                .skip(pos + 1)
                .map(|(_, t)| t.clone())
                .collect(),
        )
    }
}

/// Drop rings whose TTL passed, once a minute, while the broker lives.
async fn sweep(rings: Weak<Rings>) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tick.tick().await;
        let Some(rings) = rings.upgrade() else { return };
        let ttl = rings.config.ttl;
        rings.users.retain(|_, ring| ring.touched.elapsed() <= ttl);
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

    fn broker(ttl: Duration) -> MemoryBroker {
        let limits = QueueLimits {
            max_events: 8,
            max_bytes: 1024,
        };
        let registry = Arc::new(Registry::new(limits, 0, 0));
        let metrics = Arc::new(Metrics::new().unwrap());
        let history = HistoryConfig { size: 10, ttl };
        MemoryBroker::new(Dispatcher::new(registry, metrics), history, 100, 1 << 20)
    }

    fn id(broker: &MemoryBroker, user: UserId) -> EventId {
        let ids = broker
            .publish(&[user], Bytes::from_static(br#"{"type":"x","data":1}"#))
            .ids;
        EventId::parse(&ids[0].1).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_swept_ring_never_gives_an_id_again() {
        let broker = broker(Duration::from_millis(1));
        let first = id(&broker, 1);
        // The ring's TTL passes (its clock is std's), then the sweep runs (tokio's, paused).
        std::thread::sleep(Duration::from_millis(5));
        tokio::time::sleep(Duration::from_secs(61)).await;
        assert!(
            broker.history.as_ref().unwrap().users.is_empty(),
            "not swept"
        );
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
}
