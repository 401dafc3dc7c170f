//! The queue of history publishes under a Redis that stops answering (a `redis-server` frozen
//! with SIGSTOP): once the events queued reach the bound (64 MiB), a publish fails at once with
//! "queue full" instead of waiting or piling up memory; once Redis answers again every queued
//! publish completes, its event stored intact under the id it was answered, and publishing
//! works again.

mod common;

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use gleepost_event::keys::history_key;
use gleepost_event::{EventId, PublishReport, Publisher};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::streams::StreamRangeReply;
use redis::RedisError;

use common::RedisServer;

/// The documented bound on the bytes of the events queued (the publisher's `QUEUE_BYTES`).
const QUEUE_BYTES: usize = 64 << 20;
/// Size of each big event: 16 of them fit in the bound with room for two small ones, a 17th
/// does not.
const BIG: usize = (4 << 20) - 4096;
/// Users per batch (the batcher's `MAX_ITEMS`): a publish to this many users is sent alone.
const BATCH_USERS: u64 = 512;
/// Generous bound on what must complete once Redis answers again.
const LIMIT: Duration = Duration::from_secs(60);

type Publish = Pin<Box<dyn Future<Output = Result<PublishReport, RedisError>>>>;

/// A publish of `payload` to `users` by a clone of `publisher`, not polled yet.
fn publish(publisher: &Publisher, users: Vec<u64>, payload: Vec<u8>) -> Publish {
    let publisher = publisher.clone();
    Box::pin(async move { publisher.publish_encoded(&users, &payload).await })
}

/// Poll `publish` once: ready only if it was answered without waiting for Redis.
async fn poll_once(publish: &mut Publish) -> Poll<Result<PublishReport, RedisError>> {
    std::future::poll_fn(|cx| Poll::Ready(publish.as_mut().poll(cx))).await
}

/// An encoded event of exactly [`BIG`] bytes whose data is unique to `n`.
fn big_event(n: usize) -> Vec<u8> {
    let (head, tail) = (r#"{"type":"big","data":""#, r#""}"#);
    let unit = format!("{n:06}.");
    let data: String = unit
        .chars()
        .cycle()
        .take(BIG - head.len() - tail.len())
        .collect();
    format!("{head}{data}{tail}").into_bytes()
}

/// The user big event `n` is published to.
fn big_user(n: usize) -> u64 {
    10 + n as u64
}

fn signal(server: &RedisServer, sig: libc::c_int) {
    let pid = libc::pid_t::try_from(server.child.id()).unwrap();
    // SAFETY: plain kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "kill({pid}, {sig})");
}

/// The entries of `user`'s history: `(stream id, stored event)`.
async fn history(
    conn: &mut redis::aio::MultiplexedConnection,
    user: u64,
) -> Vec<(String, Vec<u8>)> {
    let reply: StreamRangeReply = redis::cmd("XRANGE")
        .arg(history_key(user))
        .arg("-")
        .arg("+")
        .query_async(conn)
        .await
        .unwrap();
    reply
        .ids
        .into_iter()
        .map(|entry| {
            let event: Vec<u8> = entry.get("e").expect("an entry without its event");
            (entry.id, event)
        })
        .collect()
}

/// The stream id of the single id in `report`.
fn stream_id(report: &PublishReport) -> String {
    assert_eq!(report.ids.len(), 1, "{report:?}");
    EventId::parse(&report.ids[0].1)
        .expect("a well-formed event id")
        .stream_id()
}

// On worker threads, the batcher and the connection run beside the test: only the frozen
// server keeps them from sending the queued publishes and making room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_refuses_at_once_and_loses_nothing_it_queued() {
    let server = RedisServer::start();
    let client = redis::Client::open(server.url()).unwrap();
    // No response timeout: the batches sent to the frozen server wait for it instead of failing
    // (which would let the batcher take the queued publishes and make room).
    let config = ConnectionManagerConfig::new().set_response_timeout(None);
    let manager = ConnectionManager::new_with_config(client.clone(), config)
        .await
        .unwrap();
    let publisher = Publisher::from_manager(manager);
    // Warm up: the script is loaded and the batcher runs.
    publisher
        .publish_encoded(&[1], br#"{"type":"warm","data":{}}"#)
        .await
        .unwrap();

    signal(&server, libc::SIGSTOP);
    let mut queued: Vec<Publish> = Vec::new();
    // Two publishes of a whole batch each: the batcher sends them (two batches on the wire at
    // most) and waits for the frozen server; it takes nothing more meanwhile.
    let small = br#"{"type":"small","data":{}}"#;
    let blockers: Vec<Vec<u64>> = (1..=2u64)
        .map(|b| (0..BATCH_USERS).map(|u| b * 1_000_000 + u).collect())
        .collect();
    for users in &blockers {
        let mut blocker = publish(&publisher, users.clone(), small.to_vec());
        assert!(
            poll_once(&mut blocker).await.is_pending(),
            "answered while frozen"
        );
        queued.push(blocker);
    }
    // Big events queue until their bytes reach the bound…
    let fit = QUEUE_BYTES / BIG;
    assert_eq!(fit, 16);
    for n in 0..fit {
        let mut big = publish(&publisher, vec![big_user(n)], big_event(n));
        match poll_once(&mut big).await {
            Poll::Pending => queued.push(big),
            Poll::Ready(answer) => panic!("big event {n} of {fit} not queued: {answer:?}"),
        }
    }
    // …and the next one is refused at once, the server still frozen.
    let mut beyond = publish(&publisher, vec![big_user(fit)], big_event(fit));
    match poll_once(&mut beyond).await {
        Poll::Ready(Err(e)) => {
            assert_eq!(e.kind(), redis::ErrorKind::Io, "{e}");
            assert!(e.to_string().contains("queue full"), "{e}");
        }
        Poll::Ready(Ok(report)) => panic!("published while frozen: {report:?}"),
        Poll::Pending => panic!("the publish beyond the bound was queued (waits for Redis)"),
    }
    drop(beyond);

    signal(&server, libc::SIGCONT);
    let reports = tokio::time::timeout(LIMIT, futures_util::future::join_all(queued))
        .await
        .expect("queued publishes still unanswered after Redis resumed");
    let mut reports = reports
        .into_iter()
        .map(|r| r.expect("a queued publish failed"));
    for users in &blockers {
        let report = reports.next().unwrap();
        let ids: Vec<u64> = report.ids.iter().map(|(user, _)| *user).collect();
        assert_eq!(&ids, users);
    }
    // Every big event is stored once, byte for byte, under the id its publish was answered.
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    for (n, report) in reports.enumerate() {
        let stored = history(&mut conn, big_user(n)).await;
        assert_eq!(stored.len(), 1, "big event {n}: {} entries", stored.len());
        assert_eq!(stored[0].0, stream_id(&report), "big event {n}: id");
        assert!(stored[0].1 == big_event(n), "big event {n} stored altered");
    }
    for users in &blockers {
        for &user in [users.first(), users.last()].into_iter().flatten() {
            assert_eq!(history(&mut conn, user).await.len(), 1, "user {user}");
        }
    }
    // The refused publish left nothing; sent again, it is published.
    assert!(history(&mut conn, big_user(fit)).await.is_empty());
    let report = tokio::time::timeout(
        LIMIT,
        publisher.publish_encoded(&[big_user(fit)], &big_event(fit)),
    )
    .await
    .expect("publish after Redis resumed")
    .unwrap();
    let stored = history(&mut conn, big_user(fit)).await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].0, stream_id(&report));
    assert!(stored[0].1 == big_event(fit));
}
