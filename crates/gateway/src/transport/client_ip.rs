//! Which address a connection comes from: the TCP peer, or, when the peer is a trusted proxy
//! (`--trusted-proxies`), the client its `X-Forwarded-For` header names.
//!
//! `X-Forwarded-For` is read from the right (the entry the nearest proxy appended) to the left:
//! entries that are themselves trusted proxies are skipped and the first other one is the client.
//! A header that cannot be parsed ends the walk at the last trusted hop, so a client can never
//! choose its address by forging the header: only what trusted proxies appended counts.

use std::net::{IpAddr, Ipv6Addr};

use http::HeaderMap;
use ipnet::IpNet;

/// The proxies whose `X-Forwarded-For` is believed.
#[derive(Clone, Debug, Default)]
pub(crate) struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// Trust these networks (empty: trust nobody, the TCP peer is the client).
    pub(crate) fn new(nets: Vec<IpNet>) -> Self {
        TrustedProxies(nets)
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The client address of a request from `peer` with these headers.
    pub(crate) fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let mut client = canonical(peer);
        if !self.trusts(client) {
            return client;
        }
        let entries: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .collect();
        for entry in entries.iter().rev() {
            let Some(hop) = parse_entry(entry) else {
                break;
            };
            client = hop;
            if !self.trusts(hop) {
                break;
            }
        }
        client
    }
}

/// One `X-Forwarded-For` entry: `1.2.3.4`, `2001:db8::1`, and the `1.2.3.4:5678` /
/// `[2001:db8::1]:5678` forms some proxies write.
fn parse_entry(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    let ip = entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()))?;
    Some(canonical(ip))
}

/// IPv4-mapped IPv6 addresses (`::ffff:1.2.3.4`) are the IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// What per-address limits count by: the IPv4 address, or the IPv6 /64 (one subscriber's
/// network: a single host can use any address of its /64).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct AddrKey(IpAddr);

impl AddrKey {
    /// The key of a client address.
    pub(crate) fn of(ip: IpAddr) -> Self {
        AddrKey(match canonical(ip) {
            IpAddr::V6(v6) => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(Ipv6Addr::from(prefix))
            }
            v4 => v4,
        })
    }
}

impl std::fmt::Display for AddrKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
            v4 => write!(f, "{v4}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    fn proxies(nets: &[&str]) -> TrustedProxies {
        TrustedProxies::new(nets.iter().map(|n| n.parse().unwrap()).collect())
    }

    #[test]
    fn untrusted_peers_are_the_client_whatever_they_claim() {
        let none = TrustedProxies::default();
        let h = headers(&["203.0.113.9"]);
        assert_eq!(none.client(ip("127.0.0.1"), &h), ip("127.0.0.1"));
        let other = proxies(&["10.0.0.0/8"]);
        assert_eq!(other.client(ip("127.0.0.1"), &h), ip("127.0.0.1"));
    }

    #[test]
    fn trusted_peer_names_the_rightmost_untrusted_hop() {
        let p = proxies(&["127.0.0.0/8", "10.0.0.0/8"]);
        let cases: &[(&[&str], &str)] = &[
            (&["203.0.113.9"], "203.0.113.9"),
            // A forged leftmost entry is not believed: the nearest untrusted hop is.
            (&["198.51.100.1, 203.0.113.9, 10.1.2.3"], "203.0.113.9"),
            // Several headers are one list, in order.
            (&["198.51.100.1", "203.0.113.9", "10.1.2.3"], "203.0.113.9"),
            // Only trusted hops: the leftmost of them.
            (&["10.9.9.9, 10.1.2.3"], "10.9.9.9"),
            // Garbage ends the walk at the last trusted hop.
            (&["203.0.113.9, nonsense"], "127.0.0.1"),
            (&["203.0.113.9, nonsense, 10.1.2.3"], "10.1.2.3"),
            (&["203.0.113.9:4711"], "203.0.113.9"),
            (&["[2001:db8::7]:4711"], "2001:db8::7"),
            (&["::ffff:203.0.113.9"], "203.0.113.9"),
            (&[], "127.0.0.1"),
        ];
        for (values, want) in cases {
            assert_eq!(
                p.client(ip("127.0.0.1"), &headers(values)),
                ip(want),
                "{values:?}"
            );
        }
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        assert_eq!(
            AddrKey::of(ip("2001:db8:1:2:aaaa::1")),
            AddrKey::of(ip("2001:db8:1:2:ffff::9"))
        );
        assert_ne!(
            AddrKey::of(ip("2001:db8:1:2::1")),
            AddrKey::of(ip("2001:db8:1:3::1"))
        );
        assert_eq!(
            AddrKey::of(ip("::ffff:10.0.0.1")),
            AddrKey::of(ip("10.0.0.1"))
        );
        assert_eq!(
            AddrKey::of(ip("2001:db8:1:2::1")).to_string(),
            "2001:db8:1:2::/64"
        );
    }
}
