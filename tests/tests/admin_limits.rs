//! The admin port under hostile clients: a request is complete (headers and body) within the
//! handshake timeout or cut; the API key and the declared length are checked before any body
//! byte is read; a connection cap that never keeps `/healthz` and `/metrics` from being served;
//! no `Upgrade: h2c` (HTTP/2 with prior knowledge: `admin_http2.rs`); refusals that plain HTTP
//! clients still sending their body can read; rate-limited logs of dropped connections. The body checks are driven on both routes that take a publish
//! body (`/v1/publish` and `/v1/publish/batch`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use futures_util::future::try_join_all;
use gleepost_tests::eventually;
use gleepost_tests::http::{self, closed_within, next_answer, read_response, HttpResponse};
use gleepost_tests::metrics::wait_metric;
use gleepost_tests::{python, Gateway, GatewayOptions, RedisServer, API_KEY};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Generous bound on anything the gateway must do "at once" or "after the timeout".
const LIMIT: Duration = Duration::from_secs(20);

fn dropped(reason: &str) -> String {
    format!("gleepost_gateway_admin_connections_dropped_total{{reason=\"{reason}\"}}")
}

/// A connection to the admin port that has sent `bytes`.
async fn open(gw: &Gateway, bytes: &[u8]) -> Result<TcpStream> {
    let mut stream = TcpStream::connect(&gw.admin).await?;
    stream.write_all(bytes).await?;
    Ok(stream)
}

/// The routes whose body is read under the same rules (key and length from the headers, body
/// by the deadline): every body test runs on each.
const ROUTES: [&str; 2] = ["/v1/publish", "/v1/publish/batch"];

/// The head of a request to `route` declaring a body of `length` bytes.
fn publish_head(route: &str, key: &str, length: usize) -> String {
    format!(
        "POST {route} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    )
}

/// The next response on `stream`, bounded by [`LIMIT`].
async fn response(stream: &mut TcpStream) -> Result<HttpResponse> {
    tokio::time::timeout(LIMIT, read_response(stream))
        .await
        .with_context(|| format!("no response within {LIMIT:?}"))?
}

#[tokio::test]
async fn slow_requests_are_cut_by_the_handshake_timeout() -> Result<()> {
    let gw = Gateway::start(GatewayOptions::default().arg(&["--handshake-timeout", "1s"])).await?;
    let mut half_heads = Vec::new();
    let mut half_bodies = Vec::new();
    let mut idle = Vec::new();
    for i in 0..50 {
        let route = ROUTES[i % ROUTES.len()];
        let head = format!("POST {route} HTTP/1.1\r\nHost: gw\r\nContent-Le");
        half_heads.push((route, open(&gw, head.as_bytes()).await?));
        let mut body = open(&gw, publish_head(route, API_KEY, 100).as_bytes()).await?;
        body.write_all(br#"{"users":[9],"#).await?;
        half_bodies.push((route, body));
        idle.push(open(&gw, b"").await?);
    }
    for (route, stream) in &mut half_heads {
        let answer = closed_within(stream, LIMIT).await?;
        ensure!(
            answer.is_empty(),
            "a half-sent head to {route} was answered"
        );
    }
    for (route, stream) in &mut half_bodies {
        let what = format!("half-sent body to {route}");
        response(stream).await?.ensure_error(&what, 408)?;
        closed_within(stream, LIMIT).await?;
    }
    for stream in &mut idle {
        closed_within(stream, LIMIT).await?;
    }
    // Idle connections are closed too, but are not counted as cut requests.
    wait_metric(&gw, &dropped("timeout"), 100.0).await?;
    ensure!(gw.admin_get("/healthz").await?.status == 200);
    Ok(())
}

#[tokio::test]
async fn the_key_and_the_length_are_checked_before_any_body_byte() -> Result<()> {
    let gw =
        Gateway::start(GatewayOptions::default().arg(&["--max-publish-body", "65536"])).await?;
    // Heads only: no body byte is ever sent, the answer must come anyway.
    for route in ROUTES {
        let cases = [
            (
                "wrong key, small body",
                publish_head(route, "wrong", 60_000),
                401,
            ),
            (
                "wrong key, large body",
                publish_head(route, "wrong", 10_000_000),
                401,
            ),
            (
                "right key, large body",
                publish_head(route, API_KEY, 10_000_000),
                413,
            ),
            (
                "right key, no length",
                format!(
                    "POST {route} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {API_KEY}\r\n\
                     Transfer-Encoding: chunked\r\n\r\n"
                ),
                411,
            ),
        ];
        for (what, head, status) in &cases {
            let mut stream = open(&gw, head.as_bytes()).await?;
            let what = format!("{route}: {what}");
            response(&mut stream).await?.ensure_error(&what, *status)?;
        }
    }
    // Both routes count their answers in the same family.
    let count =
        |status: &str| format!("gleepost_gateway_publish_requests_total{{status=\"{status}\"}}");
    let routes = ROUTES.len() as f64;
    wait_metric(&gw, &count("401"), 2.0 * routes).await?;
    wait_metric(&gw, &count("413"), routes).await?;
    wait_metric(&gw, &count("411"), routes).await?;
    Ok(())
}

#[tokio::test]
async fn unauthenticated_large_bodies_do_not_hold_memory() -> Result<()> {
    const CLIENTS: usize = 300;
    const BODY: usize = 1 << 20; // the default --max-publish-body
    let gw = Gateway::start(GatewayOptions::default()).await?;
    let rss = "gleepost_gateway_process_resident_memory_bytes";
    let before = gw.metric(rss).await?;
    let body = Arc::new(vec![b'x'; BODY]);
    let clients = (0..CLIENTS).map(|i| {
        let body = body.clone();
        let gw = &gw;
        async move {
            let route = ROUTES[i % ROUTES.len()];
            let mut stream = open(gw, publish_head(route, "wrong", BODY).as_bytes()).await?;
            stream.write_all(&body).await?;
            let what = format!("unauthenticated body to {route}");
            response(&mut stream).await?.ensure_error(&what, 401)?;
            Ok::<_, anyhow::Error>(stream)
        }
    });
    // Every client has sent its whole body and still holds its connection.
    let streams = try_join_all(clients).await?;
    let after = gw.metric(rss).await?;
    let grown_mib = (after - before) / (1024.0 * 1024.0);
    // 300 bodies kept would be 300 MiB; what a connection holds is a few KiB.
    ensure!(
        grown_mib < 64.0,
        "RSS grew by {grown_mib:.0} MiB with {CLIENTS} unauthenticated 1 MiB bodies"
    );
    drop(streams);
    Ok(())
}

#[tokio::test]
async fn the_connection_cap_never_blocks_health_and_metrics() -> Result<()> {
    const CAP: usize = 8;
    const ATTACKERS: usize = 120;
    let gw = Gateway::start(GatewayOptions::default().arg(&[
        "--admin-max-connections",
        "8",
        "--handshake-timeout",
        "60s",
    ]))
    .await?;
    // Idle sockets and half-sent heads, far more than the cap, none of them ever completing.
    let mut attackers = Vec::new();
    for i in 0..ATTACKERS {
        let sent: &[u8] = if i % 2 == 0 {
            b""
        } else {
            b"GET /healthz HTTP/1.1\r\n"
        };
        attackers.push(open(&gw, sent).await?);
    }
    for _ in 0..20 {
        ensure!(gw.admin_get("/healthz").await?.status == 200);
        ensure!(gw.admin_get("/metrics").await?.status == 200);
    }
    // The attackers beyond the cap were closed to make room, long before the 60 s timeout.
    let closed = Arc::new(AtomicUsize::new(0));
    let watchers: Vec<_> = attackers
        .into_iter()
        .map(|mut stream| {
            let closed = closed.clone();
            tokio::spawn(async move {
                if closed_within(&mut stream, Duration::from_secs(60))
                    .await
                    .is_ok()
                {
                    closed.fetch_add(1, Ordering::AcqRel);
                }
            })
        })
        .collect();
    eventually(LIMIT, "attackers beyond the cap closed", || async {
        let n = closed.load(Ordering::Acquire);
        ensure!(n >= ATTACKERS - CAP, "{n} closed");
        Ok(())
    })
    .await?;
    let open_now = gw.metric("gleepost_gateway_admin_connections").await?;
    ensure!(open_now <= CAP as f64, "{open_now} admin connections open");
    let evicted = gw.metric(&dropped("evicted")).await?;
    ensure!(evicted >= (ATTACKERS - CAP) as f64, "evicted {evicted}");
    for watcher in watchers {
        watcher.abort();
    }
    Ok(())
}

#[tokio::test]
async fn publishes_stuck_on_a_frozen_broker_never_block_health_and_metrics() -> Result<()> {
    const CAP: usize = 16;
    const BUSY: usize = 14; // the cap minus its reserved eighth
    let redis = RedisServer::start().await?;
    let gw = Arc::new(
        Gateway::start(GatewayOptions::redis(redis.url()).arg(&[
            "--admin-max-connections",
            "16",
            "--redis-timeout",
            "30s",
        ]))
        .await?,
    );
    gw.wait_ready(true, LIMIT).await?;
    redis.signal(libc::SIGSTOP);
    // As many authorised publishes as the cap, each waiting for the frozen broker.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for _ in 0..CAP {
        let (gw, tx) = (gw.clone(), tx.clone());
        tokio::spawn(async move {
            let _ = tx.send(gw.publish_raw(seed_publish()).await);
        });
    }
    // Beyond the busy share they are answered 503 at once.
    let mut early = Vec::new();
    for _ in BUSY..CAP {
        early.push(next_answer(&mut rx, LIMIT).await);
    }
    let mut health = Vec::new();
    for _ in 0..20 {
        health.push(gw.admin_get("/healthz").await.map(|r| r.status));
        health.push(gw.admin_get("/metrics").await.map(|r| r.status));
    }
    redis.signal(libc::SIGCONT);
    for res in early {
        let res = res?;
        res.ensure_error("publish beyond the busy share", 503)?;
        ensure!(res.body_text().contains("in flight"), "{}", res.body_text());
    }
    for status in health {
        ensure!(status? == 200, "health or metrics not served");
    }
    // The stuck ones complete once the broker answers.
    for _ in 0..BUSY {
        let res = next_answer(&mut rx, LIMIT).await?;
        ensure!(
            res.status == 200,
            "stuck publish: {} {}",
            res.status,
            res.body_text()
        );
    }
    Ok(())
}

/// A valid publish request body.
fn seed_publish() -> &'static str {
    r#"{"users":[9],"event":{"type":"message","location":"/m","data":{}}}"#
}

#[tokio::test]
async fn an_h2c_upgrade_request_is_answered_in_http1() -> Result<()> {
    let gw = Gateway::start(GatewayOptions::default()).await?;
    // An h2c upgrade request is served as plain HTTP/1.1.
    let res = http::request(
        &gw.admin,
        "GET",
        "/healthz",
        &[
            ("Connection", "Upgrade, HTTP2-Settings"),
            ("Upgrade", "h2c"),
            ("HTTP2-Settings", "AAMAAABkAAQCAAAAAAIAAAAA"),
        ],
        b"",
    )
    .await?;
    ensure!(res.status == 200, "h2c upgrade answered {}", res.status);
    Ok(())
}

/// Posts an 8 MiB body to the route with urllib and with requests, with the right key (413:
/// over the limit) and a wrong one (401), then two valid bodies on one keep-alive `requests`
/// session (a batch of one to `…/batch`); prints one JSON line per answer. A client that sees
/// a reset instead of the answer raises: exit 1.
const PLAIN_CLIENTS: &str = r#"
import json, sys, urllib.error, urllib.request
import requests

url, key = sys.argv[1], sys.argv[2]
body = b"x" * (8 << 20)

def via_urllib(k):
    req = urllib.request.Request(url, data=body, headers={"Authorization": "Bearer " + k})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()

def via_requests(k):
    r = requests.post(url, data=body, headers={"Authorization": "Bearer " + k}, timeout=30)
    return r.status_code, r.text

for client, send in [("urllib", via_urllib), ("requests", via_requests)]:
    for k in [key, "wrong-key"]:
        status, text = send(k)
        print(json.dumps({"client": client, "key_ok": k == key, "status": status, "body": text}))

session = requests.Session()
event = {"users": [9], "event": {"type": "message", "location": "/m", "data": {}}}
valid = {"items": [event]} if url.endswith("/batch") else event
for _ in range(2):
    r = session.post(url, json=valid, headers={"Authorization": "Bearer " + key}, timeout=30)
    print(json.dumps({"client": "session", "key_ok": True, "status": r.status_code, "body": r.text}))
"#;

#[tokio::test]
async fn refusals_are_read_by_urllib_and_requests_while_they_send_the_body() -> Result<()> {
    let gw =
        Gateway::start(GatewayOptions::default().arg(&["--max-publish-body", "65536"])).await?;
    for route in ROUTES {
        let url = format!("http://{}{route}", gw.admin);
        let out = python::run(PLAIN_CLIENTS, &[&url, API_KEY]).await?;
        let answers: Vec<serde_json::Value> = out
            .lines()
            .map(serde_json::from_str)
            .collect::<Result<_, _>>()
            .with_context(|| format!("python output for {route}: {out}"))?;
        ensure!(answers.len() == 6, "python output for {route}: {out}");
        for answer in &answers {
            let want = match (answer["client"].as_str(), answer["key_ok"].as_bool()) {
                (Some("session"), _) => 200,
                (_, Some(true)) => 413,
                _ => 401,
            };
            ensure!(answer["status"] == want, "{route}: want {want}: {answer}");
            let body: serde_json::Value =
                serde_json::from_str(answer["body"].as_str().unwrap_or(""))?;
            ensure!(
                want == 200 || body["error"].is_string(),
                "{route}: no JSON error: {answer}"
            );
        }
    }
    Ok(())
}

#[tokio::test]
async fn dropped_connections_are_logged_at_a_bounded_rate() -> Result<()> {
    const GARBAGE: usize = 100;
    let gw = Gateway::start(GatewayOptions::default()).await?;
    let start = Instant::now();
    let logged_before = gw.logs().len();
    for _ in 0..GARBAGE {
        let mut stream = open(&gw, b"GARBAGE\r\n\r\n").await?;
        closed_within(&mut stream, LIMIT).await?;
    }
    wait_metric(&gw, &dropped("error"), GARBAGE as f64).await?;
    let seconds = start.elapsed().as_secs();
    let loud = |logs: &[String]| {
        logs[logged_before..]
            .iter()
            .filter(|l| l.contains(r#""level":"WARN""#) || l.contains(r#""level":"ERROR""#))
            .cloned()
            .collect::<Vec<_>>()
    };
    eventually(LIMIT, "a dropped connection is logged", || async {
        let lines = loud(&gw.logs());
        ensure!(lines.iter().any(|l| l.contains("admin connection dropped")));
        Ok(())
    })
    .await?;
    // At most one line per second (the first one at once).
    let lines = loud(&gw.logs());
    ensure!(
        lines.len() as u64 <= seconds + 2,
        "{} warning lines for {GARBAGE} bad requests in {seconds} s: {lines:#?}",
        lines.len()
    );
    Ok(())
}
