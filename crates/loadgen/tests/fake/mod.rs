//! A minimal in-process stand-in for the gateway, enough to drive the load generator end to end:
//! WebSocket endpoints (JWT in the query or header, 401 otherwise; a ping right after the
//! upgrade), `POST /v1/publish`, `POST /v1/publish/batch` (per-item results; items for
//! [`REFUSED_USER`] are refused) and a RESP listener accepting `PUBLISH c:<uid> <json>`.
//! Every endpoint shares one user → connections table, like several gateway nodes on one broker.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::Message;

pub const SECRET: &str = "test-secret";
pub const API_KEY: &str = "test-api-key";
/// Connections of this user are closed by the server (code 1001) right after the upgrade.
pub const CLOSED_USER: u64 = 999;
/// Batch items addressed to this user get `{"error":…}` instead of being published.
pub const REFUSED_USER: u64 = 7;

type Routes = Arc<Mutex<HashMap<u64, Vec<mpsc::UnboundedSender<String>>>>>;

/// Handles and counters of a running fake gateway.
pub struct Fake {
    /// WebSocket URLs (two "nodes").
    pub ws_urls: Vec<String>,
    /// Admin base URL.
    pub admin_url: String,
    /// Redis URL of the RESP stand-in.
    pub redis_url: String,
    /// Pongs received from clients.
    pub pongs: Arc<AtomicU64>,
    /// Successful upgrades.
    pub upgrades: Arc<AtomicU64>,
    /// Batch publish requests, their items, and the most items seen in one.
    pub batches: Arc<BatchCounts>,
}

/// What `POST /v1/publish/batch` received.
#[derive(Debug, Default)]
pub struct BatchCounts {
    /// Requests answered 200.
    pub requests: AtomicU64,
    /// Items in them.
    pub items: AtomicU64,
    /// Most items in one request.
    pub max_items: AtomicU64,
}

async fn listen() -> (TcpListener, SocketAddr) {
    // A large backlog: `TcpListener::bind` uses 128, which overflows under connect bursts
    // (dropped SYNs retried after 1 s).
    let s = tokio::net::TcpSocket::new_v4().expect("socket");
    s.bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
    let l = s.listen(4096).expect("listen");
    let a = l.local_addr().expect("addr");
    (l, a)
}

/// Starts two WebSocket listeners, the publish API and the RESP listener. Each publish request
/// waits `publish_delay` before it delivers and answers (a slow publish API).
pub async fn start(publish_delay: Duration) -> Fake {
    let routes: Routes = Arc::default();
    let pongs = Arc::new(AtomicU64::new(0));
    let upgrades = Arc::new(AtomicU64::new(0));
    let mut ws_urls = Vec::new();
    for _ in 0..2 {
        let (l, a) = listen().await;
        ws_urls.push(format!("ws://{a}/ws"));
        let (routes, pongs, upgrades) = (routes.clone(), pongs.clone(), upgrades.clone());
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                let (routes, pongs, upgrades) = (routes.clone(), pongs.clone(), upgrades.clone());
                tokio::spawn(ws_conn(s, routes, pongs, upgrades));
            }
        });
    }
    let (l, a) = listen().await;
    let admin_url = format!("http://{a}");
    let r = routes.clone();
    let batches = Arc::new(BatchCounts::default());
    let b = batches.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let (r, b) = (r.clone(), b.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req| publish(req, r.clone(), b.clone(), publish_delay));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    let (l, a) = listen().await;
    let redis_url = format!("redis://{a}");
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(resp_conn(s, routes.clone()));
        }
    });
    Fake {
        ws_urls,
        admin_url,
        redis_url,
        pongs,
        upgrades,
        batches,
    }
}

fn user_of(req: &Request) -> Option<u64> {
    let from_query = req.uri().query().and_then(|q| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix("access_token="))
            .map(str::to_string)
    });
    let from_header = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    let token = from_query.or(from_header)?;
    #[derive(serde::Deserialize)]
    struct Claims {
        sub: String,
    }
    let key = jsonwebtoken::DecodingKey::from_secret(SECRET.as_bytes());
    let v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    let data = jsonwebtoken::decode::<Claims>(&token, &key, &v).ok()?;
    data.claims.sub.parse().ok()
}

// The handshake callback's signature is fixed by tungstenite.
#[allow(clippy::result_large_err)]
async fn ws_conn(s: TcpStream, routes: Routes, pongs: Arc<AtomicU64>, upgrades: Arc<AtomicU64>) {
    let user = Arc::new(Mutex::new(None));
    let u2 = user.clone();
    let cb = move |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        match user_of(req) {
            Some(u) => {
                *u2.lock().unwrap() = Some(u);
                Ok(resp)
            }
            None => {
                let mut r = ErrorResponse::new(Some(r#"{"error":"Invalid credentials"}"#.into()));
                *r.status_mut() = http::StatusCode::UNAUTHORIZED;
                Err(r)
            }
        }
    };
    let Ok(ws) = tokio_tungstenite::accept_hdr_async(s, cb).await else {
        return;
    };
    upgrades.fetch_add(1, Ordering::Relaxed);
    let Some(user) = *user.lock().unwrap() else {
        return;
    };
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    routes.lock().unwrap().entry(user).or_default().push(tx);
    let (mut sink, mut stream) = ws.split();
    let ping = Message::Ping(Bytes::from_static(b"hb"));
    if sink.send(ping).await.is_err() {
        return;
    }
    if user == CLOSED_USER {
        let frame = tokio_tungstenite::tungstenite::protocol::CloseFrame {
            code: 1001.into(),
            reason: "going away".into(),
        };
        let _ = sink.send(Message::Close(Some(frame))).await;
    }
    tokio::spawn(async move {
        while let Some(Ok(m)) = stream.next().await {
            if let Message::Pong(p) = m {
                assert_eq!(&p[..], b"hb");
                pongs.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    while let Some(text) = rx.recv().await {
        if sink.send(Message::Text(text.into())).await.is_err() {
            return;
        }
    }
}

fn deliver(routes: &Routes, user: u64, event: &str) -> usize {
    let routes = routes.lock().unwrap();
    let conns = routes.get(&user).map(Vec::as_slice).unwrap_or_default();
    conns
        .iter()
        .filter(|tx| tx.send(event.to_string()).is_ok())
        .count()
}

async fn publish(
    req: hyper::Request<hyper::body::Incoming>,
    routes: Routes,
    batches: Arc<BatchCounts>,
    delay: Duration,
) -> Result<hyper::Response<Full<Bytes>>, hyper::Error> {
    let reply = |status: u16, body: &str| {
        let mut r = hyper::Response::new(Full::new(Bytes::from(body.to_string())));
        *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
        Ok(r)
    };
    let authorized = req
        .headers()
        .get("authorization")
        .is_some_and(|v| v.as_bytes() == format!("Bearer {API_KEY}").as_bytes());
    let batch = match req.uri().path() {
        "/v1/publish" => false,
        "/v1/publish/batch" => true,
        _ => return reply(404, r#"{"error":"not found"}"#),
    };
    if !authorized {
        return reply(401, r#"{"error":"unauthorized"}"#);
    }
    let body = req.into_body().collect().await?.to_bytes();
    #[derive(serde::Deserialize)]
    struct Publish<'a> {
        users: Vec<u64>,
        #[serde(borrow)]
        event: &'a serde_json::value::RawValue,
    }
    #[derive(serde::Deserialize)]
    struct Batch<'a> {
        #[serde(borrow)]
        items: Vec<Publish<'a>>,
    }
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if !batch {
        let Ok(p) = serde_json::from_slice::<Publish>(&body) else {
            return reply(400, r#"{"error":"bad body"}"#);
        };
        for u in &p.users {
            deliver(&routes, *u, p.event.get());
        }
        return reply(200, r#"{"ok":true}"#);
    }
    let Ok(b) = serde_json::from_slice::<Batch>(&body) else {
        return reply(400, r#"{"error":"bad body"}"#);
    };
    let mut published = 0;
    let mut results = Vec::with_capacity(b.items.len());
    for item in &b.items {
        if item.users.contains(&REFUSED_USER) {
            results.push(serde_json::json!({ "error": "refused by the fake" }));
            continue;
        }
        let mut ids = serde_json::Map::new();
        let mut online = serde_json::Map::new();
        for u in &item.users {
            let n = deliver(&routes, *u, item.event.get());
            ids.insert(u.to_string(), format!("{published}-0").into());
            online.insert(u.to_string(), (n > 0).into());
            published += 1;
        }
        results.push(serde_json::json!({
            "published": item.users.len(), "ids": ids, "online": online,
        }));
    }
    let n = b.items.len() as u64;
    batches.requests.fetch_add(1, Ordering::Relaxed);
    batches.items.fetch_add(n, Ordering::Relaxed);
    batches.max_items.fetch_max(n, Ordering::Relaxed);
    let body = serde_json::json!({ "published": published, "results": results });
    reply(200, &body.to_string())
}

async fn resp_conn(s: TcpStream, routes: Routes) {
    let (r, mut w) = s.into_split();
    let mut r = BufReader::new(r);
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        let n: usize = line
            .trim_start_matches('*')
            .trim()
            .parse()
            .expect("RESP array");
        let mut parts = Vec::with_capacity(n);
        for _ in 0..n {
            line.clear();
            r.read_line(&mut line).await.expect("bulk header");
            let len: usize = line
                .trim_start_matches('$')
                .trim()
                .parse()
                .expect("bulk len");
            let mut b = vec![0u8; len + 2];
            r.read_exact(&mut b).await.expect("bulk");
            b.truncate(len);
            parts.push(String::from_utf8(b).expect("utf8"));
        }
        let reply = match parts.first().map(String::as_str) {
            Some("PUBLISH") if parts.len() == 3 => {
                let user = parts[1].strip_prefix("c:").and_then(|u| u.parse().ok());
                let n = user.map_or(0, |u| deliver(&routes, u, &parts[2]));
                format!(":{n}\r\n")
            }
            _ => "-ERR unknown command\r\n".to_string(),
        };
        if w.write_all(reply.as_bytes()).await.is_err() {
            return;
        }
    }
}
