//! Publishing benchmark events at a fixed rate through the admin HTTP API or Redis.
//!
//! Each event goes to one user (round-robin over the users) and carries
//! `{"seq":<per-user sequence>,"t":<ns since base>,"u":<user>,"pad":"…"}` as its `data`.

mod acks;
mod batch;
mod http;
mod redis;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use tokio::time::MissedTickBehavior;

pub(crate) use acks::Acks;

use crate::cli::{PublishArgs, PublishVia};
use crate::stats::Percentiles;

/// Most events sent in one 1 ms tick (bounds a catch-up burst).
const MAX_BATCH: u64 = 8192;

/// How the events look.
#[derive(Debug, Clone)]
pub struct EventSpec {
    /// `{"type":<escaped type>,"data":` prefix.
    type_prefix: Vec<u8>,
    /// Target size of the `data` object.
    payload_bytes: usize,
}

impl EventSpec {
    /// Event spec of type `event_type` with `data` padded to `payload_bytes`.
    pub fn new(event_type: &str, payload_bytes: usize) -> Self {
        let mut type_prefix = b"{\"type\":".to_vec();
        // Serialising a &str cannot fail.
        type_prefix.extend(serde_json::to_vec(event_type).unwrap_or_default());
        type_prefix.extend_from_slice(b",\"data\":");
        EventSpec {
            type_prefix,
            payload_bytes,
        }
    }

    /// Appends the `data` object for one event.
    pub fn write_data(&self, out: &mut Vec<u8>, seq: u64, t: u64, user: u64) {
        let start = out.len();
        out.extend_from_slice(b"{\"seq\":");
        push_u64(out, seq);
        out.extend_from_slice(b",\"t\":");
        push_u64(out, t);
        out.extend_from_slice(b",\"u\":");
        push_u64(out, user);
        let pad = self.payload_bytes.saturating_sub(out.len() - start + 10);
        out.extend_from_slice(b",\"pad\":\"");
        out.resize(out.len() + pad, b'x');
        out.extend_from_slice(b"\"}");
    }

    /// Appends the whole event object `{"type":…,"data":{…}}`.
    pub fn write_event(&self, out: &mut Vec<u8>, seq: u64, t: u64, user: u64) {
        out.extend_from_slice(&self.type_prefix);
        self.write_data(out, seq, t, user);
        out.push(b'}');
    }
}

/// Appends the decimal form of `v` without allocating.
pub fn push_u64(out: &mut Vec<u8>, mut v: u64) {
    let mut tmp = [0u8; 20];
    let mut i = tmp.len();
    loop {
        i -= 1;
        tmp[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&tmp[i..]);
}

/// What was published since the previous [`Publisher::take_totals`].
#[derive(Debug, Clone, Default)]
pub struct Totals {
    /// Events handed to the backend.
    pub dispatched: u64,
    /// Failed publishes.
    pub errors: u64,
    /// HTTP requests sent (0 for the Redis paths)…
    pub requests: u64,
    /// …and the events they carried (fewer than `dispatched` while lanes are backed up).
    pub requested: u64,
    /// First error message.
    pub first_error: Option<String>,
    /// Accepted events per user index.
    pub per_user: Vec<u64>,
    /// HTTP paths: µs from an event being queued to its request being sent, events of the
    /// measurement window (`None` on the Redis paths).
    pub http_wait_us: Option<Percentiles>,
    /// HTTP paths: µs from an event being queued to its publish being answered with 200.
    pub http_answer_us: Option<Percentiles>,
}

enum Backend {
    Http(http::HttpPublisher),
    Redis(Box<redis::RedisPublisher>),
}

/// Rate-controlled publisher; keeps the per-user sequence numbers across runs.
pub struct Publisher {
    backend: Backend,
    acks: Arc<Acks>,
    cursor: u32,
    next_seq: Vec<u64>,
    batch: Vec<(u32, u64)>,
    dispatched: u64,
    taken: (u64, u64),
}

impl Publisher {
    /// Connects the chosen backend for users `first_user .. first_user + users`.
    pub async fn connect(args: &PublishArgs, first_user: u64, users: u32) -> Result<Self> {
        let acks = Arc::new(Acks::new(users));
        let spec = EventSpec::new(&args.event_type, args.payload_bytes);
        let backend = match args.publish {
            PublishVia::Http | PublishVia::HttpBatch => Backend::Http(
                http::HttpPublisher::connect(args, spec, first_user, acks.clone()).await?,
            ),
            PublishVia::Redis | PublishVia::RedisHistory => Backend::Redis(Box::new(
                redis::RedisPublisher::connect(args, spec, first_user, users, acks.clone()).await?,
            )),
        };
        Ok(Publisher {
            backend,
            acks,
            cursor: 0,
            next_seq: vec![0; users.max(1) as usize],
            batch: Vec::new(),
            dispatched: 0,
            taken: (0, 0),
        })
    }

    /// Publishes at `rate` events/s for `duration` (1 ms ticks). Returns the number of events
    /// dispatched; fewer than `rate × duration` when the backend cannot keep up.
    pub async fn run(&mut self, rate: f64, duration: Duration) -> Result<u64> {
        let start = Instant::now();
        let total = (rate * duration.as_secs_f64()).round() as u64;
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
        let mut done = 0u64;
        loop {
            tick.tick().await;
            let elapsed = start.elapsed();
            let over = elapsed >= duration;
            let due = if over {
                total
            } else {
                ((rate * elapsed.as_secs_f64()) as u64).min(total)
            };
            if due > done {
                let n = (due - done).min(MAX_BATCH);
                self.fill_batch(n);
                match &mut self.backend {
                    Backend::Http(h) => h.send(&self.batch).await?,
                    Backend::Redis(r) => r.send(&self.batch).await?,
                }
                done += n;
                self.dispatched += n;
            }
            self.check_fatal()?;
            if over {
                return Ok(done);
            }
        }
    }

    fn fill_batch(&mut self, n: u64) {
        self.batch.clear();
        let users = self.next_seq.len() as u32;
        for _ in 0..n {
            let ui = self.cursor;
            self.cursor = (self.cursor + 1) % users;
            let seq = &mut self.next_seq[ui as usize];
            *seq += 1;
            self.batch.push((ui, *seq));
        }
    }

    /// Fails when nothing has been published successfully and errors keep coming (for example a
    /// wrong API key): the run would measure nothing.
    fn check_fatal(&self) -> Result<()> {
        let (ok, errors) = self.acks.counts();
        if ok == 0 && errors >= 20 {
            bail!(
                "publishing fails: {} errors, none succeeded; first error: {}",
                errors,
                self.acks.first_error().as_deref().unwrap_or("?")
            );
        }
        Ok(())
    }

    /// Waits until every dispatched event is acknowledged, at most `timeout`. The counters are
    /// cumulative and `dispatched` counts since the previous [`Publisher::take_totals`], so the
    /// acknowledgements taken then are added back.
    pub async fn settle(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let owed = self.taken.0 + self.taken.1 + self.dispatched;
        while self.acks.acknowledged() < owed && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Totals since the previous call (call after [`Publisher::settle`]).
    pub fn take_totals(&mut self) -> Totals {
        let (ok, errors) = self.acks.counts();
        let taken = self.acks.take();
        let totals = Totals {
            dispatched: self.dispatched,
            errors: errors - self.taken.1,
            requests: taken.requests,
            requested: taken.requested,
            first_error: self.acks.first_error(),
            per_user: taken.per_user,
            http_wait_us: taken.http_wait_us,
            http_answer_us: taken.http_answer_us,
        };
        self.taken = (ok, errors);
        self.dispatched = 0;
        totals
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scan::{scan, Fields};

    #[test]
    fn events_are_padded_and_scannable() {
        let spec = EventSpec::new("bench", 200);
        let mut data = Vec::new();
        spec.write_data(&mut data, 12, 3456, 2147);
        assert_eq!(data.len(), 200);
        let v: serde_json::Value = serde_json::from_slice(&data).unwrap();
        assert_eq!(v["seq"], 12);
        let mut ev = Vec::new();
        spec.write_event(&mut ev, 1, u64::MAX, 0);
        let v: serde_json::Value = serde_json::from_slice(&ev).unwrap();
        assert_eq!(v["type"], "bench");
        assert_eq!(
            scan(&ev),
            Some(Fields {
                seq: 1,
                t: u64::MAX,
                u: 0
            })
        );
        // Smaller than the minimum: no padding.
        let mut small = Vec::new();
        EventSpec::new("a\"b", 0).write_event(&mut small, 1, 2, 3);
        assert_eq!(
            std::str::from_utf8(&small).unwrap(),
            r#"{"type":"a\"b","data":{"seq":1,"t":2,"u":3,"pad":""}}"#
        );
    }
}
