//! TLS of `https://` JWKS URLs: rustls with the `ring` provider, the server's certificate checked
//! against the platform's root certificates (`rustls-native-certs`: the system store, or only the
//! PEM certificates of `SSL_CERT_FILE` / the directories of `SSL_CERT_DIR` when either is set),
//! loaded once at start-up.

use std::sync::Arc;

use rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

/// A TLS client that trusts the platform's root certificates. An error when none could be
/// loaded (a machine without a CA bundle), when `SSL_CERT_FILE` / `SSL_CERT_DIR` name something
/// that cannot be read (an operator's explicit choice, so not skipped with a warning), or when
/// rustls refuses the setup.
pub(super) fn connector() -> Result<TlsConnector, String> {
    let file = std::env::var_os("SSL_CERT_FILE");
    let dir = std::env::var_os("SSL_CERT_DIR").filter(|d| !d.is_empty());
    let source = match (&file, &dir) {
        (None, None) => "the system store".to_owned(),
        (Some(file), None) => format!("SSL_CERT_FILE {file:?}"),
        (None, Some(dir)) => format!("SSL_CERT_DIR {dir:?}"),
        (Some(file), Some(dir)) => format!("SSL_CERT_FILE {file:?} and SSL_CERT_DIR {dir:?}"),
    };
    let found = rustls_native_certs::load_native_certs();
    let errors: Vec<String> = found.errors.iter().map(ToString::to_string).collect();
    if !errors.is_empty() && (file.is_some() || dir.is_some()) {
        return Err(format!(
            "reading the root certificates of {source} for the https:// URL: {errors:?}"
        ));
    }
    for error in &errors {
        tracing::warn!(%error, "loading root certificates for the JWKS URL");
    }
    let mut roots = RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err(format!(
            "no trusted root certificates in {source} for the https:// URL ({ignored} \
             unusable; install the CA bundle, e.g. Debian's ca-certificates, or point \
             SSL_CERT_FILE at a PEM file of the CA certificates to trust)"
        ));
    }
    tracing::info!(added, ignored, %source, "JWKS TLS root certificates loaded");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsConnector::from(Arc::new(config)))
}
