//! The public port's handshake against hostile or broken clients: requests that never complete
//! are cut after `--handshake-timeout`, a stalled broker cannot hold a handshake longer than that,
//! oversized heads get 431, HTTP/1.0 upgrades and malformed `Sec-WebSocket-Key`s get 400, each
//! with a JSON error and no upgrade.

use std::time::Duration;

use anyhow::{ensure, Result};
use gleepost_tests::http::{self, closed_within, upgrade_attempt, upgrade_head, HttpResponse};
use gleepost_tests::{ws_path, Gateway, GatewayOptions, RedisServer};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Far above the 1 s handshake timeout the tests configure (no timing assertions).
const GENEROUS: Duration = Duration::from_secs(10);

fn expect_json_error(res: &HttpResponse, status: u16, what: &str) -> Result<()> {
    ensure!(
        res.status == status,
        "{what}: expected {status}, got {} {}",
        res.status,
        res.body_text()
    );
    ensure!(
        res.header("content-type") == Some("application/json"),
        "{what}: not JSON: {:?}",
        res.headers
    );
    let body = res.json()?;
    ensure!(body["error"].is_string(), "{what}: body {body}");
    Ok(())
}

#[tokio::test]
async fn a_request_that_never_completes_is_cut_after_the_handshake_timeout() -> Result<()> {
    let gw = Gateway::start(GatewayOptions::default().arg(&["--handshake-timeout", "1s"])).await?;

    // Half a request head, then silence.
    let mut half = TcpStream::connect(&gw.public).await?;
    half.write_all(b"GET /ws HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade\r\n")
        .await?;
    let received = closed_within(&mut half, GENEROUS).await?;
    ensure!(received.is_empty() || received.starts_with(b"HTTP/1.1 4"));

    // A client that keeps trickling header bytes is cut all the same (the timeout bounds the
    // whole head, not the gaps between bytes): at 10 bytes/s it never gets near the size limits.
    let (mut rd, mut wr) = TcpStream::connect(&gw.public).await?.into_split();
    wr.write_all(b"GET /ws HTTP/1.1\r\nX-Slow: ").await?;
    let reader = tokio::spawn(async move { closed_within(&mut rd, GENEROUS).await });
    let mut written = 0;
    while written < 100 && !reader.is_finished() {
        if wr.write_all(b"a").await.is_err() {
            break;
        }
        written += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    reader.await??;

    // An idle connection that never sends anything is closed too.
    let mut idle = TcpStream::connect(&gw.public).await?;
    closed_within(&mut idle, GENEROUS).await?;

    // Complete requests are unaffected.
    let mut client = gw.connect(9).await?;
    gw.publish(&[9], gleepost_tests::seed::MESSAGE).await?;
    client.next_text().await?;
    Ok(())
}

#[tokio::test]
async fn a_stalled_broker_cannot_hold_a_handshake_past_the_timeout() -> Result<()> {
    // The subscription wait alone would be 5 × the Redis timeout (150 s); the handshake timeout
    // bounds the whole pre-upgrade phase.
    let redis = RedisServer::start().await?;
    let options = GatewayOptions::redis(redis.url()).arg(&[
        "--handshake-timeout",
        "1s",
        "--redis-timeout",
        "30s",
    ]);
    let gw = Gateway::start(options).await?;
    gw.wait_ready(true, GENEROUS).await?;
    redis.signal(libc::SIGSTOP);
    // http::request gives up after 10 s.
    let res = upgrade_attempt(&gw.public, &ws_path(9), &[]).await;
    redis.signal(libc::SIGCONT);
    expect_json_error(&res?, 503, "stalled broker")?;
    gleepost_tests::metrics::wait_metric(
        &gw,
        "gleepost_gateway_connections_refused_total{reason=\"broker\"}",
        1.0,
    )
    .await
}

#[tokio::test]
async fn oversized_request_heads_get_431_before_authentication() -> Result<()> {
    let gw = Gateway::start(GatewayOptions::default()).await?;
    let path = ws_path(9);
    let line = "v".repeat(10 * 1024);
    let chunk = "v".repeat(4 * 1024);
    let many_big: Vec<(String, &str)> = (0..10).map(|i| (format!("X-Big-{i}"), &*chunk)).collect();
    let many_small: Vec<(String, &str)> = (0..110).map(|i| (format!("X-H-{i}"), "1")).collect();
    let cases: [(&str, Vec<(&str, &str)>); 3] = [
        ("one 10 KiB header line", vec![("X-Long", &line)]),
        (
            "40 KiB of headers",
            many_big.iter().map(|(n, v)| (n.as_str(), *v)).collect(),
        ),
        (
            "110 headers",
            many_small.iter().map(|(n, v)| (n.as_str(), *v)).collect(),
        ),
    ];
    for (what, headers) in cases {
        let res = upgrade_attempt(&gw.public, &path, &headers).await?;
        expect_json_error(&res, 431, what)?;
    }
    // A request line past 8 KiB.
    let long_path = format!("{path}&pad={}", "p".repeat(9 * 1024));
    expect_json_error(
        &upgrade_attempt(&gw.public, &long_path, &[]).await?,
        414,
        "long request line",
    )?;
    // Within the limits (7 × 4 KiB), the same client is served.
    let fits: Vec<(&str, &str)> = many_big[..7]
        .iter()
        .map(|(n, v)| (n.as_str(), *v))
        .collect();
    let res = upgrade_attempt(&gw.public, &path, &fits).await?;
    ensure!(res.status == 101, "got {} {}", res.status, res.body_text());
    Ok(())
}

#[tokio::test]
async fn http_10_upgrades_and_bodies_are_refused_with_400() -> Result<()> {
    let gw = Gateway::start(GatewayOptions::default()).await?;
    let path = ws_path(9);
    let head = upgrade_head(&gw.public, &path, "HTTP/1.0", Some(http::WS_KEY), &[]);
    let res = http::exchange(&gw.public, head.as_bytes()).await?;
    expect_json_error(&res, 400, "HTTP/1.0")?;
    let head = upgrade_head(
        &gw.public,
        &path,
        "HTTP/1.1",
        Some(http::WS_KEY),
        &[("Content-Length", "4")],
    );
    let res = http::exchange(&gw.public, format!("{head}abcd").as_bytes()).await?;
    expect_json_error(&res, 400, "upgrade with a body")?;
    let res = upgrade_attempt(&gw.public, &path, &[]).await?;
    ensure!(res.status == 101, "HTTP/1.1: got {}", res.status);
    Ok(())
}

#[tokio::test]
async fn malformed_websocket_keys_are_refused_with_400() -> Result<()> {
    let gw = Gateway::start(GatewayOptions::default()).await?;
    let path = ws_path(9);
    let kilobyte = "A".repeat(1024);
    for key in [
        Some(""),
        Some("abc"),
        Some("dGhlIHNhbXBsZSBub25j"),     // 15 bytes
        Some("dGhlIHNhbXBsZSBub25jZQ"),   // unpadded
        Some("dGhlIHNhbXBsZSBub25jZSE="), // 17 bytes
        Some("!!!!!!!!!!!!!!!!!!!!!!=="), // not base64
        Some(kilobyte.as_str()),
        None,
    ] {
        let head = upgrade_head(&gw.public, &path, "HTTP/1.1", key, &[]);
        let res = http::exchange(&gw.public, head.as_bytes()).await?;
        expect_json_error(&res, 400, &format!("key {key:?}"))?;
        ensure!(res.header("sec-websocket-accept").is_none());
    }
    // A 10 KiB key is past the header line limit.
    let huge = "A".repeat(10 * 1024);
    let head = upgrade_head(&gw.public, &path, "HTTP/1.1", Some(&huge), &[]);
    expect_json_error(
        &http::exchange(&gw.public, head.as_bytes()).await?,
        431,
        "10 KiB key",
    )?;
    // The key is checked before (and instead of) the credentials.
    let head = upgrade_head(&gw.public, "/ws", "HTTP/1.1", Some("abc"), &[]);
    expect_json_error(
        &http::exchange(&gw.public, head.as_bytes()).await?,
        400,
        "bad key, no credentials",
    )?;
    // The RFC's example key is fine.
    let res = upgrade_attempt(&gw.public, &path, &[]).await?;
    ensure!(res.status == 101, "got {} {}", res.status, res.body_text());
    ensure!(res.header("sec-websocket-accept") == Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
    Ok(())
}
