//! Client authentication on `GET /ws`: every failure is answered `401 {"error":"Invalid
//! credentials"}` before any upgrade; both JWT transports succeed.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{ensure, Context, Result};
use gleepost_tests::http::{self, HttpResponse};
use gleepost_tests::metrics::wait_metric;
use gleepost_tests::{seed, token, token_with, Client, Gateway, GatewayOptions, JWT_SECRET};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// A token with arbitrary claims, signed HS256 with the gateway's secret.
fn signed(claims: &Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap_or_default()
}

/// Attempt an upgrade of `/ws?<query>` with `headers`.
async fn attempt(gw: &Gateway, query: &str, headers: &[(&str, &str)]) -> Result<HttpResponse> {
    let path = if query.is_empty() {
        "/ws".to_string()
    } else {
        format!("/ws?{query}")
    };
    http::upgrade_attempt(&gw.public, &path, headers).await
}

/// The response is the documented rejection, with no upgrade.
fn assert_rejected(what: &str, res: &HttpResponse) -> Result<()> {
    ensure!(
        res.status == 401,
        "{what}: status {} (want 401), body {}",
        res.status,
        res.body_text()
    );
    let content_type = res.header("content-type").unwrap_or_default();
    ensure!(
        content_type.starts_with("application/json"),
        "{what}: content-type {content_type:?}"
    );
    let body = res.json().with_context(|| what.to_string())?;
    ensure!(
        body == json!({"error": "Invalid credentials"}),
        "{what}: body {body}"
    );
    ensure!(
        res.header("sec-websocket-accept").is_none() && res.header("upgrade").is_none(),
        "{what}: upgrade headers on a rejection: {:?}",
        res.headers
    );
    Ok(())
}

/// Every case is rejected on both transports where it applies, and counted.
async fn assert_all_rejected(gw: &Gateway, cases: &[(&str, String)]) -> Result<()> {
    let before = total_auth_failures(gw).await?;
    let mut attempts = 0.0;
    for (what, jwt) in cases {
        let bearer = format!("Bearer {jwt}");
        let res = attempt(gw, "", &[("Authorization", &bearer)]).await?;
        assert_rejected(&format!("{what} (Authorization header)"), &res)?;
        let res = attempt(gw, &format!("access_token={jwt}"), &[]).await?;
        assert_rejected(&format!("{what} (access_token query)"), &res)?;
        attempts += 2.0;
    }
    let after = total_auth_failures(gw).await?;
    ensure!(
        after - before == attempts,
        "auth_failures_total moved by {} for {attempts} rejections",
        after - before
    );
    Ok(())
}

/// Sum of `gleepost_gateway_auth_failures_total` over every reason.
async fn total_auth_failures(gw: &Gateway) -> Result<f64> {
    let page = gleepost_tests::metrics::scrape(gw).await?;
    Ok(page
        .samples
        .iter()
        .filter(|s| s.name == "gleepost_gateway_auth_failures_total")
        .map(|s| s.value)
        .sum())
}

/// `client` is live: an event published to `user` reaches it.
async fn assert_receives(gw: &Gateway, client: &mut Client, user: u64) -> Result<()> {
    gw.publish(&[user], seed::MESSAGE).await?;
    let frame = client.next_event().await?;
    ensure!(frame["type"] == "message", "unexpected frame {frame}");
    Ok(())
}

#[tokio::test]
async fn missing_credentials_are_rejected_before_upgrade() -> Result<()> {
    let gw = Gateway::start(GatewayOptions::default()).await?;
    assert_rejected("no credentials", &attempt(&gw, "", &[]).await?)?;
    assert_rejected("empty query", &attempt(&gw, "foo=bar", &[]).await?)?;
    assert_rejected(
        "empty access_token",
        &attempt(&gw, "access_token=", &[]).await?,
    )?;
    assert_rejected(
        "empty bearer",
        &attempt(&gw, "", &[("Authorization", "Bearer ")]).await?,
    )?;
    wait_metric(
        &gw,
        r#"gleepost_gateway_auth_failures_total{reason="missing"}"#,
        2.0,
    )
    .await?;
    // A real client's handshake fails too.
    ensure!(Client::connect(&gw.ws_base()).await.is_err());
    Ok(())
}

#[tokio::test]
async fn bad_signature_is_rejected() -> Result<()> {
    let gw = Gateway::start(GatewayOptions::default()).await?;
    let other_secret = token_with(
        9,
        3600,
        b"another-secret-0123456789abcdef0123",
        Algorithm::HS256,
    );
    let good = token(9);
    let other = token(10);
    let g: Vec<&str> = good.split('.').collect();
    let o: Vec<&str> = other.split('.').collect();
    // The right header and claims with the signature of a different token.
    let spliced = format!("{}.{}.{}", g[0], g[1], o[2]);
    // Claims changed after signing (sub 9 → 10).
    let tampered = format!("{}.{}.{}", g[0], o[1], g[2]);
    assert_all_rejected(
        &gw,
        &[
            ("signed with another secret", other_secret),
            ("signature of another token", spliced),
            ("claims changed after signing", tampered),
        ],
    )
    .await
}

#[tokio::test]
async fn expired_token_is_rejected() -> Result<()> {
    let gw = Gateway::start(GatewayOptions::default()).await?;
    assert_all_rejected(
        &gw,
        &[
            (
                "expired an hour ago",
                token_with(9, -3600, JWT_SECRET.as_bytes(), Algorithm::HS256),
            ),
            ("exp = 0", signed(&json!({"sub": "9", "exp": 0}))),
        ],
    )
    .await?;
    wait_metric(
        &gw,
        r#"gleepost_gateway_auth_failures_total{reason="jwt_expired"}"#,
        4.0,
    )
    .await
}

#[tokio::test]
async fn wrong_algorithm_is_rejected_even_with_the_right_secret() -> Result<()> {
    let gw = Gateway::start(GatewayOptions::default()).await?;
    let secret = JWT_SECRET.as_bytes();
    // `alg: none` with the claims of a valid token and an empty signature.
    let claims = token(9).split('.').nth(1).context("jwt")?.to_string();
    let none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{claims}.");
    assert_all_rejected(
        &gw,
        &[
            ("HS384", token_with(9, 3600, secret, Algorithm::HS384)),
            ("HS512", token_with(9, 3600, secret, Algorithm::HS512)),
            ("alg none", none),
        ],
    )
    .await
}

#[tokio::test]
async fn claims_without_a_decimal_user_id_or_expiry_are_rejected() -> Result<()> {
    let gw = Gateway::start(GatewayOptions::default()).await?;
    let exp = now() + 3600;
    assert_all_rejected(
        &gw,
        &[
            ("sub abc", signed(&json!({"sub": "abc", "exp": exp}))),
            ("sub negative", signed(&json!({"sub": "-9", "exp": exp}))),
            ("sub with sign", signed(&json!({"sub": "+9", "exp": exp}))),
            ("sub with space", signed(&json!({"sub": " 9", "exp": exp}))),
            ("sub fractional", signed(&json!({"sub": "9.5", "exp": exp}))),
            ("sub empty", signed(&json!({"sub": "", "exp": exp}))),
            (
                "sub too big",
                signed(&json!({"sub": "99999999999999999999999", "exp": exp})),
            ),
            ("sub a JSON number", signed(&json!({"sub": 9, "exp": exp}))),
            ("no sub", signed(&json!({"exp": exp}))),
            ("no exp", signed(&json!({"sub": "9"}))),
            (
                "exp a string",
                signed(&json!({"sub": "9", "exp": "tomorrow"})),
            ),
        ],
    )
    .await
}

#[tokio::test]
async fn malformed_tokens_are_rejected() -> Result<()> {
    let gw = Gateway::start(GatewayOptions::default()).await?;
    let valid = token(9);
    let (_, claims_and_sig) = valid.split_once('.').context("jwt")?;
    assert_all_rejected(
        &gw,
        &[
            ("garbage", "not-a-jwt".to_string()),
            ("two segments", "abc.def".to_string()),
            ("four segments", format!("{valid}.xyz")),
            ("bad base64", "!!!.@@@.###".to_string()),
            ("truncated", valid[..valid.len() - 5].to_string()),
            // base64url("notjson") as the header.
            ("header not JSON", format!("bm90anNvbg.{claims_and_sig}")),
        ],
    )
    .await
}

#[tokio::test]
async fn non_bearer_authorization_schemes_are_rejected() -> Result<()> {
    let gw = Gateway::start(GatewayOptions::default()).await?;
    let jwt = token(9);
    let other_scheme = format!("Token {jwt}");
    for (what, value) in [
        ("Basic", "Basic OTpzZWNyZXQ="),
        ("Token scheme", other_scheme.as_str()),
        ("bare JWT", jwt.as_str()),
    ] {
        let res = attempt(&gw, "", &[("Authorization", value)]).await?;
        assert_rejected(what, &res)?;
    }
    // A bad Authorization header is not rescued by a good access_token.
    let res = attempt(
        &gw,
        &format!("access_token={jwt}"),
        &[("Authorization", "Basic OTpzZWNyZXQ=")],
    )
    .await?;
    assert_rejected("Basic header with a valid access_token", &res)
}

#[tokio::test]
async fn gleepost_tokens_are_rejected_without_redis() -> Result<()> {
    let gw = Gateway::start(GatewayOptions::default()).await?;
    let res = attempt(&gw, "id=9&token=0123456789abcdef", &[]).await?;
    assert_rejected("?id=&token=", &res)?;
    let res = attempt(&gw, "", &[("X-GP-Auth", "9-0123456789abcdef")]).await?;
    assert_rejected("X-GP-Auth", &res)?;
    let res = attempt(&gw, "", &[("X-GP-Auth", "no-dash-here-but-bad-id")]).await?;
    assert_rejected("X-GP-Auth with a bad id", &res)
}

#[tokio::test]
async fn access_token_query_is_accepted() -> Result<()> {
    let gw = Gateway::start(GatewayOptions::default()).await?;
    let res = attempt(&gw, &format!("access_token={}", token(9)), &[]).await?;
    ensure!(res.status == 101, "raw upgrade answered {}", res.status);
    ensure!(res.header("sec-websocket-accept") == Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));

    let mut client = Client::connect(&gw.ws_url(9)).await?;
    assert_receives(&gw, &mut client, 9).await
}

#[tokio::test]
async fn authorization_bearer_header_is_accepted() -> Result<()> {
    let gw = Gateway::start(GatewayOptions::default()).await?;
    let bearer = format!("Bearer {}", token(2147));
    let res = attempt(&gw, "", &[("Authorization", &bearer)]).await?;
    ensure!(res.status == 101, "raw upgrade answered {}", res.status);

    let mut request = gw.ws_base().into_client_request()?;
    request
        .headers_mut()
        .insert("Authorization", HeaderValue::from_str(&bearer)?);
    let mut client = Client::connect_request(request).await?;
    assert_receives(&gw, &mut client, 2147).await
}

#[tokio::test]
async fn out_of_range_times_not_yet_valid_tokens_and_crit_headers_get_401() -> Result<()> {
    let gw = Gateway::start(GatewayOptions::default()).await?;
    let mut crit = Header::new(Algorithm::HS256);
    crit.crit = Some(vec!["exp".into()]);
    let with_crit = encode(
        &crit,
        &json!({"sub": "9", "exp": now() + 3600}),
        &EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )?;
    assert_all_rejected(
        &gw,
        &[
            // exp ≥ 2^63 used to panic (empty reply, not counted).
            (
                "exp = 2^63",
                signed(&json!({"sub": "9", "exp": 1u64 << 63})),
            ),
            (
                "exp = u64::MAX",
                signed(&json!({"sub": "9", "exp": u64::MAX})),
            ),
            (
                "iat far away",
                signed(&json!({"sub": "9", "exp": now() + 3600, "iat": u64::MAX})),
            ),
            (
                "nbf in 5 minutes",
                signed(&json!({"sub": "9", "exp": now() + 3600, "nbf": now() + 300})),
            ),
            ("crit header", with_crit),
        ],
    )
    .await?;
    // Each case is tried twice (header and query).
    for (reason, count) in [
        ("jwt_malformed", 6.0),
        ("jwt_not_yet_valid", 2.0),
        ("jwt_crit_unsupported", 2.0),
    ] {
        let sample = format!(r#"gleepost_gateway_auth_failures_total{{reason="{reason}"}}"#);
        wait_metric(&gw, &sample, count).await?;
    }
    // `nbf` inside the leeway is accepted.
    let soon = signed(&json!({"sub": "9", "exp": now() + 3600, "nbf": now() + 5}));
    Client::connect(&format!("{}?access_token={soon}", gw.ws_base())).await?;
    Ok(())
}
