//! # gleepost-event
//!
//! The Gleepost realtime event model, shared by the gateway and by Rust backend services:
//!
//! * [`Event`] — the envelope `{"type":…, "location":…, "data":…, "id":…}`; `data` is kept
//!   byte-exact from parse to [`Event::encode`].
//! * [`validate()`], [`parse_and_validate`] / [`validate_raw`], [`check_broker_payload`] — the
//!   gateway's rules.
//! * [`keys`] — Redis channel / key naming ([`Template`], [`history_key`], [`epoch_key`]).
//! * [`Publisher`] — publish straight to Redis (to each user's gateway channel `gp:user:{<id>}`,
//!   with history when on), like the admin HTTP API.
//! * [`payload`] — typed payloads of the known event types and [`kinds`] constants.
//!
//! ## Publishing from a Rust service
//!
//! ```no_run
//! use gleepost_event::payload::{Message, User};
//! use gleepost_event::Publisher;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let publisher = Publisher::connect("redis://127.0.0.1:6379/").await?;
//! let event = Message {
//!     id: 1173,
//!     by: User { id: 9, username: "Patrick".into(), profile_image: String::new() },
//!     text: "hello".into(),
//!     timestamp: "2013-12-12T15:20:54.665361234Z".into(),
//!     seen: false,
//! }
//! .into_event(67);
//! let report = publisher.publish(&[9, 2147], &event).await?;
//! println!("published to {} users, {} receivers", report.users, report.receivers);
//! # Ok(())
//! # }
//! ```
//!
//! A runnable version is `examples/publish.rs`; it publishes the message example of the original
//! Gleepost websocket documentation to user 9:
//!
//! ```text
//! REDIS_URL=redis://127.0.0.1:6379/ cargo run -p gleepost-event --example publish
//! ```

#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod batcher;
pub mod conn;
pub mod envelope;
pub mod history;
pub mod keys;
pub mod payload;
pub mod publisher;
mod refresh;
pub mod script;
pub mod sentinel;
pub mod single;
pub mod validate;

pub use conn::{tcp_settings, RedisConn};
pub use envelope::{Event, EventError};
pub use history::{EventId, HistoryConfig};
pub use keys::{
    epoch_key, history_key, Template, TemplateError, DEFAULT_CHANNELS, DEFAULT_TOKEN_KEY,
    PROBE_CHANNEL_PREFIX,
};
pub use payload::{event, kinds};
pub use publisher::{PublishError, PublishReport, Publisher};
pub use script::SlotScript;
pub use sentinel::SentinelConn;
pub use serde_json::value::RawValue;
pub use single::SingleConn;
pub use validate::{
    check_broker_payload, parse_and_validate, validate, validate_raw, Limits, PayloadError,
    ValidationError, DEFAULT_MAX_EVENT_BYTES,
};
