//! Publishes the `message` example of the Gleepost websocket documentation to user 9.
//!
//! ```text
//! REDIS_URL=redis://127.0.0.1:6379/ cargo run -p gleepost-event --example publish
//! ```

use gleepost_event::payload::{Message, User};
use gleepost_event::Publisher;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".to_owned());
    let publisher = Publisher::connect(&url).await?;
    let event = Message {
        id: 1173,
        by: User {
            id: 9,
            username: "Patrick".into(),
            profile_image: "https://s3-eu-west-1.amazonaws.com/gpimg/59bdb3c4a4151cc7ab41137eecbcc4d461291f72cfd6b6516b12de00a7ad1a94.jpg".into(),
        },
        text: "testing12345678901234".into(),
        timestamp: "2013-12-12T15:20:54.665361234Z".into(),
        seen: false,
    }
    .into_event(67);
    let report = publisher.publish(&[9], &event).await?;
    println!(
        "published {} to {} user(s) on {}; {} receiver(s)",
        event.kind,
        report.users,
        publisher.channel(9),
        report.receivers
    );
    Ok(())
}
