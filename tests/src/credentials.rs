//! Client credentials of the test gateways: the JWT secret and API key every [`Gateway`] is
//! started with, JWTs signed with that secret, and Gleepost tokens in a URL or a header.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Result;
use serde::Serialize;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::{Client, Gateway};

/// JWT secret every test gateway uses.
pub const JWT_SECRET: &str = "e2e-test-secret-0123456789abcdef0123456789";
/// Publish API key every test gateway uses.
pub const API_KEY: &str = "e2e-test-api-key";

#[derive(Serialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    iat: Option<u64>,
}

/// A JWT for `user` signed with [`JWT_SECRET`], valid for an hour.
pub fn token(user: u64) -> String {
    token_with(
        user,
        3600,
        JWT_SECRET.as_bytes(),
        jsonwebtoken::Algorithm::HS256,
    )
}

/// `/ws?access_token=<jwt for user>`: the path of a WebSocket upgrade as `user`, for clients
/// that write their own request.
pub fn ws_path(user: u64) -> String {
    format!("/ws?access_token={}", token(user))
}

/// A JWT with a chosen lifetime (negative = expired), secret and algorithm.
pub fn token_with(user: u64, ttl_secs: i64, secret: &[u8], alg: jsonwebtoken::Algorithm) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let claims = Claims {
        sub: user.to_string(),
        exp: (now + ttl_secs).max(0) as u64,
        iat: None,
    };
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(alg),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .unwrap_or_default()
}

/// A JWT for `user` signed with [`JWT_SECRET`], valid for an hour, issued (`iat`) at
/// `issued_at` (unix s; `None`: no `iat` claim).
pub fn token_issued_at(user: u64, issued_at: Option<u64>) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let claims = Claims {
        sub: user.to_string(),
        exp: now + 3600,
        iat: issued_at,
    };
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap_or_default()
}

/// `ws://…/ws?id=<user>&token=<token>` (Gleepost token in the query).
pub fn gleepost_url(gw: &Gateway, user: u64, token: &str) -> String {
    format!("{}?id={user}&token={token}", gw.ws_base())
}

/// Connect with the header `X-GP-Auth: <value>`.
pub async fn connect_gp_header(gw: &Gateway, value: &str) -> Result<Client> {
    let mut request = gw.ws_base().into_client_request()?;
    request
        .headers_mut()
        .insert("X-GP-Auth", HeaderValue::from_str(value)?);
    Client::connect_request(request).await
}
