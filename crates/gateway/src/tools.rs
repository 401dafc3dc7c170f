//! Operator tools behind subcommands: mint a token, publish an event, watch a stream.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use futures_util::StreamExt;
use gleepost_event::{parse_and_validate, Limits, Publisher};
use tokio_tungstenite::tungstenite::Message;

use crate::auth::JwtAuth;
use crate::broker::RedisTarget;
use crate::config::Config;

/// `gleepost-gateway token`: print a JWT for `user` signed with the configured secret.
pub fn token(config: &Config, user: u64, ttl: Duration) -> Result<()> {
    let secret = config
        .jwt_secret
        .as_deref()
        .context("GATEWAY_JWT_SECRET (or --jwt-secret) is required to mint tokens")?;
    println!("{}", JwtAuth::new(secret.as_bytes()).mint(user, ttl)?);
    Ok(())
}

/// `gleepost-gateway publish`: publish one event through Redis (a server or a cluster), like a
/// backend service would.
pub async fn publish(config: &Config, users: &[u64], event: &str) -> Result<()> {
    let Some(target) = config.redis_target()? else {
        bail!(
            "publish needs REDIS_URL, REDIS_CLUSTER_URLS or REDIS_SENTINEL_URLS; with the embedded broker, use the \
             admin API (POST /v1/publish) of the running gateway"
        );
    };
    let limits = Limits {
        max_event_bytes: config.max_event_bytes,
    };
    let event = parse_and_validate(event.as_bytes(), &limits).context("invalid event")?;
    let publisher = match target {
        RedisTarget::Standalone(url) => Publisher::connect(&url).await,
        RedisTarget::Cluster(seeds) => Publisher::connect_cluster(&seeds).await,
        RedisTarget::Sentinel {
            sentinels,
            master,
            node,
        } => Publisher::connect_sentinel(&sentinels, &master, node, config.redis_timeout).await,
    }
    .context("connecting to Redis")?
    .with_history(config.history())
    .with_replicas(config.publish_replicas, config.redis_timeout)
    .with_limits(limits);
    let report = publisher.publish(users, &event).await?;
    println!(
        "published to {} users ({} subscribed gateway nodes received it)",
        report.users, report.receivers
    );
    Ok(())
}

/// `gleepost-gateway client`: print each event frame received from `url` until it closes.
pub async fn client(url: &str) -> Result<()> {
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .context("connecting (is the gateway running and the token valid?)")?;
    eprintln!("connected; waiting for events (Ctrl-C to quit)");
    while let Some(msg) = ws.next().await {
        match msg? {
            Message::Text(text) => println!("{text}"),
            Message::Close(frame) => {
                eprintln!("closed by server: {frame:?}");
                break;
            }
            _ => {}
        }
    }
    Ok(())
}
