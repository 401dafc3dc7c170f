//! Reading per-user history back: resume after `since`, gap repair after a broker outage, the
//! `resync` control event, and the per-connection duplicate filter.

use std::time::Duration;

use bytes::Bytes;
use gleepost_event::history::{parse_stream_id, splice_id, READ_SCRIPT};
use gleepost_event::keys::{epoch_key, history_key};
use gleepost_event::EventId;
use redis::aio::ConnectionManager;
use redis::{Script, Value};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::outbox::Frame;
use crate::registry::UserId;

/// What a connection gets before live events when it resumes.
#[derive(Debug, PartialEq)]
pub enum Replay {
    /// Every event after `since`, in order (possibly none).
    Events(Vec<Utf8Bytes>),
    /// The gateway cannot prove it has every event after `since`: the client must refetch.
    Resync {
        /// Why (documented in the protocol doc).
        reason: &'static str,
        /// The newest event id, to resume from after refetching.
        latest: Option<String>,
    },
}

/// The `resync` control event: `{"type":"resync","data":{"reason":"…"},"id":"<latest>"}` (no
/// `id` when the history is empty, or when `latest` is not an event id).
pub fn resync_frame(reason: &str, latest: Option<&str>) -> Utf8Bytes {
    let body = format!(r#"{{"type":"resync","data":{{"reason":"{reason}"}}}}"#);
    match latest {
        // The id comes from the store: one that is not an event id (a corrupted epoch key) is
        // left out, so that the frame stays JSON.
        Some(id) if EventId::parse(id).is_some() => {
            Utf8Bytes::try_from(splice_id(body.as_bytes(), id)).unwrap_or(body.into())
        }
        _ => body.into(),
    }
}

/// Skips frames a connection already got (replay and live, or repair and live, overlap).
#[derive(Default, Debug)]
pub struct Dedup {
    epoch: String,
    position: (u64, u64),
}

impl Dedup {
    /// Start after `since` (the client has it).
    pub fn after(since: &EventId) -> Self {
        Dedup {
            epoch: since.epoch.clone(),
            position: since.position(),
        }
    }

    /// True when the frame must be sent; records its id. Frames without id always pass.
    pub fn admit(&mut self, frame: &Frame) -> bool {
        let Some((epoch, ms, seq)) = frame.event_id() else {
            return true;
        };
        if epoch == self.epoch {
            if (ms, seq) <= self.position {
                return false;
            }
        } else {
            self.epoch = epoch.to_string();
        }
        self.position = (ms, seq);
        true
    }
}

/// Reads Redis history (see `gleepost_event::history`).
#[derive(Clone)]
pub struct RedisHistory {
    conn: ConnectionManager,
    script: Script,
    max_replay: usize,
    timeout: Duration,
}

/// Reading history failed (Redis error or timeout).
#[derive(Debug, thiserror::Error)]
#[error("history read failed: {0}")]
pub struct ReadError(String);

impl RedisHistory {
    /// A reader over the node's command connection.
    pub fn new(conn: ConnectionManager, max_replay: usize, timeout: Duration) -> Self {
        RedisHistory {
            conn,
            script: Script::new(READ_SCRIPT),
            max_replay,
            timeout,
        }
    }

    /// Events of `user` after the wire id `since`.
    pub async fn replay(&self, user: UserId, since: &str) -> Replay {
        let parsed = EventId::parse(since);
        let (start, check) = match &parsed {
            Some(id) => (format!("({}", id.stream_id()), id.stream_id()),
            None => ("+".to_string(), String::new()),
        };
        let read = match self.read(user, &start, &check, "").await {
            Ok(read) => read,
            Err(e) => {
                tracing::warn!(error = %e, user, "resume: history unavailable");
                return Replay::Resync {
                    reason: "unavailable",
                    latest: None,
                };
            }
        };
        let Some(id) = parsed else {
            return read.resync("unknown_id");
        };
        read.replay_after(&id.epoch, self.max_replay)
    }

    /// Events of each user after the id last delivered to it, for gap repair: the same rules
    /// as a resume (`resync` when trimmed past it, epoch changed, or too many), but read
    /// errors fail the repair instead of becoming `unavailable`.
    pub async fn since_ids(
        &self,
        users: &[(UserId, EventId)],
    ) -> Result<Vec<(UserId, Replay)>, ReadError> {
        let mut out = Vec::with_capacity(users.len());
        for chunk in users.chunks(256) {
            let reads = futures_util::future::join_all(chunk.iter().map(|(u, id)| {
                let sid = id.stream_id();
                async move { self.read(*u, &format!("({sid}"), &sid, "").await }
            }))
            .await;
            for ((user, id), read) in chunk.iter().zip(reads) {
                out.push((*user, read?.replay_after(&id.epoch, self.max_replay)));
            }
        }
        Ok(out)
    }

    /// Events of each user from stream time `ms` on (inclusive), for gap repair: `resync`
    /// (trimmed) when entries from that time on may have been trimmed away.
    pub async fn since_ms(
        &self,
        users: &[UserId],
        ms: u64,
    ) -> Result<Vec<(UserId, Replay)>, ReadError> {
        let start = ms.to_string();
        let mut out = Vec::with_capacity(users.len());
        for chunk in users.chunks(256) {
            let reads = futures_util::future::join_all(
                chunk.iter().map(|&u| self.read(u, &start, "", &start)),
            )
            .await;
            for (&user, read) in chunk.iter().zip(reads) {
                let read = read?;
                let replay = match read.epoch.clone() {
                    Some(epoch) => read.replay_after(&epoch, self.max_replay),
                    None => Replay::Events(Vec::new()),
                };
                out.push((user, replay));
            }
        }
        Ok(out)
    }

    /// One `READ_SCRIPT` call (arguments as documented there).
    async fn read(
        &self,
        user: UserId,
        start: &str,
        check: &str,
        untrimmed_from: &str,
    ) -> Result<Read, ReadError> {
        let mut conn = self.conn.clone();
        let mut invocation = self.script.key(history_key(user));
        invocation
            .key(epoch_key(user))
            .arg(start)
            .arg(check)
            .arg(self.max_replay + 1)
            .arg(untrimmed_from);
        let reply = tokio::time::timeout(
            self.timeout,
            invocation.invoke_async::<Vec<Value>>(&mut conn),
        )
        .await
        .map_err(|_| ReadError("timed out".into()))?
        .map_err(|e| ReadError(e.to_string()))?;
        Read::parse(reply).ok_or_else(|| ReadError("unexpected reply shape".into()))
    }
}

/// One history read.
#[derive(Debug, Default)]
pub struct Read {
    /// The user's epoch, `None` when no history exists.
    pub epoch: Option<String>,
    /// The `check` entry still exists.
    pub found: bool,
    /// Newest stream id.
    pub last: Option<String>,
    /// `(stream id, encoded event without id)` in order.
    pub entries: Vec<(String, Bytes)>,
}

impl Read {
    fn parse(reply: Vec<Value>) -> Option<Read> {
        let mut it = reply.into_iter();
        let epoch = match it.next()? {
            Value::BulkString(b) => Some(String::from_utf8(b).ok()?),
            _ => None,
        };
        let found = matches!(it.next()?, Value::Int(1));
        let last = match it.next()? {
            Value::BulkString(b) if !b.is_empty() => Some(String::from_utf8(b).ok()?),
            _ => None,
        };
        let mut entries = Vec::new();
        while let (Some(Value::BulkString(id)), Some(Value::BulkString(event))) =
            (it.next(), it.next())
        {
            entries.push((String::from_utf8(id).ok()?, Bytes::from(event)));
        }
        Some(Read {
            epoch,
            found,
            last,
            entries,
        })
    }

    fn latest(&self) -> Option<String> {
        Some(format!("{}-{}", self.epoch.as_ref()?, self.last.as_ref()?))
    }

    fn resync(&self, reason: &'static str) -> Replay {
        Replay::Resync {
            reason,
            latest: self.latest(),
        }
    }

    /// The replay for a client whose last event is of `epoch` (already range-limited).
    pub fn replay_after(&self, epoch: &str, max: usize) -> Replay {
        match &self.epoch {
            Some(current) if current == epoch => {}
            _ => return self.resync("epoch_changed"),
        }
        if !self.found {
            return self.resync("trimmed");
        }
        if self.entries.len() > max {
            return self.resync("too_many");
        }
        Replay::Events(
            self.entries
                .iter()
                .filter(|(sid, _)| parse_stream_id(sid).is_some())
                // Stored events were valid UTF-8 JSON when published; an entry that is not
                // (a corrupted store) is skipped rather than sent.
                .filter_map(|(sid, event)| {
                    Utf8Bytes::try_from(splice_id(event, &format!("{epoch}-{sid}"))).ok()
                })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dedup_skips_what_was_sent() {
        let mut d = Dedup::after(&EventId::parse("ep-10-0").unwrap());
        let mut admit = |text: &'static str| {
            d.admit(&Frame::new(
                Utf8Bytes::from_static(text),
                std::time::Instant::now(),
            ))
        };
        assert!(!admit(r#"{"type":"t","data":1,"id":"ep-9-5"}"#));
        assert!(!admit(r#"{"type":"t","data":1,"id":"ep-10-0"}"#));
        assert!(admit(r#"{"type":"t","data":1,"id":"ep-10-1"}"#));
        assert!(!admit(r#"{"type":"t","data":1,"id":"ep-10-1"}"#));
        assert!(
            admit(r#"{"type":"t","data":1}"#),
            "legacy frames have no id"
        );
        assert!(
            admit(r#"{"type":"t","data":1,"id":"new-1-0"}"#),
            "new epoch"
        );
    }

    #[test]
    fn resync_frame_shape() {
        let f = resync_frame("trimmed", Some("ep-5-0"));
        let v: serde_json::Value = serde_json::from_str(f.as_str()).unwrap();
        assert_eq!(v["type"], "resync");
        assert_eq!(v["data"]["reason"], "trimmed");
        assert_eq!(v["id"], "ep-5-0");
        assert!(!resync_frame("too_many", None).as_str().contains("\"id\""));
    }

    #[test]
    fn resync_frame_leaves_out_a_latest_that_is_no_event_id() {
        // Found by the `event_id` fuzz target: a corrupted epoch key in the store made the
        // frame invalid JSON.
        for latest in [r#"ep-5-0"}"#, "ep\"-5-0", "EP-5-0", "ep-5", "", "ep-5-0\n"] {
            let f = resync_frame("trimmed", Some(latest));
            let v: serde_json::Value = serde_json::from_str(f.as_str()).unwrap();
            assert_eq!(v["type"], "resync", "{latest:?}");
            assert!(v.get("id").is_none(), "{latest:?}");
        }
    }

    #[test]
    fn replay_rules() {
        let read = Read {
            epoch: Some("ep".into()),
            found: true,
            last: Some("7-0".into()),
            entries: vec![(
                "6-0".into(),
                Bytes::from_static(br#"{"type":"t","data":6}"#),
            )],
        };
        assert_eq!(
            read.replay_after("ep", 10),
            Replay::Events(vec![r#"{"type":"t","data":6,"id":"ep-6-0"}"#.into()])
        );
        assert!(matches!(
            read.replay_after("old", 10),
            Replay::Resync {
                reason: "epoch_changed",
                ..
            }
        ));
        assert!(matches!(
            read.replay_after("ep", 0),
            Replay::Resync {
                reason: "too_many",
                ..
            }
        ));
        let trimmed = Read {
            found: false,
            ..read
        };
        assert!(
            matches!(trimmed.replay_after("ep", 10), Replay::Resync { reason: "trimmed", latest: Some(l) } if l == "ep-7-0")
        );
    }
}
