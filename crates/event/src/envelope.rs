//! The event envelope: `{"type":…, "location":…, "data":…, "id":…}`.
//!
//! The envelope is the unit that travels from a publisher, through the broker, to every WebSocket
//! connection of a user. Only the envelope members are interpreted; `data` is kept as the exact
//! bytes that were published ([`RawValue`]), so key order, number formatting, string escapes and
//! whitespace inside `data` are delivered untouched.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Error returned by [`Event::from_json`].
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    /// The bytes are not a JSON object with the envelope members (`type` string, `data` value,
    /// optional `location`/`id` strings).
    #[error("invalid event envelope: {0}")]
    Parse(#[from] serde_json::Error),
}

/// One realtime event as delivered to clients.
///
/// Serializes with the members in the order `type`, `location` (omitted when `None`), `data`,
/// `id` (omitted when `None`). Unknown envelope members are ignored when parsing.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    /// The event type, e.g. `message` (see [`crate::kinds`]). Serialized as `type`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Optional URI of the resource that changed, e.g. `/conversations/67`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub location: Option<String>,
    /// The payload, kept byte-exact as published. JSON `null` is a valid payload.
    pub data: Box<RawValue>,
    /// Event id assigned by the gateway when history/resume is enabled.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub id: Option<String>,
}

impl Event {
    /// Creates an event without an id.
    pub fn new(kind: impl Into<String>, location: Option<String>, data: Box<RawValue>) -> Self {
        Event {
            kind: kind.into(),
            location,
            data,
            id: None,
        }
    }

    /// Parses an envelope. `data` is kept byte-exact; `type` and `data` are required.
    ///
    /// This checks the envelope shape only; use [`crate::validate()`] (or
    /// [`crate::parse_and_validate`]) to apply the gateway's rules.
    pub fn from_json(bytes: &[u8]) -> Result<Event, EventError> {
        Ok(serde_json::from_slice(bytes)?)
    }

    /// Returns the event with its `id` set.
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// Serializes the event once into compact JSON, with `data` copied verbatim.
    ///
    /// The result is cheap to clone ([`Bytes`]) for fan-out to many connections.
    pub fn encode(&self) -> Bytes {
        let mut out = Vec::with_capacity(self.encoded_len());
        // Infallible: writing into a Vec performs no I/O, and every member is a string or an
        // already-valid RawValue, whose Serialize impls never fail.
        serde_json::to_writer(&mut out, self).expect("serializing an Event into a Vec cannot fail");
        Bytes::from(out)
    }

    /// The exact length in bytes of [`Event::encode`]'s output, computed without allocating.
    pub fn encoded_len(&self) -> usize {
        // {"type":<s>,"data":<raw>}
        let mut n = r#"{"type":"#.len() + json_str_len(&self.kind) + r#","data":"#.len();
        n += self.data.get().len() + 1;
        if let Some(location) = &self.location {
            n += r#","location":"#.len() + json_str_len(location);
        }
        if let Some(id) = &self.id {
            n += r#","id":"#.len() + json_str_len(id);
        }
        n
    }
}

/// Length of `s` serialized as a JSON string by serde_json (including the quotes).
///
/// serde_json escapes `"` and `\` as two bytes, `\b \t \n \f \r` as two bytes, other control
/// characters below 0x20 as `\u00XX` (six bytes) and writes everything else verbatim.
fn json_str_len(s: &str) -> usize {
    2 + s
        .bytes()
        .map(|b| match b {
            b'"' | b'\\' | 0x08 | 0x09 | 0x0a | 0x0c | 0x0d => 2,
            0x00..=0x1f => 6,
            _ => 1,
        })
        .sum::<usize>()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_owned()).unwrap()
    }

    #[test]
    fn field_order_and_omission() {
        let e = Event::new("message", None, raw(r#"{"b":1,"a":2}"#));
        assert_eq!(
            &e.encode()[..],
            br#"{"type":"message","data":{"b":1,"a":2}}"#
        );
        let e = Event::new("x", Some("/l".into()), raw("null")).with_id("7-0");
        assert_eq!(
            &e.encode()[..],
            br#"{"type":"x","location":"/l","data":null,"id":"7-0"}"#
        );
    }

    #[test]
    fn encoded_len_matches_encode() {
        let tricky = "a\"b\\c\u{1}\u{8}\t\n\u{c}\r\u{1f}\u{7f}é😀/";
        for (kind, loc, id) in [
            ("message", None, None),
            (tricky, Some(tricky.to_owned()), Some(tricky.to_owned())),
            ("", Some(String::new()), None),
        ] {
            let mut e = Event::new(kind, loc, raw(r#" { "x" : 1.0e3 } "#.trim()));
            e.id = id;
            assert_eq!(e.encoded_len(), e.encode().len(), "{e:?}");
        }
    }

    #[test]
    fn missing_data_is_an_error_but_null_is_not() {
        assert!(Event::from_json(br#"{"type":"x"}"#).is_err());
        let e = Event::from_json(br#"{"type":"x","data":null}"#).unwrap();
        assert_eq!(e.data.get(), "null");
    }
}
