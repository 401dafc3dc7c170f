//! Asymmetric JWTs for tests: key pairs from `tests/fixtures/jwt` (see its README), tokens signed
//! with them, and a JWKS document served on loopback by the test itself, whose keys, status and
//! request count the test controls.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use base64::Engine;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A fixture file's path.
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/jwt")
        .join(name)
}

/// The DER bytes of a PEM file's first block.
fn pem_der(name: &str) -> Result<Vec<u8>> {
    let text = std::fs::read_to_string(fixture(name)).with_context(|| name.to_string())?;
    let body: String = text
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    Ok(base64::engine::general_purpose::STANDARD.decode(body)?)
}

/// A signing key of a fixture, published under `kid`.
#[derive(Clone)]
pub struct TestKey {
    /// Its algorithm.
    pub alg: Algorithm,
    /// Its key id in JWKS documents and token headers.
    pub kid: String,
    key: EncodingKey,
}

impl TestKey {
    /// `rsa-a`, `rsa-b` (RS256), `ec-a`, `ec-b` (ES256), `ed-a` (EdDSA), with `kid` = the name.
    pub fn load(name: &str) -> Result<TestKey> {
        let der = pem_der(&format!("{name}.key.pem"))?;
        let (alg, key) = match name.split('-').next() {
            Some("rsa") => (Algorithm::RS256, EncodingKey::from_rsa_der(&der)),
            Some("ec") => (Algorithm::ES256, EncodingKey::from_ec_der(&der)),
            Some("ed") => (Algorithm::EdDSA, EncodingKey::from_ed_der(&der)),
            _ => bail!("unknown fixture key {name}"),
        };
        Ok(TestKey {
            alg,
            kid: name.to_string(),
            key,
        })
    }

    /// The public half as a JWK (with `kid`, `alg` and `use: sig`).
    pub fn jwk(&self) -> Result<Value> {
        let mut jwk = serde_json::to_value(Jwk::from_encoding_key(&self.key, self.alg)?)?;
        jwk["kid"] = json!(self.kid);
        jwk["use"] = json!("sig");
        Ok(jwk)
    }

    /// A token with `claims`, its header naming this key's `kid` (`None`: no `kid`).
    pub fn sign(&self, claims: &Value, kid: Option<&str>) -> Result<String> {
        let mut header = Header::new(self.alg);
        header.kid = kid.map(str::to_owned);
        Ok(jsonwebtoken::encode(&header, claims, &self.key)?)
    }

    /// A token for `user`, valid for an hour, with this key's `kid` and `extra` claims merged in.
    pub fn token(&self, user: u64, extra: &Value) -> Result<String> {
        self.sign(&claims(user, extra), Some(&self.kid))
    }
}

/// `{"sub": user, "exp": now + 1 h}` with `extra` merged in.
pub fn claims(user: u64, extra: &Value) -> Value {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut claims = json!({"sub": user.to_string(), "exp": now + 3600});
    if let (Some(to), Some(from)) = (claims.as_object_mut(), extra.as_object()) {
        to.extend(from.clone());
    }
    claims
}

/// A JWKS document of these keys.
pub fn document(keys: &[&TestKey]) -> Result<String> {
    let keys = keys.iter().map(|k| k.jwk()).collect::<Result<Vec<_>>>()?;
    Ok(json!({ "keys": keys }).to_string())
}

struct Served {
    status: u16,
    body: String,
}

/// An HTTP server on 127.0.0.1 answering every request with the current document (or status).
pub struct JwksServer {
    /// `http://127.0.0.1:<port>/.well-known/jwks.json`.
    pub url: String,
    served: Arc<Mutex<Served>>,
    requests: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl JwksServer {
    /// Serve `keys` (on the current Tokio runtime).
    pub async fn start(keys: &[&TestKey]) -> Result<JwksServer> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/.well-known/jwks.json", listener.local_addr()?);
        let served = Arc::new(Mutex::new(Served {
            status: 200,
            body: document(keys)?,
        }));
        let requests = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn({
            let (served, requests) = (served.clone(), requests.clone());
            async move {
                while let Ok((mut stream, _)) = listener.accept().await {
                    let (served, requests) = (served.clone(), requests.clone());
                    tokio::spawn(async move {
                        let mut head = Vec::new();
                        let mut buf = [0u8; 1024];
                        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16384 {
                            match stream.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => head.extend_from_slice(&buf[..n]),
                            }
                        }
                        requests.fetch_add(1, Ordering::SeqCst);
                        let response = {
                            let served = served.lock().unwrap_or_else(PoisonError::into_inner);
                            let body = if served.status == 200 {
                                served.body.as_str()
                            } else {
                                "{\"error\":\"unavailable\"}"
                            };
                            format!(
                                "HTTP/1.1 {} X\r\nContent-Type: application/json\r\n\
                                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                                served.status,
                                body.len()
                            )
                        };
                        let _ = stream.write_all(response.as_bytes()).await;
                        let _ = stream.shutdown().await;
                    });
                }
            }
        });
        Ok(JwksServer {
            url,
            served,
            requests,
            task,
        })
    }

    /// Serve these keys from now on (status 200).
    pub fn set_keys(&self, keys: &[&TestKey]) -> Result<()> {
        let body = document(keys)?;
        let mut served = self.served.lock().unwrap_or_else(PoisonError::into_inner);
        *served = Served { status: 200, body };
        Ok(())
    }

    /// Answer every request with `status` (e.g. 503: an outage) until [`JwksServer::set_keys`].
    pub fn fail_with(&self, status: u16) {
        self.served
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .status = status;
    }

    /// Requests received so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
