//! The self-probe that proves delivery end to end: every probe interval the node publishes a
//! timestamp to its private channel through the command connection; the subscriber sees it come
//! back. Readiness requires a fresh probe, a stale one makes the subscriber reconnect, and the
//! Redis time it carries is a gap-repair point.

use std::sync::Weak;

use super::context::Context;

/// Publishes the probe with Redis's clock appended (ARGV: channel, sender's timestamp).
const PROBE_SCRIPT: &str = r#"
local t = redis.call('TIME')
local ms = t[1] .. string.format('%03d', math.floor(tonumber(t[2]) / 1000))
return redis.call('PUBLISH', ARGV[1], ARGV[2] .. ':' .. ms)
"#;

/// Publish the node's probe periodically through the command connection; the subscriber marks
/// its return. Ends when the broker is dropped.
pub(crate) async fn run(shared: Weak<Context>) {
    let interval = match shared.upgrade() {
        Some(s) => s.settings.probe_interval,
        None => return,
    };
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let script = redis::Script::new(PROBE_SCRIPT);
    loop {
        tick.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let mut conn = shared.topology.commands();
        let sent = shared.state.now_nanos().to_string();
        let mut invocation = script.arg(&shared.probe_channel);
        invocation.arg(sent);
        let publish = invocation.invoke_async::<i64>(&mut conn);
        match tokio::time::timeout(shared.settings.timeout, publish).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "probe publish failed"),
            Err(_) => tracing::debug!("probe publish timed out"),
        }
    }
}

/// A probe came back: record its round trip, freshness and Redis time.
/// Payload: `<sent, ns since the node's time base>:<Redis time, ms>`.
pub(super) fn on_probe(shared: &Context, payload: &[u8]) {
    let parsed = std::str::from_utf8(payload).ok().and_then(|s| {
        let (sent, redis_ms) = s.split_once(':')?;
        Some((sent.parse::<u64>().ok()?, redis_ms.parse::<u64>().ok()?))
    });
    if let Some((sent, redis_ms)) = parsed {
        let now = shared.state.now_nanos();
        shared
            .dispatcher
            .metrics()
            .probe_rtt
            .observe(now.saturating_sub(sent) as f64 / 1e9);
        shared.state.probe_returned();
        // Everything published before the probe was delivered before it: a repair point.
        shared.state.delivered_until(redis_ms);
    }
}
