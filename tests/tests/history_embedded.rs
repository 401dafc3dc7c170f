//! Resume semantics on the embedded broker (no `REDIS_URL`, issue 4): the per-user in-memory
//! ring gives ids, exact replay after `since`, and `resync` for unknown/malformed/foreign ids,
//! trimmed history and too many missed events, exactly like Redis history.

use anyhow::{ensure, Context, Result};
use gleepost_tests::resume::{
    connect_last_event_id, connect_since, expect_resync, publish_seq, SeqCheck,
};
use gleepost_tests::{Gateway, GatewayOptions};

#[tokio::test(flavor = "multi_thread")]
async fn embedded_broker_resume_replay_and_resync() -> Result<()> {
    let gw = Gateway::start(GatewayOptions::default().arg(&[
        "--history-size",
        "5",
        "--max-replay",
        "3",
    ]))
    .await?;
    let user = 41;
    let mut live = gw.connect(user).await?;
    let mut live_check = SeqCheck::new("connected client", 1);
    let mut ids = vec![String::new()]; // ids[seq]
    for seq in 1..=3 {
        ids.push(publish_seq(&gw, user, seq).await?);
    }
    live_check.read_until(&mut live, 3).await?;
    ensure!(live_check.last_id.as_deref() == Some(ids[3].as_str()));

    // Exactly the missed events, then live.
    let mut c = connect_since(&gw, user, &ids[1]).await?;
    let mut check = SeqCheck::new("resumed after 1", 2);
    check.read_until(&mut c, 3).await?;
    ids.push(publish_seq(&gw, user, 4).await?);
    check.read_until(&mut c, 4).await?;

    // Last-Event-ID works the same.
    let mut c = connect_last_event_id(&gw, user, &ids[3]).await?;
    let mut check = SeqCheck::new("Last-Event-ID after 3", 4);
    check.read_until(&mut c, 4).await?;
    ids.push(publish_seq(&gw, user, 5).await?);
    check.read_until(&mut c, 5).await?;

    // Nothing missed: no frame; its first frame will be the next live event (seq 6).
    let mut c = connect_since(&gw, user, &ids[5]).await?;
    // The ring holds 1..=5. 3 missed (= --max-replay) are replayed, 4 are too many.
    let mut exact = connect_since(&gw, user, &ids[2]).await?;
    SeqCheck::new("3 missed", 3)
        .read_until(&mut exact, 5)
        .await?;
    let mut many = connect_since(&gw, user, &ids[1]).await?;
    let id = expect_resync(&mut many, "too_many").await?;
    ensure!(id.as_deref() == Some(ids[5].as_str()), "resync id {id:?}");
    ids.push(publish_seq(&gw, user, 6).await?);
    SeqCheck::new("nothing missed", 6)
        .read_until(&mut c, 6)
        .await?;
    SeqCheck::new("after too_many", 6)
        .read_until(&mut many, 6)
        .await?;

    for (since, reason) in [
        ("garbage", "unknown_id"),
        ("", "unknown_id"),
        ("zzzzzzzzzz-1-0", "epoch_changed"),
    ] {
        let mut c = connect_since(&gw, user, since).await?;
        let id = expect_resync(&mut c, reason)
            .await
            .with_context(|| format!("since={since:?}"))?;
        ensure!(
            id.as_deref() == Some(ids[6].as_str()),
            "since={since:?}: resync id {id:?}"
        );
    }

    // Trim past the resume point: ring keeps 6..=10 after these.
    for seq in 7..=10 {
        ids.push(publish_seq(&gw, user, seq).await?);
    }
    let mut c = connect_since(&gw, user, &ids[5]).await?;
    let id = expect_resync(&mut c, "trimmed").await?;
    ensure!(id.as_deref() == Some(ids[10].as_str()), "resync id {id:?}");
    ids.push(publish_seq(&gw, user, 11).await?);
    SeqCheck::new("after trimmed", 11)
        .read_until(&mut c, 11)
        .await?;
    // An id from the future of this history cannot be proved either.
    let future = format!("{}-999-0", ids[1].split('-').next().unwrap_or_default());
    let mut c = connect_since(&gw, user, &future).await?;
    expect_resync(&mut c, "trimmed").await?;

    // A user without any history resuming with someone else's id.
    let mut c = connect_since(&gw, 42, &ids[11]).await?;
    expect_resync(&mut c, "trimmed").await?;

    live_check.read_until(&mut live, 11).await?;
    Ok(())
}
