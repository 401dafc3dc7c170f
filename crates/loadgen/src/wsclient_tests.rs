//! Unit tests of the handshake and frame parser.

use super::*;

/// Encodes an unmasked server frame, forcing the given length encoding (2, 4 or 10 header bytes).
fn frame(fin: bool, opcode: u8, payload: &[u8], header_len: usize) -> Vec<u8> {
    let mut f = vec![(if fin { 0x80 } else { 0 }) | opcode];
    match header_len {
        2 => f.push(payload.len() as u8),
        4 => {
            f.push(126);
            f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        }
        _ => {
            f.push(127);
            f.extend_from_slice(&(payload.len() as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(payload);
    f
}

fn event(seq: u64, pad: usize) -> Vec<u8> {
    format!(
        r#"{{"type":"bench","data":{{"seq":{seq},"t":{},"u":7,"pad":"{}"}}}}"#,
        seq * 10,
        "x".repeat(pad)
    )
    .into_bytes()
}

#[derive(Debug, Default, PartialEq)]
struct Rec {
    seqs: Vec<Option<u64>>,
    pings: Vec<Vec<u8>>,
    closes: Vec<Option<u16>>,
}

impl FrameSink for Rec {
    fn message(&mut self, fields: Option<Fields>) {
        self.seqs.push(fields.map(|f| f.seq));
    }
    fn ping(&mut self, payload: &[u8]) {
        self.pings.push(payload.to_vec());
    }
    fn close(&mut self, code: Option<u16>) {
        self.closes.push(code);
    }
}

/// Feeds `stream` in chunks of `chunk` bytes the way the connection loop does.
fn feed(stream: &[u8], chunk: usize) -> Rec {
    let mut reader = FrameReader::default();
    let mut buf = vec![0u8; MAX_CARRY + 100 * 1024];
    let mut rec = Rec::default();
    for c in stream.chunks(chunk) {
        buf[MAX_CARRY..MAX_CARRY + c.len()].copy_from_slice(c);
        let start = reader.place_carry(&mut buf, MAX_CARRY);
        reader
            .process(&buf[start..MAX_CARRY + c.len()], &mut rec)
            .unwrap();
    }
    rec
}

fn mixed_stream() -> Vec<u8> {
    let mut s = Vec::new();
    s.extend(frame(true, OP_TEXT, &event(1, 3), 2));
    s.extend(frame(true, OP_PING, b"hb", 2));
    s.extend(frame(true, OP_TEXT, &event(2, 200), 4));
    s.extend(frame(true, OP_PONG, b"", 2));
    s.extend(frame(true, OP_TEXT, &event(3, 10), 10));
    s.extend(frame(false, OP_TEXT, &event(4, 5), 2));
    s.extend(frame(true, OP_PING, b"", 2)); // control frame between fragments
    s.extend(frame(false, OP_CONT, b"more", 2));
    s.extend(frame(true, OP_CONT, b"end", 2));
    s.extend(frame(true, OP_TEXT, b"not an event", 2));
    s.extend(frame(true, OP_CLOSE, &[0x03, 0xE8, b'b', b'y', b'e'], 2));
    s.extend(frame(true, OP_TEXT, &event(99, 0), 2)); // after close: ignored
    s
}

#[test]
fn frames_split_at_every_boundary() {
    let stream = mixed_stream();
    let expected = Rec {
        seqs: vec![Some(1), Some(2), Some(3), Some(4), None],
        pings: vec![b"hb".to_vec(), Vec::new()],
        closes: vec![Some(1000)],
    };
    for chunk in 1..=stream.len() {
        assert_eq!(feed(&stream, chunk), expected, "chunk size {chunk}");
    }
}

#[test]
fn long_frames_are_scanned_and_skipped() {
    let mut s = Vec::new();
    s.extend(frame(true, OP_TEXT, &event(1, 5_000), 4)); // 16-bit length
    s.extend(frame(true, OP_TEXT, &event(2, 100_000), 10)); // 64-bit length
    s.extend(frame(false, OP_TEXT, &event(3, 3_000), 4)); // fragmented long message
    s.extend(frame(true, OP_CONT, &[b'x'; 70_000], 10));
    s.extend(frame(true, OP_PING, b"p", 2));
    s.extend(frame(true, OP_TEXT, &event(4, 0), 2));
    for chunk in [1, 7, 1000, 4096, 65_000, 100 * 1024] {
        let rec = feed(&s, chunk);
        assert_eq!(
            rec.seqs,
            vec![Some(1), Some(2), Some(3), Some(4)],
            "chunk {chunk}"
        );
        assert_eq!(rec.pings, vec![b"p".to_vec()]);
    }
}

#[test]
fn carry_stays_bounded() {
    let s = frame(true, OP_TEXT, &event(1, 1_000_000), 10);
    let mut reader = FrameReader::default();
    let mut buf = vec![0u8; MAX_CARRY + 100 * 1024];
    let mut rec = Rec::default();
    for c in s.chunks(333) {
        buf[MAX_CARRY..MAX_CARRY + c.len()].copy_from_slice(c);
        let start = reader.place_carry(&mut buf, MAX_CARRY);
        reader
            .process(&buf[start..MAX_CARRY + c.len()], &mut rec)
            .unwrap();
    }
    assert_eq!(rec.seqs, vec![Some(1)]);
}

#[test]
fn protocol_errors() {
    let mut sink = Rec::default();
    let mut check = |bytes: &[u8], err: WsError| {
        let mut r = FrameReader::default();
        assert_eq!(r.process(bytes, &mut sink), Err(err));
    };
    check(&[0x81, 0x81, 0, 0, 0, 0, b'a'], WsError::MaskedFrame);
    check(&[0xC1, 0x00], WsError::ReservedBits);
    check(&[0x83, 0x00], WsError::BadOpcode(3));
    check(&frame(false, OP_PING, b"", 2), WsError::BadControlFrame);
    check(
        &frame(true, OP_PING, &[0; 126], 4),
        WsError::BadControlFrame,
    );
    check(&frame(true, OP_CONT, b"x", 2), WsError::BadFragmentation);
    let mut two = frame(false, OP_TEXT, b"a", 2);
    two.extend(frame(true, OP_TEXT, b"b", 2));
    check(&two, WsError::BadFragmentation);
    check(&[0x81, 127, 0x80, 0, 0, 0, 0, 0, 0, 1], WsError::BadLength);
}

#[test]
fn control_frames_are_masked() {
    let mut out = Vec::new();
    let mask = [1, 2, 3, 4];
    write_control_frame(&mut out, OP_PONG, b"hello", mask);
    assert_eq!(out[0], 0x8A);
    assert_eq!(out[1], 0x80 | 5);
    assert_eq!(&out[2..6], &mask);
    let unmasked: Vec<u8> = out[6..]
        .iter()
        .enumerate()
        .map(|(i, b)| b ^ mask[i % 4])
        .collect();
    assert_eq!(unmasked, b"hello");
}

#[test]
fn handshake_responses() {
    let mut ok = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         sec-websocket-accept: {WS_ACCEPT}\r\n\r\n"
    )
    .into_bytes();
    let head_len = ok.len();
    ok.extend([0x81, 0x00]);
    assert_eq!(parse_handshake(&ok), Handshake::Upgraded(head_len));
    assert_eq!(parse_handshake(&ok[..head_len - 1]), Handshake::Incomplete);
    let unauthorized = b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n";
    assert_eq!(parse_handshake(unauthorized), Handshake::Status(401));
    let wrong = b"HTTP/1.1 101 OK\r\nSec-WebSocket-Accept: nope\r\n\r\n";
    assert!(matches!(parse_handshake(wrong), Handshake::Invalid(_)));
    assert!(matches!(
        parse_handshake(b"SSH-2.0\r\n\r\n"),
        Handshake::Invalid(_)
    ));
}

#[test]
fn upgrade_request_forms() {
    let mut s = String::new();
    write_upgrade_request(&mut s, "127.0.0.1:8080", "/ws", "JWT", false);
    assert!(s.starts_with("GET /ws?access_token=JWT HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"));
    assert!(s.ends_with("Sec-WebSocket-Version: 13\r\n\r\n"));
    s.clear();
    write_upgrade_request(&mut s, "h", "/ws?x=1", "JWT", false);
    assert!(s.starts_with("GET /ws?x=1&access_token=JWT HTTP/1.1\r\n"));
    s.clear();
    write_upgrade_request(&mut s, "h", "/ws", "JWT", true);
    assert!(s.starts_with("GET /ws HTTP/1.1\r\nAuthorization: Bearer JWT\r\n"));
}
