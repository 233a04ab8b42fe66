//! Protocol adapters served: one listener per `[[plugins.adapter]]` entry, one task per
//! connection running its session in the adapter's wasm instance (see [`driver`]), and
//! what the sessions of a node share ([`hub`]: claimed names, delayed wills, retained
//! messages).
//!
//! # Layout
//! - [`driver`]: one connection's task.
//! - [`hub`]: names, wills and retained messages shared by a node's adapter sessions.
//! - [`retained_file`]: the retained messages saved in the data directory.

pub mod driver;
pub mod hub;
pub mod retained_file;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{info, warn};
use warren_plugin_host::AdapterPlugin;

use crate::node::NodeRef;

/// What one adapter listener has done, for `/metrics`.
#[derive(Debug, Default)]
pub struct AdapterStats {
    open: AtomicU64,
    accepted: AtomicU64,
    refused: AtomicU64,
    received: AtomicU64,
    sent: AtomicU64,
}

impl AdapterStats {
    /// Connections open now.
    pub fn open(&self) -> u64 {
        self.open.load(Ordering::Relaxed)
    }
    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
    /// Connections refused at accept (max-connections) or at open (no instance).
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
    /// Octets read from clients.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }
    /// Octets written to clients.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }
    pub(crate) fn add_received(&self, n: usize) {
        self.received.fetch_add(n as u64, Ordering::Relaxed);
    }
    pub(crate) fn add_sent(&self, n: usize) {
        self.sent.fetch_add(n as u64, Ordering::Relaxed);
    }
    pub(crate) fn refused_one(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }
}

/// Counts a connection open while it lives.
pub(crate) struct OpenConnection(Arc<AdapterStats>);

impl OpenConnection {
    pub(crate) fn new(stats: Arc<AdapterStats>) -> Self {
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        stats.open.fetch_add(1, Ordering::Relaxed);
        OpenConnection(stats)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What every connection of one adapter listener shares.
pub struct Context {
    /// The adapter.
    pub plugin: Arc<AdapterPlugin>,
    /// The node's adapter state.
    pub hub: Arc<hub::Hub>,
    /// The node.
    pub node: NodeRef,
    /// The protocol's name (logs, metrics, claimed names' namespace).
    pub protocol: Arc<str>,
    /// Time 0 of the sessions' clock.
    pub epoch: Instant,
    /// How long a write may make no progress before the connection is dropped.
    pub write_timeout: Duration,
    /// The listener's counters.
    pub stats: Arc<AdapterStats>,
}

impl Context {
    /// Milliseconds since [`Context::epoch`].
    pub fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }
}

/// A bound adapter listener, ready to serve.
pub struct Listener {
    /// The socket.
    pub socket: TcpListener,
    /// The TLS socket and its acceptor, when `tls-listen` is set.
    pub tls: Option<(TcpListener, tokio_rustls::TlsAcceptor)>,
    /// The adapter.
    pub plugin: Arc<AdapterPlugin>,
    /// Most connections at once.
    pub max_connections: usize,
    /// Its counters.
    pub stats: Arc<AdapterStats>,
}

impl Listener {
    /// The address it is bound to.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.socket.local_addr()
    }
}

/// Accepts connections until `stop`, then waits (up to `close_timeout`) for them to end.
pub async fn serve(
    listener: Listener,
    node: NodeRef,
    hub: Arc<hub::Hub>,
    write_timeout: Duration,
    close_timeout: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let protocol: Arc<str> = listener.plugin.name().into();
    let ctx = Arc::new(Context {
        plugin: listener.plugin,
        hub,
        node,
        protocol: protocol.clone(),
        epoch: Instant::now(),
        write_timeout,
        stats: listener.stats.clone(),
    });
    let slots = Arc::new(Semaphore::new(listener.max_connections));
    let mut tasks = JoinSet::new();
    if let Ok(addr) = listener.socket.local_addr() {
        info!(%protocol, %addr, "adapter listener serving");
    }
    if let Some(Ok(addr)) = listener.tls.as_ref().map(|(l, _)| l.local_addr()) {
        info!(%protocol, %addr, "adapter listener serving over TLS");
    }
    loop {
        let (accepted, tls) = tokio::select! {
            accepted = listener.socket.accept() => (accepted, None),
            Some((accepted, acceptor)) = accept_tls(&listener.tls) => (accepted, Some(acceptor)),
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
            _ = stop.changed() => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                warn!(%protocol, error = %e, "adapter accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Over the cap the connection is closed at once: it costs nothing more.
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            ctx.stats.refused_one();
            warn!(%protocol, %peer, "adapter connection refused: max-connections reached");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let local = stream.local_addr().unwrap_or(peer);
        let (ctx, stop) = (ctx.clone(), stop.clone());
        tasks.spawn(async move {
            let open = OpenConnection::new(ctx.stats.clone());
            match tls {
                None => driver::drive(driver::Transport::Tcp(stream), peer, local, ctx, stop, None).await,
                Some(acceptor) => match tokio::time::timeout(TLS_HANDSHAKE, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        let identity = crate::tls::peer_identity(tls.get_ref().1);
                        let transport = driver::Transport::Tls(Box::new(tls));
                        driver::drive(transport, peer, local, ctx, stop, identity).await
                    }
                    Ok(Err(e)) => info!(%peer, error = %e, "adapter TLS handshake failed"),
                    Err(_) => info!(%peer, "adapter TLS handshake timed out"),
                },
            }
            drop((open, slot));
        });
    }
    let drained = tokio::time::timeout(close_timeout, async { while tasks.join_next().await.is_some() {} });
    if drained.await.is_err() {
        tasks.abort_all();
    }
}

/// How long a TLS handshake on an adapter listener may take.
const TLS_HANDSHAKE: Duration = Duration::from_secs(10);

/// The next connection on the TLS listener, with its acceptor; never without one.
async fn accept_tls(
    tls: &Option<(TcpListener, tokio_rustls::TlsAcceptor)>,
) -> Option<(std::io::Result<(tokio::net::TcpStream, SocketAddr)>, tokio_rustls::TlsAcceptor)> {
    match tls {
        Some((l, a)) => Some((l.accept().await, a.clone())),
        None => std::future::pending().await,
    }
}

/// Reads the retained messages saved in `data_dir` into `hub`; returns whether they may be
/// saved there later. A damaged file keeps the records it holds whole and is set aside
/// under a name of its own, never overwritten; a file that cannot be read at all (an I/O
/// error) is left alone, and nothing is saved over it until a restart reads it.
pub fn restore_retained(hub: &hub::Hub, data_dir: &std::path::Path) -> bool {
    let path = retained_file::path(data_dir);
    let (entries, damaged) = match retained_file::load(&path) {
        Ok(entries) => (entries, false),
        Err((_, e @ retained_file::ReadError::Io { .. })) => {
            tracing::error!(error = %e, "retained messages not read; they will not be saved until a restart reads them");
            return false;
        }
        Err((entries, e)) => {
            tracing::error!(error = %e, kept = entries.len(), "retained messages file damaged; the records read whole are kept");
            let stamp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis());
            let aside = path.with_extension(format!("bin.damaged-{stamp}"));
            if let Err(e) = std::fs::rename(&path, &aside) {
                tracing::error!(error = %e, "cannot set the damaged retained messages file aside; nothing is saved over it");
                return false;
            }
            (entries, true)
        }
    };
    let n = entries.len();
    for (vhost, m) in entries {
        if let Err(e) = hub.retain(&vhost, m) {
            warn!(%vhost, error = %e, "a saved retained message is over the limits; not kept");
        }
    }
    if n > 0 {
        info!(messages = n, "retained messages restored");
    }
    // What was just read is what the file holds, unless the file was set aside: then what
    // was kept of it must be saved anew.
    let _ = hub.retained_if_changed();
    if damaged {
        hub.retained_unsaved();
    }
    true
}

/// Saves the retained messages of `hub` in `data_dir` when they changed, every `every`,
/// until `stop` (sent once every adapter connection has ended); then once more.
pub async fn save_retained(
    hub: Arc<hub::Hub>,
    data_dir: std::path::PathBuf,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let stopping = tokio::select! {
            () = tokio::time::sleep(every) => false,
            _ = stop.changed() => true,
        };
        if let Some(entries) = hub.retained_if_changed() {
            let path = retained_file::path(&data_dir);
            let saved = tokio::task::spawn_blocking(move || {
                let bytes = retained_file::encode(&entries);
                retained_file::save(&path, &bytes)
            })
            .await;
            match saved {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "retained messages not saved; trying again");
                    hub.retained_unsaved();
                }
                Err(e) => {
                    tracing::error!(error = %e, "retained messages not saved; trying again");
                    hub.retained_unsaved();
                }
            }
        }
        if stopping {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_damaged_retained_file_is_set_aside_and_what_it_kept_is_saved_anew() {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = Arc::new(warren_core::message::Message {
            exchange: "amq.topic".into(),
            routing_key: "a".into(),
            properties: Box::default(),
            body: bytes::Bytes::from_static(b"kept"),
        });
        let mut bytes = retained_file::encode(&[("/".to_string(), m)]);
        bytes.extend_from_slice(&[0, 0, 0, 9, 1]);
        let path = retained_file::path(dir.path());
        std::fs::write(&path, &bytes).expect("write");
        let hub = hub::Hub::default();
        assert!(restore_retained(&hub, dir.path()), "saving goes on over a file set aside");
        assert!(!path.exists(), "set aside, not overwritten");
        let aside = std::fs::read_dir(dir.path()).expect("dir").filter_map(Result::ok).count();
        assert_eq!(aside, 1, "the damaged file is kept under its own name");
        let again = hub.retained_if_changed().expect("what was kept is to be saved anew");
        assert_eq!(&again[0].1.body[..], b"kept");
    }
}
