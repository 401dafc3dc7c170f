//! One standalone Redis server behind redis-rs's [`ConnectionManager`], rebuilt when its
//! connection cannot be re-established for a reason that is not I/O.
//!
//! The manager reconnects by itself after I/O errors only: a reconnect that fails otherwise
//! (the server refused the password: `AuthenticationFailed`) stays its connection's result,
//! returned to every request from then on, so a password rotated on the server (or a brief
//! `requirepass` mix-up) would leave the process failing until restarted. Such an error makes
//! the next request after [`REBUILD_AFTER`] start a fresh manager (one connection attempt per
//! interval, not per request).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, RedisResult, Value};

/// Least time between two rebuilds.
const REBUILD_AFTER: Duration = Duration::from_secs(1);

/// A reconnecting connection to one server. Cheap to clone (clones share the manager).
#[derive(Clone)]
pub struct SingleConn {
    shared: Arc<Shared>,
}

struct Shared {
    /// How to build a new manager; `None` for one handed in (never rebuilt).
    builder: Option<(redis::Client, ConnectionManagerConfig)>,
    current: Mutex<Current>,
}

struct Current {
    manager: ConnectionManager,
    /// When this manager was built, and whether it failed in a way only a rebuild fixes.
    built: Instant,
    stuck: bool,
}

impl SingleConn {
    /// A connection to `client`'s server with `config`; nothing connects before the first
    /// request.
    pub fn lazy(client: redis::Client, config: ConnectionManagerConfig) -> RedisResult<Self> {
        let manager = ConnectionManager::new_lazy_with_config(client.clone(), config.clone())?;
        Ok(SingleConn::with(manager, Some((client, config))))
    }

    /// A manager already built from `client` and `config` (e.g. connected eagerly), rebuilt
    /// from them when needed.
    pub fn from_parts(
        manager: ConnectionManager,
        client: redis::Client,
        config: ConnectionManagerConfig,
    ) -> Self {
        SingleConn::with(manager, Some((client, config)))
    }

    /// Wraps a manager built elsewhere: it is used as it is, never rebuilt.
    pub fn from_manager(manager: ConnectionManager) -> Self {
        SingleConn::with(manager, None)
    }

    fn with(
        manager: ConnectionManager,
        builder: Option<(redis::Client, ConnectionManagerConfig)>,
    ) -> Self {
        let current = Current {
            manager,
            built: Instant::now(),
            stuck: false,
        };
        SingleConn {
            shared: Arc::new(Shared {
                builder,
                current: Mutex::new(current),
            }),
        }
    }

    /// The manager to use now: a fresh one when the current one is stuck and was built long
    /// enough ago.
    fn manager(&self) -> ConnectionManager {
        // The state stays consistent whatever panicked while holding the lock.
        let mut current = self
            .shared
            .current
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let (true, Some((client, config))) = (current.stuck, &self.shared.builder) {
            if current.built.elapsed() >= REBUILD_AFTER {
                // A lazy manager only checks what built the first one (the same client and
                // settings): on an error the current one stays, and the next request retries.
                if let Ok(manager) =
                    ConnectionManager::new_lazy_with_config(client.clone(), config.clone())
                {
                    *current = Current {
                        manager,
                        built: Instant::now(),
                        stuck: false,
                    };
                }
            }
        }
        current.manager.clone()
    }

    /// Note a request's error: one that only a new connection fixes marks the manager stuck.
    fn observe<T>(&self, result: &Result<T, RedisError>) {
        if let Err(e) = result {
            if e.kind() == ErrorKind::AuthenticationFailed {
                let mut current = self
                    .shared
                    .current
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                current.stuck = true;
            }
        }
    }

    /// The database of the connection.
    pub(crate) fn get_db(&self) -> i64 {
        self.manager().get_db()
    }

    /// Send one command.
    pub(crate) fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let mut manager = self.manager();
        Box::pin(async move {
            let result = manager.req_packed_command(cmd).await;
            self.observe(&result);
            result
        })
    }

    /// Send a pipeline.
    pub(crate) fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        let mut manager = self.manager();
        Box::pin(async move {
            let result = manager.req_packed_commands(pipeline, offset, count).await;
            self.observe(&result);
            result
        })
    }
}
