//! Per-user event history: event ids, and the Redis scripts that append-and-notify atomically and
//! read back for resume and gap repair.
//!
//! Each user has a bounded Redis stream `gp:hist:{<id>}` and an epoch key `gp:epoch:{<id>}`
//! (one hash slot per user). Publishing runs [`PUBLISH_SCRIPT`]: it XADDs the event and
//! PUBLISHes it with its id in one atomic step, so storage and notification cannot diverge; the
//! keys' TTLs are set when the history is created and refreshed periodically. An event id on the wire is `<epoch>-<ms>-<seq>`: the stream entry id prefixed
//! by the epoch, a random word created when the user's history is (re)created. A Redis that lost
//! its data, or a history that expired, gets a new epoch, so an old id never looks like
//! "nothing happened since".

use std::fmt;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};

/// Defaults: 1,000 events per user, kept 24 hours.
pub const DEFAULT_HISTORY_SIZE: usize = 1_000;
/// See [`DEFAULT_HISTORY_SIZE`].
pub const DEFAULT_HISTORY_TTL: Duration = Duration::from_secs(24 * 3600);

/// How much history to keep per user; `size == 0` disables history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistoryConfig {
    /// Most events kept per user (approximate in Redis: trimming is `MAXLEN ~`).
    pub size: usize,
    /// Time the history lives at least after the user's last event (at most
    /// [`HistoryConfig::refresh_interval`] longer: see [`HistoryConfig::key_ttl`]).
    pub ttl: Duration,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig {
            size: DEFAULT_HISTORY_SIZE,
            ttl: DEFAULT_HISTORY_TTL,
        }
    }
}

impl HistoryConfig {
    /// History turned off: events carry no id and cannot be recovered.
    pub const OFF: HistoryConfig = HistoryConfig {
        size: 0,
        ttl: Duration::ZERO,
    };

    /// True when events are stored.
    pub fn enabled(&self) -> bool {
        self.size > 0
    }

    /// How often a publisher refreshes the TTLs of a user it keeps publishing to: a tenth of
    /// [`HistoryConfig::ttl`], at most an hour (refreshing on every event doubled the Redis
    /// cost of a publish).
    pub fn refresh_interval(&self) -> Duration {
        (self.ttl / 10).min(Duration::from_secs(3600))
    }

    /// The TTL set on a user's history keys when they are created or refreshed: [`HistoryConfig::ttl`]
    /// plus [`HistoryConfig::refresh_interval`], so that a history refreshed up to one interval
    /// before the user's last event still lives at least `ttl` after it.
    pub fn key_ttl(&self) -> Duration {
        (self.ttl + self.refresh_interval()).max(Duration::from_millis(1))
    }
}

/// An event id `<epoch>-<ms>-<seq>`; ordered by `(ms, seq)` within one epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventId {
    /// The history's epoch (`[a-z0-9]+`).
    pub epoch: String,
    /// Milliseconds part of the stream id.
    pub ms: u64,
    /// Sequence part of the stream id.
    pub seq: u64,
}

impl EventId {
    /// Parse a wire id; `None` when malformed.
    pub fn parse(s: &str) -> Option<EventId> {
        let (epoch, stream) = s.split_once('-')?;
        if epoch.is_empty()
            || !epoch
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        {
            return None;
        }
        let (ms, seq) = parse_stream_id(stream)?;
        Some(EventId {
            epoch: epoch.to_string(),
            ms,
            seq,
        })
    }

    /// The Redis stream entry id `<ms>-<seq>`.
    pub fn stream_id(&self) -> String {
        format!("{}-{}", self.ms, self.seq)
    }

    /// `(ms, seq)`, the order within an epoch.
    pub fn position(&self) -> (u64, u64) {
        (self.ms, self.seq)
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}-{}", self.epoch, self.ms, self.seq)
    }
}

/// Parse a stream entry id `<ms>-<seq>` (plain decimal parts).
pub fn parse_stream_id(s: &str) -> Option<(u64, u64)> {
    stream_id(s.as_bytes())
}

/// [`parse_stream_id`] on bytes.
fn stream_id(s: &[u8]) -> Option<(u64, u64)> {
    let dash = s.iter().position(|&b| b == b'-')?;
    Some((decimal(&s[..dash])?, decimal(&s[dash + 1..])?))
}

/// A non-empty run of ASCII digits that fits a `u64` (no sign, no spaces).
fn decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        if !d.is_ascii_digit() {
            return None;
        }
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// Characters of an epoch word ([`new_epoch`]).
const EPOCH_CHARS: usize = 10;

/// The most bytes an id adds to an encoded event: `,"id":"<epoch>-<ms>-<seq>"` with an epoch of
/// [`new_epoch`] and two `u64`s. An event published with history on must leave this room under
/// [`crate::Limits::max_event_bytes`] ([`crate::Limits::before_id`]): every node checks the
/// event as delivered, id included, against the limit.
pub const MAX_ID_MEMBER_BYTES: usize = r#","id":""#.len() + EPOCH_CHARS + 2 * (1 + 20) + 1;

/// A fresh random epoch word ([`EPOCH_CHARS`] characters of `[a-z0-9]`).
pub fn new_epoch() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    (0..EPOCH_CHARS)
        .map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// Add `"id":"<id>"` as the last member of an encoded envelope (which must end with `}`).
pub fn splice_id(encoded: &[u8], id: &str) -> Bytes {
    let body = encoded.strip_suffix(b"}").unwrap_or(encoded);
    let mut out = BytesMut::with_capacity(body.len() + id.len() + 9);
    out.put_slice(body);
    out.put_slice(b",\"id\":\"");
    out.put_slice(id.as_bytes());
    out.put_slice(b"\"}");
    out.freeze()
}

/// The id of an event frame, read cheaply from its tail: frames with an id end with
/// `"id":"<epoch>-<ms>-<seq>"}` (the gateway and the publish script put it last).
/// Returns `(epoch, ms, seq)`.
pub fn frame_id(frame: &[u8]) -> Option<(&str, u64, u64)> {
    // Runs for every event a connection writes (deduplication): bytes only, no allocation.
    let rest = frame.strip_suffix(b"\"}")?;
    let start = rest.iter().rposition(|&b| b == b'"')?;
    if !rest[..start].ends_with(b"\"id\":") {
        return None;
    }
    let id = &rest[start + 1..];
    let dash = id.iter().position(|&b| b == b'-')?;
    let (ms, seq) = stream_id(&id[dash + 1..])?;
    let epoch = std::str::from_utf8(&id[..dash]).ok()?;
    Some((epoch, ms, seq))
}

/// Append and notify in one atomic step, for one or several users at once (one call per
/// batch of publishes on a single server; per slot on a cluster).
///
/// KEYS: per item, the user's stream and epoch key. ARGV: max length, TTL in milliseconds,
/// epoch to create where none exists, the publish command (`PUBLISH`, or `SPUBLISH` on a
/// cluster: the channel carries the keys' hash tag, so it is in their slot), the number `P` of
/// distinct payloads, the `P` encoded events (without id), then per item: the user's channel,
/// the index (1-based) of its payload, and `1` to refresh both keys' TTLs (else `0`).
/// Returns per item: epoch, stream id, receivers; or, for an item whose own keys refused it
/// (e.g. `WRONGTYPE`: a key holding something else), `false`, the error, `-1`. Such an item is
/// not published, and the other items of the call still are (each item runs under `pcall`).
///
/// Per item the common path is three commands (`GET`, `XADD NOMKSTREAM`, `PUBLISH`); the TTLs
/// are set when the history is created, when its stream is gone, and when the caller asks for
/// a refresh ([`crate::publisher::Publisher`] asks once per user per [`HistoryConfig::refresh_interval`]
/// instead of on every event).
pub const PUBLISH_SCRIPT: &str = r#"
local maxlen, ttl, fresh, publish = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local count = tonumber(ARGV[5])
local bodies = {}
for j = 1, count do bodies[j] = string.sub(ARGV[5 + j], 1, -2) end
local function one(stream, ekey, payload, body, channel, refresh)
  local epoch = redis.call('GET', ekey)
  local sid = epoch and redis.call('XADD', stream, 'NOMKSTREAM', 'MAXLEN', '~', maxlen, '*', 'e', payload)
  if not sid then
    epoch = epoch or fresh
    sid = redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', 'e', payload)
    refresh = '1'
  end
  if refresh == '1' then
    redis.call('SET', ekey, epoch, 'PX', ttl)
    redis.call('PEXPIRE', stream, ttl)
  end
  return epoch, sid, redis.call(publish, channel, body .. ',"id":"' .. epoch .. '-' .. sid .. '"}')
end
local out = {}
local a = 5 + count
for i = 1, #KEYS, 2 do
  local j = tonumber(ARGV[a + 2])
  local ok, epoch, sid, n = pcall(one, KEYS[i], KEYS[i + 1], ARGV[5 + j], bodies[j], ARGV[a + 1], ARGV[a + 3])
  if ok then
    out[#out + 1] = epoch
    out[#out + 1] = sid
    out[#out + 1] = n
  else
    out[#out + 1] = false
    out[#out + 1] = type(epoch) == 'table' and epoch.err or tostring(epoch)
    out[#out + 1] = -1
  end
  a = a + 3
end
return out
"#;

/// Read a user's history.
///
/// KEYS: stream, epoch key. ARGV: range start (`(<ms>-<seq>` exclusive or `<ms>` inclusive),
/// stream id that must still exist (or empty), most entries to return, a time (ms, or empty)
/// from which on no entry may have been trimmed, and the most bytes of events to return. With
/// Redis ≥ 7.0 (`XINFO STREAM` reports `entries-added`), a stream that was ever trimmed and
/// whose oldest entry is not older than that time may have lost entries after it, so the read
/// reports not found; so does a read that cannot ask (`XINFO` refused by an ACL, the stream
/// gone): completeness is then not proven. Entries are read 100 at a time and the read stops before the entry that
/// would pass the byte bound, reporting it: neither Redis nor the reader holds more than that.
/// Returns `{epoch or false, found (1/0), last stream id or '', over the byte bound (1/0),
/// id1, event1, id2, event2, …}`.
pub const READ_SCRIPT: &str = r#"
local epoch = redis.call('GET', KEYS[2])
if not epoch then return {false, 0, '', 0} end
local found = 1
if ARGV[2] ~= '' then
  if #redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2]) == 0 then found = 0 end
end
if ARGV[4] ~= '' then
  local ok, info = pcall(redis.call, 'XINFO', 'STREAM', KEYS[1])
  if not ok then found = 0 end
  if ok then
    local f = {}
    for i = 1, #info, 2 do f[info[i]] = info[i + 1] end
    local added, len = tonumber(f['entries-added']), tonumber(f['length'])
    local first = f['recorded-first-entry-id']
    if added and len and type(first) == 'string' and added > len then
      local first_ms = tonumber(string.match(first, '^(%d+)'))
      if first_ms and first_ms >= tonumber(ARGV[4]) then found = 0 end
    end
  end
end
local last = ''
local tail = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if #tail > 0 then last = tail[1][1] end
local out = {epoch, found, last, 0}
local left, budget, start = tonumber(ARGV[3]), tonumber(ARGV[5]), ARGV[1]
while left > 0 do
  local page = redis.call('XRANGE', KEYS[1], start, '+', 'COUNT', math.min(left, 100))
  for _, entry in ipairs(page) do
    local event = entry[2][2]
    budget = budget - #event
    if budget < 0 then
      out[4] = 1
      return out
    end
    out[#out + 1] = entry[1]
    out[#out + 1] = event
  end
  if #page < math.min(left, 100) then break end
  left = left - #page
  start = '(' .. page[#page][1]
end
return out
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_id_fits_the_room_kept_for_it() {
        let limits = crate::Limits {
            max_event_bytes: 300,
        };
        let room = limits.before_id().max_event_bytes;
        assert_eq!(room, 300 - MAX_ID_MEMBER_BYTES);
        let pad = "p".repeat(room - r#"{"type":"x","data":""}"#.len());
        let encoded = format!(r#"{{"type":"x","data":"{pad}"}}"#);
        assert_eq!(encoded.len(), room);
        let longest = format!("{}-{}-{}", new_epoch(), u64::MAX, u64::MAX);
        assert!(EventId::parse(&longest).is_some());
        assert_eq!(splice_id(encoded.as_bytes(), &longest).len(), 300);
    }

    #[test]
    fn ids_round_trip_and_order() {
        let id = EventId::parse("k3x9-1732752000000-7").unwrap();
        assert_eq!(id.epoch, "k3x9");
        assert_eq!(id.position(), (1732752000000, 7));
        assert_eq!(id.to_string(), "k3x9-1732752000000-7");
        assert_eq!(id.stream_id(), "1732752000000-7");
        assert!(
            EventId::parse("k3x9-1-8").unwrap().position()
                > EventId::parse("a-1-7").unwrap().position()
        );
        for bad in [
            "", "abc", "a-1", "A-1-2", "a-1-x", "a--1-2", "-1-2", "a-1-2-3",
        ] {
            assert!(EventId::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn splice_and_read_back() {
        let framed = splice_id(br#"{"type":"t","data":{"id":"x-1-1"}}"#, "ep-5-0");
        assert_eq!(
            &framed[..],
            br#"{"type":"t","data":{"id":"x-1-1"},"id":"ep-5-0"}"#
        );
        assert_eq!(frame_id(&framed), Some(("ep", 5, 0)));
        assert_eq!(frame_id(br#"{"type":"t","data":{"id":"x-1-1"}}"#), None);
        assert_eq!(frame_id(br#"{"type":"t","data":"x","id":"nope"}"#), None);
        for bad in [
            "ep-5-",
            "ep--0",
            "ep-5-+1",
            "ep-5-1-2",
            "ep-99999999999999999999-0",
        ] {
            let frame = format!(r#"{{"type":"t","id":"{bad}"}}"#);
            assert_eq!(frame_id(frame.as_bytes()), None, "{bad}");
        }
        assert_eq!(
            frame_id(br#"{"type":"t","id":"ep-18446744073709551615-0"}"#),
            Some(("ep", u64::MAX, 0))
        );
    }

    #[test]
    fn epochs_are_id_safe() {
        let e = new_epoch();
        assert_eq!(e.len(), 10);
        assert!(EventId::parse(&format!("{e}-1-0")).is_some());
    }
}
