//! A connection's life after the upgrade: client data is ignored but bounded (1009 beyond
//! `--max-client-frame`), and a client that stops answering pings is disconnected.

use anyhow::{bail, ensure, Context, Result};
use gleepost_tests::metrics::wait_metric;
use gleepost_tests::{
    data_text, token, token_with, Client, Closed, Gateway, GatewayOptions, JWT_SECRET, WAIT,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn event(n: u32) -> String {
    format!(r#"{{"type":"tick","location":"/t","data":{{"n":{n}}}}}"#)
}

fn assert_event(frame: &str, n: u32) -> Result<()> {
    let expected = format!(r#"{{"n":{n}}}"#);
    ensure!(
        data_text(frame) == Some(expected.as_str()),
        "expected event {n}, got {frame}"
    );
    Ok(())
}

#[tokio::test]
async fn small_client_frames_are_ignored_and_the_connection_keeps_receiving() -> Result<()> {
    let gw = Gateway::start(GatewayOptions::default()).await?;
    let mut client = gw.connect(9).await?;
    client.send_text("hello".into()).await?;
    client
        .send_text(r#"{"type":"subscribe","data":{"users":[10]}}"#.into())
        .await?;
    client.send_text("x".repeat(4096)).await?; // exactly the default limit
    client.send_binary(vec![0, 159, 146, 150]).await?;

    gw.publish(&[9], &event(1)).await?;
    // Nothing is echoed or answered: the first frame is the published event.
    assert_event(&client.next_text().await?, 1)?;
    gw.publish(&[9], &event(2)).await?;
    assert_event(&client.next_text().await?, 2)?;
    Ok(())
}

#[tokio::test]
async fn an_oversize_client_frame_closes_the_connection_with_1009() -> Result<()> {
    let gw = Gateway::start(GatewayOptions::default()).await?;
    let mut offender = gw.connect(9).await?;
    let mut other_device = gw.connect(9).await?;

    offender.send_text("x".repeat(4097)).await?;
    match offender.closed_within(WAIT).await? {
        Closed::Code(1009, _) => {}
        other => bail!("expected close 1009, got {other:?}"),
    }
    wait_metric(
        &gw,
        r#"gleepost_gateway_connections_closed_total{reason="message_too_big"}"#,
        1.0,
    )
    .await?;
    // The user's other connection is unaffected.
    gw.publish(&[9], &event(1)).await?;
    assert_event(&other_device.next_text().await?, 1)?;
    Ok(())
}

#[tokio::test]
async fn the_client_frame_limit_is_configurable() -> Result<()> {
    let gw = Gateway::start(GatewayOptions::default().arg(&["--max-client-frame", "100"])).await?;
    let mut fine = gw.connect(9).await?;
    fine.send_text("y".repeat(100)).await?;
    gw.publish(&[9], &event(1)).await?;
    assert_event(&fine.next_text().await?, 1)?;

    fine.send_binary(vec![7; 101]).await?;
    match fine.closed_within(WAIT).await? {
        Closed::Code(1009, _) => Ok(()),
        other => bail!("expected close 1009, got {other:?}"),
    }
}

/// Upgrade by hand on a raw socket (which never answers pings); returns the socket and any
/// bytes read past the response head.
async fn raw_upgrade(gw: &Gateway, user: u64) -> Result<(TcpStream, Vec<u8>)> {
    let mut stream = TcpStream::connect(&gw.public).await?;
    let request = format!(
        "GET /ws?access_token={} HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\n\
         Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        token(user),
        gw.public
    );
    stream.write_all(request.as_bytes()).await?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    let head_end = tokio::time::timeout(WAIT, async {
        loop {
            if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                return anyhow::Ok(pos + 4);
            }
            let n = stream.read(&mut chunk).await?;
            ensure!(n > 0, "connection closed during the handshake");
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .context("handshake timed out")??;
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    ensure!(head.starts_with("HTTP/1.1 101"), "upgrade refused: {head}");
    Ok((stream, buf[head_end..].to_vec()))
}

/// Opcodes of the (small, unmasked) server frames in `bytes`.
fn server_opcodes(bytes: &[u8]) -> Result<Vec<u8>> {
    let mut opcodes = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let len = usize::from(*bytes.get(i + 1).context("truncated frame")?);
        ensure!(len < 126, "unexpectedly large control frame");
        opcodes.push(bytes[i] & 0x0f);
        i += 2 + len;
    }
    ensure!(i == bytes.len(), "truncated frame");
    Ok(opcodes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_answer_pings_is_disconnected() -> Result<()> {
    let gw = Gateway::start(GatewayOptions::default().arg(&[
        "--ping-interval",
        "200ms",
        "--pong-timeout",
        "300ms",
    ]))
    .await?;
    // A well-behaved client, polled all along (tungstenite answers pings while reading).
    let mut good = gw.connect(10).await?;
    let good_reader = tokio::spawn(async move {
        let frame = good.next_text_within(WAIT * 2).await;
        (good, frame)
    });

    let (mut raw, mut received) = raw_upgrade(&gw, 9).await?;
    // Read (never answering) until the gateway closes the socket.
    let ended = tokio::time::timeout(WAIT, async {
        let mut chunk = [0u8; 1024];
        loop {
            match raw.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    ensure!(ended.is_ok(), "the silent client was not disconnected");
    // It was pinged: the first frame is an unmasked ping (FIN + opcode 0x9).
    ensure!(
        received.first() == Some(&0x89),
        "first server frame is not a ping: {received:02x?}"
    );
    // Only pings, then the socket ended: no close frame (documented: "none (TCP closed)").
    ensure!(
        server_opcodes(&received)?.iter().all(|&op| op == 0x9),
        "unexpected server frames: {received:02x?}"
    );
    wait_metric(
        &gw,
        r#"gleepost_gateway_connections_closed_total{reason="pong_timeout"}"#,
        1.0,
    )
    .await?;

    // The client that answered its pings is still connected and receives.
    gw.publish(&[10], &event(1)).await?;
    let (_good, frame) = good_reader.await?;
    assert_event(&frame?, 1)?;
    ensure!(
        gw.metric("gleepost_gateway_connections").await? == 1.0,
        "connections gauge after the pong timeout"
    );
    Ok(())
}

#[tokio::test]
async fn a_connection_is_closed_with_4001_when_its_jwt_expires() -> Result<()> {
    let gw = Gateway::start(GatewayOptions::default()).await?;
    // `exp` 28 s ago: inside the 30 s leeway, so accepted now, and closed by the gateway when
    // the leeway ends (exp + 30 s, the same rule as acceptance), not at once.
    let short = token_with(
        9,
        -28,
        JWT_SECRET.as_bytes(),
        jsonwebtoken::Algorithm::HS256,
    );
    let mut client = Client::connect(&format!("{}?access_token={short}", gw.ws_base())).await?;
    gw.publish(&[9], &event(1)).await?;
    assert_event(&client.next_text().await?, 1)?;
    match client.closed_within(WAIT).await? {
        Closed::Code(4001, _) => {}
        other => bail!("expected close 4001 at expiry, got {other:?}"),
    }
    wait_metric(
        &gw,
        r#"gleepost_gateway_connections_closed_total{reason="auth_expired"}"#,
        1.0,
    )
    .await?;
    Ok(())
}
