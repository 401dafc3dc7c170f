//! Helpers for tests of the Redis broker: Gleepost-token clients, Redis introspection
//! (`CLIENT LIST`, `PUBSUB`), the Redis connections of one gateway process, and bounded polling.

use std::collections::{BTreeSet, HashSet};
use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::{Client, Gateway, GatewayOptions, RedisServer};

/// Prefix of the nodes' self-probe channels (`gp:probe:<node>`).
pub const PROBE_PREFIX: &str = "gp:probe:";

/// Run `check` until it succeeds, at most `limit` (bounded polling, not a timing assertion).
/// On timeout the last error is returned, with `what` as context.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        match check().await {
            Ok(value) => return Ok(value),
            Err(e) if Instant::now() >= deadline => {
                return Err(e.context(format!("{what}: not reached within {limit:?}")))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(25)).await,
        }
    }
}

/// The channels a node subscribes for a user: the default legacy ones `c:<id>` and `n:<id>`,
/// and the gateway's own `gp:user:{<id>}` (publish API, `Publisher`).
pub fn user_channels(user: u64) -> [String; 3] {
    [
        format!("c:{user}"),
        format!("n:{user}"),
        format!("gp:user:{{{user}}}"),
    ]
}

/// `ws://…/ws?id=<user>&token=<token>` (Gleepost token in the query).
pub fn gleepost_url(gw: &Gateway, user: u64, token: &str) -> String {
    format!("{}?id={user}&token={token}", gw.ws_base())
}

/// Connect with the header `X-GP-Auth: <value>`.
pub async fn connect_gp_header(gw: &Gateway, value: &str) -> Result<Client> {
    let mut request = gw.ws_base().into_client_request()?;
    request
        .headers_mut()
        .insert("X-GP-Auth", HeaderValue::from_str(value)?);
    Client::connect_request(request).await
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

/// Local TCP ports of the sockets process `pid` holds open to `remote_port` (from `/proc`).
pub fn tcp_ports_to(pid: u32, remote_port: u16) -> Result<HashSet<u16>> {
    let mut inodes = HashSet::new();
    let fd_dir = format!("/proc/{pid}/fd");
    for entry in std::fs::read_dir(&fd_dir).with_context(|| format!("reading {fd_dir}"))? {
        let Ok(target) = std::fs::read_link(entry?.path()) else {
            continue; // closed meanwhile
        };
        let target = target.to_string_lossy();
        if let Some(inode) = target
            .strip_prefix("socket:[")
            .and_then(|s| s.strip_suffix(']'))
        {
            inodes.insert(inode.to_string());
        }
    }
    let mut ports = HashSet::new();
    for table in ["tcp", "tcp6"] {
        let path = format!("/proc/{pid}/net/{table}");
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        for line in text.lines().skip(1) {
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() < 10 || !inodes.contains(cols[9]) {
                continue;
            }
            let port = |addr: &str| {
                addr.rsplit_once(':')
                    .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
            };
            if port(cols[2]) == Some(remote_port) {
                if let Some(local) = port(cols[1]) {
                    ports.insert(local);
                }
            }
        }
    }
    Ok(ports)
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

/// The frame carries the event published as `published`: same `type` and `location`, and the
/// `data` member byte for byte (the gateway may add an `id` member when history is on).
pub fn ensure_same_event(frame: &str, published: &str) -> Result<()> {
    let parse = |text: &str| -> Result<serde_json::Value> {
        serde_json::from_str(text).with_context(|| format!("not JSON: {text}"))
    };
    let (got, want) = (parse(frame)?, parse(published)?);
    if got["type"] != want["type"] || got["location"] != want["location"] {
        bail!("wrong envelope: got {frame}, published {published}");
    }
    if crate::data_text(frame) != crate::data_text(published) {
        bail!("data not delivered byte-exact: got {frame}, published {published}");
    }
    Ok(())
}

/// Two gateway nodes on one Redis (probe every 100 ms), both ready within 15 s.
pub async fn two_ready_nodes(redis: &RedisServer) -> Result<(Gateway, Gateway)> {
    const READY: Duration = Duration::from_secs(15);
    let options = GatewayOptions::redis(redis.url()).arg(&["--probe-interval", "100ms"]);
    let a = Gateway::start(options.clone()).await.context("node A")?;
    let b = Gateway::start(options).await.context("node B")?;
    a.wait_ready(true, READY).await.context("node A")?;
    b.wait_ready(true, READY).await.context("node B")?;
    Ok((a, b))
}
