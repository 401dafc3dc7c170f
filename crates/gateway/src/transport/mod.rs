//! The public port: HTTP server with the WebSocket endpoint, and the per-connection socket loop.

pub mod connection;
pub mod public;
mod timer;
