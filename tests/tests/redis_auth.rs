//! Gleepost token authentication in Redis mode (issue 3): a token is valid while the Redis key
//! `users:<id>:token:<token>` exists; `?id=&token=` and `X-GP-Auth: <id>-<token>` both work, JWT
//! keeps working beside them, bad credentials get 401 JSON, an unresponsive Redis gets 503.

use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use gleepost_tests::credentials::{connect_gp_header, gleepost_url};
use gleepost_tests::http::{upgrade_attempt, HttpResponse};
use gleepost_tests::{ensure_same_event, eventually, Client, Closed, Gateway, RedisServer};

const READY: Duration = Duration::from_secs(15);
const EVENT: &str = r#"{"type":"message","location":"/conversations/67","data":{"text":"hi"}}"#;

/// A named upgrade attempt: case, query string, extra headers.
type Attempt<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)]);

/// A WebSocket upgrade attempt on `/ws<query>` with extra headers (raw response).
async fn attempt(gw: &Gateway, query: &str, headers: &[(&str, &str)]) -> Result<HttpResponse> {
    upgrade_attempt(&gw.public, &format!("/ws{query}"), headers).await
}

/// The response is the documented auth failure: 401, JSON `{"error":"Invalid credentials"}`.
fn assert_invalid_credentials(res: &HttpResponse, case: &str) -> Result<()> {
    ensure!(
        res.status == 401,
        "{case}: expected 401, got {} {}",
        res.status,
        res.body_text()
    );
    ensure!(
        res.header("content-type")
            .is_some_and(|v| v.starts_with("application/json")),
        "{case}: content-type {:?}",
        res.header("content-type")
    );
    ensure!(
        res.json()? == serde_json::json!({"error": "Invalid credentials"}),
        "{case}: body {}",
        res.body_text()
    );
    Ok(())
}

/// The client gets `EVENT` published to `user` through the gateway's API.
async fn receives(gw: &Gateway, client: &mut Client, user: u64) -> Result<()> {
    gw.publish(&[user], EVENT).await?;
    ensure_same_event(&client.next_text().await?, EVENT)
}

#[tokio::test(flavor = "multi_thread")]
async fn gleepost_token_in_query_or_header_connects_and_receives_and_jwt_still_works() -> Result<()>
{
    let redis = RedisServer::start().await?;
    let () = redis
        .cmd(&["SETEX", "users:9:token:abc", "3600", "OK"])
        .await?;
    let gw = Gateway::on_redis(&redis, &[]).await?;

    let mut by_query = Client::connect(&gleepost_url(&gw, 9, "abc"))
        .await
        .context("?id=9&token=abc")?;
    let mut by_header = connect_gp_header(&gw, "9-abc")
        .await
        .context("X-GP-Auth: 9-abc")?;
    let mut by_jwt = gw.connect(9).await.context("JWT beside Gleepost tokens")?;

    gw.publish(&[9], EVENT).await?;
    for (how, client) in [
        ("query", &mut by_query),
        ("header", &mut by_header),
        ("jwt", &mut by_jwt),
    ] {
        let frame = client.next_text().await.context(how)?;
        ensure_same_event(&frame, EVENT).context(how)?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_token_wrong_user_or_malformed_header_get_401_json() -> Result<()> {
    let redis = RedisServer::start().await?;
    let () = redis.cmd(&["SET", "users:9:token:abc", "1"]).await?;
    let gw = Gateway::on_redis(&redis, &[]).await?;

    let cases: &[Attempt] = &[
        ("unknown token", "?id=9&token=nope", &[]),
        ("wrong user", "?id=10&token=abc", &[]),
        ("non-numeric user", "?id=nine&token=abc", &[]),
        ("empty token", "?id=9&token=", &[]),
        ("unknown token in header", "", &[("X-GP-Auth", "9-nope")]),
        ("wrong user in header", "", &[("X-GP-Auth", "10-abc")]),
        ("header without dash", "", &[("X-GP-Auth", "9abc")]),
        ("header without user", "", &[("X-GP-Auth", "-abc")]),
        ("header without token", "", &[("X-GP-Auth", "9-")]),
        ("no credentials", "", &[]),
    ];
    for (case, query, headers) in cases {
        let res = attempt(&gw, query, headers).await.context(*case)?;
        assert_invalid_credentials(&res, case)?;
    }
    // The valid token still works on the same node afterwards.
    let res = attempt(&gw, "?id=9&token=abc", &[]).await?;
    ensure!(
        res.status == 101,
        "valid token: {} {}",
        res.status,
        res.body_text()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn deleted_token_key_rejects_new_connections() -> Result<()> {
    let redis = RedisServer::start().await?;
    let () = redis.cmd(&["SET", "users:9:token:abc", "1"]).await?;
    let gw = Gateway::on_redis(&redis, &[]).await?;

    let mut before = Client::connect(&gleepost_url(&gw, 9, "abc")).await?;
    receives(&gw, &mut before, 9).await?;

    let deleted: i64 = redis.cmd(&["DEL", "users:9:token:abc"]).await?;
    ensure!(deleted == 1, "token key was not there to delete");
    assert_invalid_credentials(
        &attempt(&gw, "?id=9&token=abc", &[]).await?,
        "query token after DEL",
    )?;
    assert_invalid_credentials(
        &attempt(&gw, "", &[("X-GP-Auth", "9-abc")]).await?,
        "header token after DEL",
    )?;
    // JWT is independent of the Redis token keys.
    let mut jwt = gw.connect(9).await?;
    receives(&gw, &mut jwt, 9).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn gleepost_token_connections_live_as_long_as_the_token_key() -> Result<()> {
    let redis = RedisServer::start().await?;
    let gw = Gateway::on_redis(&redis, &[]).await?;
    // The login service's SETEX: `renewed` expires first but is extended before it does,
    // `short` expires later and is not; `forever` has no TTL.
    let () = redis
        .cmd(&["SETEX", "users:9:token:renewed", "2", "1"])
        .await?;
    let () = redis
        .cmd(&["SETEX", "users:9:token:short", "4", "1"])
        .await?;
    let () = redis.cmd(&["SET", "users:9:token:forever", "1"]).await?;
    let mut renewed = Client::connect(&gleepost_url(&gw, 9, "renewed")).await?;
    let mut short = Client::connect(&gleepost_url(&gw, 9, "short")).await?;
    let mut forever = Client::connect(&gleepost_url(&gw, 9, "forever")).await?;
    let extended: i64 = redis
        .cmd(&["EXPIRE", "users:9:token:renewed", "3600"])
        .await?;
    ensure!(
        extended == 1,
        "the renewed token key expired before it could be extended"
    );

    receives(&gw, &mut short, 9).await?;
    match short.closed_within(Duration::from_secs(15)).await? {
        Closed::Code(4001, _) => {}
        other => bail!("expected close 4001 when the token key expired, got {other:?}"),
    }
    // `renewed` passed its first expiry (before `short`'s) and was re-checked, not closed.
    for client in [&mut renewed, &mut forever] {
        ensure_same_event(&client.next_text().await?, EVENT)?;
    }
    receives(&gw, &mut renewed, 9).await?;
    ensure_same_event(&forever.next_text().await?, EVENT)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn frozen_redis_gives_503_not_401_for_gleepost_tokens() -> Result<()> {
    let redis = RedisServer::start().await?;
    let () = redis.cmd(&["SET", "users:9:token:abc", "1"]).await?;
    let gw = Gateway::on_redis(&redis, &["--redis-timeout", "300ms"]).await?;

    redis.signal(libc::SIGSTOP);
    let frozen = async {
        for (case, query, headers) in [
            ("known token", "?id=9&token=abc", &[][..]),
            ("unknown token", "?id=9&token=nope", &[][..]),
            ("header token", "", &[("X-GP-Auth", "9-abc")][..]),
        ] {
            let res = attempt(&gw, query, headers).await.context(case)?;
            ensure!(
                res.status == 503,
                "{case} with Redis frozen: expected 503, got {} {}",
                res.status,
                res.body_text()
            );
            let body = res.json().context(case)?;
            ensure!(
                body["error"].is_string(),
                "{case}: 503 body is not a JSON error: {body}"
            );
        }
        Ok(())
    }
    .await;
    redis.signal(libc::SIGCONT);
    frozen?;

    // Once Redis answers again, the token is accepted again (no restart of the gateway).
    let url = gleepost_url(&gw, 9, "abc");
    let mut client = eventually(Duration::from_secs(15), "token accepted after thaw", || {
        Client::connect(&url)
    })
    .await?;
    gw.wait_ready(true, READY).await?;
    receives(&gw, &mut client, 9).await?;
    Ok(())
}
