//! Operating a node: Prometheus metrics that parse and move, health and readiness, shutdown on
//! SIGTERM, token-free logs, and the `token` subcommand.

use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use gleepost_tests::gateway::gateway_binary;
use gleepost_tests::http;
use gleepost_tests::metrics::{scrape, wait_metric};
use gleepost_tests::{
    eventually, seed, token, token_with, ws_path, Client, Closed, Gateway, GatewayOptions,
    RedisServer, API_KEY, JWT_SECRET, WAIT,
};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::json;

const PREFIX: &str = "gleepost_gateway_";

/// Families the gateway must expose, with their Prometheus type.
const FAMILIES: &[(&str, &str)] = &[
    ("connections", "gauge"),
    ("connections_opened_total", "counter"),
    ("events_published_total", "counter"),
    ("events_delivered_total", "counter"),
    ("delivery_latency_seconds", "histogram"),
    ("process_cpu_seconds_total", "counter"),
    ("process_resident_memory_bytes", "gauge"),
];

/// Families that appear once something is counted under a label.
const LABELLED_FAMILIES: &[&str] = &[
    "auth_failures_total",
    "publish_requests_total",
    "connections_closed_total",
];

fn m(name: &str) -> String {
    format!("{PREFIX}{name}")
}

#[tokio::test]
async fn metrics_parse_as_prometheus_text_and_counters_move() -> Result<()> {
    let gw = Gateway::start(GatewayOptions::default()).await?;
    let res = gw.admin_get("/metrics").await?;
    ensure!(res.status == 200);
    let content_type = res.header("content-type").unwrap_or_default();
    ensure!(
        content_type.starts_with("text/plain") && content_type.contains("version=0.0.4"),
        "content-type {content_type:?}"
    );
    let page = scrape(&gw).await?;
    for (family, kind) in FAMILIES {
        let name = m(family);
        ensure!(
            page.types.get(&name).map(String::as_str) == Some(*kind),
            "{name}: type {:?}, want {kind}",
            page.types.get(&name)
        );
    }
    for sample in &page.samples {
        ensure!(
            sample.name.starts_with(PREFIX),
            "unprefixed metric {}",
            sample.name
        );
    }
    let base = |name: &str| page.get(&m(name), &[]).unwrap_or(0.0);
    let (opened, published, delivered, latency) = (
        base("connections_opened_total"),
        base("events_published_total"),
        base("events_delivered_total"),
        base("delivery_latency_seconds_count"),
    );
    ensure!(base("connections") == 0.0, "connections before any client");

    // Three connections: two of user 9, one of user 10.
    let mut clients = vec![
        gw.connect(9).await?,
        gw.connect(9).await?,
        gw.connect(10).await?,
    ];
    wait_metric(&gw, &m("connections"), 3.0).await?;
    wait_metric(&gw, &m("connections_opened_total"), opened + 3.0).await?;

    // One publish to users 9 and 10 (+ an absent user): 3 recipients counted, 3 frames written.
    gw.publish(&[9, 10, 77], seed::MESSAGE).await?;
    for client in &mut clients {
        client.next_text().await?;
    }
    wait_metric(&gw, &m("events_published_total"), published + 3.0).await?;
    wait_metric(&gw, &m("events_delivered_total"), delivered + 3.0).await?;
    wait_metric(&gw, &m("delivery_latency_seconds_count"), latency + 3.0).await?;

    // Publish requests by status.
    gw.publish(&[10], seed::NOTIFICATION).await?;
    clients[2].next_text().await?;
    let bad = gw.publish_raw(r#"{"users":[],"event":{}}"#).await?;
    ensure!(bad.status == 400);
    let unauthorized = http::request(&gw.admin, "POST", "/v1/publish", &[], b"{}").await?;
    ensure!(unauthorized.status == 401);
    wait_metric(&gw, &m(r#"publish_requests_total{status="200"}"#), 2.0).await?;
    wait_metric(&gw, &m(r#"publish_requests_total{status="400"}"#), 1.0).await?;
    wait_metric(&gw, &m(r#"publish_requests_total{status="401"}"#), 1.0).await?;
    // Each of the four timed, whatever its status; none under the batch route.
    wait_metric(
        &gw,
        &m(r#"publish_duration_seconds_count{route="publish"}"#),
        4.0,
    )
    .await?;
    ensure!(
        gw.metric(&m(r#"publish_duration_seconds_count{route="batch"}"#))
            .await?
            == 0.0
    );
    // Only the two valid publishes reached the broker.
    ensure!(
        gw.metric(&m("broker_publish_duration_seconds_count"))
            .await?
            == 2.0
    );
    wait_metric(&gw, &m("events_delivered_total"), delivered + 4.0).await?;

    // Auth failures by reason.
    for _ in 0..2 {
        http::upgrade_attempt(&gw.public, "/ws", &[]).await?;
    }
    let expired = token_with(9, -3600, JWT_SECRET.as_bytes(), Algorithm::HS256);
    http::upgrade_attempt(&gw.public, &format!("/ws?access_token={expired}"), &[]).await?;
    wait_metric(&gw, &m(r#"auth_failures_total{reason="missing"}"#), 2.0).await?;
    wait_metric(&gw, &m(r#"auth_failures_total{reason="jwt_expired"}"#), 1.0).await?;

    // A client leaving moves the gauge back down and counts a close.
    if let Some(client) = clients.pop() {
        client.close().await;
    }
    wait_metric(&gw, &m("connections"), 2.0).await?;
    wait_metric(
        &gw,
        &m(r#"connections_closed_total{reason="client_closed"}"#),
        1.0,
    )
    .await?;
    let page = scrape(&gw).await?;
    ensure!(page.get(&m("connections_opened_total"), &[]) == Some(opened + 3.0));
    for family in LABELLED_FAMILIES {
        ensure!(
            page.types.get(&m(family)).map(String::as_str) == Some("counter"),
            "{family} is not a declared counter"
        );
    }
    Ok(())
}

#[tokio::test]
async fn healthz_and_readyz_answer_200_json() -> Result<()> {
    let gw = Gateway::start(GatewayOptions::default()).await?;
    for path in ["/healthz", "/readyz"] {
        let res = gw.admin_get(path).await?;
        ensure!(res.status == 200, "{path}: {}", res.status);
        let content_type = res.header("content-type").unwrap_or_default();
        ensure!(
            content_type.starts_with("application/json"),
            "{path}: {content_type:?}"
        );
        res.json()?;
    }
    ensure!(gw.admin_get("/readyz").await?.json()? == json!({"ready": true}));
    Ok(())
}

#[tokio::test]
async fn sigterm_fails_readiness_at_once_but_keeps_serving_during_the_pre_drain_delay() -> Result<()>
{
    // A long pre-drain delay, cut short by a second signal at the end of the test.
    let mut gw = Gateway::start(GatewayOptions::default().arg(&[
        "--pre-drain-delay",
        "60s",
        "--drain-window",
        "0s",
    ]))
    .await?;
    let mut client = gw.connect(9).await?;
    ensure!(gw.is_ready().await);

    gw.signal(libc::SIGTERM);
    gw.wait_ready(false, WAIT).await?;
    let res = gw.admin_get("/readyz").await?;
    ensure!(res.status == 503, "/readyz answered {}", res.status);
    ensure!(res.json()? == json!({"ready": false, "reason": "draining"}));
    ensure!(
        gw.admin_get("/healthz").await?.status == 200,
        "live while draining"
    );

    // Still serving: connected clients receive, new clients may connect.
    gw.publish(&[9], seed::MESSAGE).await?;
    ensure!(client.next_event().await?["type"] == "message");
    let mut late = gw.connect(10).await?;
    gw.publish(&[10], seed::NOTIFICATION).await?;
    ensure!(late.next_event().await?["type"] == "notification");

    // A second signal skips the rest of the delay: both clients are closed, exit 0.
    gw.signal(libc::SIGTERM);
    for c in [&mut client, &mut late] {
        match c.closed_within(WAIT).await? {
            Closed::Code(1001, _) => {}
            other => bail!("expected close 1001, got {other:?}"),
        }
    }
    drop((client, late));
    let status = gw.wait_exit(Duration::from_secs(20)).await?;
    ensure!(status.success(), "exit status {status}");
    Ok(())
}

/// Shutdown without the drain's delays.
const NO_DRAIN: &[&str] = &["--pre-drain-delay", "0s", "--drain-window", "0s"];

/// Send `sig`: every client must be closed with 1001 and the process exit with status 0.
async fn shuts_down_cleanly(gw: &mut Gateway, sig: i32, mut clients: Vec<Client>) -> Result<()> {
    gw.signal(sig);
    for client in &mut clients {
        match client.closed_within(WAIT).await? {
            Closed::Code(1001, _) => {}
            other => bail!("expected close 1001, got {other:?}"),
        }
    }
    drop(clients);
    let status = gw.wait_exit(Duration::from_secs(20)).await?;
    ensure!(status.success(), "exit status {status}");
    Ok(())
}

#[tokio::test]
async fn sigterm_closes_every_client_with_1001_and_exits_0() -> Result<()> {
    let mut gw = Gateway::start(GatewayOptions::default().arg(NO_DRAIN)).await?;
    let mut clients = Vec::new();
    for user in [9, 9, 9, 10, 2147] {
        clients.push(gw.connect(user).await?);
    }
    wait_metric(&gw, &m("connections"), 5.0).await?;
    shuts_down_cleanly(&mut gw, libc::SIGTERM, clients).await?;
    ensure!(
        gw.logs().iter().all(|l| !l.contains("\"level\":\"ERROR\"")),
        "errors logged during shutdown: {:#?}",
        gw.logs()
    );
    Ok(())
}

#[tokio::test]
async fn sigint_also_shuts_down_cleanly() -> Result<()> {
    let mut gw = Gateway::start(GatewayOptions::default().arg(NO_DRAIN)).await?;
    let client = gw.connect(9).await?;
    shuts_down_cleanly(&mut gw, libc::SIGINT, vec![client]).await
}

#[tokio::test(flavor = "multi_thread")]
async fn one_worker_thread_serves_redis_mode_and_shuts_down_cleanly() -> Result<()> {
    // `--worker-threads 1` runs tokio's single-threaded scheduler (the default on one core).
    let redis = RedisServer::start().await?;
    let options = GatewayOptions::redis(redis.url())
        .arg(&["--worker-threads", "1"])
        .fast_probes()
        .arg(NO_DRAIN);
    let mut gw = Gateway::start_ready(options).await?;
    let mut client = gw.connect(9).await?;
    gw.publish(&[9], seed::MESSAGE).await?;
    let frame: serde_json::Value = serde_json::from_str(&client.next_text().await?)?;
    ensure!(frame["type"] == "message", "got {frame}");
    shuts_down_cleanly(&mut gw, libc::SIGTERM, vec![client]).await
}

#[tokio::test]
async fn beyond_max_connections_new_clients_get_503_until_one_leaves() -> Result<()> {
    let gw = Gateway::start(GatewayOptions::default().arg(&["--max-connections", "2"])).await?;
    let first = gw.connect(9).await?;
    let mut second = gw.connect(10).await?;
    let path = ws_path(11);
    let refused = http::upgrade_attempt(&gw.public, &path, &[]).await?;
    ensure!(
        refused.status == 503,
        "expected 503 at capacity, got {} {}",
        refused.status,
        refused.body_text()
    );
    ensure!(refused.json()? == json!({"error": "Server at capacity"}));
    wait_metric(
        &gw,
        &m("connections_refused_total{reason=\"capacity\"}"),
        1.0,
    )
    .await?;

    // The connections that are in keep receiving; a slot frees when one leaves.
    gw.publish(&[10], seed::MESSAGE).await?;
    second.next_text().await?;
    first.close().await;
    wait_metric(&gw, &m("connections"), 1.0).await?;
    let mut third = gw.connect(11).await?;
    gw.publish(&[11], seed::MESSAGE).await?;
    third.next_text().await?;
    Ok(())
}

/// Wait (bounded) until some log line contains `needle`.
async fn wait_log(gw: &Gateway, needle: &str) -> Result<()> {
    eventually(WAIT, "a log line", || async {
        ensure!(
            gw.logs().iter().any(|l| l.contains(needle)),
            "no log line contains {needle:?}"
        );
        Ok(())
    })
    .await
}

#[tokio::test]
async fn tokens_and_keys_never_appear_in_logs() -> Result<()> {
    let gw = Gateway::start(GatewayOptions::default()).await?;
    let accepted = token(9);
    let mut client = gw.connect(9).await?; // carries token(9) in its URL
    let bearer_token = token(10);
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
            gw.ws_base(),
        )?;
    request
        .headers_mut()
        .insert("Authorization", format!("Bearer {bearer_token}").parse()?);
    let bearer_client = Client::connect_request(request).await?;

    let bad_signature = token_with(
        9,
        3600,
        b"not-the-gateway-secret-0123456789",
        Algorithm::HS256,
    );
    let expired = token_with(9, -3600, JWT_SECRET.as_bytes(), Algorithm::HS256);
    let gleepost_token = "gp0123456789abcdeftokenvalue";
    let wrong_api_key = "wrong-api-key-0123456789";
    for path in [
        format!("/ws?access_token={bad_signature}"),
        format!("/ws?access_token={expired}"),
        format!("/ws?id=9&token={gleepost_token}"),
    ] {
        let res = http::upgrade_attempt(&gw.public, &path, &[]).await?;
        ensure!(res.status == 401);
    }
    let bearer = format!("Bearer {bad_signature}");
    http::upgrade_attempt(&gw.public, "/ws", &[("Authorization", &bearer)]).await?;
    let gp_header = format!("9-{gleepost_token}");
    http::upgrade_attempt(&gw.public, "/ws", &[("X-GP-Auth", &gp_header)]).await?;
    let key_header = format!("Bearer {wrong_api_key}");
    let res = http::request(
        &gw.admin,
        "POST",
        "/v1/publish",
        &[("Authorization", &key_header)],
        b"{}",
    )
    .await?;
    ensure!(res.status == 401);

    gw.publish(&[9], seed::MESSAGE).await?;
    client.next_text().await?;
    client.close().await;
    bearer_client.close().await;
    // The gateway logged these events (at debug level, as the harness runs it)…
    wait_log(&gw, "connection rejected").await?;
    wait_log(&gw, "connection closed").await?;
    // …without any credential.
    let logs = gw.logs();
    for secret in [
        accepted.as_str(),
        bearer_token.as_str(),
        bad_signature.as_str(),
        expired.as_str(),
        gleepost_token,
        wrong_api_key,
        API_KEY,
        JWT_SECRET,
    ] {
        // The signature alone is enough to matter.
        let tail = secret.rsplit('.').next().unwrap_or(secret);
        if let Some(line) = logs.iter().find(|l| l.contains(tail)) {
            bail!("a credential appears in the logs: {line}");
        }
    }
    Ok(())
}

#[tokio::test]
async fn token_subcommand_mints_a_jwt_the_gateway_accepts() -> Result<()> {
    let output = Command::new(gateway_binary()?)
        .args(["token", "--user", "9", "--ttl", "1h"])
        .env("GATEWAY_JWT_SECRET", JWT_SECRET)
        .env_remove("GATEWAY_API_KEY")
        .env_remove("REDIS_URL")
        .output()?;
    ensure!(
        output.status.success(),
        "token failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout)?;
    let jwt = stdout.trim();
    ensure!(
        stdout.lines().count() == 1,
        "expected one line, got {stdout:?}"
    );
    ensure!(jwt.split('.').count() == 3, "not a JWT: {jwt:?}");

    // The claims are what the protocol documents: sub = "9", exp about an hour from now.
    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_required_spec_claims(&["exp", "sub"]);
    let claims = jsonwebtoken::decode::<serde_json::Value>(
        jwt,
        &DecodingKey::from_secret(JWT_SECRET.as_bytes()),
        &validation,
    )
    .context("minted token does not verify")?
    .claims;
    ensure!(claims["sub"] == "9", "claims {claims}");
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() as i64;
    let exp = claims["exp"].as_i64().context("exp")?;
    ensure!(
        (exp - now - 3600).abs() < 300,
        "exp {exp} is not about now + 1h ({now})"
    );

    // The gateway accepts it for user 9.
    let gw = Gateway::start(GatewayOptions::default()).await?;
    let mut client = Client::connect(&format!("{}?access_token={jwt}", gw.ws_base())).await?;
    gw.publish(&[9], seed::MESSAGE).await?;
    ensure!(client.next_event().await?["type"] == "message");
    Ok(())
}

#[tokio::test]
async fn token_subcommand_needs_the_secret() -> Result<()> {
    let output = Command::new(gateway_binary()?)
        .args(["token", "--user", "9"])
        .env_remove("GATEWAY_JWT_SECRET")
        .env_remove("GATEWAY_DEV")
        .output()?;
    ensure!(!output.status.success(), "minted a token without a secret");
    ensure!(output.stdout.is_empty(), "printed something on stdout");
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        stderr.contains("GATEWAY_JWT_SECRET"),
        "unhelpful error: {stderr}"
    );
    Ok(())
}
