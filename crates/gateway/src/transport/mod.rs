//! The public port: HTTP server with the WebSocket endpoint, and the per-connection socket loop.

mod budget;
pub mod connection;
mod ending;
pub mod public;
mod timer;
