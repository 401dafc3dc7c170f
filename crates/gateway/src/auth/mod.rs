//! Client authentication, checked before the WebSocket upgrade.
//!
//! Credentials are tried in this order: `Authorization: Bearer <jwt>`, `?access_token=<jwt>`,
//! `X-GP-Auth: <id>-<token>`, `?id=<id>&token=<token>`. JWTs are verified locally (HS256 secret,
//! PEM public key, JWKS keys: `jwt.rs`); Gleepost tokens are valid while their Redis key exists
//! (Redis mode only).

mod fetch;
mod gleepost;
mod jwks;
mod jwt;
mod keys;
mod tls;

use std::time::SystemTime;

use http::HeaderMap;

pub(crate) use fetch::{JwksClient, JwksUrl};
pub(crate) use gleepost::GleepostAuth;
pub(crate) use jwks::{Jwks, JwksMetrics};
pub(crate) use jwt::{parse_user_id, ClaimRules, JwtAuth, Minter, MAX_TIMESTAMP};
pub(crate) use keys::PublicKey;

use crate::registry::UserId;

/// An authenticated client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Identity {
    /// The user the connection belongs to.
    pub(crate) user: UserId,
    /// When the credentials stop being valid (the connection is closed then, unless they can be
    /// renewed), if they expire.
    pub(crate) expires: Option<SystemTime>,
    /// How to check the credentials again at `expires` (Gleepost tokens: the login service may
    /// have extended the key's TTL); `None` for JWTs, whose `exp` is final.
    pub(crate) renewal: Option<Renewal>,
    /// What kind of credentials (revocation applies to JWTs by their `iat`).
    pub(crate) credentials: Credentials,
}

/// The kind of credentials a client presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Credentials {
    /// A JWT and its `iat` (unix s), if it has one: refused while the user's tokens issued
    /// before a revocation time are revoked (`POST /v1/disconnect`).
    Jwt { issued_at: Option<u64> },
    /// A Gleepost token: revoked by deleting its key.
    GleepostToken,
}

/// A Gleepost token kept to re-check its key at expiry. Its `Debug` never shows the token.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Renewal(Box<str>);

impl std::fmt::Debug for Renewal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Renewal(<token>)")
    }
}

/// Why a client was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum AuthError {
    /// Credentials missing, malformed or wrong (HTTP 401); the label names the reason.
    #[error("invalid credentials ({0})")]
    Invalid(&'static str),
    /// The credential store did not answer in time (HTTP 503).
    #[error("credential store unavailable")]
    Unavailable,
    /// The token needs a JWKS key and no JWKS fetch has succeeded yet (HTTP 503).
    #[error("JWKS keys not loaded yet")]
    KeysUnavailable,
}

impl AuthError {
    /// Metric label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            AuthError::Invalid(reason) => reason,
            AuthError::Unavailable => "store_unavailable",
            AuthError::KeysUnavailable => "jwks_unavailable",
        }
    }
}

/// Tries every configured credential kind.
pub(crate) struct Authenticator {
    jwt: JwtAuth,
    gleepost: Option<GleepostAuth>,
}

impl Authenticator {
    /// JWT always; Gleepost tokens when a Redis-backed checker is given.
    pub(crate) fn new(jwt: JwtAuth, gleepost: Option<GleepostAuth>) -> Self {
        Authenticator { jwt, gleepost }
    }

    /// Authenticate a request from its headers and query string.
    pub(crate) async fn authenticate(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
    ) -> Result<Identity, AuthError> {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let param = |name: &str| {
            query.and_then(|q| {
                form_urlencoded::parse(q.as_bytes())
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.into_owned())
            })
        };
        if let Some(value) = header("authorization") {
            let token = value
                .strip_prefix("Bearer ")
                .ok_or(AuthError::Invalid("bad_authorization_header"))?;
            return self.jwt(token.trim()).await;
        }
        if let Some(token) = param("access_token") {
            return self.jwt(&token).await;
        }
        if let Some(value) = header("x-gp-auth") {
            let (id, token) = value
                .split_once('-')
                .ok_or(AuthError::Invalid("bad_gp_auth_header"))?;
            return self.gleepost(id, token).await;
        }
        if let (Some(id), Some(token)) = (param("id"), param("token")) {
            return self.gleepost(&id, &token).await;
        }
        Err(AuthError::Invalid("missing"))
    }

    async fn jwt(&self, token: &str) -> Result<Identity, AuthError> {
        let (user, expires, issued_at) = self.jwt.verify(token).await?;
        Ok(Identity {
            user,
            expires: Some(expires),
            renewal: None,
            credentials: Credentials::Jwt { issued_at },
        })
    }

    async fn gleepost(&self, id: &str, token: &str) -> Result<Identity, AuthError> {
        let checker = self
            .gleepost
            .as_ref()
            .ok_or(AuthError::Invalid("gleepost_tokens_need_redis"))?;
        let user = parse_user_id(id).ok_or(AuthError::Invalid("gp_bad_user_id"))?;
        if token.is_empty() {
            return Err(AuthError::Invalid("gp_empty_token"));
        }
        let expires = checker.check(user, token).await?;
        let renewal = expires.map(|_| Renewal(token.into()));
        Ok(Identity {
            user,
            expires,
            renewal,
            credentials: Credentials::GleepostToken,
        })
    }

    /// Check `user`'s renewable credentials again: `Ok` with the new expiry (`None`: no longer
    /// expires) while they are still valid.
    pub(crate) async fn renew(
        &self,
        user: UserId,
        renewal: &Renewal,
    ) -> Result<Option<SystemTime>, AuthError> {
        let checker = self
            .gleepost
            .as_ref()
            .ok_or(AuthError::Invalid("gleepost_tokens_need_redis"))?;
        checker.check(user, &renewal.0).await
    }
}

#[cfg(test)]
mod tests {
    /// Every `auth_failures_total` reason the code can emit (the `Invalid("…")` labels and the
    /// JWT error mapping in this module's files, and `store_unavailable`) is named in
    /// docs/operations.md's metrics table.
    #[test]
    fn operations_md_names_every_auth_failure_reason() {
        let doc = include_str!("../../../../docs/operations.md");
        let row = doc
            .lines()
            .find(|l| l.starts_with("| `auth_failures_total{reason}`"))
            .unwrap_or_default();
        let sources = [
            include_str!("mod.rs"),
            include_str!("jwt.rs"),
            include_str!("gleepost.rs"),
        ];
        let mut reasons = vec![
            super::AuthError::Unavailable.label().to_string(),
            super::AuthError::KeysUnavailable.label().to_string(),
        ];
        for source in sources {
            // Code only, not the tests.
            let source = source.split("#[cfg(test)]").next().unwrap_or_default();
            // `Invalid("reason")` and the JWT mapping's `=> "reason",` arms.
            for (open, close) in [("Invalid(\"", "\")"), ("=> \"", "\",")] {
                for piece in source.split(open).skip(1) {
                    if let Some((label, _)) = piece.split_once(close) {
                        if !label.is_empty()
                            && label.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
                        {
                            reasons.push(label.to_string());
                        }
                    }
                }
            }
        }
        assert!(reasons.len() > 10, "found only {reasons:?}");
        for reason in reasons {
            assert!(
                row.contains(&format!("`{reason}`")),
                "operations.md's auth_failures_total row does not name {reason:?}"
            );
        }
    }
}
