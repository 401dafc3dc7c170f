//! SSE and long-poll beside WebSocket (issue 12, items 1–2), straight against a node (the same
//! through HAProxy: load_balancer.rs): the same refusals before any stream byte, the same event
//! objects and ids, resume with `Last-Event-ID` / `since`, heartbeats, the final `close` event of
//! a drain or a disconnect, long-poll answers from history, live and at the timeout, `resync`,
//! CORS.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use gleepost_tests::http;
use gleepost_tests::metrics::wait_metric;
use gleepost_tests::resume::{publish_seq, SeqCheck};
use gleepost_tests::sse::{accept_poll, poll, poll_path, sse_path, SseStream};
use gleepost_tests::{Gateway, GatewayOptions, RedisServer};
use serde_json::json;
use tokio::io::AsyncWriteExt;

const READY: Duration = Duration::from_secs(30);
const WAIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread")]
async fn sse_streams_events_resumes_and_ends_with_a_close_event() -> Result<()> {
    let mut gw = Gateway::start_ready(GatewayOptions::default().arg(&[
        "--ping-interval",
        "300ms",
        "--pre-drain-delay",
        "0s",
        "--drain-window",
        "1s",
    ]))
    .await?;
    // Refused before any stream byte, with the JSON body and CORS.
    let bad = http::request(&gw.public, "GET", "/sse?access_token=nope", &[], b"").await?;
    ensure!(bad.status == 401, "bad token: {}", bad.status);
    ensure!(
        bad.json()?["error"].is_string(),
        "no JSON reason: {}",
        bad.body_text()
    );
    ensure!(
        bad.header("access-control-allow-origin") == Some("*"),
        "no CORS on 401"
    );

    let mut stream = SseStream::connect(&gw.public, &sse_path(9, None), &[]).await?;
    ensure!(
        stream.head.header("cache-control") == Some("no-cache"),
        "cache-control"
    );
    ensure!(
        stream.head.header("x-accel-buffering") == Some("no"),
        "x-accel-buffering"
    );
    ensure!(
        stream.head.header("access-control-allow-origin") == Some("*"),
        "CORS"
    );
    let mut check = SeqCheck::new("sse user 9", 1);
    let first = publish_seq(&gw, 9, 1).await?;
    publish_seq(&gw, 9, 2).await?;
    for expected_id in [Some(first.clone()), None] {
        let event = stream.next_event(WAIT).await?.context("stream ended")?;
        ensure!(event.event == "message", "event type {}", event.event);
        check.accept(&event.data)?;
        // `id:` is the event's own id.
        ensure!(
            event.id == check.last_id,
            "id field {:?} vs {:?}",
            event.id,
            check.last_id
        );
        if let Some(id) = expected_id {
            ensure!(event.id.as_deref() == Some(id.as_str()), "first id");
        }
    }
    ensure!(stream.retry == Some(1000), "retry hint {:?}", stream.retry);
    // Heartbeats while nothing is published.
    let _ = stream.next_event(Duration::from_millis(800)).await;
    ensure!(stream.comments >= 1, "no heartbeat comment");

    // The browser's own resume: Last-Event-ID.
    let mut resumed =
        SseStream::connect(&gw.public, &sse_path(9, None), &[("Last-Event-ID", &first)]).await?;
    let mut check2 = SeqCheck::new("sse resumed", 2);
    let event = resumed
        .next_event(WAIT)
        .await?
        .context("resumed stream ended")?;
    check2.accept(&event.data)?;
    publish_seq(&gw, 9, 3).await?;
    let event = resumed
        .next_event(WAIT)
        .await?
        .context("resumed stream ended")?;
    check2.accept(&event.data)?;
    let event = stream.next_event(WAIT).await?.context("stream ended")?;
    check.accept(&event.data)?;

    // Disconnect from the backend: close event 4003, then the stream ends.
    let res = gw
        .admin_post("/v1/disconnect", &json!({"users": [9]}).to_string())
        .await?;
    ensure!(res.status == 200, "disconnect: {}", res.status);
    for s in [&mut stream, &mut resumed] {
        let close = s.next_event(WAIT).await?.context("no close event")?;
        ensure!(
            close.event == "close",
            "expected a close event, got {close:?}"
        );
        let data: serde_json::Value = serde_json::from_str(&close.data)?;
        ensure!(data["code"] == 4003, "close code {data}");
        ensure!(
            s.next_event(WAIT).await?.is_none(),
            "stream goes on after close"
        );
    }

    // Drain: close event 1001.
    let mut draining = SseStream::connect(&gw.public, &sse_path(10, None), &[]).await?;
    gw.signal(libc::SIGTERM);
    let close = draining
        .next_event(WAIT)
        .await?
        .context("no close event on drain")?;
    let data: serde_json::Value = serde_json::from_str(&close.data)?;
    ensure!(
        close.event == "close" && data["code"] == 1001,
        "drain close {close:?}"
    );
    gw.wait_exit(Duration::from_secs(20)).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn poll_answers_history_then_live_then_empty_and_resync() -> Result<()> {
    let gw = Gateway::start_ready(GatewayOptions::default()).await?;
    let mut check = SeqCheck::new("poll user 9", 1);
    let first = publish_seq(&gw, 9, 1).await?;
    // From history: everything after `since`, at once.
    publish_seq(&gw, 9, 2).await?;
    let mut after_first = SeqCheck::new("poll since 1", 2);
    let res = poll(&gw.public, 9, Some(&first), "5s").await?;
    ensure!(
        res.header("cache-control") == Some("no-store"),
        "cache-control"
    );
    ensure!(
        res.header("access-control-allow-origin") == Some("*"),
        "CORS"
    );
    ensure!(accept_poll(&res, &mut after_first)?.is_none(), "closed");
    ensure!(
        after_first.last() == 2,
        "history answer ended at {}",
        after_first.last()
    );
    check.next = 3;
    check.last_id = after_first.last_id.clone();

    // Live: a poll waiting when the event is published.
    let since = check.last_id.clone().context("no id")?;
    let waiting = {
        let public = gw.public.clone();
        tokio::spawn(async move { poll(&public, 9, Some(&since), "8s").await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    publish_seq(&gw, 9, 3).await?;
    let res = waiting.await??;
    accept_poll(&res, &mut check)?;
    ensure!(check.last() == 3, "live answer ended at {}", check.last());

    // Nothing new: empty at the timeout.
    let res = poll(&gw.public, 9, check.last_id.as_deref(), "300ms").await?;
    ensure!(
        res.json()?["events"] == json!([]),
        "not empty: {}",
        res.body_text()
    );

    // An id the history cannot place: resync inside the answer.
    let res = poll(&gw.public, 9, Some("zz9-1-0"), "300ms").await?;
    let body = res.json()?;
    ensure!(body["events"][0]["type"] == "resync", "no resync: {body}");

    // A pending poll ended by a disconnect carries the close code.
    let since = check.last_id.clone().context("no id")?;
    let waiting = {
        let public = gw.public.clone();
        tokio::spawn(async move { poll(&public, 9, Some(&since), "8s").await })
    };
    gleepost_tests::eventually(READY, "the poll is waiting", || async {
        let n = gw
            .metric("gleepost_gateway_transport_connections{transport=\"poll\"}")
            .await?;
        ensure!(n == 1.0, "{n} pending polls");
        Ok(())
    })
    .await?;
    gw.admin_post("/v1/disconnect", &json!({"users": [9]}).to_string())
        .await?;
    let body = waiting.await??.json()?;
    ensure!(body["close"]["code"] == 4003, "no close in {body}");

    // Bad input and preflight.
    let bad = http::request(
        &gw.public,
        "GET",
        &format!(
            "{}&timeout=soon",
            &sse_path(9, None).replace("/sse", "/poll")
        ),
        &[],
        b"",
    )
    .await?;
    ensure!(
        bad.status == 400 && bad.json()?["error"].is_string(),
        "bad timeout: {}",
        bad.status
    );
    let preflight = http::request(&gw.public, "OPTIONS", "/poll", &[], b"").await?;
    ensure!(preflight.status == 204, "preflight {}", preflight.status);
    ensure!(
        preflight
            .header("access-control-allow-headers")
            .is_some_and(|h| h.contains("Last-Event-ID")),
        "preflight headers"
    );
    ensure!(
        gw.metric("gleepost_gateway_transport_events_delivered_total{transport=\"poll\"}")
            .await?
            >= 3.0,
        "poll deliveries not counted"
    );
    Ok(())
}

/// Wait until `n` long-polls are pending on `gw`.
async fn polls_pending(gw: &Gateway, n: usize) -> Result<()> {
    wait_metric(
        gw,
        "gleepost_gateway_transport_connections{transport=\"poll\"}",
        n as f64,
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_poll_answered_from_history_still_carries_a_close_that_came_meanwhile() -> Result<()> {
    // The drain closes a poll while its history read is under way (Redis holds scripts under
    // `CLIENT PAUSE … WRITE`; the subscription and the token check go on): the answer has the
    // replayed events and the 1001, so the client reconnects elsewhere instead of polling this
    // node again.
    let redis = RedisServer::start().await?;
    let mut gw = Gateway::on_redis(
        &redis,
        &[
            "--redis-timeout",
            "20s",
            "--probe-timeout",
            "60s",
            "--pre-drain-delay",
            "0s",
            "--drain-window",
            "20s",
        ],
    )
    .await?;
    let first = publish_seq(&gw, 11, 1).await?;
    publish_seq(&gw, 11, 2).await?;
    let mut admin = redis.connection().await?;
    let () = redis::cmd("CLIENT")
        .arg(&["PAUSE", "4000", "WRITE"])
        .query_async(&mut admin)
        .await?;
    let public = gw.public.clone();
    let polling = tokio::spawn(async move { poll(&public, 11, Some(&first), "5s").await });
    polls_pending(&gw, 1).await?;
    gw.signal(libc::SIGTERM);
    let res = polling.await??;
    let mut check = SeqCheck::new("poll of user 11", 2);
    let close = accept_poll(&res, &mut check)?;
    ensure!(
        check.last() == 2,
        "the replayed event is missing: {}",
        res.body_text()
    );
    ensure!(close == Some(1001), "no 1001 in {}", res.body_text());
    gw.wait_exit(READY).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_keep_alive_client_cannot_poll_a_draining_node_again_on_its_connection() -> Result<()> {
    // Two pending polls; the drain closes one at once and the other half a window later. The
    // client answered first polls again at once on the same keep-alive connection (reached
    // without a load balancer, or through one that keeps it): it must not be admitted on the
    // draining node again (before, it was, and got a second 1001 when the drain ended).
    let mut gw = Gateway::start_ready(GatewayOptions::default().arg(&[
        "--pre-drain-delay",
        "0s",
        "--drain-window",
        "4s",
    ]))
    .await?;
    let request = |user| {
        let path = poll_path(user, None, "20s");
        format!("GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n", gw.public)
    };
    let (mut a, mut b) = (
        tokio::net::TcpStream::connect(&gw.public).await?,
        tokio::net::TcpStream::connect(&gw.public).await?,
    );
    a.write_all(request(12).as_bytes()).await?;
    b.write_all(request(13).as_bytes()).await?;
    polls_pending(&gw, 2).await?;
    gw.signal(libc::SIGTERM);
    let (first, user, stream) = tokio::select! {
        res = http::read_response(&mut a) => (res?, 12, &mut a),
        res = http::read_response(&mut b) => (res?, 13, &mut b),
    };
    ensure!(
        first.json()?["close"]["code"] == 1001,
        "{}",
        first.body_text()
    );
    // Again at once on the same connection: refused or the connection closed, not admitted.
    let _ = stream.write_all(request(user).as_bytes()).await;
    if let Ok(Ok(second)) = tokio::time::timeout(WAIT, http::read_response(stream)).await {
        ensure!(
            second.status == 503,
            "a second poll on the draining node got {} {}",
            second.status,
            second.body_text()
        );
    }
    gw.wait_exit(READY).await?;
    Ok(())
}
