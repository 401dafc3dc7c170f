//! What the suite saw, as it happened: every acknowledged publish (id, user, when it was sent and
//! acknowledged) and, per client session, every frame and connection change. The publisher and
//! the clients write here; the ledger ([`super::ledger`]) reads it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use gleepost_event::EventId;

/// One publish the API answered 200.
#[derive(Clone, Debug)]
pub struct Ack {
    /// The recipient.
    pub user: u64,
    /// The event id the API returned.
    pub id: EventId,
    /// The id as text (as on the wire).
    pub raw: String,
    /// When the acknowledged request was sent (latency is counted from here).
    pub sent: Instant,
}

/// One thing a client session saw.
#[derive(Clone, Debug)]
pub enum Entry {
    /// An event with an id.
    Event {
        /// The id as on the wire.
        raw: String,
        /// When it was read.
        at: Instant,
    },
    /// A `resync` control event.
    Resync {
        /// Its `id` (the newest event), when it had one.
        id: Option<EventId>,
        /// `data.reason`.
        reason: String,
        /// When it was read.
        at: Instant,
    },
    /// The gateway ended the connection (close frame code, or `None` when the TCP connection
    /// just ended), not the suite.
    Closed {
        /// Close code.
        code: Option<u16>,
        /// When the client saw it.
        at: Instant,
    },
    /// A frame that is neither a numbered event with an id nor a `resync` (never expected).
    Foreign {
        /// The frame (truncated).
        text: String,
        /// When it was read.
        at: Instant,
    },
}

impl Entry {
    /// When it happened.
    pub fn at(&self) -> Instant {
        match self {
            Entry::Event { at, .. }
            | Entry::Resync { at, .. }
            | Entry::Closed { at, .. }
            | Entry::Foreign { at, .. } => *at,
        }
    }
}

/// A `resync` as coverage: what it tells the client it may have missed.
#[derive(Clone, Debug)]
pub struct ResyncMark {
    /// When it arrived.
    pub at: Instant,
    /// Its id (the newest event then).
    pub id: Option<EventId>,
    /// The epoch of the first event that arrived after it on the session.
    pub next_epoch: Option<String>,
}

/// Everything one client session (one logical client across reconnects) saw.
#[derive(Clone, Debug)]
pub struct SessionLog {
    /// Its user.
    pub user: u64,
    /// Name for reports (`u3@A`).
    pub name: String,
    /// Every entry, in order.
    pub entries: Vec<Entry>,
    /// First arrival of each event id.
    pub seen: HashMap<String, Instant>,
    /// Every `resync`, in order.
    pub resyncs: Vec<ResyncMark>,
}

#[derive(Default)]
struct Inner {
    acks: Vec<Ack>,
    sessions: Vec<SessionLog>,
    retries: Vec<Instant>,
    abandoned: Vec<Instant>,
}

/// The shared record of a run.
#[derive(Default)]
pub struct Records {
    inner: Mutex<Inner>,
}

/// Read-only view of the records, under their lock.
pub struct View<'a> {
    /// Every acknowledged publish, in acknowledgement order.
    pub acks: &'a [Ack],
    /// Every session.
    pub sessions: &'a [SessionLog],
    /// When a publish attempt failed and was retried (503, connection error, timeout).
    pub retries: &'a [Instant],
    /// When a publish was given up after its retries (never acknowledged).
    pub abandoned: &'a [Instant],
}

impl Records {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Register a session; returns its index.
    pub fn add_session(&self, user: u64, name: String) -> usize {
        let mut inner = self.lock();
        inner.sessions.push(SessionLog {
            user,
            name,
            entries: Vec::new(),
            seen: HashMap::new(),
            resyncs: Vec::new(),
        });
        inner.sessions.len() - 1
    }

    /// Session `s` read the event `raw` (an event id).
    pub fn event(&self, s: usize, raw: &str, at: Instant) {
        let mut inner = self.lock();
        let log = &mut inner.sessions[s];
        if let Some(id) = EventId::parse(raw) {
            for mark in log.resyncs.iter_mut().rev() {
                if mark.next_epoch.is_some() {
                    break;
                }
                mark.next_epoch = Some(id.epoch.clone());
            }
        }
        log.seen.entry(raw.to_owned()).or_insert(at);
        log.entries.push(Entry::Event {
            raw: raw.to_owned(),
            at,
        });
    }

    /// Session `s` read a `resync`.
    pub fn resync(&self, s: usize, id: Option<&str>, reason: &str, at: Instant) {
        let id = id.and_then(EventId::parse);
        let mut inner = self.lock();
        let log = &mut inner.sessions[s];
        log.resyncs.push(ResyncMark {
            at,
            id: id.clone(),
            next_epoch: None,
        });
        log.entries.push(Entry::Resync {
            id,
            reason: reason.to_owned(),
            at,
        });
    }

    /// Session `s` had its connection ended by the gateway.
    pub fn closed(&self, s: usize, code: Option<u16>, at: Instant) {
        self.lock().sessions[s]
            .entries
            .push(Entry::Closed { code, at });
    }

    /// Session `s` read a frame it cannot account for.
    pub fn foreign(&self, s: usize, text: &str, at: Instant) {
        let text = text.chars().take(200).collect();
        self.lock().sessions[s]
            .entries
            .push(Entry::Foreign { text, at });
    }

    /// The API acknowledged a publish.
    pub fn ack(&self, ack: Ack) {
        self.lock().acks.push(ack);
    }

    /// A publish attempt failed and will be retried.
    pub fn retry(&self, at: Instant) {
        self.lock().retries.push(at);
    }

    /// A publish was given up.
    pub fn abandon(&self, at: Instant) {
        self.lock().abandoned.push(at);
    }

    /// Run `f` on the records (under their lock: keep it short).
    pub fn with<T>(&self, f: impl FnOnce(View<'_>) -> T) -> T {
        let inner = self.lock();
        f(View {
            acks: &inner.acks,
            sessions: &inner.sessions,
            retries: &inner.retries,
            abandoned: &inner.abandoned,
        })
    }
}
