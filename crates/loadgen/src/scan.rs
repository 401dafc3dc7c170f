//! Allocation-free scanner for the three benchmark fields of an event frame.
//!
//! The publisher writes `data` as `{"seq":N,"t":T,"u":U,"pad":"…"}` and the gateway delivers
//! `data` verbatim, so the fields are found with one substring search for `"seq":` followed by
//! literal checks for `,"t":` and `,"u":`. If that layout is not found, each field is searched
//! for separately (still without allocating).

use std::sync::LazyLock;

use memchr::memmem::Finder;

/// The benchmark fields of one delivered event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fields {
    /// Per-user publish sequence number (starts at 1).
    pub seq: u64,
    /// Publish time in nanoseconds since the load generator's base instant.
    pub t: u64,
    /// User id the event was published to.
    pub u: u64,
}

static SEQ: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"seq\":"));
static T: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"t\":"));
static U: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"u\":"));

/// Extracts `seq`, `t` and `u` from a (possibly truncated) event payload.
///
/// Returns `None` if any of them is missing, not an unsigned integer, or runs into the end of
/// `payload` (so a truncated prefix never yields a truncated number).
pub fn scan(payload: &[u8]) -> Option<Fields> {
    let seq_at = SEQ.find(payload)? + 6;
    let (seq, mut pos) = parse_u64(payload, seq_at)?;
    // Fast path: the exact layout written by the publisher.
    if let Some(t_at) = expect(payload, pos, b",\"t\":") {
        let (t, p) = parse_u64(payload, t_at)?;
        pos = p;
        if let Some(u_at) = expect(payload, pos, b",\"u\":") {
            let (u, _) = parse_u64(payload, u_at)?;
            return Some(Fields { seq, t, u });
        }
    }
    // Slow path: fields in another order or with whitespace.
    let t_at = T.find(payload)? + 4;
    let u_at = U.find(payload)? + 4;
    let (t, _) = parse_u64(payload, t_at)?;
    let (u, _) = parse_u64(payload, u_at)?;
    Some(Fields { seq, t, u })
}

#[inline]
fn expect(b: &[u8], pos: usize, lit: &[u8]) -> Option<usize> {
    let end = pos.checked_add(lit.len())?;
    (b.get(pos..end)? == lit).then_some(end)
}

/// Parses an unsigned decimal at `pos` (after optional spaces). The number must be followed by
/// another byte inside `b`.
#[inline]
fn parse_u64(b: &[u8], mut pos: usize) -> Option<(u64, usize)> {
    while b.get(pos) == Some(&b' ') {
        pos += 1;
    }
    let start = pos;
    let mut v: u64 = 0;
    while let Some(&c) = b.get(pos) {
        if !c.is_ascii_digit() {
            break;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
        pos += 1;
    }
    (pos > start && pos < b.len()).then_some((v, pos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_fields_in_publisher_layout() {
        let p =
            br#"{"type":"bench","data":{"seq":42,"t":123456789,"u":2147,"pad":"xxxx"},"id":"9"}"#;
        assert_eq!(
            scan(p),
            Some(Fields {
                seq: 42,
                t: 123456789,
                u: 2147
            })
        );
    }

    #[test]
    fn tolerates_the_history_id() {
        // What the history publish script delivers: the event with `"id"` appended last.
        let event = br#"{"type":"bench","data":{"seq":7,"t":99,"u":12,"pad":"xx"}}"#;
        let framed = gleepost_event::history::splice_id(event, "k3x9q0abcd-1732752000000-3");
        assert!(framed.ends_with(br#","id":"k3x9q0abcd-1732752000000-3"}"#));
        assert_eq!(
            scan(&framed),
            Some(Fields {
                seq: 7,
                t: 99,
                u: 12
            })
        );
    }

    #[test]
    fn finds_fields_in_other_orders() {
        let p = br#"{"type":"typing","location":"/x","data":{"u": 7, "t":5,"seq":3}}"#;
        assert_eq!(scan(p), Some(Fields { seq: 3, t: 5, u: 7 }));
        // "type" must not be mistaken for "t".
        let p = br#"{"type":"bench","data":{"pad":"","seq":1,"u":2,"t":9}}"#;
        assert_eq!(scan(p), Some(Fields { seq: 1, t: 9, u: 2 }));
    }

    #[test]
    fn rejects_missing_bad_or_truncated() {
        assert_eq!(scan(br#"{"type":"x","data":{}}"#), None);
        assert_eq!(scan(br#"{"data":{"seq":"1","t":2,"u":3}}"#), None);
        assert_eq!(scan(br#"{"data":{"seq":1,"t":2}}"#), None);
        // Truncated in the middle of a number: never yields a wrong value.
        assert_eq!(scan(br#"{"data":{"seq":1,"t":2,"u":34"#), None);
        assert_eq!(
            scan(br#"{"data":{"seq":1,"t":2,"u":34,"#).map(|f| f.u),
            Some(34)
        );
        // Overflow.
        assert_eq!(scan(br#"{"seq":99999999999999999999,"t":1,"u":1}"#), None);
    }
}
