//! A stand-in gateway for trying the load generator without the real one (the same fake the
//! integration tests use): two WebSocket endpoints, `POST /v1/publish`, `POST /v1/publish/batch`
//! (items for user 7 are refused) and a RESP listener that accepts `PUBLISH c:<uid> <json>`, all
//! on 127.0.0.1 ephemeral ports. JWT secret and API key are the test constants printed at start.
//! Exits after the given number of seconds (default 60).
//!
//! `cargo run --release -p gleepost-loadgen --example fake_gateway -- 120`

#[path = "../tests/fake/mod.rs"]
mod fake;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let secs: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let f = fake::start(std::time::Duration::ZERO).await;
    println!("ws_urls    {} {}", f.ws_urls[0], f.ws_urls[1]);
    println!("admin_url  {}", f.admin_url);
    println!("redis_url  {}", f.redis_url);
    println!("jwt_secret {}", fake::SECRET);
    println!("api_key    {}", fake::API_KEY);
    println!("pid        {}", std::process::id());
    tokio::time::sleep(std::time::Duration::from_secs(secs)).await;
    let relaxed = std::sync::atomic::Ordering::Relaxed;
    println!(
        "upgrades {} pongs {} batch requests {} items {} (most in one: {})",
        f.upgrades.load(relaxed),
        f.pongs.load(relaxed),
        f.batches.requests.load(relaxed),
        f.batches.items.load(relaxed),
        f.batches.max_items.load(relaxed)
    );
}
