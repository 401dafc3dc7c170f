//! Lua scripts run by their hash (`EVALSHA`), sent again with their code where a node does
//! not know them.
//!
//! redis-rs's answer to `NOSCRIPT` is a plain `SCRIPT LOAD`, which its cluster client sends to
//! every primary: one primary that is paused, cut off or down then holds up (or fails) the
//! call on every other node, although only the node that answered needs the script. Sent
//! again as `EVAL`, the call goes where the first one went (the slot's owner, or the node an
//! `ASK` points to during a migration), which then knows the script.

use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{Arg, Cmd, FromRedisValue, RedisResult, Script};

use crate::conn::RedisConn;

/// A Lua script and its hash.
#[derive(Clone)]
pub struct SlotScript {
    code: &'static str,
    script: Script,
}

impl SlotScript {
    /// The script of `code`.
    pub fn new(code: &'static str) -> SlotScript {
        SlotScript {
            code,
            script: Script::new(code),
        }
    }

    /// The script's SHA1 hex digest, as `EVALSHA` takes it.
    pub fn hash(&self) -> &str {
        self.script.get_hash()
    }

    /// `EVALSHA <hash> <keys>`: add the keys, then the arguments.
    pub fn evalsha(&self, keys: usize) -> Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(self.hash()).arg(keys);
        cmd
    }

    /// Run `cmd` (an `EVALSHA` of this script); when the node answers `NOSCRIPT` (nothing
    /// ran), run it again as [`SlotScript::eval_of`].
    pub async fn run<T: FromRedisValue>(&self, conn: &mut RedisConn, cmd: &Cmd) -> RedisResult<T> {
        match cmd.query_async(conn).await {
            Err(e) if is_noscript(&e) => self.eval_of(cmd).query_async(conn).await,
            other => other,
        }
    }

    /// As [`SlotScript::run`], but on a cluster sent to the primary that owns the slot of
    /// `name` (a key or a shard channel the call does not declare as a key): a declared key
    /// missing from a slot being migrated makes its owner redirect the call (`ASK`) to the
    /// importing node, where a shard channel's subscribers are not until the slot has moved.
    pub async fn run_in_slot_of<T: FromRedisValue>(
        &self,
        conn: &mut RedisConn,
        cmd: &Cmd,
        name: &str,
    ) -> RedisResult<T> {
        let RedisConn::Cluster(cluster) = conn else {
            return self.run(conn, cmd).await;
        };
        let route = Route::with_key(name, SlotAddr::Master);
        let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route));
        // A routed command's server error comes back as a value.
        let routed = |cmd: Cmd, routing: RoutingInfo| {
            let mut cluster = cluster.clone();
            async move {
                match cluster.route_command(cmd, routing).await? {
                    redis::Value::ServerError(e) => Err(e.into()),
                    value => Ok(value),
                }
            }
        };
        let value = match routed(cmd.clone(), routing.clone()).await {
            Err(e) if is_noscript(&e) => routed(self.eval_of(cmd), routing).await,
            other => other,
        }?;
        Ok(redis::from_redis_value(value)?)
    }

    /// `cmd` (an `EVALSHA` of this script) as `EVAL` with the script's code: the same keys and
    /// arguments, so it is routed like `cmd`, and the node that runs it keeps the script.
    pub fn eval_of(&self, cmd: &Cmd) -> Cmd {
        let mut eval = redis::cmd("EVAL");
        eval.arg(self.code);
        for arg in cmd.args_iter().skip(2) {
            if let Arg::Simple(bytes) = arg {
                eval.arg(bytes);
            }
        }
        eval
    }

    /// `SCRIPT LOAD` the script through `conn` (on a cluster: on every primary).
    pub async fn load(&self, conn: &mut RedisConn) -> RedisResult<()> {
        redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(self.code)
            .query_async(conn)
            .await
    }
}

/// The server did not know the script.
pub(crate) fn is_noscript(e: &redis::RedisError) -> bool {
    e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eval_of_keeps_the_keys_and_arguments() {
        let script = SlotScript::new("return 1");
        let mut cmd = script.evalsha(1);
        cmd.arg("key").arg(7);
        let eval = script.eval_of(&cmd);
        let args: Vec<Vec<u8>> = eval
            .args_iter()
            .map(|arg| match arg {
                Arg::Simple(bytes) => bytes.to_vec(),
                _ => b"(not a plain argument)".to_vec(),
            })
            .collect();
        let expected: [&[u8]; 5] = [b"EVAL", b"return 1", b"1", b"key", b"7"];
        assert_eq!(args, expected.map(<[u8]>::to_vec));
    }
}
