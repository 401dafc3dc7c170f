//! Dev mode and the forms of its settings (issue 15, items 3 and 4): `--dev` binds both ports
//! on loopback unless told otherwise (its banner prints the generated publish key), accepts
//! `GATEWAY_DEV=1`, and a bad value from the environment is reported with the variable's name.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use gleepost_tests::eventually;
use gleepost_tests::sockets::listening_addresses;
use gleepost_tests::{http, seed, Gateway, GatewayOptions};

const LIMIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread")]
async fn gateway_dev_1_binds_both_ports_on_loopback_and_the_banner_says_so() -> Result<()> {
    // Bare ports (0: any free one) keep dev mode's host.
    let options = GatewayOptions::default()
        .env("GATEWAY_DEV", "1")
        .listen("0", "0");
    let gw = Gateway::start(options)
        .await
        .context("GATEWAY_DEV=1 with bare ports must start")?;
    for (what, addr) in [("public", &gw.public), ("admin", &gw.admin)] {
        let addr: SocketAddr = addr.parse()?;
        let bound = listening_addresses(addr.port())?;
        ensure!(
            bound == [IpAddr::V4(Ipv4Addr::LOCALHOST)],
            "dev mode's {what} port {} listens on {bound:?}, not on 127.0.0.1 only",
            addr.port()
        );
    }
    let publish_command = format!("curl -sS -X POST http://{}/v1/publish", gw.admin);
    let banner = eventually(LIMIT, "the dev banner", || async {
        let out = gw.stdout().join("\n");
        ensure!(out.contains(&publish_command), "banner so far: {out}");
        Ok(out)
    })
    .await?;
    ensure!(
        banner.contains(&format!("ws://{}/ws?access_token=", gw.public)),
        "banner without the client URL: {banner}"
    );
    // Issue 12 item 5: the banner links the demo page, which the public port serves with the
    // JS client (the page itself is tested in a browser by clients/js/test/e2e/demo.test.js).
    ensure!(
        banner.contains(&format!("http://{}/#access_token=", gw.public)),
        "banner without the demo page link: {banner}"
    );
    let page = http::request(&gw.public, "GET", "/", &[], b"").await?;
    ensure!(page.status == 200, "GET / in dev mode: {}", page.status);
    ensure!(page.header("content-type") == Some("text/html; charset=utf-8"));
    ensure!(page.body_text().contains("from '/client/index.js'"));
    let client = http::request(&gw.public, "GET", "/client/index.js", &[], b"").await?;
    ensure!(
        client.body_text() == include_str!("../../clients/js/src/index.js"),
        "the served client is not clients/js/src/index.js"
    );
    // It is dev mode indeed: publishing and delivery work on the embedded broker.
    let mut client = gw.connect(9).await?;
    gw.publish(&[9], seed::MESSAGE).await?;
    ensure!(client.next_event().await?["type"] == "message");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn listen_takes_localhost_and_port() -> Result<()> {
    let gw = Gateway::start(GatewayOptions::default().listen("localhost:0", "localhost:0")).await?;
    // Not dev mode: no demo page.
    let root = http::request(&gw.public, "GET", "/", &[], b"").await?;
    ensure!(root.status == 404, "GET / without --dev: {}", root.status);
    let admin: SocketAddr = gw.admin.parse()?;
    ensure!(
        listening_addresses(admin.port())? == [IpAddr::V4(Ipv4Addr::LOCALHOST)],
        "localhost:0 is not bound on 127.0.0.1"
    );
    ensure!(gw.admin_get("/healthz").await?.status == 200);
    Ok(())
}

/// Start-up error text of a gateway that must refuse to start.
async fn refusal(options: GatewayOptions) -> Result<String> {
    match Gateway::start(options).await {
        Ok(_) => anyhow::bail!("the gateway started"),
        Err(e) => Ok(format!("{e:#}")),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_value_from_the_environment_names_the_variable_and_the_accepted_forms() -> Result<()>
{
    let dev = refusal(GatewayOptions::default().env("GATEWAY_DEV", "maybe")).await?;
    ensure!(
        dev.contains("environment variable GATEWAY_DEV") && dev.contains("--dev"),
        "GATEWAY_DEV=maybe: {dev}"
    );
    let listen = refusal(GatewayOptions::default().listen("gateway.internal:8080", "0")).await?;
    ensure!(
        listen.contains("gateway.internal:8080")
            && listen.contains("localhost:PORT")
            && listen.contains("127.0.0.1:8080")
            && !listen.contains("environment variable"),
        "--listen gateway.internal:8080: {listen}"
    );
    Ok(())
}
