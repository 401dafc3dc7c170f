//! The Redis Cluster harness itself (issue 10): real `redis-server --cluster-enabled yes`
//! processes form a cluster with replicas, our key slots are Redis's, a slot moves online with
//! its keys while it is written to, a killed primary fails over (and comes back as a replica),
//! and sharded pub/sub behaves as the gateway must expect: `SPUBLISH` reaches `SSUBSCRIBE`rs on
//! the owner, and a slot move pushes an unsolicited `sunsubscribe`.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use gleepost_tests::cluster::{slot_of, ShardPush, ShardSubscriber, SLOTS};
use gleepost_tests::{eventually, RedisCluster};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const PUSH: Duration = Duration::from_secs(10);

/// A primary other than `than`.
async fn other_primary(
    cluster: &RedisCluster,
    than: &gleepost_tests::cluster::ClusterNode,
) -> Result<gleepost_tests::cluster::ClusterNode> {
    cluster
        .primaries()
        .await?
        .into_iter()
        .find(|p| p != than)
        .context("no other primary")
}

#[tokio::test]
async fn three_primaries_with_a_replica_each_form_a_healthy_cluster() -> Result<()> {
    let started = Instant::now();
    let cluster = RedisCluster::start(3, 1).await?;
    eprintln!("3 + 3 cluster formed in {:?}", started.elapsed());

    let primaries = cluster.primaries().await?;
    ensure!(primaries.len() == 3, "{} primaries", primaries.len());
    let seeds = cluster.seed_urls();
    let expected: Vec<String> = primaries.iter().map(|p| p.url()).collect();
    ensure!(seeds == expected, "seeds {seeds:?}, primaries {expected:?}");
    ensure!(cluster.urls_csv() == seeds.join(","));
    let mut replicas = HashSet::new();
    for primary in &primaries {
        ensure!(
            primary.port() <= 55535,
            "port {} leaves no bus port",
            primary.port()
        );
        let of = cluster.replicas_of(primary).await?;
        ensure!(
            of.len() == 1,
            "primary :{} has {} replicas",
            primary.port(),
            of.len()
        );
        let replication: String = of[0].cmd(&["INFO", "replication"]).await?;
        ensure!(
            replication.contains("role:slave\r"),
            ":{} {replication}",
            of[0].port()
        );
        replicas.extend(of);
    }
    ensure!(replicas.len() == 3, "replicas shared between primaries");
    for node in cluster.nodes() {
        let info: String = node.cmd(&["CLUSTER", "INFO"]).await?;
        ensure!(
            info.contains("cluster_state:ok\r"),
            ":{} {info}",
            node.port()
        );
        ensure!(
            info.contains("cluster_slots_assigned:16384\r"),
            ":{} {info}",
            node.port()
        );
        ensure!(
            info.contains("cluster_known_nodes:6\r"),
            ":{} {info}",
            node.port()
        );
    }

    // Users spread over the shards: 4 per primary, in primaries() order.
    let users = cluster.users_on_every_shard(4).await?;
    ensure!(users.len() == 12, "{users:?}");
    for (i, user) in users.iter().enumerate() {
        let owner = cluster
            .owner_of_slot(slot_of(&format!("gp:user:{{{user}}}")))
            .await?;
        ensure!(
            owner == primaries[i / 4],
            "user {user} is not on shard {}",
            i / 4
        );
        let hist = cluster
            .owner_of_slot(slot_of(&format!("gp:hist:{{{user}}}")))
            .await?;
        ensure!(hist == owner, "history of user {user} on another shard");
    }
    Ok(())
}

#[tokio::test]
async fn slot_of_matches_cluster_keyslot() -> Result<()> {
    let cluster = RedisCluster::start(1, 0).await?;
    let node = cluster.nodes().remove(0);
    let mut conn = node.connection().await?;
    let mut keys: Vec<String> = [
        "gp:user:{9}",
        "gp:hist:{9}",
        "gp:user:{18446744073709551615}",
        "users:9:token:abc",
        "c:9",
        "n:2147",
        "123456789",
        "foo",
        "",
        "{}",
        "a{}b",
        "{}{a}",
        "{a}{b}",
        "}{a}",
        "{{a}}",
        "a{b",
        "é{ü}",
    ]
    .map(str::to_owned)
    .to_vec();
    let mut rng = StdRng::seed_from_u64(10);
    let alphabet = b"ab9:{}";
    keys.extend((0..300).map(|_| {
        let len = rng.random_range(0..10);
        (0..len)
            .map(|_| char::from(alphabet[rng.random_range(0..alphabet.len())]))
            .collect::<String>()
    }));
    let mut slots = HashSet::new();
    for key in &keys {
        let redis: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query_async(&mut conn)
            .await?;
        ensure!(
            slot_of(key) == redis,
            "{key:?}: ours {}, Redis {redis}",
            slot_of(key)
        );
        ensure!(redis < SLOTS);
        slots.insert(redis);
    }
    ensure!(slot_of("gp:user:{9}") == slot_of("gp:hist:{9}"));
    ensure!(
        slots.len() > 50,
        "only {} distinct slots checked",
        slots.len()
    );
    Ok(())
}

/// The migration test's keys, all in the slot of `gp:user:{9}`.
fn key(i: u64) -> String {
    format!("k:{{9}}:{i}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_migrates_with_all_its_keys_while_a_writer_keeps_writing() -> Result<()> {
    const PRELOADED: u64 = 5000;
    let cluster = Arc::new(RedisCluster::start(3, 1).await?);
    let slot = slot_of("gp:user:{9}");
    for chunk in (0..PRELOADED).collect::<Vec<_>>().chunks(1000) {
        let mut mset = redis::cmd("MSET");
        for i in chunk {
            mset.arg(key(*i)).arg(i);
        }
        cluster.query_routed::<()>("{9}", &mset).await?;
    }
    let from = cluster.owner_of_slot(slot).await?;
    let to = other_primary(&cluster, &from).await?;

    // The writer: new keys (ASKed to the target while the slot migrates) and an existing list
    // (served by the source until MIGRATE moves it), each write acknowledged before the next.
    let stop = Arc::new(AtomicBool::new(false));
    let migrating = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(PRELOADED));
    let during = Arc::new(AtomicU64::new(0));
    let writer = tokio::spawn({
        let (cluster, stop, migrating) = (cluster.clone(), stop.clone(), migrating.clone());
        let (acked, during) = (acked.clone(), during.clone());
        async move {
            let mut i = PRELOADED;
            while !stop.load(Ordering::SeqCst) {
                let value = i.to_string();
                cluster
                    .cmd_routed::<()>("{9}", &["SET", &key(i), &value])
                    .await?;
                cluster
                    .cmd_routed::<i64>("{9}", &["RPUSH", "log:{9}", &value])
                    .await?;
                i += 1;
                acked.store(i, Ordering::SeqCst);
                if migrating.load(Ordering::SeqCst) {
                    during.fetch_add(1, Ordering::SeqCst);
                }
            }
            anyhow::Ok(())
        }
    });
    let wait_writes = |n: u64| {
        let acked = acked.clone();
        async move {
            eventually(Duration::from_secs(30), "writes acknowledged", || async {
                ensure!(acked.load(Ordering::SeqCst) >= n, "writer stalled");
                Ok(())
            })
            .await
        }
    };
    wait_writes(PRELOADED + 20).await?;

    migrating.store(true, Ordering::SeqCst);
    let started = Instant::now();
    let moved = cluster.migrate_slot(slot, &to).await?;
    let took = started.elapsed();
    migrating.store(false, Ordering::SeqCst);
    let after = acked.load(Ordering::SeqCst);
    wait_writes(after + 20).await?;
    stop.store(true, Ordering::SeqCst);
    writer.await??;
    let written = acked.load(Ordering::SeqCst);
    let during = during.load(Ordering::SeqCst);
    eprintln!(
        "slot {slot}: {moved} keys migrated in {took:?}; {during} writes during it, {written} keys"
    );

    ensure!(moved as u64 >= PRELOADED, "only {moved} keys migrated");
    ensure!(during > 0, "no write happened while the slot migrated");
    ensure!(
        cluster.owner_of_slot(slot).await? == to,
        "slot not at the target"
    );
    let count = |node: gleepost_tests::cluster::ClusterNode| async move {
        node.cmd::<u64>(&["CLUSTER", "COUNTKEYSINSLOT", &slot.to_string()])
            .await
    };
    ensure!(count(from.clone()).await? == 0, "keys left at the source");
    let at_target = count(to.clone()).await?;
    ensure!(
        at_target == written + 1,
        "{at_target} keys at the target, {written} + 1 written"
    );
    // Every key, read at the target itself (no redirection), and the list in order.
    let mut conn = to.connection().await?;
    for chunk in (0..written).collect::<Vec<_>>().chunks(1000) {
        let keys: Vec<String> = chunk.iter().map(|&i| key(i)).collect();
        let values: Vec<Option<u64>> = redis::cmd("MGET").arg(&keys).query_async(&mut conn).await?;
        for (i, value) in chunk.iter().zip(values) {
            ensure!(value == Some(*i), "{} = {value:?}", key(*i));
        }
    }
    let log: Vec<u64> = to.cmd(&["LRANGE", "log:{9}", "0", "-1"]).await?;
    let expected: Vec<u64> = (PRELOADED..written).collect();
    ensure!(
        log == expected,
        "list lost or duplicated writes ({} of {})",
        log.len(),
        expected.len()
    );
    Ok(())
}

#[tokio::test]
async fn a_killed_primary_fails_over_to_its_replica_and_returns_as_a_replica() -> Result<()> {
    let mut cluster = RedisCluster::start(3, 1).await?;
    let key = "gp:hist:{9}";
    let old = cluster.owner_of_slot(slot_of(key)).await?;
    let replica = cluster.replicas_of(&old).await?.remove(0);
    cluster.cmd_routed::<()>(key, &["SET", key, "kept"]).await?;
    let acked: i64 = cluster.cmd_routed(key, &["WAIT", "1", "5000"]).await?;
    ensure!(acked == 1, "write on {acked} replicas");

    let started = Instant::now();
    cluster.kill_primary(&old).await?;
    let promoted = cluster.wait_failover(&old).await?;
    eprintln!("failover after SIGKILL took {:?}", started.elapsed());
    ensure!(
        promoted == replica,
        "promoted :{}, not the replica :{}",
        promoted.port(),
        replica.port()
    );
    let primaries = cluster.primaries().await?;
    ensure!(primaries.len() == 3 && primaries.contains(&promoted) && !primaries.contains(&old));
    ensure!(cluster.owner_of_slot(slot_of(key)).await? == promoted);
    let value: String = cluster.cmd_routed(key, &["GET", key]).await?;
    ensure!(value == "kept", "GET after failover: {value}");
    for node in cluster.nodes().iter().filter(|n| n.pid().is_some()) {
        let info: String = node.cmd(&["CLUSTER", "INFO"]).await?;
        ensure!(
            info.contains("cluster_state:ok\r"),
            ":{} not ok",
            node.port()
        );
    }

    let back = cluster.restart(&old).await?;
    ensure!(back == old && back.pid().is_some() && back.pid() != old.pid());
    let replicas = cluster.replicas_of(&promoted).await?;
    ensure!(
        replicas == vec![back.clone()],
        "old primary not a replica of its successor"
    );
    ensure!(
        cluster.kill_primary(&back).await.is_err(),
        "a replica killed as a primary"
    );
    Ok(())
}

#[tokio::test]
async fn ssubscribe_gets_spublish_and_a_sunsubscribe_push_when_the_slot_moves() -> Result<()> {
    let cluster = RedisCluster::start(3, 1).await?;
    let channel = "gp:user:{9}";
    let slot = slot_of(channel);
    let owner = cluster.owner_of_slot(slot).await?;
    let mut subscriber = ShardSubscriber::connect(&owner, &[channel]).await?;
    ensure!(
        cluster.spublish(channel, b"before").await? == 1,
        "no receiver"
    );
    let push = subscriber.next(PUSH).await?;
    let message = ShardPush::Message {
        channel: channel.to_owned(),
        payload: b"before".to_vec(),
    };
    ensure!(push == message, "{push:?}");
    // Sharded: another shard's channel has no receiver, and a non-owner refuses the channel.
    let elsewhere = cluster.users_on_every_shard(1).await?;
    let other_channel = elsewhere
        .iter()
        .map(|u| format!("gp:user:{{{u}}}"))
        .find(|c| slot_of(c) != slot)
        .context("no user on another shard")?;
    ensure!(cluster.spublish(&other_channel, b"x").await? == 0);
    let to = other_primary(&cluster, &owner).await?;
    let refused = ShardSubscriber::connect(&to, &[channel]).await;
    ensure!(
        format!(
            "{:#}",
            refused.as_ref().err().context("non-owner accepted")?
        )
        .contains("MOVED"),
        "{:?}",
        refused.err()
    );

    cluster.migrate_slot(slot, &to).await?;
    let push = subscriber.next(PUSH).await?;
    let unsubscribed = ShardPush::Unsubscribed {
        channel: channel.to_owned(),
        remaining: 0,
    };
    ensure!(push == unsubscribed, "after the slot moved: {push:?}");

    let mut again = ShardSubscriber::connect(&to, &[channel]).await?;
    ensure!(
        cluster.spublish(channel, b"after").await? == 1,
        "no receiver at the new owner"
    );
    let push = again.next(PUSH).await?;
    let message = ShardPush::Message {
        channel: channel.to_owned(),
        payload: b"after".to_vec(),
    };
    ensure!(push == message, "{push:?}");
    Ok(())
}
