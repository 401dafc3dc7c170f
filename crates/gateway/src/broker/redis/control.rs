//! The backend's control of connections through Redis: disconnecting a user on every node (the
//! disconnect payload on the user's gateway channel: whichever nodes hold the user's connections
//! are subscribed to it, in standalone, Sentinel and cluster mode alike) and token revocation
//! (a per-user key read on every JWT connection).

use std::time::Duration;

use gleepost_event::keys::{revoked_key, user_channel, DISCONNECT_PAYLOAD};
use gleepost_event::{RedisConn, SlotScript};

use crate::broker::BrokerError;
use crate::registry::UserId;

/// Sets the revocation time unless a later one is there (KEYS: the revocation key; ARGV: unix
/// time, TTL in seconds).
const REVOKE_SCRIPT: &str = r#"
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if cur < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
else
  redis.call('EXPIRE', KEYS[1], ARGV[2], 'GT')
end
return 1
"#;

/// Publish the disconnect payload to each user's gateway channel; returns per user how many
/// nodes received it.
pub(super) async fn disconnect(
    conn: &RedisConn,
    users: &[UserId],
) -> Result<Vec<(UserId, u64)>, BrokerError> {
    let command = conn.publish_command();
    let sends = users.iter().map(|&user| {
        let mut conn = conn.clone();
        async move {
            let nodes: u64 = redis::cmd(command)
                .arg(user_channel(user))
                .arg(DISCONNECT_PAYLOAD)
                .query_async(&mut conn)
                .await?;
            Ok::<_, redis::RedisError>((user, nodes))
        }
    });
    Ok(futures_util::future::try_join_all(sends).await?)
}

/// Revoke the users' JWTs issued before `before` for `ttl`.
pub(super) async fn revoke(
    conn: &RedisConn,
    users: &[UserId],
    before: u64,
    ttl: Duration,
) -> Result<(), BrokerError> {
    let script = SlotScript::new(REVOKE_SCRIPT);
    let ttl = ttl.as_secs().max(1);
    let calls = users.iter().map(|&user| {
        let (mut conn, script) = (conn.clone(), &script);
        let mut cmd = script.evalsha(1);
        cmd.arg(revoked_key(user)).arg(before).arg(ttl);
        async move { script.run::<i64>(&mut conn, &cmd).await }
    });
    futures_util::future::try_join_all(calls).await?;
    Ok(())
}

/// The revocation time of `user`'s JWTs, if any.
pub(super) async fn revoked_before(
    conn: &RedisConn,
    user: UserId,
) -> Result<Option<u64>, BrokerError> {
    let mut conn = conn.clone();
    let value: Option<u64> = redis::cmd("GET")
        .arg(revoked_key(user))
        .query_async(&mut conn)
        .await?;
    Ok(value)
}
