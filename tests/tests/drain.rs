//! Staggered drain on SIGTERM (issue 5): two nodes on one Redis, 1,000 clients on node A. After
//! SIGTERM node A fails `/readyz` at once but keeps delivering for the pre-drain delay, then closes
//! every connection with 1001 spread over the drain window, and exits 0. Every client reconnects
//! to node B with `since=<last id>` and, while a publisher keeps publishing numbered events to
//! every user throughout, ends up with every event exactly once and in order.
//!
//! Timing assertions are lower bounds and orderings measured on the test's own clock (no close
//! before the pre-drain delay; `/readyz` is 503 before any close; events published after that are
//! still delivered by node A) plus a loose spread check; no upper bounds.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use futures_util::StreamExt;
use gleepost_tests::stream::{EventStream, Frame};
use gleepost_tests::{eventually, Gateway, GatewayOptions, RedisServer};
use serde_json::Value;

/// Distinct users; each has [`CONNS_PER_USER`] connections on node A.
const USERS: u64 = 500;
const CONNS_PER_USER: usize = 2;
const CLIENTS: usize = USERS as usize * CONNS_PER_USER;
const FIRST_USER: u64 = 10_000;
const PRE_DRAIN: Duration = Duration::from_secs(2);
const WINDOW: Duration = Duration::from_secs(4);
/// Pause between two publishes of the numbered event (each to every user).
const PUBLISH_EVERY: Duration = Duration::from_millis(100);
/// Width of the buckets of the (loose) spread check, and how many must hold a close.
const BUCKET: Duration = Duration::from_millis(250);
const MIN_BUCKETS: usize = 6;
/// Bounded waits (not timing assertions).
const LONG: Duration = Duration::from_secs(30);

/// The numbered event `seq`; the last one carries `"last":true`.
fn seq_event(seq: u64, last: bool) -> String {
    let last = if last { r#","last":true"# } else { "" };
    format!(r#"{{"type":"message","location":"/conversations/1","data":{{"seq":{seq}{last}}}}}"#)
}

/// Raise this process's RLIMIT_NOFILE soft limit to the hard limit (children inherit it) and
/// check it covers `needed` descriptors.
fn raise_nofile(needed: libc::rlim_t) -> Result<libc::rlim_t> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on a valid, owned struct.
    unsafe {
        ensure!(
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0,
            "getrlimit: {}",
            std::io::Error::last_os_error()
        );
        if lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            ensure!(
                libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0,
                "setrlimit: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    let have = lim.rlim_cur;
    ensure!(
        have >= needed,
        "RLIMIT_NOFILE hard limit is {have}, this test needs {needed} (raise it: ulimit -n)"
    );
    Ok(have)
}

/// One event a client received: its sequence number and on which connection (0 = node A,
/// 1 = node B after the resume).
struct Received {
    seq: u64,
    conn: usize,
}

/// Everything one client saw.
struct Outcome {
    user: u64,
    events: Vec<Received>,
    /// The close frame of the connection to node A: code, reason, when.
    close: (u16, String, Instant),
    /// When the client started reconnecting to node B.
    resuming: Instant,
}

/// Counters the test watches while clients run.
#[derive(Default)]
struct Progress {
    /// Clients that received their first event on node A.
    warmed: AtomicUsize,
    /// Clients whose connection to node A was closed.
    closed: AtomicUsize,
    /// Clients reconnected to node B.
    resumed: AtomicUsize,
}

/// Follow one client: read node A's stream until its close frame, wait `reconnect_delay`,
/// reconnect to node B with `since=<last id>`, read until the event marked `last`.
async fn follow(
    user: u64,
    mut stream: EventStream,
    b_url: String,
    reconnect_delay: Duration,
    progress: Arc<Progress>,
) -> Result<Outcome> {
    let mut events = Vec::new();
    let mut last_id: Option<String> = None;
    let mut close = None;
    let mut resuming = None;
    let mut conn = 0;
    loop {
        let frame = stream
            .next_frame(LONG)
            .await
            .with_context(|| format!("user {user} on connection {conn}"))?;
        match frame {
            Frame::Text(text, _) => {
                let v: Value = serde_json::from_str(&text)
                    .with_context(|| format!("user {user}: frame is not JSON: {text}"))?;
                let seq = v["data"]["seq"]
                    .as_u64()
                    .with_context(|| format!("user {user}: unexpected frame {text}"))?;
                let id = v["id"]
                    .as_str()
                    .with_context(|| format!("user {user}: event without id: {text}"))?;
                last_id = Some(id.to_string());
                if conn == 0 && events.is_empty() {
                    progress.warmed.fetch_add(1, Ordering::SeqCst);
                }
                events.push(Received { seq, conn });
                if v["data"]["last"] == true {
                    let close = close.with_context(|| {
                        format!("user {user}: got the last event but node A never closed")
                    })?;
                    let resuming = resuming.context("unreachable: closed but not resumed")?;
                    return Ok(Outcome {
                        user,
                        events,
                        close,
                        resuming,
                    });
                }
            }
            Frame::Close(code, reason, at) if conn == 0 => {
                progress.closed.fetch_add(1, Ordering::SeqCst);
                close = Some((code, reason, at));
                let since = last_id.as_deref().with_context(|| {
                    format!("user {user}: closed by node A before any event arrived")
                })?;
                tokio::time::sleep(reconnect_delay).await;
                resuming = Some(Instant::now());
                stream = EventStream::connect(&format!("{b_url}&since={since}"))
                    .await
                    .with_context(|| format!("user {user}: resuming on node B"))?;
                progress.resumed.fetch_add(1, Ordering::SeqCst);
                conn = 1;
            }
            Frame::Close(code, reason, _) => {
                bail!("user {user}: node B closed the resumed connection: {code} {reason:?}")
            }
            Frame::Dropped(_) => bail!("user {user}: connection {conn} dropped without a close"),
        }
    }
}

/// When the publish of one numbered event started and when node B answered it.
struct Published {
    seq: u64,
    started: Instant,
    done: Instant,
}

/// Publish the numbered event to every user through node B until `stop`, then the last one.
async fn publish_loop(
    b: Arc<Gateway>,
    users: Vec<u64>,
    stop: Arc<AtomicBool>,
) -> Result<Vec<Published>> {
    let mut log = Vec::new();
    for seq in 0.. {
        let last = stop.load(Ordering::SeqCst);
        let started = Instant::now();
        let res = b
            .publish(&users, &seq_event(seq, last))
            .await
            .with_context(|| format!("publishing seq {seq} through node B"))?;
        ensure!(
            res["published"] == users.len()
                && res["ids"].as_object().map(|o| o.len()) == Some(users.len()),
            "publish of seq {seq}: unexpected result {res}"
        );
        log.push(Published {
            seq,
            started,
            done: Instant::now(),
        });
        if last {
            break;
        }
        tokio::time::sleep(PUBLISH_EVERY).await;
    }
    Ok(log)
}

/// Bounded wait until `counter` reaches `target`.
async fn wait_count(
    counter: &AtomicUsize,
    target: usize,
    limit: Duration,
    what: &str,
) -> Result<()> {
    eventually(limit, what, || async {
        let n = counter.load(Ordering::SeqCst);
        ensure!(n >= target, "{n} of {target}");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_1000_clients_over_the_window_and_they_resume_on_node_b_losing_nothing(
) -> Result<()> {
    tokio::time::timeout(Duration::from_secs(60), drain_scenario())
        .await
        .context("drain scenario did not finish within 60 s")?
}

async fn drain_scenario() -> Result<()> {
    // This process holds 1,000 connections to A plus 1,000 to B; each gateway inherits the limit.
    raise_nofile((2 * CLIENTS + 512) as libc::rlim_t)?;

    let redis = RedisServer::start().await?;
    let drained = GatewayOptions::redis(redis.url()).fast_probes().arg(&[
        "--pre-drain-delay",
        "2s",
        "--drain-window",
        "4s",
    ]);
    let (mut a, b) =
        Gateway::start_two_ready(drained, GatewayOptions::redis(redis.url()).fast_probes()).await?;
    let b = Arc::new(b);

    // 500 users × 2 connections, all on node A.
    let users: Vec<u64> = (FIRST_USER..FIRST_USER + USERS).collect();
    let targets: Vec<(u64, String)> = users
        .iter()
        .flat_map(|&u| std::iter::repeat_n(u, CONNS_PER_USER))
        .map(|u| (u, a.ws_url(u)))
        .collect();
    let connected: Vec<Result<(u64, EventStream)>> = futures_util::stream::iter(targets)
        .map(|(user, url)| async move {
            let stream = EventStream::connect(&url)
                .await
                .with_context(|| format!("user {user} connecting to node A"))?;
            Ok((user, stream))
        })
        .buffer_unordered(50)
        .collect()
        .await;
    let progress = Arc::new(Progress::default());
    let mut clients = Vec::with_capacity(CLIENTS);
    for (i, c) in connected.into_iter().enumerate() {
        let (user, stream) = c?;
        // Half the clients reconnect at once, half after a short pause (0–300 ms, like a client
        // with jitter), so events are certainly published between some closes and resumes.
        let delay = Duration::from_millis((i as u64 % 2) * (i as u64 * 37 % 301));
        clients.push(tokio::spawn(follow(
            user,
            stream,
            b.ws_url(user),
            delay,
            progress.clone(),
        )));
    }
    let on_a = a.metric("gleepost_gateway_connections").await?;
    ensure!(
        on_a == CLIENTS as f64,
        "node A reports {on_a} connections, expected {CLIENTS}"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let publisher = tokio::spawn(publish_loop(b.clone(), users.clone(), stop.clone()));
    wait_count(
        &progress.warmed,
        CLIENTS,
        LONG,
        "clients that received an event on node A",
    )
    .await?;
    ensure!(a.is_ready().await, "node A not ready before SIGTERM");

    let sigterm = Instant::now();
    a.signal(libc::SIGTERM);

    // /readyz answers 503 before any connection is closed (the node keeps serving meanwhile).
    // While it says 200 the wait goes on; a failed request or any other answer ends it at once
    // (the inner result).
    let unready = eventually(Duration::from_secs(10), "node A /readyz 503", || async {
        let res = match a.admin_get("/readyz").await {
            Ok(res) => res,
            Err(e) => return Ok(Err(e.context("GET /readyz on node A while draining"))),
        };
        match res.status {
            503 => Ok(Ok(Instant::now())),
            200 => bail!("node A /readyz still answers 200 after SIGTERM"),
            s => Ok(Err(anyhow!(
                "node A /readyz answered {s} after SIGTERM: {}",
                res.body_text()
            ))),
        }
    })
    .await??;
    let closed_when_unready = progress.closed.load(Ordering::SeqCst);
    ensure!(
        closed_when_unready == 0,
        "{closed_when_unready} clients were closed before /readyz on node A answered 503"
    );

    let status = a.wait_exit(LONG).await.context("node A after SIGTERM")?;
    ensure!(
        status.code() == Some(0),
        "node A exited with {status}, expected 0; logs:\n{}",
        a.logs().join("\n")
    );

    // Every client is back (on node B); publish a little more live, then the last event.
    wait_count(
        &progress.resumed,
        CLIENTS,
        LONG,
        "clients resumed on node B",
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    let published = publisher.await?.context("publisher")?;
    let last_seq = published
        .last()
        .map(|p| p.seq)
        .context("nothing published")?;

    let mut outcomes = Vec::with_capacity(CLIENTS);
    let mut failures = Vec::new();
    for client in clients {
        match client.await? {
            Ok(o) => outcomes.push(o),
            Err(e) => failures.push(format!("{e:#}")),
        }
    }
    ensure!(
        failures.is_empty(),
        "{} of {CLIENTS} clients failed; first: {}",
        failures.len(),
        failures[0]
    );

    // All closed with 1001 ("going away": reconnect elsewhere).
    let mut codes: BTreeMap<u16, usize> = BTreeMap::new();
    for o in &outcomes {
        *codes.entry(o.close.0).or_default() += 1;
    }
    ensure!(
        codes.get(&1001) == Some(&CLIENTS),
        "close codes (code → clients): {codes:?}, expected all {CLIENTS} with 1001"
    );

    // None before the pre-drain delay (test's clock: the close is seen after it was sent).
    let offsets: Vec<Duration> = outcomes.iter().map(|o| o.close.2 - sigterm).collect();
    let earliest = offsets.iter().min().copied().unwrap_or_default();
    let latest = offsets.iter().max().copied().unwrap_or_default();
    ensure!(
        earliest >= PRE_DRAIN,
        "a client was closed {earliest:?} after SIGTERM, before the {PRE_DRAIN:?} pre-drain delay"
    );

    // Spread over the window, not a burst (loose: several distinct 250 ms buckets).
    let buckets: BTreeMap<u128, usize> = offsets.iter().fold(BTreeMap::new(), |mut m, d| {
        *m.entry(d.as_millis() / BUCKET.as_millis()).or_default() += 1;
        m
    });
    ensure!(
        buckets.len() >= MIN_BUCKETS,
        "closes fall in only {} distinct {BUCKET:?} buckets (first {earliest:?}, last {latest:?} \
         after SIGTERM; bucket → closes: {buckets:?}), expected a spread over the {WINDOW:?} window",
        buckets.len()
    );

    // While unready, node A still delivered: every client got on node A an event whose publish
    // started after /readyz was seen answering 503.
    let started: BTreeMap<u64, Instant> = published.iter().map(|p| (p.seq, p.started)).collect();
    let starved: Vec<u64> = outcomes
        .iter()
        .filter(|o| {
            !o.events
                .iter()
                .any(|e| e.conn == 0 && started.get(&e.seq).is_some_and(|s| *s >= unready))
        })
        .map(|o| o.user)
        .collect();
    ensure!(
        starved.is_empty(),
        "{} clients (users {:?}…) got no event on node A published after it turned unready",
        starved.len(),
        &starved[..starved.len().min(5)]
    );

    // Nothing lost, nothing duplicated, in order: every client has 0..=last_seq exactly once.
    let expected: Vec<u64> = (0..=last_seq).collect();
    let (mut lost, mut duplicated, mut bad) = (0usize, 0usize, Vec::new());
    for o in &outcomes {
        let seqs: Vec<u64> = o.events.iter().map(|e| e.seq).collect();
        if seqs != expected {
            let distinct: BTreeSet<u64> = seqs.iter().copied().collect();
            lost += expected.iter().filter(|s| !distinct.contains(s)).count();
            duplicated += seqs.len() - distinct.len();
            let at = seqs
                .iter()
                .zip(&expected)
                .position(|(g, e)| g != e)
                .unwrap_or(seqs.len().min(expected.len()));
            bad.push(format!(
                "user {}: first difference at position {at}: got {:?}, expected {:?}",
                o.user,
                &seqs[at.saturating_sub(2)..(at + 3).min(seqs.len())],
                &expected[at.saturating_sub(2)..(at + 3).min(expected.len())]
            ));
        }
    }
    ensure!(
        bad.is_empty(),
        "{} of {CLIENTS} clients did not get seq 0..={last_seq} exactly once in order \
         ({lost} lost, {duplicated} duplicated); e.g. {}",
        bad.len(),
        bad[..bad.len().min(3)].join("; ")
    );
    ensure!(
        outcomes
            .iter()
            .all(|o| o.events.iter().any(|e| e.conn == 1)),
        "a client received nothing on node B"
    );
    // The resume path was exercised: some clients got on node B events whose publish had
    // completed before they started reconnecting (only `since` can have brought those).
    let done: BTreeMap<u64, Instant> = published.iter().map(|p| (p.seq, p.done)).collect();
    let replayed = outcomes
        .iter()
        .filter(|o| {
            o.events
                .iter()
                .any(|e| e.conn == 1 && done.get(&e.seq).is_some_and(|d| *d < o.resuming))
        })
        .count();
    ensure!(
        replayed > 0,
        "no client needed a replay on node B: the resume path was not exercised"
    );
    eprintln!(
        "drain: {CLIENTS} clients closed with 1001 between {earliest:?} and {latest:?} after \
         SIGTERM in {} buckets of {BUCKET:?}; {} events each, none lost or duplicated; \
         {replayed} clients got missed events replayed on node B",
        buckets.len(),
        last_seq + 1
    );
    Ok(())
}
