//! Redis failures (issue 3): a node whose subscription is down — Redis killed and restarted, the
//! pub/sub connection killed, or Redis frozen with its TCP connections still up — reports
//! unready, reconnects with backoff, resubscribes every connected user, becomes ready again and
//! delivers to the same WebSocket connections, which never had to reconnect.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use gleepost_tests::redis_inspect::{user_channels, user_channels_subscribed};
use gleepost_tests::resume::expect_resync;
use gleepost_tests::{ensure_same_event, eventually, Client, Gateway, GatewayOptions, RedisServer};

const READY: Duration = Duration::from_secs(30);
/// Each node's settings besides fast probes: a probe timeout and a Redis timeout that let a
/// fault show within a second.
const NODE_ARGS: [&str; 4] = ["--probe-timeout", "500ms", "--redis-timeout", "300ms"];
const RECONNECTS: &str = "gleepost_gateway_broker_reconnects_total";
const OPENED: &str = "gleepost_gateway_connections_opened_total";

/// The client's next event is `event`; `resync` control frames before it (history lost with
/// the old Redis) are allowed, anything else is not.
async fn next_is(client: &mut Client, event: &str, who: &str) -> Result<()> {
    loop {
        let frame = client.next_text().await.context(who.to_string())?;
        let value: serde_json::Value = serde_json::from_str(&frame)?;
        if value["type"] == "resync" {
            continue;
        }
        return ensure_same_event(&frame, event).with_context(|| who.to_string());
    }
}

fn event(label: &str) -> String {
    format!(r#"{{"type":"message","location":"/conversations/1","data":{{"label":"{label}"}}}}"#)
}

/// Users 9 (on both nodes) and 10 (on node B) — the clients of the fault scenarios.
struct Clients {
    nine_a: Client,
    nine_b: Client,
    ten_b: Client,
}

impl Clients {
    async fn connect(a: &Gateway, b: &Gateway) -> Result<Clients> {
        Ok(Clients {
            nine_a: a.connect(9).await?,
            nine_b: b.connect(9).await?,
            ten_b: b.connect(10).await?,
        })
    }

    /// Publish through node A's API and check that every client gets it.
    async fn all_receive(&mut self, a: &Gateway, label: &str) -> Result<()> {
        let event = event(label);
        a.publish(&[9, 10], &event).await?;
        next_is(&mut self.nine_a, &event, "user 9 on node A").await?;
        next_is(&mut self.nine_b, &event, "user 9 on node B").await?;
        next_is(&mut self.ten_b, &event, "user 10 on node B").await?;
        Ok(())
    }
}

async fn metrics(a: &Gateway, b: &Gateway, name: &str) -> Result<[f64; 2]> {
    Ok([a.metric(name).await?, b.metric(name).await?])
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_restart_makes_nodes_unready_then_ready_and_delivery_resumes_without_reconnecting(
) -> Result<()> {
    let mut redis = RedisServer::start().await?;
    let (a, b) = Gateway::two_on_redis(&redis, &NODE_ARGS).await?;
    let mut clients = Clients::connect(&a, &b).await?;
    clients.all_receive(&a, "before").await?;
    let reconnects = metrics(&a, &b, RECONNECTS).await?;
    let opened = metrics(&a, &b, OPENED).await?;

    redis.kill();
    a.wait_ready(false, READY)
        .await
        .context("node A with Redis down")?;
    b.wait_ready(false, READY)
        .await
        .context("node B with Redis down")?;
    redis.restart().await?; // same port, empty: every subscription must be re-made
    a.wait_ready(true, READY)
        .await
        .context("node A after restart")?;
    b.wait_ready(true, READY)
        .await
        .context("node B after restart")?;

    let subscribed = user_channels_subscribed(&redis).await?;
    let expected = user_channels(9)
        .into_iter()
        .chain(user_channels(10))
        .collect();
    ensure!(
        subscribed == expected,
        "resubscribed channels: {subscribed:?}"
    );
    clients.all_receive(&a, "after restart").await?;

    let now = metrics(&a, &b, RECONNECTS).await?;
    ensure!(
        now[0] > reconnects[0] && now[1] > reconnects[1],
        "{RECONNECTS} did not increase: {reconnects:?} → {now:?}"
    );
    let now = metrics(&a, &b, OPENED).await?;
    ensure!(
        now == opened,
        "clients reconnected: {OPENED} {opened:?} → {now:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_subscription_connections_are_reestablished_with_every_channel() -> Result<()> {
    let redis = RedisServer::start().await?;
    let (a, b) = Gateway::two_on_redis(&redis, &NODE_ARGS).await?;
    let mut clients = Clients::connect(&a, &b).await?;
    let reconnects = metrics(&a, &b, RECONNECTS).await?;

    let killed: i64 = redis.cmd(&["CLIENT", "KILL", "TYPE", "pubsub"]).await?;
    ensure!(
        killed == 2,
        "expected one pub/sub connection per node, killed {killed}"
    );
    eventually(READY, "both nodes reconnected", || async {
        let now = metrics(&a, &b, RECONNECTS).await?;
        ensure!(
            now[0] > reconnects[0] && now[1] > reconnects[1],
            "{RECONNECTS}: {reconnects:?} → {now:?}"
        );
        Ok(())
    })
    .await?;
    a.wait_ready(true, READY).await?;
    b.wait_ready(true, READY).await?;
    clients.all_receive(&a, "after kill").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn frozen_redis_is_detected_by_the_probe_and_delivery_resumes_after_thaw() -> Result<()> {
    let redis = RedisServer::start().await?;
    let (a, b) = Gateway::two_on_redis(&redis, &NODE_ARGS).await?;
    let mut clients = Clients::connect(&a, &b).await?;
    let reconnects = metrics(&a, &b, RECONNECTS).await?;

    // TCP connections stay up, nothing arrives: only the self-probe can tell. Both nodes turn
    // unready and give up their (silent) subscription while Redis is still frozen.
    redis.signal(libc::SIGSTOP);
    let frozen = async {
        a.wait_ready(false, READY)
            .await
            .context("node A, Redis frozen")?;
        b.wait_ready(false, READY)
            .await
            .context("node B, Redis frozen")?;
        eventually(
            READY,
            "both nodes replace the dead subscription",
            || async {
                let now = metrics(&a, &b, RECONNECTS).await?;
                ensure!(
                    now[0] > reconnects[0] && now[1] > reconnects[1],
                    "{RECONNECTS}: {reconnects:?} → {now:?}"
                );
                Ok(())
            },
        )
        .await
    }
    .await;
    redis.signal(libc::SIGCONT);
    frozen?;

    a.wait_ready(true, READY)
        .await
        .context("node A after thaw")?;
    b.wait_ready(true, READY)
        .await
        .context("node B after thaw")?;
    clients.all_receive(&a, "after thaw").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_password_refused_for_a_while_does_not_stop_the_node_for_good() -> Result<()> {
    // The server refuses the node's password for a while (rotated on the server before the
    // node's secret, then set back): the command connection's reconnects fail with an
    // authentication error, not an I/O one. Once the password works again the node is ready
    // and delivers, without a restart.
    let redis = RedisServer::start().await?;
    let () = redis
        .cmd(&["ACL", "SETUSER", "gw", "on", ">pw-a", "~*", "&*", "+@all"])
        .await?;
    let options = GatewayOptions::redis(redis.url_as("gw", "pw-a"))
        .fast_probes()
        .arg(&NODE_ARGS);
    let gw = Gateway::start_ready(options).await?;
    let mut client = gw.connect(9).await?;
    let event = r#"{"type":"message","data":1}"#;
    gw.publish(&[9], event).await?;
    next_is(&mut client, event, "before").await?;

    let () = redis
        .cmd(&["ACL", "SETUSER", "gw", "resetpass", ">pw-b"])
        .await?;
    let _: i64 = redis.cmd(&["CLIENT", "KILL", "USER", "gw"]).await?;
    gw.wait_ready(false, READY).await?;
    // Publishes meanwhile fail with a status, not a hang, until the command connection's
    // reconnect was refused for the password (what only a new connection fixes).
    let body = format!(r#"{{"users":[9],"event":{event}}}"#);
    eventually(READY, "a publish refused for the password", || async {
        let refused = gw.publish_raw(&body).await?;
        ensure!(refused.status == 503, "publish: {}", refused.status);
        let logged = gw.logs().iter().any(|line| {
            line.contains("publish failed") && line.to_lowercase().contains("authentication")
        });
        ensure!(logged, "no publish failed for the password in the log yet");
        Ok(())
    })
    .await?;

    let () = redis
        .cmd(&["ACL", "SETUSER", "gw", "resetpass", ">pw-a"])
        .await?;
    gw.wait_ready(true, READY).await?;
    let after = r#"{"type":"message","data":2}"#;
    gw.publish(&[9], after).await?;
    next_is(&mut client, after, "after").await
}

/// Kill the node's pub/sub connection; returns once the node reconnected and is ready again
/// (its gap repair done).
async fn pubsub_blip(redis: &RedisServer, gw: &Gateway) -> Result<()> {
    let before = gw.metric(RECONNECTS).await?;
    let _: i64 = redis.cmd(&["CLIENT", "KILL", "TYPE", "pubsub"]).await?;
    eventually(READY, "the node noticed the blip", || async {
        ensure!(gw.metric(RECONNECTS).await? > before);
        Ok(())
    })
    .await?;
    gw.wait_ready(true, READY).await
}

#[tokio::test(flavor = "multi_thread")]
async fn one_users_unreadable_history_does_not_stop_the_gap_repair_of_the_others() -> Result<()> {
    // User 5's history key holds a string (written by something else): after a pub/sub blip
    // the repair reads it and gets WRONGTYPE. That user's connection gets `resync`
    // (`unavailable`); the others' repair, and the node, go on.
    let redis = RedisServer::start().await?;
    let gw = Gateway::on_redis(&redis, &NODE_ARGS).await?;
    let (mut known, mut fresh, mut poisoned) = (
        gw.connect(1).await?,
        gw.connect(2).await?,
        gw.connect(5).await?,
    );
    let event = r#"{"type":"message","data":1}"#;
    gw.publish(&[1, 5], event).await?;
    next_is(&mut known, event, "user 1 before").await?;
    next_is(&mut poisoned, event, "user 5 before").await?;
    let key = gleepost_event::keys::history_key(5);
    let () = redis.cmd(&["SET", &key, "not a stream"]).await?;

    pubsub_blip(&redis, &gw).await?;
    let after = r#"{"type":"message","data":2}"#;
    gw.publish(&[1, 2], after).await?;
    next_is(&mut known, after, "user 1 after").await?;
    next_is(&mut fresh, after, "user 2 after").await?;
    expect_resync(&mut poisoned, "unavailable").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn without_history_a_blip_gets_connected_clients_a_resync() -> Result<()> {
    // History off: events published while the subscription was down cannot be replayed; the
    // connections are told (`resync` `history_off`: refetch state) instead of a silent gap.
    let redis = RedisServer::start().await?;
    let mut args = NODE_ARGS.to_vec();
    args.extend(["--history-size", "0"]);
    let gw = Gateway::on_redis(&redis, &args).await?;
    let mut client = gw.connect(9).await?;
    pubsub_blip(&redis, &gw).await?;
    expect_resync(&mut client, "history_off").await?;
    Ok(())
}
