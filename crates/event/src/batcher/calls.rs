//! The Redis side of a batch: its calls sent in one pipeline (single server, Sentinel) or each
//! on its slot's owner in the slot's lane (cluster), the replicas' acknowledgements, and the
//! script's replies.

use std::time::Duration;

use redis::{RedisError, Value};

use super::{Settings, UserCopy};
use crate::conn::RedisConn;
use crate::keys::history_key;
use crate::script::{is_noscript, SlotScript};

/// Per call: its reply, or the error Redis answered it with (the call did not run); an error
/// that leaves unknown what ran (the connection, the `WAIT`) fails the whole batch.
pub(super) type CallReplies = Vec<Result<Value, RedisError>>;

/// Every call in one pipeline (plus the `WAIT`, on the same connection: a failover in
/// between would let a `WAIT` on the new primary return at once). Calls the server refused for
/// not knowing the script (it was flushed, or this is a new primary) did not run: the script
/// is loaded and only those are sent again, since the others ran (sending them all again
/// published their events twice). Calls refused otherwise (out of memory, say) are answered
/// one by one: the others ran.
pub(super) async fn single_pipeline(
    settings: &Settings,
    script: &SlotScript,
    commands: Vec<redis::Cmd>,
) -> Result<CallReplies, RedisError> {
    let mut conn = settings.conn.clone();
    let mut values = pipeline_of(&commands, settings)
        .query_async::<Vec<Value>>(&mut conn)
        .await?;
    let lost: Vec<usize> = (0..commands.len())
        .filter(|&i| {
            values
                .get(i)
                .and_then(server_error)
                .is_some_and(|e| is_noscript(&e))
        })
        .collect();
    if !lost.is_empty() {
        script.load(&mut conn).await?;
        let again: Vec<redis::Cmd> = lost.iter().map(|&i| commands[i].clone()).collect();
        let mut retried = pipeline_of(&again, settings)
            .query_async::<Vec<Value>>(&mut conn)
            .await?;
        if settings.replicas.is_some() {
            // The retry's `WAIT` covers every write of the connection so far.
            if let (Some(wait), Some(last)) = (retried.pop(), values.last_mut()) {
                *last = wait;
            }
        }
        for (&i, value) in lost.iter().zip(retried) {
            values[i] = value;
        }
    }
    if let Some((replicas, _)) = settings.replicas {
        let acked = values.pop().unwrap_or(Value::Nil);
        enough_replicas(acked, replicas)?;
    }
    Ok(values
        .into_iter()
        .map(|value| match server_error(&value) {
            Some(e) => Err(e),
            None => Ok(value),
        })
        .collect())
}

/// `commands` in one pipeline that returns every reply, errors included (plus the `WAIT`).
fn pipeline_of(commands: &[redis::Cmd], settings: &Settings) -> redis::Pipeline {
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    for cmd in commands {
        pipe.add_command(cmd.clone());
    }
    if let Some((replicas, timeout)) = settings.replicas {
        pipe.add_command(wait_command(replicas, timeout));
    }
    pipe
}

/// The error a reply carries, if it is one.
fn server_error(value: &Value) -> Option<RedisError> {
    match value {
        Value::ServerError(e) => Some(e.clone().into()),
        _ => None,
    }
}

/// One lane per cluster slot: a slot's calls run one at a time, in the order they were
/// made, so that a user's events keep their order even when redis-rs retries a call (a slot
/// being migrated answers `TRYAGAIN` or `ASK`, a node that lost its scripts `NOSCRIPT`), and a
/// slot that cannot be written for a while holds up only its own calls.
pub(super) struct Lanes(Box<[tokio::sync::Mutex<()>]>);

impl Lanes {
    /// A lane for each of the cluster's 16,384 slots.
    pub(super) fn new() -> Self {
        Lanes((0..16_384).map(|_| tokio::sync::Mutex::new(())).collect())
    }
}

/// One call on its slot's owner, in its slot's lane, then its `WAIT` on the same node when
/// configured; not sent when, its turn come, `wanted` says none of its callers still waits.
/// The outer error: what ran is unknown (the node did not answer, the `WAIT` failed), or
/// nobody waits for it; the inner one: the error Redis answered (the call did not run).
pub(super) async fn cluster_call(
    settings: &Settings,
    script: &SlotScript,
    lanes: &Lanes,
    cmd: &redis::Cmd,
    user: u64,
    wanted: impl Fn() -> bool,
) -> Result<Result<Value, RedisError>, RedisError> {
    let key = history_key(user);
    let slot = usize::from(crate::keys::slot_of(key.as_bytes()));
    let _lane = lanes.0[slot % lanes.0.len()].lock().await;
    if !wanted() {
        return Err(io_error("publish not sent", "every caller gave up".into()));
    }
    let mut conn = settings.conn.clone();
    let value = match cmd.query_async::<Value>(&mut conn).await {
        // Sent again with the script's code, where the call went: a plain `SCRIPT LOAD`
        // would wait for every primary.
        Err(e) if is_noscript(&e) => script.eval_of(cmd).query_async(&mut conn).await,
        other => other,
    };
    match value {
        Err(e) if !answered(&e) => return Err(e),
        Err(e) => return Ok(Err(e)),
        Ok(_) => {}
    }
    if let (RedisConn::Cluster(conn), Some((replicas, timeout))) =
        (&settings.conn, settings.replicas)
    {
        use redis::cluster_routing::{Route, SingleNodeRoutingInfo, SlotAddr};
        // `WAIT` counts the replicas of the node it runs on: it must be the node that took the
        // write. The call went to the slot's owner by the slot map, unless the owner sent it on
        // (`ASK`: the user's keys had moved to the importing node of a migration), which the map
        // does not show; the owner holding the user's history says the write was its own.
        let route = SingleNodeRoutingInfo::SpecificNode(Route::with_key(&key, SlotAddr::Master));
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        pipe.cmd("EXISTS").arg(&key);
        pipe.add_command(wait_command(replicas, timeout));
        let mut replies = conn
            .clone()
            .route_pipeline(pipe, 0, 2, route)
            .await?
            .into_iter();
        if replies.next() != Some(Value::Int(1)) {
            return Err(io_error(
                "replicas not counted",
                "the write went to another node than the slot's owner (a migration)".into(),
            ));
        }
        enough_replicas(replies.next().unwrap_or(Value::Nil), replicas)?;
    }
    Ok(value)
}

/// `WAIT <replicas> <timeout ms>`.
fn wait_command(replicas: u32, timeout: Duration) -> redis::Cmd {
    let ms = u64::try_from(timeout.as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    let mut wait = redis::cmd("WAIT");
    wait.arg(replicas).arg(ms);
    wait
}

/// Fewer acknowledgements than `replicas` fail the publish.
fn enough_replicas(acked: Value, replicas: u32) -> Result<(), RedisError> {
    let acked: u64 =
        redis::from_redis_value(acked).map_err(|e| parse_error("WAIT reply", e.to_string()))?;
    if acked < u64::from(replicas) {
        return Err(io_error(
            "fewer replicas acknowledged the publish than required",
            format!("{acked} of {replicas}"),
        ));
    }
    Ok(())
}

/// An error that Redis answered (the command did not run), not a failure to reach it.
fn answered(e: &RedisError) -> bool {
    matches!(
        e.kind(),
        redis::ErrorKind::Server(_) | redis::ErrorKind::Extension
    )
}

/// Per item, `(id, receivers)`, or the error the item's own keys answered (not published),
/// from the script's flat reply `epoch, stream id, receivers, …` (`false, error, -1` for a
/// refused item).
pub(super) fn parse_reply(reply: Value, items: usize) -> Result<Vec<UserCopy>, RedisError> {
    let values: Vec<Value> = redis::from_redis_value(reply)
        .map_err(|e| parse_error("publish script reply", e.to_string()))?;
    if values.len() != items * 3 {
        return Err(parse_error(
            "publish script reply",
            format!("{} values for {items} users", values.len()),
        ));
    }
    let mut out = Vec::with_capacity(items);
    let mut values = values.into_iter();
    while let (Some(epoch), Some(sid), Some(receivers)) =
        (values.next(), values.next(), values.next())
    {
        if epoch == Value::Nil {
            let error: String = redis::from_redis_value(sid)
                .map_err(|e| parse_error("publish script reply", e.to_string()))?;
            out.push(Err(error));
            continue;
        }
        let parsed: Result<(String, String, u64), _> = (|| {
            Ok::<_, redis::ParsingError>((
                redis::from_redis_value(epoch)?,
                redis::from_redis_value(sid)?,
                redis::from_redis_value(receivers)?,
            ))
        })();
        let (epoch, sid, receivers) =
            parsed.map_err(|e| parse_error("publish script reply", e.to_string()))?;
        let mut id = String::with_capacity(epoch.len() + 1 + sid.len());
        id.push_str(&epoch);
        id.push('-');
        id.push_str(&sid);
        out.push(Ok((id, receivers)));
    }
    Ok(out)
}

pub(super) fn io_error(what: &'static str, detail: String) -> RedisError {
    RedisError::from((redis::ErrorKind::Io, what, detail))
}

fn parse_error(what: &'static str, detail: String) -> RedisError {
    RedisError::from((redis::ErrorKind::Parse, what, detail))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_map_to_ids_in_order() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let reply = Value::Array(vec![
            bulk("ep"),
            bulk("5-0"),
            Value::Int(2),
            bulk("ep"),
            bulk("5-1"),
            Value::Int(0),
        ]);
        assert_eq!(
            parse_reply(reply, 2).unwrap(),
            [Ok(("ep-5-0".to_string(), 2)), Ok(("ep-5-1".to_string(), 0))]
        );
        let refused = Value::Array(vec![
            Value::Nil,
            bulk("WRONGTYPE Operation against a key holding the wrong kind of value"),
            Value::Int(-1),
            bulk("ep"),
            bulk("5-2"),
            Value::Int(1),
        ]);
        let copies = parse_reply(refused, 2).unwrap();
        assert!(matches!(&copies[0], Err(e) if e.starts_with("WRONGTYPE")));
        assert_eq!(copies[1], Ok(("ep-5-2".to_string(), 1)));
        let short = Value::Array(vec![bulk("ep"), bulk("5-0")]);
        assert!(parse_reply(short, 1).is_err());
    }
}
