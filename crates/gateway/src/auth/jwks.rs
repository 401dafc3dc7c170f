//! The JWKS cache (`--jwks-url`): keys fetched at start-up in the background, refreshed every
//! `--jwks-refresh`, and at once when a token names a `kid` the cache does not hold — at most
//! once per [`MIN_KID_REFRESH`], so tokens with made-up kids cannot make the gateway hammer the
//! JWKS server. A failed fetch keeps the cached keys (counted, logged, retried within
//! [`RETRY_AFTER_FAILURE`]); until a first fetch succeeds, tokens that need a JWKS key get 503.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::Algorithm;
use prometheus::{IntCounter, IntGauge};

use super::fetch::JwksClient;
use super::keys::{parse_jwks, PublicKey};

/// Least time between two fetches triggered by unknown `kid`s.
pub(crate) const MIN_KID_REFRESH: Duration = Duration::from_secs(10);
/// Longest wait before the next periodic fetch after a failed one.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(30);
/// Deadline of one fetch (connect, TLS handshake, request, whole body).
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Skipped keys of one fetch logged one by one; beyond, a count.
const SKIPPED_LOGGED: usize = 8;

/// What the cache reports about itself.
#[derive(Clone)]
pub(crate) struct JwksMetrics {
    /// Fetches that failed (unreachable, timeout, non-200, not a JWKS document).
    pub(crate) failures: IntCounter,
    /// Fetches that replaced the key set.
    pub(crate) refreshes: IntCounter,
    /// Keys in the cache.
    pub(crate) keys: IntGauge,
    /// Unix time of the last successful fetch (0: none yet).
    pub(crate) last_success: IntGauge,
}

/// A key looked up by `kid`.
pub(crate) enum Lookup {
    /// The cache holds it.
    Found(PublicKey),
    /// Keys are loaded, this one is not among them (even after a refresh, when one was allowed).
    Unknown,
    /// No fetch has succeeded yet.
    NotLoaded,
}

/// The cached keys of one JWKS URL.
pub(crate) struct Jwks {
    client: JwksClient,
    keys: RwLock<Arc<Vec<PublicKey>>>,
    loaded: AtomicBool,
    /// One fetch at a time; callers that waited for one use its result.
    fetching: tokio::sync::Mutex<()>,
    /// Completed fetches (successful or not).
    fetches: AtomicU64,
    /// When the last fetch triggered by an unknown `kid` started.
    last_kid_refresh: Mutex<Option<Instant>>,
    metrics: JwksMetrics,
}

impl Jwks {
    /// A cache of the keys `client` fetches, now and every `refresh` (a background task).
    pub(crate) fn start(client: JwksClient, refresh: Duration, metrics: JwksMetrics) -> Arc<Jwks> {
        let jwks = Arc::new(Jwks {
            client,
            keys: RwLock::new(Arc::new(Vec::new())),
            loaded: AtomicBool::new(false),
            fetching: tokio::sync::Mutex::new(()),
            fetches: AtomicU64::new(0),
            last_kid_refresh: Mutex::new(None),
            metrics,
        });
        let task = jwks.clone();
        tokio::spawn(async move {
            loop {
                let ok = task.refresh().await;
                let wait = if ok {
                    refresh
                } else {
                    refresh.min(RETRY_AFTER_FAILURE)
                };
                tokio::time::sleep(wait).await;
            }
        });
        jwks
    }

    fn cached(&self) -> Arc<Vec<PublicKey>> {
        self.keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn find(&self, kid: &str) -> Lookup {
        if !self.loaded.load(Ordering::Acquire) {
            return Lookup::NotLoaded;
        }
        match self.cached().iter().find(|k| k.kid.as_deref() == Some(kid)) {
            Some(key) => Lookup::Found(key.clone()),
            None => Lookup::Unknown,
        }
    }

    /// The key named `kid`; an unknown one triggers a refresh first when one is allowed.
    pub(crate) async fn lookup(&self, kid: &str) -> Lookup {
        let found = self.find(kid);
        if matches!(found, Lookup::Found(_)) {
            return found;
        }
        let before = self.fetches.load(Ordering::Acquire);
        let _fetching = self.fetching.lock().await;
        if self.fetches.load(Ordering::Acquire) != before {
            // A fetch finished while this caller waited for it: its result is the answer.
            return self.find(kid);
        }
        {
            let mut last = self
                .last_kid_refresh
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if last.is_some_and(|t| t.elapsed() < MIN_KID_REFRESH) {
                return self.find(kid);
            }
            *last = Some(Instant::now());
        }
        tracing::info!(kid, "token names a key id the JWKS cache lacks: refreshing");
        self.fetch_locked().await;
        self.find(kid)
    }

    /// The one cached key of `alg` (for tokens without a `kid`), if there is exactly one.
    pub(crate) fn only_key_of(&self, alg: Algorithm) -> Lookup {
        if !self.loaded.load(Ordering::Acquire) {
            return Lookup::NotLoaded;
        }
        let keys = self.cached();
        let mut of_alg = keys.iter().filter(|k| k.alg == alg);
        match (of_alg.next(), of_alg.next()) {
            (Some(key), None) => Lookup::Found(key.clone()),
            _ => Lookup::Unknown,
        }
    }

    async fn refresh(&self) -> bool {
        let _fetching = self.fetching.lock().await;
        self.fetch_locked().await
    }

    /// Fetch and replace the keys (the caller holds `fetching`); true on success.
    async fn fetch_locked(&self) -> bool {
        let result = match self.client.fetch(FETCH_TIMEOUT).await {
            Ok(body) => parse_jwks(&body),
            Err(e) => Err(e.to_string()),
        };
        let ok = match result {
            Ok((keys, skipped)) => {
                // A document can hold any number of unusable keys: a few lines, then a count.
                for why in skipped.iter().take(SKIPPED_LOGGED) {
                    tracing::warn!(url = %self.client.url(), "JWKS key skipped: {why}");
                }
                if skipped.len() > SKIPPED_LOGGED {
                    let more = skipped.len() - SKIPPED_LOGGED;
                    tracing::warn!(url = %self.client.url(), more, "JWKS: more keys skipped");
                }
                let kids: Vec<&str> = keys.iter().filter_map(|k| k.kid.as_deref()).collect();
                if self.changed(&keys) {
                    tracing::info!(url = %self.client.url(), keys = keys.len(), ?kids, "JWKS keys loaded");
                }
                self.metrics
                    .keys
                    .set(i64::try_from(keys.len()).unwrap_or(i64::MAX));
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                self.metrics
                    .last_success
                    .set(i64::try_from(now).unwrap_or(i64::MAX));
                self.metrics.refreshes.inc();
                *self.keys.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(keys);
                self.loaded.store(true, Ordering::Release);
                true
            }
            Err(error) => {
                self.metrics.failures.inc();
                let kept = self.cached().len();
                tracing::warn!(url = %self.client.url(), %error, kept, "JWKS fetch failed; keeping the cached keys");
                false
            }
        };
        self.fetches.fetch_add(1, Ordering::AcqRel);
        ok
    }

    /// True when `keys` differ (by kid and algorithm) from the cached ones.
    fn changed(&self, keys: &[PublicKey]) -> bool {
        let ids = |keys: &[PublicKey]| -> Vec<(Option<String>, Algorithm)> {
            keys.iter().map(|k| (k.kid.clone(), k.alg)).collect()
        };
        !self.loaded.load(Ordering::Acquire) || ids(keys) != ids(&self.cached())
    }
}
