//! Values of the command line and environment beyond clap's own parsers: listen addresses in
//! the forms operators type, and parse errors that name the environment variable a bad value
//! came from.

use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::CommandFactory;

/// The accepted forms of a listen address, for error messages.
const LISTEN_FORMS: &str = "expected IP:PORT (0.0.0.0:8080, 127.0.0.1:8080, [::]:8080), \
                            localhost:PORT, or a bare PORT (8080: all interfaces, loopback \
                            with --dev)";

/// A `--listen` / `--admin-listen` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenAddr {
    /// A bare port: the mode's default interfaces (all of them; loopback in dev mode).
    Port(u16),
    /// A full socket address.
    Addr(SocketAddr),
}

impl ListenAddr {
    /// The address to bind, with `host` for a bare port.
    pub fn resolve(self, host: IpAddr) -> SocketAddr {
        match self {
            ListenAddr::Port(port) => SocketAddr::new(host, port),
            ListenAddr::Addr(addr) => addr,
        }
    }
}

/// Parse `IP:PORT`, `[IPv6]:PORT`, `localhost:PORT` (IPv4 loopback, no name lookup) or `PORT`.
pub fn parse_listen(s: &str) -> Result<ListenAddr, String> {
    let s = s.trim();
    if let Ok(port) = s.parse::<u16>() {
        return Ok(ListenAddr::Port(port));
    }
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(ListenAddr::Addr(addr));
    }
    if let Some((host, port)) = s.rsplit_once(':') {
        if host.eq_ignore_ascii_case("localhost") {
            if let Ok(port) = port.parse::<u16>() {
                return Ok(ListenAddr::Addr(SocketAddr::new(
                    IpAddr::V4(Ipv4Addr::LOCALHOST),
                    port,
                )));
            }
        }
    }
    Err(format!("{s:?} is not a listen address: {LISTEN_FORMS}"))
}

/// A note naming the environment variable that the bad value of a parse `error` came from,
/// when it came from one (clap's message names only the flag); `args` is the command line.
pub fn env_note<C: CommandFactory>(error: &clap::Error, args: &[OsString]) -> Option<String> {
    if !matches!(
        error.kind(),
        ErrorKind::InvalidValue | ErrorKind::ValueValidation
    ) {
        return None;
    }
    let Some(ContextValue::String(shown)) = error.get(ContextKind::InvalidArg) else {
        return None;
    };
    // e.g. `--listen <LISTEN>`
    let long = shown.split_whitespace().next()?.strip_prefix("--")?;
    let command = C::command();
    let env = command
        .get_arguments()
        .find(|a| a.get_long() == Some(long))?
        .get_env()?
        .to_string_lossy()
        .into_owned();
    let on_command_line = args.iter().skip(1).any(|a| {
        a.to_string_lossy()
            .strip_prefix("--")
            .is_some_and(|f| f == long || f.starts_with(&format!("{long}=")))
    });
    let value = std::env::var_os(&env)?;
    (!on_command_line).then(|| {
        format!(
            "note: the value {:?} comes from the environment variable {env} (--{long} was not \
             given)",
            value.to_string_lossy()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Settings the chart sets elsewhere than under `config:` (with why), or never.
    const NOT_UNDER_CHART_CONFIG: [&str; 9] = [
        "GATEWAY_DEV",          // never in a cluster
        "GATEWAY_LISTEN",       // derived from containerPorts.ws
        "GATEWAY_ADMIN_LISTEN", // derived from containerPorts.admin
        "GATEWAY_JWT_SECRET",   // secrets
        "GATEWAY_API_KEY",
        "REDIS_URL",
        "REDIS_CLUSTER_URLS",
        "REDIS_SENTINEL_URLS",
        "REDIS_SENTINEL_NODE_PASSWORD",
    ];

    /// The Helm chart's `config:` maps to every environment variable of the gateway (but those
    /// above), and to nothing else; values.yaml and its schema have every key.
    #[test]
    fn the_chart_exposes_every_setting_under_config() {
        use crate::config::Cli;
        use clap::CommandFactory;
        let helpers = include_str!("../../../helm/gleepost-gateway/templates/_helpers.tpl");
        let names = helpers
            .split("define \"gleepost-gateway.configEnvNames\"")
            .nth(1)
            .and_then(|s| s.split("{{- end }}").next())
            .unwrap_or_default();
        let chart: Vec<(&str, &str)> = names
            .lines()
            .filter_map(|l| l.split_once(": "))
            .map(|(k, v)| (k.trim(), v.trim()))
            .collect();
        assert!(chart.len() > 10, "no configEnvNames in _helpers.tpl");
        let values = include_str!("../../../helm/gleepost-gateway/values.yaml");
        let schema = include_str!("../../../helm/gleepost-gateway/values.schema.json");
        for (key, _) in &chart {
            assert!(
                values.contains(&format!("\n  {key}: ")),
                "config.{key} is missing from values.yaml"
            );
            assert!(
                schema.contains(&format!("\"{key}\": {{")),
                "config.{key} is missing from values.schema.json"
            );
        }
        let env: Vec<String> = Cli::command()
            .get_arguments()
            .filter_map(|a| a.get_env())
            .map(|e| e.to_string_lossy().into_owned())
            .collect();
        for var in &env {
            if NOT_UNDER_CHART_CONFIG.contains(&var.as_str()) {
                continue;
            }
            assert!(
                chart.iter().any(|(_, v)| v == var),
                "{var} is not under the chart's config: (templates/_helpers.tpl configEnvNames)"
            );
        }
        for (key, var) in &chart {
            assert!(
                env.contains(&var.to_string()),
                "chart config.{key} maps to {var}, which the gateway does not read"
            );
        }
    }

    #[test]
    fn listen_addresses_in_the_usual_forms() {
        let all = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        let parsed = |s: &str| parse_listen(s).map(|l| l.resolve(all).to_string());
        assert_eq!(parsed("0.0.0.0:8080"), Ok("0.0.0.0:8080".into()));
        assert_eq!(parsed("127.0.0.1:9"), Ok("127.0.0.1:9".into()));
        assert_eq!(parsed("[::1]:8080"), Ok("[::1]:8080".into()));
        assert_eq!(parsed("localhost:8080"), Ok("127.0.0.1:8080".into()));
        assert_eq!(parsed("LOCALHOST:1"), Ok("127.0.0.1:1".into()));
        assert_eq!(parsed("8080"), Ok("0.0.0.0:8080".into()));
        assert_eq!(
            parse_listen("8080").map(|l| l.resolve(IpAddr::V4(Ipv4Addr::LOCALHOST))),
            Ok("127.0.0.1:8080".parse().unwrap())
        );
        for bad in [
            "example.com:8080",
            "localhost",
            "localhost:http",
            "70000",
            ":8080",
        ] {
            let error = parse_listen(bad).unwrap_err();
            assert!(
                error.contains("localhost:PORT") && error.contains("8080"),
                "{error}"
            );
        }
    }
}
