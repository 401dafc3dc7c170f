//! Operator tools behind subcommands: mint a token, publish an event, watch a stream.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use futures_util::StreamExt;
use gleepost_event::{parse_and_validate, Limits, Publisher};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Error as WsError, Message};

use crate::auth::Minter;
use crate::broker::RedisTarget;
use crate::config::Config;

/// `gleepost-gateway token`: print an HS256 JWT for `user` signed with the configured secret,
/// with the configured `iss` and `aud` (tokens of public keys come from their issuer).
pub fn token(config: &Config, user: u64, ttl: Duration) -> Result<()> {
    let secret = config
        .jwt_secret
        .as_deref()
        .filter(|s| !s.is_empty())
        .context("GATEWAY_JWT_SECRET (or --jwt-secret) is required to mint tokens")?;
    let minter = Minter::new(secret.as_bytes(), config.claim_rules());
    println!("{}", minter.mint(user, ttl)?);
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
        // Bounded by their own settings (a refused connection is retried a few times, then
        // named with its cause).
        RedisTarget::Standalone(url) => Publisher::connect(&url).await,
        RedisTarget::Sentinel {
            sentinels,
            master,
            node,
        } => Publisher::connect_sentinel(&sentinels, &master, node, config.redis_timeout).await,
        // redis-rs's cluster client waits for the slot map as long as nodes accept connections
        // without answering: at most a few timeouts here.
        RedisTarget::Cluster(seeds) => {
            let limit = config.redis_timeout * 3;
            tokio::time::timeout(limit, Publisher::connect_cluster(&seeds))
                .await
                .map_err(|_| anyhow::anyhow!("connecting: no answer from Redis within {limit:?}"))?
        }
    }
    .map_err(|e| anyhow::anyhow!(causes(&e)))?
    .with_history(config.history())
    .with_replicas(config.publish_replicas, config.redis_timeout)
    .with_limits(limits);
    // Bounded like the API's publish (a cluster's slot being migrated, say, can hold a call
    // for as long as its client retries), plus one more timeout.
    let rounds = 2 + u32::from(config.publish_replicas > 0);
    let size = u32::try_from(users.len().saturating_sub(1) / 1000).unwrap_or(u32::MAX);
    let limit = config.redis_timeout * rounds.saturating_add(size);
    let report = tokio::time::timeout(limit, publisher.publish(users, &event))
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "publishing: no answer from Redis within {limit:?}; the event may or may not have been published"
            )
        })?
        .map_err(|e| anyhow::anyhow!("publishing: {}", causes(&e)))?;
    println!(
        "published to {} users ({} subscribed gateway nodes received it)",
        report.users, report.receivers
    );
    if !report.failed.is_empty() {
        for (user, error) in &report.failed {
            eprintln!("not published to user {user}: {error}");
        }
        anyhow::bail!("Redis refused the event for {} users", report.failed.len());
    }
    Ok(())
}

/// An error and its causes on one line, each cause once: Redis errors carry their I/O error
/// both in their text and as their source, which a plain chain would print three times.
fn causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text = format!("{text}: {cause_text}");
        }
        source = cause.source();
    }
    text
}

/// `gleepost-gateway client`: print each event frame received from `url` until it closes.
pub async fn client(url: &str) -> Result<()> {
    let (mut ws, _) = match tokio_tungstenite::connect_async(url).await {
        Ok(connected) => connected,
        // A refusal: its status and JSON body say why (401 bad token, 429, 503…).
        Err(WsError::Http(response)) => bail!("{}", refusal(&response)),
        Err(e) => bail!(
            "connecting to {} (is the gateway running?): {}",
            redact(url),
            causes(&e)
        ),
    };
    eprintln!("connected; waiting for events (Ctrl-C to quit)");
    while let Some(msg) = ws.next().await {
        match msg.map_err(|e| anyhow::anyhow!("connection lost: {}", causes(&e)))? {
            Message::Text(text) => println!("{text}"),
            Message::Close(frame) => {
                eprintln!("closed by server: {}", close_text(frame.as_ref()));
                break;
            }
            _ => {}
        }
    }
    Ok(())
}

/// `401 Unauthorized: {"error":"…"}`.
fn refusal(response: &tungstenite::http::Response<Option<Vec<u8>>>) -> String {
    let status = response.status();
    let body = response
        .body()
        .as_deref()
        .map(String::from_utf8_lossy)
        .unwrap_or_default();
    format!(
        "the gateway refused the connection: {} {}{}{}",
        status.as_str(),
        status.canonical_reason().unwrap_or(""),
        if body.is_empty() { "" } else { ": " },
        body.trim_end()
    )
}

/// `1001 server going away`; `no close code` for an empty close frame.
fn close_text(frame: Option<&CloseFrame>) -> String {
    match frame {
        Some(frame) if frame.reason.is_empty() => u16::from(frame.code).to_string(),
        Some(frame) => format!("{} {}", u16::from(frame.code), frame.reason),
        None => "no close code".to_string(),
    }
}

/// The URL without its query (it carries the access token).
fn redact(url: &str) -> &str {
    url.split_once('?').map_or(url, |(base, _)| base)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

    #[test]
    fn close_frames_read_as_code_and_reason() {
        let frame = CloseFrame {
            code: CloseCode::Away,
            reason: "server going away".into(),
        };
        assert_eq!(close_text(Some(&frame)), "1001 server going away");
        let bare = CloseFrame {
            code: CloseCode::Library(4001),
            reason: "".into(),
        };
        assert_eq!(close_text(Some(&bare)), "4001");
        assert_eq!(close_text(None), "no close code");
    }

    #[test]
    fn each_cause_is_shown_once() {
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let redis = redis::RedisError::from(io);
        let error = gleepost_event::PublishError::Connect {
            address: "127.0.0.1:1".into(),
            source: redis,
        };
        let text = causes(&error);
        assert!(
            text.starts_with("connecting to Redis at 127.0.0.1:1: "),
            "{text}"
        );
        assert_eq!(text.matches("refused").count(), 1, "{text}");
    }
}
