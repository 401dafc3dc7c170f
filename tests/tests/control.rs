//! Control from the backend (issue 13, items 1–3): `POST /v1/disconnect` closes every
//! connection of the users on every node with 4003, and with `revoke_tokens_before` their older
//! JWTs are refused on every node; `GET /v1/presence` counts connections over all nodes and
//! stops counting a SIGKILLed node; the publish response says which users were online. On two
//! nodes + Redis, on a Redis Cluster, and on the embedded broker.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{ensure, Context, Result};
use gleepost_tests::credentials::token_issued_at;
use gleepost_tests::eventually;
use gleepost_tests::resume::{expect_seq, publish_seq, seq_event};
use gleepost_tests::{Client, Closed, Gateway, GatewayOptions, RedisCluster, RedisServer};
use serde_json::{json, Value};

const READY: Duration = Duration::from_secs(30);
/// Presence forgets a dead node within its heartbeat TTL (15 s); this bounds the wait.
const NODE_GONE: Duration = Duration::from_secs(40);

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Presence of `users` as `{"<id>": connections}`.
async fn presence(gw: &Gateway, users: &str) -> Result<Value> {
    let body = gw
        .admin_get_json(&format!("/v1/presence?users={users}"))
        .await?;
    let counts: serde_json::Map<String, Value> = body["users"]
        .as_object()
        .context("no users object")?
        .iter()
        .map(|(u, v)| (u.clone(), v["connections"].clone()))
        .collect();
    Ok(Value::Object(counts))
}

async fn expect_closed_4003(client: &mut Client, who: &str) -> Result<()> {
    match client.closed_within(Duration::from_secs(10)).await? {
        Closed::Code(4003, _) => Ok(()),
        other => anyhow::bail!("{who}: expected close 4003, got {other:?}"),
    }
}

/// The scenario on two nodes (`a`, `b`) sharing one broker.
async fn across_nodes(a: &Gateway, b: &Gateway, kill_b: impl FnOnce() -> Result<()>) -> Result<()> {
    let (nine, ten) = (9u64, 10u64);
    let mut nine_a = a.connect(nine).await?;
    let mut nine_b = b.connect(nine).await?;
    let mut nine_b2 = b.connect(nine).await?;
    let mut ten_a = a.connect(ten).await?;

    // Presence over both nodes.
    eventually(READY, "presence counts both nodes", || async {
        let got = presence(a, "9,10,11").await?;
        ensure!(got == json!({"9": 3, "10": 1, "11": 0}), "presence {got}");
        Ok(())
    })
    .await?;

    // Online flags on publish.
    let res = a
        .publish(&[nine, 11], &seq_event(1, 0))
        .await
        .context("publish")?;
    ensure!(
        res["online"] == json!({"9": true, "11": false}),
        "online flags {res}"
    );
    for c in [&mut nine_a, &mut nine_b, &mut nine_b2] {
        expect_seq(c, 1, true).await?;
    }

    // Disconnect user 9 through node b: every connection on both nodes closes with 4003.
    let res = b
        .admin_post_json("/v1/disconnect", &json!({"users": [nine]}))
        .await?;
    ensure!(
        res["users"]["9"]["nodes"] == json!(2),
        "disconnect answer {res}"
    );
    expect_closed_4003(&mut nine_a, "9 on a").await?;
    expect_closed_4003(&mut nine_b, "9 on b").await?;
    expect_closed_4003(&mut nine_b2, "9 on b (2nd)").await?;
    // Others are untouched.
    publish_seq(a, ten, 2).await?;
    expect_seq(&mut ten_a, 2, true).await?;

    // Without revocation the user may reconnect at once.
    let _again = a
        .connect(nine)
        .await
        .context("reconnect after a plain disconnect")?;

    // Revocation: JWTs issued before the time (or without iat) are refused on every node.
    let before = now() - 10;
    let res = a
        .admin_post_json(
            "/v1/disconnect",
            &json!({"users": [nine], "revoke_tokens_before": before}),
        )
        .await?;
    ensure!(res["revoke_tokens_before"] == json!(before), "{res}");
    for gw in [a, b] {
        for (what, iat) in [("older iat", Some(before - 100)), ("no iat", None)] {
            let url = format!(
                "{}?access_token={}",
                gw.ws_base(),
                token_issued_at(nine, iat)
            );
            let refused = Client::connect(&url).await;
            ensure!(refused.is_err(), "a revoked token ({what}) was admitted");
        }
        let fresh = format!(
            "{}?access_token={}",
            gw.ws_base(),
            token_issued_at(nine, Some(now()))
        );
        Client::connect(&fresh)
            .await
            .context("a token issued after the revocation was refused")?;
    }
    ensure!(
        a.metric("gleepost_gateway_auth_failures_total{reason=\"jwt_revoked\"}")
            .await?
            >= 2.0,
        "revoked tokens not counted"
    );

    // A node that dies stops counting.
    drop(ten_a);
    eventually(READY, "user 10 left node a", || async {
        let got = presence(a, "10").await?;
        ensure!(got == json!({"10": 0}), "presence {got}");
        Ok(())
    })
    .await?;
    // Now the only count of user 10 is node b's.
    let _ten_b = b.connect(ten).await?;
    eventually(READY, "presence sees user 10 on b", || async {
        let got = presence(a, "10").await?;
        ensure!(got == json!({"10": 1}), "presence {got}");
        Ok(())
    })
    .await?;
    kill_b()?;
    eventually(NODE_GONE, "a dead node stops counting", || async {
        let got = presence(a, "10").await?;
        ensure!(got == json!({"10": 0}), "presence {got}");
        Ok(())
    })
    .await?;
    Ok(())
}

/// [`across_nodes`] on two nodes started with `options`; node b is SIGKILLed in it.
async fn two_nodes(options: GatewayOptions) -> Result<()> {
    let a = Gateway::start_ready(options.clone().fast_probes()).await?;
    let mut b = Gateway::start_ready(options.fast_probes()).await?;
    let pid = b.pid();
    across_nodes(&a, &b, || {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        Ok(())
    })
    .await?;
    b.wait_exit(Duration::from_secs(10))
        .await
        .context("node b survived SIGKILL")?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn disconnect_revoke_presence_and_online_across_two_nodes_on_redis() -> Result<()> {
    let redis = RedisServer::start().await?;
    two_nodes(GatewayOptions::redis(redis.url())).await
}

#[tokio::test(flavor = "multi_thread")]
async fn disconnect_revoke_presence_and_online_across_two_nodes_on_a_cluster() -> Result<()> {
    let cluster = RedisCluster::start(3, 0).await?;
    two_nodes(GatewayOptions::cluster(cluster.urls_csv())).await
}

#[tokio::test(flavor = "multi_thread")]
async fn disconnect_revoke_presence_and_online_on_the_embedded_broker() -> Result<()> {
    let gw = Gateway::start_ready(GatewayOptions::default().fast_probes()).await?;
    let mut nine = gw.connect(9).await?;
    let _nine2 = gw.connect(9).await?;
    let got = presence(&gw, "9,10").await?;
    ensure!(got == json!({"9": 2, "10": 0}), "presence {got}");
    let res = gw.publish(&[9, 10], &seq_event(1, 0)).await?;
    ensure!(res["online"] == json!({"9": true, "10": false}), "{res}");
    expect_seq(&mut nine, 1, true).await?;
    let before = now() - 10;
    let res = gw
        .admin_post_json(
            "/v1/disconnect",
            &json!({"users": [9], "revoke_tokens_before": before}),
        )
        .await?;
    ensure!(res["users"]["9"]["nodes"] == json!(1), "{res}");
    expect_closed_4003(&mut nine, "9").await?;
    let old = format!(
        "{}?access_token={}",
        gw.ws_base(),
        token_issued_at(9, Some(before - 1))
    );
    ensure!(
        Client::connect(&old).await.is_err(),
        "revoked token admitted"
    );
    let fresh = format!(
        "{}?access_token={}",
        gw.ws_base(),
        token_issued_at(9, Some(now()))
    );
    let _fresh = Client::connect(&fresh)
        .await
        .context("fresh token refused")?;
    eventually(READY, "presence after the disconnect", || async {
        let got = presence(&gw, "9").await?;
        ensure!(got == json!({"9": 1}), "presence {got}");
        Ok(())
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn control_requests_are_authorized_and_validated() -> Result<()> {
    let gw = Gateway::start_ready(GatewayOptions::default().fast_probes()).await?;
    let unauthorized =
        gleepost_tests::http::request(&gw.admin, "GET", "/v1/presence?users=9", &[], b"").await?;
    ensure!(
        unauthorized.status == 401,
        "presence without key: {}",
        unauthorized.status
    );
    for (body, what) in [
        (r#"{"users":[]}"#, "empty users"),
        (r#"{"users":[9],"extra":1}"#, "unknown field"),
        (r#"{"users":[9],"revoke_tokens_before":"soon"}"#, "bad time"),
        (r#"[9]"#, "not an object"),
    ] {
        let res = gw.admin_post("/v1/disconnect", body).await?;
        ensure!(res.status == 400, "{what}: {}", res.status);
        let json: Value = serde_json::from_slice(&res.body)?;
        ensure!(json["error"].is_string(), "{what}: no JSON reason");
    }
    let res = gw.admin_get_json("/v1/presence?users=x").await;
    ensure!(res.is_err(), "bad presence query accepted");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn with_redis_down_disconnect_and_presence_answer_503_with_a_reason() -> Result<()> {
    let mut redis = RedisServer::start().await?;
    let gw = Gateway::on_redis(&redis, &["--redis-timeout", "300ms"]).await?;
    redis.kill();
    for (what, res) in [
        (
            "disconnect",
            gw.admin_post("/v1/disconnect", &json!({"users": [9]}).to_string())
                .await?,
        ),
        (
            "presence",
            gleepost_tests::http::request(
                &gw.admin,
                "GET",
                "/v1/presence?users=9",
                &[(
                    "Authorization",
                    &format!("Bearer {}", gleepost_tests::API_KEY),
                )],
                b"",
            )
            .await?,
        ),
    ] {
        ensure!(res.status == 503, "{what} with Redis down: {}", res.status);
        ensure!(res.json()?["error"].is_string(), "{what}: no JSON reason");
    }
    ensure!(
        gw.admin_get("/healthz").await?.status == 200,
        "node not alive"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_that_exits_stops_counting_in_presence_at_once() -> Result<()> {
    // Before, the exiting node's key lived on for its 15 s lifetime, and with it the count of
    // connections it had just closed.
    let redis = RedisServer::start().await?;
    let options = GatewayOptions::redis(redis.url()).fast_probes();
    let a = Gateway::start_ready(options.clone()).await?;
    let mut b = Gateway::start_ready(options.arg(&["--pre-drain-delay", "0s"])).await?;
    let _nine = b.connect(9).await?;
    eventually(READY, "presence counts b's connection", || async {
        let got = presence(&a, "9").await?;
        ensure!(got == json!({"9": 1}), "presence {got}");
        Ok(())
    })
    .await?;
    b.signal(libc::SIGTERM);
    b.wait_exit(READY).await?;
    let mut conn = redis.connection().await?;
    let nodes: Vec<String> = redis::cmd("KEYS")
        .arg("gp:node:*")
        .query_async(&mut conn)
        .await?;
    ensure!(nodes.len() == 1, "node keys after b exited: {nodes:?}");
    let got = presence(&a, "9").await?;
    ensure!(
        got == json!({"9": 0}),
        "presence right after b exited: {got}"
    );
    Ok(())
}
