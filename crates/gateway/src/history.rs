//! What every broker's history gives a connection: the replay of a resume (events or the
//! `resync` control event) and the per-connection duplicate filter. Reading Redis history is
//! `broker/redis/history.rs`; the embedded broker keeps its own rings.

use gleepost_event::history::splice_id;
use gleepost_event::EventId;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::outbox::Frame;

/// What a connection gets before live events when it resumes.
#[derive(Debug, PartialEq)]
pub(crate) enum Replay {
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

/// How every `resync` frame starts (its reason follows).
const RESYNC_START: &str = r#"{"type":"resync","data":{"reason":""#;

/// The `resync` control event: `{"type":"resync","data":{"reason":"…"},"id":"<latest>"}` (no
/// `id` when the history is empty, or when `latest` is not an event id).
pub(crate) fn resync_frame(reason: &str, latest: Option<&str>) -> Utf8Bytes {
    let body = format!(r#"{RESYNC_START}{reason}"}}}}"#);
    match latest {
        // The id comes from the store: one that is not an event id (a corrupted epoch key in
        // Redis, found by fuzzing) is left out, so that the frame stays JSON.
        Some(id) if EventId::parse(id).is_some() => {
            // Never falls back: `body` and `id` are both UTF-8, so is the splice.
            Utf8Bytes::try_from(splice_id(body.as_bytes(), id)).unwrap_or(body.into())
        }
        _ => body.into(),
    }
}

/// Skips frames a connection already got (replay and live, or repair and live, overlap).
#[derive(Default, Debug)]
pub(crate) struct Dedup {
    epoch: String,
    position: (u64, u64),
}

impl Dedup {
    /// Start after `since` (the client has it).
    pub(crate) fn after(since: &EventId) -> Self {
        Dedup {
            epoch: since.epoch.clone(),
            position: since.position(),
        }
    }

    /// True when the frame must be sent; records its id. Frames without id always pass, and
    /// so does a `resync`: its id (the newest in history) becomes the position even when it
    /// is older than what was sent (the history lost its tail), since the client resumes
    /// from there and what follows it must reach the client.
    pub(crate) fn admit(&mut self, frame: &Frame) -> bool {
        let Some((epoch, ms, seq)) = frame.event_id() else {
            return true;
        };
        if frame.text.as_str().starts_with(RESYNC_START) {
            self.epoch = epoch.to_string();
            self.position = (ms, seq);
            return true;
        }
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
    fn a_resync_passes_and_moves_the_position_back_to_its_id() {
        let mut d = Dedup::after(&EventId::parse("ep-10-0").unwrap());
        let now = std::time::Instant::now();
        assert!(d.admit(&Frame::new(resync_frame("trimmed", Some("ep-7-0")), now)));
        assert!(d.admit(&Frame::new(
            Utf8Bytes::from_static(r#"{"type":"t","data":1,"id":"ep-8-0"}"#),
            now
        )));
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
}
