//! AMQPS: rustls server configuration from PEM files, on the ring provider, with optional
//! client-certificate verification, and the identity a client certificate gives for EXTERNAL.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;

/// `[tls]`: the server certificate, and optionally a CA for client certificates.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TlsConfig {
    /// PEM certificate chain, server certificate first.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// PEM CA bundle that client certificates must chain to; enables mutual TLS and EXTERNAL.
    pub ca: Option<PathBuf>,
    /// With `ca`: refuse clients without a certificate (RabbitMQ's `fail_if_no_peer_cert`).
    #[serde(default)]
    pub fail_if_no_peer_cert: bool,
}

/// Why TLS could not be set up; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or held nothing usable.
    #[error("TLS {what} {path}: {reason}")]
    File {
        /// Which file: certificate, key or CA.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// rustls refused the combination.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client verifier could not be built from the CA file.
    #[error("TLS client verification: {0}")]
    Verifier(String),
}

fn file_error(what: &'static str, path: &Path, reason: impl ToString) -> TlsError {
    TlsError::File { what, path: path.to_path_buf(), reason: reason.to_string() }
}

fn certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(what, path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(what, path, e))?;
    if certs.is_empty() {
        return Err(file_error(what, path, "no PEM certificate in it"));
    }
    Ok(certs)
}

/// The rustls configuration for the AMQPS listener.
pub fn server_config(t: &TlsConfig) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = certs("certificate", &t.cert)?;
    let key = PrivateKeyDer::from_pem_file(&t.key).map_err(|e| file_error("key", &t.key, e))?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match client_verifier(t)? {
        None => builder.with_no_client_auth(),
        Some(verifier) => builder.with_client_cert_verifier(verifier),
    };
    Ok(Arc::new(builder.with_single_cert(chain, key)?))
}

/// How client certificates are checked on every listener that accepts logins (AMQPS and
/// QUIC alike): against `ca`, required when `fail_if_no_peer_cert`. `None` without a CA.
pub fn client_verifier(
    t: &TlsConfig,
) -> Result<Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>, TlsError> {
    let Some(ca) = &t.ca else {
        return Ok(None);
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for c in certs("CA", ca)? {
        roots.add(c).map_err(|e| file_error("CA", ca, e))?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
    let verifier = if t.fail_if_no_peer_cert { verifier } else { verifier.allow_unauthenticated() };
    Ok(Some(verifier.build().map_err(|e| TlsError::Verifier(e.to_string()))?))
}

/// The subject common name of a verified client certificate: the user EXTERNAL logs in as.
pub fn peer_identity(conn: &rustls::ServerConnection) -> Option<String> {
    common_name(conn.peer_certificates()?.first()?)
}

/// The subject common name of a certificate.
pub fn common_name(der: &rustls_pki_types::CertificateDer<'_>) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_string)
}

/// Mutual TLS between cluster members: the node's certificate and key from `[tls]`, both
/// ways; a peer's certificate must chain to `ca` (a dialer's, and a listener's, which must
/// also name the IP address it was dialed at).
pub fn cluster_tls(t: &TlsConfig, ca: &Path) -> Result<warren_cluster::transport::Tls, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = certs("certificate", &t.cert)?;
    let key = PrivateKeyDer::from_pem_file(&t.key).map_err(|e| file_error("key", &t.key, e))?;
    let mut roots = RootCertStore::empty();
    for c in certs("cluster CA", ca)? {
        roots.add(c).map_err(|e| file_error("cluster CA", ca, e))?;
    }
    let roots = Arc::new(roots);
    let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), key.clone_key())?;
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    Ok(warren_cluster::transport::Tls { server: Arc::new(server), client: Arc::new(client) })
}
