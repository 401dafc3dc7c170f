//! JWT (HS256) client authentication: `Authorization: Bearer <jwt>` or `?access_token=<jwt>`.
//!
//! The user id is the `sub` claim as a decimal string; `exp` is required.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use super::AuthError;
use crate::registry::UserId;

/// Allowed clock skew between the token issuer and the gateway, in seconds.
const LEEWAY_SECS: u64 = 30;

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
}

/// Verifies (and, for tooling and dev mode, mints) HS256 tokens.
#[derive(Clone)]
pub struct JwtAuth {
    decoding: DecodingKey,
    encoding: EncodingKey,
    validation: Validation,
}

impl JwtAuth {
    /// A verifier for tokens signed with `secret`.
    pub fn new(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = LEEWAY_SECS;
        validation.set_required_spec_claims(&["exp", "sub"]);
        JwtAuth {
            decoding: DecodingKey::from_secret(secret),
            encoding: EncodingKey::from_secret(secret),
            validation,
        }
    }

    /// Check a token; returns the user id and the token's expiry.
    pub fn verify(&self, token: &str) -> Result<(UserId, SystemTime), AuthError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind;
                AuthError::Invalid(match e.kind() {
                    ErrorKind::ExpiredSignature => "jwt_expired",
                    ErrorKind::InvalidSignature => "jwt_bad_signature",
                    ErrorKind::InvalidAlgorithm => "jwt_wrong_algorithm",
                    ErrorKind::MissingRequiredClaim(_) => "jwt_missing_claim",
                    _ => "jwt_malformed",
                })
            })?;
        let user = parse_user_id(&data.claims.sub).ok_or(AuthError::Invalid("jwt_bad_subject"))?;
        // An `exp` the clock cannot represent (≥ 2^63 s) is malformed, not a panic.
        let expires = UNIX_EPOCH
            .checked_add(Duration::from_secs(data.claims.exp))
            .ok_or(AuthError::Invalid("jwt_malformed"))?;
        Ok((user, expires))
    }

    /// Mint a token for `user` valid for `ttl`.
    pub fn mint(&self, user: UserId, ttl: Duration) -> Result<String, jsonwebtoken::errors::Error> {
        let exp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .saturating_add(ttl)
            .as_secs();
        let claims = Claims {
            sub: user.to_string(),
            exp,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
    }
}

/// A user id is a plain decimal number (no sign, no spaces, no leading `+`).
pub fn parse_user_id(s: &str) -> Option<UserId> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mint_then_verify() {
        let auth = JwtAuth::new(b"secret");
        let token = auth.mint(9, Duration::from_secs(60)).unwrap();
        assert_eq!(auth.verify(&token).unwrap().0, 9);
    }

    #[test]
    fn other_secret_is_rejected() {
        let token = JwtAuth::new(b"a").mint(9, Duration::from_secs(60)).unwrap();
        assert_eq!(
            JwtAuth::new(b"b").verify(&token).unwrap_err(),
            AuthError::Invalid("jwt_bad_signature")
        );
    }

    #[test]
    fn an_exp_beyond_the_clock_is_malformed_not_a_panic() {
        // Found by the `auth` fuzz target: a validly signed token with `exp` ≥ 2^63 overflowed
        // the SystemTime addition (a panic in the request).
        let auth = JwtAuth::new(b"secret");
        for exp in [9_233_272_036_854_775_807u64, 1 << 63, u64::MAX] {
            let claims = serde_json::json!({ "sub": "9", "exp": exp });
            let token =
                jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &auth.encoding)
                    .unwrap();
            assert_eq!(
                auth.verify(&token).unwrap_err(),
                AuthError::Invalid("jwt_malformed"),
                "{exp}"
            );
        }
    }

    #[test]
    fn user_ids() {
        assert_eq!(parse_user_id("2147"), Some(2147));
        for bad in ["", "-1", "+1", "1a", " 1", "99999999999999999999999"] {
            assert_eq!(parse_user_id(bad), None, "{bad}");
        }
    }
}
