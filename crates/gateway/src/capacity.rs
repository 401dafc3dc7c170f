//! The node's capacity from its process limits. At start the soft `RLIMIT_NOFILE` is raised to
//! the hard limit (container runtimes often start processes at a soft 1024, which would cap a
//! node near 1,000 connections), and when `--max-connections` is not set the cap is derived
//! from the file limit and the cgroup memory limit, so overload answers 503 instead of failing
//! accepts or ending in an OOM kill.

/// File descriptors kept for listeners, Redis, admin connections and accepts in flight.
pub(crate) const RESERVED_FDS: u64 = 256;
/// Memory budgeted per connection when deriving the cap: ~10× an idle connection's RSS
/// (≈ 1.9 KiB, docs/benchmarks.md), room for queued events of busy ones.
pub(crate) const MEMORY_PER_CONNECTION: u64 = 32 * 1024;
/// Share of the memory limit given to connections (the rest: runtime, buffers, history reads).
const MEMORY_SHARE_PERCENT: u64 = 80;

/// Raise the soft file limit to the hard limit; returns the soft limit now in force.
pub(crate) fn raise_open_files() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(e) => {
            tracing::warn!(error = %e, "could not raise RLIMIT_NOFILE");
            rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(0, |(soft, _)| soft)
        }
    }
}

/// The cgroup (v2, else v1) memory limit of this process, if it has one.
pub(crate) fn memory_limit() -> Option<u64> {
    let read = |path: &str| std::fs::read_to_string(path).ok();
    read("/sys/fs/cgroup/memory.max")
        .or_else(|| read("/sys/fs/cgroup/memory/memory.limit_in_bytes"))
        .and_then(|text| parse_memory_limit(&text))
}

/// `max`, an unset v1 limit (a huge number) or garbage → `None`.
fn parse_memory_limit(text: &str) -> Option<u64> {
    let limit: u64 = text.trim().parse().ok()?;
    // cgroup v1 reports "no limit" as a page-rounded i64::MAX.
    (limit < 1 << 60).then_some(limit)
}

/// The connection cap when none is configured: what the file limit and the memory limit allow.
pub(crate) fn derived_max_connections(open_files: u64, memory: Option<u64>) -> usize {
    let by_files = open_files.saturating_sub(RESERVED_FDS).max(1);
    let by_memory = memory.map_or(u64::MAX, |m| {
        (m / 100 * MEMORY_SHARE_PERCENT / MEMORY_PER_CONNECTION).max(1)
    });
    usize::try_from(by_files.min(by_memory)).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_limits_parse() {
        assert_eq!(parse_memory_limit("max\n"), None);
        assert_eq!(parse_memory_limit("536870912\n"), Some(536_870_912));
        assert_eq!(parse_memory_limit("9223372036854771712\n"), None);
        assert_eq!(parse_memory_limit(""), None);
    }

    #[test]
    fn the_tighter_limit_wins() {
        assert_eq!(derived_max_connections(1024, None), 768);
        assert_eq!(derived_max_connections(1_048_576, None), 1_048_320);
        // 512 MiB: 80 % / 32 KiB.
        assert_eq!(derived_max_connections(1_048_576, Some(512 << 20)), 13_107);
        assert_eq!(derived_max_connections(10, Some(1)), 1);
    }
}
