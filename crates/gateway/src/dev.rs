//! Dev mode: generated credentials and a banner with ready-to-paste commands.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Result;
use rand::distr::{Alphanumeric, SampleString};

use crate::auth::Minter;

/// The seed document's message example, used in the printed publish command.
const SEED_MESSAGE: &str = r#"{"type":"message","location":"/conversations/67","data":{"id":1173,"by":{"id":9,"username":"Patrick","profile_image":"https://s3-eu-west-1.amazonaws.com/gpimg/59bdb3c4a4151cc7ab41137eecbcc4d461291f72cfd6b6516b12de00a7ad1a94.jpg"},"text":"testing12345678901234","timestamp":"2013-12-12T15:20:54.665361234Z","seen":false}}"#;

/// A random 40-character alphanumeric secret.
pub(crate) fn random_secret() -> String {
    Alphanumeric.sample_string(&mut rand::rng(), 40)
}

/// Print a token for user 9 and commands to connect and publish.
pub(crate) fn print_banner(
    jwt: &Minter,
    api_key: &str,
    public: SocketAddr,
    admin: SocketAddr,
) -> Result<()> {
    let token = jwt.mint(9, Duration::from_secs(24 * 3600))?;
    let host = |addr: SocketAddr| {
        if addr.ip().is_unspecified() {
            format!("127.0.0.1:{}", addr.port())
        } else {
            addr.to_string()
        }
    };
    let ws_url = format!("ws://{}/ws?access_token={token}", host(public));
    let body = format!(r#"{{"users":[9],"event":{SEED_MESSAGE}}}"#);
    println!(
        r#"
gleepost-gateway dev mode (embedded broker, generated credentials; do not use in production)

  token for user 9 (24 h):  {token}
  publish API key:          {api_key}

1. Connect as user 9 (in another terminal; any one of these):
   cargo run -q -p gleepost-gateway -- client '{ws_url}'
   websocat '{ws_url}'
   browser console: new WebSocket('{ws_url}').onmessage = e => console.log(e.data)

2. Publish the seed's message example to user 9:
   curl -sS -X POST http://{admin}/v1/publish -H 'Authorization: Bearer {api_key}' -H 'Content-Type: application/json' -d '{body}'

Metrics: http://{admin}/metrics   Ready: http://{admin}/readyz   Ctrl-C stops.
"#,
        admin = host(admin),
    );
    Ok(())
}
