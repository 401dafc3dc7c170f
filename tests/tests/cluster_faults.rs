//! Cluster changes while events flow (issue 10): a slot holding connected users migrates to
//! another primary (0 lost, 0 duplicated, clients stay connected), and a primary is SIGKILLed:
//! with `--publish-replicas 1` every acknowledged event is delivered after the failover, with 0
//! every acknowledged event is delivered or the client gets `resync`.
//! Each client checks its numbered events: each exactly once, in order.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use gleepost_event::{Event, Publisher};
use gleepost_tests::cluster::slot_of;
use gleepost_tests::metrics::probes_come_back;
use gleepost_tests::resume::{parse_frame, seq_event, Frame, SeqCheck};
use gleepost_tests::{Client, Gateway, RedisCluster};
use tokio::sync::oneshot;

const READY: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread")]
async fn a_slot_of_connected_users_migrates_while_publishing_without_loss_or_duplicates(
) -> Result<()> {
    const TOTAL: u64 = 400;
    let cluster = RedisCluster::start(3, 1).await?;
    let users = cluster.users_on_every_shard(1).await?;
    let moving = users[0];
    let slot = slot_of(&format!("gp:user:{{{moving}}}"));
    let owner = cluster.owner_of_slot(slot).await?;
    let target = cluster.other_primary(&owner).await?;
    let (a, b) = (
        Gateway::on_cluster(&cluster, &[]).await?,
        Gateway::on_cluster(&cluster, &[]).await?,
    );
    let mut clients: Vec<(String, Client, SeqCheck)> = Vec::new();
    for &user in &users {
        for (name, gw) in [("a", &a), ("b", &b)] {
            let who = format!("user {user} on {name}");
            clients.push((who.clone(), gw.connect(user).await?, SeqCheck::new(who, 1)));
        }
    }

    let publisher = Publisher::connect_cluster(&cluster.seed_urls()).await?;
    let (halfway_tx, halfway) = oneshot::channel();
    let publishing = {
        let users = users.clone();
        tokio::spawn(async move {
            let mut halfway_tx = Some(halfway_tx);
            for seq in 1..=TOTAL {
                let event = Event::from_json(seq_event(seq, 0).as_bytes())?;
                publisher
                    .publish(&users, &event)
                    .await
                    .with_context(|| format!("publishing seq {seq}"))?;
                if seq == TOTAL / 4 {
                    if let Some(tx) = halfway_tx.take() {
                        let _ = tx.send(());
                    }
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            anyhow::Ok(())
        })
    };
    halfway.await.context("publisher ended early")?;
    let moved = cluster.migrate_slot(slot, &target).await?;
    ensure!(
        moved >= 2,
        "the slot's history keys were not migrated ({moved} keys)"
    );
    publishing.await??;

    for (_, client, check) in &mut clients {
        check.read_until(client, TOTAL).await?;
        client.expect_silence(Duration::from_millis(200)).await?;
    }
    ensure!(
        cluster.owner_of_slot(slot).await? == target,
        "slot did not move"
    );
    for gw in [&a, &b] {
        ensure!(
            gw.metric("gleepost_gateway_connections").await? == clients.len() as f64 / 2.0,
            "clients were disconnected"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn with_publish_replicas_1_every_acknowledged_event_survives_a_primary_failover() -> Result<()>
{
    failover(1).await
}

#[tokio::test(flavor = "multi_thread")]
async fn with_publish_replicas_0_a_failover_loses_nothing_silently() -> Result<()> {
    failover(0).await
}

/// SIGKILL the primary of a connected user's slot while publishing through the API with
/// `--publish-replicas <replicas>`: every acknowledged event is delivered, or (only without
/// replica acknowledgements) the client is told with `resync`.
async fn failover(replicas: u32) -> Result<()> {
    const TOTAL: u64 = 300;
    let mut cluster = RedisCluster::start(3, 1).await?;
    let users = cluster.users_on_every_shard(1).await?;
    let victim_user = users[0];
    let slot = slot_of(&format!("gp:user:{{{victim_user}}}"));
    let victim = cluster.owner_of_slot(slot).await?;
    let replicas_arg = replicas.to_string();
    let gw = Gateway::on_cluster(
        &cluster,
        &[
            "--publish-replicas",
            &replicas_arg,
            "--redis-timeout",
            "500ms",
        ],
    )
    .await?;
    let mut client = gw.connect(victim_user).await?;

    let mut acked = BTreeSet::new();
    let mut unready_seen = false;
    for seq in 1..=TOTAL {
        if seq == TOTAL / 3 {
            cluster.kill_primary(&victim).await?;
        }
        let res = gw
            .publish_raw(&format!(
                r#"{{"users":[{victim_user}],"event":{}}}"#,
                seq_event(seq, 0)
            ))
            .await
            .with_context(|| format!("publish {seq}: no answer (the request's own 10 s bound)"))?;
        // While a slot has no usable owner: 503, never a 500 or a hang.
        ensure!(
            res.status == 200 || res.status == 503,
            "publish {seq} answered {} during the failover",
            res.status
        );
        if res.status == 200 {
            acked.insert(seq);
        }
        if seq > TOTAL / 3 && !unready_seen {
            unready_seen = !gw.is_ready().await;
        }
        if seq == TOTAL / 3 + 1 {
            // The promoted replica has no replica of its own until the old primary rejoins
            // (meanwhile, with --publish-replicas 1, every publish is refused: WAIT 1 cannot
            // be met).
            cluster.wait_failover(&victim).await?;
            cluster.restart(&victim).await?;
            cluster.wait_settled().await?;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    ensure!(
        unready_seen,
        "readiness never went false during the failover"
    );
    gw.wait_ready(true, READY)
        .await
        .context("ready again after the failover")?;
    ensure!(
        acked.contains(&TOTAL),
        "the last publish was not acknowledged"
    );

    // Every acknowledged event arrives, in order, once (unacknowledged ones may arrive too).
    let (mut got, mut resynced) = (Vec::new(), false);
    while got.last() != Some(&TOTAL) {
        let text = client.next_text().await.context("waiting for events")?;
        match parse_frame(&text)? {
            Frame::Event { seq, .. } => got.push(seq),
            Frame::Resync { .. } if replicas == 0 => resynced = true,
            other => anyhow::bail!("unexpected frame {other:?} after {got:?}"),
        }
    }
    ensure!(
        got.windows(2).all(|w| w[0] < w[1]),
        "out of order or duplicated: {got:?}"
    );
    let missing: Vec<_> = acked.iter().filter(|s| !got.contains(s)).collect();
    ensure!(
        missing.is_empty() || resynced,
        "acknowledged but not delivered, and no resync: {missing:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_event_to_an_idle_user_while_its_slot_migrates_is_repaired_after_the_move() -> Result<()>
{
    // While the slot migrates, the old owner ASKs commands on its moved keys to the new one:
    // the publish script runs there, and its SPUBLISH reaches only that node's subscribers, so
    // the gateway (subscribed on the old owner) misses the event. Probes on the old owner's
    // other slots keep coming back meanwhile. Once the slot has moved (sunsubscribe,
    // resubscribe, gap repair), a user that had received nothing yet must get the event:
    // before, its repair started from those probes' time, after the event: lost, silently.
    let cluster = RedisCluster::start(3, 0).await?;
    let gw = Gateway::on_cluster(&cluster, &[]).await?;
    let user = cluster.users_on_every_shard(1).await?[0];
    // The user's history exists before its client connects (the keys then move with the slot),
    // and probes came back since: its repair, if any, starts after that first event.
    gw.publish(&[user], &seq_event(1, 0)).await?;
    probes_come_back(&gw, 5).await?;
    let mut client = gw.connect(user).await?;
    let (migration, _) = cluster.begin_moving(user).await?;
    gw.publish(&[user], &seq_event(2, 0)).await?;
    probes_come_back(&gw, 5).await?;
    migration.finish().await?;
    SeqCheck::new("the idle user", 2)
        .read_until(&mut client, 2)
        .await
}

#[tokio::test(flavor = "multi_thread")]
async fn with_publish_replicas_a_publish_redirected_by_a_migration_waits_on_the_node_that_took_it(
) -> Result<()> {
    // A user's keys have moved to the importing node of a migration that is not finished: its
    // publishes run there (ASK), not on the slot's owner. `--publish-replicas 1` must then count
    // the replicas of the node that took the write: before, `WAIT` went to the owner by the slot
    // map, whose replica acknowledged at once, and the API answered 200 for an event that no
    // replica had (here the importing node has none left).
    let cluster = RedisCluster::start(3, 1).await?;
    let gw = Gateway::on_cluster(&cluster, &["--publish-replicas", "1"]).await?;
    let user = cluster.users_on_every_shard(1).await?[0];
    gw.publish(&[user], &seq_event(1, 0)).await?;
    let (migration, owner) = cluster.begin_moving(user).await?;
    // The importing node: begin_moving moves the keys to the first primary but the owner.
    let target = cluster.other_primary(&owner).await?;
    for replica in cluster.replicas_of(&target).await? {
        cluster.kill(&replica).await?;
    }
    let res = gw
        .publish_raw(&format!(
            r#"{{"users":[{user}],"event":{}}}"#,
            seq_event(2, 0)
        ))
        .await?;
    ensure!(
        res.status == 503,
        "a publish no replica has was answered {} {}",
        res.status,
        res.body_text()
    );
    migration.finish().await?;
    Ok(())
}
