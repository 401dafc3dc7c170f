//! What a Redis server sees of the gateways: the channels subscribed (`PUBSUB`), its clients
//! (`CLIENT LIST`) and which of them belong to one gateway process.

use std::collections::BTreeSet;

use anyhow::{bail, Context, Result};

use crate::sockets::tcp_ports_to;
use crate::{Gateway, RedisServer};

/// Prefix of the nodes' self-probe channels (`gp:probe:<node>`).
pub const PROBE_PREFIX: &str = "gp:probe:";

/// The channels a node subscribes for a user: the default legacy ones `c:<id>` and `n:<id>`,
/// and the gateway's own `gp:user:{<id>}` (publish API, `Publisher`).
pub fn user_channels(user: u64) -> [String; 3] {
    [
        format!("c:{user}"),
        format!("n:{user}"),
        format!("gp:user:{{{user}}}"),
    ]
}

/// The port of a test Redis server.
pub fn redis_port(redis: &RedisServer) -> Result<u16> {
    let url = redis.url();
    url.trim_end_matches('/')
        .rsplit_once(':')
        .and_then(|(_, port)| port.parse().ok())
        .with_context(|| format!("no port in {url}"))
}

/// Channels with at least one subscriber (`PUBSUB CHANNELS`), without the nodes' probe channels.
pub async fn user_channels_subscribed(redis: &RedisServer) -> Result<BTreeSet<String>> {
    let all: Vec<String> = redis.cmd(&["PUBSUB", "CHANNELS"]).await?;
    Ok(all
        .into_iter()
        .filter(|c| !c.starts_with(PROBE_PREFIX))
        .collect())
}

/// The probe channels currently subscribed (one per live node).
pub async fn probe_channels_subscribed(redis: &RedisServer) -> Result<BTreeSet<String>> {
    let pattern = format!("{PROBE_PREFIX}*");
    let all: Vec<String> = redis.cmd(&["PUBSUB", "CHANNELS", &pattern]).await?;
    Ok(all.into_iter().collect())
}

/// Subscriber count of each channel (`PUBSUB NUMSUB`).
pub async fn numsub(redis: &RedisServer, channels: &[String]) -> Result<Vec<(String, i64)>> {
    let mut args = vec!["PUBSUB", "NUMSUB"];
    args.extend(channels.iter().map(String::as_str));
    redis.cmd(&args).await
}

/// One line of `CLIENT LIST`.
#[derive(Debug, Clone)]
pub struct RedisClient {
    /// `id=`.
    pub id: String,
    /// `addr=` (the client's `ip:port`).
    pub addr: String,
    /// `sub=`: channels this connection is subscribed to.
    pub sub: u64,
    /// `cmd=`: last command.
    pub cmd: String,
    /// The whole line.
    pub line: String,
}

/// Every client of the server except the connection asking (`CLIENT LIST`).
pub async fn client_list(redis: &RedisServer) -> Result<Vec<RedisClient>> {
    let mut conn = redis.connection().await?;
    let own: i64 = redis::cmd("CLIENT")
        .arg("ID")
        .query_async(&mut conn)
        .await?;
    let text: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut conn)
        .await?;
    let own = own.to_string();
    Ok(text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let field = |name: &str| {
                line.split(' ')
                    .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
                    .unwrap_or_default()
                    .to_string()
            };
            RedisClient {
                id: field("id"),
                addr: field("addr"),
                sub: field("sub").parse().unwrap_or(0),
                cmd: field("cmd"),
                line: line.to_string(),
            }
        })
        .filter(|c| c.id != own)
        .collect())
}

/// The `CLIENT LIST` entries that belong to gateway `gw` (matched through the process's own
/// sockets, so test connections and other nodes are never counted).
pub async fn node_redis_clients(redis: &RedisServer, gw: &Gateway) -> Result<Vec<RedisClient>> {
    let ports = tcp_ports_to(gw.pid(), redis_port(redis)?)?;
    if ports.is_empty() {
        bail!("gateway {} holds no connection to Redis", gw.pid());
    }
    Ok(client_list(redis)
        .await?
        .into_iter()
        .filter(|c| {
            c.addr
                .rsplit_once(':')
                .and_then(|(_, p)| p.parse::<u16>().ok())
                .is_some_and(|p| ports.contains(&p))
        })
        .collect())
}
