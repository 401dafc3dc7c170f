//! Asymmetric JWTs (issue 13, item 4): RS256, ES256 and EdDSA keys from a JWKS document the test
//! serves on loopback (HTTP, or HTTPS with a certificate of a CA the test makes), rotated without
//! a restart and kept through an outage; a PEM public key file; `iss` / `aud` rules; several admin
//! API keys. Real gateway processes, real HTTP and TLS.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use gleepost_tests::eventually;
use gleepost_tests::http::{self, HttpResponse};
use gleepost_tests::jwks::{claims, fixture, JwksServer, TestCa, TestKey};
use gleepost_tests::metrics::wait_metric;
use gleepost_tests::{seed, token, Client, Gateway, GatewayOptions};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

const LIMIT: Duration = Duration::from_secs(20);

fn key(name: &str) -> Result<TestKey> {
    TestKey::load(name)
}

fn path(name: &str) -> Result<String> {
    fixture(name)
        .to_str()
        .map(str::to_owned)
        .context("fixture path is not UTF-8")
}

async fn attempt(gw: &Gateway, jwt: &str) -> Result<HttpResponse> {
    http::upgrade_attempt(&gw.public, &format!("/ws?access_token={jwt}"), &[]).await
}

/// A WebSocket for `jwt` that receives an event published to `user`.
async fn admitted(gw: &Gateway, user: u64, jwt: &str) -> Result<Client> {
    let mut client = Client::connect(&format!("{}?access_token={jwt}", gw.ws_base()))
        .await
        .with_context(|| format!("token for user {user} was refused"))?;
    gw.publish(&[user], seed::MESSAGE).await?;
    let event = client.next_event().await?;
    ensure!(event["type"] == "message", "unexpected frame {event}");
    Ok(client)
}

/// The upgrade is refused with `status` and counted under `reason`.
async fn refused(gw: &Gateway, jwt: &str, status: u16, reason: &str) -> Result<()> {
    let sample = format!("gleepost_gateway_auth_failures_total{{reason=\"{reason}\"}}");
    let before = gw.metric(&sample).await?;
    let res = attempt(gw, jwt).await?;
    let want = if status == 401 {
        json!({"error": "Invalid credentials"})
    } else {
        json!({"error": "Authentication temporarily unavailable"})
    };
    ensure!(
        res.status == status && res.json()? == want,
        "{reason}: answered {} {}",
        res.status,
        res.body_text()
    );
    ensure!(
        res.header("sec-websocket-accept").is_none(),
        "{reason}: upgraded"
    );
    wait_metric(gw, &sample, before + 1.0).await
}

fn jwks_gateway(url: &str, extra: &[&str]) -> GatewayOptions {
    GatewayOptions::default()
        .arg(&["--jwks-url", url])
        .arg(extra)
}

#[tokio::test(flavor = "multi_thread")]
async fn rs256_es256_and_eddsa_keys_of_a_jwks_are_accepted_beside_hs256() -> Result<()> {
    let (rsa, ec, ed) = (key("rsa-a")?, key("ec-a")?, key("ed-a")?);
    let server = JwksServer::start(&[&rsa, &ec, &ed]).await?;
    let gw = Gateway::start(jwks_gateway(&server.url, &[])).await?;
    wait_metric(&gw, "gleepost_gateway_jwks_keys", 3.0).await?;
    for (user, k) in [(21, &rsa), (22, &ec), (23, &ed)] {
        admitted(&gw, user, &k.token(user, &json!({}))?)
            .await
            .with_context(|| format!("{:?}", k.alg))?;
    }
    admitted(&gw, 9, &token(9)).await.context("HS256")?;

    // The algorithm is the key's: an ES256 token naming the RSA key's kid is refused, and so is
    // an HS256 token "signed" with the RSA public key's bytes (the secret is the only HS256 key).
    refused(
        &gw,
        &ec.sign(&claims(9, &json!({})), Some(&rsa.kid))?,
        401,
        "jwt_wrong_algorithm",
    )
    .await?;
    let pem = std::fs::read(fixture("rsa-a.pub.pem"))?;
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(rsa.kid.clone());
    let forged = jsonwebtoken::encode(
        &header,
        &claims(9, &json!({})),
        &EncodingKey::from_secret(&pem),
    )?;
    refused(&gw, &forged, 401, "jwt_bad_signature").await?;
    // Another key's signature under a known kid.
    let other = key("rsa-b")?;
    refused(
        &gw,
        &other.sign(&claims(9, &json!({})), Some(&rsa.kid))?,
        401,
        "jwt_bad_signature",
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_kid_is_fetched_at_once_without_a_restart_and_made_up_kids_do_not_hammer_the_server(
) -> Result<()> {
    let (old, new) = (key("rsa-a")?, key("rsa-b")?);
    let server = JwksServer::start(&[&old]).await?;
    // The periodic refresh (5 min) plays no part: only tokens trigger fetches here.
    let gw = Gateway::start(jwks_gateway(&server.url, &[])).await?;
    wait_metric(&gw, "gleepost_gateway_jwks_keys", 1.0).await?;
    let _kept = admitted(&gw, 31, &old.token(31, &json!({}))?).await?;
    let fetched = server.requests();

    // The issuer rotates: the document now holds only the new key.
    server.set_keys(&[&new])?;
    admitted(&gw, 32, &new.token(32, &json!({}))?)
        .await
        .context("a token of the new kid, right after the rotation")?;
    ensure!(
        server.requests() == fetched + 1,
        "the new kid took {} fetches",
        server.requests() - fetched
    );
    // The old key left the document: its tokens are refused from the refresh on.
    refused(&gw, &old.token(33, &json!({}))?, 401, "jwt_unknown_kid").await?;

    // Made-up kids right after a refresh do not make the gateway fetch again (at most one
    // fetch per 10 s is triggered by unknown kids; allow one in case this ran slowly).
    let before = server.requests();
    for i in 0..5 {
        let forged = new.sign(&claims(34, &json!({})), Some(&format!("made-up-{i}")))?;
        refused(&gw, &forged, 401, "jwt_unknown_kid").await?;
    }
    let extra = server.requests() - before;
    ensure!(extra <= 1, "5 made-up kids caused {extra} JWKS fetches");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_jwks_outage_keeps_the_cached_keys_and_shows_in_the_metrics() -> Result<()> {
    let (ec, ed) = (key("ec-a")?, key("ed-a")?);
    let server = JwksServer::start(&[&ec, &ed]).await?;
    let gw = Gateway::start(jwks_gateway(&server.url, &["--jwks-refresh", "1s"])).await?;
    wait_metric(&gw, "gleepost_gateway_jwks_keys", 2.0).await?;
    let last_success = gw
        .metric("gleepost_gateway_jwks_last_success_timestamp_seconds")
        .await?;
    ensure!(last_success > 0.0, "no last-success timestamp");

    server.fail_with(503);
    let failures = "gleepost_gateway_jwks_refresh_failures_total";
    eventually(LIMIT, "a failed refresh is counted", || async {
        let n = gw.metric(failures).await?;
        ensure!(n >= 1.0, "{n} failures");
        Ok(())
    })
    .await?;
    admitted(&gw, 41, &ec.token(41, &json!({}))?)
        .await
        .context("a cached key during the outage")?;
    admitted(&gw, 42, &ed.token(42, &json!({}))?).await?;
    ensure!(
        gw.metric("gleepost_gateway_jwks_keys").await? == 2.0,
        "keys dropped in the outage"
    );
    ensure!(
        gw.logs().iter().any(|l| l.contains("JWKS fetch failed")),
        "no log line for the failed fetch"
    );

    // The server goes away entirely (connection refused): still the cached keys.
    drop(server);
    let seen = gw.metric(failures).await?;
    eventually(LIMIT, "refused connections are counted", || async {
        let n = gw.metric(failures).await?;
        ensure!(n > seen, "{n} failures");
        Ok(())
    })
    .await?;
    admitted(&gw, 43, &ec.token(43, &json!({}))?).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn start_up_does_not_wait_for_the_jwks_server() -> Result<()> {
    let rsa = key("rsa-a")?;
    let server = JwksServer::start(&[&rsa]).await?;
    server.fail_with(500);
    let gw = Gateway::start(jwks_gateway(&server.url, &["--jwks-refresh", "1s"])).await?;
    gw.wait_ready(true, LIMIT).await?;
    // Until a fetch succeeds, tokens that need a JWKS key get 503 (retry), others work.
    refused(&gw, &rsa.token(51, &json!({}))?, 503, "jwks_unavailable").await?;
    admitted(&gw, 9, &token(9))
        .await
        .context("HS256 while the JWKS is down")?;
    server.set_keys(&[&rsa])?;
    let jwt = rsa.token(51, &json!({}))?;
    eventually(
        LIMIT,
        "the JWKS token is accepted once the server answers",
        || async {
            let res = attempt(&gw, &jwt).await?;
            ensure!(res.status == 101, "status {}", res.status);
            Ok(())
        },
    )
    .await
}

fn ca_path(ca: &TestCa) -> Result<&str> {
    ca.pem_file.to_str().context("CA file path is not UTF-8")
}

/// Each failed JWKS fetch is counted: wait for `more` beyond `seen`.
async fn more_failures(gw: &Gateway, seen: f64, more: f64, what: &str) -> Result<f64> {
    let failures = "gleepost_gateway_jwks_refresh_failures_total";
    eventually(Duration::from_secs(40), what, || async {
        let n = gw.metric(failures).await?;
        ensure!(n >= seen + more, "{n} failures");
        Ok(())
    })
    .await?;
    gw.metric(failures).await
}

#[tokio::test(flavor = "multi_thread")]
async fn an_https_jwks_is_verified_against_ssl_cert_file_and_a_hung_handshake_times_out(
) -> Result<()> {
    let ca = TestCa::new("jwks-ca")?;
    let (rsa, ed, new) = (key("rsa-a")?, key("ed-a")?, key("ec-a")?);
    let server = JwksServer::start_https(&[&rsa, &ed], &ca).await?;
    let gw = Gateway::start(
        jwks_gateway(&server.url, &["--jwks-refresh", "1s"]).env("SSL_CERT_FILE", ca_path(&ca)?),
    )
    .await?;
    wait_metric(&gw, "gleepost_gateway_jwks_keys", 2.0).await?;
    admitted(&gw, 91, &rsa.token(91, &json!({}))?).await?;
    admitted(&gw, 92, &ed.token(92, &json!({}))?).await?;
    // A rotation is picked up over TLS too.
    server.set_keys(&[&rsa, &new])?;
    admitted(&gw, 93, &new.token(93, &json!({}))?)
        .await
        .context("a new kid over https")?;
    ensure!(
        gw.metric("gleepost_gateway_jwks_refresh_failures_total")
            .await?
            == 0.0,
        "a fetch failed"
    );

    // The server accepts connections and never answers the TLS handshake: each fetch gives up
    // at its deadline, the periodic refresh goes on (two failures, not one stuck fetch) and
    // the cached keys keep working meanwhile.
    server.stall();
    let seen = more_failures(&gw, 0.0, 2.0, "stalled handshakes fail").await?;
    ensure!(
        gw.logs()
            .iter()
            .any(|l| l.contains("JWKS fetch failed") && l.contains("timed out")),
        "no log line for the timed-out fetch"
    );
    admitted(&gw, 94, &new.token(94, &json!({}))?)
        .await
        .context("a cached key while the server hangs")?;
    // It answers again: keys are fetched and no more failures are counted.
    let refreshes = gw.metric("gleepost_gateway_jwks_refreshes_total").await?;
    server.set_keys(&[&rsa, &new])?;
    eventually(LIMIT, "fetches succeed again", || async {
        let n = gw.metric("gleepost_gateway_jwks_refreshes_total").await?;
        ensure!(n > refreshes, "{n} refreshes");
        Ok(())
    })
    .await?;
    ensure!(
        gw.metric("gleepost_gateway_jwks_refresh_failures_total")
            .await?
            <= seen + 1.0,
        "failures went on after the server recovered"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_untrusted_jwks_certificate_fails_the_fetch_and_the_node_stays_up() -> Result<()> {
    let (ca, other) = (TestCa::new("jwks-ca")?, TestCa::new("other-ca")?);
    let rsa = key("rsa-a")?;
    let server = JwksServer::start_https(&[&rsa], &ca).await?;
    // The node trusts only another CA.
    let mut gw = Gateway::start(
        jwks_gateway(&server.url, &["--jwks-refresh", "1s"]).env("SSL_CERT_FILE", ca_path(&other)?),
    )
    .await?;
    more_failures(&gw, 0.0, 2.0, "untrusted certificates fail the fetch").await?;
    ensure!(
        gw.logs().iter().any(|l| l.contains("JWKS fetch failed")
            && l.contains("TLS handshake")
            && l.contains("invalid peer certificate")),
        "no log line for the refused certificate: {:?}",
        gw.logs()
    );
    ensure!(
        server.requests() == 0,
        "a request was sent over an unverified connection"
    );
    ensure!(gw.metric("gleepost_gateway_jwks_keys").await? == 0.0);
    // No key was ever loaded: tokens that need one are refused with the documented 503 (as
    // before any first fetch); other credentials work and the node stays up and ready.
    refused(&gw, &rsa.token(95, &json!({}))?, 503, "jwks_unavailable").await?;
    admitted(&gw, 9, &token(9))
        .await
        .context("HS256 while the JWKS is untrusted")?;
    gw.wait_ready(true, LIMIT).await?;
    ensure!(gw.is_running(), "the gateway exited");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_https_jwks_url_without_a_usable_root_certificate_stops_the_start() -> Result<()> {
    // An SSL_CERT_FILE that cannot be read, or that holds no certificate.
    let not_a_ca = path("ec-a.pub.pem")?;
    for (file, expected) in [
        (
            path("no-such-ca.pem")?,
            "reading the root certificates of SSL_CERT_FILE",
        ),
        (not_a_ca, "no trusted root certificates in SSL_CERT_FILE"),
    ] {
        let started = Gateway::start(
            jwks_gateway("https://127.0.0.1:9/jwks.json", &[]).env("SSL_CERT_FILE", &file),
        )
        .await;
        let err = match started {
            Ok(_) => anyhow::bail!("started with SSL_CERT_FILE {file}"),
            Err(e) => format!("{e:#}"),
        };
        ensure!(
            err.contains("GATEWAY_JWKS_URL") && err.contains(expected),
            "{file}: {err}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_es256_public_key_file_without_a_secret() -> Result<()> {
    let (ec, other) = (key("ec-a")?, key("ec-b")?);
    let gw = Gateway::start(GatewayOptions::default().arg(&[
        "--jwt-public-key-file",
        &path("ec-a.pub.pem")?,
        "--jwt-secret",
        "",
    ]))
    .await?;
    admitted(&gw, 61, &ec.sign(&claims(61, &json!({})), None)?)
        .await
        .context("no kid")?;
    admitted(&gw, 62, &ec.token(62, &json!({}))?)
        .await
        .context("with a kid")?;
    refused(
        &gw,
        &other.sign(&claims(63, &json!({})), None)?,
        401,
        "jwt_bad_signature",
    )
    .await?;
    // No secret configured: HS256 tokens have no key at all.
    refused(&gw, &token(9), 401, "jwt_wrong_algorithm").await?;
    let rsa = key("rsa-a")?;
    refused(
        &gw,
        &rsa.sign(&claims(64, &json!({})), None)?,
        401,
        "jwt_wrong_algorithm",
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_hs256_token_signed_with_the_public_key_file_is_refused() -> Result<()> {
    let gw = Gateway::start(
        GatewayOptions::default().arg(&["--jwt-public-key-file", &path("rsa-a.pub.pem")?]),
    )
    .await?;
    let rsa = key("rsa-a")?;
    admitted(&gw, 71, &rsa.sign(&claims(71, &json!({})), None)?).await?;
    let pem = std::fs::read(fixture("rsa-a.pub.pem"))?;
    let forged = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims(71, &json!({})),
        &EncodingKey::from_secret(&pem),
    )?;
    refused(&gw, &forged, 401, "jwt_bad_signature").await
}

#[tokio::test(flavor = "multi_thread")]
async fn unusable_key_files_stop_the_start() -> Result<()> {
    for (file, expected) in [
        (path("ec384.pub.pem")?, "unsupported key type"),
        (path("ec-a.key.pem")?, "not a PEM public key"),
        (path("missing.pem")?, "reading GATEWAY_JWT_PUBLIC_KEY_FILE"),
    ] {
        let started =
            Gateway::start(GatewayOptions::default().arg(&["--jwt-public-key-file", &file])).await;
        let err = match started {
            Ok(_) => anyhow::bail!("started with {file}"),
            Err(e) => format!("{e:#}"),
        };
        ensure!(err.contains(expected), "{file}: {err}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_issuer_or_audience_is_refused() -> Result<()> {
    let ed = key("ed-a")?;
    let gw = Gateway::start(GatewayOptions::default().arg(&[
        "--jwt-public-key-file",
        &path("ed-a.pub.pem")?,
        "--jwt-issuer",
        "https://idp.test/",
        "--jwt-audience",
        "gleepost",
    ]))
    .await?;
    let iss = "https://idp.test/";
    admitted(
        &gw,
        81,
        &ed.token(81, &json!({"iss": iss, "aud": "gleepost"}))?,
    )
    .await?;
    admitted(
        &gw,
        82,
        &ed.token(82, &json!({"iss": iss, "aud": ["other", "gleepost"]}))?,
    )
    .await?;
    let cases: [(Value, &str); 4] = [
        (
            json!({"iss": "https://evil.test/", "aud": "gleepost"}),
            "jwt_wrong_issuer",
        ),
        (json!({"iss": iss, "aud": "other"}), "jwt_wrong_audience"),
        (json!({"aud": "gleepost"}), "jwt_missing_claim"),
        (json!({"iss": iss}), "jwt_missing_claim"),
    ];
    for (extra, reason) in cases {
        refused(&gw, &ed.token(83, &extra)?, 401, reason)
            .await
            .with_context(|| extra.to_string())?;
    }
    // The rules apply to HS256 tokens too.
    refused(&gw, &token(9), 401, "jwt_missing_claim").await
}

#[tokio::test(flavor = "multi_thread")]
async fn every_listed_api_key_is_accepted_and_no_other() -> Result<()> {
    let gw = Gateway::start(GatewayOptions::default().arg(&["--api-key", "old-key-1, new-key-2"]))
        .await?;
    let body = format!(r#"{{"users":[9],"event":{}}}"#, seed::MESSAGE);
    let publish = |key: &'static str| {
        let (admin, body) = (gw.admin.clone(), body.clone());
        async move {
            let auth = format!("Bearer {key}");
            let headers = [
                ("Authorization", auth.as_str()),
                ("Content-Type", "application/json"),
            ];
            http::request(&admin, "POST", "/v1/publish", &headers, body.as_bytes()).await
        }
    };
    let presence = |key: &'static str| {
        let admin = gw.admin.clone();
        async move {
            let auth = format!("Bearer {key}");
            let headers = [("Authorization", auth.as_str())];
            http::request(&admin, "GET", "/v1/presence?users=9", &headers, b"").await
        }
    };
    for key in ["old-key-1", "new-key-2"] {
        let res = publish(key).await?;
        ensure!(
            res.status == 200,
            "{key}: {} {}",
            res.status,
            res.body_text()
        );
        // Every admin endpoint takes the same keys.
        let res = presence(key).await?;
        ensure!(res.status == 200, "presence, {key}: {}", res.status);
    }
    let res = presence("third-key").await?;
    ensure!(res.status == 401, "presence, a third key: {}", res.status);
    for key in [
        "third-key",
        "old-key-1, new-key-2",
        "old-key-1,new-key-2",
        "old-key",
        "",
    ] {
        let res = publish(key).await?;
        ensure!(
            res.status == 401 && res.json()? == json!({"error": "Invalid API key"}),
            "{key:?}: {} {}",
            res.status,
            res.body_text()
        );
    }
    Ok(())
}
