//! SSE slow consumers (issue 12): an SSE client that stops reading its socket while large events
//! keep coming is ended by the gateway once a chunk of its stream is not taken within the pong
//! timeout (its socket is full), counted in `connections_closed_total{reason="slow_consumer"}`,
//! and its connection is reset by the server, while another SSE client of the same user that
//! reads gets every event. The stalled client, reading again, finds the events its kernel had
//! received, in order, then the end of the connection, and resumes with `Last-Event-ID` losing
//! nothing.
//!
//! The queues are made large enough to hold every event published, so the cut can only come from
//! the write deadline (`sse.rs`), not from a queue overflow (checked: no event dropped). No
//! timing assertions: every wait is bounded and generous.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use gleepost_tests::eventually;
use gleepost_tests::resume::{seq_event, SeqCheck};
use gleepost_tests::sockets::{tcp_state, ESTABLISHED};
use gleepost_tests::sse::{sse_path, SseStream};
use gleepost_tests::{Gateway, RedisServer};

const USER: u64 = 93;
/// Events published: ~18 MB in all, several times what the kernel buffers of the stalled
/// connection (at most 4 MiB of send buffer here, [`STALLED_RCVBUF`] of receive buffer) and the
/// gateway's bounded chunks in between can hold.
const TOTAL: u64 = 300;
/// The stalled client's receive buffer: room for a few events, which is what it still reads
/// after the reset (the server's unsent data is discarded).
const STALLED_RCVBUF: u32 = 256 * 1024;
/// Padding per event: ~60 KB events (under the default 64 KiB event limit).
const PAD: usize = 60_000;
/// Events the publisher may be ahead of the reading client, so that it never falls behind
/// whatever the machine's load.
const WINDOW: u64 = 8;
/// Bound of every wait (not a timing assertion).
const LONG: Duration = Duration::from_secs(60);

const SSE_OPEN: &str = "gleepost_gateway_transport_connections{transport=\"sse\"}";
const CLOSED_SLOW: &str = "gleepost_gateway_connections_closed_total{reason=\"slow_consumer\"}";
const DROPPED_SLOW: &str = "gleepost_gateway_events_dropped_total{reason=\"slow_consumer\"}";

/// Read events 1..=`last` from `stream`, in order, each once; `progress` is the last one read.
/// Returns the stream, still open.
async fn read_all(mut stream: SseStream, last: u64, progress: Arc<AtomicU64>) -> Result<SseStream> {
    let mut check = SeqCheck::new("the reading SSE client", 1);
    while check.last() < last {
        let event = stream
            .next_event(LONG)
            .await?
            .with_context(|| format!("the stream ended after seq {}", check.last()))?;
        ensure!(event.event == "message", "unexpected event {event:?}");
        check.accept(&event.data)?;
        ensure!(event.id == check.last_id, "id line {:?}", event.id);
        progress.store(check.last(), Ordering::Release);
    }
    Ok(stream)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_sse_client_that_stops_reading_is_ended_at_the_write_deadline_others_get_everything(
) -> Result<()> {
    let redis = RedisServer::start().await?;
    let gw = Gateway::on_redis(
        &redis,
        &[
            // The write deadline.
            "--pong-timeout",
            "1s",
            // Room for every event published (TOTAL of ~60 KB) on each connection.
            "--queue-events",
            "1000",
            "--queue-bytes",
            "67108864",
            // The stalled client's resume replays what it missed (up to ≈ 18 MB).
            "--max-replay-bytes",
            "67108864",
        ],
    )
    .await?;

    let path = sse_path(USER, None);
    // Reads the response head, then nothing more.
    let mut stalled =
        SseStream::connect_with_rcvbuf(&gw.public, &path, &[], STALLED_RCVBUF).await?;
    let client_end = stalled.local_addr()?;
    let reading = SseStream::connect(&gw.public, &path, &[]).await?;
    eventually(LONG, "two SSE streams open", || async {
        ensure!(gw.metric(SSE_OPEN).await? == 2.0);
        Ok(())
    })
    .await?;
    let server_end = gw.public.parse()?;
    ensure!(tcp_state(server_end, client_end)? == Some(ESTABLISHED));

    let progress = Arc::new(AtomicU64::new(0));
    let reader = tokio::spawn(read_all(reading, TOTAL, progress.clone()));
    let mut ids = Vec::new();
    for seq in 1..=TOTAL {
        // Flow control on the reading client only: the stalled one falls behind freely.
        eventually(LONG, &format!("the reader near seq {seq}"), || async {
            ensure!(progress.load(Ordering::Acquire) + WINDOW >= seq);
            Ok(())
        })
        .await?;
        let res = gw.publish(&[USER], &seq_event(seq, PAD)).await?;
        let id = res["ids"][USER.to_string()].as_str();
        ids.push(
            id.with_context(|| format!("seq {seq}: no id in {res}"))?
                .to_owned(),
        );
    }
    let _reading = tokio::time::timeout(LONG, reader)
        .await
        .context("the reading client did not get every event")???;

    // The stalled stream was ended by the write deadline: counted as a slow consumer, no event
    // dropped by a queue overflow, one SSE stream left, and its socket closed by the server.
    eventually(
        LONG,
        "the stalled stream ended as a slow consumer",
        || async {
            let (closed, open) = (gw.metric(CLOSED_SLOW).await?, gw.metric(SSE_OPEN).await?);
            ensure!(closed == 1.0 && open == 1.0, "closed {closed}, open {open}");
            Ok(())
        },
    )
    .await?;
    ensure!(gw.metric(DROPPED_SLOW).await? == 0.0, "a queue overflowed");
    eventually(LONG, "the server closed the stalled connection", || async {
        let state = tcp_state(server_end, client_end)?;
        ensure!(state != Some(ESTABLISHED), "server side still established");
        Ok(())
    })
    .await?;

    // Reading again: the events its kernel received, in order, then the connection ends inside
    // the chunked body (the `close` event was not taken in time, and the server reset the
    // connection).
    let mut check = SeqCheck::new("the stalled SSE client", 1);
    let ended = loop {
        match stalled.next_event(LONG).await {
            Ok(Some(event)) if event.event == "message" => check.accept(&event.data)?,
            Ok(other) => bail!("after seq {}: {other:?}", check.last()),
            Err(e) => break e,
        }
    };
    ensure!(
        ended
            .downcast_ref::<tokio::time::error::Elapsed>()
            .is_none(),
        "the stalled stream is still open after seq {}",
        check.last()
    );
    let cut = check.last();
    ensure!(
        cut < TOTAL,
        "the stalled client got every event: it was never cut"
    );
    ensure!(cut > 0, "the stalled client got no event before the cut");
    println!("stalled SSE client cut after seq {cut} of {TOTAL}: {ended:#}");

    // It resumes after the last event it processed and loses nothing.
    let last = check.last_id.clone().context("no id")?;
    let mut resumed = SseStream::connect(&gw.public, &path, &[("Last-Event-ID", &last)]).await?;
    while check.last() < TOTAL {
        let event = resumed
            .next_event(LONG)
            .await?
            .with_context(|| format!("resumed stream ended after seq {}", check.last()))?;
        check.accept(&event.data)?;
    }
    ensure!(check.last_id.as_deref() == ids.last().map(String::as_str));
    Ok(())
}
