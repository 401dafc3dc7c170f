//! JWT client authentication: `Authorization: Bearer <jwt>` or `?access_token=<jwt>`.
//!
//! Keys: the HS256 secret (`GATEWAY_JWT_SECRET`), a PEM public key (`--jwt-public-key-file`) and
//! the keys of a JWKS document (`--jwks-url`), each accepting only its own algorithm: a token's
//! `alg` picks among the configured keys, it never turns a key into another kind (an HS256 token
//! is checked with the secret only, never with a public key's bytes).
//!
//! The user id is the `sub` claim as a decimal string; `exp` is required, `nbf` honoured, both
//! with the same leeway; `iss` and `aud` are checked when configured (and ignored otherwise);
//! time claims beyond year 9999 are malformed (never an overflow), and tokens with a `crit`
//! header are refused (no extension is understood).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use super::jwks::{Jwks, Lookup};
use super::keys::PublicKey;
use super::AuthError;
use crate::registry::UserId;

/// Allowed clock skew between the token issuer and the gateway, in seconds: a token is
/// accepted until `exp` + leeway, and its connection closes (4001) at that same time.
const LEEWAY_SECS: u64 = 30;

/// Latest accepted time claim: 9999-12-31T23:59:59Z (keeps every time computation in range).
pub(crate) const MAX_TIMESTAMP: u64 = 253_402_300_799;

#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default)]
    nbf: Option<u64>,
    #[serde(default)]
    iat: Option<u64>,
}

/// The claims of a minted token.
#[derive(Serialize)]
struct Minted<'a> {
    sub: String,
    exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
}

/// The claims checked beyond `sub`, `exp` and `nbf`: when set, a token must carry them.
#[derive(Clone, Debug, Default)]
pub(crate) struct ClaimRules {
    /// The required `iss`.
    pub(crate) issuer: Option<String>,
    /// A value the token's `aud` (string or array) must hold.
    pub(crate) audience: Option<String>,
}

/// Verifies client tokens with every configured key.
#[derive(Clone)]
pub(crate) struct JwtAuth {
    secret: Option<DecodingKey>,
    public_key: Option<PublicKey>,
    jwks: Option<Arc<Jwks>>,
    rules: ClaimRules,
}

impl JwtAuth {
    /// A verifier of HS256 tokens signed with `secret` (no other key, no iss/aud rule).
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn new(secret: &[u8]) -> Self {
        JwtAuth::with_keys(Some(secret), None, None, ClaimRules::default())
    }

    /// A verifier with every configured key source (at least one should be given).
    pub(crate) fn with_keys(
        secret: Option<&[u8]>,
        public_key: Option<PublicKey>,
        jwks: Option<Arc<Jwks>>,
        rules: ClaimRules,
    ) -> Self {
        JwtAuth {
            secret: secret.map(DecodingKey::from_secret),
            public_key,
            jwks,
            rules,
        }
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let mut validation = Validation::new(alg);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        let mut required = vec!["exp", "sub"];
        if let Some(issuer) = &self.rules.issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        match &self.rules.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        validation
    }

    /// The key a token with this header must verify under, and its algorithm.
    async fn key_for(&self, header: &Header) -> Result<(Algorithm, DecodingKey), AuthError> {
        let alg = header.alg;
        if alg.family() == AlgorithmFamily::Hmac {
            return match &self.secret {
                Some(secret) if alg == Algorithm::HS256 => Ok((alg, secret.clone())),
                _ => Err(AuthError::Invalid("jwt_wrong_algorithm")),
            };
        }
        let from_file = self.public_key.as_ref().filter(|k| k.alg == alg);
        if let Some(jwks) = &self.jwks {
            let lookup = match (&header.kid, from_file) {
                (Some(kid), _) => jwks.lookup(kid).await,
                (None, None) => jwks.only_key_of(alg),
                (None, Some(_)) => Lookup::Unknown,
            };
            match lookup {
                Lookup::Found(key) => return Ok((key.alg, key.key)),
                _ if from_file.is_some() => {}
                Lookup::NotLoaded => return Err(AuthError::KeysUnavailable),
                Lookup::Unknown => return Err(AuthError::Invalid("jwt_unknown_kid")),
            }
        }
        from_file
            .map(|k| (k.alg, k.key.clone()))
            .ok_or(AuthError::Invalid("jwt_wrong_algorithm"))
    }

    /// Check a token: the user, when the token stops being valid (`exp` plus the leeway) and its `iat`.
    pub(crate) async fn verify(
        &self,
        token: &str,
    ) -> Result<(UserId, SystemTime, Option<u64>), AuthError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|_| AuthError::Invalid("jwt_malformed"))?;
        let (alg, key) = self.key_for(&header).await?;
        let data =
            jsonwebtoken::decode::<Claims>(token, &key, &self.validation(alg)).map_err(|e| {
                use jsonwebtoken::errors::ErrorKind;
                AuthError::Invalid(match e.kind() {
                    ErrorKind::ExpiredSignature => "jwt_expired",
                    ErrorKind::ImmatureSignature => "jwt_not_yet_valid",
                    ErrorKind::InvalidSignature => "jwt_bad_signature",
                    ErrorKind::InvalidAlgorithm => "jwt_wrong_algorithm",
                    ErrorKind::MissingRequiredClaim(_) => "jwt_missing_claim",
                    ErrorKind::InvalidIssuer => "jwt_wrong_issuer",
                    ErrorKind::InvalidAudience => "jwt_wrong_audience",
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
}

/// Mints HS256 tokens (dev mode, the `token` subcommand) that the gateway's rules accept.
pub(crate) struct Minter {
    key: EncodingKey,
    rules: ClaimRules,
}

impl Minter {
    /// Tokens signed with `secret`, with the configured `iss` and `aud`.
    pub(crate) fn new(secret: &[u8], rules: ClaimRules) -> Self {
        Minter {
            key: EncodingKey::from_secret(secret),
            rules,
        }
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
        let claims = Minted {
            sub: user.to_string(),
            exp,
            iss: self.rules.issuer.as_deref(),
            aud: self.rules.audience.as_deref(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.key)
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
mod tests;
