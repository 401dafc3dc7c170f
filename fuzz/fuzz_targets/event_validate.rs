//! Event validation of the HTTP publish API (`gleepost_event::parse_and_validate`).
//!
//! Never panics; an accepted event encodes to exactly `encoded_len` bytes of JSON that passes
//! validation again unchanged (`data` byte-exact) and passes the broker payload check.
#![no_main]

use gleepost_event::{check_broker_payload, parse_and_validate, Event, Limits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    // The default limit, and a small one so that the size check is reached by small inputs.
    for limits in [
        Limits::default(),
        Limits {
            max_event_bytes: 64,
        },
    ] {
        let Ok(event) = parse_and_validate(bytes, &limits) else {
            continue;
        };
        let encoded = event.encode();
        assert_eq!(encoded.len(), event.encoded_len(), "encoded_len is exact");
        assert!(encoded.len() <= limits.max_event_bytes);
        let again = parse_and_validate(&encoded, &limits).expect("an encoded event is valid");
        assert_same(&event, &again);
        let parsed = Event::from_json(&encoded).expect("an encoded event parses");
        assert_same(&event, &parsed);
        check_broker_payload(&encoded, &limits).expect("an encoded event is a valid payload");
    }
});

fn assert_same(a: &Event, b: &Event) {
    assert_eq!(a.kind, b.kind);
    assert_eq!(a.location, b.location);
    assert_eq!(a.data.get(), b.data.get(), "data is byte-exact");
    assert_eq!(a.id, b.id);
}
