//! The examples of the original Gleepost websocket documentation (tests/fixtures, copied verbatim).

use gleepost_event::payload::{Conversation, Message, Notification};
use gleepost_event::{kinds, parse_and_validate, validate, Event, Limits};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

const MESSAGE: &str = include_str!("fixtures/message.json");
const NEW_CONVERSATION: &str = include_str!("fixtures/new-conversation.json");
const NOTIFICATION: &str = include_str!("fixtures/notification.json");

/// The seed's `data` text: everything after `"data":` up to the closing envelope brace.
fn seed_data_text(seed: &str) -> &str {
    let start = seed.find("\"data\":").unwrap() + "\"data\":".len();
    let end = seed.rfind('}').unwrap();
    seed[start..end].trim()
}

/// The seed text with insignificant whitespace removed (member order kept, unlike `Value`,
/// which sorts keys).
fn compact(seed: &str) -> String {
    let (mut out, mut in_string, mut escaped) = (String::new(), false, false);
    for c in seed.chars() {
        if in_string {
            out.push(c);
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
        } else if !c.is_whitespace() {
            in_string = c == '"';
            out.push(c);
        }
    }
    // Sanity: same JSON value as the seed.
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap(),
        serde_json::from_str::<Value>(seed).unwrap()
    );
    out
}

/// Parses the seed, checks `data` byte-exactness, parses `data` into `T`, checks that `T`
/// re-serializes to the seed's data text, and returns the payload.
fn check_seed<T: DeserializeOwned + Serialize>(seed: &str, kind: &str, location: &str) -> T {
    let event = Event::from_json(seed.as_bytes()).unwrap();
    assert_eq!(event.kind, kind);
    assert_eq!(event.location.as_deref(), Some(location));
    assert_eq!(event.id, None);
    validate(&event, &Limits::default()).unwrap();
    // data is byte-exact through parse -> encode.
    let data_text = seed_data_text(seed);
    assert_eq!(event.data.get(), data_text);
    let encoded = String::from_utf8(event.encode().to_vec()).unwrap();
    assert!(encoded.contains(data_text), "{encoded}");
    assert_eq!(encoded, compact(seed), "envelope serializes in seed order");
    // Same through the HTTP API path.
    let parsed = parse_and_validate(seed.as_bytes(), &Limits::default()).unwrap();
    assert_eq!(parsed.encode(), event.encode());
    // Typed payload round-trip: member order equals the seed.
    let payload: T = serde_json::from_str(event.data.get()).unwrap();
    assert_eq!(serde_json::to_string(&payload).unwrap(), data_text);
    payload
}

fn assert_event_equals_seed(event: &Event, seed: &str) {
    let encoded = event.encode();
    let got: Value = serde_json::from_slice(&encoded).unwrap();
    let want: Value = serde_json::from_str(seed).unwrap();
    assert_eq!(got, want);
    assert_eq!(std::str::from_utf8(&encoded).unwrap(), compact(seed));
}

#[test]
fn message_seed() {
    let m: Message = check_seed(MESSAGE, kinds::MESSAGE, "/conversations/67");
    assert_eq!(m.by.username, "Patrick");
    assert_eq!(m.timestamp, "2013-12-12T15:20:54.665361234Z");
    assert_event_equals_seed(&m.into_event(67), MESSAGE);
}

#[test]
fn new_conversation_seed() {
    let c: Conversation = check_seed(
        NEW_CONVERSATION,
        kinds::NEW_CONVERSATION,
        "/conversations/1595",
    );
    assert_eq!(c.participants.len(), 2);
    assert_eq!(c.participants[0].profile_image, "");
    assert_eq!(
        c.expiry.as_ref().unwrap().time,
        "2013-12-16T14:23:27.609455414Z"
    );
    assert_event_equals_seed(&c.into_new_conversation_event(), NEW_CONVERSATION);
}

#[test]
fn notification_seed() {
    let n: Notification = check_seed(NOTIFICATION, kinds::NOTIFICATION, "/notifications");
    assert_eq!(n.kind, "added_you");
    assert_eq!(n.user.id, 2395);
    assert_event_equals_seed(&n.into_event(), NOTIFICATION);
}

#[test]
fn notification_ignores_unknown_members() {
    let n: Notification = serde_json::from_str(
        r#"{"id":1,"type":"commented","time":"t","user":{"id":2,"username":"u","profile_image":"","extra":1},"post":42,"seen":false}"#,
    )
    .unwrap();
    assert_eq!(n.kind, "commented");
}

#[test]
fn conversation_without_expiry_omits_it() {
    let c: Conversation =
        serde_json::from_str(r#"{"id":5,"lastActivity":"t","participants":[]}"#).unwrap();
    assert_eq!(c.expiry, None);
    assert_eq!(
        serde_json::to_string(&c).unwrap(),
        r#"{"id":5,"lastActivity":"t","participants":[]}"#
    );
}
