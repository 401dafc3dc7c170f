//! What the binary's operator tools tell a person (issue 15, item 13): the `client` subcommand
//! shows close frames as code and reason and a refusal with its JSON body; a failed Redis
//! connection names the address it tried and its cause once; text logs written to a pipe carry
//! no colour codes.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use gleepost_tests::eventually;
use gleepost_tests::gateway::gateway_binary;
use gleepost_tests::subcommands::gateway_command;
use gleepost_tests::{free_port, seed, Gateway, GatewayOptions};

const LIMIT: Duration = Duration::from_secs(15);
const EVENT: &str = r#"{"type":"ping","location":"/","data":{}}"#;

#[tokio::test(flavor = "multi_thread")]
async fn client_prints_events_and_the_close_frame_as_code_and_reason() -> Result<()> {
    let mut gw = Gateway::start(GatewayOptions::default().arg(&[
        "--pre-drain-delay",
        "0s",
        "--drain-window",
        "0s",
    ]))
    .await?;
    let client = tokio::process::Command::new(gateway_binary()?)
        .args(["client", &gw.ws_url(9)])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    eventually(LIMIT, "the client connected", || async {
        ensure!(gw.metric("gleepost_gateway_connections").await? == 1.0);
        Ok(())
    })
    .await?;
    gw.publish(&[9], seed::MESSAGE).await?;
    eventually(LIMIT, "the event delivered", || async {
        ensure!(gw.metric("gleepost_gateway_events_delivered_total").await? == 1.0);
        Ok(())
    })
    .await?;
    gw.signal(libc::SIGTERM);
    let output = tokio::time::timeout(LIMIT, client.wait_with_output())
        .await
        .context("the client did not exit after the gateway closed it")??;
    gw.wait_exit(LIMIT).await?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        stdout.contains(r#""type":"message""#),
        "event not printed: {stdout}"
    );
    ensure!(
        stderr.contains("closed by server: 1001 server going away"),
        "close frame not shown as code and reason: {stderr}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn client_shows_a_refusal_with_its_status_and_json_body() -> Result<()> {
    let gw = Gateway::start(GatewayOptions::default()).await?;
    let url = format!("{}?access_token=not-a-token", gw.ws_base());
    let output = gateway_command(&["client", &url], &[]).await?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(!output.status.success(), "client succeeded: {stderr}");
    ensure!(
        stderr.contains(r#"401 Unauthorized: {"error":"#),
        "refusal without its status and body: {stderr}"
    );
    ensure!(
        !stderr.contains("not-a-token"),
        "the token was printed: {stderr}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn publish_to_an_unreachable_redis_names_the_address_and_the_cause_once() -> Result<()> {
    let port = free_port()?; // nothing listens there
    let url = format!("redis://:hunter2@127.0.0.1:{port}/");
    let output = gateway_command(
        &["publish", "--users", "9", "--event", EVENT],
        &[("REDIS_URL", &url)],
    )
    .await?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(!output.status.success(), "publish succeeded: {stderr}");
    ensure!(
        stderr.contains(&format!("connecting to Redis at 127.0.0.1:{port}")),
        "the address tried is not named: {stderr}"
    );
    ensure!(
        stderr.matches("Connection refused").count() == 1,
        "the cause is not shown exactly once: {stderr}"
    );
    ensure!(
        !stderr.contains("hunter2"),
        "the password was printed: {stderr}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn text_logs_to_a_pipe_carry_no_colour_codes() -> Result<()> {
    // The admin port is taken: the gateway logs (text, to our pipe), then fails to bind.
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let admin = taken.local_addr()?.to_string();
    let output = gateway_command(
        &[
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            &admin,
            "--log-format",
            "text",
        ],
        &[("GATEWAY_JWT_SECRET", "short"), ("GATEWAY_API_KEY", "key")],
    )
    .await?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(!output.status.success(), "started on a taken port");
    ensure!(
        stderr.contains("WARN") && stderr.contains("shorter than 32 bytes"),
        "expected the short-secret warning: {stderr}"
    );
    ensure!(
        !stderr.contains('\u{1b}'),
        "ANSI escape codes in piped logs: {stderr:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn publish_to_a_cluster_that_does_not_answer_fails_within_its_bound() -> Result<()> {
    // Every primary paused: before, the subcommand waited for as long as redis-rs's cluster
    // client would (past 30 s); now it fails within a few --redis-timeout with a reason.
    let cluster = gleepost_tests::RedisCluster::start(3, 0).await?;
    for node in cluster.primaries().await? {
        let mut conn = node.connection().await?;
        let () = redis::cmd("CLIENT")
            .arg(&["PAUSE", "20000", "ALL"])
            .query_async(&mut conn)
            .await?;
    }
    let seeds = cluster.urls_csv();
    let env = [
        ("REDIS_CLUSTER_URLS", seeds.as_str()),
        ("GATEWAY_REDIS_TIMEOUT", "500ms"),
    ];
    let event = r#"{"type":"message","data":1}"#;
    let output = gateway_command(&["publish", "--users", "9", "--event", event], &env).await?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(!output.status.success(), "published to a paused cluster");
    ensure!(stderr.contains("no answer from Redis"), "stderr: {stderr}");
    Ok(())
}
