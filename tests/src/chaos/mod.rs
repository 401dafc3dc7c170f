//! The chaos suite with a loss ledger (issue 11): one steady stream of events through the
//! publish API with history on, client sessions that resume with `since` whenever they are
//! closed, and each fault of a [`Plan`] in turn, one after another, on one [`World`] (Redis, a
//! forwarder, two gateway nodes; or a Sentinel deployment and two nodes). Each fault gets a
//! window of time and a ledger [`Line`].
//!
//! `make chaos` runs [`Plan::full`] (binary `chaos`, writes `docs/reliability.md`);
//! `tests/tests/chaos.rs` runs [`Plan::short`] in `make test`.

pub mod clients;
pub mod faults;
pub mod forwarder;
pub mod ledger;
pub mod publisher;
pub mod records;
pub mod report;
pub mod world;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};

use clients::SessionHandle;
use faults::Fault;
use ledger::{Line, Window};
use publisher::{Publisher, Stream};
use records::Records;
use world::World;

/// Users with two sessions each (one homed on each node).
pub const USERS: u64 = 10;
/// The user whose session on node B turns into a slow consumer (its other one is on node A).
pub const SLOW_USER: u64 = 11;
/// Padding of ordinary events' data / of the slow user's events, bytes.
pub const PAD: (usize, usize) = (100, 16_000);
/// Receive buffer of the slow session's socket.
pub const SLOW_RCVBUF: u32 = 4096;

/// A run: the stream's rate, the faults in order, and how long each window waits after its
/// heal.
#[derive(Clone, Debug)]
pub struct Plan {
    /// `full` or `short`.
    pub name: &'static str,
    /// Events per second.
    pub rate: u32,
    /// The faults, in order.
    pub faults: Vec<Fault>,
    /// Time each window goes on after its heal before it may end.
    pub after: Duration,
    /// Longest further wait for every acknowledged event of the window to be delivered or
    /// covered (what is still missing then is lost).
    pub settle: Duration,
}

impl Plan {
    /// The full suite (`make chaos`, ≈ 4 minutes): Sentinel failovers with `--publish-replicas`
    /// 0 and 1, each on its own Sentinel world.
    pub fn full() -> Plan {
        Plan {
            name: "full",
            rate: 150,
            faults: vec![
                Fault::Baseline(Duration::from_secs(15)),
                Fault::PubsubKill {
                    times: 3,
                    gap: Duration::from_secs(3),
                },
                Fault::RedisRestartEmpty {
                    down: Duration::from_secs(2),
                },
                Fault::Partition(Duration::from_secs(10)),
                Fault::NodeKill {
                    down: Duration::from_secs(3),
                },
                Fault::RollingTerm,
                Fault::SlowConsumer,
                Fault::SentinelFailover {
                    publish_replicas: 0,
                },
                Fault::SentinelFailover {
                    publish_replicas: 1,
                },
            ],
            after: Duration::from_secs(8),
            settle: Duration::from_secs(30),
        }
    }

    /// Each fault once, shorter windows (`make test`, ≈ 1.5 minutes); the Sentinel failover with
    /// the default `--publish-replicas 0`.
    pub fn short() -> Plan {
        Plan {
            name: "short",
            rate: 100,
            faults: vec![
                Fault::Baseline(Duration::from_secs(3)),
                Fault::PubsubKill {
                    times: 1,
                    gap: Duration::ZERO,
                },
                Fault::RedisRestartEmpty {
                    down: Duration::from_secs(1),
                },
                Fault::Partition(Duration::from_secs(4)),
                Fault::NodeKill {
                    down: Duration::from_secs(1),
                },
                Fault::RollingTerm,
                Fault::SlowConsumer,
                Fault::SentinelFailover {
                    publish_replicas: 0,
                },
            ],
            after: Duration::from_secs(2),
            settle: Duration::from_secs(20),
        }
    }
}

/// What a run measured.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// The plan run.
    pub plan: Plan,
    /// One line per fault, in order.
    pub lines: Vec<Line>,
    /// Whole run, world start to ledger.
    pub elapsed: Duration,
    /// Client sessions.
    pub sessions: usize,
    /// Ticks of the stream dropped because every publish worker was busy.
    pub skipped: u64,
    /// What faults observed while injected (fault name, note).
    pub notes: Vec<(String, String)>,
}

/// Run `plan`: each run of consecutive faults that need the same [`world::Topology`] on a new
/// world of that kind.
pub async fn run(plan: &Plan) -> Result<Outcome> {
    let began = Instant::now();
    let mut outcome = Outcome {
        plan: plan.clone(),
        lines: Vec::new(),
        elapsed: Duration::ZERO,
        sessions: 0,
        skipped: 0,
        notes: Vec::new(),
    };
    let mut faults = plan.faults.as_slice();
    while let Some(first) = faults.first() {
        let topology = first.topology();
        let n = faults
            .iter()
            .take_while(|f| f.topology() == topology)
            .count();
        let (group, rest) = faults.split_at(n);
        faults = rest;
        let world = World::start(topology)
            .await
            .with_context(|| format!("starting the {topology:?} world"))?;
        let part = run_world(plan, &world, group).await?;
        outcome.lines.extend(part.lines);
        outcome.notes.extend(part.notes);
        outcome.sessions = outcome.sessions.max(part.sessions);
        outcome.skipped += part.skipped;
    }
    outcome.elapsed = began.elapsed();
    Ok(outcome)
}

/// Run `faults` one after another on `world`. Each window: both nodes ready and every session
/// home, the fault injected, its cause removed and both nodes ready again (the heal), then
/// [`Plan::after`] and the settling.
async fn run_world(plan: &Plan, world: &World, faults: &[Fault]) -> Result<Outcome> {
    let records = Arc::new(Records::default());
    let mut sessions = Vec::new();
    for user in 1..=USERS {
        for home in 0..2 {
            sessions.push(SessionHandle::start(
                user,
                home,
                None,
                world.book.clone(),
                records.clone(),
            ));
        }
    }
    sessions.push(SessionHandle::start(
        SLOW_USER,
        0,
        None,
        world.book.clone(),
        records.clone(),
    ));
    let slow = SessionHandle::start(
        SLOW_USER,
        1,
        Some(SLOW_RCVBUF),
        world.book.clone(),
        records.clone(),
    );
    sessions.push(slow);
    at_home(&sessions).await.context("first connections")?;

    let mut users: Vec<(u64, usize)> = (1..=USERS).map(|u| (u, PAD.0)).collect();
    users.push((SLOW_USER, PAD.1));
    let stream = Stream {
        rate: plan.rate,
        users,
    };
    let publisher = Publisher::start(stream, world.book.clone(), records.clone());
    let slow = sessions.last().context("no sessions")?;

    let mut windows: Vec<Window> = Vec::new();
    let mut notes = Vec::new();
    let mut start = Instant::now();
    for fault in faults {
        let name = fault.name();
        world.wait_all_ready().await.with_context(|| name.clone())?;
        for s in &sessions {
            s.go_home();
        }
        at_home(&sessions).await.with_context(|| name.clone())?;
        let injected = Instant::now();
        let note = fault
            .inject(world, slow)
            .await
            .with_context(|| format!("injecting {name}"))?;
        notes.extend(note.map(|n| (name.clone(), n)));
        world
            .wait_all_ready()
            .await
            .with_context(|| format!("recovering from {name}"))?;
        let heal = Instant::now();
        tokio::time::sleep(plan.after).await;
        settle(&records, start, plan.settle).await;
        let end = Instant::now();
        windows.push(Window {
            name,
            start,
            fault: injected,
            heal,
            end,
        });
        start = end;
    }
    let skipped = publisher.skipped.load(std::sync::atomic::Ordering::Relaxed);
    publisher.stop().await;
    if let Some(last) = windows.last_mut() {
        settle(&records, last.start, plan.settle).await;
        last.end = Instant::now();
    }
    let session_count = sessions.len();
    for s in sessions {
        s.stop().await;
    }
    let lines = records.with(|view| ledger::account(&view, &windows));
    Ok(Outcome {
        plan: plan.clone(),
        lines,
        elapsed: Duration::ZERO,
        sessions: session_count,
        skipped,
        notes,
    })
}

/// Wait until every session is connected to its home node.
async fn at_home(sessions: &[SessionHandle]) -> Result<()> {
    crate::eventually(Duration::from_secs(30), "sessions at home", || async {
        let away = sessions.iter().filter(|s| s.node() != Some(s.home)).count();
        ensure!(
            away == 0,
            "{away} sessions not connected to their home node"
        );
        Ok(())
    })
    .await
}

/// Wait (at most `limit`) until every event acknowledged since `since` is delivered or covered
/// on every session of its user.
async fn settle(records: &Records, since: Instant, limit: Duration) {
    let deadline = Instant::now() + limit;
    while records.with(|view| ledger::outstanding(&view, since).0) > 0 && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
