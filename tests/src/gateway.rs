//! A real `gleepost-gateway` process on free loopback ports.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use crate::client::Client;
use crate::credentials::{ws_path, API_KEY, JWT_SECRET};
use crate::http::{self, HttpResponse};

/// How to start a gateway.
#[derive(Clone, Debug, Default)]
pub struct GatewayOptions {
    /// `REDIS_URL`, or the embedded broker.
    pub redis_url: Option<String>,
    /// `REDIS_CLUSTER_URLS` (comma-separated seeds): cluster mode.
    pub redis_cluster_urls: Option<String>,
    /// Extra command-line arguments.
    pub args: Vec<String>,
    /// `RLIMIT_NOFILE` (soft, hard) the process starts with, instead of the test's own.
    pub nofile: Option<(u64, u64)>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// `--listen` and `--admin-listen`; `None`: `127.0.0.1:0` for both.
    pub listen: Option<(String, String)>,
}

impl GatewayOptions {
    /// Options for a gateway on `redis_url`.
    pub fn redis(redis_url: String) -> Self {
        GatewayOptions {
            redis_url: Some(redis_url),
            ..GatewayOptions::default()
        }
    }

    /// Options for a gateway on the Redis Cluster reached through `seeds_csv`.
    pub fn cluster(seeds_csv: String) -> Self {
        GatewayOptions {
            redis_cluster_urls: Some(seeds_csv),
            ..GatewayOptions::default()
        }
    }

    /// Options for a gateway on the primary of [`crate::sentinel::MASTER`] found through the
    /// sentinels of `sentinels_csv`.
    pub fn sentinel(sentinels_csv: String) -> Self {
        GatewayOptions::default().arg(&[
            "--redis-sentinel-urls",
            &sentinels_csv,
            "--redis-sentinel-master",
            crate::sentinel::MASTER,
        ])
    }

    /// Start the process with this soft and hard `RLIMIT_NOFILE`.
    pub fn nofile(mut self, soft: u64, hard: u64) -> Self {
        self.nofile = Some((soft, hard));
        self
    }

    /// Set an environment variable of the process.
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_string(), value.to_string()));
        self
    }

    /// Listen on these addresses (any form `--listen` takes) instead of `127.0.0.1:0`.
    pub fn listen(mut self, public: &str, admin: &str) -> Self {
        self.listen = Some((public.to_string(), admin.to_string()));
        self
    }

    /// Add command-line arguments.
    pub fn arg(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|s| s.to_string()));
        self
    }
}

/// A running gateway process; SIGKILLed on drop if still running.
pub struct Gateway {
    child: Child,
    /// Public address (`127.0.0.1:port`).
    pub public: String,
    /// Admin address.
    pub admin: String,
    logs: Arc<Mutex<Vec<String>>>,
    stdout: Arc<Mutex<Vec<String>>>,
}

/// Path of the gateway binary built by `cargo build` (the Makefile builds it before tests).
pub fn gateway_binary() -> Result<PathBuf> {
    built_binary("gleepost-gateway")
}

/// Path of the binary `name` of the package of that name, built by `cargo build` in the target
/// directory of the running test.
pub(crate) fn built_binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/<test-binary> → target/<profile>/<name>; a binary of this crate
    // (target/<profile>/chaos) has it next to itself.
    let own_dir = exe.parent().context("unexpected test binary location")?;
    let dir = match own_dir.file_name() {
        Some(dir) if dir == "deps" => own_dir.parent().unwrap_or(own_dir),
        _ => own_dir,
    };
    let bin = dir.join(name);
    if !bin.exists() {
        bail!(
            "{} not found: build it first (`cargo build -p {name}`; `make test` does)",
            bin.display()
        );
    }
    Ok(bin)
}

impl Gateway {
    /// Start a gateway and wait until it listens.
    pub async fn start(options: GatewayOptions) -> Result<Gateway> {
        let mut cmd = Command::new(gateway_binary()?);
        let (public, admin) = options
            .listen
            .clone()
            .unwrap_or_else(|| ("127.0.0.1:0".into(), "127.0.0.1:0".into()));
        cmd.args(["--listen", &public, "--admin-listen", &admin])
            .args([
                "--log-format",
                "json",
                "--log",
                "info,gleepost_gateway=debug",
            ])
            .env("GATEWAY_JWT_SECRET", JWT_SECRET)
            .env("GATEWAY_API_KEY", API_KEY)
            .env_remove("REDIS_URL")
            .env_remove("REDIS_CLUSTER_URLS")
            .env_remove("REDIS_SENTINEL_URLS")
            .env_remove("REDIS_SENTINEL_MASTER")
            .env_remove("GATEWAY_DEV")
            // TLS (an https:// JWKS URL) trusts the system's CA bundle unless a test says
            // otherwise, whatever this machine's environment points these at.
            .env_remove("SSL_CERT_FILE")
            .env_remove("SSL_CERT_DIR")
            .envs(options.env.iter().map(|(k, v)| (k, v)))
            .args(&options.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(url) = &options.redis_url {
            cmd.env("REDIS_URL", url);
        }
        if let Some(seeds) = &options.redis_cluster_urls {
            cmd.env("REDIS_CLUSTER_URLS", seeds);
        }
        if let Some((soft, hard)) = options.nofile {
            use std::os::unix::process::CommandExt;
            let limit = libc::rlimit {
                rlim_cur: soft,
                rlim_max: hard,
            };
            // SAFETY: setrlimit(2) is async-signal-safe; nothing else runs between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        let mut child = cmd.spawn().context("spawning gleepost-gateway")?;
        let stderr = child.stderr.take().context("no stderr")?;
        let stdout = Arc::new(Mutex::new(Vec::new()));
        {
            let stdout = stdout.clone();
            let out = child.stdout.take().context("no stdout")?;
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    stdout.lock().unwrap_or_else(|p| p.into_inner()).push(line);
                }
            });
        }
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let logs = logs.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                        if v["message"] == "listening" {
                            let _ = tx.send((
                                v["public"].as_str().unwrap_or_default().to_string(),
                                v["admin"].as_str().unwrap_or_default().to_string(),
                            ));
                        }
                    }
                    logs.lock().unwrap_or_else(|p| p.into_inner()).push(line);
                }
            });
        }
        let addrs =
            tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(20))).await?;
        let (public, admin) = match addrs {
            Ok(addrs) => addrs,
            Err(_) => {
                let _ = child.kill();
                let logs = logs.lock().unwrap_or_else(|p| p.into_inner()).join("\n");
                bail!("gateway did not start listening; logs:\n{logs}");
            }
        };
        Ok(Gateway {
            child,
            public,
            admin,
            logs,
            stdout,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// `ws://…/ws` without credentials.
    pub fn ws_base(&self) -> String {
        format!("ws://{}/ws", self.public)
    }

    /// `ws://…/ws?access_token=<jwt for user>`.
    pub fn ws_url(&self, user: u64) -> String {
        format!("ws://{}{}", self.public, ws_path(user))
    }

    /// Connect a WebSocket client as `user` (JWT).
    pub async fn connect(&self, user: u64) -> Result<Client> {
        Client::connect(&self.ws_url(user)).await
    }

    /// POST /v1/publish with the right key; `body` is the whole request JSON.
    pub async fn publish_raw(&self, body: &str) -> Result<HttpResponse> {
        self.admin_post("/v1/publish", body).await
    }

    /// POST a JSON `body` to the admin API's `path` with the API key.
    pub async fn admin_post(&self, path: &str, body: &str) -> Result<HttpResponse> {
        admin_post_to(&self.admin, path, body).await
    }

    /// Publish `event` (JSON text) to `users`; fails unless 200.
    pub async fn publish(&self, users: &[u64], event: &str) -> Result<serde_json::Value> {
        publish_via(&self.admin, users, event).await
    }

    /// POST `body` to the admin API's `path` with the API key; the answer as JSON (fails unless
    /// 200).
    pub async fn admin_post_json(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value> {
        let res = self.admin_post(path, &body.to_string()).await?;
        res.ok_json(&format!("POST {path}"))
    }

    /// GET an admin path.
    pub async fn admin_get(&self, path: &str) -> Result<HttpResponse> {
        http::request(&self.admin, "GET", path, &[], b"").await
    }

    /// GET `path` on the admin port with the API key; the body as JSON (fails unless 200).
    pub async fn admin_get_json(&self, path: &str) -> Result<serde_json::Value> {
        let auth = format!("Bearer {API_KEY}");
        let res = http::request(&self.admin, "GET", path, &[("Authorization", &auth)], b"").await?;
        res.ok_json(&format!("GET {path}"))
    }

    /// `/readyz` answered 200.
    pub async fn is_ready(&self) -> bool {
        matches!(self.admin_get("/readyz").await, Ok(r) if r.status == 200)
    }

    /// Wait until `/readyz` equals `ready` (bounded).
    pub async fn wait_ready(&self, ready: bool, limit: Duration) -> Result<()> {
        crate::eventually(limit, &format!("gateway ready={ready}"), || async {
            ensure!(
                self.is_ready().await == ready,
                "/readyz says ready={}",
                !ready
            );
            Ok(())
        })
        .await
    }

    /// The value of a metric sample (e.g. `gleepost_gateway_connections` or
    /// `gleepost_gateway_auth_failures_total{reason="missing"}`), 0 when absent.
    pub async fn metric(&self, sample: &str) -> Result<f64> {
        let text = self.admin_get("/metrics").await?.body_text();
        Ok(text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| {
                let (name, value) = l.rsplit_once(' ')?;
                (name == sample).then(|| value.parse().ok())?
            })
            .unwrap_or(0.0))
    }

    /// Send a signal to the process.
    pub fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// Wait for the process to exit (bounded).
    pub async fn wait_exit(&mut self, limit: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("gateway did not exit within {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Every line the process wrote to stdout so far (the dev mode banner).
    pub fn stdout(&self) -> Vec<String> {
        self.stdout
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Every log line so far.
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Publish `event` (JSON text) to `users` through the admin port at `admin` (`host:port`, e.g.
/// a [`Gateway::admin`] kept across a restart of that node); fails unless 200.
pub async fn publish_via(admin: &str, users: &[u64], event: &str) -> Result<serde_json::Value> {
    let body = format!(
        "{{\"users\":{},\"event\":{event}}}",
        serde_json::to_string(users)?
    );
    admin_post_to(admin, "/v1/publish", &body)
        .await?
        .ok_json("publish failed")
}

/// POST a JSON `body` to `path` on the admin port at `admin` with the API key.
pub async fn admin_post_to(admin: &str, path: &str, body: &str) -> Result<HttpResponse> {
    let auth = format!("Bearer {API_KEY}");
    http::request(
        admin,
        "POST",
        path,
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        body.as_bytes(),
    )
    .await
}
