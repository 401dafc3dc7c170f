//! One primary of a Redis Cluster away (paused, dead without a replica): the node's link to it
//! fails alone. Its users' deliveries wait for it and are repaired when it is back; the users
//! of the other primaries go on receiving on the same links, never reconnected meanwhile.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use gleepost_tests::cluster::ClusterNode;
use gleepost_tests::resume::{publish_seq, seq_event, SeqCheck};
use gleepost_tests::{eventually, Gateway, RedisCluster};

const READY: Duration = Duration::from_secs(30);

/// The gateway's pub/sub link ids on each of `nodes`.
async fn link_ids(nodes: &[ClusterNode]) -> Result<Vec<Vec<u64>>> {
    let mut ids = Vec::with_capacity(nodes.len());
    for node in nodes {
        ids.push(node.gateway_link_ids().await?);
    }
    Ok(ids)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_primary_without_a_replica_stops_only_its_own_users_deliveries() -> Result<()> {
    // With `cluster-require-full-coverage no` the rest of a cluster goes on serving while a
    // primary without a replica is down. Before, the node's one subscriber session over all
    // links failed on the dead one and could not reopen it: nobody got any event until the
    // primary was back.
    let mut cluster = RedisCluster::start(3, 0).await?;
    for node in cluster.nodes() {
        let set = ["CONFIG", "SET", "cluster-require-full-coverage", "no"];
        node.cmd::<String>(&set).await?;
    }
    let gw = Gateway::on_cluster(&cluster, &[]).await?;
    let users = cluster.users_on_every_shard(1).await?;
    let lost = users[0];
    let dead = cluster.owner_of_user(lost).await?;
    let others = cluster.users_elsewhere(&users, &dead).await?;
    ensure!(others.len() == 2, "users elsewhere: {others:?}");
    let mut survivors = Vec::new();
    for &user in &others {
        survivors.push(cluster.owner_of_user(user).await?);
    }
    let mut lost_client = gw.connect(lost).await?;
    let mut clients = Vec::new();
    for &user in &others {
        clients.push((
            user,
            gw.connect(user).await?,
            SeqCheck::new(format!("user {user}"), 1),
        ));
    }
    let links_before = link_ids(&survivors).await?;
    let gauge = "gleepost_gateway_broker_subscribed_channels";
    let channels = gw.metric(gauge).await?;

    cluster.kill(&dead).await?;
    gw.wait_ready(false, READY)
        .await
        .context("unready while a primary is down (its users get nothing)")?;
    // Its user's channels and its probe channel are no longer subscribed (each of the three
    // links holds one user: a third of the channels).
    eventually(READY, "the dead link's channels uncounted", || async {
        let now = gw.metric(gauge).await?;
        ensure!(
            now == channels * 2.0 / 3.0,
            "{now} channels, {channels} before"
        );
        Ok(())
    })
    .await?;
    // The first publish may find the command connection still learning that the node died.
    let (first_user, ..) = clients[0];
    eventually(READY, "a publish to a live primary's user", || async {
        publish_seq(&gw, first_user, 1).await.map(drop)
    })
    .await?;
    for &user in &others[1..] {
        publish_seq(&gw, user, 1).await?;
    }
    for seq in 2..=5 {
        for &user in &others {
            publish_seq(&gw, user, seq).await?;
        }
    }
    for (_, client, check) in &mut clients {
        check.read_until(client, 5).await?;
    }
    let body = format!(r#"{{"users":[{lost}],"event":{}}}"#, seq_event(1, 0));
    let res = gw.publish_raw(&body).await?;
    ensure!(
        res.status == 503,
        "publish to the dead primary's user: {} {}",
        res.status,
        res.body_text()
    );
    ensure!(
        link_ids(&survivors).await? == links_before,
        "the links to the live primaries were reconnected while one primary was down"
    );

    let dead = cluster.restart(&dead).await?;
    gw.wait_ready(true, READY)
        .await
        .context("ready again once the primary is back")?;
    ensure!(
        !dead.gateway_link_ids().await?.is_empty(),
        "no link to the restarted primary"
    );
    eventually(
        READY,
        "a publish to the restarted primary's user",
        || async { publish_seq(&gw, lost, 1).await.map(drop) },
    )
    .await?;
    SeqCheck::new("the restarted primary's user", 1)
        .read_until(&mut lost_client, 1)
        .await?;
    for (user, client, check) in &mut clients {
        publish_seq(&gw, *user, 6).await?;
        check.read_until(client, 6).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paused_primary_reconnects_only_its_own_link() -> Result<()> {
    // A primary that takes no writes (`CLIENT PAUSE … WRITE`) stops sending the probe back on
    // its link. Only that link is given up and reopened: before, the lost probe ended the
    // session of every link, every probe timeout, for as long as the pause lasted.
    let cluster = RedisCluster::start(3, 0).await?;
    let gw = Gateway::on_cluster(&cluster, &[]).await?;
    let users = cluster.users_on_every_shard(1).await?;
    let paused = cluster.owner_of_user(users[0]).await?;
    let others = cluster.users_elsewhere(&users, &paused).await?;
    let mut survivors = Vec::new();
    for &user in &others {
        survivors.push(cluster.owner_of_user(user).await?);
    }
    let mut clients = Vec::new();
    for &user in &others {
        clients.push((
            user,
            gw.connect(user).await?,
            SeqCheck::new(format!("user {user}"), 1),
        ));
    }
    let links_before = link_ids(&survivors).await?;
    let reconnects = "gleepost_gateway_broker_reconnects_total";
    let before = gw.metric(reconnects).await?;

    // Paused for longer than two probe timeouts (3 s each).
    paused
        .cmd::<String>(&["CLIENT", "PAUSE", "9000", "WRITE"])
        .await?;
    gw.wait_ready(false, READY)
        .await
        .context("unready while a primary's probe does not come back")?;
    eventually(READY, "the paused link given up twice", || async {
        let after = gw.metric(reconnects).await?;
        ensure!(after >= before + 2.0, "{} link reconnects", after - before);
        Ok(())
    })
    .await?;
    for (user, client, check) in &mut clients {
        publish_seq(&gw, *user, 1).await?;
        check.read_until(client, 1).await?;
    }
    ensure!(
        link_ids(&survivors).await? == links_before,
        "the links to the other primaries were reconnected while one was paused"
    );
    paused.cmd::<String>(&["CLIENT", "UNPAUSE"]).await?;
    gw.wait_ready(true, READY)
        .await
        .context("ready again after the pause")?;
    for (user, client, check) in &mut clients {
        publish_seq(&gw, *user, 2).await?;
        check.read_until(client, 2).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slot_without_an_owner_leaves_only_its_users_waiting() -> Result<()> {
    // A slot that no primary owns (deleted with `CLUSTER DELSLOTS`, with
    // `cluster-require-full-coverage no` for the rest to go on): its users cannot be
    // subscribed anywhere and wait; the other users are served. Before, the node's session
    // failed on such a user each time it (re)started: nobody was served.
    let cluster = RedisCluster::start(3, 0).await?;
    for node in cluster.nodes() {
        let set = ["CONFIG", "SET", "cluster-require-full-coverage", "no"];
        node.cmd::<String>(&set).await?;
    }
    let gw = Gateway::on_cluster(&cluster, &[]).await?;
    let users = cluster.users_on_every_shard(1).await?;
    let orphan = users[0];
    let slot = gleepost_tests::cluster::slot_of(&format!("gp:user:{{{orphan}}}")).to_string();
    let mut clients = Vec::new();
    for &user in &users[1..] {
        clients.push((
            user,
            gw.connect(user).await?,
            SeqCheck::new(format!("user {user}"), 1),
        ));
    }
    let _orphan_client = gw.connect(orphan).await?;
    let reconnects = "gleepost_gateway_broker_reconnects_total";
    let before = gw.metric(reconnects).await?;
    for node in cluster.nodes() {
        node.cmd::<String>(&["CLUSTER", "DELSLOTS", &slot]).await?;
    }
    // The node notices the new slot map (checked every 5 probe intervals) and restarts its
    // links: the orphan's user waits, and the node says so.
    eventually(READY, "the links restarted on the new slot map", || async {
        ensure!(gw.metric(reconnects).await? > before);
        Ok(())
    })
    .await?;
    gw.wait_ready(false, READY)
        .await
        .context("unready while a wanted user's slot has no owner")?;
    for (user, client, check) in &mut clients {
        eventually(READY, &format!("a publish to user {user}"), || async {
            publish_seq(&gw, *user, 1).await.map(drop)
        })
        .await?;
        check.read_until(client, 1).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_history_read_on_one_primary_does_not_hold_up_the_others_after_a_restart(
) -> Result<()> {
    // Every link restarts (Redis closed them all); the gap repair of one primary's users
    // cannot read their history (the primary takes no scripts: `CLIENT PAUSE … WRITE`). The
    // other primaries' users must get their events meanwhile: before, the one repair over
    // all users held every link's messages until that read gave up (5 × the Redis timeout:
    // 50 s here, against the 20 s this test waits).
    let cluster = RedisCluster::start(3, 0).await?;
    let gw = Gateway::on_cluster(&cluster, &["--redis-timeout", "10s"]).await?;
    let users = cluster.users_on_every_shard(1).await?;
    let stalled = users[0];
    let paused = cluster.owner_of_user(stalled).await?;
    let other = *cluster
        .users_elsewhere(&users, &paused)
        .await?
        .first()
        .context("no user on another primary")?;
    let _stalled_client = gw.connect(stalled).await?;
    let mut client = gw.connect(other).await?;
    let mut check = SeqCheck::new("the other user", 1);
    publish_seq(&gw, stalled, 1).await?;
    publish_seq(&gw, other, 1).await?;
    check.read_until(&mut client, 1).await?;

    let reconnects = "gleepost_gateway_broker_reconnects_total";
    let before = gw.metric(reconnects).await?;
    paused
        .cmd::<String>(&["CLIENT", "PAUSE", "120000", "WRITE"])
        .await?;
    for node in cluster.primaries().await? {
        node.cmd::<i64>(&["CLIENT", "KILL", "TYPE", "pubsub"])
            .await?;
    }
    eventually(READY, "every link restarted", || async {
        ensure!(gw.metric(reconnects).await? > before);
        Ok(())
    })
    .await?;
    publish_seq(&gw, other, 2).await?;
    let text = client
        .next_text_within(Duration::from_secs(20))
        .await
        .context("the other user's event while the paused primary's repair waits")?;
    check.accept(&text)?;
    paused.cmd::<String>(&["CLIENT", "UNPAUSE"]).await?;
    gw.wait_ready(true, READY).await?;
    Ok(())
}
