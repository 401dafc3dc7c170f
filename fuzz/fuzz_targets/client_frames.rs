//! The client frame path: bytes a client sends after the upgrade, into a server-side
//! `WebSocketStream` configured as the gateway configures every client connection, read (and
//! answered as the connection task answers: close replies flushed, 1009 for a message too big)
//! until the stream ends or fails.
//!
//! Input: a flags byte, then the client's bytes. Flags 0xF1: flood, the bytes are sent again and
//! again up to 512 KiB. Flag 2: the client reads what the server writes (otherwise it never
//! reads, like a hostile client). Never panics or hangs, and the heap the connection holds stays under
//! 256 KiB whatever the client sends (4 KiB frames, small buffers: far less in practice).
#![no_main]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::runtime::Runtime;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Bytes a flooding client sends.
const FLOOD_BYTES: usize = 512 << 10;
/// Most heap the connection may hold above its idle size.
const MAX_GROWTH: usize = 256 << 10;
/// Socket buffer in each direction.
const PIPE: usize = 8 << 10;
/// Bound on the server's writes (the clock is paused: this costs no real time).
const WRITE_DEADLINE: Duration = Duration::from_secs(10);

/// Counts live heap bytes and their peak.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let live = LIVE.fetch_add(by, Ordering::Relaxed) + by;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

// SAFETY: every call is forwarded to `System` unchanged; only counters are updated besides.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            grew(new_size);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn setup() -> &'static (Runtime, WebSocketConfig) {
    static SETUP: OnceLock<(Runtime, WebSocketConfig)> = OnceLock::new();
    SETUP.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("a runtime");
        let config = gleepost_gateway::fuzzing::websocket_config().expect("default settings");
        (runtime, config)
    })
}

fuzz_target!(|bytes: &[u8]| {
    let Some((&flags, data)) = bytes.split_first() else {
        return;
    };
    // Flooding costs ~25 ms an input: one flags byte in 16 floods.
    let (flood, reads) = (flags & 0xF1 == 0xF1, flags & 2 != 0);
    let (runtime, config) = setup();
    runtime.block_on(async {
        let (client, server) = tokio::io::duplex(PIPE);
        let (mut from_server, mut to_server) = tokio::io::split(client);
        let ws = WebSocketStream::from_raw_socket(server, Role::Server, Some(*config)).await;
        let idle = LIVE.load(Ordering::Relaxed);
        PEAK.store(idle, Ordering::Relaxed);
        let send = async move {
            let total = if flood { FLOOD_BYTES } else { data.len() };
            let mut sent = 0;
            while sent < total && !data.is_empty() {
                let n = (total - sent).min(data.len());
                if to_server.write_all(&data[..n]).await.is_err() {
                    return;
                }
                sent += n;
            }
            let _ = to_server.shutdown().await;
        };
        let drain = async move {
            let mut buf = [0u8; 4096];
            while reads && matches!(from_server.read(&mut buf).await, Ok(1..)) {}
        };
        tokio::join!(send, drain, serve(ws));
        let growth = PEAK.load(Ordering::Relaxed).saturating_sub(idle);
        assert!(
            growth <= MAX_GROWTH,
            "the connection held {growth} bytes of heap (flood {flood}, client reads {reads})"
        );
    });
});

/// Read as the connection task does until the stream ends or fails.
async fn serve(mut ws: WebSocketStream<DuplexStream>) {
    loop {
        match ws.next().await {
            None => return,
            Some(Ok(Message::Close(_))) => {
                let _ = tokio::time::timeout(WRITE_DEADLINE, ws.flush()).await;
                return;
            }
            Some(Ok(_)) => {}
            Some(Err(WsError::Capacity(CapacityError::MessageTooLong { .. }))) => {
                let frame = CloseFrame {
                    code: CloseCode::Size,
                    reason: "message too big".into(),
                };
                let closing = ws.send(Message::Close(Some(frame)));
                let _ = tokio::time::timeout(WRITE_DEADLINE, closing).await;
                return;
            }
            Some(Err(_)) => return,
        }
    }
}
