//! Unit tests of JWT verification and minting: keys and algorithms, claim rules, time claims,
//! user ids.

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

const RSA_PUBLIC: &[u8] = include_bytes!("../../../../../tests/fixtures/jwt/rsa-a.pub.pem");

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
