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
mod tests {
    use super::*;
    use futures_util::FutureExt;

    /// Without a JWKS nothing in `verify` waits.
    fn check(auth: &JwtAuth, token: &str) -> Result<(UserId, SystemTime, Option<u64>), AuthError> {
        auth.verify(token)
            .now_or_never()
            .expect("never pending without a JWKS")
    }

    fn mint(secret: &[u8], user: UserId) -> String {
        Minter::new(secret, ClaimRules::default())
            .mint(user, Duration::from_secs(60))
            .unwrap()
    }

    #[test]
    fn mint_then_verify() {
        let auth = JwtAuth::new(b"secret");
        assert_eq!(check(&auth, &mint(b"secret", 9)).unwrap().0, 9);
    }

    #[test]
    fn other_secret_is_rejected() {
        assert_eq!(
            check(&JwtAuth::new(b"b"), &mint(b"a", 9)).unwrap_err(),
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

    const RSA_PUBLIC: &[u8] = include_bytes!("../../../../tests/fixtures/jwt/rsa-a.pub.pem");

    #[test]
    fn an_hs256_token_signed_with_the_public_key_is_refused() {
        // The classic confusion: the attacker signs HS256 with the public key's bytes.
        let public = PublicKey::from_pem(RSA_PUBLIC).unwrap();
        let claims = serde_json::json!({"sub": "9", "exp": now() + 60});
        let forged = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(RSA_PUBLIC),
        )
        .unwrap();
        let rules = ClaimRules::default();
        let with_secret = JwtAuth::with_keys(Some(b"k"), Some(public.clone()), None, rules.clone());
        assert_eq!(
            check(&with_secret, &forged).unwrap_err(),
            AuthError::Invalid("jwt_bad_signature")
        );
        let without_secret = JwtAuth::with_keys(None, Some(public), None, rules);
        assert_eq!(
            check(&without_secret, &forged).unwrap_err(),
            AuthError::Invalid("jwt_wrong_algorithm")
        );
        // The secret's own tokens still pass beside the public key.
        assert!(check(&with_secret, &signed(claims, Header::new(Algorithm::HS256))).is_ok());
    }

    #[test]
    fn issuer_and_audience_when_configured() {
        let rules = ClaimRules {
            issuer: Some("https://idp.example/".into()),
            audience: Some("gleepost".into()),
        };
        let auth = JwtAuth::with_keys(Some(b"k"), None, None, rules.clone());
        let exp = now() + 60;
        let iss = "https://idp.example/";
        let cases = [
            (
                serde_json::json!({"sub": "9", "exp": exp, "iss": iss, "aud": "gleepost"}),
                Ok(9),
            ),
            (
                serde_json::json!({"sub": "9", "exp": exp, "iss": iss, "aud": ["x", "gleepost"]}),
                Ok(9),
            ),
            (
                serde_json::json!({"sub": "9", "exp": exp, "iss": "https://evil/", "aud": "gleepost"}),
                Err("jwt_wrong_issuer"),
            ),
            (
                serde_json::json!({"sub": "9", "exp": exp, "iss": iss, "aud": "other"}),
                Err("jwt_wrong_audience"),
            ),
            (
                serde_json::json!({"sub": "9", "exp": exp, "aud": "gleepost"}),
                Err("jwt_missing_claim"),
            ),
            (
                serde_json::json!({"sub": "9", "exp": exp, "iss": iss}),
                Err("jwt_missing_claim"),
            ),
        ];
        for (claims, want) in cases {
            let got = check(
                &auth,
                &signed(claims.clone(), Header::new(Algorithm::HS256)),
            );
            assert_eq!(
                got.map(|(u, _, _)| u),
                want.map_err(AuthError::Invalid),
                "{claims}"
            );
        }
        // Minted tokens carry the configured claims.
        let token = Minter::new(b"k", rules)
            .mint(9, Duration::from_secs(60))
            .unwrap();
        assert!(check(&auth, &token).is_ok());
        // Without rules, iss and aud are not looked at.
        let claims = serde_json::json!({"sub": "9", "exp": exp, "iss": "any", "aud": "any"});
        let token = signed(claims, Header::new(Algorithm::HS256));
        assert!(check(&JwtAuth::new(b"k"), &token).is_ok());
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
                check(&auth, &token).unwrap_err(),
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
            check(&auth, &token).unwrap_err(),
            AuthError::Invalid("jwt_not_yet_valid")
        );
        let within_leeway = serde_json::json!({"sub": "9", "exp": now() + 600, "nbf": now() + 5});
        assert!(check(&auth, &signed(within_leeway, Header::new(Algorithm::HS256))).is_ok());
        let mut header = Header::new(Algorithm::HS256);
        header.crit = Some(vec!["exp".into()]);
        let token = signed(serde_json::json!({"sub": "9", "exp": now() + 60}), header);
        assert_eq!(
            check(&auth, &token).unwrap_err(),
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
        let (_, expires, _) = check(&auth, &token).unwrap();
        assert_eq!(expires, UNIX_EPOCH + Duration::from_secs(exp + LEEWAY_SECS));
    }

    #[test]
    fn an_exp_beyond_the_clock_is_malformed_not_a_panic() {
        // Found by the `auth` fuzz target: a validly signed token with `exp` ≥ 2^63 overflowed
        // the SystemTime addition (a panic in the request).
        let auth = JwtAuth::new(b"k");
        for exp in [9_233_272_036_854_775_807u64, 1 << 63, u64::MAX] {
            let token = signed(
                serde_json::json!({ "sub": "9", "exp": exp }),
                Header::new(Algorithm::HS256),
            );
            assert_eq!(
                check(&auth, &token).unwrap_err(),
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
