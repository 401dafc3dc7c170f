//! The per-message check of raw broker payloads (`gleepost_event::check_broker_payload`).
//!
//! Never panics, and agrees with a full JSON parse: accepted means a JSON object with exactly
//! one `type` member, a non-empty string; `not_json` means not JSON; `not_object` means JSON but
//! not an object; `no_type` means an object without such a `type`.
#![no_main]

use std::fmt;

use gleepost_event::{check_broker_payload, Limits, PayloadError};
use libfuzzer_sys::fuzz_target;
use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::Value;

fuzz_target!(|bytes: &[u8]| {
    let limits = Limits::default();
    let verdict = check_broker_payload(bytes, &limits);
    if bytes.len() > limits.max_event_bytes {
        assert!(matches!(verdict, Err(PayloadError::Oversize { .. })));
        return;
    }
    let full = serde_json::from_slice::<Value>(bytes);
    if let Err(e) = &full {
        // Limits of serde_json's `Value`, not of JSON: nesting deeper than 128 levels, numbers
        // beyond f64 and lone surrogate escapes (`"\ud800"`, valid JSON text, delivered
        // verbatim) are refused by `Value` but fine in a skipped member.
        let e = e.to_string();
        if e.contains("recursion limit")
            || e.contains("number out of range")
            || e.contains("invalid unicode code point")
        {
            return;
        }
    }
    match verdict {
        Ok(()) => {
            let value = full.expect("an accepted payload is JSON");
            assert_eq!(type_members(bytes), 1, "accepted: {value}");
            let kind = value.get("type").and_then(Value::as_str);
            assert!(kind.is_some_and(|k| !k.is_empty()), "accepted: {value}");
        }
        Err(PayloadError::NotJson) => assert!(full.is_err(), "valid JSON called not_json"),
        Err(PayloadError::NotObject) => assert!(full.is_ok_and(|v| !v.is_object())),
        Err(PayloadError::NoType) => {
            if let Ok(value) = full {
                let usable = value
                    .get("type")
                    .and_then(Value::as_str)
                    .is_some_and(|k| !k.is_empty());
                assert!(
                    type_members(bytes) != 1 || !usable,
                    "no_type for an object with a type: {value}"
                );
            }
        }
        Err(PayloadError::Oversize { .. }) => panic!("oversize within the limit"),
    }
});

/// How many members of the top-level object are named `type` (after unescaping).
fn type_members(bytes: &[u8]) -> usize {
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
    serde_json::from_slice::<Count>(bytes).map_or(0, |c| c.0)
}
