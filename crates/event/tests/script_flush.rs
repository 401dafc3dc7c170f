//! A `SCRIPT FLUSH` while a publish to many users is on the wire (one pipeline of several
//! script calls): the calls that ran before the flush are not sent again, so no user's event
//! is stored (and published) twice.

mod common;

use std::time::Duration;

use gleepost_event::keys::history_key;
use gleepost_event::Event;

use common::RedisServer;

/// Publishes, each raced by one `SCRIPT FLUSH` a little later each time.
const ROUNDS: u64 = 16;

#[tokio::test(flavor = "multi_thread")]
async fn a_script_flush_during_a_pipeline_stores_no_event_twice() {
    let server = RedisServer::start();
    let publisher = server.history_publisher(100).await;
    // 1,000 users: 16 script calls of 64 users in one pipeline.
    let users: Vec<u64> = (1..=1000).collect();
    let text = format!(r#"{{"type":"message","data":"{}"}}"#, "x".repeat(5_000));
    let event = Event::from_json(text.as_bytes()).unwrap();
    let client = redis::Client::open(server.url()).unwrap();
    let mut admin = client.get_multiplexed_async_connection().await.unwrap();
    for round in 0..ROUNDS {
        // The script is known when the pipeline leaves, then flushed while it runs.
        publisher.publish(&[1], &event).await.unwrap();
        let flush = async {
            tokio::time::sleep(Duration::from_millis(1 + round * 2)).await;
            let () = redis::cmd("SCRIPT")
                .arg("FLUSH")
                .query_async(&mut admin)
                .await
                .unwrap();
        };
        let (published, ()) = tokio::join!(publisher.publish(&users, &event), flush);
        published.unwrap();
    }
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    for user in [2, 500, 1000] {
        let len: u64 = redis::cmd("XLEN")
            .arg(history_key(user))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(
            len, ROUNDS,
            "user {user}: {len} entries for {ROUNDS} publishes"
        );
    }
}
