//! Bounded waiting: [`eventually`], the one polling loop of the harness and its tests.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::Result;

/// Run `check` until it succeeds, at most `limit` (bounded polling, not a timing assertion).
/// On timeout the last error is returned, with `what` as context.
///
/// A wait that must also end at once when something goes wrong (an answer that may never
/// come while waiting) returns `Ok(Err(…))` for that: the outer error means "not yet", the
/// inner one is final (`eventually(…).await??`).
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        match check().await {
            Ok(value) => return Ok(value),
            Err(e) if Instant::now() >= deadline => {
                return Err(e.context(format!("{what}: not reached within {limit:?}")))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(25)).await,
        }
    }
}
