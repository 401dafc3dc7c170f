//! Validation of events published through the gateway and of raw broker payloads.
//!
//! * [`validate`] applies the gateway's rules to an [`Event`].
//! * [`parse_and_validate`] parses JSON from the HTTP publish API with precise errors.
//! * [`check_broker_payload`] is the cheap per-message check for raw JSON arriving on Redis
//!   channels (legacy backends `PUBLISH` there verbatim).

use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::envelope::Event;

/// Default maximum size of an encoded event: 64 KiB.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 64 * 1024;
/// Maximum length of `type`, in characters.
pub const MAX_TYPE_CHARS: usize = 64;
/// Maximum length of `location`, in characters.
pub const MAX_LOCATION_CHARS: usize = 512;

/// Size limits applied to events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Maximum size in bytes of an encoded event (for broker payloads: of the raw payload).
    pub max_event_bytes: usize,
}

impl Limits {
    /// The limits an event must meet before a broker with history adds its id: at most
    /// [`crate::history::MAX_ID_MEMBER_BYTES`] fewer bytes, so that the event as delivered, id
    /// included, meets `self`.
    pub fn before_id(self) -> Limits {
        Limits {
            max_event_bytes: self
                .max_event_bytes
                .saturating_sub(crate::history::MAX_ID_MEMBER_BYTES),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_event_bytes: DEFAULT_MAX_EVENT_BYTES,
        }
    }
}

/// Why an event (or JSON meant to be an event) was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    /// `type` is the empty string.
    #[error("event type must not be empty")]
    EmptyType,
    /// `type` is longer than [`MAX_TYPE_CHARS`].
    #[error("event type is {len} characters long; the maximum is {max}")]
    TypeTooLong {
        /// Length of the type in characters.
        len: usize,
        /// The maximum allowed.
        max: usize,
    },
    /// `type` contains a character outside `[a-z0-9._-]`.
    #[error(
        "event type contains {ch:?} at character {index}; allowed are a-z, 0-9, '.', '_' and '-'"
    )]
    TypeInvalidChar {
        /// The offending character.
        ch: char,
        /// Its position (in characters, from 0).
        index: usize,
    },
    /// `location` does not start with `/`.
    #[error("event location {location:?} must start with '/'")]
    LocationNotAbsolute {
        /// The rejected location (truncated to 64 characters).
        location: String,
    },
    /// `location` is longer than [`MAX_LOCATION_CHARS`].
    #[error("event location is {len} characters long; the maximum is {max}")]
    LocationTooLong {
        /// Length of the location in characters.
        len: usize,
        /// The maximum allowed.
        max: usize,
    },
    /// The encoded event is larger than [`Limits::max_event_bytes`].
    #[error("encoded event is {size} bytes; the maximum is {max} bytes")]
    TooLarge {
        /// Size of the encoded event in bytes.
        size: usize,
        /// The configured maximum.
        max: usize,
    },
    /// The input is not valid JSON.
    #[error("event is not valid JSON: {0}")]
    NotJson(String),
    /// The input is JSON but not an object.
    #[error("event must be a JSON object, got {0}")]
    NotObject(&'static str),
    /// The object has no `type` member.
    #[error("event has no \"type\" member")]
    MissingType,
    /// The object has no `data` member (`"data": null` is allowed).
    #[error("event has no \"data\" member (use null for an empty payload)")]
    MissingData,
    /// A member has the wrong JSON type.
    #[error("event member \"{member}\" must be {expected}, got {found}")]
    WrongMemberType {
        /// The member name.
        member: &'static str,
        /// What was expected, e.g. "a string".
        expected: &'static str,
        /// What was found, e.g. "a number".
        found: &'static str,
    },
    /// The object is otherwise malformed (e.g. a duplicated member).
    #[error("malformed event: {0}")]
    Malformed(String),
}

/// Applies the gateway rules to an event.
///
/// Checks, in order: encoded size, `type` (non-empty, at most 64 characters, only
/// `[a-z0-9._-]`), then `location` (starts with `/`, at most 512 characters).
pub fn validate(event: &Event, limits: &Limits) -> Result<(), ValidationError> {
    let size = event.encoded_len();
    if size > limits.max_event_bytes {
        return Err(ValidationError::TooLarge {
            size,
            max: limits.max_event_bytes,
        });
    }
    validate_type(&event.kind)?;
    if let Some(location) = &event.location {
        validate_location(location)?;
    }
    Ok(())
}

fn validate_type(kind: &str) -> Result<(), ValidationError> {
    if kind.is_empty() {
        return Err(ValidationError::EmptyType);
    }
    let len = kind.chars().count();
    if len > MAX_TYPE_CHARS {
        return Err(ValidationError::TypeTooLong {
            len,
            max: MAX_TYPE_CHARS,
        });
    }
    let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c);
    if let Some((index, ch)) = kind.chars().enumerate().find(|&(_, c)| !allowed(c)) {
        return Err(ValidationError::TypeInvalidChar { ch, index });
    }
    Ok(())
}

fn validate_location(location: &str) -> Result<(), ValidationError> {
    if !location.starts_with('/') {
        return Err(ValidationError::LocationNotAbsolute {
            location: location.chars().take(64).collect(),
        });
    }
    let len = location.chars().count();
    if len > MAX_LOCATION_CHARS {
        return Err(ValidationError::LocationTooLong {
            len,
            max: MAX_LOCATION_CHARS,
        });
    }
    Ok(())
}

/// Envelope members borrowed from the input; `Some` whenever the member is present (even `null`).
#[derive(Deserialize)]
struct Members<'a> {
    #[serde(rename = "type", borrow, default, deserialize_with = "present")]
    kind: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    location: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    data: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    id: Option<&'a RawValue>,
}

fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// Name of the JSON type of a raw value, for error messages.
fn json_kind(raw: &RawValue) -> &'static str {
    match raw.get().as_bytes().first() {
        Some(b'{') => "an object",
        Some(b'[') => "an array",
        Some(b'"') => "a string",
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        _ => "a number",
    }
}

/// Parses an optional string member; `null` counts as absent.
fn opt_string(
    member: &'static str,
    raw: Option<&RawValue>,
) -> Result<Option<String>, ValidationError> {
    match raw {
        None => Ok(None),
        Some(raw) if raw.get() == "null" => Ok(None),
        Some(raw) => string(member, raw).map(Some),
    }
}

fn string(member: &'static str, raw: &RawValue) -> Result<String, ValidationError> {
    if !raw.get().starts_with('"') {
        return Err(ValidationError::WrongMemberType {
            member,
            expected: "a string",
            found: json_kind(raw),
        });
    }
    serde_json::from_str(raw.get()).map_err(|e| ValidationError::Malformed(e.to_string()))
}

/// Parses JSON from the HTTP publish API into an [`Event`] and [`validate`]s it.
///
/// `data` is kept byte-exact. `location` and `id` may be absent or `null`; `data` must be present
/// (`null` is allowed). Unknown members are ignored.
pub fn parse_and_validate(bytes: &[u8], limits: &Limits) -> Result<Event, ValidationError> {
    let whole: &RawValue =
        serde_json::from_slice(bytes).map_err(|e| ValidationError::NotJson(e.to_string()))?;
    validate_raw(whole, limits)
}

/// [`parse_and_validate`] for JSON already parsed as a [`RawValue`] (a member of a larger
/// request): the same rules without a second pass to check that it is JSON.
pub fn validate_raw(whole: &RawValue, limits: &Limits) -> Result<Event, ValidationError> {
    if !whole.get().starts_with('{') {
        return Err(ValidationError::NotObject(json_kind(whole)));
    }
    let members: Members<'_> =
        serde_json::from_str(whole.get()).map_err(|e| ValidationError::Malformed(e.to_string()))?;
    let kind = string("type", members.kind.ok_or(ValidationError::MissingType)?)?;
    let data = members.data.ok_or(ValidationError::MissingData)?.to_owned();
    let location = opt_string("location", members.location)?;
    let id = opt_string("id", members.id)?;
    let event = Event {
        kind,
        location,
        data,
        id,
    };
    validate(&event, limits)?;
    Ok(event)
}

/// Why a raw broker payload was dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    /// The payload is larger than [`Limits::max_event_bytes`].
    #[error("payload is {size} bytes; the maximum is {max} bytes")]
    Oversize {
        /// Payload size in bytes.
        size: usize,
        /// The configured maximum.
        max: usize,
    },
    /// The payload is not valid JSON.
    #[error("payload is not valid JSON")]
    NotJson,
    /// The payload is JSON but not an object.
    #[error("payload is not a JSON object")]
    NotObject,
    /// The object has no non-empty string `type` member.
    #[error("payload has no non-empty string \"type\" member")]
    NoType,
}

impl PayloadError {
    /// A short, stable label for metrics: `oversize`, `not_json`, `not_object` or `no_type`.
    pub fn reason(&self) -> &'static str {
        match self {
            PayloadError::Oversize { .. } => "oversize",
            PayloadError::NotJson => "not_json",
            PayloadError::NotObject => "not_object",
            PayloadError::NoType => "no_type",
        }
    }
}

/// A `type` member that must be a non-empty string; nothing is stored or allocated.
struct NonEmptyStr;

impl<'de> Deserialize<'de> for NonEmptyStr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = NonEmptyStr;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a non-empty string")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<NonEmptyStr, E> {
                if s.is_empty() {
                    Err(E::invalid_length(0, &self))
                } else {
                    Ok(NonEmptyStr)
                }
            }
        }
        d.deserialize_str(V)
    }
}

/// Minimal view of a broker payload: only `type` is looked at, other members are skipped.
#[derive(Deserialize)]
struct BrokerProbe {
    #[serde(rename = "type")]
    _kind: NonEmptyStr,
}

/// Cheap check of a raw broker payload, run once per message received from Redis.
///
/// Checks, in order: size (before parsing), valid JSON, a JSON object, a non-empty string `type`
/// member. The payload is then delivered verbatim; nothing is re-encoded.
pub fn check_broker_payload(bytes: &[u8], limits: &Limits) -> Result<(), PayloadError> {
    if bytes.len() > limits.max_event_bytes {
        return Err(PayloadError::Oversize {
            size: bytes.len(),
            max: limits.max_event_bytes,
        });
    }
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        // Rare path: decide between "not JSON at all" and "JSON but not an object".
        return match serde_json::from_slice::<IgnoredAny>(bytes) {
            Ok(_) => Err(PayloadError::NotObject),
            Err(_) => Err(PayloadError::NotJson),
        };
    }
    match serde_json::from_slice::<BrokerProbe>(bytes) {
        Ok(_) => Ok(()),
        // The input starts with '{', so a data error means the object lacks a usable `type`.
        Err(e) if e.is_data() => Err(PayloadError::NoType),
        Err(_) => Err(PayloadError::NotJson),
    }
}
