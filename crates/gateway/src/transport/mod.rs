//! The public port: the HTTP server (`public.rs`), client admission (`admit.rs`), and the three
//! transports: WebSocket (`connection.rs`, and `session.rs`: the per-connection socket loop),
//! Server-Sent Events (`sse.rs`) and long-poll (`poll.rs`).

mod admit;
mod auth_budget;
mod budget;
mod client_ip;
pub(crate) mod connection;
mod cors;
mod demo;
mod ending;
mod handshake;
mod limits;
mod poll;
pub(crate) mod public;
mod session;
mod sse;
mod timer;
