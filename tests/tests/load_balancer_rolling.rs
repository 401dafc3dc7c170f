//! A rolling SIGTERM of both nodes behind a real load balancer (issue 12, item 4): Debian's
//! HAProxy running `docs/haproxy.cfg` unchanged, while events are published steadily through the
//! API to WebSocket, SSE and long-poll clients of every user. The balancer takes each draining
//! node out of the pool because its `/readyz` fails (while the node still runs); every stream is
//! ended with 1001 (a close frame, a final SSE `close` event, a poll answer's `close`) and
//! reconnects through the balancer resuming after its last id; each node is restarted on the same
//! addresses and rejoins the pool before the next one stops. Every client receives every event
//! exactly once, in order.
//!
//! Without `haproxy` installed this test fails (`.ci/run` installs it). No timing assertions:
//! every wait is bounded, every check is about what arrived and in which order.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use gleepost_tests::eventually;
use gleepost_tests::haproxy::{node_options, two_nodes, HaProxy, NODES};
use gleepost_tests::resume::{seq_event, SeqCheck};
use gleepost_tests::sse::{accept_poll, poll, sse_path, SseStream};
use gleepost_tests::stream::{EventStream, Frame};
use gleepost_tests::{publish_via, token, Gateway, RedisServer};
use tokio::sync::watch;

/// Bounded waits (not timing assertions).
const READY: Duration = Duration::from_secs(20);
const LONG: Duration = Duration::from_secs(30);

/// Distinct users of the rolling test; each has one client of every transport.
const USERS: u64 = 12;
const KINDS: [Kind; 3] = [Kind::Ws, Kind::Sse, Kind::Poll];
const CLIENTS: usize = USERS as usize * KINDS.len();
/// WebSocket and SSE clients (each holds one connection all along).
const STREAMING: usize = USERS as usize * 2;
const FIRST_USER: u64 = 20_000;
/// Pause between two publishes (each to every user).
const PUBLISH_EVERY: Duration = Duration::from_millis(80);

/// A client's transport.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Ws,
    Sse,
    Poll,
}

/// What every follower shares with the test.
#[derive(Clone)]
struct Shared {
    lb: String,
    /// The last seq; `u64::MAX` until the publisher stopped.
    done: watch::Receiver<u64>,
    /// Clients that received their first event.
    warmed: Arc<AtomicUsize>,
    /// Open WebSocket and SSE streams.
    streams: Arc<AtomicUsize>,
}

/// What one client saw across its reconnects.
struct Outcome {
    kind: Kind,
    check: SeqCheck,
    /// Close codes of the connections (or poll answers) the nodes ended, each followed by a
    /// reconnect through the balancer.
    closes: Vec<u64>,
}

impl Outcome {
    fn new(kind: Kind, user: u64) -> Self {
        Outcome {
            kind,
            check: SeqCheck::new(format!("{kind:?} client of user {user}"), 1),
            closes: Vec::new(),
        }
    }

    /// Accept one numbered event.
    fn accept(&mut self, text: &str, shared: &Shared) -> Result<()> {
        self.check.accept(text)?;
        if self.check.last() == 1 {
            shared.warmed.fetch_add(1, Ordering::SeqCst);
        }
        Ok(())
    }

    /// A node ended the connection with `code`: it must be 1001 (the drain), and an event must
    /// have arrived before, to resume after.
    fn closed(&mut self, code: u64) -> Result<String> {
        let name = &self.check.name;
        ensure!(
            code == 1001,
            "{name}: closed with {code} after seq {}",
            self.check.last()
        );
        self.closes.push(code);
        self.check
            .last_id
            .clone()
            .with_context(|| format!("{name}: closed before any event"))
    }

    fn finished(&self, done: &mut watch::Receiver<u64>) -> bool {
        self.check.last() >= *done.borrow_and_update()
    }
}

/// Follow one client through the balancer until the last event: read events, and whenever a
/// node ends the connection, reconnect at once through the balancer resuming after the last id.
async fn follow(kind: Kind, user: u64, shared: Shared) -> Result<Outcome> {
    let mut outcome = Outcome::new(kind, user);
    let result = match kind {
        Kind::Ws => follow_ws(user, &shared, &mut outcome).await,
        Kind::Sse => follow_sse(user, &shared, &mut outcome).await,
        Kind::Poll => follow_poll(user, &shared, &mut outcome).await,
    };
    result.with_context(|| format!("{} after seq {}", outcome.check.name, outcome.check.last()))?;
    Ok(outcome)
}

async fn follow_ws(user: u64, shared: &Shared, outcome: &mut Outcome) -> Result<()> {
    let url = format!("ws://{}/ws?access_token={}", shared.lb, token(user));
    let mut done = shared.done.clone();
    let mut stream = EventStream::connect(&url).await?;
    shared.streams.fetch_add(1, Ordering::SeqCst);
    while !outcome.finished(&mut done) {
        let frame = tokio::select! {
            frame = stream.next_frame(LONG) => frame?,
            changed = done.changed() => { changed?; continue; }
        };
        match frame {
            Frame::Text(text, _) => outcome.accept(&text, shared)?,
            Frame::Close(code, _, _) => {
                shared.streams.fetch_sub(1, Ordering::SeqCst);
                let since = outcome.closed(code.into())?;
                stream = EventStream::connect(&format!("{url}&since={since}")).await?;
                shared.streams.fetch_add(1, Ordering::SeqCst);
            }
            Frame::Dropped(_) => bail!("WebSocket dropped without a close frame"),
        }
    }
    Ok(())
}

async fn follow_sse(user: u64, shared: &Shared, outcome: &mut Outcome) -> Result<()> {
    let path = sse_path(user, None);
    let mut done = shared.done.clone();
    let mut stream = SseStream::connect(&shared.lb, &path, &[]).await?;
    shared.streams.fetch_add(1, Ordering::SeqCst);
    while !outcome.finished(&mut done) {
        let event = tokio::select! {
            event = stream.next_event(LONG) => event?,
            changed = done.changed() => { changed?; continue; }
        };
        let event = event.context("the stream ended without a close event")?;
        match event.event.as_str() {
            "message" => {
                outcome.accept(&event.data, shared)?;
                ensure!(event.id == outcome.check.last_id, "id line {:?}", event.id);
            }
            "close" => {
                let code: serde_json::Value = serde_json::from_str(&event.data)?;
                let last = outcome.closed(code["code"].as_u64().unwrap_or(0))?;
                // The close event is the last thing on the stream.
                ensure!(
                    stream.next_event(LONG).await?.is_none(),
                    "events after close"
                );
                shared.streams.fetch_sub(1, Ordering::SeqCst);
                stream = SseStream::connect(&shared.lb, &path, &[("Last-Event-ID", &last)]).await?;
                shared.streams.fetch_add(1, Ordering::SeqCst);
            }
            other => bail!("unexpected SSE event {other}: {}", event.data),
        }
    }
    Ok(())
}

async fn follow_poll(user: u64, shared: &Shared, outcome: &mut Outcome) -> Result<()> {
    let mut done = shared.done.clone();
    let mut since: Option<String> = None;
    while !outcome.finished(&mut done) {
        let res = poll(&shared.lb, user, since.as_deref(), "5s").await?;
        let before = outcome.check.last();
        let close = accept_poll(&res, &mut outcome.check)?;
        if before == 0 && outcome.check.last() > 0 {
            shared.warmed.fetch_add(1, Ordering::SeqCst);
        }
        if let Some(code) = close {
            outcome.closed(code)?;
        }
        since = outcome.check.last_id.clone();
    }
    Ok(())
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
    let shared = Shared {
        lb: lb.public.clone(),
        done: done_rx,
        warmed: Arc::new(AtomicUsize::new(0)),
        streams: Arc::new(AtomicUsize::new(0)),
    };
    let mut clients = Vec::new();
    for &user in &users {
        for kind in KINDS {
            clients.push(tokio::spawn(follow(kind, user, shared.clone())));
        }
    }
    // Every client is connected (or its first poll waits) before the first publish, on both
    // nodes.
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
        let n = shared.warmed.load(Ordering::SeqCst);
        ensure!(n == CLIENTS, "{n} of {CLIENTS}");
        Ok(())
    })
    .await?;

    for i in 0..2 {
        let name = NODES[i];
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

        // Every stream reconnected through the balancer, to the other node.
        eventually(LONG, &format!("every stream moved off {name}"), || async {
            let on = lb.server(name).await?.sessions;
            let streams = shared.streams.load(Ordering::SeqCst);
            ensure!(
                on == 0 && streams == STREAMING,
                "{streams} streams, {on} on {name}"
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
    let mut closes = [0usize; 3];
    for client in clients {
        let outcome = client.await??;
        let name = &outcome.check.name;
        ensure!(
            outcome.check.last() == last,
            "{name}: ended at seq {} of {last}",
            outcome.check.last()
        );
        // Both nodes were drained, so every stream was moved at least once (a poller may have
        // had no poll in flight at either drain).
        ensure!(
            matches!(outcome.kind, Kind::Poll) || !outcome.closes.is_empty(),
            "{name}: never closed by a draining node"
        );
        closes[outcome.kind as usize] += outcome.closes.len();
    }
    println!(
        "{CLIENTS} clients, {last} events each, 0 lost or duplicated; closed with 1001 and \
         resumed through haproxy: WebSocket {}, SSE {}, long-poll {}",
        closes[0], closes[1], closes[2]
    );
    Ok(())
}
