//! Public keys that verify client JWTs: one PEM file (`--jwt-public-key-file`) or the keys of a
//! JWKS document (`--jwks-url`).
//!
//! Each key carries the one algorithm it verifies, decided by the key (RSA → `RS256`, EC P-256 →
//! `ES256`, Ed25519 → `EdDSA`; a JWK's `alg`, when present, must be that one), never by a token's
//! header. Keys are checked when loaded: RSA moduli of at least 2048 bits, points on the curve,
//! 32-byte Ed25519 keys; symmetric (`oct`) and encryption-only JWKs are skipped.

use jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use rsa::pkcs8::spki::{ObjectIdentifier, SubjectPublicKeyInfoRef};
use rsa::pkcs8::DecodePublicKey;
use rsa::traits::PublicKeyParts;
use rsa::{BigUint, RsaPublicKey};

/// Smallest accepted RSA modulus, in bits.
const MIN_RSA_BITS: usize = 2048;
/// Most keys taken from one JWKS document (the rest are ignored, with a warning).
pub(crate) const MAX_JWKS_KEYS: usize = 64;

const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const PRIME256V1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");

/// A verification key and the only algorithm it accepts.
#[derive(Clone)]
pub(crate) struct PublicKey {
    /// The algorithm tokens verified with this key must name.
    pub(crate) alg: Algorithm,
    /// The key id (`kid`) it is published under, for JWKS keys.
    pub(crate) kid: Option<String>,
    /// The key material.
    pub(crate) key: DecodingKey,
}

/// Why a key was not loaded.
#[derive(Debug, thiserror::Error)]
pub(crate) enum KeyError {
    /// Not a PEM `PUBLIC KEY` (SubjectPublicKeyInfo) block.
    #[error("not a PEM public key (expected -----BEGIN PUBLIC KEY-----): {0}")]
    Pem(String),
    /// A key type or curve other than RSA, EC P-256 and Ed25519.
    #[error("unsupported key type: {0}")]
    Unsupported(String),
    /// The key material is not a valid key of its type.
    #[error("invalid key: {0}")]
    Invalid(String),
    /// The JWK is not for signatures (`use`/`key_ops`) or names an algorithm its type cannot do.
    #[error("not a signature verification key: {0}")]
    NotForVerification(String),
}

impl PublicKey {
    /// The key of a PEM `PUBLIC KEY` block (SubjectPublicKeyInfo, as `openssl pkey -pubout`
    /// writes it): RSA, EC P-256 or Ed25519.
    pub(crate) fn from_pem(pem: &[u8]) -> Result<PublicKey, KeyError> {
        let (label, der) =
            rsa::pkcs8::der::pem::decode_vec(pem).map_err(|e| KeyError::Pem(e.to_string()))?;
        if label != "PUBLIC KEY" {
            return Err(KeyError::Pem(format!("the block is a {label:?}")));
        }
        let spki = SubjectPublicKeyInfoRef::try_from(der.as_slice())
            .map_err(|e| KeyError::Invalid(e.to_string()))?;
        let (oid, params) = spki
            .algorithm
            .oids()
            .map_err(|e| KeyError::Invalid(e.to_string()))?;
        let bits = spki
            .subject_public_key
            .as_bytes()
            .ok_or_else(|| KeyError::Invalid("public key bit string not byte-aligned".into()))?;
        match (oid, params) {
            (RSA_ENCRYPTION, _) => {
                let key = RsaPublicKey::from_public_key_der(&der)
                    .map_err(|e| KeyError::Invalid(e.to_string()))?;
                rsa_key(&key, None)
            }
            (EC_PUBLIC_KEY, Some(PRIME256V1)) => checked(
                Algorithm::ES256,
                None,
                DecodingKey::from_ec_der(bits),
                "EC P-256 point",
            ),
            (EC_PUBLIC_KEY, curve) => Err(KeyError::Unsupported(format!(
                "EC curve {curve:?} (only P-256 / prime256v1)"
            ))),
            (ED25519, _) => ed25519_key(bits, None),
            (other, _) => Err(KeyError::Unsupported(format!("algorithm {other}"))),
        }
    }

    /// The verification key of a JWK.
    pub(crate) fn from_jwk(jwk: &Jwk) -> Result<PublicKey, KeyError> {
        let common = &jwk.common;
        if common
            .public_key_use
            .as_ref()
            .is_some_and(|u| *u != PublicKeyUse::Signature)
        {
            return Err(KeyError::NotForVerification(
                "\"use\" is not \"sig\"".into(),
            ));
        }
        if let Some(ops) = &common.key_operations {
            let verify = jsonwebtoken::jwk::KeyOperations::Verify;
            if !ops.contains(&verify) {
                return Err(KeyError::NotForVerification(
                    "\"key_ops\" lacks \"verify\"".into(),
                ));
            }
        }
        let kid = common.key_id.clone();
        let key = match &jwk.algorithm {
            AlgorithmParameters::RSA(p) => {
                let n = b64(&p.n, "n")?;
                let e = b64(&p.e, "e")?;
                let key = RsaPublicKey::new(BigUint::from_bytes_be(&n), BigUint::from_bytes_be(&e))
                    .map_err(|e| KeyError::Invalid(e.to_string()))?;
                rsa_key(&key, kid)?
            }
            AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => {
                let (x, y) = (b64(&p.x, "x")?, b64(&p.y, "y")?);
                if x.len() != 32 || y.len() != 32 {
                    return Err(KeyError::Invalid("P-256 coordinates are 32 bytes".into()));
                }
                let point = [&[0x04][..], &x, &y].concat();
                checked(
                    Algorithm::ES256,
                    kid,
                    DecodingKey::from_ec_der(&point),
                    "EC P-256 point",
                )?
            }
            AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
                ed25519_key(&b64(&p.x, "x")?, kid)?
            }
            AlgorithmParameters::EllipticCurve(p) => {
                return Err(KeyError::Unsupported(format!("EC curve {:?}", p.curve)))
            }
            AlgorithmParameters::OctetKeyPair(p) => {
                return Err(KeyError::Unsupported(format!("OKP curve {:?}", p.curve)))
            }
            AlgorithmParameters::OctetKey(_) => {
                return Err(KeyError::Unsupported("symmetric (oct) key".into()))
            }
            _ => return Err(KeyError::Unsupported("unknown key type".into())),
        };
        match common.key_algorithm {
            None => Ok(key),
            Some(alg) if key_algorithm(alg) == Some(key.alg) => Ok(key),
            Some(alg) => Err(KeyError::NotForVerification(format!(
                "\"alg\" {alg:?} is not {:?}, the algorithm of its key type",
                key.alg
            ))),
        }
    }
}

/// The JWK `alg` values the gateway verifies, as token algorithms.
fn key_algorithm(alg: KeyAlgorithm) -> Option<Algorithm> {
    match alg {
        KeyAlgorithm::RS256 => Some(Algorithm::RS256),
        KeyAlgorithm::ES256 => Some(Algorithm::ES256),
        KeyAlgorithm::EdDSA => Some(Algorithm::EdDSA),
        _ => None,
    }
}

fn b64(value: &str, what: &str) -> Result<Vec<u8>, KeyError> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(value.trim_end_matches('='))
        .map_err(|e| KeyError::Invalid(format!("{what}: {e}")))
}

fn rsa_key(key: &RsaPublicKey, kid: Option<String>) -> Result<PublicKey, KeyError> {
    let bits = key.n().bits();
    if bits < MIN_RSA_BITS {
        return Err(KeyError::Invalid(format!(
            "RSA modulus of {bits} bits (at least {MIN_RSA_BITS})"
        )));
    }
    let key = DecodingKey::from_rsa_raw_components(&key.n().to_bytes_be(), &key.e().to_bytes_be());
    Ok(PublicKey {
        alg: Algorithm::RS256,
        kid,
        key,
    })
}

fn ed25519_key(raw: &[u8], kid: Option<String>) -> Result<PublicKey, KeyError> {
    // Checked here: the verifier slices the first 32 bytes (a shorter key would panic there).
    if raw.len() != 32 {
        return Err(KeyError::Invalid(format!(
            "Ed25519 key of {} bytes (32)",
            raw.len()
        )));
    }
    checked(
        Algorithm::EdDSA,
        kid,
        DecodingKey::from_ed_der(raw),
        "Ed25519 point",
    )
}

/// The key if the crypto backend accepts it for `alg` (it decodes EC and Ed25519 points).
fn checked(
    alg: Algorithm,
    kid: Option<String>,
    key: DecodingKey,
    what: &str,
) -> Result<PublicKey, KeyError> {
    (DEFAULT_PROVIDER.verifier_factory)(&alg, &key)
        .map_err(|e| KeyError::Invalid(format!("{what}: {e}")))?;
    Ok(PublicKey { alg, kid, key })
}

/// The usable keys of a JWKS document (`{"keys":[…]}`), and a description of each key skipped.
pub(crate) fn parse_jwks(body: &[u8]) -> Result<(Vec<PublicKey>, Vec<String>), String> {
    #[derive(serde::Deserialize)]
    struct Document {
        keys: Vec<serde_json::Value>,
    }
    let doc: Document =
        serde_json::from_slice(body).map_err(|e| format!("not a JWKS document: {e}"))?;
    let mut keys = Vec::new();
    let mut skipped = Vec::new();
    for (i, value) in doc.keys.into_iter().enumerate() {
        let kid = value.get("kid").and_then(|k| k.as_str()).map(str::to_owned);
        let name = || format!("key {i} (kid {kid:?})");
        if keys.len() == MAX_JWKS_KEYS {
            skipped.push(format!("{}: more than {MAX_JWKS_KEYS} keys", name()));
            continue;
        }
        let loaded = serde_json::from_value::<Jwk>(value)
            .map_err(|e| KeyError::Invalid(e.to_string()))
            .and_then(|jwk| PublicKey::from_jwk(&jwk));
        match loaded {
            Ok(key) => keys.push(key),
            Err(e) => skipped.push(format!("{}: {e}", name())),
        }
    }
    Ok((keys, skipped))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwk(value: serde_json::Value) -> Result<PublicKey, KeyError> {
        PublicKey::from_jwk(&serde_json::from_value(value).unwrap())
    }

    #[test]
    fn short_or_bad_keys_are_refused_not_a_panic() {
        // An OKP key shorter than 32 bytes would panic in the verifier if it got there.
        assert!(jwk(serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": "AAAA"})).is_err());
        assert!(
            jwk(serde_json::json!({"kty": "EC", "crv": "P-256", "x": "AAAA", "y": "AAAA"}))
                .is_err()
        );
        let zeros = "A".repeat(43);
        assert!(
            jwk(serde_json::json!({"kty": "EC", "crv": "P-256", "x": zeros, "y": zeros})).is_err()
        );
        // A 512-bit modulus.
        let n = "A".repeat(85) + "Q";
        assert!(matches!(
            jwk(serde_json::json!({"kty": "RSA", "n": n, "e": "AQAB"})),
            Err(KeyError::Invalid(_))
        ));
        assert!(matches!(
            jwk(serde_json::json!({"kty": "oct", "k": "c2VjcmV0"})),
            Err(KeyError::Unsupported(_))
        ));
    }

    #[test]
    fn a_document_with_bad_keys_keeps_the_good_ones() {
        let body = br#"{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"h"},{"kty":"weird"},
            {"kty":"OKP","crv":"Ed25519","kid":"ed","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#;
        let (keys, skipped) = parse_jwks(body).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].kid.as_deref(), Some("ed"));
        assert_eq!(keys[0].alg, Algorithm::EdDSA);
        assert_eq!(skipped.len(), 2, "{skipped:?}");
        assert!(parse_jwks(b"[]").is_err());
    }

    #[test]
    fn a_jwk_alg_must_be_its_key_types() {
        let x = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";
        assert!(
            jwk(serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": x, "alg": "EdDSA"}))
                .is_ok()
        );
        assert!(matches!(
            jwk(serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": x, "alg": "HS256"})),
            Err(KeyError::NotForVerification(_))
        ));
        assert!(matches!(
            jwk(serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": x, "use": "enc"})),
            Err(KeyError::NotForVerification(_))
        ));
    }
}
