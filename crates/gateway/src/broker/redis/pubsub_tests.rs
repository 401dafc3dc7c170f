//! Unit tests of the RESP2 pub/sub reader (`pubsub.rs`): frames split at every byte, errors,
//! malformed input.

use super::*;

fn parsed(buf: &[u8]) -> Option<(usize, String)> {
    parse(buf).unwrap().map(|f| {
        let kind = match f.kind {
            Kind::Error(r) => format!("error {}", String::from_utf8_lossy(&buf[r])),
            Kind::Push([Item::Bulk(a), Item::Bulk(b), Item::Bulk(c)]) => format!(
                "push {} {} {}",
                String::from_utf8_lossy(&buf[a]),
                String::from_utf8_lossy(&buf[b]),
                String::from_utf8_lossy(&buf[c])
            ),
            Kind::Push([Item::Bulk(a), Item::Bulk(b), Item::Int]) => format!(
                "confirm {} {}",
                String::from_utf8_lossy(&buf[a]),
                String::from_utf8_lossy(&buf[b])
            ),
            Kind::Push(_) => "push other".into(),
            Kind::Other => "other".into(),
        };
        (f.len, kind)
    })
}

#[test]
fn message_push_and_every_prefix_is_incomplete() {
    let frame = b"*3\r\n$7\r\nmessage\r\n$3\r\nc:9\r\n$13\r\n{\"type\":\"x\"}\n\r\n";
    assert_eq!(
        parsed(frame),
        Some((frame.len(), "push message c:9 {\"type\":\"x\"}\n".into()))
    );
    for n in 0..frame.len() {
        assert_eq!(parsed(&frame[..n]), None, "prefix of {n} bytes");
    }
}

#[test]
fn payload_may_contain_crlf_and_frames_follow_each_other() {
    let mut buf = b"*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$4\r\na\r\nb\r\n".to_vec();
    let first = buf.len();
    buf.extend_from_slice(b"*3\r\n$9\r\nsubscribe\r\n$3\r\nn:1\r\n:2\r\n");
    assert_eq!(parsed(&buf), Some((first, "push message c a\r\nb".into())));
    assert_eq!(
        parsed(&buf[first..]),
        Some((buf.len() - first, "confirm subscribe n:1".into()))
    );
}

#[test]
fn errors_simple_strings_and_other_arrays() {
    assert_eq!(
        parsed(b"-NOAUTH Authentication required.\r\n"),
        Some((34, "error NOAUTH Authentication required.".into()))
    );
    assert_eq!(parsed(b"+OK\r\n"), Some((5, "other".into())));
    assert_eq!(
        parsed(b"*4\r\n$8\r\npmessage\r\n$1\r\np\r\n$1\r\nc\r\n$1\r\nx\r\n"),
        Some((39, "other".into()))
    );
    assert_eq!(parsed(b"*-1\r\n"), Some((5, "other".into())));
    assert_eq!(parsed(b"$-1\r\n"), Some((5, "other".into())));
    assert_eq!(parsed(b"$0\r\n\r\n"), Some((6, "other".into())));
}

#[test]
fn malformed_frames_are_errors() {
    assert!(parse(b"?what\r\n").is_err());
    assert!(parse(b"$x\r\n").is_err());
    assert!(parse(b"$3\r\nabcXY").is_err());
    assert!(parse(b"*1\r\n*1\r\n:1\r\n").is_err());
    assert!(parse(b"$99999999999\r\n").is_err());
    assert!(parse(b"+O\rK\r\n").is_err());
    assert!(parse(b"$-\r\n").is_err());
    assert!(parse(b"$1x\r\n").is_err());
    assert!(parse(b"$1234567890123456789\r\n").is_err());
}

#[test]
fn commands_are_arrays_of_bulk_strings() {
    let mut out = Vec::new();
    encode_command(&mut out, &[b"SUBSCRIBE", b"c:1", b"n:1"]);
    assert_eq!(out, b"*3\r\n$9\r\nSUBSCRIBE\r\n$3\r\nc:1\r\n$3\r\nn:1\r\n");
}
