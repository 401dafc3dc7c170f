//! The public port: HTTP server with the WebSocket endpoint, and the per-connection socket loop.

mod auth_budget;
mod budget;
mod client_ip;
pub(crate) mod connection;
mod demo;
mod ending;
mod handshake;
mod limits;
pub(crate) mod public;
mod timer;
