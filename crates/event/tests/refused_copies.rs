//! A user whose history key holds something else (written by another program): Redis refuses
//! that user's copy (`WRONGTYPE`) and only that one. The other users of the same publish, and
//! publishes that share its script call, are published; the report names the refused user.

mod common;

use gleepost_event::keys::history_key;
use gleepost_event::Event;

use common::RedisServer;

async fn entries(conn: &mut redis::aio::MultiplexedConnection, user: u64) -> u64 {
    redis::cmd("XLEN")
        .arg(history_key(user))
        .query_async(conn)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_user_whose_key_is_of_the_wrong_type_is_refused_alone() {
    let server = RedisServer::start();
    let publisher = server.history_publisher(100).await;
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let () = redis::cmd("SET")
        .arg(history_key(5))
        .arg("not a stream")
        .query_async(&mut conn)
        .await
        .unwrap();
    let event = Event::from_json(br#"{"type":"message","data":1}"#).unwrap();

    let report = publisher.publish(&[1, 5, 2], &event).await.unwrap();
    assert_eq!(report.users, 2);
    let ids: Vec<u64> = report.ids.iter().map(|(u, _)| *u).collect();
    assert_eq!(ids, [1, 2]);
    assert_eq!(report.failed.len(), 1, "{:?}", report.failed);
    assert_eq!(report.failed[0].0, 5);
    assert!(
        report.failed[0].1.contains("WRONGTYPE"),
        "{:?}",
        report.failed
    );

    // Concurrent publishes share one script call: the one with user 5 does not fail the others.
    let others: Vec<_> = (0..20)
        .map(|i| {
            let publisher = publisher.clone();
            let event = event.clone();
            let users = if i % 5 == 0 { vec![5, 3] } else { vec![3] };
            tokio::spawn(async move { publisher.publish(&users, &event).await })
        })
        .collect();
    for (i, publish) in others.into_iter().enumerate() {
        let report = publish.await.unwrap().unwrap();
        assert_eq!(report.users, 1, "publish {i}: {report:?}");
        assert_eq!(report.failed.len(), usize::from(i % 5 == 0), "publish {i}");
    }
    assert_eq!(entries(&mut conn, 1).await, 1);
    assert_eq!(entries(&mut conn, 2).await, 1);
    assert_eq!(entries(&mut conn, 3).await, 20);
}
