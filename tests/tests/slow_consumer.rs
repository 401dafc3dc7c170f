//! Slow consumers (issue 4): a client that stops reading while a publisher keeps publishing is
//! cut (close code 4000, "reconnect with since") once its bounded queue overflows, counted in
//! `events_dropped_total{reason="slow_consumer"}`; the other connections of the same user and
//! other users get every event; the gateway's memory stays bounded meanwhile; and the cut client
//! resumes with `since` = the last id it processed and loses nothing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use gleepost_event::{Event, HistoryConfig, Publisher};
use gleepost_tests::eventually;
use gleepost_tests::metrics::wait_metric;
use gleepost_tests::raw_ws::{vm_rss_kib, RawClient};
use gleepost_tests::resume::{connect_since, publish_seq, seq_event, SeqCheck};
use gleepost_tests::{token, ws_path, Client, Gateway, GatewayOptions, RedisServer};

const TOTAL: u64 = 3_000;
/// Padding per event: ~2 KiB events.
const PAD: usize = 2_000;
const HISTORY: usize = 5_000;
/// Memory the gateway may grow by while the client stalls (generous: a memory bound, not a
/// measurement).
const RSS_BOUND_KIB: u64 = 64 * 1024;

/// Events the publisher may be ahead of the slowest *reading* client: fewer than fit in the
/// 64 KiB queue, so reading clients can never overflow, however the machine schedules them.
const WINDOW: u64 = 16;

/// Read events 1..=`last`, publishing progress for the publisher's flow control.
async fn read_all(
    name: &str,
    mut client: Client,
    last: u64,
    progress: Arc<AtomicU64>,
) -> Result<(SeqCheck, Client)> {
    let mut check = SeqCheck::new(name, 1);
    while check.last() < last {
        check.read_until(&mut client, check.next).await?;
        progress.store(check.last(), Ordering::Release);
    }
    Ok((check, client))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_stops_reading_is_cut_with_4000_others_get_everything_and_it_resumes(
) -> Result<()> {
    let redis = RedisServer::start().await?;
    let history = HISTORY.to_string();
    let gw = Gateway::on_redis(
        &redis,
        &[
            "--queue-events",
            "64",
            "--queue-bytes",
            "65536",
            "--history-size",
            &history,
            "--max-replay",
            &history,
            // Everything missed is replayed: 3,000 events of ≈ 2 KiB.
            "--max-replay-bytes",
            "16777216",
        ],
    )
    .await?;
    let publisher = Publisher::connect(&redis.url())
        .await?
        .with_history(HistoryConfig {
            size: HISTORY,
            ..HistoryConfig::default()
        });

    // The stalled client: handshake done by hand, then no reads (8 KiB receive buffer).
    let stalled = RawClient::connect_with_rcvbuf(&gw.public, &ws_path(91), 8 * 1024).await?;
    let same_user = gw.connect(91).await?;
    let other_user = gw.connect(92).await?;
    let progress = [Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0))];
    let readers = [
        tokio::spawn(read_all(
            "user 91, reading",
            same_user,
            TOTAL,
            progress[0].clone(),
        )),
        tokio::spawn(read_all("user 92", other_user, TOTAL, progress[1].clone())),
    ];
    eventually(Duration::from_secs(5), "three connections", || async {
        ensure!(gw.metric("gleepost_gateway_connections").await? == 3.0);
        Ok(())
    })
    .await?;
    let rss_before = vm_rss_kib(gw.pid())?;

    let publishing = tokio::spawn(async move {
        for seq in 1..=TOTAL {
            // Flow control on the reading clients only: the stalled one falls behind freely.
            while progress
                .iter()
                .any(|p| p.load(Ordering::Acquire) + WINDOW < seq)
            {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let event = Event::from_json(seq_event(seq, PAD).as_bytes())?;
            publisher
                .publish(&[91, 92], &event)
                .await
                .with_context(|| format!("publishing seq {seq}"))?;
        }
        anyhow::Ok(())
    });

    // Cut while it still reads nothing: the gateway closes the connection on its own.
    eventually(
        Duration::from_secs(20),
        "stalled client cut as a slow consumer",
        || async {
            let dropped = gw
                .metric("gleepost_gateway_events_dropped_total{reason=\"slow_consumer\"}")
                .await?;
            let closed = gw
                .metric("gleepost_gateway_connections_closed_total{reason=\"slow_consumer\"}")
                .await?;
            ensure!(
                dropped > 0.0 && closed == 1.0,
                "dropped {dropped}, closed {closed}"
            );
            Ok(())
        },
    )
    .await?;

    tokio::time::timeout(Duration::from_secs(60), publishing)
        .await
        .context("publisher did not finish")???;
    let mut others = Vec::new();
    for r in readers {
        others.push(
            tokio::time::timeout(Duration::from_secs(60), r)
                .await
                .context("reader did not finish")???,
        );
    }
    let rss_after = vm_rss_kib(gw.pid())?;
    ensure!(
        rss_after < rss_before + RSS_BOUND_KIB,
        "gateway RSS grew from {rss_before} KiB to {rss_after} KiB while a client stalled"
    );
    ensure!(
        gw.metric("gleepost_gateway_connections").await? == 2.0,
        "the readers must stay connected"
    );

    // Now the stalled client reads what reached it: events 1..=k in order, then the end.
    let got = stalled.read_to_end(Duration::from_secs(20)).await?;
    let mut check = SeqCheck::new("stalled client", 1);
    for text in &got.texts {
        check.accept(text)?;
    }
    ensure!(
        check.last() < TOTAL,
        "the stalled client was not cut: it got all {TOTAL} events"
    );
    ensure!(
        got.close_code.is_none_or(|c| c == 4000),
        "closed with {:?}, expected 4000",
        got.close_code
    );
    eprintln!(
        "stalled client: {} events then {:?}; RSS {rss_before} -> {rss_after} KiB",
        check.last(),
        got.close_code
    );

    // It resumes after the last event it processed: nothing lost, then live.
    let since = check
        .last_id
        .clone()
        .context("no event reached the stalled client")?;
    let mut resumed = connect_since(&gw, 91, &since).await?;
    check.read_until(&mut resumed, TOTAL).await?;
    gw.publish(&[91, 92], &seq_event(TOTAL + 1, 0)).await?;
    check.read_until(&mut resumed, TOTAL + 1).await?;
    for (check, client) in &mut others {
        check.read_until(client, TOTAL + 1).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_does_not_take_its_replay_is_cut_with_4000() -> Result<()> {
    // Embedded broker; a silent client is given ping interval + pong timeout = 2 s.
    let gw = Gateway::start(GatewayOptions::default().arg(&[
        "--history-size",
        "1000",
        "--max-replay",
        "1000",
        "--max-replay-bytes",
        "16777216",
        "--ping-interval",
        "1s",
        "--pong-timeout",
        "1s",
    ]))
    .await?;
    let since = publish_seq(&gw, 93, 0).await?;
    // ~10 MiB to replay: more than the socket buffers hold.
    for seq in 1..=640 {
        gw.publish(&[93], &seq_event(seq, 16 * 1024)).await?;
    }
    let stalled = RawClient::connect_with_rcvbuf(
        &gw.public,
        &format!("/ws?access_token={}&since={since}", token(93)),
        8 * 1024,
    )
    .await?;
    // Cut by the gateway, as a slow consumer, while it still reads nothing.
    wait_metric(
        &gw,
        "gleepost_gateway_connections_closed_total{reason=\"slow_consumer\"}",
        1.0,
    )
    .await?;
    ensure!(gw.metric("gleepost_gateway_connections").await? == 0.0);
    drop(stalled);
    Ok(())
}
