//! JWT (HS256) client authentication: `Authorization: Bearer <jwt>` or `?access_token=<jwt>`.
//!
//! The user id is the `sub` claim as a decimal string; `exp` is required, `nbf` honoured, both
//! with the same leeway; time claims beyond year 9999 are malformed (never an overflow), and
//! tokens with a `crit` header are refused (no extension is understood).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use super::AuthError;
use crate::registry::UserId;

/// Allowed clock skew between the token issuer and the gateway, in seconds: a token is
/// accepted until `exp` + leeway, and its connection closes (4001) at that same time.
const LEEWAY_SECS: u64 = 30;

/// Latest accepted time claim: 9999-12-31T23:59:59Z (keeps every time computation in range).
pub(crate) const MAX_TIMESTAMP: u64 = 253_402_300_799;

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat: Option<u64>,
}

/// Verifies (and, for tooling and dev mode, mints) HS256 tokens.
#[derive(Clone)]
pub(crate) struct JwtAuth {
    decoding: DecodingKey,
    encoding: EncodingKey,
    validation: Validation,
}

impl JwtAuth {
    /// A verifier for tokens signed with `secret`.
    pub(crate) fn new(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        JwtAuth {
            decoding: DecodingKey::from_secret(secret),
            encoding: EncodingKey::from_secret(secret),
            validation,
        }
    }

    /// Check a token; returns the user id and when it stops being accepted (`exp` + leeway).
    /// The user, when the token stops being valid (`exp` plus the leeway) and its `iat`.
    pub(crate) fn verify(
        &self,
        token: &str,
    ) -> Result<(UserId, SystemTime, Option<u64>), AuthError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind;
                AuthError::Invalid(match e.kind() {
                    ErrorKind::ExpiredSignature => "jwt_expired",
                    ErrorKind::ImmatureSignature => "jwt_not_yet_valid",
                    ErrorKind::InvalidSignature => "jwt_bad_signature",
                    ErrorKind::InvalidAlgorithm => "jwt_wrong_algorithm",
                    ErrorKind::MissingRequiredClaim(_) => "jwt_missing_claim",
                    _ => "jwt_malformed",
                })
            })?;
        if data.header.crit.is_some() {
            return Err(AuthError::Invalid("jwt_crit_unsupported"));
        }
        let claims = &data.claims;
        let times = [Some(claims.exp), claims.nbf, claims.iat];
        if times.into_iter().flatten().any(|t| t > MAX_TIMESTAMP) {
            return Err(AuthError::Invalid("jwt_malformed"));
        }
        let user = parse_user_id(&claims.sub).ok_or(AuthError::Invalid("jwt_bad_subject"))?;
        Ok((
            user,
            UNIX_EPOCH + Duration::from_secs(claims.exp + LEEWAY_SECS),
            claims.iat,
        ))
    }

    /// Mint a token for `user` valid for `ttl`.
    pub(crate) fn mint(
        &self,
        user: UserId,
        ttl: Duration,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let exp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .saturating_add(ttl)
            .as_secs();
        let claims = Claims {
            sub: user.to_string(),
            exp,
            nbf: None,
            iat: None,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
    }
}

/// A user id is a plain decimal number (no sign, no spaces, no leading `+`).
pub(crate) fn parse_user_id(s: &str) -> Option<UserId> {
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

    fn signed(claims: serde_json::Value, header: Header) -> String {
        jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(b"k")).unwrap()
    }

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    #[test]
    fn out_of_range_times_are_malformed_not_a_panic() {
        let auth = JwtAuth::new(b"k");
        for claims in [
            serde_json::json!({"sub": "9", "exp": u64::MAX}),
            serde_json::json!({"sub": "9", "exp": 1u64 << 63}),
            serde_json::json!({"sub": "9", "exp": now() + 60, "iat": u64::MAX}),
            serde_json::json!({"sub": "9", "exp": 1e300}),
        ] {
            let token = signed(claims.clone(), Header::new(Algorithm::HS256));
            assert_eq!(
                auth.verify(&token).unwrap_err(),
                AuthError::Invalid("jwt_malformed"),
                "{claims}"
            );
        }
    }

    #[test]
    fn nbf_and_crit() {
        let auth = JwtAuth::new(b"k");
        let later = serde_json::json!({"sub": "9", "exp": now() + 600, "nbf": now() + 300});
        let token = signed(later, Header::new(Algorithm::HS256));
        assert_eq!(
            auth.verify(&token).unwrap_err(),
            AuthError::Invalid("jwt_not_yet_valid")
        );
        let within_leeway = serde_json::json!({"sub": "9", "exp": now() + 600, "nbf": now() + 5});
        assert!(auth
            .verify(&signed(within_leeway, Header::new(Algorithm::HS256)))
            .is_ok());
        let mut header = Header::new(Algorithm::HS256);
        header.crit = Some(vec!["exp".into()]);
        let token = signed(serde_json::json!({"sub": "9", "exp": now() + 60}), header);
        assert_eq!(
            auth.verify(&token).unwrap_err(),
            AuthError::Invalid("jwt_crit_unsupported")
        );
    }

    #[test]
    fn acceptance_and_expiry_share_the_leeway() {
        let auth = JwtAuth::new(b"k");
        let exp = now() - 10; // expired, within the leeway: accepted until exp + leeway
        let token = signed(
            serde_json::json!({"sub": "9", "exp": exp}),
            Header::new(Algorithm::HS256),
        );
        let (_, expires, _) = auth.verify(&token).unwrap();
        assert_eq!(expires, UNIX_EPOCH + Duration::from_secs(exp + LEEWAY_SECS));
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
