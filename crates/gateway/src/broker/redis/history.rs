//! Reading a user's Redis history back (the streams `gleepost_event::history` writes): resume
//! after `since`, and the reads of gap repair after a pub/sub outage.

use std::time::Duration;

use bytes::Bytes;
use gleepost_event::history::{parse_stream_id, splice_id, READ_SCRIPT};
use gleepost_event::keys::{epoch_key, history_key};
use gleepost_event::EventId;
use gleepost_event::{RedisConn, SlotScript};
use redis::Value;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::epochs;
use crate::history::Replay;
use crate::registry::UserId;

/// Reads Redis history (see `gleepost_event::history`).
#[derive(Clone)]
pub(crate) struct RedisHistory {
    conn: RedisConn,
    script: SlotScript,
    max_replay: usize,
    /// Most bytes of events one read returns (`resync` `too_many` beyond).
    max_bytes: usize,
    timeout: Duration,
}

/// Reading history failed (Redis error or timeout).
#[derive(Debug, thiserror::Error)]
#[error("history read failed: {message}")]
pub(crate) struct ReadError {
    message: String,
    /// The user's own keys are the cause (not Redis, nor the connection): a key of the wrong
    /// type, a reply of the wrong shape. Reading other users' history still works.
    user_only: bool,
}

impl ReadError {
    fn node(message: impl Into<String>) -> Self {
        ReadError {
            message: message.into(),
            user_only: false,
        }
    }

    fn of(e: redis::RedisError) -> Self {
        let message = e.to_string();
        // WRONGTYPE: one of the user's keys holds something else (written by hand or by
        // another program); inside the script it comes back as the script's error.
        let user_only = message.contains("WRONGTYPE");
        ReadError { message, user_only }
    }
}

/// Log lines of resumes that found history unavailable (a client can repeat them): at most
/// one per second.
static RESUME_LOG: crate::log_limit::LogLimit =
    crate::log_limit::LogLimit::new(Duration::from_secs(1));

/// Log lines of gap repair's per-user failures: at most one per second.
static USER_READ_LOG: crate::log_limit::LogLimit =
    crate::log_limit::LogLimit::new(Duration::from_secs(1));

/// A gap repair read of `user`: its replay, a `resync` `unavailable` when only this user's keys
/// are unreadable (its connections learn it; the others' repair goes on), or the error that
/// fails the whole repair (Redis down: the session retries).
fn repair_read(
    user: UserId,
    read: Result<Read, ReadError>,
    replay: impl FnOnce(Read) -> Replay,
) -> Result<Replay, ReadError> {
    match read {
        Ok(read) => Ok(replay(read)),
        Err(e) if e.user_only => {
            if let Some(suppressed) = USER_READ_LOG.allow() {
                tracing::warn!(user, error = %e, suppressed, "gap repair: this user's history is unreadable");
            }
            Ok(Replay::Resync {
                reason: "unavailable",
                latest: None,
            })
        }
        Err(e) => Err(e),
    }
}

impl RedisHistory {
    /// A reader over the node's command connection: reads return at most `max_replay`
    /// events and `max_bytes` bytes of them (beyond either, the replay is `too_many`).
    pub(crate) fn new(
        conn: RedisConn,
        max_replay: usize,
        max_bytes: usize,
        timeout: Duration,
    ) -> Self {
        RedisHistory {
            conn,
            script: SlotScript::new(READ_SCRIPT),
            max_replay,
            max_bytes,
            timeout,
        }
    }

    /// Events of `user` after the wire id `since`.
    pub(crate) async fn replay(&self, user: UserId, since: &str) -> Replay {
        let parsed = EventId::parse(since);
        let (start, check) = match &parsed {
            Some(id) => (format!("({}", id.stream_id()), id.stream_id()),
            None => ("+".to_string(), String::new()),
        };
        let read = match self.read(user, &start, &check, "").await {
            Ok(read) => read,
            Err(e) => {
                if let Some(suppressed) = RESUME_LOG.allow() {
                    tracing::warn!(error = %e, user, suppressed, "resume: history unavailable");
                }
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
    pub(crate) async fn since_ids(
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
                let replay =
                    repair_read(*user, read, |r| r.replay_after(&id.epoch, self.max_replay))?;
                out.push((*user, replay));
            }
        }
        Ok(out)
    }

    /// Events of each user with no delivered event from its stream time on (inclusive), for
    /// gap repair: `resync` (trimmed) when entries from that time on may have been trimmed
    /// away, (`epoch_changed`) when the history is not the one the user had when subscribed.
    pub(super) async fn since_ms(
        &self,
        users: &[Fresh],
    ) -> Result<Vec<(UserId, Replay)>, ReadError> {
        let mut out = Vec::with_capacity(users.len());
        for chunk in users.chunks(256) {
            let reads = futures_util::future::join_all(chunk.iter().map(|f| async move {
                let start = f.from.to_string();
                self.read(f.user, &start, "", &start).await
            }))
            .await;
            for (f, read) in chunk.iter().zip(reads) {
                let replay =
                    repair_read(f.user, read, |read| match (read.epoch.clone(), f.epoch) {
                        // Reset since (or gone): what it held is lost.
                        (Some(epoch), Some(Some(seen))) if epochs::hash(&epoch) != seen => {
                            read.resync("epoch_changed")
                        }
                        (None, Some(Some(_))) => read.resync("epoch_changed"),
                        (Some(epoch), _) => read.replay_after(&epoch, self.max_replay),
                        (None, _) => Replay::Events(Vec::new()),
                    })?;
                out.push((f.user, replay));
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
        let mut cmd = self.script.evalsha(2);
        cmd.arg(history_key(user))
            .arg(epoch_key(user))
            .arg(start)
            .arg(check)
            .arg(self.max_replay + 1)
            .arg(untrimmed_from)
            .arg(self.max_bytes);
        let reply = match tokio::time::timeout(
            self.timeout,
            self.script.run::<Vec<Value>>(&mut conn, &cmd),
        )
        .await
        {
            Ok(Ok(reply)) => reply,
            // The cluster client's own response timeout, or ours.
            Ok(Err(e)) if self.conn.is_cluster() && e.is_timeout() => {
                return self.timed_out_in_cluster(user).await
            }
            Ok(Err(e)) => return Err(ReadError::of(e)),
            Err(_) if self.conn.is_cluster() => return self.timed_out_in_cluster(user).await,
            Err(_) => return Err(ReadError::node("timed out")),
        };
        Read::parse(reply).ok_or_else(|| ReadError {
            message: "unexpected reply shape".into(),
            user_only: true,
        })
    }
}

impl RedisHistory {
    /// A cluster read of `user` that timed out: a slot being migrated answers `TRYAGAIN` (which
    /// redis-rs retries) to the read's two keys while they are on neither node, or split between
    /// them. Single-key commands are still answered there: when neither key exists the user has
    /// no history (an empty read, exactly what the script returns then); when one does, only
    /// this user's read failed (gap repair goes on for the others). When those time out too,
    /// the node is not answering: the whole repair fails, as before.
    async fn timed_out_in_cluster(&self, user: UserId) -> Result<Read, ReadError> {
        let mut exists = 0;
        for key in [history_key(user), epoch_key(user)] {
            let mut conn = self.conn.clone();
            let mut check = redis::cmd("EXISTS");
            check.arg(&key);
            exists += tokio::time::timeout(self.timeout, check.query_async::<i64>(&mut conn))
                .await
                .map_err(|_| ReadError::node("timed out"))?
                .map_err(ReadError::of)?;
        }
        if exists > 0 {
            return Err(ReadError {
                message: "timed out, while the user's slot answers single-key commands (a \
                          migration?)"
                    .into(),
                user_only: true,
            });
        }
        Ok(Read {
            epoch: None,
            found: false,
            last: None,
            over_budget: false,
            entries: Vec::new(),
        })
    }
}

/// A user with no delivered event, to repair: from stream time `from` on, and the epoch its
/// history had when the node subscribed it (`None`: not read; `Some(None)`: it had none).
pub(super) struct Fresh {
    pub(super) user: UserId,
    pub(super) from: u64,
    pub(super) epoch: Option<Option<u64>>,
}

/// One history read.
#[derive(Debug, Default)]
pub(crate) struct Read {
    /// The user's epoch, `None` when no history exists.
    pub(crate) epoch: Option<String>,
    /// The `check` entry still exists.
    pub(crate) found: bool,
    /// Newest stream id.
    pub(crate) last: Option<String>,
    /// More events followed than the read's byte bound let it return.
    pub(crate) over_budget: bool,
    /// `(stream id, encoded event without id)` in order.
    pub(crate) entries: Vec<(String, Bytes)>,
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
        let over_budget = matches!(it.next()?, Value::Int(1));
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
            over_budget,
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
    pub(crate) fn replay_after(&self, epoch: &str, max: usize) -> Replay {
        match &self.epoch {
            Some(current) if current == epoch => {}
            _ => return self.resync("epoch_changed"),
        }
        if !self.found {
            return self.resync("trimmed");
        }
        if self.entries.len() > max || self.over_budget {
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
    fn replay_rules() {
        let read = Read {
            epoch: Some("ep".into()),
            found: true,
            last: Some("7-0".into()),
            over_budget: false,
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
        let over = Read {
            over_budget: true,
            entries: read.entries.clone(),
            ..read
        };
        assert!(matches!(
            over.replay_after("ep", 10),
            Replay::Resync {
                reason: "too_many",
                ..
            }
        ));
        let trimmed = Read {
            found: false,
            over_budget: false,
            ..over
        };
        assert!(
            matches!(trimmed.replay_after("ep", 10), Replay::Resync { reason: "trimmed", latest: Some(l) } if l == "ep-7-0")
        );
    }
}
