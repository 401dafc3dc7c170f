//! Operating-system helpers: file-descriptor limit, /proc readers (RSS, CPU time) and socket
//! options.

use std::time::Instant;

use anyhow::{Context, Result};

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the new soft limit.
pub fn raise_nofile_limit() -> Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error()).context("getrlimit(RLIMIT_NOFILE)");
    }
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: setrlimit only reads the struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(std::io::Error::last_os_error()).context("setrlimit(RLIMIT_NOFILE)");
        }
    }
    Ok(lim.rlim_cur)
}

/// The local ephemeral port range (`/proc/sys/net/ipv4/ip_local_port_range`), if readable.
pub fn local_port_range() -> Option<(u32, u32)> {
    let s = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut it = s.split_whitespace().map(str::parse::<u32>);
    Some((it.next()?.ok()?, it.next()?.ok()?))
}

/// Resident set size of `pid` in KiB (`VmRSS` of `/proc/<pid>/status`).
pub fn rss_kib(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let s = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no VmRSS in {path}"))
}

/// Sum of the RSS (KiB) of all `pids`; `None` without pids.
pub fn total_rss_kib(pids: &[u32]) -> Result<Option<u64>> {
    if pids.is_empty() {
        return Ok(None);
    }
    let mut sum = 0;
    for &pid in pids {
        sum += rss_kib(pid)?;
    }
    Ok(Some(sum))
}

/// CPU time (user + system) of a process in seconds, from `/proc/<pid>/stat`
/// (`/proc/self/stat` for `None`).
pub fn cpu_seconds(pid: Option<u32>) -> Result<f64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_string(),
    };
    let s = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // Fields after the command name (which may contain spaces) start at field 3 (state);
    // utime and stime are fields 14 and 15.
    let after = s
        .rfind(')')
        .map(|i| &s[i + 1..])
        .with_context(|| format!("malformed {path}"))?;
    let mut fields = after.split_whitespace().skip(11);
    let mut next = || -> Result<u64> {
        fields
            .next()
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("malformed {path}"))
    };
    let ticks = next()? + next()?;
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as f64 } else { 100.0 };
    Ok(ticks as f64 / hz)
}

/// Measures CPU share (percent of one core) of this process and of server pids over a span of
/// wall-clock time.
#[derive(Debug, Clone)]
pub struct CpuMeter {
    start: Instant,
    own: f64,
    servers: Vec<(u32, f64)>,
}

/// CPU shares measured by a [`CpuMeter`].
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct CpuShare {
    /// Wall-clock seconds measured.
    pub wall_seconds: f64,
    /// Load generator CPU, percent of one core.
    pub loadgen_cpu_percent: f64,
    /// Load generator CPU seconds spent.
    pub loadgen_cpu_seconds: f64,
    /// Sum over server pids, percent of one core (`None` without `--server-pid`).
    pub server_cpu_percent: Option<f64>,
}

impl CpuMeter {
    /// Starts measuring now.
    pub fn start(server_pids: &[u32]) -> Self {
        CpuMeter {
            start: Instant::now(),
            own: cpu_seconds(None).unwrap_or(0.0),
            servers: server_pids
                .iter()
                .map(|&p| (p, cpu_seconds(Some(p)).unwrap_or(0.0)))
                .collect(),
        }
    }

    /// CPU shares since [`CpuMeter::start`].
    pub fn finish(&self) -> CpuShare {
        let wall = self.start.elapsed().as_secs_f64().max(1e-9);
        let own = cpu_seconds(None).unwrap_or(self.own) - self.own;
        let server = (!self.servers.is_empty()).then(|| {
            self.servers
                .iter()
                .map(|&(p, s)| cpu_seconds(Some(p)).unwrap_or(s) - s)
                .sum::<f64>()
        });
        CpuShare {
            wall_seconds: round(wall, 3),
            loadgen_cpu_percent: round(own / wall * 100.0, 2),
            loadgen_cpu_seconds: round(own, 3),
            server_cpu_percent: server.map(|s| round(s / wall * 100.0, 2)),
        }
    }
}

/// Rounds to `digits` decimals (for readable JSON).
pub fn round(v: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (v * f).round() / f
}

/// Sets `IP_BIND_ADDRESS_NO_PORT` so binding a source IP does not reserve a port before
/// `connect` (the port is then chosen per destination, allowing more connections).
pub fn set_bind_no_port(fd: std::os::fd::RawFd) {
    let one: libc::c_int = 1;
    // SAFETY: fd is a valid socket owned by the caller; the option value is a live c_int.
    // Failure only reduces the number of usable ports, so the result is ignored.
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_proc_entries() {
        assert!(rss_kib(std::process::id()).unwrap() > 0);
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_add(i * i);
        }
        std::hint::black_box(x);
        assert!(cpu_seconds(None).unwrap() >= 0.0);
        assert!(raise_nofile_limit().unwrap() > 0);
        assert_eq!(total_rss_kib(&[]).unwrap(), None);
    }
}
