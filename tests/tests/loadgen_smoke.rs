//! The load generator cannot rot (issue 6): `make test` builds `gleepost-loadgen` and runs it
//! for a few seconds against real gateways, checking only correctness (no timing assertions;
//! `make bench` is the measure): every connection established, every event delivered exactly
//! once, in order, to the right user.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use gleepost_tests::loadgen::{run_json, LeanForwarder};
use gleepost_tests::{Gateway, GatewayOptions, RedisServer};
use serde_json::Value;

const LIMIT: Duration = Duration::from_secs(60);

fn count(report: &Value, key: &str) -> Result<u64> {
    report[key]
        .as_u64()
        .with_context(|| format!("{key} missing in {report}"))
}

/// All connections up, every event delivered exactly once and in order.
fn ensure_clean(report: &Value, connections: u64) -> Result<()> {
    ensure!(
        count(report, "established")? == connections && count(report, "failed")? == 0,
        "connections: {report}"
    );
    ensure!(
        count(report, "published")? > 0,
        "nothing published: {report}"
    );
    ensure!(
        count(report, "publish_errors")? == 0,
        "publish errors: {report}"
    );
    ensure!(
        count(report, "expected")? > 0 && count(report, "delivered")? == count(report, "expected")?,
        "deliveries: {report}"
    );
    for key in [
        "lost",
        "duplicated",
        "out_of_order",
        "gaps",
        "misrouted",
        "unparsed",
        "disconnected",
    ] {
        ensure!(count(report, key)? == 0, "{key} in {report}");
    }
    ensure!(
        report["latency_us"]["count"].as_u64().unwrap_or(0) > 0,
        "no latency samples: {report}"
    );
    ensure!(
        report["loadgen_cpu_percent"].as_f64().is_some(),
        "no CPU share: {report}"
    );
    Ok(())
}

/// Embedded broker, publish API over HTTP/1.1 and over HTTP/2 (`--http2`): 200 connections of
/// 100 users, ~400 events in about 2 s each (`--drain` only bounds the wait for late
/// deliveries; it ends as soon as all arrived).
#[tokio::test]
async fn fanout_over_the_publish_api() -> Result<()> {
    for http2 in [false, true] {
        let gw = Gateway::start(GatewayOptions::default()).await?;
        let pid = gw.pid().to_string();
        let url = gw.ws_base();
        let admin = format!("http://{}", gw.admin);
        let mut args = vec![
            "fanout",
            "--url",
            &url,
            "-n",
            "200",
            "-u",
            "100",
            "--publish",
            "http",
            "--admin-url",
            &admin,
            "--http-connections",
            "2",
            "--rate",
            "200",
            "--warmup",
            "500ms",
            "--duration",
            "1500ms",
            "--drain",
            "5s",
            "--settle",
            "200ms",
            "--server-pid",
            &pid,
            "--max-seconds",
            "40",
        ];
        if http2 {
            args.push("--http2");
        }
        let report = run_json(&args, LIMIT).await?;
        ensure_clean(&report, 200)?;
        let params = &report["params"];
        ensure!(
            params["publish"] == "http" && params["http2"] == http2,
            "params: {params}"
        );
        // The gateway answered them all (with `--http2`, an HTTP/1-only server would have failed
        // every prior-knowledge handshake: publish errors, refused by `ensure_clean`).
        let answered = gw
            .metric("gleepost_gateway_publish_requests_total{status=\"200\"}")
            .await?;
        ensure!(
            answered >= 400.0,
            "{answered} publish requests answered 200"
        );
        // `--publish http` sends one event per request, also when lanes back up (events still
        // queued at the end are not counted as sent).
        ensure!(
            report["events_per_request"].as_f64() == Some(1.0),
            "events per request: {}",
            report["events_per_request"]
        );
        // Each measured event's wait for its lane and its time to the answer, once per event.
        let (sent, done) = (&report["http_wait_us"], &report["http_answer_us"]);
        ensure!(
            // 2 connections per user: two measured deliveries per measured event.
            sent["count"].as_u64() == report["delivered_measured"].as_u64().map(|n| n / 2)
                && done["count"] == sent["count"],
            "HTTP times counted {sent} / {done} for {} measured deliveries",
            report["delivered_measured"]
        );
        ensure!(
            sent["p50"].as_u64() <= done["p50"].as_u64() && done["p50"].as_u64() > Some(0),
            "queued → sent {sent} against queued → answered {done}"
        );
    }
    Ok(())
}

/// Two nodes on Redis with history, events through the batch API (`--publish http-batch`): the
/// load generator reads the gateway's per-item answers (every item accepted) and every event
/// reaches both connections of its user once, in order (and is stored in the history).
#[tokio::test]
async fn fanout_over_the_batch_api() -> Result<()> {
    let redis = RedisServer::start().await?;
    let (a, b) = Gateway::two_on_redis(&redis, &[]).await?;
    let (url_a, url_b) = (a.ws_base(), b.ws_base());
    let admin = format!("http://{}", a.admin);
    let report = run_json(
        &[
            "fanout",
            "--url",
            &url_a,
            "--url",
            &url_b,
            "-n",
            "100",
            "-u",
            "50",
            "--publish",
            "http-batch",
            "--batch-size",
            "20",
            "--http-connections",
            "2",
            "--admin-url",
            &admin,
            "--rate",
            "400",
            "--warmup",
            "500ms",
            "--duration",
            "1s",
            "--drain",
            "5s",
            "--settle",
            "200ms",
            "--max-seconds",
            "40",
        ],
        LIMIT,
    )
    .await?;
    ensure_clean(&report, 100)?;
    ensure!(
        count(&report, "expected")? == 2 * count(&report, "published")?,
        "each event reaches both connections of its user: {report}"
    );
    let stored: u64 = redis.cmd(&["XLEN", "gp:hist:{1}"]).await?;
    ensure!(stored > 0, "no history stored for user 1");
    Ok(())
}

/// Two nodes on Redis, events published with the history script (`--publish redis-history`):
/// every user has one connection on each node, and frames carry an `id`.
#[tokio::test]
async fn fanout_through_the_redis_history_script() -> Result<()> {
    let redis = RedisServer::start().await?;
    let (a, b) = Gateway::two_on_redis(&redis, &[]).await?;
    let (url_a, url_b) = (a.ws_base(), b.ws_base());
    let redis_url = redis.url();
    let report = run_json(
        &[
            "fanout",
            "--url",
            &url_a,
            "--url",
            &url_b,
            "-n",
            "100",
            "-u",
            "50",
            "--publish",
            "redis-history",
            "--redis-url",
            &redis_url,
            "--rate",
            "200",
            "--warmup",
            "500ms",
            "--duration",
            "1s",
            "--drain",
            "5s",
            "--settle",
            "200ms",
            "--max-seconds",
            "40",
        ],
        LIMIT,
    )
    .await?;
    ensure_clean(&report, 100)?;
    ensure!(
        report["params"]["publish"] == "redis-history",
        "params: {}",
        report["params"]
    );
    // The events went through the script: user 1's history holds them.
    let stored: u64 = redis.cmd(&["XLEN", "gp:hist:{1}"]).await?;
    ensure!(stored > 0, "no history stored for user 1");
    Ok(())
}

/// The benchmarks' baseline (crates/lean-forwarder) forwards raw `PUBLISH c:<uid>` messages
/// verbatim: two processes on one Redis, every user with a connection on each, every event
/// delivered exactly once per connection and in order.
#[tokio::test]
async fn lean_forwarder_delivers_raw_publishes() -> Result<()> {
    let redis = RedisServer::start().await?;
    let a = LeanForwarder::start(&redis.url())
        .await
        .context("forwarder A")?;
    let b = LeanForwarder::start(&redis.url())
        .await
        .context("forwarder B")?;
    let (url_a, url_b, redis_url) = (a.ws_url(), b.ws_url(), redis.url());
    let pid = a.pid().context("forwarder A pid")?.to_string();
    let report = run_json(
        &[
            "fanout",
            "--url",
            &url_a,
            "--url",
            &url_b,
            "-n",
            "100",
            "-u",
            "50",
            "--publish",
            "redis",
            "--redis-url",
            &redis_url,
            "--rate",
            "200",
            "--warmup",
            "500ms",
            "--duration",
            "1s",
            "--drain",
            "5s",
            "--settle",
            "500ms",
            "--server-pid",
            &pid,
            "--max-seconds",
            "40",
        ],
        LIMIT,
    )
    .await?;
    ensure_clean(&report, 100)?;
    ensure!(
        count(&report, "expected")? == 2 * count(&report, "published")?,
        "each event reaches both connections of its user: {report}"
    );
    Ok(())
}
