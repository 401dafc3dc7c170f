//! Sentinel mode (issue 11): a gateway on a password-protected primary + replica + 3 sentinels
//! (`REDIS_SENTINEL_NODE_PASSWORD`) serves every feature: the publish API, the `publish`
//! subcommand, Gleepost tokens read from the primary, resume from history; with every sentinel
//! gone the node keeps its working primary, even across a pub/sub reconnect; configuration
//! mistakes are clear start-up errors.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use gleepost_tests::resume::{connect_since, expect_seq, publish_seq, seq_event};
use gleepost_tests::sentinel::MASTER;
use gleepost_tests::subcommands::publish_subcommand;
use gleepost_tests::{Client, Gateway, GatewayOptions, RedisSentinel};

const PASSWORD: &str = "data-node-secret";

#[tokio::test(flavor = "multi_thread")]
async fn every_feature_works_on_a_password_protected_sentinel_deployment() -> Result<()> {
    let sentinel = RedisSentinel::start_with(1, Some(PASSWORD)).await?;
    let gw = Gateway::start_ready(
        GatewayOptions::sentinel(sentinel.sentinel_urls_csv())
            .arg(&["--redis-sentinel-node-password", PASSWORD]),
    )
    .await
    .context("sentinel node")?;
    let user = 9;
    // The login service's token key, on the primary.
    let primary = sentinel.primary().await?;
    let _: String = sentinel
        .node(primary)
        .cmd(&["SET", "users:9:token:tok9", "1"])
        .await?;
    let url = gleepost_tests::credentials::gleepost_url(&gw, user, "tok9");
    let mut client = Client::connect(&url).await.context("Gleepost token")?;

    let first = publish_seq(&gw, user, 1).await?;
    expect_seq(&mut client, 1, true).await?;
    let sentinels = sentinel.sentinel_urls_csv();
    let env = [
        ("REDIS_SENTINEL_URLS", sentinels.as_str()),
        ("REDIS_SENTINEL_MASTER", MASTER),
        ("REDIS_SENTINEL_NODE_PASSWORD", PASSWORD),
    ];
    publish_subcommand(&env, &[user], &seq_event(2, 0)).await?;
    expect_seq(&mut client, 2, true).await?;
    client.close().await;
    publish_seq(&gw, user, 3).await?;
    let mut resumed = connect_since(&gw, user, &first).await?;
    expect_seq(&mut resumed, 2, true).await?;
    expect_seq(&mut resumed, 3, true).await?;

    let bad = gleepost_tests::credentials::gleepost_url(&gw, user, "nope");
    ensure!(
        Client::connect(&bad).await.is_err(),
        "unknown token admitted"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn sentinel_urls_without_a_master_name_are_a_startup_error() -> Result<()> {
    let options = GatewayOptions::default().arg(&["--redis-sentinel-urls", "redis://127.0.0.1:1"]);
    let err = match Gateway::start(options).await {
        Ok(_) => anyhow::bail!("the node started without REDIS_SENTINEL_MASTER"),
        Err(e) => format!("{e:#}"),
    };
    ensure!(
        err.contains("REDIS_SENTINEL_URLS needs REDIS_SENTINEL_MASTER"),
        "unclear start-up error: {err}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn with_every_sentinel_gone_the_node_keeps_its_working_primary() -> Result<()> {
    let mut sentinel = RedisSentinel::start(1).await?;
    let gw = Gateway::on_sentinel(&sentinel, &[]).await?;
    let mut client = gw.connect(9).await?;
    sentinel.kill_sentinels();
    // The pub/sub connection is cut: the node reconnects to the primary it knows.
    let killed: i64 = sentinel
        .node(0)
        .cmd(&["CLIENT", "KILL", "TYPE", "pubsub"])
        .await?;
    ensure!(killed >= 1, "no pub/sub connection on the primary");
    gleepost_tests::eventually(Duration::from_secs(30), "resubscribed", || async {
        let subs: Vec<String> = sentinel
            .node(0)
            .cmd(&["PUBSUB", "CHANNELS", "gp:user:*"])
            .await?;
        ensure!(!subs.is_empty(), "not subscribed again");
        Ok(())
    })
    .await?;
    gw.wait_ready(true, Duration::from_secs(30)).await?;
    publish_seq(&gw, 9, 1).await?;
    expect_seq(&mut client, 1, true).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn frozen_sentinels_do_not_stall_delivery_or_readiness() -> Result<()> {
    // SIGSTOPped sentinels accept connections and answer nothing, so the node's periodic
    // check of the primary waits seconds on each. Before, the subscriber waited for it
    // without reading its pushes: probes went stale (unready) and deliveries stalled.
    let sentinel = RedisSentinel::start(1).await?;
    let gw = Gateway::on_sentinel(&sentinel, &["--probe-timeout", "1s"]).await?;
    let mut client = gw.connect(9).await?;
    sentinel.signal_sentinels(libc::SIGSTOP);
    // 60 readiness checks 100 ms apart: a dozen periodic checks of the primary.
    let mut unready = 0;
    for _ in 0..60 {
        if !gw.is_ready().await {
            unready += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    publish_seq(&gw, 9, 1).await?;
    expect_seq(&mut client, 1, true).await?;
    sentinel.signal_sentinels(libc::SIGCONT);
    ensure!(unready == 0, "unready at {unready} of 60 checks");
    Ok(())
}
