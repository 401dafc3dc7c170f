//! The kernel's table of TCP sockets (`/proc/net/tcp` and `/proc/net/tcp6`): every socket of
//! this network namespace, the gateway's included, so tests see what it listens on and which
//! side closed a connection; and (from `/proc/<pid>`) which local ports one process's
//! connections to a remote port use.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use anyhow::{bail, Context, Result};

/// `st` of a listening socket.
pub const LISTEN: u8 = 0x0A;
/// `st` of an established connection.
pub const ESTABLISHED: u8 = 0x01;

/// One socket of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpSocketEntry {
    /// Its local address.
    pub local: SocketAddr,
    /// The peer's address (unspecified for a listening socket).
    pub remote: SocketAddr,
    /// The kernel's state number (`include/net/tcp_states.h`): [`ESTABLISHED`], [`LISTEN`], …
    pub state: u8,
}

/// Every TCP socket of this network namespace.
pub fn tcp_sockets() -> Result<Vec<TcpSocketEntry>> {
    let mut found = Vec::new();
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let table = std::fs::read_to_string(file).with_context(|| format!("reading {file}"))?;
        for line in table.lines().skip(1) {
            // sl local_address rem_address st …
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(remote), Some(state)) =
                (fields.get(1), fields.get(2), fields.get(3))
            else {
                continue;
            };
            found.push(TcpSocketEntry {
                local: address(local).with_context(|| format!("{local:?} in {file}"))?,
                remote: address(remote).with_context(|| format!("{remote:?} in {file}"))?,
                state: u8::from_str_radix(state, 16)
                    .with_context(|| format!("state {state:?} in {file}"))?,
            });
        }
    }
    Ok(found)
}

/// The local addresses with a TCP socket listening on `port`.
pub fn listening_addresses(port: u16) -> Result<Vec<IpAddr>> {
    Ok(tcp_sockets()?
        .into_iter()
        .filter(|s| s.state == LISTEN && s.local.port() == port)
        .map(|s| s.local.ip())
        .collect())
}

/// The state of the socket at `local` connected to `remote`; `None` once there is none.
pub fn tcp_state(local: SocketAddr, remote: SocketAddr) -> Result<Option<u8>> {
    Ok(tcp_sockets()?
        .into_iter()
        .find(|s| s.local == local && s.remote == remote)
        .map(|s| s.state))
}

/// `HEXADDR:HEXPORT`; the address is in the kernel's byte order: 32-bit words, each
/// little-endian.
fn address(field: &str) -> Result<SocketAddr> {
    let (ip, port) = field.split_once(':').context("no port")?;
    let port = u16::from_str_radix(port, 16)?;
    let words: Vec<u32> = (0..ip.len() / 8)
        .map(|i| u32::from_str_radix(&ip[i * 8..i * 8 + 8], 16).map(u32::swap_bytes))
        .collect::<Result<_, _>>()?;
    let ip = match words.as_slice() {
        [a] => IpAddr::V4(Ipv4Addr::from(*a)),
        [a, b, c, d] => {
            let mut bytes = [0u8; 16];
            for (chunk, word) in bytes.chunks_exact_mut(4).zip([a, b, c, d]) {
                chunk.copy_from_slice(&word.to_be_bytes());
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => bail!("unexpected address length"),
    };
    Ok(SocketAddr::new(ip, port))
}

/// Local TCP ports of the sockets process `pid` holds open to `remote_port` (from `/proc`).
pub fn tcp_ports_to(pid: u32, remote_port: u16) -> Result<HashSet<u16>> {
    let mut inodes = HashSet::new();
    let fd_dir = format!("/proc/{pid}/fd");
    for entry in std::fs::read_dir(&fd_dir).with_context(|| format!("reading {fd_dir}"))? {
        let Ok(target) = std::fs::read_link(entry?.path()) else {
            continue; // closed meanwhile
        };
        let target = target.to_string_lossy();
        if let Some(inode) = target
            .strip_prefix("socket:[")
            .and_then(|s| s.strip_suffix(']'))
        {
            inodes.insert(inode.to_string());
        }
    }
    let mut ports = HashSet::new();
    for table in ["tcp", "tcp6"] {
        let path = format!("/proc/{pid}/net/{table}");
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        for line in text.lines().skip(1) {
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() < 10 || !inodes.contains(cols[9]) {
                continue;
            }
            let port = |addr: &str| {
                addr.rsplit_once(':')
                    .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
            };
            if port(cols[2]) == Some(remote_port) {
                if let Some(local) = port(cols[1]) {
                    ports.insert(local);
                }
            }
        }
    }
    Ok(ports)
}
