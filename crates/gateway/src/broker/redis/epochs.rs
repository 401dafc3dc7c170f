//! The epoch each user's history had when the node subscribed the user, for gap repair of
//! users with no delivered event: a history whose epoch changed since was reset (Redis lost its
//! data, the keys were evicted or deleted), so what it held is gone, and the user's
//! connections get `resync` rather than only what the new history holds. Read once per user,
//! right after its subscription, beside the subscriber's pushes; kept in
//! [`super::subscriptions::Wanted`] as a hash.

use std::hash::{DefaultHasher, Hash, Hasher};

use gleepost_event::keys::epoch_key;

use super::context::Context;
use crate::registry::UserId;

/// Users whose epoch keys are read concurrently.
const CHUNK: usize = 256;

/// The hash an epoch is kept as (equal epochs, equal hashes, in one process).
pub(super) fn hash(epoch: &str) -> u64 {
    let mut hasher = DefaultHasher::new();
    epoch.hash(&mut hasher);
    hasher.finish()
}

/// The epoch of each of `users` (`None`: no history), hashed; users whose read failed or did
/// not answer in time are left out (their epoch stays unknown: repaired as before).
pub(super) async fn read(shared: &Context, users: Vec<UserId>) -> Vec<(UserId, Option<u64>)> {
    let conn = shared.topology.commands();
    let mut out = Vec::with_capacity(users.len());
    for chunk in users.chunks(CHUNK) {
        let reads = chunk.iter().map(|&user| {
            let mut conn = conn.clone();
            async move {
                let epoch: redis::RedisResult<Option<String>> = redis::cmd("GET")
                    .arg(epoch_key(user))
                    .query_async(&mut conn)
                    .await;
                (user, epoch)
            }
        });
        let all = futures_util::future::join_all(reads);
        let Ok(read) = tokio::time::timeout(shared.settings.timeout, all).await else {
            continue;
        };
        out.extend(
            read.into_iter()
                .filter_map(|(user, epoch)| Some((user, epoch.ok()?.as_deref().map(hash)))),
        );
    }
    out
}
