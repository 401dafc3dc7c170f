//! Gleepost realtime gateway: a stateless node that holds clients' WebSocket connections and
//! delivers the JSON events published to their users.
//!
//! One event's path: a broker ([`broker`]) receives it → the [`registry`] finds the user's
//! connections → each connection's bounded [`outbox`] → [`transport::connection`] writes it to
//! the socket.

#![deny(missing_docs)]

pub mod admin;
pub mod auth;
pub mod broker;
pub mod config;
mod dev;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod history;
pub mod metrics;
pub mod node;
pub mod outbox;
pub mod registry;
pub mod server;
pub mod shutdown;
pub mod tools;
pub mod transport;
