//! The public port: HTTP server with the WebSocket endpoint, and the per-connection socket loop.

mod auth_budget;
mod client_ip;
pub mod connection;
mod handshake;
mod limits;
pub mod public;
mod timer;
