//! Readiness proves delivery (issue 5): on Redis, `/readyz` fails when the node's own probe stops
//! coming back through Redis — here Redis is frozen with SIGSTOP, so its TCP connections stay
//! up — and recovers when Redis thaws; clients that stayed connected get events again. On the
//! embedded broker, `/readyz` is 200 until SIGTERM, then 503.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use gleepost_tests::{eventually, seed, Gateway, GatewayOptions, RedisServer};

/// Bounded waits (not timing assertions).
const READY: Duration = Duration::from_secs(15);
const TRANSITION: Duration = Duration::from_secs(15);

/// `/readyz`'s status code (the request itself must succeed).
async fn readyz(gw: &Gateway) -> Result<u16> {
    let res = gw.admin_get("/readyz").await.context("GET /readyz")?;
    let body = res.json()?;
    ensure!(
        body["ready"] == (res.status == 200),
        "/readyz {} with body {body}",
        res.status
    );
    Ok(res.status)
}

/// Poll `/readyz` until it answers `status` (bounded); how long that took. Every answer must be
/// 200 or 503: a failed request or any other answer ends the wait at once (the inner result).
async fn wait_readyz(gw: &Gateway, status: u16, limit: Duration) -> Result<Duration> {
    let start = Instant::now();
    eventually(limit, &format!("/readyz {status}"), || async {
        match readyz(gw).await {
            Ok(got) if got == status => Ok(Ok(start.elapsed())),
            Ok(got @ (200 | 503)) => bail!("still {got}"),
            Ok(got) => Ok(Err(anyhow!("/readyz answered {got}"))),
            Err(e) => Ok(Err(e)),
        }
    })
    .await?
}

#[tokio::test(flavor = "multi_thread")]
async fn frozen_redis_makes_the_node_unready_and_thawing_makes_it_ready_again() -> Result<()> {
    let redis = RedisServer::start().await?;
    let gw = Gateway::start(GatewayOptions::redis(redis.url()).arg(&[
        "--probe-interval",
        "100ms",
        "--probe-timeout",
        "1s",
        "--redis-timeout",
        "300ms",
    ]))
    .await?;
    wait_readyz(&gw, 200, READY).await.context("at start")?;
    let mut client = gw.connect(9).await?;
    gw.publish(&[9], seed::MESSAGE).await?;
    let first = client.next_event().await?;
    ensure!(first["type"] == "message", "unexpected first event {first}");

    // Freeze Redis: its sockets stay open, nothing comes back.
    redis.signal(libc::SIGSTOP);
    let went = wait_readyz(&gw, 503, TRANSITION)
        .await
        .context("after SIGSTOP of redis-server");
    // Thaw before judging, so a failure does not leave Redis frozen for the rest of the test.
    redis.signal(libc::SIGCONT);
    let went = went?;
    let back = wait_readyz(&gw, 200, TRANSITION)
        .await
        .context("after SIGCONT of redis-server")?;
    eprintln!("readiness: unready {went:?} after SIGSTOP, ready {back:?} after SIGCONT");

    // The client that stayed connected receives what is published now.
    let res = gw.publish(&[9], seed::NOTIFICATION).await?;
    let id = res["ids"]["9"].as_str().map(str::to_owned);
    let event = client
        .next_event()
        .await
        .context("the client that stayed connected after the thaw")?;
    ensure!(
        event["type"] == "notification" && event["id"].as_str().map(str::to_owned) == id,
        "expected the notification published after the thaw (id {id:?}), got {event}"
    );
    ensure!(
        readyz(&gw).await? == 200,
        "node unready again after delivering"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn embedded_broker_is_ready_until_sigterm_then_unready() -> Result<()> {
    let mut gw = Gateway::start(GatewayOptions::default().arg(&[
        "--pre-drain-delay",
        "3s",
        "--drain-window",
        "0s",
    ]))
    .await?;
    wait_readyz(&gw, 200, READY).await.context("at start")?;
    // Stays ready (no broker to lose).
    for _ in 0..10 {
        ensure!(readyz(&gw).await? == 200, "embedded broker became unready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut client = gw.connect(9).await?;

    gw.signal(libc::SIGTERM);
    wait_readyz(&gw, 503, TRANSITION)
        .await
        .context("after SIGTERM")?;
    // Still serving during the pre-drain delay: the publish API and delivery work, readiness
    // stays failed.
    gw.publish(&[9], seed::MESSAGE).await?;
    let event = client
        .next_event()
        .await
        .context("delivery while unready")?;
    ensure!(event["type"] == "message", "unexpected event {event}");
    ensure!(readyz(&gw).await? == 503, "ready again while draining");

    let status = gw.wait_exit(Duration::from_secs(20)).await?;
    ensure!(status.code() == Some(0), "gateway exited with {status}");
    Ok(())
}
