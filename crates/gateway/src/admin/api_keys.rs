//! The admin API's bearer keys: `GATEWAY_API_KEY` holds one or more comma-separated keys, so a
//! new key can be rolled out before the old one is retired.
//!
//! Only SHA-256 digests of the keys are kept. A presented key is hashed and compared with every
//! configured digest in constant time, without stopping at a match: the time taken depends on
//! the presented key's length and the number of keys, never on a configured key's bytes or
//! length.

use http::{header, HeaderMap};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The accepted keys, as digests.
#[derive(Clone)]
pub(crate) struct ApiKeys {
    digests: Vec<[u8; 32]>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKeys({} keys)", self.digests.len())
    }
}

fn digest(key: &[u8]) -> [u8; 32] {
    Sha256::digest(key).into()
}

impl ApiKeys {
    /// The keys of a comma-separated list (spaces around each key and empty entries ignored);
    /// `None` when it holds no key.
    pub(crate) fn parse(list: &str) -> Option<ApiKeys> {
        let digests: Vec<[u8; 32]> = list
            .split(',')
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(|k| digest(k.as_bytes()))
            .collect();
        (!digests.is_empty()).then_some(ApiKeys { digests })
    }

    /// How many keys are accepted.
    pub(crate) fn len(&self) -> usize {
        self.digests.len()
    }

    /// True when `presented` is one of the keys.
    pub(crate) fn accepts(&self, presented: &str) -> bool {
        let presented = digest(presented.as_bytes());
        let mut any = subtle::Choice::from(0);
        for key in &self.digests {
            any |= key.ct_eq(&presented);
        }
        any.into()
    }

    /// True when the request's `Authorization: Bearer <key>` holds one of the keys.
    pub(crate) fn authorizes(&self, headers: &HeaderMap) -> bool {
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|key| self.accepts(key.trim()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_key_and_only_those() {
        let keys = ApiKeys::parse(" old-key, new-key ,,").unwrap();
        assert_eq!(keys.len(), 2);
        assert!(keys.accepts("old-key"));
        assert!(keys.accepts("new-key"));
        for wrong in [
            "",
            "old",
            "old-key ",
            "new-keyx",
            "old-key,new-key",
            "third",
        ] {
            assert!(!keys.accepts(wrong), "{wrong:?}");
        }
        assert!(ApiKeys::parse(" , ").is_none());
        assert!(ApiKeys::parse("").is_none());
        assert_eq!(format!("{keys:?}"), "ApiKeys(2 keys)");
    }

    #[test]
    fn the_bearer_header() {
        let keys = ApiKeys::parse("k1,k2").unwrap();
        let with = |value: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, value.parse().unwrap());
            h
        };
        assert!(keys.authorizes(&with("Bearer k2")));
        assert!(!keys.authorizes(&with("Basic k2")));
        assert!(!keys.authorizes(&with("Bearer k3")));
        assert!(!keys.authorizes(&HeaderMap::new()));
    }
}
