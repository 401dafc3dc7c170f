//! The RESP2 reader of the node's Redis pub/sub connection (`broker::pubsub`), fed over a real
//! Unix socket in chunks.
//!
//! Raw bytes (first byte even): never panics or hangs, and every push consumes input.
//! Well-formed frames (first byte odd, the rest decoded by `arbitrary`: what
//! Redis sends a subscriber, in any chunking, repeated, with messages larger than the read
//! buffer's shrink threshold, then optionally any trailing bytes): exactly the pushes encoded,
//! payloads byte-exact, and a clean end of stream when nothing trails.
#![no_main]

use std::sync::OnceLock;

use gleepost_gateway::fuzzing::{read_pubsub, OwnedPush, PubSubEnd, PubSubRead};
use libfuzzer_sys::arbitrary::{self, Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use tokio::runtime::Runtime;

/// Streams beyond this are not run (memory and time per input).
const MAX_STREAM: usize = 4 << 20;
/// Most writes per input (each yields to the reader): larger streams get larger chunks.
const MAX_CHUNKS: usize = 256;

/// Well-formed frames, repeated, sent in chunks of `chunk` bytes, then `trailer`.
#[derive(Arbitrary, Debug)]
struct Frames {
    items: Vec<Item>,
    repeat: u8,
    chunk: u16,
    trailer: Vec<u8>,
}

#[derive(Arbitrary, Debug)]
enum Item {
    Message {
        channel: Vec<u8>,
        payload: Vec<u8>,
    },
    /// A message whose payload is `size % 2 MiB` copies of `byte`.
    Big {
        size: u32,
        byte: u8,
    },
    Subscribe {
        channel: Vec<u8>,
        count: i64,
    },
    Unsubscribe {
        channel: Vec<u8>,
        count: i64,
    },
    PMessage {
        pattern: Vec<u8>,
        channel: Vec<u8>,
        payload: Vec<u8>,
    },
    /// `*2 pong ""`, the reply to PING in subscribed mode.
    Pong,
    Simple(Vec<u8>),
    Int(i64),
    NilBulk,
    NilArray,
    /// A message whose channel is a nil bulk: not a message.
    NilChannel {
        payload: Vec<u8>,
    },
}

fuzz_target!(|bytes: &[u8]| {
    // First byte: even, raw bytes in chunks of (byte / 2 + 1), 0xFE: in one write; odd: frames.
    let Some((&mode, rest)) = bytes.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        let chunk = if mode == 0xFE {
            rest.len().max(1)
        } else {
            usize::from(mode / 2) + 1
        };
        let read = run(rest.chunks(chunk).collect());
        // Every frame takes at least 3 bytes (`+\r\n`).
        assert!(read.pushes.len() <= rest.len() / 3, "{read:?}");
        return;
    }
    let Ok(Frames {
        items,
        repeat,
        chunk,
        trailer,
    }) = Frames::arbitrary_take_rest(Unstructured::new(rest))
    else {
        return;
    };
    let mut stream = Vec::new();
    let mut expected = Vec::new();
    for _ in 0..=repeat % 16 {
        for item in &items {
            expected.push(encode(item, &mut stream));
            if stream.len() > MAX_STREAM {
                return;
            }
        }
    }
    let well_formed = stream.len();
    stream.extend_from_slice(&trailer);
    let chunk = usize::from(chunk).max(stream.len() / MAX_CHUNKS).max(1);
    let read = run(stream.chunks(chunk).collect());
    assert!(
        read.pushes.len() >= expected.len(),
        "lost pushes of {well_formed} well-formed bytes: {:?}",
        read.end
    );
    for (i, (got, want)) in read.pushes.iter().zip(&expected).enumerate() {
        assert!(got == want, "push {i}: got {got:?}, want {want:?}");
    }
    if trailer.is_empty() {
        assert_eq!(read.pushes.len(), expected.len());
        assert_eq!(read.end, PubSubEnd::Closed);
    }
});

fn run(chunks: Vec<&[u8]>) -> PubSubRead {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    let runtime = RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
    });
    runtime
        .block_on(read_pubsub(&chunks))
        .expect("a Unix socket pair")
}

/// Append `item` as Redis sends it; returns the push the reader must make of it.
fn encode(item: &Item, out: &mut Vec<u8>) -> OwnedPush {
    match item {
        Item::Message { channel, payload } => {
            array(out, 3);
            bulk(out, b"message");
            bulk(out, channel);
            bulk(out, payload);
            OwnedPush::Message {
                channel: channel.clone(),
                payload: payload.clone(),
            }
        }
        Item::Big { size, byte } => {
            let payload = vec![*byte; *size as usize % (2 << 20)];
            encode(
                &Item::Message {
                    channel: b"c:1".to_vec(),
                    payload,
                },
                out,
            )
        }
        Item::Subscribe { channel, count } | Item::Unsubscribe { channel, count } => {
            let subscribe = matches!(item, Item::Subscribe { .. });
            array(out, 3);
            bulk(
                out,
                if subscribe {
                    &b"subscribe"[..]
                } else {
                    &b"unsubscribe"[..]
                },
            );
            bulk(out, channel);
            out.extend_from_slice(format!(":{count}\r\n").as_bytes());
            if subscribe {
                OwnedPush::Subscribed
            } else {
                OwnedPush::Unsubscribed
            }
        }
        Item::PMessage {
            pattern,
            channel,
            payload,
        } => {
            array(out, 4);
            bulk(out, b"pmessage");
            bulk(out, pattern);
            bulk(out, channel);
            bulk(out, payload);
            OwnedPush::Other
        }
        Item::Pong => {
            array(out, 2);
            bulk(out, b"pong");
            bulk(out, b"");
            OwnedPush::Other
        }
        Item::Simple(text) => {
            out.push(b'+');
            out.extend(text.iter().filter(|&&b| b != b'\r' && b != b'\n'));
            out.extend_from_slice(b"\r\n");
            OwnedPush::Other
        }
        Item::Int(n) => {
            out.extend_from_slice(format!(":{n}\r\n").as_bytes());
            OwnedPush::Other
        }
        Item::NilBulk => {
            out.extend_from_slice(b"$-1\r\n");
            OwnedPush::Other
        }
        Item::NilArray => {
            out.extend_from_slice(b"*-1\r\n");
            OwnedPush::Other
        }
        Item::NilChannel { payload } => {
            array(out, 3);
            bulk(out, b"message");
            out.extend_from_slice(b"$-1\r\n");
            bulk(out, payload);
            OwnedPush::Other
        }
    }
}

fn array(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(format!("*{n}\r\n").as_bytes());
}

fn bulk(out: &mut Vec<u8>, data: &[u8]) {
    out.extend_from_slice(format!("${}\r\n", data.len()).as_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}
