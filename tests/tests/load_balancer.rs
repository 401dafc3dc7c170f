//! A real load balancer in front of two nodes (issue 12, item 4): Debian's HAProxy running
//! `docs/haproxy.cfg`, the configuration docs/operations.md recommends, unchanged.
//!
//! - Clients connect through the balancer, which spreads them over both nodes; events arrive
//!   with their ids; a client resumes through it with `since` and gets exactly what it missed.
//! - A rolling SIGTERM of both nodes while events are published steadily through the API: the
//!   balancer takes each draining node out of the pool because its `/readyz` fails (while it
//!   still runs), every client is closed with 1001, reconnects through the balancer with
//!   `since`, and receives every event exactly once and in order.
//!
//! Without `haproxy` installed these tests fail (`.ci/run` installs it). No timing assertions:
//! every wait is bounded, every check is about what arrived and in which order.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use gleepost_tests::haproxy::{self, HaProxy, NODES};
use gleepost_tests::http;
use gleepost_tests::redis_mode::eventually;
use gleepost_tests::resume::{seq_event, SeqCheck};
use gleepost_tests::stream::{EventStream, Frame};
use gleepost_tests::{publish_via, Client, Gateway, GatewayOptions, RedisServer};
use tokio::sync::watch;

/// Bounded waits (not timing assertions).
const READY: Duration = Duration::from_secs(20);
const LONG: Duration = Duration::from_secs(30);

/// Node options: quick readiness probe, a short drain window; the default pre-drain delay (5 s),
/// which the recommended health-check timing must fit in.
fn node_options(redis: &RedisServer) -> GatewayOptions {
    GatewayOptions::redis(redis.url()).arg(&["--probe-interval", "100ms", "--drain-window", "3s"])
}

/// Two ready nodes on one Redis.
async fn two_nodes(redis: &RedisServer) -> Result<[Gateway; 2]> {
    let a = Gateway::start(node_options(redis)).await.context("node1")?;
    let b = Gateway::start(node_options(redis)).await.context("node2")?;
    a.wait_ready(true, READY).await.context("node1")?;
    b.wait_ready(true, READY).await.context("node2")?;
    Ok([a, b])
}

#[test]
fn operations_md_shows_the_tested_haproxy_config_verbatim() -> Result<()> {
    let config = std::fs::read_to_string(haproxy::config_path())?;
    let docs = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/operations.md"),
    )?;
    let block = format!("```haproxy\n{config}```\n");
    ensure!(
        docs.contains(&block),
        "docs/operations.md must show docs/haproxy.cfg verbatim in a ```haproxy block"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn websocket_through_haproxy_spreads_clients_delivers_ids_and_resumes() -> Result<()> {
    let redis = RedisServer::start().await?;
    let nodes = two_nodes(&redis).await?;
    let lb = HaProxy::start([&nodes[0], &nodes[1]]).await?;
    let users = [41u64, 42];

    // Credentials are checked behind the balancer; the refusal comes back through it unchanged.
    let refused = http::upgrade_attempt(&lb.public, "/ws?access_token=nope", &[]).await?;
    ensure!(
        refused.status == 401 && refused.json()?["error"] == "Invalid credentials",
        "bad token through haproxy: {} {}",
        refused.status,
        refused.body_text()
    );

    let mut first = Client::connect(&lb.ws_url(users[0])).await?;
    let mut second = Client::connect(&lb.ws_url(users[1])).await?;
    // leastconn: the second client goes to the node without one.
    eventually(READY, "one client on each node", || async {
        let stats = lb.stats().await?;
        ensure!(
            stats.iter().all(|s| s.sessions == 1),
            "sessions per node: {stats:?}"
        );
        Ok(())
    })
    .await?;

    let mut checks = users.map(|u| SeqCheck::new(format!("user {u}"), 1));
    for seq in 1..=3 {
        nodes[0].publish(&users, &seq_event(seq, 0)).await?;
    }
    checks[0].read_until(&mut first, 3).await?;
    checks[1].read_until(&mut second, 3).await?;

    // The first client goes away, misses 4..=6 and resumes through the balancer.
    first.close().await;
    for seq in 4..=6 {
        nodes[1].publish(&users, &seq_event(seq, 0)).await?;
    }
    let since = checks[0].last_id.clone().context("no id after seq 3")?;
    let mut first = Client::connect(&format!("{}&since={since}", lb.ws_url(users[0]))).await?;
    checks[0].read_until(&mut first, 6).await?;
    // Live again after the replay, on both clients, without duplicates.
    nodes[0].publish(&users, &seq_event(7, 0)).await?;
    checks[0].read_until(&mut first, 7).await?;
    checks[1].read_until(&mut second, 7).await?;
    first.expect_silence(Duration::from_millis(300)).await?;
    Ok(())
}

/// Distinct users of the rolling test; each has [`CONNS_PER_USER`] connections.
const USERS: u64 = 20;
const CONNS_PER_USER: usize = 2;
const CLIENTS: usize = USERS as usize * CONNS_PER_USER;
const FIRST_USER: u64 = 20_000;
/// Pause between two publishes (each to every user).
const PUBLISH_EVERY: Duration = Duration::from_millis(50);

/// What one client saw across its reconnects.
struct Outcome {
    check: SeqCheck,
    /// Close codes of the connections the nodes closed (each followed by a reconnect).
    closes: Vec<u16>,
}

/// Follow one client through the balancer: read numbered events, and on every close reconnect
/// at once through the balancer with `since=<last id>`, until the event `done` names arrived.
async fn follow(
    user: u64,
    url: String,
    done: watch::Receiver<u64>,
    warmed: Arc<AtomicUsize>,
) -> Result<Outcome> {
    let mut done = done;
    let name = format!("user {user}");
    let mut check = SeqCheck::new(&name, 1);
    let mut closes = Vec::new();
    let mut stream = EventStream::connect(&url)
        .await
        .with_context(|| format!("{name}: connecting through haproxy"))?;
    loop {
        if check.last() >= *done.borrow_and_update() {
            return Ok(Outcome { check, closes });
        }
        let frame = tokio::select! {
            frame = stream.next_frame(LONG) => frame.with_context(|| format!("{name}: after seq {}", check.last()))?,
            changed = done.changed() => {
                changed.with_context(|| format!("{name}: the test stopped"))?;
                continue;
            }
        };
        match frame {
            Frame::Text(text, _) => {
                check.accept(&text)?;
                if check.last() == 1 {
                    warmed.fetch_add(1, Ordering::SeqCst);
                }
            }
            Frame::Close(code, reason, _) => {
                ensure!(
                    code == 1001,
                    "{name}: closed with {code} {reason:?} after seq {}",
                    check.last()
                );
                closes.push(code);
                let since = check
                    .last_id
                    .clone()
                    .with_context(|| format!("{name}: closed before any event"))?;
                stream = EventStream::connect(&format!("{url}&since={since}"))
                    .await
                    .with_context(|| {
                        format!(
                            "{name}: reconnecting through haproxy after seq {}",
                            check.last()
                        )
                    })?;
            }
            Frame::Dropped(_) => bail!(
                "{name}: connection dropped without a close frame after seq {}",
                check.last()
            ),
        }
    }
}

/// Publish numbered events 1, 2, … to every user through the admin port of node `target`
/// (switched by the test away from the node it stops) until `stop` is set; returns the last seq.
async fn publish_loop(
    admins: [String; 2],
    users: Vec<u64>,
    target: Arc<AtomicUsize>,
    stop: Arc<AtomicU64>,
) -> Result<u64> {
    let mut seq = 0;
    while stop.load(Ordering::SeqCst) == 0 {
        seq += 1;
        let admin = &admins[target.load(Ordering::SeqCst)];
        let res = publish_via(admin, &users, &seq_event(seq, 0))
            .await
            .with_context(|| format!("publishing seq {seq} through {admin}"))?;
        ensure!(
            res["ids"].as_object().map(|o| o.len()) == Some(users.len()),
            "publish of seq {seq}: unexpected result {res}"
        );
        tokio::time::sleep(PUBLISH_EVERY).await;
    }
    Ok(seq)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_sigterm_behind_haproxy_moves_every_client_and_loses_nothing() -> Result<()> {
    tokio::time::timeout(Duration::from_secs(150), rolling_scenario())
        .await
        .context("rolling scenario did not finish within 150 s")?
}

async fn rolling_scenario() -> Result<()> {
    let redis = RedisServer::start().await?;
    let mut nodes = two_nodes(&redis).await?;
    let lb = HaProxy::start([&nodes[0], &nodes[1]]).await?;
    let admins = [nodes[0].admin.clone(), nodes[1].admin.clone()];

    let users: Vec<u64> = (FIRST_USER..FIRST_USER + USERS).collect();
    let (done_tx, done_rx) = watch::channel(u64::MAX);
    let warmed = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for &user in &users {
        for _ in 0..CONNS_PER_USER {
            clients.push(tokio::spawn(follow(
                user,
                lb.ws_url(user),
                done_rx.clone(),
                warmed.clone(),
            )));
        }
    }
    // Every client is connected (HAProxy counts it) before the first publish, on both nodes.
    eventually(LONG, "every client connected through haproxy", || async {
        let stats = lb.stats().await?;
        let total: u64 = stats.iter().map(|s| s.sessions).sum();
        ensure!(
            total == CLIENTS as u64 && stats.iter().all(|s| s.sessions > 0),
            "sessions per node: {stats:?}"
        );
        Ok(())
    })
    .await?;

    let target = Arc::new(AtomicUsize::new(1));
    let stop = Arc::new(AtomicU64::new(0));
    let publisher = tokio::spawn(publish_loop(
        admins,
        users.clone(),
        target.clone(),
        stop.clone(),
    ));
    eventually(LONG, "every client received an event", || async {
        let n = warmed.load(Ordering::SeqCst);
        ensure!(n == CLIENTS, "{n} of {CLIENTS}");
        Ok(())
    })
    .await?;

    for i in 0..2 {
        let (name, other) = (NODES[i], NODES[1 - i]);
        target.store(1 - i, Ordering::SeqCst);
        let (public, admin) = (nodes[i].public.clone(), nodes[i].admin.clone());
        nodes[i].signal(libc::SIGTERM);

        // HAProxy takes the node out because its /readyz fails, while the node still runs.
        let down = eventually(LONG, &format!("{name} DOWN behind haproxy"), || async {
            let stat = lb.server(name).await?;
            ensure!(stat.status == "DOWN", "{stat:?}");
            Ok(stat)
        })
        .await?;
        ensure!(
            down.check_status == "L7STS" && down.check_code == "503",
            "{name} left the pool for another reason than /readyz answering 503 (the node \
             exited before haproxy noticed its drain?): {down:?}"
        );
        let status = nodes[i].wait_exit(LONG).await?;
        ensure!(status.success(), "{name} exited with {status}");

        // Every client reconnected through the balancer, to the other node.
        eventually(LONG, &format!("every client on {other}"), || async {
            let stats = lb.stats().await?;
            let on = |n: &str| stats.iter().find(|s| s.name == n).map(|s| s.sessions);
            ensure!(
                on(other) == Some(CLIENTS as u64) && on(name) == Some(0),
                "sessions per node: {stats:?}"
            );
            Ok(())
        })
        .await?;

        // Restart it on the same addresses; it rejoins the pool once ready.
        nodes[i] = Gateway::start(node_options(&redis).listen(&public, &admin))
            .await
            .with_context(|| format!("restarting {name}"))?;
        nodes[i].wait_ready(true, READY).await?;
        lb.wait_status(&[name], "UP", READY).await?;
    }

    stop.store(1, Ordering::SeqCst);
    let last = publisher.await??;
    done_tx.send(last)?;
    let mut reconnects = 0;
    for client in clients {
        let outcome = client.await??;
        ensure!(
            outcome.check.last() == last,
            "{}: ended at seq {} of {last}",
            outcome.check.name,
            outcome.check.last()
        );
        // Both nodes were drained, so every client was moved at least once.
        ensure!(
            !outcome.closes.is_empty(),
            "{}: never closed by a draining node",
            outcome.check.name
        );
        reconnects += outcome.closes.len();
    }
    println!("{CLIENTS} clients, {last} events each, {reconnects} reconnects through haproxy");
    Ok(())
}
