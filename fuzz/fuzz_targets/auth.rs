//! Client authentication from the upgrade request: `Authenticator::authenticate` over the
//! `Authorization` and `X-GP-Auth` headers and the query string (`access_token`, `id` and
//! `token`), with JWTs signed by the gateway's key, so that claims verification is reached, and
//! Gleepost tokens checked in a fake Redis (in this process) that answers every command with a
//! reply the input chooses.
//!
//! Input, one item a line: the query string (an empty first line: no query), then `name: value`
//! headers; `jwt <header JSON><TAB><claims JSON>` signs that header and those claims with the
//! test key (HS256) into a token that replaces every `$JWT` in the query and headers; `store
//! <reply>` sets the store's reply (`\r\n` written as the four characters `\r\n`; default
//! `:-2`, no such token).
//!
//! Never panics; a request is admitted only with a token whose `sub` is the admitted user, or
//! with a Gleepost token the store answered with a time to live.
#![no_main]

use std::sync::{Mutex, OnceLock};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use gleepost_gateway::fuzzing::authenticator;
use gleepost_gateway::fuzzing::FuzzAuthenticator as Authenticator;
use http::{HeaderMap, HeaderName, HeaderValue};
use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::runtime::Runtime;

const SECRET: &[u8] = b"fuzz-secret";
const NO_SUCH_TOKEN: &[u8] = b":-2\r\n";

/// What the fake store answers to every command.
static REPLY: Mutex<Vec<u8>> = Mutex::new(Vec::new());

fn setup() -> &'static (Runtime, Authenticator) {
    static SETUP: OnceLock<(Runtime, Authenticator)> = OnceLock::new();
    SETUP.get_or_init(|| {
        // Paused clock: a store reply that never completes times out at once, in no real time.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("a runtime");
        let path = std::env::temp_dir().join(format!("gp-fuzz-auth-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let auth = {
            let _guard = runtime.enter();
            let listener = UnixListener::bind(&path).expect("a Unix socket");
            tokio::spawn(async move {
                while let Ok((conn, _)) = listener.accept().await {
                    tokio::spawn(fake_store(conn));
                }
            });
            let url = format!("redis+unix://{}", path.display());
            authenticator(SECRET, &url).expect("an authenticator")
        };
        (runtime, auth)
    })
}

/// Answer every command on `conn` with the current `REPLY`.
async fn fake_store(mut conn: UnixStream) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while let Ok(n @ 1..) = conn.read(&mut chunk).await {
        buf.extend_from_slice(&chunk[..n]);
        while let Some(len) = command_len(&buf) {
            buf.drain(..len);
            let reply = REPLY.lock().expect("not poisoned").clone();
            if conn.write_all(&reply).await.is_err() {
                return;
            }
        }
    }
}

/// Length of the complete RESP command (an array of bulk strings) at the start of `buf`.
fn command_len(buf: &[u8]) -> Option<usize> {
    fn line(buf: &[u8], from: usize) -> Option<(usize, usize)> {
        let end = from + buf.get(from..)?.windows(2).position(|w| w == b"\r\n")?;
        let n = std::str::from_utf8(&buf[from + 1..end])
            .ok()?
            .parse()
            .ok()?;
        Some((n, end + 2))
    }
    let (count, mut pos) = line(buf, 0)?;
    for _ in 0..count {
        let (len, data) = line(buf, pos)?;
        pos = data + len + 2;
    }
    (buf.len() >= pos).then_some(pos)
}

fuzz_target!(|bytes: &[u8]| {
    let (runtime, auth) = setup();
    let mut lines = bytes.split(|&b| b == b'\n');
    let query = lines.next().unwrap_or_default().to_vec();
    let mut token: Option<(String, String)> = None;
    let mut store_reply = NO_SUCH_TOKEN.to_vec();
    let mut raw_headers = Vec::new();
    for line in lines {
        if let Some(reply) = line.strip_prefix(b"store ") {
            let reply = String::from_utf8_lossy(reply).replace("\\r\\n", "\r\n");
            store_reply = format!("{reply}\r\n").into_bytes();
        } else if let Some(jwt) = line.strip_prefix(b"jwt ") {
            let jwt = String::from_utf8_lossy(jwt);
            let (header, claims) = jwt.split_once('\t').unwrap_or((&jwt, "{}"));
            token = Some(signed(header.as_bytes(), claims.as_bytes()));
        } else if let Some(colon) = line.iter().position(|&b| b == b':') {
            let value = line[colon + 1..]
                .strip_prefix(b" ")
                .unwrap_or(&line[colon + 1..]);
            raw_headers.push((line[..colon].to_vec(), value.to_vec()));
        }
    }
    let jwt = token.as_ref().map(|(t, _)| t.as_str()).unwrap_or("");
    let fill = |raw: &[u8]| -> Vec<u8> {
        String::from_utf8_lossy(raw)
            .replace("$JWT", jwt)
            .into_bytes()
    };
    let mut headers = HeaderMap::new();
    for (name, value) in &raw_headers {
        let value = if value.windows(4).any(|w| w == b"$JWT") {
            fill(value)
        } else {
            value.clone()
        };
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name),
            HeaderValue::from_bytes(&value),
        ) {
            headers.append(name, value);
        }
    }
    let query = (!query.is_empty()).then(|| String::from_utf8_lossy(&fill(&query)).into_owned());

    let admits_tokens = store_reply.starts_with(b":");
    *REPLY.lock().expect("not poisoned") = store_reply;
    let result = runtime.block_on(auth.authenticate(&headers, query.as_deref()));
    match result {
        // A JWT: final expiry, nothing to renew.
        Ok(identity) if !identity.renewable && identity.expires.is_some() => {
            let (_, claims) = token.expect("only a signed token admits a client");
            let claims: serde_json::Value = serde_json::from_str(&claims).expect("verified claims");
            let sub = claims["sub"].as_str().and_then(|s| s.parse::<u64>().ok());
            assert_eq!(
                sub,
                Some(identity.user),
                "the admitted user is the token's subject"
            );
        }
        // A Gleepost token: the store said it exists.
        Ok(identity) => assert!(admits_tokens, "admitted without the store: {identity:?}"),
        Err(_) => {}
    }
});

/// `header.claims.signature` with the test key; returns the token and the claims text.
fn signed(header: &[u8], claims: &[u8]) -> (String, String) {
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let key = EncodingKey::from_secret(SECRET);
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::HS256)
        .expect("HMAC signing cannot fail");
    (
        format!("{message}.{signature}"),
        String::from_utf8_lossy(claims).into_owned(),
    )
}
