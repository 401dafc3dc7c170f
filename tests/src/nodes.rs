//! Ready gateway nodes, the way tests start them.

use std::time::Duration;

use anyhow::{Context, Result};

use crate::{Gateway, GatewayOptions, RedisServer};

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
