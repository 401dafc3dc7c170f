//! The Redis connection under Sentinel: the primary of a monitored master name, found through
//! the sentinels and checked with `ROLE` before use.
//!
//! [`SentinelConn`] holds one multiplexed connection to the current primary. It asks the
//! sentinels (`SENTINEL get-master-addr-by-name`) on first use, and again after the connection
//! failed, after a write answered `READONLY` (the node was demoted; such a command did not run,
//! so it is sent once more to the new primary), and whenever its owner calls
//! [`SentinelConn::refresh`] (a `+switch-master` seen on the sentinels, a reconnect of pub/sub).
//! A node the sentinels name but whose `ROLE` is not `master` is never used: a demoted primary
//! that comes back as a replica is never written to. Every step is bounded by the timeout, so
//! while no primary is usable commands fail quickly instead of hanging.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{
    AsyncConnectionConfig, Cmd, ConnectionAddr, ConnectionInfo, ErrorKind, IntoConnectionInfo,
    Pipeline, RedisConnectionInfo, RedisError, RedisFuture, RedisResult, ServerErrorKind, Value,
};
use tokio::sync::watch;

/// `host:port` of a Redis node.
pub type NodeAddr = (String, u16);

/// A connection to the primary of a Sentinel-monitored master. Cheap to clone; clones share
/// the connection.
#[derive(Clone)]
pub struct SentinelConn {
    inner: Arc<Inner>,
}

struct Inner {
    sentinels: Vec<ConnectionInfo>,
    master: String,
    /// Credentials and database of the data nodes.
    node: RedisConnectionInfo,
    timeout: Duration,
    /// The primary's response timeout.
    response_timeout: Duration,
    current: Mutex<Option<Primary>>,
    /// One discovery at a time; the others wait for its result.
    discovering: tokio::sync::Mutex<()>,
    /// The primary last found (for the subscriber, which moves its pub/sub connection).
    primary_tx: watch::Sender<Option<NodeAddr>>,
    /// The sentinel asked first next time (rotates after a failure).
    next: AtomicUsize,
    /// Bumped by every discovery: an error on an older connection does not drop a newer one.
    generation: AtomicUsize,
}

#[derive(Clone)]
struct Primary {
    addr: NodeAddr,
    conn: MultiplexedConnection,
    generation: usize,
}

impl SentinelConn {
    /// The primary of `master` through `sentinel_urls` (`redis://[user:pass@]host:port`, the
    /// sentinels' own credentials); `node` carries the data nodes' credentials and database.
    /// Nothing is connected until first use. `timeout` bounds each step (asking a sentinel,
    /// connecting, a response).
    pub fn new(
        sentinel_urls: &[String],
        master: &str,
        node: RedisConnectionInfo,
        timeout: Duration,
    ) -> RedisResult<SentinelConn> {
        Self::with_timeouts(sentinel_urls, master, node, timeout, timeout)
    }

    /// [`SentinelConn::new`] with a response timeout of its own for the primary's commands,
    /// for callers that bound each request themselves (some legitimately take longer than
    /// finding a primary may). A response timeout counts as a failed primary: it is asked for
    /// again.
    pub fn with_timeouts(
        sentinel_urls: &[String],
        master: &str,
        node: RedisConnectionInfo,
        timeout: Duration,
        response_timeout: Duration,
    ) -> RedisResult<SentinelConn> {
        let sentinels = sentinel_urls
            .iter()
            .map(|u| {
                let info = u.as_str().into_connection_info()?;
                Ok(info.set_tcp_settings(crate::conn::tcp_settings()))
            })
            .collect::<RedisResult<Vec<_>>>()?;
        if sentinels.is_empty() {
            return Err((ErrorKind::EmptySentinelList, "no sentinel URL given").into());
        }
        Ok(SentinelConn {
            inner: Arc::new(Inner {
                sentinels,
                master: master.to_string(),
                node,
                timeout,
                response_timeout,
                current: Mutex::new(None),
                discovering: tokio::sync::Mutex::new(()),
                primary_tx: watch::channel(None).0,
                next: AtomicUsize::new(0),
                generation: AtomicUsize::new(0),
            }),
        })
    }

    /// The monitored master name.
    pub fn master_name(&self) -> &str {
        &self.inner.master
    }

    /// The sentinels' connection settings.
    pub fn sentinels(&self) -> &[ConnectionInfo] {
        &self.inner.sentinels
    }

    /// Connection settings of the data node at `addr` (the data nodes' credentials).
    pub fn node_info(&self, addr: &NodeAddr) -> ConnectionInfo {
        let (host, port) = addr;
        // The sentinels' TCP settings, the node's address and credentials (`new` refuses an
        // empty sentinel list).
        self.inner.sentinels[0]
            .clone()
            .set_addr(ConnectionAddr::Tcp(host.clone(), *port))
            .set_redis_settings(self.inner.node.clone())
    }

    /// Changes of the primary in use (`None` until one was found).
    pub fn primary_changes(&self) -> watch::Receiver<Option<NodeAddr>> {
        self.inner.primary_tx.subscribe()
    }

    /// The primary in use, found through the sentinels first when there is none.
    pub async fn primary_addr(&self) -> RedisResult<NodeAddr> {
        Ok(self.primary().await?.addr)
    }

    /// Ask the sentinels again and move to the primary they name (after a `+switch-master`,
    /// or before opening a pub/sub connection after a failure). When no sentinel names a
    /// usable primary, the current one (if any) is kept: sentinels being away is no reason to
    /// leave a working primary.
    pub async fn refresh(&self) -> RedisResult<NodeAddr> {
        let _one = self.inner.discovering.lock().await;
        match self.discover().await {
            Ok(primary) => Ok(self.install(primary)),
            Err(e) => match self.lock_current().as_ref() {
                Some(current) => Ok(current.addr.clone()),
                None => Err(e),
            },
        }
    }

    /// Make `primary` the one in use and announce it.
    fn install(&self, primary: Primary) -> NodeAddr {
        let addr = primary.addr.clone();
        *self.lock_current() = Some(primary);
        self.inner.primary_tx.send_replace(Some(addr.clone()));
        addr
    }

    /// What the sentinels say the primary is now (no connection to it is made).
    pub async fn ask_sentinels(&self) -> RedisResult<NodeAddr> {
        let n = self.inner.sentinels.len();
        let first = self.inner.next.load(Ordering::Relaxed);
        let mut last = None;
        for i in 0..n {
            let index = (first + i) % n;
            match self.ask(index).await {
                Ok(addr) => return Ok(addr),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| (ErrorKind::EmptySentinelList, "no sentinel").into()))
    }

    fn lock_current(&self) -> std::sync::MutexGuard<'_, Option<Primary>> {
        self.inner.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current primary, discovering one when there is none.
    async fn primary(&self) -> RedisResult<Primary> {
        if let Some(p) = self.lock_current().clone() {
            return Ok(p);
        }
        let _one = self.inner.discovering.lock().await;
        if let Some(p) = self.lock_current().clone() {
            return Ok(p);
        }
        let primary = self.discover().await?;
        self.install(primary.clone());
        Ok(primary)
    }

    /// Forget the primary of `generation` (its connection failed or it was demoted).
    fn lost(&self, generation: usize) {
        let mut current = self.lock_current();
        if current.as_ref().is_some_and(|p| p.generation == generation) {
            *current = None;
        }
    }

    /// Ask each sentinel in turn for the primary and connect to the first one named whose
    /// `ROLE` is `master`.
    async fn discover(&self) -> RedisResult<Primary> {
        let n = self.inner.sentinels.len();
        let first = self.inner.next.load(Ordering::Relaxed);
        let mut problems = Vec::new();
        for i in 0..n {
            let index = (first + i) % n;
            let attempt = async {
                let addr = self.ask(index).await?;
                let conn = self.connect_primary(&addr).await?;
                Ok::<_, RedisError>(Primary {
                    addr,
                    conn,
                    generation: self.inner.generation.fetch_add(1, Ordering::Relaxed) + 1,
                })
            };
            match attempt.await {
                Ok(primary) => {
                    self.inner.next.store(index, Ordering::Relaxed);
                    return Ok(primary);
                }
                Err(e) => problems.push(format!("sentinel {}: {e}", self.sentinel_name(index))),
            }
        }
        self.inner.next.store((first + 1) % n, Ordering::Relaxed);
        Err(RedisError::from((
            ErrorKind::MasterNameNotFoundBySentinel,
            "no usable Redis primary",
            format!("master {:?}: {}", self.inner.master, problems.join("; ")),
        )))
    }

    fn sentinel_name(&self, index: usize) -> String {
        match self.inner.sentinels[index].addr() {
            ConnectionAddr::Tcp(host, port) => format!("{host}:{port}"),
            other => format!("{other:?}"),
        }
    }

    /// A connection's settings, with `response` as its response timeout.
    fn config(&self, response: Duration) -> AsyncConnectionConfig {
        AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.inner.timeout))
            .set_response_timeout(Some(response))
    }

    /// `SENTINEL get-master-addr-by-name` on sentinel `index`.
    async fn ask(&self, index: usize) -> RedisResult<NodeAddr> {
        let client = redis::Client::open(self.inner.sentinels[index].clone())?;
        let ask = async {
            let mut conn = client
                .get_multiplexed_async_connection_with_config(&self.config(self.inner.timeout))
                .await?;
            redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg(&self.inner.master)
                .query_async::<Option<(String, u16)>>(&mut conn)
                .await
        };
        let answer = tokio::time::timeout(self.inner.timeout * 2, ask)
            .await
            .map_err(|_| RedisError::from((ErrorKind::Io, "sentinel did not answer in time")))??;
        answer.ok_or_else(|| {
            (
                ErrorKind::MasterNameNotFoundBySentinel,
                "the sentinel does not monitor this master name",
            )
                .into()
        })
    }

    /// Connect to `addr` and check that its `ROLE` is `master`.
    async fn connect_primary(&self, addr: &NodeAddr) -> RedisResult<MultiplexedConnection> {
        let client = redis::Client::open(self.node_info(addr))?;
        let connect = async {
            let mut conn = client
                .get_multiplexed_async_connection_with_config(
                    &self.config(self.inner.response_timeout),
                )
                .await?;
            let role: Value = redis::cmd("ROLE").query_async(&mut conn).await?;
            Ok::<_, RedisError>((conn, role_name(&role)))
        };
        let (conn, role) = tokio::time::timeout(self.inner.timeout * 2, connect)
            .await
            .map_err(|_| RedisError::from((ErrorKind::Io, "primary did not answer in time")))??;
        if role.as_deref() != Some("master") {
            return Err(RedisError::from((
                ErrorKind::Server(ServerErrorKind::ReadOnly),
                "named as primary but its ROLE is not master",
                format!(
                    "{}:{} has ROLE {}",
                    addr.0,
                    addr.1,
                    role.as_deref().unwrap_or("?")
                ),
            )));
        }
        Ok(conn)
    }

    /// What to do after `error` on the connection of `generation`: forget the primary when the
    /// connection failed or the node was demoted; true when the command did not run and may
    /// be sent again (`READONLY`).
    fn on_error(&self, error: &RedisError, generation: usize) -> bool {
        let demoted = error.kind() == ErrorKind::Server(ServerErrorKind::ReadOnly);
        if demoted
            || error.is_io_error()
            || error.is_connection_dropped()
            || error.is_connection_refusal()
            || error.is_timeout()
        {
            self.lost(generation);
        }
        demoted
    }
}

/// The first element of a `ROLE` reply (`master`, `slave`, `sentinel`).
fn role_name(reply: &Value) -> Option<String> {
    let Value::Array(items) = reply else {
        return None;
    };
    match items.first()? {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// True when a reply is a `READONLY` error (a demoted primary).
fn readonly_reply(value: &Value) -> bool {
    matches!(value, Value::ServerError(e) if e.kind() == Some(ServerErrorKind::ReadOnly))
}

impl ConnectionLike for SentinelConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let mut resent = false;
            loop {
                let mut primary = self.primary().await?;
                let reply = primary.conn.req_packed_command(cmd).await;
                let again = match &reply {
                    Err(e) => self.on_error(e, primary.generation),
                    Ok(v) if readonly_reply(v) => {
                        self.lost(primary.generation);
                        true
                    }
                    Ok(_) => false,
                };
                if !again || resent {
                    return reply;
                }
                resent = true;
            }
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let mut resent = false;
            loop {
                let mut primary = self.primary().await?;
                let reply = primary
                    .conn
                    .req_packed_commands(pipeline, offset, count)
                    .await;
                let again = match &reply {
                    Err(e) => self.on_error(e, primary.generation),
                    // A demoted node refuses every write of the pipeline: none of it ran.
                    Ok(values) if values.iter().any(readonly_reply) => {
                        self.lost(primary.generation);
                        true
                    }
                    Ok(_) => false,
                };
                if !again || resent {
                    return reply;
                }
                resent = true;
            }
        })
    }

    fn get_db(&self) -> i64 {
        self.inner.node.db()
    }
}

#[cfg(test)]
mod tests;
