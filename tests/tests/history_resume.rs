//! Resume by event id on the Redis broker (issue 4): `?since=<id>` / `Last-Event-ID` replays
//! exactly the missed events then continues live; whenever the gateway cannot prove it replayed
//! everything (storage reset, history trimmed, too many missed, malformed id) the first frame is a
//! `resync` control event, then live events continue. Never a silent gap.

use anyhow::{ensure, Context, Result};
use gleepost_tests::resume::{
    connect_last_event_id, connect_since, expect_resync, parse_frame, publish_seq, seq_event,
    Frame, SeqCheck,
};
use gleepost_tests::{Gateway, RedisServer};

fn epoch(id: &str) -> &str {
    id.split('-').next().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn flushall_then_resume_with_an_old_id_gets_resync_epoch_changed_then_live() -> Result<()> {
    let redis = RedisServer::start().await?;
    let gw = Gateway::on_redis(&redis, &[]).await?;
    let user = 11;
    let mut live = gw.connect(user).await?;
    let mut live_check = SeqCheck::new("connected client", 1);

    let mut old = Vec::new();
    for seq in 1..=3 {
        old.push(publish_seq(&gw, user, seq).await?);
    }
    live_check.read_until(&mut live, 3).await?;
    ensure!(live_check.last_id.as_deref() == Some(old[2].as_str()));

    let _: String = redis.cmd(&["FLUSHALL"]).await?;

    // Nothing published since the flush: the history is gone, the old id must not look like
    // "nothing happened".
    let mut r1 = connect_since(&gw, user, &old[2]).await?;
    let latest = expect_resync(&mut r1, "epoch_changed").await?;
    ensure!(
        latest.is_none(),
        "empty history, yet resync carries {latest:?}"
    );

    let id4 = publish_seq(&gw, user, 4).await?;
    ensure!(
        epoch(&id4) != epoch(&old[2]),
        "history recreated with the old epoch: {id4} after {}",
        old[2]
    );
    let mut r1_check = SeqCheck::new("resumed after flush", 4);
    r1_check.read_until(&mut r1, 4).await?;
    live_check.read_until(&mut live, 4).await?;

    // After events of the new epoch: resync names the newest id (Last-Event-ID this time).
    let id5 = publish_seq(&gw, user, 5).await?;
    let mut r2 = connect_last_event_id(&gw, user, &old[1]).await?;
    let latest = expect_resync(&mut r2, "epoch_changed").await?;
    ensure!(
        latest.as_deref() == Some(id5.as_str()),
        "resync id {latest:?}, newest is {id5}"
    );
    publish_seq(&gw, user, 6).await?;
    let mut r2_check = SeqCheck::new("resumed with Last-Event-ID", 6);
    r2_check.read_until(&mut r2, 6).await?;

    // The resync's id is a valid resume point: exactly what followed it.
    let mut r3 = connect_since(&gw, user, &id5).await?;
    let mut r3_check = SeqCheck::new("resumed after the resync id", 6);
    r3_check.read_until(&mut r3, 6).await?;
    publish_seq(&gw, user, 7).await?;
    r3_check.read_until(&mut r3, 7).await?;
    r1_check.read_until(&mut r1, 7).await?;
    live_check.read_until(&mut live, 7).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn resume_replays_exactly_the_missed_events_up_to_the_limit_else_resync() -> Result<()> {
    let redis = RedisServer::start().await?;
    let gw = Gateway::on_redis(&redis, &["--history-size", "10", "--max-replay", "5"]).await?;
    let user = 21;
    let mut ids = vec![String::new()]; // ids[seq]
    for seq in 1..=12 {
        ids.push(publish_seq(&gw, user, seq).await?);
    }

    // 5 missed (= --max-replay): replayed exactly, then live.
    let mut c = connect_since(&gw, user, &ids[7]).await?;
    let mut check = SeqCheck::new("5 missed", 8);
    check.read_until(&mut c, 12).await?;
    ensure!(check.last_id.as_deref() == Some(ids[12].as_str()));
    ids.push(publish_seq(&gw, user, 13).await?);
    check.read_until(&mut c, 13).await?;

    // 6 missed: more than the limit.
    let mut c = connect_since(&gw, user, &ids[7]).await?;
    let latest = expect_resync(&mut c, "too_many").await?;
    ensure!(
        latest.as_deref() == Some(ids[13].as_str()),
        "resync id {latest:?}"
    );
    ids.push(publish_seq(&gw, user, 14).await?);
    SeqCheck::new("after too_many", 14)
        .read_until(&mut c, 14)
        .await?;

    // Nothing missed: no frame at all, the next frame is the next live event.
    let mut c = connect_last_event_id(&gw, user, &ids[14]).await?;
    ids.push(publish_seq(&gw, user, 15).await?);
    SeqCheck::new("nothing missed", 15)
        .read_until(&mut c, 15)
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replay_is_bounded_in_bytes_like_the_queue_else_resync() -> Result<()> {
    // A resume's replay is the connection's own copy of its events: it may not exceed
    // `--max-replay-bytes`, whatever `--max-replay` allows (a hostile client resuming from an
    // old id on many connections held ≈ max-replay × max-event-bytes each).
    let redis = RedisServer::start().await?;
    let gw = Gateway::on_redis(&redis, &["--max-replay-bytes", "65536"]).await?;
    let user = 23;
    let mut ids = vec![String::new()]; // ids[seq]
    for seq in 1..=20 {
        let res = gw.publish(&[user], &seq_event(seq, 10_000)).await?;
        ids.push(
            res["ids"][user.to_string()]
                .as_str()
                .context("no id")?
                .to_owned(),
        );
    }
    // 5 missed, ≈ 50 KB: replayed exactly.
    let mut c = connect_since(&gw, user, &ids[15]).await?;
    SeqCheck::new("5 large missed", 16)
        .read_until(&mut c, 20)
        .await?;
    // 15 missed, ≈ 150 KB: over the bound, though far under --max-replay (1,000).
    let mut c = connect_since(&gw, user, &ids[5]).await?;
    let latest = expect_resync(&mut c, "too_many").await?;
    ensure!(
        latest.as_deref() == Some(ids[20].as_str()),
        "resync id {latest:?}"
    );
    // The resync is counted as a resync, not as a replayed event.
    let replayed = "gleepost_gateway_events_replayed_total";
    let count = gw.metric(replayed).await?;
    ensure!(count == 5.0, "{count} replayed");

    // Small events: 249 missed are read 100 at a time and replayed whole, in order.
    let user = 24;
    let first = publish_seq(&gw, user, 1).await?;
    for seq in 2..=250 {
        publish_seq(&gw, user, seq).await?;
    }
    let mut c = connect_since(&gw, user, &first).await?;
    SeqCheck::new("249 small missed", 2)
        .read_until(&mut c, 250)
        .await?;
    let count = gw.metric(replayed).await?;
    ensure!(count == 5.0 + 249.0, "{count} replayed");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn trimmed_history_and_malformed_or_foreign_ids_get_resync_then_live() -> Result<()> {
    let redis = RedisServer::start().await?;
    let gw = Gateway::on_redis(&redis, &["--history-size", "10"]).await?;
    let user = 31;
    let first = publish_seq(&gw, user, 1).await?;
    // MAXLEN ~ trims whole stream nodes (100 entries): publish enough to drop the first one.
    let mut latest = first.clone();
    for seq in 2..=501 {
        latest = publish_seq(&gw, user, seq).await?;
    }
    let stream_id = first.split_once('-').map(|(_, s)| s).unwrap_or_default();
    let key = format!("gp:hist:{{{user}}}");
    let still: Vec<redis::Value> = redis.cmd(&["XRANGE", &key, stream_id, stream_id]).await?;
    ensure!(still.is_empty(), "setup: the first event is still stored");
    let len: i64 = redis.cmd(&["XLEN", &key]).await?;
    ensure!(
        (10..=200).contains(&len),
        "history of {len} entries (size 10)"
    );

    let mut c = connect_since(&gw, user, &first).await?;
    let id = expect_resync(&mut c, "trimmed").await?;
    ensure!(id.as_deref() == Some(latest.as_str()), "resync id {id:?}");
    publish_seq(&gw, user, 502).await?;
    SeqCheck::new("after trimmed", 502)
        .read_until(&mut c, 502)
        .await?;

    for (since, reason) in [
        ("garbage", "unknown_id"),
        ("", "unknown_id"),
        ("abc-1-2-3", "unknown_id"),
        ("zzzzzzzzzz-1-0", "epoch_changed"),
    ] {
        let mut c = connect_since(&gw, user, since).await?;
        let id = expect_resync(&mut c, reason)
            .await
            .with_context(|| format!("since={since:?}"))?;
        ensure!(
            id.is_some(),
            "since={since:?}: resync without the newest id"
        );
    }
    let mut c = connect_last_event_id(&gw, user, "garbage").await?;
    expect_resync(&mut c, "unknown_id").await?;
    let seq = 503;
    publish_seq(&gw, user, seq).await?;
    SeqCheck::new("after unknown_id", seq)
        .read_until(&mut c, seq)
        .await?;

    // A user without any history resuming: nothing can be proved.
    let mut c = connect_since(&gw, 32, &first).await?;
    expect_resync(&mut c, "epoch_changed").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn history_off_or_unreadable_gives_resync_not_silence() -> Result<()> {
    let redis = RedisServer::start().await?;
    let off = Gateway::on_redis(&redis, &["--history-size", "0"]).await?;
    let res = off.publish(&[51], &seq_event(1, 0)).await?;
    ensure!(res.get("ids").is_none(), "ids without history: {res}");
    let mut c = connect_since(&off, 51, "whatever-1-0").await?;
    let id = expect_resync(&mut c, "history_off")
        .await
        .context("history off")?;
    ensure!(id.is_none());
    off.publish(&[51], &seq_event(2, 0)).await?;
    let text = c.next_text().await?;
    ensure!(
        parse_frame(&text)? == Frame::Event { seq: 2, id: None },
        "{text}"
    );

    // History on, but Redis stops answering while the user is subscribed: the replay cannot be
    // read, so the client is told (`unavailable`) instead of being resumed silently.
    let gw = Gateway::on_redis(&redis, &["--redis-timeout", "300ms"]).await?;
    let _subscribed = gw.connect(52).await?;
    let id = publish_seq(&gw, 52, 1).await?;
    redis.signal(libc::SIGSTOP);
    let resync = async {
        let mut c = connect_since(&gw, 52, &id).await?;
        expect_resync(&mut c, "unavailable").await
    }
    .await;
    redis.signal(libc::SIGCONT);
    let id = resync.context("resume while Redis is stopped")?;
    ensure!(id.is_none(), "unavailable resync with id {id:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_history_read_slower_than_the_request_timeout_still_replays() -> Result<()> {
    // History reads may take five request timeouts (a resume storm queues many on the one
    // command connection). Redis holds scripts for 2.5 s under `CLIENT PAUSE … WRITE`, more
    // than the 1 s `--redis-timeout`: before, the connection's own response timeout cut the
    // read at 1 s and the client got `resync` `unavailable` for events that were there.
    let redis = RedisServer::start().await?;
    let gw = Gateway::on_redis(&redis, &["--probe-timeout", "60s"]).await?;
    let user = 31;
    let first = publish_seq(&gw, user, 1).await?;
    publish_seq(&gw, user, 2).await?;
    publish_seq(&gw, user, 3).await?;
    let mut admin = redis.connection().await?;
    let () = redis::cmd("CLIENT")
        .arg(&["PAUSE", "2500", "WRITE"])
        .query_async(&mut admin)
        .await?;
    let mut c = connect_since(&gw, user, &first).await?;
    SeqCheck::new("replayed after the pause", 2)
        .read_until(&mut c, 3)
        .await
}
