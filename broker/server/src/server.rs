//! The server: binds the listeners, builds the broker from the settings, and runs the
//! background tasks (timers, storage, memory watch, plugin reloads, HTTP endpoints) beside
//! one driver task per connection ([`crate::driver`]).
//!
//! One tokio task per connection runs the sans-IO [`warren_core::Connection`] machine against
//! the shared broker ([`crate::shared`]); decoding and encoding happen outside the lock, so
//! with one connection publishing and another consuming, both cores work.

use std::future::Future;
use std::hash::{BuildHasher, RandomState};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{info, warn};
use warren_core::broker::Census;
use warren_core::directory::SharedDirectory;
use warren_core::{Broker, BrokerConfig, ConnectionConfig};

use crate::config::Settings;
use crate::directory_file::DirectoryFile;
use crate::driver::drive;
use crate::listen::{accept_quic, accept_tcp, accept_tls, bind_dual_stack, serve_quic};
use crate::node::run_timers;
pub use crate::node::{Node, NodeRef};
pub use crate::services::Services;
pub use crate::shared::{Clock, Shared, SharedRef, SystemClock, lock};

/// What a server is built from: its bound listeners, the broker (its store attached and
/// recovered, or none), and the services beside it. [`Server::bind`] makes them from the
/// settings; a test can make its own (an in-memory store, no listener but one).
pub struct Parts {
    /// Plain AMQP over TCP; `None` for a TLS-only broker.
    pub listener: Option<TcpListener>,
    /// QUIC, with the certificate file clients can trust.
    pub quic: Option<(quinn::Endpoint, std::path::PathBuf)>,
    /// AMQP over TLS.
    pub amqps: Option<(TcpListener, tokio_rustls::TlsAcceptor)>,
    /// The management HTTP API.
    pub management: Option<TcpListener>,
    /// Prometheus `/metrics`.
    pub metrics: Option<TcpListener>,
    /// The broker model of `/`.
    pub broker: Broker,
    /// The brokers of the other vhosts, one each.
    pub vhost_brokers: Vec<Broker>,
    /// Where the broker's time comes from.
    pub clock: Arc<dyn Clock>,
    /// The durable store's threads, when the broker has a file store.
    pub storage: Option<crate::storage::Storage>,
    /// Handles shared without the lock.
    pub services: Services,
    /// SIGHUP, handled from the start on: a reload signal during start-up must not stop the
    /// broker (the default action for SIGHUP is to terminate).
    pub hangup: Option<tokio::signal::unix::Signal>,
    /// The data directory's lock, held while the server lives.
    pub data_lock: Option<std::fs::File>,
    /// Builds the broker of a vhost created at run time; `None`: vhosts are fixed at start.
    pub vhost_maker: Option<crate::node::VHostMaker>,
    /// Where directory changes are kept; `None`: they last as long as the process.
    pub directory_file: Option<DirectoryFile>,
    /// Protocol adapters' listeners (`[[plugins.adapter]]`).
    pub adapters: Vec<crate::adapter::Listener>,
}

/// A bound, not yet running broker.
pub struct Server {
    /// Plain AMQP over TCP; `None` for a TLS-only broker.
    listener: Option<TcpListener>,
    quic: Option<(quinn::Endpoint, std::path::PathBuf)>,
    amqps: Option<(TcpListener, tokio_rustls::TlsAcceptor)>,
    management: Option<TcpListener>,
    metrics: Option<TcpListener>,
    node: NodeRef,
    services: Services,
    connection: ConnectionConfig,
    limits: crate::config::LimitSettings,
    /// Host names the management API answers to (`management-hosts`).
    management_hosts: Vec<String>,
    storage: Option<crate::storage::Storage>,
    hangup: Option<tokio::signal::unix::Signal>,
    _data_lock: Option<std::fs::File>,
    adapters: Vec<crate::adapter::Listener>,
    hub: Arc<crate::adapter::hub::Hub>,
    data_dir: std::path::PathBuf,
    /// Whether retained messages are saved (their file could be read at start).
    save_retained: bool,
}

impl Server {
    /// Binds the listeners the settings name, builds the broker and recovers its store.
    pub async fn bind(settings: &Settings) -> std::io::Result<Server> {
        // Before anything reads or writes the data directory (certificates, compiled plugins,
        // the store): it is this process's alone.
        std::fs::create_dir_all(&settings.data_dir)?;
        let data_lock = warren_storage::disk::lock_dir(&settings.data_dir)?;
        // First, before plugins compile (seconds) or anything is logged.
        let hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!("cannot handle SIGHUP, plugins will not reload: {e}");
                None
            }
        };
        let listener = match settings.amqp_listen {
            Some(addr) => Some(bind_dual_stack(addr)?),
            None => None,
        };
        let amqps = match &settings.amqps {
            Some((addr, tls)) => {
                let config = crate::tls::server_config(tls).map_err(std::io::Error::other)?;
                Some((TcpListener::bind(addr).await?, tokio_rustls::TlsAcceptor::from(config)))
            }
            None => None,
        };
        let quic = match settings.quic_listen {
            Some(addr) => {
                let tls = settings.amqps.as_ref().map(|(_, t)| t);
                let (chain, key, cert) =
                    crate::quic::certificate(&settings.data_dir, tls).map_err(std::io::Error::other)?;
                let clients = match tls {
                    Some(t) => crate::tls::client_verifier(t).map_err(std::io::Error::other)?,
                    None => None,
                };
                let endpoint =
                    crate::quic::server_endpoint(addr, chain, key, clients).map_err(std::io::Error::other)?;
                Some((endpoint, cert))
            }
            None => None,
        };
        let management = match settings.management_listen {
            Some(addr) => Some(TcpListener::bind(addr).await?),
            None => None,
        };
        let metrics = match settings.metrics_listen {
            Some(addr) => Some(TcpListener::bind(addr).await?),
            None => None,
        };
        // std's RandomState keys come from the OS: hashing through fresh ones draws from it.
        let seed = RandomState::new().hash_one(SystemTime::now());
        // Before the broker makes its first map (see warren_core::hash).
        warren_core::hash::set_seed(RandomState::new().hash_one(3u8));
        if settings.access.is_unrestricted() && settings.users.iter().any(|u| u.name != "guest") {
            info!(
                "no [[permissions]] in the configuration: each configured user gets every permission \
                 on each configured vhost (add [[permissions]] entries to narrow them)"
            );
        }
        // A cluster member's directory is the metadata group's, replayed once it has started;
        // a single node's is its file.
        let (file, directory) = match settings.cluster {
            Some(_) => (None, crate::cluster_meta::empty(false)),
            None => {
                let (file, directory) = DirectoryFile::open(&settings.data_dir, settings)
                    .map_err(|e| std::io::Error::other(format!("{e:#}")))?;
                (Some(file), directory)
            }
        };
        // One broker per vhost, `/` first: connections to different vhosts never share a lock.
        let vhosts: Vec<String> = std::iter::once("/".to_string())
            .chain(directory.vhosts.keys().filter(|v| *v != "/").cloned())
            .collect();
        let maker = VHostMaker::new(settings, SharedDirectory::new(directory), seed);
        let mut brokers: Vec<Broker> = vhosts.iter().map(|v| maker.make(v)).collect();
        // Before recovery: recovered exchanges and queues need their plugin types and policies.
        let plugins = crate::plugins::Plugins::load(&settings.plugins, &settings.data_dir, &mut brokers)
            .map_err(|e| std::io::Error::other(format!("{e:#}")))?
            .map(Arc::new);
        let storage = crate::storage::Storage::open(&settings.data_dir, settings.storage, &mut brokers)
            .map_err(|e| std::io::Error::other(format!("{e:#}")))?;
        let mut adapters = Vec::new();
        for (entry, plugin, stats) in plugins.iter().flat_map(|p| p.adapters.iter()) {
            let socket = TcpListener::bind(entry.listen).await.map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!("{} adapter cannot listen on {}: {e}", entry.plugin.name, entry.listen),
                )
            })?;
            let tls = match (entry.tls_listen, &settings.amqps) {
                (Some(addr), Some((_, tls))) => {
                    let config = crate::tls::server_config(tls).map_err(std::io::Error::other)?;
                    let socket = TcpListener::bind(addr).await.map_err(|e| {
                        std::io::Error::new(
                            e.kind(),
                            format!("{} adapter cannot listen on {addr} (TLS): {e}", entry.plugin.name),
                        )
                    })?;
                    Some((socket, tokio_rustls::TlsAcceptor::from(config)))
                }
                _ => None,
            };
            adapters.push(crate::adapter::Listener {
                socket,
                tls,
                plugin: plugin.clone(),
                max_connections: entry.max_connections,
                stats: stats.clone(),
            });
        }
        let maker = maker.with(plugins.clone(), &storage);
        let services = Services {
            alarms: storage.alarms.clone(),
            storage_metrics: Some(storage.metrics.clone()),
            memory_metrics: crate::memory::MemoryMetrics::default(),
            plugins,
        };
        let parts = Parts {
            listener,
            quic,
            amqps,
            management,
            metrics,
            broker: brokers.remove(0),
            vhost_brokers: brokers,
            clock: Arc::new(SystemClock),
            storage: Some(storage),
            services,
            hangup,
            data_lock: Some(data_lock),
            vhost_maker: Some(Box::new(move |name: &str| maker.make(name))),
            directory_file: file,
            adapters,
        };
        let server = Server::new(parts, settings);
        // The seed is drawn at each start: it names this run of the node to the cluster.
        crate::cluster_meta::join(&server.node, settings, seed)
            .await
            .map_err(|e| std::io::Error::other(format!("{e:#}")))?;
        Ok(server)
    }

    /// A server from its parts; `settings` gives the connection limits and the management
    /// API's host names.
    pub fn new(parts: Parts, settings: &Settings) -> Server {
        let hub = Arc::new(crate::adapter::hub::Hub::default());
        let mut services = parts.services;
        // The store raises the disk and storage alarms on its own set: the connections must
        // read that one.
        if let Some(storage) = &parts.storage {
            services.alarms = storage.alarms.clone();
        }
        Server {
            listener: parts.listener,
            quic: parts.quic,
            amqps: parts.amqps,
            management: parts.management,
            metrics: parts.metrics,
            node: Node::new(
                parts.broker,
                parts.vhost_brokers,
                parts.clock,
                parts.storage.as_ref().map(|s| s.store.clone()),
                parts.vhost_maker,
                parts.directory_file,
            ),
            services,
            connection: settings.connection.clone(),
            limits: settings.limits,
            management_hosts: settings.management_hosts.clone(),
            storage: parts.storage,
            hangup: parts.hangup,
            _data_lock: parts.data_lock,
            save_retained: !parts.adapters.is_empty()
                && crate::adapter::restore_retained(&hub, &settings.data_dir),
            hub,
            adapters: parts.adapters,
            data_dir: settings.data_dir.clone(),
        }
    }

    /// The address the AMQP listener is bound to; an error when it is off.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        match &self.listener {
            Some(l) => l.local_addr(),
            None => Err(std::io::Error::other("the plain AMQP listener is off")),
        }
    }

    /// The UDP address QUIC listens on, when it is on.
    pub fn quic_addr(&self) -> Option<SocketAddr> {
        self.quic.as_ref().and_then(|(e, _)| e.local_addr().ok())
    }

    /// The certificate file QUIC clients can trust, when QUIC is on.
    pub fn quic_cert(&self) -> Option<&std::path::Path> {
        self.quic.as_ref().map(|(_, c)| c.as_path())
    }

    /// The address of protocol adapter `protocol`'s listener, when one is configured.
    pub fn adapter_addr(&self, protocol: &str) -> Option<SocketAddr> {
        self.adapter_addrs().into_iter().find(|(p, _)| p == protocol).map(|(_, a)| a)
    }

    /// Every protocol adapter's listener: its protocol and address.
    pub fn adapter_addrs(&self) -> Vec<(String, SocketAddr)> {
        self.adapters
            .iter()
            .filter_map(|l| Some((l.plugin.name().to_string(), l.local_addr().ok()?)))
            .collect()
    }

    /// The TLS listener of protocol adapter `protocol`, when one is configured.
    pub fn adapter_tls_addr(&self, protocol: &str) -> Option<SocketAddr> {
        let l = self.adapters.iter().find(|l| l.plugin.name() == protocol)?;
        l.tls.as_ref()?.0.local_addr().ok()
    }

    /// The address of the AMQPS listener, when TLS is configured.
    pub fn amqps_addr(&self) -> Option<SocketAddr> {
        self.amqps.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }

    /// The address of the Prometheus endpoint, when it is on.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The address of the management HTTP API, when it is on.
    pub fn management_addr(&self) -> Option<SocketAddr> {
        self.management.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The broker of `/` behind its lock, for inspection.
    pub fn shared(&self) -> SharedRef {
        self.node.default_broker().clone()
    }

    /// Every vhost's broker.
    pub fn node(&self) -> NodeRef {
        self.node.clone()
    }

    /// The handles shared without the lock (the alarms, for tests that raise one).
    pub fn services(&self) -> &Services {
        &self.services
    }

    /// Accepts connections until `shutdown` completes, then closes every connection with
    /// 320 CONNECTION_FORCED and waits (up to the close timeout) for them to finish.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let storage = self.storage.map(|s| s.start(self.node.clone())).transpose()?;
        // Each broker's timed work on a task of its own, under that broker's lock.
        let timers: Vec<_> = self
            .node
            .brokers()
            .iter()
            .map(|(_, shared)| tokio::spawn(run_timers(Arc::downgrade(shared))))
            .collect();
        let memory = tokio::spawn(crate::memory::watch(
            self.node.clone(),
            self.services.alarms.clone(),
            self.limits.memory_high_watermark,
            self.services.memory_metrics.clone(),
        ));
        let plugins = self.services.plugins.clone();
        let reloads = self.hangup.map(|hup| tokio::spawn(reload_on_hangup(hup, plugins, self.node.clone())));
        // What the node listens on, for the management API's health checks and overview.
        let listeners: Vec<crate::management::Listener> = [
            ("amqp", self.listener.as_ref().and_then(|l| l.local_addr().ok())),
            ("amqp/ssl", self.amqps.as_ref().and_then(|(l, _)| l.local_addr().ok())),
            ("amqp/quic", self.quic.as_ref().and_then(|(e, _)| e.local_addr().ok())),
            ("http/prometheus", self.metrics.as_ref().and_then(|l| l.local_addr().ok())),
            ("http", self.management.as_ref().and_then(|l| l.local_addr().ok())),
        ]
        .into_iter()
        .filter_map(|(protocol, addr)| Some(crate::management::Listener { protocol, addr: addr? }))
        .collect();
        let metrics = self.metrics.map(|l| {
            let app = crate::metrics::router(self.node.clone(), &self.services);
            tokio::spawn(crate::http::serve(l, app, "metrics"))
        });
        // Background replays outlive a request, not the server: stopped before the index.
        let replays = Arc::new(crate::management::Replays::default());
        let management = self.management.map(|l| {
            tokio::spawn(crate::http::serve(
                l,
                crate::management::router(
                    self.node.clone(),
                    self.management_hosts.clone(),
                    listeners.clone(),
                    replays.clone(),
                ),
                "management",
            ))
        });
        // Stopped after the connections, so its last save has what they left.
        let (saver_stop, saver_stop_rx) = watch::channel(false);
        let retained_saver = self.save_retained.then(|| {
            let (hub, dir) = (self.hub.clone(), self.data_dir.clone());
            tokio::spawn(crate::adapter::save_retained(hub, dir, Duration::from_secs(1), saver_stop_rx))
        });
        for l in self.adapters {
            let (node, hub, stop) = (self.node.clone(), self.hub.clone(), stop_rx.clone());
            let (write, close) = (self.connection.write_timeout, self.connection.close_timeout);
            tasks.spawn(crate::adapter::serve(l, node, hub, write, close, stop));
        }
        let alarms = self.services.alarms.clone();
        tokio::pin!(shutdown);
        // A background task that ended (a panic in broker code a timer ran, the syncer
        // thread, the disk monitor) leaves half a broker: messages that never expire, confirms
        // that never come. Better to stop and let a supervisor restart it from the log.
        let mut watchdog = tokio::time::interval(Duration::from_secs(1));
        let mut died: Option<&'static str> = None;
        loop {
            tokio::select! {
                _ = watchdog.tick() => {
                    let dead = if timers.iter().any(tokio::task::JoinHandle::is_finished) {
                        Some("the timer task")
                    } else if let Some(why) = self.node.cluster().and_then(|c| c.failure()) {
                        // A member whose Raft log cannot be written serves a directory that no
                        // longer follows the cluster's: better stopped, and restarted from its log.
                        tracing::error!(error = %why, "the cluster's Raft node stopped");
                        Some("the cluster's Raft node")
                    } else {
                        storage.as_ref().and_then(crate::storage::StorageTask::dead)
                    };
                    if let Some(what) = dead {
                        tracing::error!(task = what, "a background task stopped: shutting down the broker");
                        died = Some(what);
                        break;
                    }
                }
                accepted = accept_tcp(&self.listener) => match accepted {
                    Ok((stream, peer)) => {
                        let _ = stream.set_nodelay(true);
                        let (node, config, stop) = (self.node.clone(), self.connection.clone(), stop_rx.clone());
                        let local = stream.local_addr().ok();
                        tasks.spawn(drive(stream, peer, local, node, alarms.clone(), config, stop, None, None));
                    }
                    // Out of file descriptors and the like: keep serving the connections we have.
                    Err(e) => {
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                accepted = accept_tls(&self.amqps) => match accepted {
                    Ok((stream, peer, acceptor)) => {
                        let _ = stream.set_nodelay(true);
                        let (node, config, stop) = (self.node.clone(), self.connection.clone(), stop_rx.clone());
                        let alarms = alarms.clone();
                        tasks.spawn(async move {
                            let handshake = tokio::time::timeout(config.handshake_timeout, acceptor.accept(stream));
                            match handshake.await {
                                Ok(Ok(tls)) => {
                                    let identity = crate::tls::peer_identity(tls.get_ref().1);
                                    let local = tls.get_ref().0.local_addr().ok();
                                    drive(tls, peer, local, node, alarms, config, stop, identity, None).await
                                }
                                Ok(Err(e)) => info!(%peer, error = %e, "TLS handshake failed"),
                                Err(_) => info!(%peer, "TLS handshake timed out"),
                            }
                        });
                    }
                    Err(e) => {
                        warn!(error = %e, "TLS accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                Some(incoming) = accept_quic(&self.quic) => {
                    let (node, config, stop) = (self.node.clone(), self.connection.clone(), stop_rx.clone());
                    tasks.spawn(serve_quic(incoming, node, alarms.clone(), config, stop));
                }
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                () = &mut shutdown => break,
            }
        }
        info!(connections = tasks.len(), "shutting down");
        for t in &timers {
            t.abort();
        }
        if let Some(r) = reloads {
            r.abort();
        }
        memory.abort();
        for task in [management, metrics].into_iter().flatten() {
            task.abort();
        }
        replays.stop().await;
        let _ = stop_tx.send(true);
        if let Some(cluster) = self.node.cluster() {
            cluster.shutdown().await;
        }
        let deadline = self.connection.close_timeout + Duration::from_secs(1);
        if tokio::time::timeout(deadline, async { while tasks.join_next().await.is_some() {} }).await.is_err()
        {
            tasks.abort_all();
        }
        // Its last save, with what the adapters' connections left.
        let _ = saver_stop.send(true);
        if let Some(saver) = retained_saver {
            let _ = saver.await;
        }
        // Every connection is gone: index the queues for a fast next start, make everything
        // durable and mark the stop clean.
        if let Some(mut storage) = storage {
            // Compaction (in the disk monitor) must not write after the index.
            storage.stop_monitor().await;
            match crate::storage::checkpoint(&self.node) {
                Ok(entries) => info!(entries, "queue index written"),
                Err(e) => {
                    tracing::error!(error = %e, "queue index not written; the next start replays the log")
                }
            }
            let _ = tokio::task::spawn_blocking(move || storage.finish()).await;
        }
        match died {
            Some(what) => Err(std::io::Error::other(format!("{what} stopped unexpectedly"))),
            None => Ok(()),
        }
    }
}

/// Reloads the plugin components on each SIGHUP. Compiling can take seconds (Python and
/// JavaScript guests), so it runs off the async workers. Without plugins a SIGHUP is logged
/// and ignored: a reload signal must not stop the broker.
async fn reload_on_hangup(
    mut hup: tokio::signal::unix::Signal,
    plugins: Option<Arc<crate::plugins::Plugins>>,
    node: NodeRef,
) {
    while hup.recv().await.is_some() {
        let Some(p) = plugins.clone() else {
            tracing::info!("SIGHUP: no plugins configured, nothing to reload");
            continue;
        };
        tracing::info!("SIGHUP: reloading plugin components");
        let n = node.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || p.reload(&n)).await {
            tracing::error!("plugin reload failed: {e}");
        }
    }
}

/// What start-up builds each vhost's broker from, kept to build those added at run time.
struct VHostMaker {
    settings: Settings,
    directory: SharedDirectory,
    census: Arc<Census>,
    seed: u64,
    made: std::sync::atomic::AtomicU64,
    plugins: Option<Arc<crate::plugins::Plugins>>,
    store: Option<(warren_core::storage::SharedStore, warren_core::broker::ConfirmPolicy)>,
}

impl VHostMaker {
    fn new(settings: &Settings, directory: SharedDirectory, seed: u64) -> Self {
        VHostMaker {
            settings: settings.clone(),
            directory,
            census: Arc::new(Census::default()),
            seed,
            made: Default::default(),
            plugins: None,
            store: None,
        }
    }

    /// Once start-up has loaded them: the plugins and store later brokers get too.
    fn with(
        mut self,
        plugins: Option<Arc<crate::plugins::Plugins>>,
        storage: &crate::storage::Storage,
    ) -> Self {
        self.plugins = plugins;
        self.store = Some((storage.store.clone(), storage.confirm_policy()));
        self
    }

    /// The broker of `vhost`, with its plugin types and store when start-up is past.
    fn make(&self, vhost: &str) -> Broker {
        let i = self.made.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (now, unix_ms) = SystemClock.now();
        let config = BrokerConfig {
            directory: self.directory.clone(),
            seed: self.seed.wrapping_add(i),
            // Each broker its own: a token of one vhost says nothing of another's.
            secret: [RandomState::new().hash_one((1u8, i)), RandomState::new().hash_one((2u8, i))],
            consumer_timeout: self.settings.consumer_timeout,
            limits: self.settings.limits.counts,
            census: self.census.clone(),
            vhost: vhost.to_string(),
            // A member of a cluster would serve a quorum queue as a group of one on the node
            // where it was declared, which is not what a quorum queue promises.
            quorum_refused: self.settings.cluster.is_some().then(|| {
                "quorum queues are not replicated across a cluster yet: declare them on a single node, or use classic queues".to_string()
            }),
            cluster_node: self.settings.cluster.as_ref().map(|c| c.node.clone()),
            boot: self.seed,
        };
        let mut broker = Broker::new(config, now);
        broker.set_time(now, unix_ms);
        if let Some(p) = &self.plugins {
            p.register(&mut broker);
        }
        if let Some((store, policy)) = &self.store {
            // A new vhost has nothing stored: a clean, empty recovery.
            let nothing = warren_core::storage::Recovered { clean: true, ..Default::default() };
            broker.attach_recovered(Box::new(store.clone()), *policy, nothing);
        }
        broker
    }
}
