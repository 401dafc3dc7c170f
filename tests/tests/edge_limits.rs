//! Connection limits of the public port: per user (default 100 per node), per client address,
//! attempts per second per address, failed authentications per address, and `X-Forwarded-For`
//! believed only from `--trusted-proxies`. Every refusal is a 429 with a JSON error and
//! `Retry-After`, counted in `connections_refused_total{reason}`.

use std::time::Duration;

use anyhow::{ensure, Result};
use futures_util::future::join_all;
use gleepost_tests::http::{upgrade_attempt, HttpResponse};
use gleepost_tests::metrics::{scrape, wait_metric};
use gleepost_tests::{eventually, seed, ws_path, Client, Gateway, GatewayOptions};

fn refused(reason: &str) -> String {
    format!("gleepost_gateway_connections_refused_total{{reason=\"{reason}\"}}")
}

/// A 429 with a JSON error and a `Retry-After` of at least one second.
fn expect_429(res: &HttpResponse, message: &str) -> Result<()> {
    ensure!(
        res.status == 429,
        "expected 429, got {} {}",
        res.status,
        res.body_text()
    );
    ensure!(res.header("content-type") == Some("application/json"));
    ensure!(res.json()? == serde_json::json!({ "error": message }));
    let retry: u64 = res
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    ensure!(retry >= 1, "Retry-After: {:?}", res.header("retry-after"));
    Ok(())
}

#[tokio::test]
async fn every_refusal_reason_has_a_series_from_start_up() -> Result<()> {
    let gw = Gateway::start(GatewayOptions::default()).await?;
    let page = scrape(&gw).await?;
    for reason in [
        "capacity",
        "broker",
        "per_user",
        "per_ip",
        "rate",
        "auth_rate",
    ] {
        ensure!(
            page.get(
                "gleepost_gateway_connections_refused_total",
                &[("reason", reason)]
            ) == Some(0.0),
            "no connections_refused_total{{reason={reason:?}}} at start-up"
        );
    }
    Ok(())
}

#[tokio::test]
async fn one_user_gets_at_most_100_connections_per_node_by_default() -> Result<()> {
    let gw = Gateway::start(GatewayOptions::default()).await?;
    let mut clients = Vec::new();
    for _ in 0..100 {
        clients.push(gw.connect(9).await?);
    }
    expect_429(
        &upgrade_attempt(&gw.public, &ws_path(9), &[]).await?,
        "Too many connections for this user",
    )?;
    wait_metric(&gw, &refused("per_user"), 1.0).await?;

    // Other users are not limited, and the user's connections keep receiving.
    let mut other = gw.connect(10).await?;
    gw.publish(&[9, 10], seed::MESSAGE).await?;
    other.next_text().await?;
    clients[99].next_text().await?;

    // A slot frees when one of them leaves.
    if let Some(client) = clients.pop() {
        client.close().await;
    }
    wait_metric(&gw, "gleepost_gateway_connections", 100.0).await?;
    clients.push(gw.connect(9).await?);
    Ok(())
}

#[tokio::test]
async fn connections_per_address_are_capped_and_freed() -> Result<()> {
    let gw =
        Gateway::start(GatewayOptions::default().arg(&["--max-connections-per-ip", "2"])).await?;
    let first = gw.connect(1).await?;
    let _second = gw.connect(2).await?;
    expect_429(
        &upgrade_attempt(&gw.public, &ws_path(3), &[]).await?,
        "Too many connections from this address",
    )?;
    wait_metric(&gw, &refused("per_ip"), 1.0).await?;

    // Failed handshakes hold no slot once answered.
    first.close().await;
    wait_metric(&gw, "gleepost_gateway_connections", 1.0).await?;
    for _ in 0..5 {
        let res = upgrade_attempt(&gw.public, "/ws?access_token=bad", &[]).await?;
        ensure!(res.status == 401, "got {}", res.status);
    }
    let _third = gw.connect(3).await?;
    Ok(())
}

#[tokio::test]
async fn connection_attempts_per_address_are_rate_limited() -> Result<()> {
    let gw = Gateway::start(GatewayOptions::default().arg(&["--connect-rate-per-ip", "2"])).await?;
    // 20 attempts at once: a bucket of 2 (refilled at 2/s) cannot admit them all.
    let path = ws_path(9);
    let results = join_all((0..20).map(|_| upgrade_attempt(&gw.public, &path, &[]))).await;
    let mut limited = 0.0;
    for res in results {
        let res = res?;
        if res.status == 429 {
            expect_429(&res, "Too many connection attempts")?;
            limited += 1.0;
        } else {
            ensure!(res.status == 101, "got {} {}", res.status, res.body_text());
        }
    }
    ensure!(limited >= 1.0, "no attempt of 20 was rate limited");
    wait_metric(&gw, &refused("rate"), limited).await
}

#[tokio::test]
async fn failed_authentications_beyond_the_budget_are_refused_without_verification() -> Result<()> {
    let gw =
        Gateway::start(GatewayOptions::default().arg(&["--auth-failures-per-ip", "2"])).await?;
    let mut unauthorized = 0.0;
    let mut limited = 0.0;
    // A flood: 40 bad tokens at once.
    let flood = (0..40).map(|_| upgrade_attempt(&gw.public, "/ws?access_token=not-a-jwt", &[]));
    for res in join_all(flood).await {
        let res = res?;
        match res.status {
            401 => unauthorized += 1.0,
            _ => {
                expect_429(&res, "Too many failed authentications")?;
                limited += 1.0;
            }
        }
    }
    // 40 failures cannot fit a budget of 2 (refilled at 2/s) unless they take 19 s.
    ensure!(
        limited >= 1.0,
        "no attempt was throttled ({unauthorized} × 401)"
    );
    wait_metric(&gw, &refused("auth_rate"), limited).await?;
    // Throttled attempts never reached the token check: only the 401s were verified.
    wait_metric(
        &gw,
        "gleepost_gateway_auth_failures_total{reason=\"jwt_malformed\"}",
        unauthorized,
    )
    .await?;
    // Good credentials from the same address cost nothing: once the budget has refilled
    // (Retry-After), valid clients connect, as many as they like.
    // The flood's checks in flight may have put the budget in debt (at 2 tokens per second).
    let _client = eventually(Duration::from_secs(15), "a valid client admitted", || {
        gw.connect(9)
    })
    .await?;
    for user in 10..20 {
        gw.connect(user).await?;
    }
    Ok(())
}

#[tokio::test]
async fn x_forwarded_for_is_believed_only_from_trusted_proxies() -> Result<()> {
    let xff = |ip: &'static str| [("X-Forwarded-For", ip)];
    let connect = |gw: &Gateway, user: u64, ip: &'static str| {
        let url = gw.ws_url(user);
        async move { Client::connect_with_headers(&url, &xff(ip)).await }
    };

    // Loopback is a trusted proxy: the header names the client.
    let trusting = Gateway::start(GatewayOptions::default().arg(&[
        "--trusted-proxies",
        "127.0.0.0/8",
        "--max-connections-per-ip",
        "1",
    ]))
    .await?;
    let _a = connect(&trusting, 1, "203.0.113.5").await?;
    let _b = connect(&trusting, 2, "203.0.113.6").await?;
    expect_429(
        &upgrade_attempt(&trusting.public, &ws_path(3), &xff("203.0.113.5")).await?,
        "Too many connections from this address",
    )?;
    // A client cannot escape by prepending an address: the hop the proxy appended counts.
    expect_429(
        &upgrade_attempt(
            &trusting.public,
            &ws_path(4),
            &xff("198.51.100.1, 203.0.113.6"),
        )
        .await?,
        "Too many connections from this address",
    )?;
    wait_metric(&trusting, &refused("per_ip"), 2.0).await?;

    // The peer is not a trusted proxy: the header is ignored, all come from 127.0.0.1.
    let distrusting = Gateway::start(GatewayOptions::default().arg(&[
        "--trusted-proxies",
        "10.0.0.0/8",
        "--max-connections-per-ip",
        "1",
    ]))
    .await?;
    let _c = connect(&distrusting, 1, "203.0.113.5").await?;
    expect_429(
        &upgrade_attempt(&distrusting.public, &ws_path(2), &xff("203.0.113.6")).await?,
        "Too many connections from this address",
    )?;
    Ok(())
}
