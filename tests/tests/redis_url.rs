//! The ways `REDIS_URL` reaches Redis: the node's pub/sub connection (spoken directly in RESP)
//! and its command connection (redis-rs) both connect and authenticate as the URL says: a
//! `requirepass` password, an ACL user, a unix socket.

use anyhow::{ensure, Context, Result};
use gleepost_tests::{ensure_same_event, seed, Gateway, GatewayOptions, RedisServer};

/// A node on `url` becomes ready (its probe comes back through the subscription) and delivers
/// both a raw `PUBLISH` and an API publish to a connected user.
async fn node_delivers(redis: &RedisServer, url: String) -> Result<()> {
    let node = Gateway::start_ready(GatewayOptions::redis(url).fast_probes())
        .await
        .context("the node never became ready on an authenticated Redis")?;
    let mut client = node.connect(9).await?;
    let receivers = redis.publish("c:9", seed::MESSAGE.as_bytes()).await?;
    ensure!(receivers == 1, "one subscriber expected, got {receivers}");
    ensure_same_event(&client.next_text().await?, seed::MESSAGE)?;
    node.publish(&[9], seed::NOTIFICATION).await?;
    ensure_same_event(&client.next_text().await?, seed::NOTIFICATION)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn requirepass_password_from_the_url() -> Result<()> {
    let redis = RedisServer::start_with_password("s3cret-pass").await?;
    node_delivers(&redis, redis.url()).await
}

#[tokio::test(flavor = "multi_thread")]
async fn acl_user_and_password_from_the_url() -> Result<()> {
    let redis = RedisServer::start_with_password("admin-pass").await?;
    redis
        .cmd::<String>(&[
            "ACL", "SETUSER", "gateway", "on", ">gw-pass", "~*", "&*", "+@all",
        ])
        .await?;
    node_delivers(&redis, redis.url_as("gateway", "gw-pass")).await
}

#[tokio::test(flavor = "multi_thread")]
async fn unix_socket_url() -> Result<()> {
    let redis = RedisServer::start_with_unix_socket().await?;
    ensure!(redis.url().starts_with("unix://"), "url {}", redis.url());
    node_delivers(&redis, redis.url()).await
}
