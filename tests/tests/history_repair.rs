//! Never lose an event across broker blips and node deaths (issue 4): gap repair after the
//! nodes' Redis subscriptions are killed, and clients of a SIGKILLed node resuming on another
//! node with `since`, while a publisher keeps publishing numbered events. Every client checks its
//! sequence numbers: each event exactly once, in order.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use gleepost_event::{Event, HistoryConfig, Publisher};
use gleepost_tests::eventually;
use gleepost_tests::metrics::{probes_come_back, wait_metric};
use gleepost_tests::resume::{parse_frame, seq_event, Frame, SeqCheck};
use gleepost_tests::{Client, Gateway, GatewayOptions, RedisServer};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

const READY: Duration = Duration::from_secs(15);
/// Every node's probe timeout: a lost subscription shows within a second.
const PROBE_TIMEOUT: [&str; 2] = ["--probe-timeout", "1s"];

/// A publisher task sending numbered events `1..=total` to `users` with the Rust `Publisher`
/// (history on). At each seq in `pauses` it reports on `reached` and waits for `go`, so the test
/// can break something mid-stream; it is paced (a short pause every few events) so the stream
/// spans the breakage instead of finishing first.
struct PublisherTask {
    handle: JoinHandle<Result<()>>,
    reached: mpsc::UnboundedReceiver<u64>,
    go: mpsc::UnboundedSender<()>,
}

impl PublisherTask {
    async fn start(redis_url: &str, users: Vec<u64>, total: u64, pauses: Vec<u64>) -> Result<Self> {
        let publisher = Publisher::connect(redis_url).await?;
        let (reached_tx, reached) = mpsc::unbounded_channel();
        let (go, mut go_rx) = mpsc::unbounded_channel::<()>();
        let handle = tokio::spawn(async move {
            for seq in 1..=total {
                let event = Event::from_json(seq_event(seq, 0).as_bytes())?;
                // A publish that fails (never expected here) must not be skipped silently.
                let report = publisher
                    .publish(&users, &event)
                    .await
                    .with_context(|| format!("publishing seq {seq}"))?;
                ensure!(report.ids.len() == users.len(), "no ids for seq {seq}");
                if pauses.contains(&seq) {
                    let _ = reached_tx.send(seq);
                    go_rx.recv().await.context("test gave up")?;
                }
                if seq % 4 == 0 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            Ok(())
        });
        Ok(PublisherTask {
            handle,
            reached,
            go,
        })
    }

    async fn reached(&mut self) -> Result<u64> {
        tokio::time::timeout(Duration::from_secs(30), self.reached.recv())
            .await
            .context("publisher did not reach its pause")?
            .context("publisher ended early")
    }

    fn resume(&self) {
        let _ = self.go.send(());
    }

    async fn finish(self) -> Result<()> {
        tokio::time::timeout(Duration::from_secs(60), self.handle)
            .await
            .context("publisher did not finish")??
    }
}

type Reader = JoinHandle<Result<(SeqCheck, Client)>>;

/// A client reading numbered events until `total`, checking each; hands the client back (still
/// connected) at the end.
fn reader(name: String, mut client: Client, total: u64) -> Reader {
    tokio::spawn(async move {
        let mut check = SeqCheck::new(name, 1);
        check.read_until(&mut client, total).await?;
        Ok((check, client))
    })
}

async fn join_all(readers: Vec<Reader>) -> Result<Vec<Client>> {
    let mut clients = Vec::new();
    for r in readers {
        let (check, client) = tokio::time::timeout(Duration::from_secs(60), r)
            .await
            .context("reader did not finish")???;
        eprintln!("{}: got 1..={} in order", check.name, check.last());
        clients.push(client);
    }
    Ok(clients)
}

/// Publish numbered event `seq` to `user` with the Rust `Publisher` (history on).
async fn publish_seq_to(publisher: &Publisher, user: u64, seq: u64) -> Result<()> {
    let event = Event::from_json(seq_event(seq, 0).as_bytes())?;
    publisher.publish(&[user], &event).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn pubsub_killed_three_times_during_5000_events_every_client_gets_each_once_in_order(
) -> Result<()> {
    const TOTAL: u64 = 5_000;
    let redis = RedisServer::start().await?;
    let (a, b) = Gateway::two_on_redis(&redis, &PROBE_TIMEOUT).await?;
    let clients = [(1, &a, "A"), (1, &b, "B"), (2, &a, "A"), (3, &b, "B")];
    let mut readers = Vec::new();
    for (user, gw, name) in clients {
        let client = gw.connect(user).await?;
        readers.push(reader(format!("user {user} on node {name}"), client, TOTAL));
    }

    let mut publisher = PublisherTask::start(
        &redis.url(),
        vec![1, 2, 3],
        TOTAL,
        vec![1_000, 2_500, 4_000],
    )
    .await?;
    for kill in 1..=3u32 {
        let at = publisher.reached().await?;
        let killed: i64 = redis.cmd(&["CLIENT", "KILL", "TYPE", "pubsub"]).await?;
        ensure!(
            killed >= 2,
            "kill {kill}: only {killed} pub/sub connections killed"
        );
        // Keep publishing while the nodes are without a subscription.
        publisher.resume();
        for gw in [&a, &b] {
            eventually(READY, "node resubscribed after the kill", || async {
                let n = gw
                    .metric("gleepost_gateway_broker_reconnects_total")
                    .await?;
                ensure!(n >= f64::from(kill), "{n} reconnects");
                ensure!(gw.is_ready().await, "not ready");
                Ok(())
            })
            .await
            .with_context(|| format!("kill {kill} at seq {at}"))?;
        }
    }
    publisher.finish().await?;
    let _still_connected = join_all(readers).await?;

    for gw in [&a, &b] {
        // Each kill was followed by a gap repair that actually queued missed events.
        let repaired: Vec<u64> = gw
            .logs()
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["message"] == "gap repair queued")
            .map(|v| v["events"].as_u64().unwrap_or(0))
            .collect();
        eprintln!("gap repairs (events queued): {repaired:?}");
        let repairs = repaired.len();
        ensure!(repairs >= 3, "node ran {repairs} gap repairs, expected 3");
        let connections = gw.metric("gleepost_gateway_connections").await?;
        ensure!(connections == 2.0, "{connections} connections left");
    }
    Ok(())
}

/// Connect to `url` resuming after `since`, in the query or as `Last-Event-ID`.
async fn resume(url: &str, since: &str, header: bool) -> Result<Client> {
    if header {
        let mut request = url.into_client_request()?;
        request
            .headers_mut()
            .insert("Last-Event-ID", HeaderValue::from_str(since)?);
        Client::connect_request(request).await
    } else {
        Client::connect(&format!("{url}&since={since}")).await
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_of_a_node_clients_resume_on_the_other_with_since_nothing_lost_or_duplicated(
) -> Result<()> {
    const TOTAL: u64 = 3_000;
    let redis = RedisServer::start().await?;
    let (a, b) = Gateway::two_on_redis(&redis, &PROBE_TIMEOUT).await?;

    let mut movers = Vec::new();
    for (user, header) in [(61u64, false), (62, true), (63, false)] {
        let client = a.connect(user).await?;
        let fallback = b.ws_url(user);
        movers.push(tokio::spawn(async move {
            let mut check = SeqCheck::new(format!("user {user} moving from A to B"), 1);
            let mut client = client;
            let mut reconnects = 0;
            while check.next <= TOTAL {
                match client.next_text().await {
                    Ok(text) => check.accept(&text)?,
                    Err(e) => {
                        reconnects += 1;
                        ensure!(reconnects == 1, "{}: dropped again: {e}", check.name);
                        let since = check
                            .last_id
                            .clone()
                            .with_context(|| format!("{}: no event before the drop", check.name))?;
                        client = resume(&fallback, &since, header).await?;
                    }
                }
            }
            ensure!(reconnects == 1, "{}: never moved to node B", check.name);
            Ok(check)
        }));
    }
    let mut stayers = Vec::new();
    for user in [61u64, 64] {
        let client = b.connect(user).await?;
        stayers.push(reader(format!("user {user} on node B"), client, TOTAL));
    }

    let mut publisher =
        PublisherTask::start(&redis.url(), vec![61, 62, 63, 64], TOTAL, vec![1_000]).await?;
    let at = publisher.reached().await?;
    a.signal(libc::SIGKILL);
    publisher.resume();
    publisher.finish().await.context("publisher")?;
    for m in movers {
        let check = tokio::time::timeout(Duration::from_secs(60), m)
            .await
            .context("moving client did not finish")???;
        ensure!(check.last() == TOTAL);
        eprintln!(
            "{}: 1..={TOTAL} exactly once (node killed at {at})",
            check.name
        );
    }
    join_all(stayers).await?;
    if b.metric("gleepost_gateway_resyncs_total{reason=\"too_many\"}")
        .await?
        > 0.0
    {
        bail!("a resume fell back to resync");
    }
    Ok(())
}

/// Redis refuses new connections (`maxclients` 1) while the nodes' pub/sub connections are
/// killed, so the subscription stays down until [`Outage::end`]; connections opened before
/// (publishers, the admin connection) keep working.
struct Outage {
    admin: redis::aio::MultiplexedConnection,
}

impl Outage {
    async fn begin(redis: &RedisServer, nodes: &[&Gateway]) -> Result<Outage> {
        let mut admin = redis.connection().await?;
        let before: Vec<f64> = futures_util::future::try_join_all(
            nodes
                .iter()
                .map(|gw| gw.metric("gleepost_gateway_broker_reconnects_total")),
        )
        .await?;
        let _: () = redis::cmd("CONFIG")
            .arg(&["SET", "maxclients", "1"])
            .query_async(&mut admin)
            .await?;
        let killed: i64 = redis::cmd("CLIENT")
            .arg(&["KILL", "TYPE", "pubsub"])
            .query_async(&mut admin)
            .await?;
        ensure!(killed >= 1, "no pub/sub connection killed");
        for (gw, before) in nodes.iter().zip(before) {
            eventually(READY, "node noticed the lost subscription", || async {
                let n = gw
                    .metric("gleepost_gateway_broker_reconnects_total")
                    .await?;
                ensure!(n > before, "{n} reconnects");
                Ok(())
            })
            .await?;
        }
        Ok(Outage { admin })
    }

    async fn end(mut self, nodes: &[&Gateway]) -> Result<()> {
        let _: () = redis::cmd("CONFIG")
            .arg(&["SET", "maxclients", "10000"])
            .query_async(&mut self.admin)
            .await?;
        for gw in nodes {
            gw.wait_ready(true, READY).await?;
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn gap_repair_covers_an_outage_before_any_event_was_delivered() -> Result<()> {
    let redis = RedisServer::start().await?;
    let gw = Gateway::on_redis(&redis, &PROBE_TIMEOUT).await?;
    let publisher = Publisher::connect(&redis.url()).await?;
    let mut client = gw.connect(71).await?;

    let outage = Outage::begin(&redis, &[&gw]).await?;
    for seq in 1..=5 {
        let event = Event::from_json(seq_event(seq, 0).as_bytes())?;
        publisher.publish(&[71], &event).await?;
    }
    outage.end(&[&gw]).await?;
    let event = Event::from_json(seq_event(6, 0).as_bytes())?;
    publisher.publish(&[71], &event).await?;
    SeqCheck::new("user 71, connected through the outage", 1)
        .read_until(&mut client, 6)
        .await?;
    // The five events missed were sent by gap repair, and counted as replayed.
    wait_metric(&gw, "gleepost_gateway_events_replayed_total", 5.0).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_probe_back_while_the_channels_resubscribe_does_not_move_the_repair_point() -> Result<()>
{
    // After an outage the node subscribes its probe channel first, then the users' channels: a
    // probe that comes back in between proves nothing about them. Here probes flood the node's
    // probe channel while it resubscribes (its own do so at their interval, more often the
    // more channels a node has); the repair of a user without a delivered event must still
    // start before the outage. A probe lands in that window in most outages, not all: one
    // fresh user per outage, five outages.
    let redis = RedisServer::start().await?;
    // Many channels per user: resubscribing takes long enough for probes to come back.
    let templates: Vec<String> = (0..1000).map(|i| format!("t{i}:{{id}}")).collect();
    let templates = templates.join(",");
    let args = [PROBE_TIMEOUT[0], PROBE_TIMEOUT[1], "--channels", &templates];
    let gw = Gateway::on_redis(&redis, &args).await?;
    let publisher = Publisher::connect(&redis.url()).await?;
    let users: Vec<u64> = (80..85).collect();
    let mut clients = Vec::new();
    for &user in &users {
        clients.push(gw.connect(user).await?);
    }
    let mut flood = redis.connection().await?;
    let pattern = format!("{}*", gleepost_event::keys::PROBE_CHANNEL_PREFIX);
    let channels: Vec<String> = redis::cmd("PUBSUB")
        .arg("CHANNELS")
        .arg(&pattern)
        .query_async(&mut flood)
        .await?;
    let [probe] = &channels[..] else {
        bail!("expected the node's one probe channel, found {channels:?}");
    };
    let stop = Arc::new(AtomicBool::new(false));
    let flooding = tokio::spawn({
        let (stop, probe) = (stop.clone(), probe.clone());
        async move {
            // Probes as the node's own (`<sent>:<Redis ms>`; Redis runs on this machine, its
            // clock is this one), 20 per round trip, all through the test.
            while !stop.load(Ordering::Relaxed) {
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
                let payload = format!("0:{}", now.as_millis());
                let mut pipe = redis::pipe();
                for _ in 0..20 {
                    pipe.cmd("PUBLISH").arg(&probe).arg(&payload).ignore();
                }
                let () = pipe.query_async(&mut flood).await?;
            }
            anyhow::Ok(())
        }
    });

    for (round, (&user, client)) in users.iter().zip(&mut clients).enumerate() {
        let outage = Outage::begin(&redis, &[&gw]).await?;
        for seq in 1..=5 {
            publish_seq_to(&publisher, user, seq).await?;
        }
        outage.end(&[&gw]).await?;
        publish_seq_to(&publisher, user, 6).await?;
        SeqCheck::new(format!("user {user}, fresh through outage {round}"), 1)
            .read_until(client, 6)
            .await?;
    }
    stop.store(true, Ordering::Relaxed);
    flooding.await??;
    wait_metric(&gw, "gleepost_gateway_events_replayed_total", 25.0).await
}

/// Read until seq `last`: events in order, except that after a `resync` the stream may jump
/// ahead. Returns the resync reasons seen. A jump without a resync (a silent gap) fails.
async fn read_allowing_resync(client: &mut Client, first: u64, last: u64) -> Result<Vec<String>> {
    let mut next = first;
    let mut resyncs = Vec::new();
    let mut jump_ok = false;
    while next <= last {
        let text = client
            .next_text()
            .await
            .with_context(|| format!("waiting for seq {next}"))?;
        match parse_frame(&text)? {
            Frame::Resync { reason, .. } => {
                resyncs.push(reason);
                jump_ok = true;
            }
            Frame::Event { seq, .. } => {
                if seq != next {
                    ensure!(
                        seq > next && jump_ok,
                        "seq {seq} after {}: {}",
                        next - 1,
                        if seq < next {
                            "duplicate"
                        } else {
                            "silent gap (no resync)"
                        }
                    );
                }
                jump_ok = false;
                next = seq + 1;
            }
        }
    }
    Ok(resyncs)
}

/// With a history of 10 events, `user` gets `before` events, then 300 are published during an
/// outage, then one more: the connected client must get exactly one `resync` (trimmed), never a
/// silent gap. With `acl`, the node's Redis user may not run these commands.
async fn outage_longer_than_the_history(user: u64, before: u64, acl: &[&str]) -> Result<()> {
    let redis = RedisServer::start().await?;
    let mut url = redis.url();
    if !acl.is_empty() {
        let mut setuser = vec!["ACL", "SETUSER", "gw", "on", ">pw", "~*", "&*", "+@all"];
        setuser.extend(acl);
        let () = redis.cmd(&setuser).await?;
        url = redis.url_as("gw", "pw");
    }
    let options = GatewayOptions::redis(url).fast_probes().arg(&[
        "--probe-timeout",
        "1s",
        "--history-size",
        "10",
    ]);
    let gw = Gateway::start_ready(options).await?;
    let publisher = Publisher::connect(&redis.url())
        .await?
        .with_history(HistoryConfig {
            size: 10,
            ..HistoryConfig::default()
        });
    let publish = |seq: u64| publish_seq_to(&publisher, user, seq);
    let mut client = gw.connect(user).await?;
    for seq in 1..=before {
        publish(seq).await?;
    }
    SeqCheck::new("before the outage", 1)
        .read_until(&mut client, before)
        .await?;

    let outage = Outage::begin(&redis, &[&gw]).await?;
    for seq in before + 1..=before + 300 {
        publish(seq).await?;
    }
    outage.end(&[&gw]).await?;
    let last = before + 301;
    publish(last).await?;
    let resyncs = read_allowing_resync(&mut client, before + 1, last).await?;
    ensure!(
        resyncs == ["trimmed"],
        "expected one resync (trimmed), got {resyncs:?}"
    );
    wait_metric(
        &gw,
        r#"gleepost_gateway_resyncs_total{reason="trimmed"}"#,
        1.0,
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn gap_repair_after_the_history_was_trimmed_during_the_outage_sends_resync() -> Result<()> {
    outage_longer_than_the_history(72, 1, &[]).await
}

/// Nothing delivered to the user before the outage: repair starts from the newest Redis time
/// the node saw (its probes), and must still notice the trimming.
#[tokio::test(flavor = "multi_thread")]
async fn gap_repair_of_a_user_with_no_event_before_the_outage_reports_trimming() -> Result<()> {
    outage_longer_than_the_history(74, 0, &[]).await
}

/// The same when an ACL refuses `XINFO`, which tells trimming: not proven complete, so `resync`
/// (before, the repair replayed what was left, silently).
#[tokio::test(flavor = "multi_thread")]
async fn gap_repair_without_xinfo_permission_still_reports_trimming() -> Result<()> {
    outage_longer_than_the_history(75, 0, &["-xinfo"]).await
}

#[tokio::test(flavor = "multi_thread")]
async fn gap_repair_after_redis_lost_its_data_during_the_outage_sends_resync() -> Result<()> {
    redis_lost_its_data_during_an_outage(73, true).await
}

/// The same for a user whose history existed but who had received nothing through the node:
/// before, the repair replayed the events after the loss, under the new epoch, and said
/// nothing of those before it.
#[tokio::test(flavor = "multi_thread")]
async fn gap_repair_of_an_idle_user_after_redis_lost_its_data_sends_resync() -> Result<()> {
    redis_lost_its_data_during_an_outage(77, false).await
}

/// `user`'s history has event 1 (delivered to its client when `delivered`, else published
/// before it connected); events 2–5 are published during an outage, then Redis loses its
/// data, then 6–8: the client must get one `resync` (`epoch_changed`).
async fn redis_lost_its_data_during_an_outage(user: u64, delivered: bool) -> Result<()> {
    let redis = RedisServer::start().await?;
    let gw = Gateway::on_redis(&redis, &PROBE_TIMEOUT).await?;
    let publisher = Publisher::connect(&redis.url()).await?;
    let publish = |seq: u64| publish_seq_to(&publisher, user, seq);
    let mut client = if delivered {
        let mut client = gw.connect(user).await?;
        publish(1).await?;
        SeqCheck::new("the user", 1)
            .read_until(&mut client, 1)
            .await?;
        client
    } else {
        publish(1).await?;
        let client = gw.connect(user).await?;
        // The node has read the history's epoch (right after subscribing) meanwhile.
        probes_come_back(&gw, 5).await?;
        client
    };

    let mut outage = Outage::begin(&redis, &[&gw]).await?;
    for seq in 2..=5 {
        publish(seq).await?;
    }
    let _: () = redis::cmd("FLUSHALL")
        .query_async(&mut outage.admin)
        .await?;
    for seq in 6..=8 {
        publish(seq).await?;
    }
    outage.end(&[&gw]).await?;
    publish(9).await?;
    let resyncs = read_allowing_resync(&mut client, 2, 9).await?;
    ensure!(
        resyncs == ["epoch_changed"],
        "expected one resync (epoch_changed), got {resyncs:?}"
    );
    wait_metric(
        &gw,
        r#"gleepost_gateway_resyncs_total{reason="epoch_changed"}"#,
        1.0,
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn back_to_back_outages_are_repaired_exactly_without_resync() -> Result<()> {
    let redis = RedisServer::start().await?;
    let gw = Gateway::on_redis(&redis, &PROBE_TIMEOUT).await?;
    let publisher = Publisher::connect(&redis.url()).await?;
    let publish = |seq: u64| publish_seq_to(&publisher, 74, seq);
    let mut client = gw.connect(74).await?;
    let mut check = SeqCheck::new("user 74", 1);
    publish(1).await?;
    check.read_until(&mut client, 1).await?;

    // 800 then 300 missed (1,100 > --max-replay 1000 together), no live event in between: the
    // second repair starts where the first ended.
    for range in [2..=801, 802..=1_101] {
        let outage = Outage::begin(&redis, &[&gw]).await?;
        for seq in range.clone() {
            publish(seq).await?;
        }
        outage.end(&[&gw]).await?;
        check.read_until(&mut client, *range.end()).await?;
    }
    publish(1_102).await?;
    check.read_until(&mut client, 1_102).await?;
    Ok(())
}
