//! Event ids and the resume point: `EventId::parse`, `history::parse_stream_id`,
//! `history::frame_id` (every frame a connection writes), `?since=` / `Last-Event-ID`
//! extraction, the duplicate filter and the `resync` frame.
//!
//! Never panics; a parsed id prints back to an equal id, reads back from a spliced frame, and
//! positions the duplicate filter exactly; the `resync` frame is always JSON.
#![no_main]

use gleepost_event::history::{frame_id, parse_stream_id, splice_id};
use gleepost_event::EventId;
use gleepost_gateway::fuzzing::resume_point;
use gleepost_gateway::fuzzing::{frame_event_id, resync_frame, FuzzDedup as Dedup};
use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;

const BODY: &[u8] = br#"{"type":"t","data":null}"#;

fuzz_target!(|bytes: &[u8]| {
    let tail = frame_id(bytes);
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    // A frame reads the same id as `frame_id`.
    let read = frame_event_id(text);
    assert_eq!(
        read.as_ref().map(|(e, ms, seq)| (e.as_str(), *ms, *seq)),
        tail
    );
    if let Some((epoch, ms, seq)) = tail {
        if let Some(id) = EventId::parse(&format!("{epoch}-{ms}-{seq}")) {
            assert_eq!((id.epoch.as_str(), id.ms, id.seq), (epoch, ms, seq));
        }
    }

    if let Some((ms, seq)) = parse_stream_id(text) {
        assert_eq!(parse_stream_id(&format!("{ms}-{seq}")), Some((ms, seq)));
    }
    check_id(text);

    // `?since=` (first `since` parameter, percent-decoded) and `Last-Event-ID`.
    if let Some(since) = resume_point(&HeaderMap::new(), Some(text)) {
        check_id(&since);
    }
    if let Ok(value) = HeaderValue::from_str(text) {
        // Verbatim when it is visible ASCII; otherwise ignored.
        let expected = value.to_str().ok().map(str::to_owned);
        let mut headers = HeaderMap::new();
        headers.insert("last-event-id", value);
        assert_eq!(resume_point(&headers, None), expected);
    }

    // The `resync` frame for any "latest" id read from the store is JSON, with that id if it
    // is one.
    let resync = resync_frame("trimmed", Some(text));
    let value: serde_json::Value =
        serde_json::from_str(resync.as_str()).expect("a resync frame is JSON");
    assert_eq!(value["type"], "resync");
    let id = EventId::parse(text).map(|_| text);
    assert_eq!(value.get("id").and_then(|v| v.as_str()), id);
});

/// Everything that holds for a wire id, parsed or not.
fn check_id(text: &str) {
    let Some(id) = EventId::parse(text) else {
        return;
    };
    assert!(!id.epoch.is_empty());
    assert!(id
        .epoch
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()));
    let wire = id.to_string();
    assert_eq!(EventId::parse(&wire).as_ref(), Some(&id), "{wire}");
    assert_eq!(parse_stream_id(&id.stream_id()), Some(id.position()));

    let framed = splice_id(BODY, &wire);
    assert_eq!(frame_id(&framed), Some((id.epoch.as_str(), id.ms, id.seq)));

    // The duplicate filter started after `id` drops `id` and passes the next position.
    let mut dedup = Dedup::after(&id);
    let frame =
        |wire: &str| String::from_utf8(splice_id(BODY, wire).to_vec()).expect("ids are ASCII");
    assert!(
        !dedup.admit(&frame(&wire)),
        "the resume id itself is a duplicate"
    );
    let next = match id.seq.checked_add(1) {
        Some(seq) => format!("{}-{}-{seq}", id.epoch, id.ms),
        None => match id.ms.checked_add(1) {
            Some(ms) => format!("{}-{ms}-0", id.epoch),
            None => return,
        },
    };
    assert!(dedup.admit(&frame(&next)), "{next} follows {wire}");
    assert!(!dedup.admit(&frame(&wire)), "older than the last one sent");
}
