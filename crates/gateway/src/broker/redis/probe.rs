//! The self-probe that proves delivery end to end: every probe interval the node publishes a
//! timestamp to each link's probe channel through the command connection (on a cluster: a shard
//! channel in one of the link's slots, with `SPUBLISH`); the subscriber sees it come back.
//! Readiness requires every link's probe to be fresh, a stale one makes the subscriber
//! reconnect, and the Redis time it carries is a gap-repair point.

use std::sync::Weak;

use super::context::Context;

/// Publishes the probe with Redis's clock appended (no KEYS; ARGV: channel, sender's
/// timestamp, publish command). On a cluster it is sent to the owner of the channel's slot,
/// also while that slot is being migrated (the channel is not declared as a key: see
/// [`gleepost_event::SlotScript::run_in_slot_of`]).
const PROBE_SCRIPT: &str = r#"
local t = redis.call('TIME')
local ms = t[1] .. string.format('%03d', math.floor(tonumber(t[2]) / 1000))
return redis.call(ARGV[3] or 'PUBLISH', ARGV[1], ARGV[2] .. ':' .. ms)
"#;

/// Publish the node's probes periodically through the command connection; the subscriber marks
/// their return. Ends when the broker is dropped.
pub(crate) async fn run(shared: Weak<Context>) {
    let interval = match shared.upgrade() {
        Some(s) => s.settings.probe_interval,
        None => return,
    };
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let script = gleepost_event::SlotScript::new(PROBE_SCRIPT);
    loop {
        tick.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let conn = shared.topology.commands();
        name_command_connections(&shared, &conn).await;
        let command = conn.publish_command();
        let sent = shared.state.now_nanos().to_string();
        let publishes = shared.probe_targets().into_iter().map(|channel| {
            let (mut conn, script) = (conn.clone(), &script);
            let mut cmd = script.evalsha(0);
            cmd.arg(&channel).arg(&sent).arg(command);
            async move {
                script
                    .run_in_slot_of::<i64>(&mut conn, &cmd, &channel)
                    .await
            }
        });
        let all = futures_util::future::join_all(publishes);
        match tokio::time::timeout(shared.settings.timeout, all).await {
            Ok(results) => {
                for e in results.into_iter().filter_map(Result::err) {
                    tracing::debug!(error = %e, "probe publish failed");
                }
            }
            Err(_) => tracing::debug!("probe publish timed out"),
        }
    }
}

/// Name the command connection(s) `gleepost-gateway-<node>-cmd` (`CLIENT LIST`): redis-rs
/// reconnects them by itself without a name, so the probe renames them every interval (one
/// small command; on a cluster redis-rs sends it to every node).
async fn name_command_connections(shared: &Context, conn: &gleepost_event::RedisConn) {
    let name = format!("gleepost-gateway-{}-cmd", shared.node_name());
    let mut conn = conn.clone();
    let mut command = redis::cmd("CLIENT");
    command.arg("SETNAME").arg(name);
    let setname = command.query_async::<redis::Value>(&mut conn);
    if let Ok(Err(e)) = tokio::time::timeout(shared.settings.timeout, setname).await {
        tracing::debug!(error = %e, "naming the command connection failed");
    }
}

/// A probe came back: the time it came back (ns since the state's time base) and its Redis
/// time (ms). Payload: `<sent>:<Redis time, ms>`. Records the round trip. What cannot be one
/// of this node's probes (unparsable, or sent at a time this node has not reached yet) is
/// counted as `bad_probe`, logged and ignored. A sanity check, not authentication: whoever
/// can publish on Redis can forge events too (operations.md, "Redis is trusted").
pub(super) fn on_probe(shared: &Context, payload: &[u8]) -> Option<(u64, u64)> {
    let now = shared.state.now_nanos();
    let metrics = shared.dispatcher.metrics();
    let Some((sent, redis_ms)) = parse(payload).filter(|&(sent, _)| sent != 0 && sent <= now)
    else {
        metrics
            .broker_malformed
            .with_label_values(&["bad_probe"])
            .inc();
        if let Some(suppressed) = super::reader::MALFORMED_LOG.allow() {
            tracing::warn!(
                payload = %String::from_utf8_lossy(&payload[..payload.len().min(64)]),
                suppressed,
                "ignored a message on the probe channel that is not this node's probe"
            );
        }
        return None;
    };
    metrics
        .probe_rtt
        .observe(now.saturating_sub(sent) as f64 / 1e9);
    Some((now, redis_ms))
}

/// `<sent>:<Redis time, ms>`.
fn parse(payload: &[u8]) -> Option<(u64, u64)> {
    let s = std::str::from_utf8(payload).ok()?;
    let (sent, redis_ms) = s.split_once(':')?;
    Some((sent.parse().ok()?, redis_ms.parse().ok()?))
}
