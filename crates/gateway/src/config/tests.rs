//! Unit tests of the command line: defaults, dev-mode addresses, trusted proxies, the Redis
//! choice and the subcommands.

use super::*;

#[test]
fn defaults_parse() {
    let cli = Cli::try_parse_from(["gleepost-gateway"]).unwrap();
    assert_eq!(cli.config.listen(), "0.0.0.0:8080".parse().unwrap());
    assert_eq!(cli.config.admin_listen(), "0.0.0.0:9090".parse().unwrap());
    assert_eq!(cli.config.channels, vec!["c:{id}", "n:{id}"]);
    assert_eq!(cli.config.ping_interval, Duration::from_secs(30));
    assert_eq!(cli.config.drain_window(), DEFAULT_DRAIN_WINDOW);
    assert_eq!(cli.config.handshake_timeout, Duration::from_secs(10));
    assert_eq!(cli.config.max_connections_per_user, 100);
    assert_eq!(cli.config.max_connections_per_ip, 0);
    assert_eq!(cli.config.connect_rate_per_ip, 0);
    assert_eq!(cli.config.auth_failures_per_ip, 50);
    assert!(cli.config.trusted_proxies.is_empty());
}

#[test]
fn dev_mode_binds_loopback_unless_told_otherwise() {
    let config = |args: &[&str]| {
        Cli::try_parse_from(["gleepost-gateway"].iter().chain(args))
            .unwrap()
            .config
    };
    let dev = config(&["--dev"]);
    assert_eq!(dev.listen(), "127.0.0.1:8080".parse().unwrap());
    assert_eq!(dev.admin_listen(), "127.0.0.1:9090".parse().unwrap());
    let bare = config(&["--dev", "--listen", "8081", "--admin-listen", "9091"]);
    assert_eq!(bare.listen(), "127.0.0.1:8081".parse().unwrap());
    assert_eq!(bare.admin_listen(), "127.0.0.1:9091".parse().unwrap());
    let open = config(&[
        "--dev",
        "--listen",
        "0.0.0.0:8080",
        "--admin-listen",
        "[::]:1",
    ]);
    assert_eq!(open.listen(), "0.0.0.0:8080".parse().unwrap());
    assert_eq!(open.admin_listen(), "[::]:1".parse().unwrap());
    assert_eq!(
        config(&["--listen", "8081"]).listen(),
        "0.0.0.0:8081".parse().unwrap()
    );
    assert_eq!(
        config(&["--listen", "localhost:8081"]).listen(),
        "127.0.0.1:8081".parse().unwrap()
    );
}

#[test]
fn trusted_proxies_take_cidrs_and_addresses() {
    let cli = Cli::try_parse_from([
        "gleepost-gateway",
        "--trusted-proxies",
        "10.0.0.0/8, 192.0.2.7,fd00::/8",
    ])
    .unwrap();
    let shown: Vec<String> = cli
        .config
        .trusted_proxies
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(shown, ["10.0.0.0/8", "192.0.2.7/32", "fd00::/8"]);
    assert!(Cli::try_parse_from(["gleepost-gateway", "--trusted-proxies", "10.0.0.0/33"]).is_err());
    assert!(Cli::try_parse_from(["gleepost-gateway", "--trusted-proxies", "proxy"]).is_err());
}

/// The Redis deployment the command line `args` configures.
fn target(args: &[&str]) -> anyhow::Result<Option<crate::broker::RedisTarget>> {
    let argv = std::iter::once("gleepost-gateway").chain(args.iter().copied());
    Cli::try_parse_from(argv)?.config.redis_target()
}

#[test]
fn exactly_one_redis_and_sentinel_needs_its_master_name() {
    use crate::broker::RedisTarget;
    let s = [
        "--redis-sentinel-urls",
        "redis://127.0.0.1:26379,redis://h:26380",
    ];
    let err = target(&s).unwrap_err().to_string();
    assert!(err.contains("REDIS_SENTINEL_MASTER"), "{err}");
    let both = [&s[..], &["--redis-url", "redis://x/"]].concat();
    let err = target(&both).unwrap_err().to_string();
    assert!(
        err.contains("REDIS_URL and REDIS_SENTINEL_URLS are both set"),
        "{err}"
    );
    let three = [&both[..], &["--redis-cluster-urls", "redis://c:7000"]].concat();
    let err = target(&three).unwrap_err().to_string();
    assert!(err.contains("are all set"), "{err}");
    let err = target(&["--redis-sentinel-master", "m"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("without REDIS_SENTINEL_URLS"), "{err}");
    let ok = [&s[..], &["--redis-sentinel-master", "m"]].concat();
    let ok = [&ok[..], &["--redis-sentinel-node-password", "pw"]].concat();
    match target(&ok).unwrap() {
        Some(RedisTarget::Sentinel {
            sentinels,
            master,
            node,
        }) => {
            assert_eq!(sentinels.len(), 2);
            assert_eq!(master, "m");
            assert_eq!(node.password(), Some("pw"));
        }
        other => panic!("not a Sentinel target: {other:?}"),
    }
    assert!(target(&[]).unwrap().is_none());
}

#[test]
fn token_subcommand() {
    let cli =
        Cli::try_parse_from(["gleepost-gateway", "token", "--user", "9", "--ttl", "2h"]).unwrap();
    match cli.command {
        Some(Command::Token { user, ttl }) => {
            assert_eq!(user, 9);
            assert_eq!(ttl, Duration::from_secs(7200));
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn timers_and_timeouts_must_be_longer_than_zero() {
    for flag in [
        "--ping-interval",
        "--pong-timeout",
        "--handshake-timeout",
        "--probe-interval",
        "--probe-timeout",
        "--redis-timeout",
        "--history-ttl",
        "--revocation-ttl",
        "--jwks-refresh",
    ] {
        let err = Cli::try_parse_from(["gleepost-gateway", flag, "0s"]).unwrap_err();
        assert!(
            err.to_string().contains("longer than zero"),
            "{flag}: {err}"
        );
        assert!(
            Cli::try_parse_from(["gleepost-gateway", flag, "250ms"]).is_ok(),
            "{flag}"
        );
    }
    // The drain's waits may be zero (dev mode's are).
    assert!(Cli::try_parse_from(["gleepost-gateway", "--drain-window", "0s"]).is_ok());
}
