//! HS256 access tokens for the benchmark users.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use jsonwebtoken::{encode, EncodingKey, Header};
use serde::Serialize;

#[derive(Serialize)]
struct Claims {
    sub: String,
    exp: u64,
}

/// Mints one token per user id `first .. first + count`, valid for `ttl`.
pub fn mint_tokens(secret: &str, first: u64, count: u32, ttl: Duration) -> Result<Vec<String>> {
    let key = EncodingKey::from_secret(secret.as_bytes());
    let header = Header::default(); // HS256
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("system clock before 1970")?
        .as_secs()
        + ttl.as_secs().max(1);
    (0..u64::from(count))
        .map(|i| {
            let claims = Claims {
                sub: (first + i).to_string(),
                exp,
            };
            encode(&header, &claims, &key).context("signing JWT")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{decode, Algorithm, DecodingKey, Validation};

    #[derive(serde::Deserialize)]
    struct Back {
        sub: String,
        exp: u64,
    }

    #[test]
    fn tokens_verify_with_the_secret() {
        let tokens = mint_tokens("s3cret", 9, 2, Duration::from_secs(60)).unwrap();
        assert_eq!(tokens.len(), 2);
        let v = Validation::new(Algorithm::HS256);
        let d = decode::<Back>(&tokens[1], &DecodingKey::from_secret(b"s3cret"), &v).unwrap();
        assert_eq!(d.claims.sub, "10");
        assert!(d.claims.exp > 0);
        assert!(decode::<Back>(&tokens[0], &DecodingKey::from_secret(b"other"), &v).is_err());
    }
}
