//! `warren bridge`: lets any AMQP client use QUIC unchanged. It accepts plain AMQP on a local
//! TCP port and carries each TCP connection over its own stream of one QUIC connection to the
//! broker (reconnecting when that QUIC connection drops).

use std::net::SocketAddr;
use std::path::Path;

use anyhow::Context;
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::quic;

/// Parses `quic://HOST:PORT` into the host (the TLS server name) and the address.
pub async fn resolve(url: &str) -> anyhow::Result<(String, SocketAddr)> {
    let rest =
        url.strip_prefix("quic://").with_context(|| format!("'{url}' is not a quic://HOST:PORT address"))?;
    let host = rest.rsplit_once(':').map(|(h, _)| h).unwrap_or(rest).trim_matches(['[', ']']).to_string();
    let addr = tokio::net::lookup_host(rest)
        .await
        .with_context(|| format!("cannot resolve {rest}"))?
        .next()
        .with_context(|| format!("{rest} resolves to no address"))?;
    Ok((host, addr))
}

/// Serves the bridge until the process stops.
pub async fn run(listener: TcpListener, to: &str, ca: &Path) -> anyhow::Result<()> {
    let (host, addr) = resolve(to).await?;
    let endpoint = quic::client_endpoint(ca)?;
    let mut quic: Option<quinn::Connection> = None;
    info!(listen = %listener.local_addr()?, to = %addr, "bridging AMQP over TCP to QUIC");
    loop {
        let (mut tcp, peer) = listener.accept().await?;
        let conn = match &quic {
            Some(c) if c.close_reason().is_none() => c.clone(),
            _ => {
                let c = match endpoint.connect(addr, &host)?.await {
                    Ok(c) => c,
                    Err(e) => {
                        warn!(error = %e, "QUIC connection to the broker failed");
                        continue;
                    }
                };
                quic = Some(c.clone());
                c
            }
        };
        tokio::spawn(async move {
            let (send, recv) = match conn.open_bi().await {
                Ok(s) => s,
                Err(e) => return warn!(%peer, error = %e, "cannot open a QUIC stream"),
            };
            let mut stream = tokio::io::join(recv, send);
            if let Err(e) = tokio::io::copy_bidirectional(&mut tcp, &mut stream).await {
                info!(%peer, error = %e, "bridged connection ended");
            }
        });
    }
}
