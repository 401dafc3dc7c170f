//! Events of any type pass through byte-exactly, and the later types' helpers build valid events.

use gleepost_event::payload::{Presence, Read, Typing, VideoReady};
use gleepost_event::{event, kinds, parse_and_validate, validate, Event, Limits};

const TRICKY_DATA: &str = concat!(
    r#"{ "z" : 1.0e3, "a":12345678901234567890, "big": -0.000000000000000000001E+400,"#,
    "\n\t",
    r#""s":"caf\u00e9 \ud83d\ude00 \/ \" \\ \n", "m":"é😀", "arr":[ 1 , 2.50 ,-0 ], "dup":1, "dup":2,"#,
    r#" "n":null, "t":true }"#
);

#[test]
fn unknown_type_round_trips_byte_exactly() {
    let input = format!(
        "  {{ \"id\":\"42-0\", \"data\" : {TRICKY_DATA} ,\n \"extra\": [1], \"type\":\"x.custom_v2-beta\" , \"location\" : \"/x/\\u00e9\"}}  "
    );
    let event = Event::from_json(input.as_bytes()).unwrap();
    assert_eq!(event.data.get(), TRICKY_DATA);
    assert_eq!(event.location.as_deref(), Some("/x/é"));
    let expected = format!(
        r#"{{"type":"x.custom_v2-beta","location":"/x/é","data":{TRICKY_DATA},"id":"42-0"}}"#
    );
    assert_eq!(std::str::from_utf8(&event.encode()).unwrap(), expected);
    // Re-parsing the encoded form is a fixed point.
    let again = Event::from_json(&event.encode()).unwrap();
    assert_eq!(again.encode(), event.encode());
    // The HTTP path keeps it too.
    let parsed = parse_and_validate(input.as_bytes(), &Limits::default()).unwrap();
    assert_eq!(parsed.encode(), event.encode());
}

#[test]
fn scalar_and_null_data_round_trip() {
    for data in ["null", "0", "1.0E-7", r#""\u0000""#, "[]", "{}", "[ ]"] {
        let input = format!(r#"{{"type":"t","data":{data}}}"#);
        let event = Event::from_json(input.as_bytes()).unwrap();
        assert_eq!(std::str::from_utf8(&event.encode()).unwrap(), input);
    }
}

#[test]
fn kinds_are_valid_types() {
    assert_eq!(kinds::ALL.len(), 13);
    for kind in kinds::ALL {
        let e = event(kind, None, &()).unwrap();
        validate(&e, &Limits::default()).unwrap();
    }
}

#[test]
fn event_helper() {
    let e = event(
        kinds::VIEWS,
        Some("/posts/3".into()),
        &serde_json::json!({"views": 3}),
    )
    .unwrap();
    assert_eq!(
        &e.encode()[..],
        br#"{"type":"views","location":"/posts/3","data":{"views":3}}"#
    );
    let mut bad = std::collections::HashMap::new();
    bad.insert(vec![1u8], 1);
    assert!(event("x", None, &bad).is_err());
}

#[test]
fn later_type_helpers() {
    let cases = [
        (
            Read {
                conversation: 67,
                user: 9,
                last_read: 1173,
            }
            .into_event(),
            r#"{"type":"read","location":"/conversations/67","data":{"conversation":67,"user":9,"last_read":1173}}"#,
        ),
        (
            Typing {
                conversation: 67,
                user: 9,
                typing: true,
            }
            .into_event(),
            r#"{"type":"typing","location":"/conversations/67","data":{"conversation":67,"user":9,"typing":true}}"#,
        ),
        (
            Presence {
                user: 9,
                status: "online".into(),
            }
            .into_event(),
            r#"{"type":"presence","data":{"user":9,"status":"online"}}"#,
        ),
        (
            VideoReady {
                id: 5,
                status: "ready".into(),
                mp4: Some("https://v/5.mp4".into()),
                webm: None,
                thumbnails: vec!["https://v/5.jpg".into()],
            }
            .into_event(),
            r#"{"type":"video-ready","location":"/videos/5","data":{"id":5,"status":"ready","mp4":"https://v/5.mp4","thumbnails":["https://v/5.jpg"]}}"#,
        ),
    ];
    for (event, want) in cases {
        validate(&event, &Limits::default()).unwrap();
        assert_eq!(std::str::from_utf8(&event.encode()).unwrap(), want);
    }
}
