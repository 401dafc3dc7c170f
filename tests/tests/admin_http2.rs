//! The admin port over HTTP/2 (h2c with prior knowledge): the same routes and answers as over
//! HTTP/1.1, many publishes on one connection, and the bounds a hostile HTTP/2 client meets —
//! concurrent streams, flow-control windows, a body not sent in time, idle connections, reset
//! floods, the busy share counted per request, and `GOAWAY` on drain.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use bytes::Bytes;
use futures_util::future::{poll_fn, try_join_all};
use gleepost_tests::h2c::{self, get, post, H2};
use gleepost_tests::http::next_answer;
use gleepost_tests::metrics::wait_metric;
use gleepost_tests::{eventually, seed, Gateway, GatewayOptions, RedisServer, API_KEY};

/// Generous bound on anything the gateway must do "at once" or "after the timeout".
const LIMIT: Duration = Duration::from_secs(20);

/// A publish body of `event` to `users`.
fn publish_body(users: &[u64], event: &str) -> String {
    format!(r#"{{"users":{users:?},"event":{event}}}"#)
}

#[tokio::test]
async fn the_admin_routes_answer_over_http2() -> Result<()> {
    let gw = Gateway::start(GatewayOptions::default()).await?;
    let mut client = gw.connect(9).await?;
    let h2 = H2::connect(&gw.admin).await?;
    let health = h2.request(get("/healthz"), b"").await?;
    ensure!(health.ok_json("healthz")?["status"] == "ok");
    ensure!(h2.request(get("/metrics"), b"").await?.status == 200);
    let res = h2.publish(&publish_body(&[9], seed::MESSAGE)).await?;
    let answer = res.ok_json("publish over HTTP/2")?;
    ensure!(answer["published"] == 1, "{answer}");
    let event = client.next_event().await?;
    ensure!(event["type"] == "message", "{event}");
    // The same refusals as over HTTP/1.1, before any body byte.
    let body = publish_body(&[9], seed::MESSAGE);
    let wrong = post("/v1/publish", Some("wrong"), Some(body.len()));
    h2.request(wrong, body.as_bytes())
        .await?
        .ensure_error("wrong key", 401)?;
    let chunked = post("/v1/publish", Some(API_KEY), None);
    h2.request(chunked, body.as_bytes())
        .await?
        .ensure_error("no length", 411)?;
    h2.request(get("/nope"), b"")
        .await?
        .ensure_error("unknown path", 404)?;
    h2.request(get("/v1/publish"), b"")
        .await?
        .ensure_error("wrong method", 405)?;
    client.expect_silence(Duration::from_millis(200)).await?;
    Ok(())
}

#[tokio::test]
async fn many_publishes_share_one_connection() -> Result<()> {
    const EVENTS: usize = 300;
    let gw = Gateway::start(GatewayOptions::default()).await?;
    let mut client = gw.connect(9).await?;
    let h2 = Arc::new(H2::connect(&gw.admin).await?);
    h2.request(get("/healthz"), b"").await?;
    // The gateway's SETTINGS are in once an answer came.
    let streams = h2.send.current_max_send_streams();
    ensure!(streams == 100, "SETTINGS_MAX_CONCURRENT_STREAMS {streams}");
    // More requests at once than the stream limit: the client queues the rest.
    let publishes = (0..EVENTS).map(|i| {
        let h2 = h2.clone();
        async move {
            let event = format!(r#"{{"type":"n","data":{{"i":{i}}}}}"#);
            h2.publish(&publish_body(&[9], &event))
                .await?
                .ok_json("publish")
        }
    });
    try_join_all(publishes).await?;
    let mut seen = vec![false; EVENTS];
    for _ in 0..EVENTS {
        let event = client.next_event().await?;
        let i = event["data"]["i"].as_u64().context("event index")? as usize;
        ensure!(!seen[i], "event {i} delivered twice");
        seen[i] = true;
    }
    Ok(())
}

#[tokio::test]
async fn http2_streams_and_connections_are_bounded() -> Result<()> {
    let gw = Gateway::start(GatewayOptions::default().arg(&["--handshake-timeout", "1s"])).await?;
    let h2 = H2::connect(&gw.admin).await?;
    // A body declared and never sent: 408 after the timeout, while the same connection
    // serves other requests.
    let (stalled, _body) = h2
        .open(post("/v1/publish", Some(API_KEY), Some(100)), false)
        .await?;
    let ok = h2.publish(&publish_body(&[9], seed::MESSAGE)).await?;
    ensure!(
        ok.status == 200,
        "publish beside a stalled stream: {}",
        ok.status
    );
    h2c::answer(stalled)
        .await?
        .ensure_error("stalled body", 408)?;
    // What a client may send before the gateway reads it: one protocol-default window, even
    // for an unauthenticated 10 MB body.
    let (refused, mut big) = h2
        .open(post("/v1/publish", Some("wrong"), Some(10_000_000)), false)
        .await?;
    big.reserve_capacity(10_000_000);
    let granted = poll_fn(|cx| big.poll_capacity(cx))
        .await
        .context("no send capacity")??;
    ensure!(granted <= 65_535, "window of {granted} bytes");
    h2c::answer(refused)
        .await?
        .ensure_error("unauthenticated body", 401)?;
    // A connection with no request open for the timeout is closed (GOAWAY), and so is one
    // silent after the preface; neither counts as a cut request: only the 408 above does.
    h2c::closed_within(h2, LIMIT).await?;
    let idle = H2::connect(&gw.admin).await?;
    h2c::closed_within(idle, LIMIT).await?;
    let cut = "gleepost_gateway_admin_connections_dropped_total{reason=\"timeout\"}";
    wait_metric(&gw, cut, 1.0).await?;
    ensure!(gw.admin_get("/healthz").await?.status == 200);
    Ok(())
}

#[tokio::test]
async fn a_client_that_reads_no_answer_is_dropped_after_the_closing_bound() -> Result<()> {
    let gw = Gateway::start(GatewayOptions::default().arg(&["--handshake-timeout", "1s"])).await?;
    // A window of zero: the gateway may send no answer's body, so all 100 stay queued.
    let mut builder = h2::client::Builder::new();
    builder.initial_window_size(0);
    let h2 = H2::connect_with(&gw.admin, &builder).await?;
    let mut answers = Vec::new();
    for _ in 0..100 {
        answers.push(h2.open(get("/metrics"), true).await?.0);
    }
    // Idle once the handlers returned, GOAWAY after the timeout, dropped one timeout later.
    h2c::closed_within(h2, LIMIT).await?;
    let cut = "gleepost_gateway_admin_connections_dropped_total{reason=\"timeout\"}";
    wait_metric(&gw, cut, 1.0).await?;
    drop(answers);
    ensure!(gw.admin_get("/healthz").await?.status == 200);
    Ok(())
}

#[tokio::test]
async fn reset_floods_leave_the_node_serving_and_free_their_shares() -> Result<()> {
    // Two connections: one publish in flight at a time (the reserved eighth keeps the other).
    let gw =
        Gateway::start(GatewayOptions::default().arg(&["--admin-max-connections", "2"])).await?;
    let body = Bytes::from(publish_body(&[9], seed::MESSAGE));
    let h2 = H2::connect(&gw.admin).await?;
    let mut flood = Ok(());
    for i in 0..3_000 {
        let complete = i % 2 == 0;
        let req = post("/v1/publish", Some(API_KEY), Some(body.len()));
        let opened = h2.open(req, false).await.and_then(|(_, mut stream)| {
            if complete {
                stream.send_data(body.clone(), true)?;
            }
            stream.send_reset(h2::Reason::CANCEL);
            Ok(())
        });
        // The gateway may end the connection for too many resets: that is a bound too.
        if let Err(e) = opened {
            flood = Err(e);
            break;
        }
    }
    drop(h2);
    // Whatever the flood did, the node serves, and no reset request kept its busy share.
    let mut client = gw.connect(9).await?;
    eventually(LIMIT, "a publish after the flood", || async {
        let fresh = H2::connect(&gw.admin).await?;
        fresh
            .publish(&publish_body(&[9], seed::MESSAGE))
            .await?
            .ok_json("publish after the flood")
    })
    .await?;
    let res = gw.publish_raw(&publish_body(&[9], seed::MESSAGE)).await?;
    ensure!(
        res.status == 200,
        "HTTP/1.1 publish after the flood: {}",
        res.status
    );
    // The first answered publish after the flood and the HTTP/1.1 one reach the client.
    for _ in 0..2 {
        let event = client.next_event().await?;
        ensure!(event["type"] == "message", "{event}");
    }
    ensure!(gw.admin_get("/healthz").await?.status == 200);
    println!("flood ended: {flood:?}");
    Ok(())
}

#[tokio::test]
async fn the_busy_share_counts_requests_not_connections() -> Result<()> {
    const CAP: usize = 16;
    const BUSY: usize = 14; // the cap minus its reserved eighth
    let redis = RedisServer::start().await?;
    let gw = Gateway::start(GatewayOptions::redis(redis.url()).arg(&[
        "--admin-max-connections",
        "16",
        "--redis-timeout",
        "30s",
    ]))
    .await?;
    gw.wait_ready(true, LIMIT).await?;
    redis.signal(libc::SIGSTOP);
    // As many publishes as the cap, all streams of one connection, each stuck on the broker.
    let h2 = Arc::new(H2::connect(&gw.admin).await?);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for _ in 0..CAP {
        let (h2, tx) = (h2.clone(), tx.clone());
        tokio::spawn(async move {
            let _ = tx.send(h2.publish(&publish_body(&[9], seed::MESSAGE)).await);
        });
    }
    let mut early = Vec::new();
    for _ in BUSY..CAP {
        early.push(next_answer(&mut rx, LIMIT).await?);
    }
    let health = gw.admin_get("/healthz").await?.status;
    redis.signal(libc::SIGCONT);
    for res in early {
        res.ensure_error("publish beyond the busy share", 503)?;
        ensure!(res.body_text().contains("in flight"), "{}", res.body_text());
    }
    ensure!(health == 200, "healthz answered {health}");
    for _ in 0..BUSY {
        let res = next_answer(&mut rx, LIMIT).await?;
        ensure!(
            res.status == 200,
            "stuck publish: {} {}",
            res.status,
            res.body_text()
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_request_reset_while_in_flight_frees_its_busy_share() -> Result<()> {
    let redis = RedisServer::start().await?;
    // Two connections: one publish in flight at a time.
    let gw = Gateway::start(GatewayOptions::redis(redis.url()).arg(&[
        "--admin-max-connections",
        "2",
        "--redis-timeout",
        "30s",
    ]))
    .await?;
    gw.wait_ready(true, LIMIT).await?;
    redis.signal(libc::SIGSTOP);
    let body = Bytes::from(publish_body(&[9], seed::MESSAGE));
    let h2 = H2::connect(&gw.admin).await?;
    let (stuck, mut stream) = h2
        .open(post("/v1/publish", Some(API_KEY), Some(body.len())), false)
        .await?;
    stream.send_data(body.clone(), true)?;
    let in_flight = "gleepost_gateway_admin_requests_in_flight";
    wait_metric(&gw, in_flight, 1.0).await?;
    // Beyond the share (one of two connections), another publish is refused.
    let beyond = gw.publish_raw(&publish_body(&[9], seed::MESSAGE)).await?;
    beyond.ensure_error("publish beyond the busy share", 503)?;
    stream.send_reset(h2::Reason::CANCEL);
    ensure!(
        h2c::answer(stuck).await.is_err(),
        "a reset stream was answered"
    );
    // Its handler is dropped with the stream, and its share freed, while Redis is still frozen.
    wait_metric(&gw, in_flight, 0.0).await?;
    redis.signal(libc::SIGCONT);
    eventually(LIMIT, "a publish after the reset", || async {
        gw.publish_raw(&publish_body(&[9], seed::MESSAGE))
            .await?
            .ok_json("publish after the reset")
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_drain_sends_goaway_and_lets_open_requests_finish() -> Result<()> {
    let mut gw = Gateway::start(GatewayOptions::default().arg(&[
        "--pre-drain-delay",
        "1s",
        "--drain-window",
        "0s",
    ]))
    .await?;
    let h2 = H2::connect(&gw.admin).await?;
    h2.request(get("/healthz"), b"").await?;
    // A publish whose body is still on its way when the admin port stops.
    let body = publish_body(&[9], seed::MESSAGE);
    let (response, mut stream) = h2
        .open(post("/v1/publish", Some(API_KEY), Some(body.len())), false)
        .await?;
    gw.signal(libc::SIGTERM);
    eventually(LIMIT, "GOAWAY: no new stream served", || async {
        let attempt =
            tokio::time::timeout(Duration::from_secs(1), h2.request(get("/healthz"), b""));
        match attempt.await {
            Ok(Ok(res)) => anyhow::bail!("a new stream was answered {}", res.status),
            Ok(Err(_)) | Err(_) => Ok(()),
        }
    })
    .await?;
    stream.send_data(Bytes::from(body), true)?;
    let res = h2c::answer(response).await?;
    ensure!(
        res.status == 200,
        "publish across GOAWAY: {} {}",
        res.status,
        res.body_text()
    );
    h2c::closed_within(h2, LIMIT).await?;
    let status = gw.wait_exit(LIMIT).await?;
    ensure!(status.success(), "exit after the drain: {status}");
    Ok(())
}
