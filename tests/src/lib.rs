//! End-to-end test harness: real `redis-server` processes, real `gleepost-gateway` processes
//! and real WebSocket clients, so each test in `tests/` reads like the scenario it checks.
//!
//! Tests start their nodes with the builders of [`nodes`] (on [`gateway`]'s [`Gateway`]), wait
//! with [`eventually`] ([`wait`]), sign in with [`credentials`], and write raw requests and
//! upgrades with [`http`] (hand-driven WebSocket frames: [`raw_ws`]; HTTP/2 streams: [`h2c`]).

use anyhow::{bail, Context, Result};

pub mod chaos;
pub mod client;
pub mod cluster;
pub mod credentials;
pub mod gateway;
pub mod h2c;
pub mod haproxy;
pub mod http;
pub mod jwks;
pub mod loadgen;
pub mod metrics;
pub mod nodes;
pub mod python;
pub mod raw_ws;
pub mod redis;
pub mod redis_inspect;
pub mod resume;
pub mod sentinel;
pub mod sockets;
pub mod sse;
pub mod stream;
pub mod subcommands;
pub mod wait;

pub use client::{Client, Closed, WAIT};
pub use cluster::RedisCluster;
pub use credentials::{token, token_with, ws_path, API_KEY, JWT_SECRET};
pub use gateway::{publish_via, Gateway, GatewayOptions};
pub use nodes::READY;
pub use redis::RedisServer;
pub use sentinel::RedisSentinel;
pub use wait::eventually;

/// The seed document's three examples (type, location, data exactly as in the document).
pub mod seed {
    /// The `message` example.
    pub const MESSAGE: &str = r#"{"type":"message","location":"/conversations/67","data":{"id":1173,"by":{"id":9,"username":"Patrick","profile_image":"https://s3-eu-west-1.amazonaws.com/gpimg/59bdb3c4a4151cc7ab41137eecbcc4d461291f72cfd6b6516b12de00a7ad1a94.jpg"},"text":"testing12345678901234","timestamp":"2013-12-12T15:20:54.665361234Z","seen":false}}"#;
    /// The `new-conversation` example.
    pub const NEW_CONVERSATION: &str = r#"{"type":"new-conversation","location":"/conversations/1595","data":{"id":1595,"lastActivity":"2013-12-16T14:13:27.609454716Z","participants":[{"id":2147,"username":"PaulLoran","profile_image":""},{"id":9,"username":"Patrick","profile_image":"https://s3-eu-west-1.amazonaws.com/gpimg/59bdb3c4a4151cc7ab41137eecbcc4d461291f72cfd6b6516b12de00a7ad1a94.jpg"}],"expiry":{"time":"2013-12-16T14:23:27.609455414Z","ended":false}}}"#;
    /// The `notification` example.
    pub const NOTIFICATION: &str = r#"{"type":"notification","location":"/notifications","data":{"id":596,"type":"added_you","time":"2013-12-16T14:33:40.260990792Z","user":{"id":2395,"username":"TestingUser","profile_image":"https://s3-eu-west-1.amazonaws.com/gpimg/5c780da1230506100f037abf88d74d88cb0556510c49af40c95ee02e0a35ad57.png"}}}"#;
}

/// The text of the `data` member of an event frame, exactly as sent (byte-exact checks);
/// `None` when the frame is not a JSON object with a `data` member.
pub fn data_text(frame: &str) -> Option<&str> {
    #[derive(serde::Deserialize)]
    struct Envelope<'a> {
        // Not an Option: that would turn `"data":null` into `None`.
        #[serde(borrow)]
        data: &'a serde_json::value::RawValue,
    }
    serde_json::from_str::<Envelope<'_>>(frame)
        .ok()
        .map(|e| e.data.get())
}

/// The frame carries the event published as `published`: same `type` and `location`, and the
/// `data` member byte for byte (the gateway may add an `id` member when history is on).
pub fn ensure_same_event(frame: &str, published: &str) -> Result<()> {
    let parse = |text: &str| -> Result<serde_json::Value> {
        serde_json::from_str(text).with_context(|| format!("not JSON: {text}"))
    };
    let (got, want) = (parse(frame)?, parse(published)?);
    if got["type"] != want["type"] || got["location"] != want["location"] {
        bail!("wrong envelope: got {frame}, published {published}");
    }
    if data_text(frame) != data_text(published) {
        bail!("data not delivered byte-exact: got {frame}, published {published}");
    }
    Ok(())
}

/// A free TCP port on 127.0.0.1 (bound then released).
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
