//! Target URLs (`ws://`, `http://`, `redis://`) and the loopback-only rule.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use anyhow::{bail, Context, Result};

/// A parsed endpoint on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Socket address to connect to (always loopback).
    pub addr: SocketAddr,
    /// `Host` header value (`host[:port]` as written in the URL).
    pub host_header: String,
    /// Path and query (`/ws?x=1`); `/` when absent.
    pub path: String,
    /// `user:password` part of the authority, if any (percent-decoding is not applied).
    pub userinfo: Option<String>,
}

/// Parses `scheme://[userinfo@]host[:port][/path][?query]` for one of the accepted schemes and
/// refuses any host that is not loopback (127.0.0.0/8, `localhost`, `::1`).
pub fn parse(url: &str, scheme: &str, default_port: u16) -> Result<Target> {
    let prefix = format!("{scheme}://");
    let Some(rest) = url.strip_prefix(&prefix) else {
        bail!("URL {url:?} must start with {prefix}");
    };
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], rest[i..].to_string()),
        Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
        None => (rest, "/".to_string()),
    };
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u.to_string()), h),
        None => (None, authority),
    };
    let (host, port) = split_host_port(hostport, default_port)
        .with_context(|| format!("invalid host:port in URL {url:?}"))?;
    let ip = loopback_ip(host).with_context(|| format!("refusing URL {url:?}"))?;
    Ok(Target {
        addr: SocketAddr::new(ip, port),
        host_header: hostport.to_string(),
        path,
        userinfo,
    })
}

fn split_host_port(hostport: &str, default_port: u16) -> Result<(&str, u16)> {
    if let Some(v6) = hostport.strip_prefix('[') {
        let Some((host, after)) = v6.split_once(']') else {
            bail!("unterminated [ in {hostport:?}");
        };
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().context("invalid port")?,
            None if after.is_empty() => default_port,
            None => bail!("garbage after ] in {hostport:?}"),
        };
        return Ok((host, port));
    }
    match hostport.rsplit_once(':') {
        Some((h, p)) => Ok((h, p.parse().context("invalid port")?)),
        None => Ok((hostport, default_port)),
    }
}

/// Resolves a host to a loopback IP, or explains why it is refused.
pub fn loopback_ip(host: &str) -> Result<IpAddr> {
    if host.eq_ignore_ascii_case("localhost") {
        return Ok(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    let ip: IpAddr = host.parse().map_err(|_| {
        anyhow::anyhow!(
            "host {host:?} is not an IP literal or localhost; this load generator only targets \
             loopback (127.0.0.0/8, localhost, ::1)"
        )
    })?;
    ensure_loopback(ip)?;
    Ok(ip)
}

/// Fails unless `ip` is a loopback address.
pub fn ensure_loopback(ip: IpAddr) -> Result<()> {
    if !ip.is_loopback() {
        bail!(
            "{ip} is not a loopback address; this load generator only targets loopback \
             (127.0.0.0/8, localhost, ::1)"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ws_urls() {
        let t = parse("ws://127.0.0.1:8080/ws", "ws", 80).unwrap();
        assert_eq!(t.addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(t.path, "/ws");
        assert_eq!(t.host_header, "127.0.0.1:8080");
        let t = parse("ws://localhost", "ws", 80).unwrap();
        assert_eq!(t.addr, "127.0.0.1:80".parse().unwrap());
        assert_eq!(t.path, "/");
        let t = parse("ws://[::1]:9/ws?x=1", "ws", 80).unwrap();
        assert_eq!(t.addr, "[::1]:9".parse().unwrap());
        assert_eq!(t.path, "/ws?x=1");
        let t = parse("ws://127.0.0.2:1?a=b", "ws", 80).unwrap();
        assert_eq!(t.path, "/?a=b");
        let t = parse("redis://:secret@127.0.0.1:6390/0", "redis", 6379).unwrap();
        assert_eq!(t.userinfo.as_deref(), Some(":secret"));
        assert_eq!(t.addr.port(), 6390);
    }

    #[test]
    fn refuses_non_loopback() {
        for url in [
            "ws://10.0.0.1:8080/ws",
            "ws://192.168.1.2/ws",
            "ws://example.com/ws",
            "ws://8.8.8.8/",
            "ws://[2001:db8::1]:80/",
        ] {
            let err = parse(url, "ws", 80).unwrap_err();
            assert!(format!("{err:#}").contains("loopback"), "{url}: {err:#}");
        }
        assert!(parse("wss://127.0.0.1/", "ws", 80).is_err());
        assert!(parse("http://127.0.0.1/", "ws", 80).is_err());
    }
}
