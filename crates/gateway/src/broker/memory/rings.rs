//! The embedded broker's history: per-user rings of recent events (frames with their ids),
//! with the same id, resume and resync semantics as the Redis history. Bounded per user
//! (`--history-size` events, `--history-ttl` after the last one) and in total
//! (`--history-max-bytes` of stored events: beyond, the rings of the users published to least
//! recently are dropped, and their resumes get `resync`, as after a trim).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use gleepost_event::history::new_epoch;
use gleepost_event::{EventId, HistoryConfig};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::history::Replay;
use crate::registry::UserId;

/// Bounds of the rings.
pub(crate) struct RingLimits {
    /// Events per user, and how long a ring lives after its last event.
    pub(crate) history: HistoryConfig,
    /// Most events one replay returns (`resync` `too_many` beyond)…
    pub(crate) max_replay: usize,
    /// …and most bytes of them: SSE and long-poll copy them into one chunk.
    pub(crate) max_replay_bytes: usize,
    /// Bytes of events stored over all users.
    pub(crate) max_bytes: usize,
}

/// Every user's ring.
pub(super) struct Rings {
    epoch: String,
    /// The last sequence number given, over all users: an id is never given twice in an
    /// epoch, also after a user's ring was dropped (a per-ring counter would start again at 1,
    /// and its ids would be taken for ones a client already has).
    last: AtomicU64,
    limits: RingLimits,
    /// Bytes of the events in every ring.
    bytes: AtomicUsize,
    /// Held while rings are dropped for the byte bound: one such pass at a time.
    evicting: Mutex<()>,
    users: DashMap<UserId, Ring>,
}

struct Ring {
    touched: Instant,
    events: VecDeque<(u64, Utf8Bytes)>,
    bytes: usize,
}

impl Rings {
    /// Empty rings, swept of expired ones once a minute while they live.
    pub(super) fn new(limits: RingLimits) -> Arc<Rings> {
        let rings = Arc::new(Rings {
            epoch: new_epoch(),
            last: AtomicU64::new(0),
            limits,
            bytes: AtomicUsize::new(0),
            evicting: Mutex::new(()),
            users: DashMap::new(),
        });
        tokio::spawn(sweep(Arc::downgrade(&rings)));
        rings
    }

    /// Give `user`'s next event its id, store its frame (`frame` makes it from the id; `None`:
    /// not stored) and hand the frame to `deliver`, under the user's ring: per user, frames are
    /// delivered in id order. Returns the id.
    pub(super) fn append(
        &self,
        user: UserId,
        entered: Instant,
        frame: impl FnOnce(&str) -> Option<Utf8Bytes>,
        deliver: impl FnOnce(Utf8Bytes),
    ) -> Option<String> {
        let id = {
            let mut ring = self.users.entry(user).or_insert_with(|| Ring {
                touched: entered,
                events: VecDeque::new(),
                bytes: 0,
            });
            if entered.duration_since(ring.touched) > self.limits.history.ttl {
                ring.events.clear();
                self.bytes.fetch_sub(ring.bytes, Ordering::Relaxed);
                ring.bytes = 0;
            }
            let seq = self.last.fetch_add(1, Ordering::Relaxed) + 1;
            ring.touched = entered;
            let id = format!("{}-{seq}-0", self.epoch);
            let text = frame(&id)?;
            ring.bytes += text.len();
            self.bytes.fetch_add(text.len(), Ordering::Relaxed);
            ring.events.push_back((seq, text.clone()));
            while ring.events.len() > self.limits.history.size {
                if let Some((_, old)) = ring.events.pop_front() {
                    ring.bytes -= old.len();
                    self.bytes.fetch_sub(old.len(), Ordering::Relaxed);
                }
            }
            deliver(text);
            id
        };
        if self.bytes.load(Ordering::Relaxed) > self.limits.max_bytes {
            self.evict();
        }
        Some(id)
    }

    /// Drop the rings of the users published to least recently until the rings hold at most
    /// nine tenths of the byte bound (so that such a pass is rare).
    fn evict(&self) {
        let Ok(_one_pass) = self.evicting.try_lock() else {
            return;
        };
        let target = self.limits.max_bytes / 10 * 9;
        let mut by_age: Vec<(Instant, UserId)> = self
            .users
            .iter()
            .map(|ring| (ring.touched, *ring.key()))
            .collect();
        by_age.sort_unstable();
        let (mut users, mut freed) = (0usize, 0usize);
        for (touched, user) in by_age {
            if self.bytes.load(Ordering::Relaxed) <= target {
                break;
            }
            // Not if an event came in since: then it is no longer among the oldest.
            if let Some((_, ring)) = self.users.remove_if(&user, |_, r| r.touched == touched) {
                self.bytes.fetch_sub(ring.bytes, Ordering::Relaxed);
                users += 1;
                freed += ring.bytes;
            }
        }
        tracing::warn!(
            users,
            freed_bytes = freed,
            max_bytes = self.limits.max_bytes,
            "embedded history over --history-max-bytes: dropped the rings of the users published \
             to least recently (their clients get resync on resume)"
        );
    }

    /// Bytes of the events stored.
    #[cfg(test)]
    pub(super) fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Whether no ring is left.
    #[cfg(test)]
    pub(super) fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Events of `user` after the wire id `since`.
    pub(super) fn replay(&self, user: UserId, since: &str) -> Replay {
        let ring = self.users.get(&user);
        let latest = ring
            .as_ref()
            .and_then(|r| r.events.back())
            .map(|(seq, _)| format!("{}-{seq}-0", self.epoch));
        let resync = |reason| Replay::Resync {
            reason,
            latest: latest.clone(),
        };
        let Some(id) = EventId::parse(since) else {
            return resync("unknown_id");
        };
        if id.epoch != self.epoch {
            return resync("epoch_changed");
        }
        let Some(ring) = ring else {
            return resync("trimmed");
        };
        if ring.touched.elapsed() > self.limits.history.ttl {
            return resync("trimmed");
        }
        let Some(pos) = ring.events.iter().position(|(seq, _)| *seq == id.ms) else {
            return resync("trimmed");
        };
        let after = ring.events.len() - pos - 1;
        let bytes: usize = ring.events.iter().skip(pos + 1).map(|(_, t)| t.len()).sum();
        if after > self.limits.max_replay || bytes > self.limits.max_replay_bytes {
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

/// Drop rings whose TTL passed, once a minute, while the rings live.
async fn sweep(rings: Weak<Rings>) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tick.tick().await;
        let Some(rings) = rings.upgrade() else { return };
        let ttl = rings.limits.history.ttl;
        rings.users.retain(|_, ring| {
            let keep = ring.touched.elapsed() <= ttl;
            if !keep {
                rings.bytes.fetch_sub(ring.bytes, Ordering::Relaxed);
            }
            keep
        });
    }
}
