//! A steady stream of events through `POST /v1/publish` on the nodes' admin ports (history on,
//! so every event gets an id). One event per tick, to one user in turn, sent by a pool of
//! workers on keep-alive connections to a ready node (alternating, as a load balancer in front
//! of the admin service would); a 503, a refused or broken connection or a timeout is retried on
//! the other node until the publish is acknowledged or its retry bound passes. Each acknowledged
//! id is recorded with its user and the instant its request was sent.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use gleepost_event::EventId;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, Mutex};
use tokio::task::JoinSet;

use super::records::{Ack, Records};
use super::world::AddressBook;
use crate::http::read_response;
use crate::API_KEY;

/// Concurrent publish requests.
const WORKERS: usize = 32;
/// Longest time one publish is retried before it is given up.
const RETRY_FOR: Duration = Duration::from_secs(30);
/// Longest wait for one answer.
const ANSWER_WITHIN: Duration = Duration::from_secs(5);

/// What to publish.
#[derive(Clone, Debug)]
pub struct Stream {
    /// Events per second (all users together).
    pub rate: u32,
    /// Recipients, one per event in turn, with the padding of their events' data in bytes.
    pub users: Vec<(u64, usize)>,
}

/// The running publisher.
pub struct Publisher {
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
    /// Ticks dropped because every worker was busy and the queue full.
    pub skipped: Arc<AtomicU64>,
}

struct Job {
    user: u64,
    pad: usize,
    seq: u64,
}

impl Publisher {
    /// Start publishing `stream`.
    pub fn start(stream: Stream, book: Arc<AddressBook>, records: Arc<Records>) -> Publisher {
        let (stop, stopped) = watch::channel(false);
        let (jobs, queue) = mpsc::channel::<Job>(4 * WORKERS);
        let queue = Arc::new(Mutex::new(queue));
        let skipped = Arc::new(AtomicU64::new(0));
        let mut tasks = JoinSet::new();
        tasks.spawn(ticker(stream, jobs, stopped, skipped.clone()));
        for w in 0..WORKERS {
            let worker = Worker {
                first: w % 2,
                book: book.clone(),
                records: records.clone(),
                conns: HashMap::new(),
            };
            tasks.spawn(worker.run(queue.clone()));
        }
        Publisher {
            stop,
            tasks,
            skipped,
        }
    }

    /// Stop ticking and wait (bounded) for the publishes in progress to finish.
    pub async fn stop(mut self) {
        self.stop.send_replace(true);
        let _ = tokio::time::timeout(RETRY_FOR + ANSWER_WITHIN, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        self.tasks.abort_all();
    }
}

async fn ticker(
    stream: Stream,
    jobs: mpsc::Sender<Job>,
    mut stopped: watch::Receiver<bool>,
    skipped: Arc<AtomicU64>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1) / stream.rate.max(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut seq = 0u64;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopped.changed() => return,
        }
        let (user, pad) = stream.users[seq as usize % stream.users.len()];
        seq += 1;
        if jobs.try_send(Job { user, pad, seq }).is_err() {
            skipped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

struct Worker {
    first: usize,
    book: Arc<AddressBook>,
    records: Arc<Records>,
    /// Keep-alive connection per admin address.
    conns: HashMap<String, TcpStream>,
}

impl Worker {
    async fn run(mut self, queue: Arc<Mutex<mpsc::Receiver<Job>>>) {
        loop {
            let job = queue.lock().await.recv().await;
            let Some(job) = job else { return };
            self.publish(job).await;
        }
    }

    /// The node to try on `attempt`: ready nodes first, alternating from this worker's first.
    fn pick(&self, attempt: usize) -> Option<String> {
        let order = [(self.first + attempt) % 2, (self.first + attempt + 1) % 2];
        let ready = order.iter().find(|&&i| self.book.is_ready(i));
        ready
            .or_else(|| order.first())
            .and_then(|&i| self.book.admin(i))
            .or_else(|| self.book.admin(order[1]))
    }

    async fn publish(&mut self, job: Job) {
        let body = format!(
            r#"{{"users":[{}],"event":{{"type":"message","location":"/conversations/1","data":{{"seq":{},"pad":"{}"}}}}}}"#,
            job.user,
            job.seq,
            "x".repeat(job.pad)
        );
        let deadline = Instant::now() + RETRY_FOR;
        for attempt in 0.. {
            if let Some(admin) = self.pick(attempt) {
                let sent = Instant::now();
                match self.request(&admin, &body, job.user).await {
                    Ok(id) => {
                        self.records.ack(Ack {
                            user: job.user,
                            raw: id.0,
                            id: id.1,
                            sent,
                        });
                        return;
                    }
                    Err(_) => {
                        self.conns.remove(&admin);
                    }
                }
            }
            if Instant::now() > deadline {
                self.records.abandon(Instant::now());
                return;
            }
            self.records.retry(Instant::now());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// One request on the keep-alive connection to `admin`; the id for `user` on a 200.
    async fn request(&mut self, admin: &str, body: &str, user: u64) -> Result<(String, EventId)> {
        // One write for head and body (two small writes would meet Nagle and delayed ACKs).
        let request = format!(
            "POST /v1/publish HTTP/1.1\r\nHost: {admin}\r\nAuthorization: Bearer {API_KEY}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let mut stream = match self.conns.remove(admin) {
            Some(stream) => stream,
            None => {
                let stream = tokio::time::timeout(ANSWER_WITHIN, TcpStream::connect(admin))
                    .await
                    .context("connect timed out")??;
                stream.set_nodelay(true)?;
                stream
            }
        };
        let response = tokio::time::timeout(ANSWER_WITHIN, async {
            stream.write_all(request.as_bytes()).await?;
            read_response(&mut stream).await
        })
        .await
        .context("no answer in time")??;
        let keep = !response
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        if keep {
            self.conns.insert(admin.to_owned(), stream);
        }
        if response.status != 200 {
            bail!("publish answered {}", response.status);
        }
        let json = response.json()?;
        let raw = json["ids"][user.to_string()]
            .as_str()
            .with_context(|| format!("no id for user {user} in {json}"))?
            .to_owned();
        let id = EventId::parse(&raw).with_context(|| format!("not an event id: {raw}"))?;
        Ok((raw, id))
    }
}
