//! The settings as the gateway uses them, derived from the flags: which Redis, the JWT claim
//! rules, the listen addresses and the drain timings (defaults that depend on `--dev`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use super::{
    Config, ListenAddr, DEFAULT_ADMIN_PORT, DEFAULT_DRAIN_WINDOW, DEFAULT_PRE_DRAIN_DELAY,
    DEFAULT_PUBLIC_PORT,
};

impl Config {
    /// The Redis deployment configured: `None` for the embedded broker; an error when more than
    /// one is set.
    pub(crate) fn redis_target(&self) -> anyhow::Result<Option<crate::broker::RedisTarget>> {
        use crate::broker::RedisTarget;
        let listed = |urls: &[String]| -> Vec<String> {
            urls.iter()
                .map(|u| u.trim().to_string())
                .filter(|u| !u.is_empty())
                .collect()
        };
        let cluster = listed(&self.redis_cluster_urls);
        let sentinels = listed(&self.redis_sentinel_urls);
        let set: Vec<&str> = [
            ("REDIS_URL", self.redis_url.is_some()),
            ("REDIS_CLUSTER_URLS", !cluster.is_empty()),
            ("REDIS_SENTINEL_URLS", !sentinels.is_empty()),
        ]
        .into_iter()
        .filter_map(|(name, on)| on.then_some(name))
        .collect();
        if set.len() > 1 {
            let how = if set.len() == 2 { "both" } else { "all" };
            anyhow::bail!(
                "{} are {how} set: configure exactly one Redis (REDIS_URL for a standalone \
                 server, REDIS_CLUSTER_URLS for a cluster's seed nodes, or REDIS_SENTINEL_URLS \
                 with REDIS_SENTINEL_MASTER)",
                set.join(" and ")
            );
        }
        let node_settings = self.redis_sentinel_node_username.is_some()
            || self.redis_sentinel_node_password.is_some()
            || self.redis_sentinel_node_db != 0;
        if sentinels.is_empty() && (self.redis_sentinel_master.is_some() || node_settings) {
            anyhow::bail!(
                "REDIS_SENTINEL_MASTER / REDIS_SENTINEL_NODE_* are set without \
                 REDIS_SENTINEL_URLS (the sentinels to ask)"
            );
        }
        if let Some(url) = &self.redis_url {
            return Ok(Some(RedisTarget::Standalone(url.clone())));
        }
        if !cluster.is_empty() {
            return Ok(Some(RedisTarget::Cluster(cluster)));
        }
        if sentinels.is_empty() {
            return Ok(None);
        }
        let master = match self.redis_sentinel_master.as_deref().map(str::trim) {
            Some(m) if !m.is_empty() => m.to_string(),
            _ => anyhow::bail!(
                "REDIS_SENTINEL_URLS needs REDIS_SENTINEL_MASTER (or --redis-sentinel-master): \
                 the master name the sentinels monitor"
            ),
        };
        let mut node = redis::RedisConnectionInfo::default().set_db(self.redis_sentinel_node_db);
        if let Some(user) = &self.redis_sentinel_node_username {
            node = node.set_username(user);
        }
        if let Some(password) = &self.redis_sentinel_node_password {
            node = node.set_password(password);
        }
        Ok(Some(RedisTarget::Sentinel {
            sentinels,
            master,
            node,
        }))
    }

    /// The `iss` / `aud` rules of client JWTs (empty values are unset).
    pub(crate) fn claim_rules(&self) -> crate::auth::ClaimRules {
        fn set(value: &Option<String>) -> Option<String> {
            let value = value.as_deref()?.trim();
            (!value.is_empty()).then(|| value.to_owned())
        }
        crate::auth::ClaimRules {
            issuer: set(&self.jwt_issuer),
            audience: set(&self.jwt_audience),
        }
    }

    /// Where a bare port (or no address) binds: every interface, or loopback in dev mode, so that
    /// a developer's publish API and generated key are not open to their network.
    fn default_host(&self) -> IpAddr {
        if self.dev {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        }
    }

    /// Effective public listen address.
    pub fn listen(&self) -> SocketAddr {
        self.listen
            .unwrap_or(ListenAddr::Port(DEFAULT_PUBLIC_PORT))
            .resolve(self.default_host())
    }

    /// Effective admin listen address.
    pub fn admin_listen(&self) -> SocketAddr {
        self.admin_listen
            .unwrap_or(ListenAddr::Port(DEFAULT_ADMIN_PORT))
            .resolve(self.default_host())
    }

    /// The history settings.
    pub fn history(&self) -> gleepost_event::HistoryConfig {
        gleepost_event::HistoryConfig {
            size: self.history_size,
            ttl: self.history_ttl,
        }
    }

    /// Effective pre-drain delay.
    pub fn pre_drain_delay(&self) -> Duration {
        self.pre_drain_delay.unwrap_or(if self.dev {
            Duration::ZERO
        } else {
            DEFAULT_PRE_DRAIN_DELAY
        })
    }

    /// Effective drain window.
    pub fn drain_window(&self) -> Duration {
        self.drain_window.unwrap_or(if self.dev {
            Duration::ZERO
        } else {
            DEFAULT_DRAIN_WINDOW
        })
    }
}
