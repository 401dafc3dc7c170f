//! Events published through the admin API reach exactly the right connections, byte-exact and in
//! publish order (embedded broker, one node).

use anyhow::{ensure, Context, Result};
use gleepost_tests::{data_text, seed, Client, Gateway, GatewayOptions};
use serde_json::Value;

/// The frame's members besides an optional `id` (added when the gateway keeps history).
fn members(frame: &Value) -> Vec<&str> {
    let mut keys: Vec<&str> = frame
        .as_object()
        .map(|o| {
            o.keys()
                .map(String::as_str)
                .filter(|k| *k != "id")
                .collect()
        })
        .unwrap_or_default();
    keys.sort_unstable();
    keys
}

/// `frame` carries `event`'s type and location, and its `data` byte for byte.
fn assert_delivered(frame: &str, event: &str) -> Result<()> {
    let got: Value = serde_json::from_str(frame).with_context(|| format!("not JSON: {frame}"))?;
    let want: Value = serde_json::from_str(event)?;
    ensure!(got["type"] == want["type"], "type differs: {frame}");
    ensure!(
        got["location"] == want["location"],
        "location differs: {frame}"
    );
    ensure!(
        data_text(frame) == data_text(event),
        "data not byte-exact:\n sent {:?}\n got  {:?}",
        data_text(event),
        data_text(frame)
    );
    let mut expected = vec!["data", "type"];
    if want.get("location").is_some() {
        expected.push("location");
    }
    expected.sort_unstable();
    ensure!(members(&got) == expected, "unexpected members: {frame}");
    Ok(())
}

#[tokio::test]
async fn each_seed_example_is_delivered_with_data_byte_exact() -> Result<()> {
    let gw = Gateway::start(GatewayOptions::default()).await?;
    let mut client = gw.connect(9).await?;
    for event in [seed::MESSAGE, seed::NEW_CONVERSATION, seed::NOTIFICATION] {
        let result = gw.publish(&[9], event).await?;
        ensure!(result["published"] == 1, "publish result {result}");
        let frame = client.next_text().await?;
        assert_delivered(&frame, event)?;
    }
    Ok(())
}

#[tokio::test]
async fn unknown_type_with_tricky_data_is_delivered_byte_exact() -> Result<()> {
    let gw = Gateway::start(GatewayOptions::default()).await?;
    let mut client = gw.connect(9).await?;
    // Key order, exponent and trailing-zero numbers, integers beyond u64/f64, \u escapes, escaped
    // quotes and slashes, and whitespace inside nested values must all survive untouched.
    let data = r#"{"z":1,"a":[1.0e3, 1E-7,-0.0 ,100.50],"big":123456789012345678901234567890,"s":"caf\u00e9 \"q\" \/ \ud83d\ude00","n":{ "x" : { "y" : [ ] , "w":null } },"e":{},"t":true}"#;
    let with_location =
        format!(r#"{{"type":"poll.v2_result-x","location":"/polls/7","data":{data}}}"#);
    let without_location = format!(r#"{{"type":"x-custom","data":{data}}}"#);
    for event in [&with_location, &without_location] {
        gw.publish(&[9], event).await?;
        let frame = client.next_text().await?;
        assert_delivered(&frame, event)?;
        ensure!(data_text(&frame) == Some(data), "data changed: {frame}");
    }
    // Scalar and null data pass through too.
    for data in ["null", "\"just a string\"", "-12.50e+2", "[ 1 , 2 ]"] {
        let event = format!(r#"{{"type":"scalar","location":"/s","data":{data}}}"#);
        gw.publish(&[9], &event).await?;
        let frame = client.next_text().await?;
        ensure!(data_text(&frame) == Some(data), "data changed: {frame}");
    }
    Ok(())
}

#[tokio::test]
async fn every_connection_of_a_user_receives_and_other_users_receive_nothing() -> Result<()> {
    let gw = Gateway::start(GatewayOptions::default()).await?;
    let mut devices = Vec::new();
    for _ in 0..3 {
        devices.push(gw.connect(9).await?);
    }
    let mut other = gw.connect(10).await?;

    gw.publish(&[9], seed::MESSAGE).await?;
    for device in &mut devices {
        assert_delivered(&device.next_text().await?, seed::MESSAGE)?;
    }
    // User 10 is published to after user 9: had it received user 9's event, that would be its
    // first frame (per-connection order), so no timing window is needed.
    gw.publish(&[10], seed::NOTIFICATION).await?;
    assert_delivered(&other.next_text().await?, seed::NOTIFICATION)?;
    Ok(())
}

#[tokio::test]
async fn one_publish_to_several_users_reaches_each_of_them_once() -> Result<()> {
    let gw = Gateway::start(GatewayOptions::default()).await?;
    let mut nine = gw.connect(9).await?;
    let mut paul = gw.connect(2147).await?;
    let mut bystander = gw.connect(11).await?;

    let result = gw.publish(&[9, 2147, 5000], seed::NEW_CONVERSATION).await?;
    ensure!(result["published"] == 3, "publish result {result}");
    gw.publish(&[9, 2147, 11], seed::NOTIFICATION).await?;

    for client in [&mut nine, &mut paul] {
        assert_delivered(&client.next_text().await?, seed::NEW_CONVERSATION)?;
        assert_delivered(&client.next_text().await?, seed::NOTIFICATION)?;
    }
    // The bystander's first frame is the second event: it never saw the first.
    assert_delivered(&bystander.next_text().await?, seed::NOTIFICATION)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_events_to_one_user_arrive_in_publish_order() -> Result<()> {
    const N: usize = 1000;
    let gw = Gateway::start(GatewayOptions::default()).await?;
    let mut client: Client = gw.connect(9).await?;
    let event =
        |i: usize| format!(r#"{{"type":"counter","location":"/seq","data":{{"seq":{i}}}}}"#);

    let publish = async {
        for i in 0..N {
            gw.publish(&[9], &event(i)).await?;
        }
        anyhow::Ok(())
    };
    let receive = async {
        for i in 0..N {
            let frame = client.next_text().await?;
            let expected = format!(r#"{{"seq":{i}}}"#);
            ensure!(
                data_text(&frame) == Some(expected.as_str()),
                "event {i} out of order: {frame}"
            );
        }
        anyhow::Ok(())
    };
    tokio::try_join!(publish, receive)?;
    Ok(())
}
