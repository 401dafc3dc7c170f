//! A real load balancer in front of two nodes (issue 12, item 4): Debian's HAProxy running
//! `docs/haproxy.cfg`, the configuration docs/operations.md recommends, unchanged.
//!
//! - WebSocket, SSE and long-poll through the balancer: clients are spread over both nodes,
//!   events arrive with their ids (SSE unbuffered, one at a time), a client resumes through it
//!   (`since`, `Last-Event-ID`) and gets exactly what it missed; a long-poll waits behind it.
//! - The config's timeouts that no test can wait out exceed what they must.
//!
//! The rolling SIGTERM of both nodes behind it is `load_balancer_rolling.rs`.
//!
//! Without `haproxy` installed these tests fail (`.ci/run` installs it). No timing assertions:
//! every wait is bounded, every check is about what arrived and in which order.

use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use gleepost_tests::eventually;
use gleepost_tests::haproxy::{self, two_nodes, HaProxy};
use gleepost_tests::http;
use gleepost_tests::resume::{seq_event, SeqCheck};
use gleepost_tests::sse::{accept_poll, poll, sse_path, SseStream};
use gleepost_tests::{Client, RedisServer, WAIT};

/// Bounded waits (not timing assertions).
const READY: Duration = Duration::from_secs(20);

#[test]
fn operations_md_shows_the_tested_haproxy_config_verbatim() -> Result<()> {
    let config = std::fs::read_to_string(haproxy::config_path())?;
    let docs = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/operations.md"),
    )?;
    let block = format!("```haproxy\n{config}```\n");
    ensure!(
        docs.contains(&block),
        "docs/operations.md must show docs/haproxy.cfg verbatim in a ```haproxy block"
    );
    Ok(())
}

/// A `timeout <name>` of the recommended config, in seconds (`5s`, `2m`, `1h`).
fn config_timeout(config: &str, name: &str) -> Result<u64> {
    let value = config
        .lines()
        .find_map(|l| l.trim().strip_prefix(&format!("timeout {name} ")))
        .with_context(|| format!("docs/haproxy.cfg sets no `timeout {name}`"))?
        .trim();
    let (number, unit) = value.split_at(value.len() - 1);
    let number: u64 = number
        .parse()
        .with_context(|| format!("timeout {name} {value}"))?;
    match unit {
        "s" => Ok(number),
        "m" => Ok(number * 60),
        "h" => Ok(number * 3600),
        _ => bail!("timeout {name} {value}: unit not s, m or h"),
    }
}

/// The timeouts the tests cannot wait out (a 2 min idle stream) checked against what they must
/// exceed: the long-poll cap (60 s) and two heartbeat intervals (2 × 30 s) for requests and
/// responses in flight; the WebSocket tunnel the same, and never less than an hour.
#[test]
fn haproxy_timeouts_exceed_the_long_poll_cap_and_two_heartbeats() -> Result<()> {
    let config = std::fs::read_to_string(haproxy::config_path())?;
    let (poll_cap, ping) = (60, 30);
    for name in ["client", "server"] {
        let t = config_timeout(&config, name)?;
        ensure!(
            t > poll_cap && t > 2 * ping,
            "timeout {name} {t} s: must exceed the long-poll cap ({poll_cap} s) and two ping intervals"
        );
    }
    let tunnel = config_timeout(&config, "tunnel")?;
    ensure!(
        tunnel >= 3600,
        "timeout tunnel {tunnel} s: WebSocket needs an hour or more"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn websocket_through_haproxy_spreads_clients_delivers_ids_and_resumes() -> Result<()> {
    let redis = RedisServer::start().await?;
    let nodes = two_nodes(&redis).await?;
    let lb = HaProxy::start([&nodes[0], &nodes[1]]).await?;
    let users = [41u64, 42];

    // Credentials are checked behind the balancer; the refusal comes back through it unchanged.
    let refused = http::upgrade_attempt(&lb.public, "/ws?access_token=nope", &[]).await?;
    ensure!(
        refused.status == 401 && refused.json()?["error"] == "Invalid credentials",
        "bad token through haproxy: {} {}",
        refused.status,
        refused.body_text()
    );

    let mut first = Client::connect(&lb.ws_url(users[0])).await?;
    let mut second = Client::connect(&lb.ws_url(users[1])).await?;
    // leastconn: the second client goes to the node without one.
    eventually(READY, "one client on each node", || async {
        let stats = lb.stats().await?;
        ensure!(
            stats.iter().all(|s| s.sessions == 1),
            "sessions per node: {stats:?}"
        );
        Ok(())
    })
    .await?;

    let mut checks = users.map(|u| SeqCheck::new(format!("user {u}"), 1));
    for seq in 1..=3 {
        nodes[0].publish(&users, &seq_event(seq, 0)).await?;
    }
    checks[0].read_until(&mut first, 3).await?;
    checks[1].read_until(&mut second, 3).await?;

    // The first client goes away, misses 4..=6 and resumes through the balancer.
    first.close().await;
    for seq in 4..=6 {
        nodes[1].publish(&users, &seq_event(seq, 0)).await?;
    }
    let since = checks[0].last_id.clone().context("no id after seq 3")?;
    let mut first = Client::connect(&format!("{}&since={since}", lb.ws_url(users[0]))).await?;
    checks[0].read_until(&mut first, 6).await?;
    // Live again after the replay, on both clients, without duplicates.
    nodes[0].publish(&users, &seq_event(7, 0)).await?;
    checks[0].read_until(&mut first, 7).await?;
    checks[1].read_until(&mut second, 7).await?;
    first.expect_silence(Duration::from_millis(300)).await?;
    Ok(())
}

/// Read the next SSE event: a numbered event whose `id:` line is the id inside its data.
async fn sse_seq(stream: &mut SseStream, check: &mut SeqCheck) -> Result<()> {
    let event = stream.next_event(WAIT).await?.with_context(|| {
        format!(
            "{}: the stream ended after seq {}",
            check.name,
            check.last()
        )
    })?;
    ensure!(event.event == "message", "{}: got {event:?}", check.name);
    check.accept(&event.data)?;
    ensure!(
        event.id == check.last_id,
        "{}: id line {:?}, id in the data {:?}",
        check.name,
        event.id,
        check.last_id
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn sse_through_haproxy_is_unbuffered_with_ids_and_resumes_with_last_event_id() -> Result<()> {
    let redis = RedisServer::start().await?;
    let nodes = two_nodes(&redis).await?;
    let lb = HaProxy::start([&nodes[0], &nodes[1]]).await?;
    let user = 51;
    let mut check = SeqCheck::new("sse", 1);

    let mut stream = SseStream::connect(&lb.public, &sse_path(user, None), &[]).await?;
    for (name, value) in [("cache-control", "no-cache"), ("x-accel-buffering", "no")] {
        ensure!(
            stream.head.header(name) == Some(value),
            "{name} through haproxy: {:?}",
            stream.head.header(name)
        );
    }
    // One event at a time, each read before the next is published: nothing waits in the proxy
    // for more data or for the end of the response.
    for seq in 1..=3 {
        nodes[(seq % 2) as usize]
            .publish(&[user], &seq_event(seq, 0))
            .await?;
        sse_seq(&mut stream, &mut check).await?;
    }
    ensure!(stream.retry == Some(1000), "retry hint {:?}", stream.retry);
    drop(stream);

    // Missed while away; the browser's own reconnect sends Last-Event-ID.
    for seq in 4..=6 {
        nodes[0].publish(&[user], &seq_event(seq, 0)).await?;
    }
    let last = check.last_id.clone().context("no id after seq 3")?;
    let mut stream = SseStream::connect(
        &lb.public,
        &sse_path(user, None),
        &[("Last-Event-ID", &last)],
    )
    .await?;
    for _ in 4..=6 {
        sse_seq(&mut stream, &mut check).await?;
    }
    nodes[1].publish(&[user], &seq_event(7, 0)).await?;
    sse_seq(&mut stream, &mut check).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn long_poll_through_haproxy_waits_answers_in_order_and_resumes() -> Result<()> {
    let redis = RedisServer::start().await?;
    let nodes = two_nodes(&redis).await?;
    let lb = HaProxy::start([&nodes[0], &nodes[1]]).await?;
    let user = 61;
    let mut check = SeqCheck::new("poll", 1);

    // Nothing published: the empty answer at the poll's timeout comes back through the proxy.
    let empty = poll(&lb.public, user, None, "1s").await?;
    ensure!(
        empty.status == 200 && empty.json()?["events"] == serde_json::json!([]),
        "empty poll: {} {}",
        empty.status,
        empty.body_text()
    );
    ensure!(
        empty.header("cache-control") == Some("no-store"),
        "cache-control through haproxy: {:?}",
        empty.header("cache-control")
    );

    // A poll waiting behind the proxy is answered by the next live event.
    let public = lb.public.clone();
    let waiting = tokio::spawn(async move { poll(&public, user, None, "8s").await });
    eventually(READY, "the poll waiting behind haproxy", || async {
        let stats = lb.stats().await?;
        ensure!(
            stats.iter().map(|s| s.sessions).sum::<u64>() == 1,
            "{stats:?}"
        );
        Ok(())
    })
    .await?;
    nodes[0].publish(&[user], &seq_event(1, 0)).await?;
    let res = waiting.await??;
    ensure!(
        accept_poll(&res, &mut check)?.is_none() && check.last() == 1,
        "the waiting poll: {}",
        res.body_text()
    );

    // Missed between two polls: the next poll with since gets them all, in order.
    for seq in 2..=4 {
        nodes[1].publish(&[user], &seq_event(seq, 0)).await?;
    }
    let res = poll(&lb.public, user, check.last_id.as_deref(), "5s").await?;
    ensure!(
        accept_poll(&res, &mut check)?.is_none() && check.last() == 4,
        "poll since seq 1: {}",
        res.body_text()
    );
    let res = poll(&lb.public, user, check.last_id.as_deref(), "1s").await?;
    ensure!(
        accept_poll(&res, &mut check)?.is_none() && check.last() == 4,
        "a poll after the last event: {}",
        res.body_text()
    );
    Ok(())
}
