//! `lean-forwarder`: the baseline of the publish-path benchmarks (issue 14). **A benchmark
//! baseline only, never a product.**
//!
//! What a competent engineer writes when asked for "WebSocket plus one Redis subscription per
//! process, nothing else": it accepts `ws://<listen>/<any path>?access_token=<jwt>`, takes the
//! user id from the JWT's `sub` claim **without verifying the token** (anyone can connect as
//! anyone: run it only on loopback, for a benchmark), `SUBSCRIBE`s `<prefix><uid>` on its one
//! Redis connection while the user has connections here, and forwards every message of that
//! channel verbatim as a text frame to each of the user's connections (per-connection bounded
//! queue; a connection whose queue is full is closed with 1008). No history, ids, resume,
//! token checks, metrics, health endpoint, limits, pings, drain, reconnection or logging: when
//! Redis goes away the process exits.
//!
//! `scripts/bench.py` (scenario h) runs two of them on one core, driven by
//! `gleepost-loadgen --publish redis` (raw `PUBLISH c:<uid> <event>`).

mod hub;
mod redis;
mod ws;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;

/// Command line.
#[derive(Debug, Parser)]
#[command(
    name = "lean-forwarder",
    version,
    about = "Benchmark baseline only, never a product: WebSocket + one Redis subscription, \
             JWT `sub` taken unverified"
)]
struct Args {
    /// WebSocket listen address.
    #[arg(long, default_value = "127.0.0.1:8090")]
    listen: SocketAddr,
    /// Redis to subscribe on: `redis://host[:port]` (no password, no database).
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// Channel of user `<uid>`: this prefix followed by the id.
    #[arg(long, default_value = "c:")]
    channel_prefix: String,
    /// Messages queued per connection; a connection with a full queue is closed.
    #[arg(long, default_value_t = 1024)]
    queue: usize,
}

fn main() -> Result<()> {
    let args = Args::parse();
    // Like the gateway: one worker per available core (affinity respected), and the
    // single-threaded scheduler when that is one.
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let runtime = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()
    }
    .context("starting the tokio runtime")?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> Result<()> {
    let (hub, commands) = hub::Hub::new(args.channel_prefix.clone(), args.queue.max(1));
    let hub = Arc::new(hub);
    let redis = redis::connect(&args.redis_url, commands, hub.clone()).await?;
    let socket = match args.listen {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    }?;
    socket.set_reuseaddr(true)?;
    socket
        .bind(args.listen)
        .with_context(|| format!("binding {}", args.listen))?;
    // A deep backlog: connect bursts of thousands would overflow the default.
    let listener = socket.listen(4096)?;
    let accept = async {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(ws::serve(stream, hub.clone()));
                }
                // Out of file descriptors and the like: try again shortly.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    };
    tokio::select! {
        () = accept => Ok(()),
        r = redis => r.context("Redis connection"),
    }
}
