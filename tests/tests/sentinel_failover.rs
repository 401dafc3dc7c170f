//! Redis Sentinel (issue 11): two gateway nodes on a primary + replica + 3 sentinels, clients
//! of 10 users on both. The primary is SIGKILLed while events are published through the API
//! (503s retried by the next publish): every acknowledged event reaches every connection once
//! and in order, or that connection got `resync` (with `--publish-replicas 1`: every
//! acknowledged event arrives); both nodes go unready and come back; the old primary is
//! restarted, Sentinel turns it into a replica, and nothing of the gateways is sent to it. A
//! manual failover (`SENTINEL FAILOVER`: the primary is demoted while it is up and keeps its
//! connections) moves both nodes' connections off it the same way.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use gleepost_tests::eventually;
use gleepost_tests::resume::{parse_frame, seq_event, Frame};
use gleepost_tests::{Client, Gateway, RedisSentinel};

const READY: Duration = Duration::from_secs(40);
const USERS: std::ops::RangeInclusive<u64> = 1..=10;

#[tokio::test(flavor = "multi_thread")]
async fn with_publish_replicas_0_a_sentinel_failover_loses_nothing_silently() -> Result<()> {
    failover(0, Fault::KillPrimary).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_manual_failover_moves_every_connection_off_the_demoted_primary() -> Result<()> {
    failover(0, Fault::ManualFailover).await
}

#[tokio::test(flavor = "multi_thread")]
async fn with_publish_replicas_1_every_acknowledged_event_survives_a_sentinel_failover(
) -> Result<()> {
    failover(1, Fault::KillPrimary).await
}

/// How the primary goes away.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// SIGKILL; restarted later (Sentinel turns it into a replica).
    KillPrimary,
    /// `SENTINEL FAILOVER`: demoted while up.
    ManualFailover,
}

/// What one connection received: numbered events in arrival order, and resyncs.
#[derive(Default)]
struct Received {
    seqs: Vec<u64>,
    resyncs: usize,
}

/// Read `client` until seq `last` arrived (set once publishing is over).
async fn collect(mut client: Client, last: Arc<std::sync::Mutex<Option<u64>>>) -> Result<Received> {
    let mut got = Received::default();
    loop {
        let done = *last.lock().unwrap_or_else(|p| p.into_inner());
        if done.is_some() && got.seqs.last().copied() >= done {
            return Ok(got);
        }
        let text = match client.next_text_within(Duration::from_millis(500)).await {
            Ok(text) => text,
            Err(_) if done.is_none() => continue,
            Err(e) => {
                return Err(e.context(format!(
                    "waiting for seq {done:?} after {:?}",
                    got.seqs.last()
                )))
            }
        };
        match parse_frame(&text)? {
            Frame::Event { seq, .. } => got.seqs.push(seq),
            Frame::Resync { .. } => got.resyncs += 1,
        }
    }
}

async fn failover(replicas: u32, fault: Fault) -> Result<()> {
    let mut sentinel = RedisSentinel::start(1).await?;
    let replica_count = replicas.to_string();
    let args = [
        "--redis-timeout",
        "500ms",
        "--publish-replicas",
        &replica_count,
    ];
    let (a, b) = (
        Gateway::on_sentinel(&sentinel, &args).await?,
        Gateway::on_sentinel(&sentinel, &args).await?,
    );
    let last = Arc::new(std::sync::Mutex::new(None));
    let mut readers = Vec::new();
    for user in USERS {
        for gw in [&a, &b] {
            let client = gw.connect(user).await?;
            readers.push((user, tokio::spawn(collect(client, last.clone()))));
        }
    }
    let gateways = Arc::new([a, b]);

    // A steady stream through both nodes' APIs until told to stop after an acknowledgement.
    let stop = Arc::new(AtomicBool::new(false));
    let acked_count = Arc::new(AtomicU64::new(0));
    let publisher = {
        let (gateways, stop, count) = (gateways.clone(), stop.clone(), acked_count.clone());
        tokio::spawn(async move {
            let users: Vec<String> = USERS.map(|u| u.to_string()).collect();
            let mut acked = BTreeSet::new();
            let mut seq = 0u64;
            loop {
                seq += 1;
                let body = format!(
                    r#"{{"users":[{}],"event":{}}}"#,
                    users.join(","),
                    seq_event(seq, 0)
                );
                let res = gateways[(seq % 2) as usize]
                    .publish_raw(&body)
                    .await
                    .with_context(|| {
                        format!("publish {seq}: no answer (the request's own bound)")
                    })?;
                // Without a usable primary: 503, never a 500 or a hang.
                ensure!(
                    res.status == 200 || res.status == 503,
                    "publish {seq} answered {}: {}",
                    res.status,
                    String::from_utf8_lossy(&res.body)
                );
                if res.status == 200 {
                    acked.insert(seq);
                    count.fetch_add(1, Ordering::Release);
                    if stop.load(Ordering::Acquire) {
                        return anyhow::Ok((acked, seq));
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };

    tokio::time::sleep(Duration::from_millis(500)).await;
    let old = match fault {
        Fault::KillPrimary => {
            let old = sentinel.kill_primary().await?;
            for gw in gateways.iter() {
                gw.wait_ready(false, READY)
                    .await
                    .context("unready while the primary is gone")?;
            }
            sentinel.wait_failover(old).await?;
            old
        }
        Fault::ManualFailover => sentinel.manual_failover().await?,
    };
    for gw in gateways.iter() {
        gw.wait_ready(true, READY)
            .await
            .context("ready again after the failover")?;
    }
    if fault == Fault::KillPrimary {
        // The old primary returns; Sentinel makes it a replica of the new one (with
        // --publish-replicas 1 publishes are refused until then: WAIT 1 cannot be met).
        sentinel.restart_as_replica(old).await?;
    }
    // From here on the demoted node must see nothing of the gateways.
    let _: String = sentinel.node(old).cmd(&["CONFIG", "RESETSTAT"]).await?;
    let rejoined_at = acked_count.load(Ordering::Acquire);
    eventually(READY, "20 more acknowledged publishes", || async {
        let n = acked_count.load(Ordering::Acquire);
        ensure!(
            n >= rejoined_at + 20,
            "{} since the old primary rejoined",
            n - rejoined_at
        );
        Ok(())
    })
    .await?;
    stop.store(true, Ordering::Release);
    let (acked, final_seq) = publisher.await??;
    *last.lock().unwrap_or_else(|p| p.into_inner()) = Some(final_seq);

    for (user, reader) in readers {
        let got = reader.await??;
        ensure!(
            got.seqs.windows(2).all(|w| w[0] < w[1]),
            "user {user}: out of order or duplicated: {:?}",
            got.seqs
        );
        let missing: Vec<_> = acked.iter().filter(|s| !got.seqs.contains(s)).collect();
        if replicas > 0 {
            ensure!(
                missing.is_empty(),
                "user {user}: acknowledged but lost: {missing:?}"
            );
        } else {
            ensure!(
                missing.is_empty() || got.resyncs > 0,
                "user {user}: acknowledged but not delivered, and no resync: {missing:?}"
            );
        }
    }

    // Nothing of the gateways reaches the demoted node: no script call, no connection.
    ensure!(
        sentinel.role(old).await? == "slave",
        "old primary is not a replica"
    );
    ensure!(
        sentinel.calls(old, "evalsha").await? == 0 && sentinel.calls(old, "eval").await? == 0,
        "a publish script ran on the demoted primary"
    );
    let clients: String = sentinel.node(old).cmd(&["CLIENT", "LIST"]).await?;
    ensure!(
        !clients.contains("name=gleepost-gateway"),
        "a gateway connection is open on the demoted primary:\n{clients}"
    );
    // The sentinels' announcement was seen (not only the failed connections).
    for gw in gateways.iter() {
        ensure!(
            gw.logs()
                .iter()
                .any(|l| l.contains("sentinel switched the primary")),
            "a node never saw +switch-master"
        );
    }
    Ok(())
}
