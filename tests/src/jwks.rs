//! Asymmetric JWTs for tests: key pairs from `tests/fixtures/jwt` (see its README), tokens signed
//! with them, and a JWKS document served on loopback by the test itself, over HTTP or HTTPS
//! (with a certificate of a [`TestCa`]), whose keys, status and request count the test controls.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use base64::Engine;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::TlsAcceptor;

/// Longest a served connection lives (a stalled one, a TLS handshake), so no task outlives a test.
const CONNECTION_LIMIT: Duration = Duration::from_secs(30);

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

/// A certificate authority made for one test (a fresh key each time), which signs the HTTPS JWKS
/// server's certificate; its certificate is written to a PEM file for `SSL_CERT_FILE`, removed on
/// drop.
pub struct TestCa {
    /// The CA certificate (PEM), the file to point `SSL_CERT_FILE` at.
    pub pem_file: PathBuf,
    issuer: Issuer<'static, KeyPair>,
}

impl TestCa {
    /// A new self-signed CA named `name`.
    pub fn new(name: &str) -> Result<TestCa> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let mut params = CertificateParams::new(Vec::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pem_file =
            std::env::temp_dir().join(format!("gp-ca-{}-{n}-{name}.pem", std::process::id()));
        std::fs::write(&pem_file, cert.pem())
            .with_context(|| format!("writing {}", pem_file.display()))?;
        Ok(TestCa {
            pem_file,
            issuer: Issuer::new(params, key),
        })
    }

    /// A TLS server set-up with a certificate this CA signed for `127.0.0.1` and `localhost`.
    fn server_config(&self) -> Result<Arc<ServerConfig>> {
        let mut params = CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])?;
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let chain: Vec<CertificateDer<'static>> = vec![cert.der().clone()];
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
        Ok(Arc::new(config))
    }
}

impl Drop for TestCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.pem_file);
    }
}

struct Served {
    status: u16,
    body: String,
    /// Accept connections and never answer (not even a TLS handshake).
    stalled: bool,
}

/// A server on 127.0.0.1 answering every request with the current document (or status).
pub struct JwksServer {
    /// `http[s]://127.0.0.1:<port>/.well-known/jwks.json`.
    pub url: String,
    served: Arc<Mutex<Served>>,
    requests: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl JwksServer {
    /// Serve `keys` over HTTP (on the current Tokio runtime).
    pub async fn start(keys: &[&TestKey]) -> Result<JwksServer> {
        JwksServer::serve(keys, None).await
    }

    /// Serve `keys` over HTTPS with a certificate `ca` signed for 127.0.0.1 and localhost.
    pub async fn start_https(keys: &[&TestKey], ca: &TestCa) -> Result<JwksServer> {
        JwksServer::serve(keys, Some(TlsAcceptor::from(ca.server_config()?))).await
    }

    async fn serve(keys: &[&TestKey], tls: Option<TlsAcceptor>) -> Result<JwksServer> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let url = format!(
            "{scheme}://{}/.well-known/jwks.json",
            listener.local_addr()?
        );
        let served = Arc::new(Mutex::new(Served {
            status: 200,
            body: document(keys)?,
            stalled: false,
        }));
        let requests = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn({
            let (served, requests) = (served.clone(), requests.clone());
            async move {
                while let Ok((mut stream, _)) = listener.accept().await {
                    let (served, requests, tls) = (served.clone(), requests.clone(), tls.clone());
                    tokio::spawn(tokio::time::timeout(CONNECTION_LIMIT, async move {
                        let stalled = served
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .stalled;
                        if stalled {
                            // Read what the client sends (its TLS hello) until it gives up.
                            let mut buf = [0u8; 1024];
                            while let Ok(1..) = stream.read(&mut buf).await {}
                            return;
                        }
                        match tls {
                            Some(tls) => {
                                if let Ok(stream) = tls.accept(stream).await {
                                    answer(stream, &served, &requests).await;
                                }
                            }
                            None => answer(stream, &served, &requests).await,
                        }
                    }));
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
        *served = Served {
            status: 200,
            body,
            stalled: false,
        };
        Ok(())
    }

    /// Accept connections but never answer them, not even the TLS handshake (a hung server),
    /// until [`JwksServer::set_keys`].
    pub fn stall(&self) {
        self.served
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .stalled = true;
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

/// Read one request head from `stream` and answer it with the served document (or status).
async fn answer<S>(mut stream: S, served: &Mutex<Served>, requests: &AtomicU64)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
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
}
