//! Connection pool: opens the WebSocket connections with bounded concurrency and runs one tiny
//! receive task per connection.
//!
//! Hot path per readiness: one `read` into a per-thread 64 KiB buffer (tokio clears readiness
//! on a short read, so no extra `EAGAIN` read), frame parsing in place, field scan, sequence
//! classification and a histogram record. No heap allocation per frame; per-connection state
//! is a socket, a [`FrameReader`] (its carry buffer is only allocated if a frame straddles two
//! reads), a [`SeqTracker`] and a control-frame output buffer used for pongs.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::future::poll_fn;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use crate::scan::Fields;
use crate::stats::{self, new_histogram, Recorder, SeqTracker};
use crate::sys;
use crate::target::Target;
use crate::wsclient::{self, FrameReader, FrameSink, Handshake, MAX_CARRY};

/// Size of the per-thread read buffer (after the carry area).
const READ_BUF: usize = 64 * 1024;
/// Largest accepted handshake response head.
const MAX_HANDSHAKE: usize = 16 * 1024;

thread_local! {
    static BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; MAX_CARRY + READ_BUF].into_boxed_slice());
}

/// What the pool connects to and as whom.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Gateway WebSocket endpoints.
    pub targets: Vec<Target>,
    /// One JWT per user index.
    pub tokens: Vec<String>,
    /// User id of user index 0.
    pub first_user: u64,
    /// Number of connections.
    pub connections: u32,
    /// Handshakes in flight at most.
    pub concurrency: u32,
    /// Timeout of connect + handshake.
    pub connect_timeout: Duration,
    /// Source addresses to bind (round-robin), empty = any.
    pub source_ips: Vec<IpAddr>,
    /// Send the JWT in an `Authorization` header instead of the query.
    pub auth_header: bool,
}

impl PoolConfig {
    /// Number of users.
    pub fn users(&self) -> u32 {
        self.tokens.len().max(1) as u32
    }

    /// User index and target index of connection `i`: user `i % U`; the round `i / U` shifts
    /// the target so that a user's connections land on different targets.
    pub fn assign(&self, i: u32) -> (u32, usize) {
        let users = self.users();
        let (ui, round) = (i % users, i / users);
        let target = (ui as usize + round as usize) % self.targets.len().max(1);
        (ui, target)
    }
}

/// Result of the connect phase.
#[derive(Debug, Clone)]
pub struct ConnectReport {
    /// Connections that completed the upgrade.
    pub established: u64,
    /// Connections that failed (by reason in `errors`).
    pub failed: u64,
    /// Wall time from the first connect to the last result.
    pub elapsed: Duration,
    /// Connect + handshake latency in µs of established connections.
    pub handshake_us: Histogram<u64>,
    /// Established connections per user index.
    pub conns_per_user: Vec<u32>,
    /// Failure reasons and counts.
    pub errors: BTreeMap<String, u64>,
}

/// The open connections' receive tasks.
#[derive(Debug, Default)]
pub struct Pool {
    handles: Vec<JoinHandle<()>>,
}

impl Pool {
    /// Closes every connection (drops its socket) and waits briefly for the tasks to end.
    pub async fn close(self) {
        for h in &self.handles {
            h.abort();
        }
        for h in self.handles {
            let _ = tokio::time::timeout(Duration::from_secs(1), h).await;
        }
    }
}

/// Why a connection could not be established.
#[derive(Debug)]
enum ConnError {
    Io(io::Error),
    Timeout,
    Status(u16),
    Protocol(&'static str),
}

impl ConnError {
    fn label(&self) -> String {
        match self {
            ConnError::Io(e) => format!("io: {}", e.kind()),
            ConnError::Timeout => "timeout".into(),
            ConnError::Status(s) => format!("http status {s}"),
            ConnError::Protocol(p) => format!("protocol: {p}"),
        }
    }
}

impl From<io::Error> for ConnError {
    fn from(e: io::Error) -> Self {
        ConnError::Io(e)
    }
}

type Outcome = (u32, Result<Duration, ConnError>);

/// Opens all connections (at most `concurrency` handshakes at once) and returns once every one
/// has succeeded or failed. Established connections keep receiving until [`Pool::close`].
pub async fn connect_all(cfg: Arc<PoolConfig>) -> (Pool, ConnectReport) {
    let sem = Arc::new(Semaphore::new(cfg.concurrency.max(1) as usize));
    let (tx, mut rx) = mpsc::unbounded_channel::<Outcome>();
    let start = Instant::now();
    let mut handles = Vec::with_capacity(cfg.connections as usize);
    for i in 0..cfg.connections {
        let Ok(permit) = sem.clone().acquire_owned().await else {
            break; // the semaphore is never closed
        };
        handles.push(tokio::spawn(conn_task(cfg.clone(), i, permit, tx.clone())));
    }
    drop(tx);
    let mut report = ConnectReport {
        established: 0,
        failed: 0,
        elapsed: Duration::ZERO,
        handshake_us: new_histogram(),
        conns_per_user: vec![0; cfg.users() as usize],
        errors: BTreeMap::new(),
    };
    while let Some((ui, res)) = rx.recv().await {
        match res {
            Ok(took) => {
                report.established += 1;
                report.conns_per_user[ui as usize] += 1;
                report
                    .handshake_us
                    .saturating_record(took.as_micros() as u64);
            }
            Err(e) => {
                report.failed += 1;
                *report.errors.entry(e.label()).or_default() += 1;
            }
        }
    }
    report.elapsed = start.elapsed();
    (Pool { handles }, report)
}

async fn conn_task(
    cfg: Arc<PoolConfig>,
    i: u32,
    permit: OwnedSemaphorePermit,
    tx: mpsc::UnboundedSender<Outcome>,
) {
    let (ui, ti) = cfg.assign(i);
    let start = Instant::now();
    let res = tokio::time::timeout(cfg.connect_timeout, open(&cfg, i, ui, ti)).await;
    drop(permit);
    let (stream, leftover) = match res {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            let _ = tx.send((ui, Err(e)));
            return;
        }
        Err(_) => {
            let _ = tx.send((ui, Err(ConnError::Timeout)));
            return;
        }
    };
    let _ = tx.send((ui, Ok(start.elapsed())));
    drop(tx);
    let mask = i.wrapping_mul(0x9E37_79B9).to_le_bytes();
    let mut conn = Conn {
        reader: FrameReader::default(),
        tracker: SeqTracker::default(),
        out: Vec::new(),
        user: cfg.first_user + u64::from(ui),
        mask,
    };
    drop(cfg);
    conn.run(stream, leftover).await;
}

async fn open(
    cfg: &PoolConfig,
    i: u32,
    ui: u32,
    ti: usize,
) -> Result<(TcpStream, Vec<u8>), ConnError> {
    let target = &cfg.targets[ti];
    let socket = match target.addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if !cfg.source_ips.is_empty() {
        let ip = cfg.source_ips[i as usize % cfg.source_ips.len()];
        sys::set_bind_no_port(socket.as_raw_fd());
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let mut stream = socket.connect(target.addr).await?;
    let mut req = String::with_capacity(256 + cfg.tokens[ui as usize].len());
    wsclient::write_upgrade_request(
        &mut req,
        &target.host_header,
        &target.path,
        &cfg.tokens[ui as usize],
        cfg.auth_header,
    );
    stream.write_all(req.as_bytes()).await?;
    let mut buf = Vec::with_capacity(1024);
    loop {
        if buf.len() >= MAX_HANDSHAKE {
            return Err(ConnError::Protocol("handshake response too large"));
        }
        buf.reserve(1024);
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(ConnError::Protocol("closed during handshake"));
        }
        match wsclient::parse_handshake(&buf) {
            Handshake::Incomplete => continue,
            Handshake::Upgraded(at) => {
                buf.drain(..at);
                return Ok((stream, buf));
            }
            Handshake::Status(s) => return Err(ConnError::Status(s)),
            Handshake::Invalid(why) => return Err(ConnError::Protocol(why)),
        }
    }
}

/// Receive state of one established connection.
struct Conn {
    reader: FrameReader,
    tracker: SeqTracker,
    out: Vec<u8>,
    user: u64,
    mask: [u8; 4],
}

impl Conn {
    async fn run(&mut self, mut stream: TcpStream, leftover: Vec<u8>) {
        let mut alive = leftover.is_empty() || self.process(&leftover).is_ok();
        drop(leftover);
        while alive {
            if !self.out.is_empty() {
                if stream.write_all(&self.out).await.is_err() {
                    break;
                }
                self.out.clear();
            }
            if self.reader.is_closed() {
                break;
            }
            alive = matches!(
                poll_fn(|cx| self.poll_read(&mut stream, cx)).await,
                Ok(true)
            );
        }
        stats::with_local(|r| r.disconnected += 1);
    }

    /// One read into the thread's shared buffer and processing of what arrived.
    /// `Ok(false)` on end of stream.
    fn poll_read(
        &mut self,
        stream: &mut TcpStream,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<bool>> {
        BUF.with(|cell| {
            let mut buf = cell.borrow_mut();
            let mut rb = ReadBuf::new(&mut buf[MAX_CARRY..]);
            match Pin::new(&mut *stream).poll_read(cx, &mut rb) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {}
            }
            let n = rb.filled().len();
            if n == 0 {
                return Poll::Ready(Ok(false));
            }
            let start = self.reader.place_carry(&mut buf, MAX_CARRY);
            Poll::Ready(self.process(&buf[start..MAX_CARRY + n]).map(|()| true))
        })
    }

    fn process(&mut self, data: &[u8]) -> io::Result<()> {
        let now = stats::now_ns();
        let window = stats::window();
        stats::with_local(|rec| {
            let mut sink = Sink {
                rec,
                tracker: &mut self.tracker,
                out: &mut self.out,
                user: self.user,
                now,
                window,
                mask: self.mask,
            };
            self.reader.process(data, &mut sink)
        })
        .map_err(io::Error::other)
    }
}

struct Sink<'a> {
    rec: &'a mut Recorder,
    tracker: &'a mut SeqTracker,
    out: &'a mut Vec<u8>,
    user: u64,
    now: u64,
    window: (u64, u64),
    mask: [u8; 4],
}

impl FrameSink for Sink<'_> {
    #[inline]
    fn message(&mut self, fields: Option<Fields>) {
        self.rec.messages += 1;
        match fields {
            None => self.rec.unparsed += 1,
            Some(f) if f.u != self.user => self.rec.misrouted += 1,
            Some(f) => {
                let class = self.tracker.observe(f.seq);
                self.rec.delivery(class, f.t, self.now, self.window);
            }
        }
    }

    fn ping(&mut self, payload: &[u8]) {
        wsclient::write_control_frame(self.out, wsclient::OP_PONG, payload, self.mask);
    }

    fn close(&mut self, code: Option<u16>) {
        *self
            .rec
            .close_codes
            .entry(code.unwrap_or(1005))
            .or_default() += 1;
        let payload = code.map(u16::to_be_bytes);
        let payload: &[u8] = payload.as_ref().map_or(&[], |p| p.as_slice());
        wsclient::write_control_frame(self.out, wsclient::OP_CLOSE, payload, self.mask);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_spread_over_targets() {
        let t = crate::target::parse("ws://127.0.0.1:1/ws", "ws", 80).unwrap();
        let mut cfg = PoolConfig {
            targets: vec![t.clone(), t],
            tokens: vec![String::new(); 4],
            first_user: 1,
            connections: 8,
            concurrency: 1,
            connect_timeout: Duration::from_secs(1),
            source_ips: vec![],
            auth_header: false,
        };
        // Each user gets one connection per target, whatever the parity of U.
        for users in [4usize, 3, 5] {
            cfg.tokens = vec![String::new(); users];
            let mut seen = std::collections::HashSet::new();
            for i in 0..(2 * users as u32) {
                assert!(seen.insert(cfg.assign(i)), "users={users} i={i}");
            }
        }
    }
}
