//! The shared Redis subscription of each node (issue 3): a fixed handful of Redis connections per
//! node whatever the client count, per-user channels subscribed while the user has a connection on
//! the node and unsubscribed after its last one (also under connect/disconnect races), and the
//! broker metrics that show it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use futures_util::{StreamExt, TryStreamExt};
use gleepost_tests::redis_inspect::{
    client_list, node_redis_clients, numsub, probe_channels_subscribed, user_channels,
    user_channels_subscribed,
};
use gleepost_tests::{ensure_same_event, eventually, Client, Gateway, GatewayOptions, RedisServer};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Bound for asynchronous effects (unsubscribe after a disconnect, gauges) to show.
const SETTLE: Duration = Duration::from_secs(15);
const EVENT: &str = r#"{"type":"post","location":"/posts/5","data":{"id":5,"text":"fan-out"}}"#;
const CHANNELS: &str = "gleepost_gateway_broker_subscribed_channels";
/// Channels per user: `c:<id>`, `n:<id>` and the gateway's `gp:user:{<id>}`.
const CHANNELS_PER_USER: u64 = 3;

/// Wait until the node's subscribed-channels gauge equals `want`.
async fn channels_gauge_reaches(gw: &Gateway, want: f64) -> Result<()> {
    eventually(SETTLE, "subscribed channels gauge", || async {
        let got = gw.metric(CHANNELS).await?;
        ensure!(got == want, "{CHANNELS} = {got}, expected {want}");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn thousand_clients_over_two_nodes_use_two_redis_connections_per_node() -> Result<()> {
    let redis = RedisServer::start().await?;
    let (a, b) = Gateway::two_on_redis(&redis, &[]).await?;
    let idle = [
        node_redis_clients(&redis, &a).await?.len(),
        node_redis_clients(&redis, &b).await?.len(),
    ];

    // 500 users, each connected once to each node: 1,000 WebSocket clients.
    const USERS: u64 = 500;
    let nodes = [&a, &b];
    let mut clients: Vec<(u64, Client)> =
        futures_util::stream::iter((1..=USERS).flat_map(|u| [(u, 0), (u, 1)]))
            .map(|(user, node)| async move {
                let client = nodes[node]
                    .connect(user)
                    .await
                    .with_context(|| format!("user {user} on node {node}"))?;
                anyhow::Ok((user, client))
            })
            .buffer_unordered(64)
            .try_collect()
            .await?;
    ensure!(clients.len() == 1_000);
    for (name, gw, idle) in [("A", &a, idle[0]), ("B", &b, idle[1])] {
        let conns = node_redis_clients(&redis, gw).await?;
        let lines: Vec<&str> = conns.iter().map(|c| c.line.as_str()).collect();
        // As operations.md promises: one pub/sub and one command connection, idle or busy.
        ensure!(
            conns.len() == 2 && idle == 2,
            "node {name} holds {} Redis connections with 500 users connected (idle: {idle}), \
             not 2:\n{}",
            conns.len(),
            lines.join("\n")
        );
        // All of the node's 1,000 channels are on one pub/sub connection.
        ensure!(
            conns.iter().any(|c| c.sub == CHANNELS_PER_USER * USERS + 1),
            "no connection of node {name} carries the 1,501 channels:\n{}",
            lines.join("\n")
        );
        channels_gauge_reaches(gw, (CHANNELS_PER_USER * USERS + 1) as f64).await?;
        // Every connection names itself (CLIENT SETNAME) so operators can tell them apart;
        // the command connection is (re)named by the probe, so allow it a few intervals.
        eventually(Duration::from_secs(15), "connections named", || async {
            let conns = node_redis_clients(&redis, gw).await?;
            for c in &conns {
                ensure!(
                    c.line.contains(" name=gleepost-gateway-"),
                    "node {name}: unnamed Redis connection {}",
                    c.line
                );
            }
            Ok(())
        })
        .await?;
    }
    let others = client_list(&redis).await?;
    ensure!(
        others.len() <= 8,
        "{} Redis connections for two nodes: {others:#?}",
        others.len()
    );

    // One publish to every user through node A reaches all 1,000 clients.
    let users: Vec<u64> = (1..=USERS).collect();
    a.publish(&users, EVENT).await?;
    futures_util::future::try_join_all(clients.iter_mut().map(|(user, client)| async move {
        let frame = client
            .next_text()
            .await
            .with_context(|| format!("a client of user {user}"))?;
        ensure_same_event(&frame, EVENT)
    }))
    .await?;
    Ok(())
}

/// SUBSCRIBE commands Redis has processed (`INFO commandstats`).
async fn subscribe_calls(redis: &RedisServer) -> Result<u64> {
    let info: String = redis.cmd(&["INFO", "commandstats"]).await?;
    Ok(info
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_subscribe:calls="))
        .and_then(|rest| rest.split(',').next()?.parse().ok())
        .unwrap_or(0))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_storm_becomes_a_few_subscribe_commands() -> Result<()> {
    let redis = RedisServer::start().await?;
    let gw = Gateway::start_ready(GatewayOptions::redis(redis.url())).await?;
    let before = subscribe_calls(&redis).await?;

    // Redis frozen: the first new user's SUBSCRIBE stays unconfirmed, and the 99 users who
    // connect meanwhile must go out together once it is confirmed, not one command each.
    redis.signal(libc::SIGSTOP);
    const USERS: u64 = 100;
    let storm = tokio::spawn({
        let urls: Vec<String> = (1..=USERS).map(|u| gw.ws_url(u)).collect();
        async move { futures_util::future::try_join_all(urls.iter().map(|u| Client::connect(u))).await }
    });
    // Let the handshakes reach the node (a slow machine only merges fewer of them).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    redis.signal(libc::SIGCONT);
    let clients = storm.await??;
    ensure!(clients.len() == USERS as usize);

    let commands = subscribe_calls(&redis).await? - before;
    ensure!(
        commands <= 10,
        "{USERS} users connecting during one in-flight SUBSCRIBE took {commands} SUBSCRIBE commands"
    );
    let subscribed = user_channels_subscribed(&redis).await?;
    for user in 1..=USERS {
        for channel in user_channels(user) {
            ensure!(subscribed.contains(&channel), "{channel} not subscribed");
        }
    }
    Ok(())
}

/// What one churn task did: the clients it still holds, as (node, user, client).
type Held = Vec<(usize, u64, Client)>;

/// Connect and disconnect random users of `pool` on random nodes, `ops` times.
async fn churn(urls: [String; 2], pool: u64, ops: usize, seed: u64) -> Result<Held> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut held: Held = Vec::new();
    for _ in 0..ops {
        let roll: f64 = rng.random();
        let (node, user) = (rng.random_range(0..2usize), rng.random_range(1..=pool));
        let url = format!(
            "{}?access_token={}",
            urls[node],
            gleepost_tests::token(user)
        );
        if roll < 0.10 {
            // A connection abandoned in the middle of its handshake (a race with the broker's
            // subscription confirmation); completed or not, it ends disconnected.
            let cut = Duration::from_micros(rng.random_range(0..3_000));
            let _ = tokio::time::timeout(cut, Client::connect(&url)).await;
        } else if roll < 0.55 || held.is_empty() {
            held.push((node, user, Client::connect(&url).await?));
        } else {
            let (_, _, client) = held.swap_remove(rng.random_range(0..held.len()));
            if rng.random_bool(0.5) {
                client.close().await; // close handshake
            } else {
                drop(client); // TCP connection just dropped
            }
        }
    }
    Ok(held)
}

#[tokio::test(flavor = "multi_thread")]
async fn interleaved_connects_and_disconnects_leave_exactly_the_connected_users_subscribed(
) -> Result<()> {
    let redis = RedisServer::start().await?;
    let (a, b) = Gateway::two_on_redis(&redis, &[]).await?;
    let nodes = [&a, &b];
    const POOL: u64 = 40;
    const TASKS: u64 = 20;
    const OPS: usize = 25; // 20 tasks × 25 = 500 connects/disconnects

    let tasks: Vec<_> = (0..TASKS)
        .map(|seed| tokio::spawn(churn([a.ws_base(), b.ws_base()], POOL, OPS, seed)))
        .collect();
    let mut held: Held = Vec::new();
    for task in tasks {
        held.extend(task.await??);
    }

    // Who is still connected where.
    let mut on_node: [BTreeSet<u64>; 2] = Default::default();
    for (node, user, _) in &held {
        on_node[*node].insert(*user);
    }
    let connected: BTreeSet<u64> = on_node[0].union(&on_node[1]).copied().collect();
    ensure!(
        !connected.is_empty() && connected.len() < POOL as usize,
        "the churn should leave some, not all, users connected: {connected:?}"
    );
    let expected: BTreeSet<String> = connected.iter().flat_map(|&u| user_channels(u)).collect();

    // Unsubscribing follows a disconnect asynchronously: wait (bounded) for Redis to agree.
    eventually(
        SETTLE,
        "PUBSUB CHANNELS = connected users' channels",
        || async {
            let got = user_channels_subscribed(&redis).await?;
            if got != expected {
                let leaked: Vec<_> = got.difference(&expected).collect();
                let missing: Vec<_> = expected.difference(&got).collect();
                bail!("leaked subscriptions {leaked:?}, missing subscriptions {missing:?}");
            }
            Ok(())
        },
    )
    .await?;
    // Per node, not just overall: each channel has one subscriber per node holding its user
    // (waited for too: a channel both nodes held may still be leaving one of them).
    let pool_channels: Vec<String> = (1..=POOL).flat_map(user_channels).collect();
    let want: BTreeMap<String, i64> = (1..=POOL)
        .flat_map(|u| {
            let n = on_node.iter().filter(|s| s.contains(&u)).count() as i64;
            user_channels(u).map(|c| (c, n))
        })
        .collect();
    eventually(SETTLE, "PUBSUB NUMSUB per channel", || async {
        let got: BTreeMap<String, i64> =
            numsub(&redis, &pool_channels).await?.into_iter().collect();
        ensure!(
            got == want,
            "PUBSUB NUMSUB per channel:\n got  {got:?}\n want {want:?}"
        );
        Ok(())
    })
    .await?;
    let probes = probe_channels_subscribed(&redis).await?;
    ensure!(probes.len() == 2, "probe channels: {probes:?}");
    for (node, gw) in nodes.iter().enumerate() {
        channels_gauge_reaches(gw, (3 * on_node[node].len() + 1) as f64).await?;
    }

    // Every client still connected still receives.
    let users: Vec<u64> = connected.iter().copied().collect();
    a.publish(&users, EVENT).await?;
    futures_util::future::try_join_all(held.iter_mut().map(|(node, user, client)| async move {
        let frame = client
            .next_text()
            .await
            .with_context(|| format!("client of user {user} on node {node}"))?;
        ensure_same_event(&frame, EVENT)
    }))
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn broker_metrics_count_channels_messages_and_probe_round_trips() -> Result<()> {
    let redis = RedisServer::start().await?;
    let gw = Gateway::on_redis(&redis, &[]).await?;

    // Ready means a probe came back: its round trip was measured.
    let rtt = gw
        .metric("gleepost_gateway_broker_probe_rtt_seconds_count")
        .await?;
    ensure!(rtt > 0.0, "no probe round trip recorded while ready");
    channels_gauge_reaches(&gw, 1.0).await?; // the probe channel alone

    // Users 9 (twice), 10 and 11: 3 users × 3 channels + the probe channel.
    let mut clients: HashMap<&str, Client> = HashMap::new();
    for (name, user) in [("9a", 9), ("9b", 9), ("10", 10), ("11", 11)] {
        clients.insert(name, gw.connect(user).await?);
    }
    channels_gauge_reaches(&gw, 10.0).await?;

    let received = "gleepost_gateway_broker_messages_received_total";
    let before = gw.metric(received).await?;
    redis.publish("c:10", EVENT.as_bytes()).await?;
    let frame = clients
        .get_mut("10")
        .context("client 10")?
        .next_text()
        .await?;
    ensure!(frame == EVENT, "unexpected frame {frame}");
    let after = gw.metric(received).await?;
    ensure!(
        after > before,
        "{received} did not move: {before} → {after}"
    );

    // One of user 9's two connections leaving keeps its channels; user 11 leaving drops them.
    for name in ["9a", "11"] {
        clients.remove(name).context(name)?.close().await;
    }
    channels_gauge_reaches(&gw, 7.0).await?;
    for (_, client) in clients.drain() {
        client.close().await;
    }
    channels_gauge_reaches(&gw, 1.0).await?;
    ensure!(
        user_channels_subscribed(&redis).await?.is_empty(),
        "channels left subscribed after every client left"
    );
    Ok(())
}
