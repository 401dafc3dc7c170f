//! The per-message check of raw broker payloads (`gleepost_event::check_broker_payload`).
//!
//! Never panics, and agrees with a reference parse: accepted means a JSON object with exactly
//! one `type` member, a non-empty string; `not_json` means not JSON; `not_object` means JSON but
//! not an object; `no_type` means it starts as an object but has no such `type`.
#![no_main]

use std::borrow::Cow;
use std::fmt;

use gleepost_event::{check_broker_payload, Limits, PayloadError};
use libfuzzer_sys::fuzz_target;
use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::Value;

fuzz_target!(|bytes: &[u8]| {
    let limits = Limits::default();
    let verdict = check_broker_payload(bytes, &limits);
    if bytes.len() > limits.max_event_bytes {
        assert!(matches!(verdict, Err(PayloadError::Oversize { .. })));
        return;
    }
    // The reference: JSON syntax from a borrowed raw value, the `type` member from a full
    // parse. serde_json's `Value` refuses some valid JSON text (nesting deeper than 128 levels,
    // numbers beyond f64, lone surrogate escapes such as `"\ud800"`, all delivered verbatim):
    // when it does, the type is not judged. Invalid UTF-8 inside a skipped string passes the
    // check (the subscriber drops such payloads as `not_utf8`): the reference reads the text
    // with replacement characters, and judges the type and `not_json` only for UTF-8 input.
    let text = String::from_utf8_lossy(bytes);
    let utf8 = matches!(text, Cow::Borrowed(_));
    let raw = serde_json::from_str::<&RawValue>(&text);
    if let Err(e) = &raw {
        if e.to_string().contains("recursion limit") {
            return;
        }
    }
    let object = raw.as_ref().is_ok_and(|r| r.get().starts_with('{'));
    let full = serde_json::from_str::<Value>(&text);
    // The check parses `type` in full: such text there is reported as not JSON.
    let beyond_value = full.as_ref().is_err_and(|e| {
        let e = e.to_string();
        e.contains("number out of range") || e.contains("hex escape") || e.contains("code point")
    });
    let usable_type = full.ok().filter(|_| utf8).map(|value| {
        type_members(&text) == 1
            && value
                .get("type")
                .and_then(Value::as_str)
                .is_some_and(|k| !k.is_empty())
    });
    match verdict {
        Ok(()) => {
            assert!(object, "accepted a payload that is no JSON object");
            assert_ne!(usable_type, Some(false), "accepted without a usable type");
        }
        Err(PayloadError::NotJson) => {
            assert!(
                raw.is_err() || !utf8 || beyond_value,
                "valid JSON called not_json"
            )
        }
        Err(PayloadError::NotObject) => assert!(raw.is_ok() && !object),
        // An object whose `type` is unusable (a data error comes before a later syntax error).
        Err(PayloadError::NoType) => {
            assert!(bytes.trim_ascii_start().starts_with(b"{"));
            assert_ne!(usable_type, Some(true), "no_type for an object with a type");
        }
        Err(PayloadError::Oversize { .. }) => panic!("oversize within the limit"),
    }
});

/// How many members of the top-level object are named `type` (after unescaping).
fn type_members(text: &str) -> usize {
    struct Count(usize);
    impl<'de> Deserialize<'de> for Count {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Count;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("an object")
                }
                fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Count, A::Error> {
                    let mut n = 0;
                    while let Some(key) = map.next_key::<String>()? {
                        map.next_value::<IgnoredAny>()?;
                        n += usize::from(key == "type");
                    }
                    Ok(Count(n))
                }
            }
            d.deserialize_map(V)
        }
    }
    serde_json::from_str::<Count>(text).map_or(0, |c| c.0)
}
