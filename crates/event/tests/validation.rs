//! One test per validation rule, plus the broker payload check.

use gleepost_event::{
    check_broker_payload, parse_and_validate, validate, Event, Limits, PayloadError, RawValue,
    ValidationError, DEFAULT_MAX_EVENT_BYTES,
};

fn ev(kind: &str, location: Option<&str>) -> Event {
    Event::new(
        kind,
        location.map(str::to_owned),
        RawValue::from_string("{}".to_owned()).unwrap(),
    )
}

fn check(event: &Event) -> Result<(), ValidationError> {
    validate(event, &Limits::default())
}

fn parse(json: &str) -> ValidationError {
    parse_and_validate(json.as_bytes(), &Limits::default()).unwrap_err()
}

#[test]
fn default_limit_is_64_kib() {
    assert_eq!(DEFAULT_MAX_EVENT_BYTES, 65536);
    assert_eq!(Limits::default().max_event_bytes, 65536);
}

#[test]
fn valid_events_pass() {
    check(&ev("message", Some("/conversations/67"))).unwrap();
    check(&ev("a.b_c-9", None)).unwrap();
    check(&ev(&"x".repeat(64), Some(&format!("/{}", "l".repeat(511))))).unwrap();
}

#[test]
fn empty_type() {
    let err = check(&ev("", None)).unwrap_err();
    assert_eq!(err, ValidationError::EmptyType);
    assert_eq!(err.to_string(), "event type must not be empty");
}

#[test]
fn type_too_long() {
    let err = check(&ev(&"x".repeat(65), None)).unwrap_err();
    assert_eq!(err, ValidationError::TypeTooLong { len: 65, max: 64 });
    assert_eq!(
        err.to_string(),
        "event type is 65 characters long; the maximum is 64"
    );
}

#[test]
fn type_invalid_char() {
    let err = check(&ev("Message", None)).unwrap_err();
    assert_eq!(err, ValidationError::TypeInvalidChar { ch: 'M', index: 0 });
    let err = check(&ev("new conversation", None)).unwrap_err();
    assert_eq!(err, ValidationError::TypeInvalidChar { ch: ' ', index: 3 });
    assert!(err.to_string().contains("' '"), "{err}");
    assert!(err.to_string().contains("a-z, 0-9"), "{err}");
    let err = check(&ev("café", None)).unwrap_err();
    assert_eq!(err, ValidationError::TypeInvalidChar { ch: 'é', index: 3 });
}

#[test]
fn location_not_absolute() {
    let err = check(&ev("message", Some("conversations/67"))).unwrap_err();
    assert_eq!(
        err,
        ValidationError::LocationNotAbsolute {
            location: "conversations/67".into()
        }
    );
    assert_eq!(
        err.to_string(),
        "event location \"conversations/67\" must start with '/'"
    );
    assert!(matches!(
        check(&ev("message", Some(""))),
        Err(ValidationError::LocationNotAbsolute { .. })
    ));
}

#[test]
fn location_too_long() {
    let loc = format!("/{}", "l".repeat(512));
    let err = check(&ev("message", Some(&loc))).unwrap_err();
    assert_eq!(err, ValidationError::LocationTooLong { len: 513, max: 512 });
    assert!(err.to_string().contains("513"), "{err}");
}

#[test]
fn event_too_large() {
    let limits = Limits {
        max_event_bytes: 30,
    };
    let e = ev("message", None); // {"type":"message","data":{}} = 28 bytes
    assert_eq!(e.encode().len(), 28);
    validate(&e, &limits).unwrap();
    let e = ev("message", Some("/c"));
    let size = e.encode().len();
    let err = validate(&e, &limits).unwrap_err();
    assert_eq!(err, ValidationError::TooLarge { size, max: 30 });
    assert_eq!(
        err.to_string(),
        format!("encoded event is {size} bytes; the maximum is 30 bytes")
    );
    // Exactly at the limit is allowed.
    validate(
        &e,
        &Limits {
            max_event_bytes: size,
        },
    )
    .unwrap();
}

#[test]
fn http_not_json() {
    let err = parse(r#"{"type":"x","data":}"#);
    assert!(matches!(err, ValidationError::NotJson(_)), "{err:?}");
    assert!(
        err.to_string().starts_with("event is not valid JSON: "),
        "{err}"
    );
    assert!(matches!(parse(""), ValidationError::NotJson(_)));
    assert!(matches!(
        parse(r#"{"type":"x","data":1} x"#),
        ValidationError::NotJson(_)
    ));
}

#[test]
fn http_not_object() {
    assert_eq!(parse("[1]"), ValidationError::NotObject("an array"));
    assert_eq!(parse(" \"x\" "), ValidationError::NotObject("a string"));
    assert_eq!(
        parse("null").to_string(),
        "event must be a JSON object, got null"
    );
}

#[test]
fn http_missing_type() {
    let err = parse(r#"{"data":{}}"#);
    assert_eq!(err, ValidationError::MissingType);
    assert_eq!(err.to_string(), "event has no \"type\" member");
}

#[test]
fn http_missing_data() {
    let err = parse(r#"{"type":"message"}"#);
    assert_eq!(err, ValidationError::MissingData);
    assert!(err.to_string().contains("\"data\""), "{err}");
    // null data is fine.
    let e = parse_and_validate(br#"{"type":"m","data":null}"#, &Limits::default()).unwrap();
    assert_eq!(e.data.get(), "null");
}

#[test]
fn http_wrong_member_types() {
    assert_eq!(
        parse(r#"{"type":5,"data":{}}"#),
        ValidationError::WrongMemberType {
            member: "type",
            expected: "a string",
            found: "a number"
        }
    );
    assert_eq!(
        parse(r#"{"type":null,"data":{}}"#).to_string(),
        "event member \"type\" must be a string, got null"
    );
    assert_eq!(
        parse(r#"{"type":"m","location":["/a"],"data":{}}"#),
        ValidationError::WrongMemberType {
            member: "location",
            expected: "a string",
            found: "an array"
        }
    );
    assert_eq!(
        parse(r#"{"type":"m","id":7,"data":{}}"#),
        ValidationError::WrongMemberType {
            member: "id",
            expected: "a string",
            found: "a number"
        }
    );
}

#[test]
fn http_duplicate_member_is_malformed() {
    assert!(matches!(
        parse(r#"{"type":"a","type":"b","data":{}}"#),
        ValidationError::Malformed(_)
    ));
}

#[test]
fn http_null_location_is_absent_and_rules_apply() {
    let e = parse_and_validate(
        br#"{"type":"m","location":null,"data":1}"#,
        &Limits::default(),
    )
    .unwrap();
    assert_eq!(e.location, None);
    assert_eq!(
        parse(r#"{"type":"Bad","data":{}}"#),
        ValidationError::TypeInvalidChar { ch: 'B', index: 0 }
    );
    assert!(matches!(
        parse_and_validate(
            br#"{"type":"m","data":"0123456789"}"#,
            &Limits {
                max_event_bytes: 10
            }
        ),
        Err(ValidationError::TooLarge { max: 10, .. })
    ));
}

fn broker(json: &str) -> Result<(), PayloadError> {
    check_broker_payload(json.as_bytes(), &Limits::default())
}

#[test]
fn broker_payload_ok() {
    broker(r#"{"type":"message","location":"/c/1","data":{"a":[1,{"b":null}]}}"#).unwrap();
    broker(" \n{\"data\":1,\"type\":\"caf\\u00e9\"}\n").unwrap();
}

#[test]
fn broker_payload_oversize_checked_first() {
    let limits = Limits { max_event_bytes: 8 };
    let err = check_broker_payload(b"not json at all", &limits).unwrap_err();
    assert_eq!(err, PayloadError::Oversize { size: 15, max: 8 });
    assert_eq!(err.reason(), "oversize");
    assert!(check_broker_payload(
        br#"{"type":"x"}"#,
        &Limits {
            max_event_bytes: 12
        }
    )
    .is_ok());
}

#[test]
fn broker_payload_not_json() {
    for bad in [
        "",
        "{",
        "hello",
        r#"{"type":"x"} trailing"#,
        r#"{"type":"x",}"#,
        "[1,",
    ] {
        let err = broker(bad).unwrap_err();
        assert_eq!(err, PayloadError::NotJson, "{bad:?}");
        assert_eq!(err.reason(), "not_json");
    }
}

#[test]
fn broker_payload_not_object() {
    for bad in ["[1,2]", "\"type\"", "42", "null", " true "] {
        let err = broker(bad).unwrap_err();
        assert_eq!(err, PayloadError::NotObject, "{bad:?}");
        assert_eq!(err.reason(), "not_object");
    }
}

#[test]
fn broker_payload_no_type() {
    for bad in [
        "{}",
        r#"{"data":{}}"#,
        r#"{"type":1}"#,
        r#"{"type":null}"#,
        r#"{"type":""}"#,
        r#"{"type":{"a":"b"}}"#,
        r#"{"Type":"x"}"#,
    ] {
        let err = broker(bad).unwrap_err();
        assert_eq!(err, PayloadError::NoType, "{bad:?}");
        assert_eq!(err.reason(), "no_type");
    }
}
