//! Cluster mode (issue 10): gateway nodes on a Redis Cluster of real `redis-server
//! --cluster-enabled yes` processes (3 primaries + 3 replicas). Users on every shard receive
//! every event once and in order through either node's API, the Rust `Publisher` and the
//! `publish` subcommand (sharded pub/sub), legacy `PUBLISH c:<id>` on any primary is delivered,
//! and each node's Redis connections stay constant as clients grow.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use gleepost_event::{Event, Publisher};
use gleepost_tests::eventually;
use gleepost_tests::resume::{expect_seq, seq_event};
use gleepost_tests::sockets::tcp_ports_to;
use gleepost_tests::subcommands::publish_subcommand;
use gleepost_tests::{Client, Gateway, RedisCluster};

const READY: Duration = Duration::from_secs(30);

/// TCP connections from gateway `gw` to any node of the cluster.
fn redis_connections(gw: &Gateway, cluster: &RedisCluster) -> Result<usize> {
    let mut total = 0;
    for node in cluster.nodes() {
        total += tcp_ports_to(gw.pid(), node.port())?.len();
    }
    Ok(total)
}

#[tokio::test(flavor = "multi_thread")]
async fn users_on_every_shard_get_every_event_once_in_order_from_every_publisher() -> Result<()> {
    let cluster = RedisCluster::start(3, 1).await?;
    let users = cluster.users_on_every_shard(2).await?;
    let (a, b) = (
        Gateway::on_cluster(&cluster, &[]).await?,
        Gateway::on_cluster(&cluster, &[]).await?,
    );
    let mut clients: Vec<(u64, Client)> = Vec::new();
    for &user in &users {
        clients.push((user, a.connect(user).await?));
        clients.push((user, b.connect(user).await?));
    }

    // 1: node A's API; 2: node B's API (history on: ids).
    a.publish(&users, &seq_event(1, 0)).await?;
    b.publish(&users, &seq_event(2, 0)).await?;
    // 3: the Rust Publisher on the cluster.
    let publisher = Publisher::connect_cluster(&cluster.seed_urls()).await?;
    let report = publisher
        .publish(&users, &Event::from_json(seq_event(3, 0).as_bytes())?)
        .await?;
    ensure!(
        report.ids.len() == users.len(),
        "Publisher returned no ids: {report:?}"
    );
    ensure!(
        report.receivers == 2 * users.len() as u64,
        "each user's event reached {} subscriptions, expected 2 per user",
        report.receivers
    );
    // 4: the operators' subcommand.
    let seeds = cluster.urls_csv();
    publish_subcommand(&[("REDIS_CLUSTER_URLS", &seeds)], &users, &seq_event(4, 0)).await?;
    // 5: legacy classic PUBLISH c:<id>, each sent to a different primary (cluster-wide).
    let primaries = cluster.primaries().await?;
    for (i, &user) in users.iter().enumerate() {
        let primary = &primaries[i % primaries.len()];
        let channel = format!("c:{user}");
        let _: i64 = primary
            .cmd(&["PUBLISH", &channel, &seq_event(5, 0)])
            .await?;
    }

    for (user, client) in &mut clients {
        for seq in 1..=4 {
            expect_seq(client, seq, true)
                .await
                .with_context(|| format!("user {user}"))?;
        }
        expect_seq(client, 5, false)
            .await
            .with_context(|| format!("user {user} legacy"))?;
        client.expect_silence(Duration::from_millis(200)).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_connections_per_node_stay_constant_from_10_to_1000_clients() -> Result<()> {
    let cluster = RedisCluster::start(3, 1).await?;
    let gw = Gateway::on_cluster(&cluster, &[]).await?;
    let mut clients = Vec::new();
    for user in 1..=10u64 {
        clients.push(gw.connect(user).await?);
    }
    let at_10 = redis_connections(&gw, &cluster)?;
    for user in 11..=1000u64 {
        clients.push(gw.connect(user).await?);
    }
    eventually(READY, "1,000 clients registered", || async {
        let open = gw.metric("gleepost_gateway_connections").await?;
        ensure!(open == 1000.0, "{open} open");
        Ok(())
    })
    .await?;
    let at_1000 = redis_connections(&gw, &cluster)?;
    ensure!(
        at_10 == at_1000,
        "Redis connections grew with clients: {at_10} at 10, {at_1000} at 1,000"
    );
    // One pub/sub connection per primary and the cluster command connection(s), all named
    // (CLIENT SETNAME gleepost-gateway-<node>-sub<i> / -cmd).
    eventually(
        READY,
        "one named pub/sub and command connection per primary",
        || async {
            let mut named: HashMap<u16, (usize, usize)> = HashMap::new();
            for primary in cluster.primaries().await? {
                let list: String = primary.cmd(&["CLIENT", "LIST"]).await?;
                let has = |part: &str| {
                    list.lines()
                        .filter(|l| l.contains(" name=gleepost-gateway-") && l.contains(part))
                        .count()
                };
                named.insert(primary.port(), (has("-sub"), has("-cmd ")));
            }
            ensure!(
                named.values().all(|&(sub, cmd)| sub == 1 && cmd >= 1),
                "per primary (pub/sub, command) named connections: {named:?}"
            );
            Ok(())
        },
    )
    .await?;
    ensure!(
        at_1000 <= 3 * 3,
        "{at_1000} Redis connections for 3 primaries + 3 replicas"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn gleepost_tokens_and_resume_work_on_a_cluster() -> Result<()> {
    let cluster = RedisCluster::start(3, 1).await?;
    let users = cluster.users_on_every_shard(1).await?;
    let gw = Gateway::on_cluster(&cluster, &[]).await?;
    for &user in &users {
        // The login service's token key, on its own slot's owner.
        let key = format!("users:{user}:token:tok{user}");
        let _: String = cluster.cmd_routed(&key, &["SET", &key, "1"]).await?;
        let url = gleepost_tests::credentials::gleepost_url(&gw, user, &format!("tok{user}"));
        let mut client = Client::connect(&url)
            .await
            .with_context(|| format!("user {user}"))?;
        let first = gleepost_tests::resume::publish_seq(&gw, user, 1).await?;
        expect_seq(&mut client, 1, true).await?;
        client.close().await;
        for seq in 2..=3 {
            gleepost_tests::resume::publish_seq(&gw, user, seq).await?;
        }
        // Resume after the first event: the history on the user's shard replays 2 and 3.
        let mut resumed = gleepost_tests::resume::connect_since(&gw, user, &first).await?;
        expect_seq(&mut resumed, 2, true).await?;
        expect_seq(&mut resumed, 3, true).await?;
    }
    // A token whose key does not exist is refused.
    let bad = gleepost_tests::credentials::gleepost_url(&gw, users[0], "nope");
    ensure!(
        Client::connect(&bad).await.is_err(),
        "unknown token admitted"
    );
    Ok(())
}
