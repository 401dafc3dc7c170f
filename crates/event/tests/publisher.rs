//! Publisher against a real `redis-server` started by the test on a free port.

mod common;

use std::time::Duration;

use futures_util::StreamExt;
use gleepost_event::history::{frame_id, splice_id};
use gleepost_event::keys::{epoch_key, history_key};
use gleepost_event::payload::{Message, User};
use gleepost_event::{
    check_broker_payload, Event, Limits, PublishError, PublishReport, Publisher, RawValue,
    ValidationError,
};
use gleepost_event::{EventId, HistoryConfig};

use common::RedisServer;

fn seed_message() -> Event {
    Message {
        id: 1173,
        by: User {
            id: 9,
            username: "Patrick".into(),
            profile_image: "https://example/p.jpg".into(),
        },
        text: "caf\u{e9} \"quoted\"".into(),
        timestamp: "2013-12-12T15:20:54.665361234Z".into(),
        seen: false,
    }
    .into_event(67)
}

async fn recv(stream: &mut (impl StreamExt<Item = redis::Msg> + Unpin)) -> (String, Vec<u8>) {
    let msg = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("timed out waiting for a published message")
        .expect("pubsub stream ended");
    (
        msg.get_channel_name().to_owned(),
        msg.get_payload_bytes().to_vec(),
    )
}

#[tokio::test]
async fn publishes_to_every_user_in_one_pipeline() {
    let server = RedisServer::start();
    let client = redis::Client::open(server.url()).unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub.subscribe("gp:user:{9}").await.unwrap();
    pubsub.subscribe("gp:user:{10}").await.unwrap();
    let mut messages = pubsub.into_on_message();

    let publisher = Publisher::connect(&server.url())
        .await
        .unwrap()
        .with_history(HistoryConfig::OFF);
    let event = seed_message();
    let report = publisher.publish(&[9, 10], &event).await.unwrap();
    assert_eq!(
        report,
        PublishReport {
            users: 2,
            receivers: 2,
            ids: vec![],
            online: vec![(9, 1), (10, 1)],
            failed: vec![],
        }
    );

    let mut got = [recv(&mut messages).await, recv(&mut messages).await];
    got.sort();
    assert_eq!(got[0].0, "gp:user:{10}");
    assert_eq!(got[1].0, "gp:user:{9}");
    assert_eq!(got[0].1, got[1].1, "both users get byte-identical payloads");
    assert_eq!(&got[0].1[..], &event.encode()[..]);
    check_broker_payload(&got[0].1, &Limits::default()).unwrap();
    let back = Event::from_json(&got[0].1).unwrap();
    assert_eq!(back.data.get(), event.data.get());

    // Duplicates are published once; users without subscribers count as zero receivers.
    let report = publisher.publish(&[9, 9, 11], &event).await.unwrap();
    assert_eq!(
        report,
        PublishReport {
            users: 2,
            receivers: 1,
            ids: vec![],
            online: vec![(9, 1), (11, 0)],
            failed: vec![],
        }
    );
    let (channel, _) = recv(&mut messages).await;
    assert_eq!(channel, "gp:user:{9}");

    // Empty user list: nothing to do.
    let report = publisher.publish(&[], &event).await.unwrap();
    assert_eq!(report, PublishReport::default());
}

#[tokio::test]
async fn validation_before_publishing() {
    let server = RedisServer::start();
    let client = redis::Client::open(server.url()).unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub.subscribe("gp:user:{9}").await.unwrap();
    let mut messages = pubsub.into_on_message();

    let publisher = Publisher::connect(&server.url())
        .await
        .unwrap()
        .with_history(HistoryConfig::OFF)
        .with_limits(Limits {
            max_event_bytes: 100,
        });

    // Invalid events are rejected before anything is sent.
    let bad = Event::new("Bad", None, RawValue::from_string("{}".into()).unwrap());
    match publisher.publish(&[9], &bad).await {
        Err(PublishError::Invalid(ValidationError::TypeInvalidChar { ch: 'B', .. })) => {}
        other => panic!("expected an invalid-type error, got {other:?}"),
    }
    let big = Event::new(
        "x",
        None,
        RawValue::from_string(format!("\"{}\"", "a".repeat(100))).unwrap(),
    );
    assert!(matches!(
        publisher.publish(&[9], &big).await,
        Err(PublishError::Invalid(ValidationError::TooLarge {
            max: 100,
            ..
        }))
    ));

    let ok = Event::new("x", None, RawValue::from_string("[1.0e3]".into()).unwrap());
    let report = publisher.publish(&[9], &ok).await.unwrap();
    assert_eq!(report.receivers, 1);
    let (channel, payload) = recv(&mut messages).await;
    assert_eq!(channel, "gp:user:{9}");
    assert_eq!(payload, br#"{"type":"x","data":[1.0e3]}"#);
}

#[tokio::test]
async fn with_history_an_event_leaves_room_for_its_id() {
    let server = RedisServer::start();
    let client = redis::Client::open(server.url()).unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub.subscribe("gp:user:{9}").await.unwrap();
    let mut messages = pubsub.into_on_message();
    let limits = Limits {
        max_event_bytes: 200,
    };
    let publisher = Publisher::connect(&server.url())
        .await
        .unwrap()
        .with_limits(limits);
    let room = 200 - gleepost_event::history::MAX_ID_MEMBER_BYTES;
    let sized = |size: usize| {
        let pad = "a".repeat(size - r#"{"type":"x","data":""}"#.len());
        Event::new(
            "x",
            None,
            RawValue::from_string(format!("\"{pad}\"")).unwrap(),
        )
    };
    assert!(matches!(
        publisher.publish(&[9], &sized(room + 1)).await,
        Err(PublishError::Invalid(ValidationError::TooLarge { max, .. })) if max == room
    ));
    publisher.publish(&[9], &sized(room)).await.unwrap();
    // As delivered, id included, the event passes every node's check of the same limits.
    let (_, payload) = recv(&mut messages).await;
    assert!(frame_id(&payload).is_some());
    check_broker_payload(&payload, &limits).unwrap();
}

#[tokio::test]
async fn history_appends_and_publishes_with_ids_atomically() {
    let server = RedisServer::start();
    let client = redis::Client::open(server.url()).unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub.subscribe("gp:user:{9}").await.unwrap();
    let mut messages = pubsub.into_on_message();

    let publisher = server.history_publisher(10).await;
    let event = seed_message();
    let first = publisher.publish(&[9], &event).await.unwrap();
    assert_eq!(first.receivers, 1);
    let (user, id1) = first.ids[0].clone();
    assert_eq!(user, 9);
    let (_, payload) = recv(&mut messages).await;
    assert_eq!(payload, &splice_id(&event.encode(), &id1)[..]);
    assert_eq!(
        frame_id(&payload).map(|(e, _, _)| e.to_string()),
        Some(id1.split('-').next().unwrap().to_string())
    );

    let second = publisher.publish(&[9], &event).await.unwrap();
    let id2 = EventId::parse(&second.ids[0].1).unwrap();
    let id1 = EventId::parse(&id1).unwrap();
    assert_eq!(id1.epoch, id2.epoch, "one epoch while the history lives");
    assert!(id2.position() > id1.position(), "ids increase per user");

    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let len: u64 = redis::cmd("XLEN")
        .arg(history_key(9))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(len, 2);
    // Both keys expire: at least the TTL after the last event, at most a refresh interval
    // (a tenth) later.
    for key in [epoch_key(9), history_key(9)] {
        let ttl: i64 = redis::cmd("TTL")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(ttl > 55 && ttl <= 66, "{key}: {ttl}");
    }

    // A stream gone while its epoch lives is recreated with a TTL (not left to live forever).
    let _: () = redis::cmd("DEL")
        .arg(history_key(9))
        .query_async(&mut conn)
        .await
        .unwrap();
    let after_del = publisher.publish(&[9], &event).await.unwrap();
    assert_eq!(
        EventId::parse(&after_del.ids[0].1).unwrap().epoch,
        id1.epoch
    );
    let ttl: i64 = redis::cmd("TTL")
        .arg(history_key(9))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(ttl > 55 && ttl <= 66, "recreated stream: {ttl}");

    // History lost (flush): the next id has a new epoch, so old ids cannot look current.
    let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await.unwrap();
    let third = publisher.publish(&[9], &event).await.unwrap();
    assert_ne!(EventId::parse(&third.ids[0].1).unwrap().epoch, id1.epoch);
}

#[tokio::test]
async fn bad_url_is_a_redis_error() {
    let err = Publisher::connect("not-a-url").await.unwrap_err();
    assert!(matches!(err, PublishError::Redis(_)), "{err:?}");
}

#[tokio::test]
async fn concurrent_publishes_share_script_calls_and_each_gets_its_ids() {
    let server = RedisServer::start();
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let publisher = Publisher::connect(&server.url()).await.unwrap();
    let event = seed_message();
    // Warm up (loads the script), then count only the concurrent publishes' calls.
    publisher.publish(&[1], &event).await.unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut conn)
        .await
        .unwrap();
    let publishes = (0..400u64).map(|i| {
        let users = [1 + i % 40, 1000 + i];
        let (publisher, event) = (publisher.clone(), event.clone());
        async move { (users, publisher.publish(&users, &event).await) }
    });
    let reports = futures_util::future::join_all(publishes).await;
    let mut seen = std::collections::HashSet::new();
    for (users, report) in reports {
        let report = report.unwrap();
        assert_eq!(report.users, 2);
        let ids: Vec<u64> = report.ids.iter().map(|(u, _)| *u).collect();
        assert_eq!(ids, users, "ids in the order of the request's users");
        for (user, id) in &report.ids {
            assert!(EventId::parse(id).is_some(), "{id}");
            assert!(
                seen.insert((*user, id.clone())),
                "id {id} assigned twice to {user}"
            );
        }
    }
    // Every event is in its user's history: 10 per shared user (+1 warm-up for user 1).
    for user in [1u64, 2, 40] {
        let len: u64 = redis::cmd("XLEN")
            .arg(history_key(user))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(len, 10 + u64::from(user == 1), "user {user}");
    }
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .unwrap();
    let calls: u64 = stats
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_evalsha:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        calls > 0 && calls < 400,
        "800 users' copies took {calls} script calls: publishes queued together share calls"
    );
}
