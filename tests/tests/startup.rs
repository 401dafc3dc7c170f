//! Start-up in production conditions (issue 17): a node never depends on Redis being up to
//! start (it stays alive and unready, then becomes ready without a restart), and it raises its
//! soft file limit so a container's default soft 1024 does not cap it near 1,000 connections.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use gleepost_tests::eventually;
use gleepost_tests::{seed, Gateway, GatewayOptions, RedisServer};

const LIMIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread")]
async fn a_node_started_while_redis_is_down_stays_up_unready_and_serves_once_redis_starts(
) -> Result<()> {
    let mut redis = RedisServer::start().await?;
    redis.kill(); // the port is known and nothing listens on it
    let mut gw = Gateway::start(GatewayOptions::redis(redis.url()).arg(&[
        "--probe-interval",
        "100ms",
        "--redis-timeout",
        "300ms",
    ]))
    .await
    .context("the node must start (and open its ports) while Redis is down")?;

    let health = gw.admin_get("/healthz").await?;
    ensure!(
        health.status == 200,
        "/healthz while Redis is down: {}",
        health.status
    );
    // Several reconnect rounds of the subscriber and the command connection go by.
    for _ in 0..10 {
        let ready = gw.admin_get("/readyz").await?;
        ensure!(
            ready.status == 503,
            "/readyz while Redis is down: {}",
            ready.status
        );
        let body = ready.json()?;
        ensure!(
            body["ready"] == false && body["reason"] == "redis_not_subscribed",
            "/readyz body while Redis is down: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    ensure!(gw.is_running(), "the node exited while Redis was down");
    let refused = gw.connect(9).await;
    ensure!(
        refused.is_err(),
        "a client was admitted while Redis was down"
    );

    redis.restart().await?;
    gw.wait_ready(true, LIMIT)
        .await
        .context("ready once Redis is up")?;
    let mut client = gw.connect(9).await?;
    gw.publish(&[9], seed::MESSAGE).await?;
    let event = client.next_event().await?;
    ensure!(event["type"] == "message", "unexpected event {event}");
    ensure!(gw.is_running(), "the node restarted");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_soft_file_limit_is_raised_to_the_hard_limit_and_more_than_1024_clients_connect(
) -> Result<()> {
    const CLIENTS: usize = 1_100;
    let gw = Gateway::start(GatewayOptions::default().nofile(1024, 20_000)).await?;
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", gw.pid()))?;
    let open_files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .context("no open files line in /proc/<pid>/limits")?;
    ensure!(
        open_files.split_whitespace().nth(3) == Some("20000"),
        "soft limit not raised: {open_files}"
    );
    ensure!(
        gw.metric("gleepost_gateway_open_files_limit").await? == 20_000.0,
        "open_files_limit metric"
    );
    let cap = gw.metric("gleepost_gateway_max_connections").await?;
    ensure!(
        cap > CLIENTS as f64,
        "derived max connections {cap} below {CLIENTS}"
    );
    let mut clients = Vec::with_capacity(CLIENTS);
    for user in 0..CLIENTS as u64 {
        clients.push(
            gw.connect(user + 1)
                .await
                .with_context(|| format!("client {user}"))?,
        );
    }
    eventually(LIMIT, "every client registered", || async {
        let open = gw.metric("gleepost_gateway_connections").await?;
        ensure!(open == CLIENTS as f64, "{open} connections open");
        Ok(())
    })
    .await?;
    gw.publish(&[CLIENTS as u64], seed::MESSAGE).await?;
    let last = clients.last_mut().context("no client")?;
    ensure!(
        last.next_event().await?["type"] == "message",
        "last client got no event"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_started_while_its_redis_cluster_is_unreachable_stays_up_and_unready() -> Result<()>
{
    let seeds = format!(
        "redis://127.0.0.1:{},redis://127.0.0.1:{}",
        gleepost_tests::free_port()?,
        gleepost_tests::free_port()?
    );
    let mut gw = Gateway::start(GatewayOptions::cluster(seeds).arg(&["--redis-timeout", "300ms"]))
        .await
        .context("the node must start while its cluster is unreachable")?;
    for _ in 0..10 {
        ensure!(gw.admin_get("/healthz").await?.status == 200, "/healthz");
        let ready = gw.admin_get("/readyz").await?;
        ensure!(
            ready.status == 503,
            "/readyz while the cluster is down: {}",
            ready.status
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    ensure!(
        gw.is_running(),
        "the node exited while its cluster was unreachable"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_url_and_redis_cluster_urls_together_are_a_startup_error() -> Result<()> {
    let options = GatewayOptions {
        redis_url: Some("redis://127.0.0.1:1/".into()),
        redis_cluster_urls: Some("redis://127.0.0.1:2".into()),
        ..GatewayOptions::default()
    };
    let started = Gateway::start(options).await;
    let err = match started {
        Ok(_) => anyhow::bail!("the node started with both REDIS_URL and REDIS_CLUSTER_URLS"),
        Err(e) => format!("{e:#}"),
    };
    ensure!(
        err.contains("REDIS_URL and REDIS_CLUSTER_URLS are both set"),
        "unclear start-up error: {err}"
    );
    Ok(())
}
