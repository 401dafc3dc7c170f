//! Hostile clients (issue 16): whatever a peer does on its WebSocket, the gateway's memory and
//! time for it stay bounded: floods are cut (1008), pongs it will not read do not pile up
//! (bounded write buffer), a client that stops reading is closed by the write deadline or the
//! pong timeout even if it keeps sending, and protocol errors get their close code (1002, 1007,
//! 1009) before the socket closes. Bounds are counts and generous deadlines, not timings.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use gleepost_tests::eventually;
use gleepost_tests::http;
use gleepost_tests::metrics::wait_metric;
use gleepost_tests::raw_ws::{opcode, vm_rss_kib, RawClient};
use gleepost_tests::resume::seq_event;
use gleepost_tests::sockets::tcp_state;
use gleepost_tests::sse::{poll, poll_path, sse_path, SseStream};
use gleepost_tests::{ws_path, Gateway, GatewayOptions};
use tokio::io::AsyncWriteExt;

const LIMIT: Duration = Duration::from_secs(30);
/// Far above what a bounded connection can add, far below what the unbounded buffers grew to.
const RSS_GROWTH_BOUND_KIB: u64 = 64 << 10;

async fn raw(gw: &Gateway, user: u64) -> Result<RawClient> {
    RawClient::connect(&gw.public, &ws_path(user)).await
}

/// A gateway with this ping interval and pong timeout, everything else default.
async fn with_timers(ping_interval: &str, pong_timeout: &str) -> Result<Gateway> {
    Gateway::start(GatewayOptions::default().arg(&[
        "--ping-interval",
        ping_interval,
        "--pong-timeout",
        pong_timeout,
    ]))
    .await
}

fn closed(reason: &str) -> String {
    format!(r#"gleepost_gateway_connections_closed_total{{reason="{reason}"}}"#)
}

/// Write `frames` masked pings (125-byte payloads) in batches without ever reading, until the
/// gateway cuts the connection (a write fails) or all are written.
async fn ping_flood(ws: &mut RawClient, frames: usize) -> usize {
    let payload = [b'p'; 125];
    let mut sent = 0;
    while sent < frames {
        if ws.send(opcode::PING, &payload).await.is_err() {
            break;
        }
        sent += 1;
    }
    sent
}

#[tokio::test(flavor = "multi_thread")]
async fn a_ping_flood_that_never_reads_is_cut_with_1008_and_memory_stays_bounded() -> Result<()> {
    let gw = Gateway::start(GatewayOptions::default()).await?;
    let before = vm_rss_kib(gw.pid())?;
    let mut ws = raw(&gw, 9).await?;
    // 1M pings ≈ 131 MB of pongs if the server queued an answer to each.
    let sent = ping_flood(&mut ws, 1_000_000).await;
    wait_metric(&gw, &closed("too_many_frames"), 1.0).await?;
    wait_metric(&gw, "gleepost_gateway_connections", 0.0).await?;
    let grown = vm_rss_kib(gw.pid())?.saturating_sub(before);
    ensure!(
        grown < RSS_GROWTH_BOUND_KIB,
        "RSS grew by {grown} KiB after {sent} pings"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_pings_but_never_reads_is_closed_within_ping_interval_and_pong_timeout(
) -> Result<()> {
    // No frame budget in the way: the bounded write buffer keeps its unread pongs small, and
    // the deadline on the gateway's own ping write (or the pong timeout) closes it.
    let gw = Gateway::start(GatewayOptions::default().arg(&[
        "--client-frame-rate",
        "100000000",
        "--ping-interval",
        "1s",
        "--pong-timeout",
        "1s",
    ]))
    .await?;
    let before = vm_rss_kib(gw.pid())?;
    let mut ws = raw(&gw, 9).await?;
    let sent = ping_flood(&mut ws, 1_000_000).await;
    wait_metric(&gw, "gleepost_gateway_connections", 0.0).await?;
    let cut =
        gw.metric(&closed("slow_consumer")).await? + gw.metric(&closed("pong_timeout")).await?;
    ensure!(
        cut == 1.0,
        "closed neither by the write deadline nor the pong timeout"
    );
    let grown = vm_rss_kib(gw.pid())?.saturating_sub(before);
    ensure!(
        grown < RSS_GROWTH_BOUND_KIB,
        "RSS grew by {grown} KiB after {sent} pings"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_stops_reading_is_closed_by_the_write_deadline() -> Result<()> {
    // The queue is far larger than what is published, so only the write deadline can act.
    let gw = Gateway::start(GatewayOptions::default().arg(&[
        "--queue-bytes",
        "268435456",
        "--queue-events",
        "100000",
        "--ping-interval",
        "1h",
        "--pong-timeout",
        "2s",
    ]))
    .await?;
    let _silent = gw.connect(9).await?; // never read from again
    let data = "x".repeat(50_000);
    let event = format!(r#"{{"type":"message","data":"{data}"}}"#);
    // ≈ 20 MB: more than loopback socket buffers hold.
    let started = Instant::now();
    for _ in 0..400 {
        gw.publish(&[9], &event).await?;
        if gw.metric(&closed("slow_consumer")).await? == 1.0 {
            break;
        }
    }
    eventually(LIMIT, "closed as a slow consumer", || async {
        ensure!(
            gw.metric(&closed("slow_consumer")).await? == 1.0,
            "still open"
        );
        Ok(())
    })
    .await
    .with_context(|| format!("after {:?}", started.elapsed()))?;
    wait_metric(&gw, "gleepost_gateway_connections", 0.0).await
}

/// Publish ≈ 10 MB to user 9 (more than its queue and the kernel's buffers of a client that
/// does not read), wait until no connection is open, then until the gateway's socket to
/// `client` is gone from the kernel's table (it stays in FIN-WAIT-1 while it holds data the
/// client does not take, if nothing aborts it).
async fn socket_is_gone_after_the_cut(gw: &Gateway, client: std::net::SocketAddr) -> Result<()> {
    let server: std::net::SocketAddr = gw.public.parse()?;
    let event = format!(r#"{{"type":"message","data":"{}"}}"#, "x".repeat(50_000));
    for _ in 0..200 {
        gw.publish(&[9], &event).await?;
        if gw.metric("gleepost_gateway_connections").await? == 0.0 {
            break;
        }
    }
    wait_metric(gw, "gleepost_gateway_connections", 0.0).await?;
    eventually(
        LIMIT,
        "the gateway's socket of the cut client is gone",
        || async {
            let state = tcp_state(server, client)?;
            ensure!(state.is_none(), "still there, state {state:?}");
            Ok(())
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_websocket_closed_for_not_reading_is_reset_not_left_with_its_buffers() -> Result<()> {
    // Closing a client that stopped reading leaves unsent data in the kernel; left alone the
    // socket stays in FIN-WAIT-1 with its send buffer (megabytes) for as long as the client
    // keeps its end open and answers window probes: outside every limit of the node, and a
    // user could pile such sockets up connection after connection. A close frame not taken
    // within the close grace resets the connection. (Ping interval 1 h: the kernel's own
    // timeout, twice ping + pong, cannot be what ends it here.)
    let gw = with_timers("1h", "1s").await?;
    let silent = RawClient::connect_with_rcvbuf(&gw.public, &ws_path(9), 4096).await?;
    socket_is_gone_after_the_cut(&gw, silent.local_addr()?).await?;
    drop(silent);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_sse_stream_cut_for_not_reading_does_not_linger_with_its_buffers() -> Result<()> {
    // The stream's end not taken within the pong timeout: the gateway takes the socket back
    // from hyper and resets it. (Ping interval 1 h, as above: not the kernel's timeout.)
    let gw = with_timers("1h", "1s").await?;
    let silent = SseStream::connect_with_rcvbuf(&gw.public, &sse_path(9, None), &[], 4096).await?;
    socket_is_gone_after_the_cut(&gw, silent.local_addr()?).await?;
    drop(silent);
    Ok(())
}

/// User 9's history: one small event, then ≈ 6 MB (more than the kernel buffers of a
/// connection hold); returns the small one's id, to resume after.
async fn large_history(gw: &Gateway) -> Result<String> {
    let first = gw.publish(&[9], &seq_event(0, 0)).await?;
    let first = first["ids"]["9"].as_str().context("no id")?.to_owned();
    for seq in 1..=120 {
        gw.publish(&[9], &seq_event(seq, 50_000)).await?;
    }
    Ok(first)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_poll_answer_that_is_not_read_keeps_its_slot_until_the_connection_is_reset() -> Result<()>
{
    // A long-poll answered with megabytes from history that the client never reads: while
    // hyper still writes it, it counts against the per-user limit (else one user could pile
    // such answers up without bound), and an answer not taken within ping interval + pong
    // timeout resets the connection.
    let gw = Gateway::start(GatewayOptions::default().arg(&[
        "--ping-interval",
        "1s",
        "--pong-timeout",
        "1s",
        "--max-connections-per-user",
        "2",
        "--max-replay-bytes",
        "16777216",
    ]))
    .await?;
    let first = large_history(&gw).await?;
    let path = poll_path(9, Some(&first), "1s");
    let mut silent = Vec::new();
    for _ in 0..2 {
        let mut stream = http::connect_with_rcvbuf(&gw.public, 4096).await?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n", gw.public);
        stream.write_all(request.as_bytes()).await?;
        let (head, _) = http::read_head(&mut stream).await?;
        ensure!(head.status == 200, "poll answered {}", head.status);
        silent.push(stream);
    }
    let third = poll(&gw.public, 9, None, "1s").await?;
    ensure!(
        third.status == 429,
        "a third poll of the user got {} while two answers were still being written",
        third.status
    );
    let server: std::net::SocketAddr = gw.public.parse()?;
    for stream in &silent {
        let client = stream.local_addr()?;
        eventually(LIMIT, "the unread answer's connection is reset", || async {
            let state = tcp_state(server, client)?;
            ensure!(state.is_none(), "still there, state {state:?}");
            Ok(())
        })
        .await?;
    }
    let after = poll(&gw.public, 9, None, "1s").await?;
    ensure!(after.status == 200, "after the resets: {}", after.status);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_sse_replay_that_is_not_read_ends_the_stream_as_a_slow_consumer() -> Result<()> {
    // One large replay chunk, never read, then nothing to send for a while: its write (not
    // only its hand-over to hyper) has ping interval + pong timeout (11 s here). Without that
    // the stream waited for the kernel's timeout (24 s here), counted as client_gone.
    let gw = Gateway::start(GatewayOptions::default().arg(&[
        "--ping-interval",
        "10s",
        "--pong-timeout",
        "1s",
        "--max-replay-bytes",
        "16777216",
    ]))
    .await?;
    let first = large_history(&gw).await?;
    let silent =
        SseStream::connect_with_rcvbuf(&gw.public, &sse_path(9, Some(&first)), &[], 4096).await?;
    eventually(
        LIMIT,
        "the unread SSE replay ended as a slow consumer",
        || async {
            let (slow, gone) = (
                gw.metric(&closed("slow_consumer")).await?,
                gw.metric(&closed("client_gone")).await?,
            );
            ensure!(gone == 0.0, "ended by the kernel's timeout instead");
            ensure!(slow == 1.0, "{slow} slow consumers");
            Ok(())
        },
    )
    .await?;
    drop(silent);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn unsolicited_pongs_do_not_keep_a_non_reading_client_alive() -> Result<()> {
    let gw = with_timers("1s", "1s").await?;
    let mut ws = raw(&gw, 9).await?;
    let deadline = Instant::now() + LIMIT;
    // Pongs with guessable payloads, never reading the server's pings.
    let mut n: u64 = 0;
    while gw.metric(&closed("pong_timeout")).await? < 1.0 {
        if Instant::now() > deadline {
            bail!("a client sending unsolicited pongs stayed connected");
        }
        let _ = ws.send(opcode::PONG, &n.to_be_bytes()).await;
        let _ = ws.send(opcode::PONG, b"").await;
        n += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    wait_metric(&gw, "gleepost_gateway_connections", 0.0).await
}

#[tokio::test(flavor = "multi_thread")]
async fn protocol_errors_get_their_close_code_before_the_socket_closes() -> Result<()> {
    let gw = Gateway::start(GatewayOptions::default()).await?;
    // (what, first header byte, masked, payload, expected close code)
    let big = vec![b'x'; 5_000];
    let cases: [(&str, u8, bool, &[u8], u16); 8] = [
        ("invalid UTF-8 text", 0x81, true, &[0xff, 0xfe, 0xfd], 1007),
        ("unmasked frame", 0x81, false, b"hi", 1002),
        ("RSV1 set", 0xC1, true, b"hi", 1002),
        ("reserved data opcode", 0x83, true, b"", 1002),
        ("reserved control opcode", 0x8B, true, b"", 1002),
        ("one-byte close payload", 0x88, true, &[0x03], 1002),
        ("close with code 999", 0x88, true, &[0x03, 0xE7], 1002),
        ("frame over --max-client-frame", 0x82, true, &big, 1009),
    ];
    for (what, first, masked, payload, expected) in cases {
        let mut ws = raw(&gw, 9).await?;
        ws.send_frame(first, masked, payload).await?;
        let read = ws
            .read_to_end(Duration::from_secs(10))
            .await
            .context(what)?;
        ensure!(
            read.close_code == Some(expected),
            "{what}: expected close {expected}, got {:?}",
            read.close_code
        );
    }
    // Every 1002 is counted as a protocol error, the close with a bad code included.
    let answered_1002 = cases.iter().filter(|case| case.4 == 1002).count();
    wait_metric(&gw, &closed("protocol_error"), answered_1002 as f64).await?;
    let client_closed = gw.metric(&closed("client_closed")).await?;
    ensure!(
        client_closed == 0.0,
        "{client_closed} counted as client_closed"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn too_many_frames_in_a_second_are_closed_with_1008() -> Result<()> {
    let gw = Gateway::start(GatewayOptions::default()).await?;
    let mut ws = raw(&gw, 9).await?;
    for _ in 0..100 {
        ws.send(opcode::TEXT, b"keepalive").await?;
    }
    let read = ws.read_to_end(Duration::from_secs(10)).await?;
    ensure!(
        read.close_code == Some(1008),
        "expected close 1008, got {:?}",
        read.close_code
    );
    wait_metric(&gw, &closed("too_many_frames"), 1.0).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_empty_continuation_frames_is_closed_with_1008() -> Result<()> {
    // Fragments never make a message the session could count: only the byte budget beneath
    // tungstenite sees them (before it, 660 million such frames burned a core for a minute).
    let gw = Gateway::start(GatewayOptions::default()).await?;
    let mut ws = raw(&gw, 9).await?;
    ws.send_frame(opcode::TEXT, true, b"x").await?; // not final: a message begins
                                                    // 100 writes of 50,000 empty continuation frames (6 bytes each): 30 MB in all.
    for _ in 0..100 {
        if ws.send_repeated(0x00, b"", 50_000).await.is_err() {
            break; // cut
        }
    }
    wait_metric(&gw, &closed("too_many_frames"), 1.0).await?;
    wait_metric(&gw, "gleepost_gateway_connections", 0.0).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_user_that_keeps_asking_for_its_history_gets_resync_instead_of_reads() -> Result<()> {
    // Long-polls in a loop from an old id: each answer ~19 KB of history, with a replay bound
    // of 20 KB, so a user's budget of 16 full replays a minute lasts 16 or 17 polls (each
    // read is charged what it returned). Then `resync` (`too_many`) without a read, every
    // time; another user's replays are not affected.
    let redis = gleepost_tests::RedisServer::start().await?;
    let gw = Gateway::on_redis(&redis, &["--max-replay-bytes", "20000"]).await?;
    let mut since = std::collections::HashMap::new();
    for user in [9, 10, 11] {
        let first = gw.publish(&[user], &seq_event(0, 0)).await?;
        since.insert(
            user,
            first["ids"][user.to_string()]
                .as_str()
                .context("no id")?
                .to_owned(),
        );
        for seq in 1..=18 {
            gw.publish(&[user], &seq_event(seq, 950)).await?;
        }
    }
    let mut replayed = 0;
    let mut refused = 0;
    for _ in 0..30 {
        let res = poll(&gw.public, 9, Some(&since[&9]), "1s").await?;
        let body = res.json()?;
        let events = body["events"].as_array().context("events")?;
        match events.first().map(|e| e["type"].as_str()) {
            Some(Some("resync")) => {
                ensure!(events[0]["data"]["reason"] == "too_many", "{body}");
                refused += 1;
            }
            _ => {
                ensure!(events.len() == 18, "a full replay: {} events", events.len());
                ensure!(refused == 0, "a replay after a refusal");
                replayed += 1;
            }
        }
    }
    ensure!(
        (16..=17).contains(&replayed) && refused == 30 - replayed,
        "{replayed} replayed, {refused} refused"
    );
    // An id of another epoch costs the same read before its `resync` (`epoch_changed`): it
    // is charged too (before, a resync was charged nothing, and such a loop was never cut).
    let mut reasons = Vec::new();
    for _ in 0..30 {
        let res = poll(&gw.public, 11, Some("zzzzzzzzzz-1-0"), "1s").await?;
        let body = res.json()?;
        reasons.push(
            body["events"][0]["data"]["reason"]
                .as_str()
                .unwrap_or("?")
                .to_owned(),
        );
    }
    let changed = reasons.iter().take_while(|r| *r == "epoch_changed").count();
    ensure!(
        changed == 16 && reasons[changed..].iter().all(|r| r == "too_many"),
        "resync reasons: {reasons:?}"
    );
    let res = poll(&gw.public, 10, Some(&since[&10]), "1s").await?;
    let body = res.json()?;
    ensure!(
        body["events"].as_array().map(Vec::len) == Some(18),
        "user 10: {body}"
    );
    Ok(())
}
