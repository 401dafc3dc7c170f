//! Gleepost realtime gateway: a stateless node that holds clients' WebSocket connections and
//! delivers the JSON events published to their users.
//!
//! One event's path: a broker ([`broker`]) receives it → the [`registry`] finds the user's
//! connections → each connection's bounded [`outbox`] → [`transport::connection`] writes it to
//! the socket.

#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod admin;
mod auth;
mod broker;
mod capacity;
pub mod config;
pub mod config_values;
mod dev;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod history;
mod log_limit;
mod metrics;
mod node;
mod outbox;
mod registry;
mod replay_budget;
pub mod server;
mod shutdown;
pub mod tools;
mod transport;
