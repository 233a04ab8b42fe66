//! AMQP over QUIC, mapping v1: each bidirectional QUIC stream carries one complete AMQP 0-9-1
//! connection, protocol header and all, so the connection machine serves TCP, TLS and QUIC
//! unchanged. Several AMQP connections may share one QUIC connection, one per stream.
//! ALPN is `amqp091`. 0-RTT is off (a replayed publish would be a duplicate message);
//! connection migration is quinn's default (on). See `QUIC.md` beside this crate.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::tls::TlsConfig;

/// The ALPN protocol id clients must offer.
pub const ALPN: &[u8] = b"amqp091";

/// Why QUIC could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum QuicError {
    /// A certificate or key file could not be read or written; names the file.
    #[error("QUIC certificate {path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// rustls or quinn refused the configuration.
    #[error("QUIC configuration: {0}")]
    Config(String),
}

fn file_error(path: &Path, e: impl ToString) -> QuicError {
    QuicError::File { path: path.to_path_buf(), reason: e.to_string() }
}

/// The certificate QUIC serves: the `[tls]` one, or a self-signed one kept in
/// `data_dir/quic/` (made at first start, reused after). Returns the chain, the key, and the
/// certificate file clients can trust (`--ca`).
pub fn certificate(
    data_dir: &Path,
    tls: Option<&TlsConfig>,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>, PathBuf), QuicError> {
    let (cert, key) = match tls {
        Some(t) => (t.cert.clone(), t.key.clone()),
        None => {
            let dir = data_dir.join("quic");
            let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
            if !cert.exists() || !key.exists() {
                make_self_signed(&dir, &cert, &key)?;
                tracing::info!(cert = %cert.display(), "made a self-signed certificate for QUIC");
            }
            (cert, key)
        }
    };
    let chain = CertificateDer::pem_file_iter(&cert)
        .map_err(|e| file_error(&cert, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(&cert, e))?;
    let private = PrivateKeyDer::from_pem_file(&key).map_err(|e| file_error(&key, e))?;
    Ok((chain, private, cert))
}

fn make_self_signed(dir: &Path, cert: &Path, key: &Path) -> Result<(), QuicError> {
    std::fs::create_dir_all(dir).map_err(|e| file_error(dir, e))?;
    let names = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
    let signed = rcgen::generate_simple_self_signed(names).map_err(|e| QuicError::Config(e.to_string()))?;
    std::fs::write(key, signed.signing_key.serialize_pem()).map_err(|e| file_error(key, e))?;
    std::fs::write(cert, signed.cert.pem()).map_err(|e| file_error(cert, e))?;
    Ok(())
}

/// A QUIC endpoint serving `chain`/`key` on `addr` with ALPN `amqp091`.
///
/// With `clients`, client certificates are checked as on the AMQPS listener (the same CA and
/// `fail-if-no-peer-cert`), so QUIC is no way around them.
pub fn server_endpoint(
    addr: SocketAddr,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    clients: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
) -> Result<quinn::Endpoint, QuicError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| QuicError::Config(e.to_string()))?;
    let builder = match clients {
        Some(verifier) => builder.with_client_cert_verifier(verifier),
        None => builder.with_no_client_auth(),
    };
    let mut tls = builder.with_single_cert(chain, key).map_err(|e| QuicError::Config(e.to_string()))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    // max_early_data_size stays 0: no 0-RTT.
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| QuicError::Config(e.to_string()))?;
    let config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    quinn::Endpoint::server(config, addr).map_err(|e| QuicError::Config(format!("bind {addr}: {e}")))
}

/// The subject common name of the client certificate a QUIC peer presented (verified during
/// the handshake): the user EXTERNAL logs in as.
pub fn peer_identity(conn: &quinn::Connection) -> Option<String> {
    let certs = conn.peer_identity()?.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    crate::tls::common_name(certs.first()?)
}

/// A QUIC client endpoint trusting the certificates in `ca` (PEM), offering ALPN `amqp091`.
pub fn client_endpoint(ca: &Path) -> Result<quinn::Endpoint, QuicError> {
    client_endpoint_as(ca, None)
}

/// As [`client_endpoint`], presenting the client certificate `cert` with its `key` (PEM files)
/// when given: for a broker whose `[tls]` asks for one.
pub fn client_endpoint_as(ca: &Path, identity: Option<(&Path, &Path)>) -> Result<quinn::Endpoint, QuicError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).map_err(|e| file_error(ca, e))? {
        roots.add(cert.map_err(|e| file_error(ca, e))?).map_err(|e| file_error(ca, e))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| QuicError::Config(e.to_string()))?
        .with_root_certificates(roots);
    let mut tls = match identity {
        None => tls.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .map_err(|e| file_error(cert, e))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| file_error(cert, e))?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| file_error(key, e))?;
            tls.with_client_auth_cert(chain, key).map_err(|e| QuicError::Config(e.to_string()))?
        }
    };
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| QuicError::Config(e.to_string()))?;
    let bind: SocketAddr = SocketAddr::from(([0, 0, 0, 0], 0));
    let mut endpoint = quinn::Endpoint::client(bind).map_err(|e| QuicError::Config(e.to_string()))?;
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    Ok(endpoint)
}
