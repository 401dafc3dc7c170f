//! Ready gateway nodes, the way tests start them: with any options, on a Redis server, a Redis
//! Cluster or a Sentinel deployment, one or two at once, each waited for until `/readyz`
//! answers 200 (bounded by [`READY`]).

use std::time::Duration;

use anyhow::{Context, Result};

use crate::{Gateway, GatewayOptions, RedisCluster, RedisSentinel, RedisServer};

/// How long a starting node may take to become ready (a bound, not a timing assertion).
pub const READY: Duration = Duration::from_secs(40);

impl GatewayOptions {
    /// Probe the broker every 100 ms, so that readiness follows the broker closely.
    pub fn fast_probes(self) -> Self {
        self.arg(&["--probe-interval", "100ms"])
    }
}

impl Gateway {
    /// Start a gateway with `options` and wait until it is ready.
    pub async fn start_ready(options: GatewayOptions) -> Result<Gateway> {
        let gw = Gateway::start(options).await?;
        gw.wait_ready(true, READY).await.context("node ready")?;
        Ok(gw)
    }

    /// Start two gateways (A with `a`, B with `b`) at once and wait until both are ready.
    pub async fn start_two_ready(
        a: GatewayOptions,
        b: GatewayOptions,
    ) -> Result<(Gateway, Gateway)> {
        let a = Gateway::start(a).await.context("node A")?;
        let b = Gateway::start(b).await.context("node B")?;
        a.wait_ready(true, READY).await.context("node A ready")?;
        b.wait_ready(true, READY).await.context("node B ready")?;
        Ok((a, b))
    }

    /// A ready node on `redis` with fast probes and the extra `args`.
    pub async fn on_redis(redis: &RedisServer, args: &[&str]) -> Result<Gateway> {
        Gateway::start_ready(GatewayOptions::redis(redis.url()).fast_probes().arg(args)).await
    }

    /// Two ready nodes on `redis` with fast probes and the extra `args`.
    pub async fn two_on_redis(redis: &RedisServer, args: &[&str]) -> Result<(Gateway, Gateway)> {
        let options = GatewayOptions::redis(redis.url()).fast_probes().arg(args);
        Gateway::start_two_ready(options.clone(), options).await
    }

    /// A ready node on `cluster` with fast probes and the extra `args`.
    pub async fn on_cluster(cluster: &RedisCluster, args: &[&str]) -> Result<Gateway> {
        let options = GatewayOptions::cluster(cluster.urls_csv()).fast_probes();
        Gateway::start_ready(options.arg(args))
            .await
            .context("cluster node")
    }

    /// A ready node on the primary of `sentinel` with fast probes and the extra `args`.
    pub async fn on_sentinel(sentinel: &RedisSentinel, args: &[&str]) -> Result<Gateway> {
        let options = GatewayOptions::sentinel(sentinel.sentinel_urls_csv()).fast_probes();
        Gateway::start_ready(options.arg(args))
            .await
            .context("sentinel node")
    }
}
