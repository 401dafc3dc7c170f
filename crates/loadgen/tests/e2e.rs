//! End-to-end runs of the `gleepost-loadgen` binary against an in-process fake gateway.

mod fake;

use std::process::Output;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_gleepost-loadgen");

/// Runs the binary with whitespace-separated `args`.
async fn run(args: &str) -> Output {
    tokio::process::Command::new(BIN)
        .args(args.split_whitespace())
        .env_remove("GATEWAY_JWT_SECRET")
        .env_remove("GATEWAY_API_KEY")
        .kill_on_drop(true)
        .output()
        .await
        .expect("run gleepost-loadgen")
}

/// Runs the binary with `--json -` and parses its stdout.
async fn run_json(args: &str) -> Value {
    let out = run(&format!("{args} --json - --max-seconds 60")).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "loadgen failed: {stderr}");
    eprintln!("{stderr}");
    serde_json::from_slice(&out.stdout).expect("JSON report on stdout")
}

fn u(v: &Value, k: &str) -> u64 {
    v[k].as_u64()
        .unwrap_or_else(|| panic!("{k} missing in {v}"))
}

fn assert_clean_delivery(r: &Value) {
    assert!(u(r, "published") > 0, "{r}");
    assert_eq!(u(r, "delivered"), u(r, "expected"), "{r}");
    for k in [
        "lost",
        "duplicated",
        "out_of_order",
        "gaps",
        "misrouted",
        "unparsed",
    ] {
        assert_eq!(u(r, k), 0, "{k} in {r}");
    }
    let lat = &r["latency_us"];
    assert!(u(lat, "count") > 0, "{r}");
    assert!(u(lat, "p99") >= u(lat, "p50"), "{r}");
    assert!(r["loadgen_cpu_percent"].as_f64().is_some(), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_over_http_two_nodes() {
    let f = fake::start(Duration::ZERO).await;
    let r = run_json(&format!(
        "fanout --url {} --url {} -n 40 -u 20 --jwt-secret {} --api-key {} --admin-url {} \
         --rate 2000 --warmup 300ms --duration 1s --payload-bytes 300 --settle 100ms --drain 2s",
        f.ws_urls[0],
        f.ws_urls[1],
        fake::SECRET,
        fake::API_KEY,
        f.admin_url
    ))
    .await;
    assert_eq!(u(&r, "established"), 40);
    assert_eq!(u(&r, "failed"), 0);
    assert_clean_delivery(&r);
    // Every user has one connection per node, so each event is delivered twice.
    assert_eq!(u(&r, "expected"), 2 * u(&r, "published"));
    assert!(u(&r, "delivered_measured") > 0);
    // Every client answered the server's ping with a masked pong.
    assert_eq!(f.pongs.load(Ordering::Relaxed), 40);
}

/// A publish API slower than the rate: the events queue up in the load generator, and that wait
/// is part of their latency (stamped when queued, not when sent), so a saturated publish path
/// shows up as latency instead of hiding behind the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_latency_includes_time_queued_behind_a_slow_publish_api() {
    let f = fake::start(Duration::from_millis(10)).await;
    // One connection, one request at a time, each ≥ 10 ms: ≤ 100 events/s are served while 400
    // are queued within 1 s, so the k-th event waits ≥ k × (10 − 2.5) ms; the 99th percentile
    // (k ≈ 396) ≥ 2.9 s. Sent-time stamps would show ≈ 10 ms.
    let r = run_json(&format!(
        "fanout --url {} -n 10 --jwt-secret {} --api-key {} --admin-url {} --http-connections 1 \
         --rate 400 --warmup 0s --duration 1s --settle 0s --drain 20s",
        f.ws_urls[0],
        fake::SECRET,
        fake::API_KEY,
        f.admin_url
    ))
    .await;
    assert_clean_delivery(&r);
    assert_eq!(u(&r, "published"), 400, "{r}");
    let p99 = u(&r["latency_us"], "p99");
    assert!(p99 >= 1_000_000, "p99 {p99} µs hides the queueing: {r}");
}

/// Every max-rate step waits for its own publishes' acknowledgements before it counts: with a
/// publish API that takes a while per request, events still in flight at the end of a step are
/// the step's, not the next one's (which would show up as surplus deliveries here and as loss
/// there).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_rate_steps_account_for_their_own_in_flight_http_publishes() {
    let f = fake::start(Duration::from_millis(20)).await;
    // 4 connections × 20 ms per request ≈ 200 events/s: at 150–340/s requests are in flight
    // (or queued) whenever a step ends. Latency and loss limits are out of the way: every step runs.
    let r = run_json(&format!(
        "max-rate --url {} --url {} -n 20 -u 10 --jwt-secret {} --api-key {} --admin-url {} \
         --http-connections 4 --start-rate 150 --factor 1.5 --step 1s --step-warmup 200ms \
         --max-steps 3 --max-p99-ms 100000 --max-loss-pct 100 --drain 10s --settle 0s",
        f.ws_urls[0],
        f.ws_urls[1],
        fake::SECRET,
        fake::API_KEY,
        f.admin_url
    ))
    .await;
    let steps = r["steps"].as_array().expect("steps");
    assert_eq!(steps.len(), 3, "{r}");
    for s in steps {
        assert_eq!(u(s, "publish_errors"), 0, "{s}");
        // Each user has one connection per node.
        assert_eq!(u(s, "expected"), 2 * u(s, "published"), "{s}");
        assert_eq!(u(s, "delivered"), u(s, "expected"), "{s}");
        assert_eq!(u(s, "lost"), 0, "{s}");
    }
}

/// `--publish http-batch`: a request carries what is queued for its connection (here the
/// publish API is slower than the rate, so the queue always holds more than `--batch-size` once
/// the first request is out, whatever the machine's speed: full batches), one item per event,
/// per-user order kept across requests; items the API refuses count as publish errors and are
/// not expected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_over_the_batch_api_with_refused_items() {
    let f = fake::start(Duration::from_millis(20)).await;
    // One connection, ≥ 20 ms per request of ≤ 5 items: ≤ 250 events/s served while all 400
    // are queued within the first second, so after it ≥ 150 wait and every request is full.
    let r = run_json(&format!(
        "fanout --url {} --url {} -n 40 -u 20 --jwt-secret {} --api-key {} --admin-url {} \
         --publish http-batch --batch-size 5 --http-connections 1 --rate 400 --warmup 0s \
         --duration 1s --settle 100ms --drain 20s",
        f.ws_urls[0],
        f.ws_urls[1],
        fake::SECRET,
        fake::API_KEY,
        f.admin_url
    ))
    .await;
    assert_eq!(u(&r, "established"), 40);
    assert_eq!(r["params"]["publish"], "http-batch", "{r}");
    assert_eq!(r["params"]["batch_size"], 5, "{r}");
    assert_clean_delivery(&r);
    assert_eq!(u(&r, "published"), 400, "{r}");
    // Users 1..=20 round-robin: 20 events went to the refused user.
    assert!((1..=20).contains(&fake::REFUSED_USER));
    assert_eq!(u(&r, "publish_errors"), 20, "{r}");
    assert!(
        r["publish_first_error"]
            .as_str()
            .is_some_and(|e| e.contains("refused by the fake")),
        "{r}"
    );
    // Every accepted event reaches the user's connection on each node.
    assert_eq!(u(&r, "expected"), 2 * (400 - 20), "{r}");
    let b = &f.batches;
    assert_eq!(b.items.load(Ordering::Relaxed), 400);
    assert_eq!(b.max_items.load(Ordering::Relaxed), 5);
    let requests = b.requests.load(Ordering::Relaxed);
    assert!(requests >= 80);
    assert_eq!(u(&r, "publish_requests"), requests, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_over_redis_with_large_payloads_and_header_auth() {
    let f = fake::start(Duration::ZERO).await;
    let r = run_json(&format!(
        "fanout --url {} -n 10 --jwt-secret {} --auth header --publish redis --redis-url {} \
         --rate 400 --warmup 200ms --duration 800ms --payload-bytes 150000 --settle 100ms \
         --threads 2",
        f.ws_urls[0],
        fake::SECRET,
        f.redis_url
    ))
    .await;
    assert_eq!(u(&r, "established"), 10);
    assert_clean_delivery(&r);
    assert_eq!(u(&r, "expected"), u(&r, "published"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_rate_steps_until_the_bound() {
    let f = fake::start(Duration::ZERO).await;
    let r = run_json(&format!(
        "max-rate --url {} -n 20 --jwt-secret {} --publish redis --redis-url {} \
         --start-rate 500 --factor 2 --step 600ms --step-warmup 200ms --max-steps 3 \
         --drain 1s --settle 0s",
        f.ws_urls[0],
        fake::SECRET,
        f.redis_url
    ))
    .await;
    let steps = r["steps"].as_array().expect("steps");
    assert!(!steps.is_empty() && steps.len() <= 3, "{r}");
    assert_eq!(steps[0]["rate_target"].as_f64(), Some(500.0));
    // On a loaded machine a step may legitimately fail its latency limit; otherwise all pass.
    if steps.iter().all(|s| s["pass"] == true) {
        assert_eq!(steps.len(), 3);
        assert_eq!(r["stop_reason"], "--max-steps 3 reached");
        assert_clean_delivery(&r);
        assert_eq!(r["rate_target"].as_f64(), Some(2000.0));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_rate_idle_and_bad_credentials() {
    let f = fake::start(Duration::ZERO).await;
    let r = run_json(&format!(
        "connect-rate --url {} --url {} -n 300 --concurrency 50 --jwt-secret {} --settle 0s \
         --source-ip 127.0.0.2 --source-ip 127.0.0.3",
        f.ws_urls[0],
        f.ws_urls[1],
        fake::SECRET
    ))
    .await;
    assert_eq!(u(&r, "established"), 300);
    assert!(r["accepts_per_sec"].as_f64().unwrap() > 0.0);
    assert!(u(&r["handshake_us"], "p99") > 0);

    let r = run_json(&format!(
        "idle --url {} -n 100 --jwt-secret {} --server-pid {} --settle 200ms --hold 300ms \
         --first-user 990",
        f.ws_urls[0],
        fake::SECRET,
        std::process::id()
    ))
    .await;
    assert_eq!(u(&r, "established"), 100);
    assert!(r["server_rss_kib_per_conn"].as_f64().is_some(), "{r}");
    assert!(
        r["hold_cpu"]["server_cpu_percent"].as_f64().is_some(),
        "{r}"
    );
    // User 999's connection is closed by the server with 1001; the others stay open.
    assert_eq!(u(&r, "disconnected"), 1, "{r}");
    assert_eq!(r["server_close_codes"]["1001"], 1, "{r}");

    let r = run_json(&format!(
        "connect-rate --url {} -n 5 --jwt-secret wrong --settle 0s",
        f.ws_urls[0]
    ))
    .await;
    assert_eq!(u(&r, "established"), 0);
    assert_eq!(u(&r, "failed"), 5);
    assert_eq!(r["connect_errors"]["http status 401"], 5);
    assert_eq!(f.upgrades.load(Ordering::Relaxed), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_non_loopback_targets_and_bad_api_keys() {
    for args in [
        "idle --url ws://10.1.2.3:8080/ws --jwt-secret x",
        "idle --url ws://example.com/ws --jwt-secret x",
        "idle --source-ip 192.168.1.1 --jwt-secret x",
        "fanout --admin-url http://192.168.0.1:9090 --jwt-secret x",
        "fanout --publish redis --redis-url redis://10.0.0.1 --jwt-secret x",
    ] {
        let out = run(args).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args}: {stderr}");
        assert!(stderr.contains("loopback"), "{args}: {stderr}");
    }
    let f = fake::start(Duration::ZERO).await;
    let out = run(&format!(
        "fanout --url {} -n 2 --jwt-secret {} --api-key wrong --admin-url {} --rate 1000 \
         --warmup 0s --duration 2s --settle 0s --max-seconds 30",
        f.ws_urls[0],
        fake::SECRET,
        f.admin_url
    ))
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("401"), "{stderr}");
    // A non-200 batch reply fails every item of the request.
    let out = run(&format!(
        "fanout --url {} -n 2 --jwt-secret {} --api-key wrong --admin-url {} --rate 1000 \
         --publish http-batch --warmup 0s --duration 2s --settle 0s --max-seconds 30",
        f.ws_urls[0],
        fake::SECRET,
        f.admin_url
    ))
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("401"), "{stderr}");
}
