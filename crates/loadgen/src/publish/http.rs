//! `POST /v1/publish` (`--publish http`, one event per request) or `POST /v1/publish/batch`
//! (`--publish http-batch`, what is queued for the connection, up to `--batch-size` events per
//! request) over a few keep-alive HTTP/1.1 connections, or as streams of HTTP/2 connections
//! with `--http2` (hyper client; 100 lanes per connection, the gateway's stream limit). Events
//! for a given user always go through the same lane, one request at a time, so per-user
//! publish order equals sequence order. An event's `t` is taken when the rate loop hands it to
//! its lane's queue, not when the request is sent: time spent queued behind a slow publish API
//! counts into the latency (no coordinated omission), as Redis-side queueing does for the Redis
//! publishers. A batch request is sent as soon as the connection is free, with whatever is
//! queued then: it never waits for more events.

use std::sync::Arc;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use http::{HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::{batch, push_u64, Acks, EventSpec};
use crate::cli::{PublishArgs, PublishVia};
use crate::stats::now_ns;
use crate::target::{self, Target};

/// Jobs queued per connection before the rate loop waits.
const QUEUE: usize = 4096;
/// `--http2`: lanes per connection, the gateway's `SETTINGS_MAX_CONCURRENT_STREAMS`.
const LANES_PER_HTTP2: u32 = 100;

struct Endpoint {
    target: Target,
    uri: Uri,
    /// `uri` with scheme and authority (HTTP/2's `:scheme` and `:authority`).
    absolute: Uri,
    host: HeaderValue,
    auth: HeaderValue,
    /// `Some(n)`: `http-batch`, at most n events per request.
    batch: Option<usize>,
    /// `--http2`: lanes are streams of HTTP/2 connections.
    http2: bool,
}

/// A lane's handle on its connection.
enum Sender {
    Http1(http1::SendRequest<Full<Bytes>>),
    Http2(http2::SendRequest<Full<Bytes>>),
}

impl Sender {
    fn is_closed(&self) -> bool {
        match self {
            Sender::Http1(s) => s.is_closed(),
            Sender::Http2(s) => s.is_closed(),
        }
    }
}

/// One queued event: user index, sequence, `t` (ns since base) taken when it was queued.
type Job = (u32, u64, u64);

/// HTTP publishing backend.
pub(crate) struct HttpPublisher {
    workers: Vec<mpsc::Sender<Job>>,
}

impl HttpPublisher {
    /// Validates the endpoint, opens the connections and starts one worker per connection.
    pub(crate) async fn connect(
        args: &PublishArgs,
        spec: EventSpec,
        first_user: u64,
        acks: Arc<Acks>,
    ) -> Result<Self> {
        let Some(key) = &args.api_key else {
            bail!("--publish http and http-batch need --api-key (or GATEWAY_API_KEY)");
        };
        let target = target::parse(&args.admin_url, "http", 80)?;
        let base = target.path.trim_end_matches('/');
        let (path, batch) = match args.publish {
            PublishVia::HttpBatch => ("/v1/publish/batch", Some(args.batch_size.max(1) as usize)),
            _ => ("/v1/publish", None),
        };
        let ep = Arc::new(Endpoint {
            uri: format!("{base}{path}").parse().context("admin URL path")?,
            absolute: format!("http://{}{base}{path}", target.host_header)
                .parse()
                .context("admin URL")?,
            host: HeaderValue::from_str(&target.host_header).context("admin URL host")?,
            auth: HeaderValue::from_str(&format!("Bearer {key}")).context("API key")?,
            batch,
            http2: args.http2,
            target,
        });
        let spec = Arc::new(spec);
        let mut workers = Vec::new();
        let mut shared = None;
        for lane in 0..args.http_connections.max(1) {
            let sender = match &shared {
                Some(Sender::Http2(s)) if lane % LANES_PER_HTTP2 != 0 => Sender::Http2(s.clone()),
                _ => open(&ep).await.with_context(|| {
                    format!("connecting to the admin API at {}", ep.target.addr)
                })?,
            };
            if let Sender::Http2(s) = &sender {
                shared = Some(Sender::Http2(s.clone()));
            }
            let (tx, rx) = mpsc::channel(QUEUE);
            tokio::spawn(worker(
                ep.clone(),
                sender,
                rx,
                acks.clone(),
                spec.clone(),
                first_user,
            ));
            workers.push(tx);
        }
        Ok(HttpPublisher { workers })
    }

    /// Queues a batch, stamping each event as it is queued (waits when a connection's queue is
    /// full; that wait counts into the event's latency too).
    pub(crate) async fn send(&mut self, batch: &[(u32, u64)]) -> Result<()> {
        let k = self.workers.len();
        for &(ui, seq) in batch {
            self.workers[ui as usize % k]
                .send((ui, seq, now_ns()))
                .await
                .context("HTTP publish worker stopped")?;
        }
        Ok(())
    }
}

/// A new connection (after a failure, each lane of `--http2` opens its own).
async fn open(ep: &Endpoint) -> Result<Sender> {
    let stream = TcpStream::connect(ep.target.addr).await?;
    stream.set_nodelay(true)?;
    let io = TokioIo::new(stream);
    if ep.http2 {
        let (sender, conn) = http2::handshake(TokioExecutor::new(), io).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        return Ok(Sender::Http2(sender));
    }
    let (sender, conn) = http1::handshake(io).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(Sender::Http1(sender))
}

async fn worker(
    ep: Arc<Endpoint>,
    sender: Sender,
    mut rx: mpsc::Receiver<Job>,
    acks: Arc<Acks>,
    spec: Arc<EventSpec>,
    first_user: u64,
) {
    let mut sender = Some(sender);
    let mut body = Vec::with_capacity(1024);
    let most = ep.batch.unwrap_or(1);
    let mut jobs: Vec<Job> = Vec::with_capacity(most);
    while let Some(job) = rx.recv().await {
        // What is queued now, never waiting for more.
        jobs.clear();
        jobs.push(job);
        while jobs.len() < most {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let n = jobs.len() as u64;
        if sender.as_ref().is_none_or(|s| s.is_closed()) {
            match open(&ep).await {
                Ok(s) => sender = Some(s),
                Err(e) => {
                    acks.errors_n(n, || format!("connecting to the admin API: {e:#}"));
                    sender = None;
                    continue;
                }
            }
        }
        let Some(s) = sender.as_mut() else { continue };
        body.clear();
        if ep.batch.is_some() {
            batch::write_body(&mut body, &spec, first_user, &jobs);
        } else {
            let (ui, seq, t) = job;
            let user = first_user + u64::from(ui);
            body.extend_from_slice(b"{\"users\":[");
            push_u64(&mut body, user);
            body.extend_from_slice(b"],\"event\":");
            spec.write_event(&mut body, seq, t, user);
            body.push(b'}');
        }
        acks.request(n);
        acks.sending(jobs.iter().map(|&(_, _, t)| t));
        let answer = post(&ep, s, &body).await;
        if answer.is_ok() {
            acks.answered(jobs.iter().map(|&(_, _, t)| t));
        }
        match answer {
            Ok(reply) if ep.batch.is_some() => match batch::parse_reply(&reply, jobs.len()) {
                Ok(results) => {
                    for (&(ui, _, _), r) in jobs.iter().zip(results) {
                        match r {
                            Ok(()) => {
                                acks.ok(1);
                                acks.accepted(ui);
                            }
                            Err(e) => acks.error(|| e),
                        }
                    }
                }
                Err(e) => acks.errors_n(n, || e),
            },
            Ok(_) => {
                acks.ok(1);
                acks.accepted(job.0);
            }
            Err(e) => {
                acks.errors_n(n, || format!("{e:#}"));
                if s.is_closed() {
                    sender = None;
                }
            }
        }
    }
}

/// Sends one request; returns the body of a 200 reply, an error for anything else.
async fn post(ep: &Endpoint, s: &mut Sender, body: &[u8]) -> Result<Bytes> {
    let mut req = Request::new(Full::new(Bytes::copy_from_slice(body)));
    *req.method_mut() = Method::POST;
    *req.uri_mut() = ep.uri.clone();
    let h = req.headers_mut();
    h.insert(HOST, ep.host.clone());
    h.insert(AUTHORIZATION, ep.auth.clone());
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let resp = match s {
        Sender::Http1(s) => {
            s.ready().await.context("admin API connection")?;
            s.send_request(req).await
        }
        Sender::Http2(s) => {
            // HTTP/2 requests carry no `Host`; the URI's authority stands in for it.
            req.headers_mut().remove(HOST);
            *req.uri_mut() = ep.absolute.clone();
            s.ready().await.context("admin API connection")?;
            s.send_request(req).await
        }
    }
    .context("publish request")?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .context("publish response")?
        .to_bytes();
    if status != StatusCode::OK {
        let text = String::from_utf8_lossy(&body).into_owned();
        bail!("publish API answered {status}: {}", text.trim());
    }
    Ok(body)
}
