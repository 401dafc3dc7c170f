//! Gleepost token authentication: a token is valid while the Redis key
//! `users:{id}:token:{token}` (template configurable) exists, as the login service sets it with
//! SETEX.

use std::time::Duration;

use gleepost_event::keys::Template;
use redis::aio::ConnectionManager;

use super::AuthError;
use crate::registry::UserId;

/// Checks Gleepost tokens against Redis.
#[derive(Clone)]
pub struct GleepostAuth {
    redis: ConnectionManager,
    key: Template,
    timeout: Duration,
}

impl GleepostAuth {
    /// A checker using the node's shared Redis command connection.
    pub fn new(redis: ConnectionManager, key: Template, timeout: Duration) -> Self {
        GleepostAuth {
            redis,
            key,
            timeout,
        }
    }

    /// `Ok` iff the token's key exists; a Redis that does not answer in time is `Unavailable`.
    pub async fn check(&self, user: UserId, token: &str) -> Result<(), AuthError> {
        if token.contains(|c: char| c.is_whitespace() || c.is_control()) {
            return Err(AuthError::Invalid("gp_malformed_token"));
        }
        let key = self.key.render_token(user, token);
        let mut conn = self.redis.clone();
        let exists = tokio::time::timeout(self.timeout, async {
            redis::cmd("EXISTS")
                .arg(&key)
                .query_async::<u64>(&mut conn)
                .await
        })
        .await;
        match exists {
            Ok(Ok(1..)) => Ok(()),
            Ok(Ok(0)) => Err(AuthError::Invalid("gp_unknown_token")),
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
