//! Gleepost token authentication: a token is valid while the Redis key
//! `users:{id}:token:{token}` (template configurable) exists, as the login service sets it with
//! SETEX. The key's remaining time to live is the connection's credential expiry: the connection
//! is closed with 4001 when it runs out, as for a JWT's `exp`.

use std::time::{Duration, SystemTime};

use gleepost_event::keys::Template;
use gleepost_event::RedisConn;

use super::AuthError;
use crate::registry::UserId;

/// Checks Gleepost tokens against Redis.
#[derive(Clone)]
pub(crate) struct GleepostAuth {
    redis: RedisConn,
    key: Template,
    timeout: Duration,
}

impl GleepostAuth {
    /// A checker using the node's shared Redis command connection.
    pub(crate) fn new(redis: RedisConn, key: Template, timeout: Duration) -> Self {
        GleepostAuth {
            redis,
            key,
            timeout,
        }
    }

    /// `Ok` iff the token's key exists, with the time the key expires (`None`: no TTL); a Redis
    /// that does not answer in time is `Unavailable`.
    pub(crate) async fn check(
        &self,
        user: UserId,
        token: &str,
    ) -> Result<Option<SystemTime>, AuthError> {
        if token.contains(|c: char| c.is_whitespace() || c.is_control()) {
            return Err(AuthError::Invalid("gp_malformed_token"));
        }
        let key = self.key.render_token(user, token);
        let mut conn = self.redis.clone();
        let checked_at = SystemTime::now();
        // PTTL: -2 no such key, -1 no expiry, else milliseconds left. Only an integer reply
        // counts: a string that reads like one is not a time to live (redis-rs would convert it).
        let ttl = tokio::time::timeout(self.timeout, async {
            redis::cmd("PTTL")
                .arg(&key)
                .query_async::<redis::Value>(&mut conn)
                .await
        })
        .await;
        match ttl {
            Ok(Ok(redis::Value::Int(-1))) => Ok(None),
            Ok(Ok(redis::Value::Int(ms @ 0..))) => {
                Ok(Some(checked_at + Duration::from_millis(ms as u64)))
            }
            Ok(Ok(redis::Value::Int(_))) => Err(AuthError::Invalid("gp_unknown_token")),
            Ok(Ok(other)) => {
                tracing::warn!(reply = ?other, "token check: PTTL answered a non-integer");
                Err(AuthError::Unavailable)
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "token check failed");
                Err(AuthError::Unavailable)
            }
            Err(_) => {
                tracing::warn!("token check timed out");
                Err(AuthError::Unavailable)
            }
        }
    }
}
