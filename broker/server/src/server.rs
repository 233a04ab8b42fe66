//! The TCP listener and the per-connection driver loop.
//!
//! One tokio task per connection runs the sans-IO [`Connection`] machine: it reads into the
//! machine's buffer, decodes the frames, lets them act on the shared [`Broker`] under a short
//! std mutex (never held across an await: the critical section is pure computation), encodes
//! and writes what it produced, and wakes the tasks of other connections the broker queued
//! frames for. Decoding and encoding happen outside the lock, so with one connection
//! publishing and another consuming, both cores work.

use std::collections::HashMap;
use std::future::Future;
use std::hash::{BuildHasher, RandomState};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, info, warn};
use warren_core::connection::code_name;
use warren_core::stats::BrokerEvent;

use crate::channel_streams::{ChannelStreams, Input, StreamEvent};
use warren_core::{Broker, BrokerConfig, ConnId, Connection, ConnectionConfig, Event};

use crate::config::Settings;

/// State shared by all connection tasks.
pub struct Shared {
    /// The broker model.
    pub broker: Broker,
    wakers: HashMap<ConnId, Arc<Notify>>,
    woken: Vec<ConnId>,
    timer: Arc<Notify>,
    events: Vec<BrokerEvent>,
    /// Storage metrics, registered on `/metrics` when the store is open.
    pub storage_metrics: Option<crate::storage::StorageMetrics>,
    /// The resource alarms; whether any is raised is read without the lock.
    pub alarms: Arc<crate::alarms::Alarms>,
    /// The memory alarm's metrics.
    pub memory_metrics: crate::memory::MemoryMetrics,
    /// Loaded plugin components, when the config names any.
    pub plugins: Option<Arc<crate::plugins::Plugins>>,
}

impl Shared {
    /// Wakes every connection the broker queued frames for (after work no connection did).
    pub fn wake_all(&mut self) {
        let _ = self.wake_others(None);
    }

    /// Wakes every connection the broker queued frames for, except `me`; returns whether it
    /// woke any.
    fn wake_others(&mut self, me: Option<ConnId>) -> bool {
        if self.broker.take_timer_changed() {
            self.timer.notify_one();
        }
        self.broker.take_events(&mut self.events);
        for e in self.events.drain(..) {
            match e {
                BrokerEvent::QueueDeclared { queue, durable } => info!(%queue, durable, "queue declared"),
                BrokerEvent::QueueDeleted { queue } => info!(%queue, "queue deleted"),
                BrokerEvent::StorageError { error } => tracing::error!(%error, "storage write failed"),
                BrokerEvent::ConsumerTimedOut { consumer, detail } => {
                    warn!(%consumer, %detail, "consumer cancelled for its consumer timeout")
                }
            }
        }
        self.broker.take_wakeups(&mut self.woken);
        let mut woke = false;
        for id in self.woken.drain(..) {
            if Some(id) != me
                && let Some(n) = self.wakers.get(&id)
            {
                n.notify_one();
                woke = true;
            }
        }
        woke
    }
}

/// A handle on the shared state.
pub type SharedRef = Arc<Mutex<Shared>>;

/// Locks the shared state and gives the broker the time. A panic while the lock was held (a
/// bug) must not stop the other connections, hence the poison is ignored.
pub fn lock(shared: &SharedRef) -> MutexGuard<'_, Shared> {
    let mut guard = shared.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let unix_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    guard.broker.set_time(std::time::Instant::now(), unix_ms);
    guard
}

/// A bound, not yet running broker.
pub struct Server {
    /// Plain AMQP over TCP; `None` for a TLS-only broker.
    listener: Option<TcpListener>,
    quic: Option<(quinn::Endpoint, std::path::PathBuf)>,
    amqps: Option<(TcpListener, tokio_rustls::TlsAcceptor)>,
    management: Option<TcpListener>,
    metrics: Option<TcpListener>,
    shared: SharedRef,
    connection: ConnectionConfig,
    limits: crate::config::LimitSettings,
    /// Host names the management API answers to (`management-hosts`).
    management_hosts: Vec<String>,
    storage: Option<crate::storage::Storage>,
    /// SIGHUP, handled from `bind` on: a reload signal during start-up must not stop the
    /// broker (the default action for SIGHUP is to terminate).
    hangup: Option<tokio::signal::unix::Signal>,
    /// The data directory's lock, held while the server lives.
    _data_lock: std::fs::File,
}

impl Server {
    /// Binds the AMQP listener and builds the broker.
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
        let secret = [RandomState::new().hash_one(1u8), RandomState::new().hash_one(2u8)];
        let config = BrokerConfig {
            users: settings.users.clone(),
            seed,
            secret,
            consumer_timeout: settings.consumer_timeout,
            limits: settings.limits.counts,
        };
        let mut broker = Broker::new(config, std::time::Instant::now());
        broker.set_policies(settings.policies.clone());
        for v in &settings.vhosts {
            broker.add_vhost(v);
        }
        let unix_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        broker.set_time(std::time::Instant::now(), unix_ms);
        // Before recovery: recovered exchanges and queues need their plugin types and policies.
        let plugins = crate::plugins::Plugins::load(&settings.plugins, &settings.data_dir, &mut broker)
            .map_err(|e| std::io::Error::other(format!("{e:#}")))?
            .map(Arc::new);
        let storage = crate::storage::Storage::open(&settings.data_dir, settings.storage, &mut broker)
            .map_err(|e| std::io::Error::other(format!("{e:#}")))?;
        let timer = Arc::new(Notify::new());
        let shared = Shared {
            broker,
            wakers: HashMap::new(),
            woken: Vec::new(),
            timer,
            events: Vec::new(),
            storage_metrics: Some(storage.metrics.clone()),
            alarms: storage.alarms.clone(),
            memory_metrics: crate::memory::MemoryMetrics::default(),
            plugins,
        };
        Ok(Server {
            listener,
            quic,
            amqps,
            management,
            metrics,
            shared: Arc::new(Mutex::new(shared)),
            connection: settings.connection.clone(),
            limits: settings.limits,
            management_hosts: settings.management_hosts.clone(),
            storage: Some(storage),
            hangup,
            _data_lock: data_lock,
        })
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

    /// The shared state, for inspection.
    pub fn shared(&self) -> SharedRef {
        self.shared.clone()
    }

    /// Accepts connections until `shutdown` completes, then closes every connection with
    /// 320 CONNECTION_FORCED and waits (up to the close timeout) for them to finish.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let storage = self.storage.map(|s| s.start(self.shared.clone())).transpose()?;
        let timers = tokio::spawn(run_timers(self.shared.clone()));
        let memory = {
            let s = lock(&self.shared);
            let (alarms, m) = (s.alarms.clone(), s.memory_metrics.clone());
            drop(s);
            tokio::spawn(crate::memory::watch(
                self.shared.clone(),
                alarms,
                self.limits.memory_high_watermark,
                m,
            ))
        };
        let plugins = lock(&self.shared).plugins.clone();
        let reloads =
            self.hangup.map(|hup| tokio::spawn(reload_on_hangup(hup, plugins, self.shared.clone())));
        let metrics = self.metrics.map(|l| {
            let registry = Arc::new(crate::metrics::registry(self.shared.clone()));
            let app = axum::Router::new().route(
                "/metrics",
                axum::routing::get(move || {
                    let registry = registry.clone();
                    async move {
                        let body = crate::metrics::render(&registry);
                        ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
                    }
                }),
            );
            tokio::spawn(crate::http::serve(l, app, "metrics"))
        });
        let management = self.management.map(|l| {
            tokio::spawn(crate::http::serve(
                l,
                crate::management::router(self.shared.clone(), self.management_hosts.clone()),
                "management",
            ))
        });
        tokio::pin!(shutdown);
        // A background task that ended (a panic in broker code a timer ran, the syncer
        // thread, the disk monitor) leaves half a broker: messages that never expire, confirms
        // that never come. Better to stop and let a supervisor restart it from the log.
        let mut watchdog = tokio::time::interval(Duration::from_secs(1));
        let mut died: Option<&'static str> = None;
        loop {
            tokio::select! {
                _ = watchdog.tick() => {
                    let dead = if timers.is_finished() {
                        Some("the timer task")
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
                        let (shared, config, stop) = (self.shared.clone(), self.connection.clone(), stop_rx.clone());
                        tasks.spawn(drive(stream, peer, shared, config, stop, None, None));
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
                        let (shared, config, stop) = (self.shared.clone(), self.connection.clone(), stop_rx.clone());
                        tasks.spawn(async move {
                            let handshake = tokio::time::timeout(config.handshake_timeout, acceptor.accept(stream));
                            match handshake.await {
                                Ok(Ok(tls)) => {
                                    let identity = crate::tls::peer_identity(tls.get_ref().1);
                                    drive(tls, peer, shared, config, stop, identity, None).await
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
                    let (shared, config, stop) = (self.shared.clone(), self.connection.clone(), stop_rx.clone());
                    tasks.spawn(serve_quic(incoming, shared, config, stop));
                }
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                () = &mut shutdown => break,
            }
        }
        info!(connections = tasks.len(), "shutting down");
        timers.abort();
        if let Some(r) = reloads {
            r.abort();
        }
        memory.abort();
        for task in [management, metrics].into_iter().flatten() {
            task.abort();
        }
        let _ = stop_tx.send(true);
        let deadline = self.connection.close_timeout + Duration::from_secs(1);
        if tokio::time::timeout(deadline, async { while tasks.join_next().await.is_some() {} }).await.is_err()
        {
            tasks.abort_all();
        }
        // Every connection is gone: index the queues for a fast next start, make everything
        // durable and mark the stop clean.
        if let Some(storage) = storage {
            // Compaction (in the disk monitor) must not write after the index.
            storage.stop_monitor();
            match lock(&self.shared).broker.checkpoint_storage() {
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
    shared: SharedRef,
) {
    while hup.recv().await.is_some() {
        let Some(p) = plugins.clone() else {
            tracing::info!("SIGHUP: no plugins configured, nothing to reload");
            continue;
        };
        tracing::info!("SIGHUP: reloading plugin components");
        let s = shared.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || p.reload(&s)).await {
            tracing::error!("plugin reload failed: {e}");
        }
    }
}

/// Runs the broker's timed work (TTL expiry, retry delays, queue expiry) when it is due.
async fn run_timers(shared: SharedRef) {
    let notify = lock(&shared).timer.clone();
    loop {
        let next = {
            let mut s = lock(&shared);
            s.broker.handle_timeout();
            s.wake_others(None);
            s.broker.poll_timeout()
        };
        match next {
            Some(at) => {
                tokio::select! {
                    () = tokio::time::sleep_until(Instant::from_std(at)) => {}
                    () = notify.notified() => {}
                }
            }
            None => notify.notified().await,
        }
    }
}

/// Binds a TCP listener; the IPv6 wildcard (`[::]`, the AMQP default as in RabbitMQ) takes
/// IPv4 clients too, whatever the host's `bindv6only`. On a host without IPv6 the wildcard
/// falls back to `0.0.0.0`.
fn bind_dual_stack(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let bind = |addr: SocketAddr, dual: bool| -> std::io::Result<TcpListener> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        if dual {
            socket.set_only_v6(false)?;
        }
        socket.set_reuse_address(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(1024)?;
        TcpListener::from_std(socket.into())
    };
    let wildcard_v6 = matches!(addr.ip(), std::net::IpAddr::V6(ip) if ip.is_unspecified());
    match bind(addr, wildcard_v6) {
        Err(e) if wildcard_v6 && e.raw_os_error() == Some(libc::EAFNOSUPPORT) => {
            let v4 = SocketAddr::from(([0, 0, 0, 0], addr.port()));
            warn!(%addr, %v4, "no IPv6 here: listening on IPv4 only");
            bind(v4, false)
        }
        r => r,
    }
}

/// Holds back or lets go the deliveries of channels whose streams' clients stopped or started
/// reading again (see [`crate::channel_streams`]); what is let go is pulled next.
fn hold_deliveries(streams: &mut ChannelStreams, id: ConnId, shared: &SharedRef, notify: &Notify) {
    let changes = streams.holds();
    if changes.is_empty() {
        return;
    }
    let mut s = lock(shared);
    for (channel, held) in changes {
        s.broker.hold_deliveries(id, channel, held);
    }
    s.wake_others(Some(id));
    notify.notify_one();
}

/// Completes when a held channel stream may take deliveries again; never without streams.
async fn stream_released(released: &Option<crate::channel_streams::Released>) {
    match released {
        Some(r) => r.wait().await,
        None => std::future::pending().await,
    }
}

/// The next channel-stream event of a QUIC connection; never completes without them.
async fn next_stream_event(streams: &mut Option<ChannelStreams>) -> Option<StreamEvent> {
    match streams {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

/// The next QUIC connection attempt, when QUIC is on; never completes otherwise.
async fn accept_quic(quic: &Option<(quinn::Endpoint, std::path::PathBuf)>) -> Option<quinn::Incoming> {
    match quic {
        Some((endpoint, _)) => endpoint.accept().await,
        None => std::future::pending().await,
    }
}

/// One QUIC connection. A stream that starts with the AMQP protocol header is one AMQP
/// connection (mapping v1); a stream that starts with the channel-stream preamble joins the
/// AMQP connection whose stream id follows it, and carries channels of that connection.
async fn serve_quic(
    incoming: quinn::Incoming,
    shared: SharedRef,
    config: ConnectionConfig,
    stop: watch::Receiver<bool>,
) {
    let conn = match incoming.await {
        Ok(c) => c,
        Err(e) => return info!(error = %e, "QUIC handshake failed"),
    };
    let peer = conn.remote_address();
    let identity = crate::quic::peer_identity(&conn);
    debug!(%peer, "QUIC connection");
    let (classified_tx, mut classified) = tokio::sync::mpsc::unbounded_channel();
    let mut routes: HashMap<u64, tokio::sync::mpsc::UnboundedSender<crate::channel_streams::Opened>> =
        HashMap::new();
    let mut streams = JoinSet::new();
    loop {
        tokio::select! {
            accepted = conn.accept_bi() => match accepted {
                // Reading the first octets may wait on the client: do it off this loop.
                Ok((send, recv)) => {
                    let tx = classified_tx.clone();
                    tokio::spawn(async move {
                        if let Some(kind) = classify(send, recv).await {
                            let _ = tx.send(kind);
                        }
                    });
                }
                Err(_) => break,
            },
            Some(kind) = classified.recv() => match kind {
                Stream::Connection { id, prefix, send, recv } => {
                    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                    let channels = ChannelStreams::new(rx, config.write_timeout);
                    // AMQP connections that ended on this QUIC connection are forgotten.
                    routes.retain(|_, tx| !tx.is_closed());
                    routes.insert(id, tx);
                    let stream = tokio::io::join(std::io::Cursor::new(prefix).chain(recv), send);
                    streams.spawn(drive(stream, peer, shared.clone(), config.clone(), stop.clone(), identity.clone(), Some(channels)));
                }
                Stream::Channel { of, send, recv } => {
                    // QUIC bounds the streams open at once, and with them this queue.
                    let refused = match routes.get(&of) {
                        Some(tx) => tx.send((recv, send)).err().map(|e| e.0),
                        None => Some((recv, send)),
                    };
                    if let Some((mut recv, _)) = refused {
                        let _ = recv.stop(1u32.into());
                        debug!(%peer, of, "channel stream for an unknown AMQP connection");
                    }
                }
            },
            Some(_) = streams.join_next(), if !streams.is_empty() => {}
        }
    }
    while streams.join_next().await.is_some() {}
}

/// How long a new QUIC stream may take to send its first octets.
const STREAM_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// A new QUIC stream, by its first octets.
enum Stream {
    Connection { id: u64, prefix: Vec<u8>, send: quinn::SendStream, recv: quinn::RecvStream },
    Channel { of: u64, send: quinn::SendStream, recv: quinn::RecvStream },
}

async fn classify(send: quinn::SendStream, mut recv: quinn::RecvStream) -> Option<Stream> {
    let id = u64::from(recv.id());
    // A stream that never says what it is holds one of the connection's stream slots: not
    // for longer than a TCP client may take over its protocol header.
    let head = async {
        let mut head = [0u8; 8];
        recv.read_exact(&mut head).await.ok()?;
        if &head != crate::channel_streams::PREAMBLE {
            return Some((head, None));
        }
        let mut of = [0u8; 8];
        recv.read_exact(&mut of).await.ok()?;
        Some((head, Some(u64::from_be_bytes(of))))
    };
    match tokio::time::timeout(STREAM_HEADER_TIMEOUT, head).await.ok()?? {
        (head, None) => Some(Stream::Connection { id, prefix: head.to_vec(), send, recv }),
        (_, Some(of)) => Some(Stream::Channel { of, send, recv }),
    }
}

/// The next TLS client, when AMQPS is on; never completes otherwise.
/// The next plain TCP connection, when that listener is on; never completes otherwise.
async fn accept_tcp(listener: &Option<TcpListener>) -> std::io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

async fn accept_tls(
    amqps: &Option<(TcpListener, tokio_rustls::TlsAcceptor)>,
) -> std::io::Result<(TcpStream, SocketAddr, tokio_rustls::TlsAcceptor)> {
    match amqps {
        Some((listener, acceptor)) => listener.accept().await.map(|(s, peer)| (s, peer, acceptor.clone())),
        None => std::future::pending().await,
    }
}

/// Runs one AMQP connection over any byte stream: TCP, TLS, or a QUIC stream.
async fn drive<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    peer: SocketAddr,
    shared: SharedRef,
    config: ConnectionConfig,
    mut stop: watch::Receiver<bool>,
    external: Option<String>,
    mut channel_streams: Option<ChannelStreams>,
) {
    let write_timeout = config.write_timeout;
    // An IPv4 client of the dual-stack listener arrives as ::ffff:a.b.c.d: it is a.b.c.d
    // (loopback for guest, and in the logs).
    let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
    let mut conn = Connection::new(config, peer.ip().is_loopback(), Instant::now().into_std())
        .with_external_identity(external);
    let notify = Arc::new(Notify::new());
    let alarms = lock(&shared).alarms.clone();
    let mut read_size = MIN_READ;
    let mut registered: Option<ConnId> = None;
    let mut release = ReleaseOnPanic { shared: shared.clone(), peer, id: None };
    let mut user: Option<String> = None;
    let released = channel_streams.as_ref().map(ChannelStreams::released);
    debug!(%peer, "accepted");
    loop {
        let deadline = conn.poll_timeout().map(Instant::from_std);
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        // Under a resource alarm a publishing connection is not read from: TCP backpressure
        // holds its publishes, as in RabbitMQ.
        let may_read = !alarms.any() || conn.may_read(&lock(&shared).broker);
        let mut woke = false;
        tokio::select! {
            read = read_some(&mut stream, conn.read_buf(), &mut read_size), if may_read => {
                // Decoding needs no broker: outside the lock, in parallel with other connections.
                conn.decode_input();
                let now = Instant::now().into_std();
                let mut s = lock(&shared);
                match read {
                    Ok(n) if n > 0 => conn.handle_input(now, &mut s.broker),
                    _ => conn.handle_eof(&mut s.broker),
                }
                woke = s.wake_others(conn.id());
            }
            () = notify.notified() => {
                let mut s = lock(&shared);
                conn.pull_outbound(Instant::now().into_std(), &mut s.broker);
                // A pull can dispatch held-back deliveries, some to other connections.
                woke = s.wake_others(conn.id());
            }
            () = sleep => {
                let now = Instant::now().into_std();
                let mut s = lock(&shared);
                conn.handle_timeout(now, &mut s.broker);
                conn.pull_outbound(now, &mut s.broker);
                s.wake_others(conn.id());
            }
            Ok(()) = stop.changed() => {
                let now = Instant::now().into_std();
                let mut s = lock(&shared);
                conn.shutdown(now, &mut s.broker);
                s.wake_others(conn.id());
            }
            () = stream_released(&released) => {
                // Handled below, with the holds of every stream.
            }
            // Not read from under an alarm either (see `channel_streams`).
            Some(event) = next_stream_event(&mut channel_streams), if may_read => {
                let Some(streams) = channel_streams.as_mut() else { continue };
                let input = streams.handle(event, conn.frame_max());
                let now = Instant::now().into_std();
                let mut s = lock(&shared);
                match input {
                    Input::Frames(frames) => conn.handle_frames(now, frames, &mut s.broker),
                    Input::Error(e) => conn.handle_codec_error(now, e, &mut s.broker),
                    Input::Violation(code, text) => conn.close(now, code, &text, &mut s.broker),
                    Input::Ended(channels) => conn.drop_channels(&channels, &mut s.broker),
                    Input::Nothing => {}
                }
                s.wake_others(conn.id());
            }
        }
        if registered.is_none()
            && let Some(id) = conn.id()
        {
            lock(&shared).wakers.insert(id, notify.clone());
            registered = Some(id);
            release.id = Some(id);
        }
        while let Some(event) = conn.poll_event() {
            log_event(peer, &mut user, event);
        }
        // Encodes what was taken from the broker under the lock, now without it, a chunk at a
        // time, and writes it all before reading more: the client's reading paces its input.
        let mut write_failed = false;
        while conn.has_output() {
            let mut out = conn.take_output();
            let room = match channel_streams.as_mut() {
                Some(streams) => {
                    out = streams.route(out);
                    streams.wait_for_room(write_timeout).await
                }
                None => Ok(()),
            };
            let written = match room {
                Ok(()) => write_out(&mut stream, &out, write_timeout).await,
                Err(e) => Err(e),
            };
            if let Err(e) = written {
                if e.kind() == std::io::ErrorKind::TimedOut {
                    warn!(%peer, user = user.as_deref().unwrap_or(""), error = %e, "closing a connection that does not read");
                } else {
                    debug!(%peer, error = %e, "write failed");
                }
                let mut s = lock(&shared);
                conn.handle_eof(&mut s.broker);
                s.wake_others(None);
                write_failed = true;
                break;
            }
        }
        if write_failed || conn.is_closed() {
            break;
        }
        if let (Some(streams), Some(id)) = (channel_streams.as_mut(), conn.id()) {
            hold_deliveries(streams, id, &shared, &notify);
        }
        // Tokio runs a task woken from this one next on this worker, in a slot other workers
        // cannot steal from, but only once this task yields. A publisher whose socket always
        // has more to read would hold its consumers off until its cooperative budget ran out
        // (hundreds of thousands of messages); yielding lets them take their deliveries now.
        if woke {
            tokio::task::yield_now().await;
        }
        // Deliveries are waiting for room in this connection's window: pull them next.
        if conn.has_backlog() {
            notify.notify_one();
        }
    }
    {
        let mut s = lock(&shared);
        conn.handle_eof(&mut s.broker);
        if let Some(id) = registered {
            s.wakers.remove(&id);
        }
        s.wake_others(None);
    }
    while let Some(event) = conn.poll_event() {
        log_event(peer, &mut user, event);
    }
    let _ = stream.shutdown().await;
    linger(&mut stream).await;
}

/// How long, and how much, a closed connection's late frames are read and dropped.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_MAX: usize = 64 << 20;

/// Reads and drops what the client still sends after the close, until it closes its side
/// (or [`LINGER`], or [`LINGER_MAX`] octets): a client that queued frames behind its
/// connection.close would otherwise get a reset instead of its close-ok, as RabbitMQ avoids.
async fn linger<S: AsyncRead + Unpin>(stream: &mut S) {
    let drain = async {
        let mut buf = vec![0u8; 8192];
        let mut read = 0;
        while read < LINGER_MAX {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => read += n,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

/// Releases a connection's session when its task unwinds. A panic in a connection's handling
/// is a bug; it costs that connection (its unacked messages requeued, its consumers cancelled,
/// its exclusive queues deleted, as at a disconnect) and a log line, while every other
/// connection carries on: the broker lock ignores the poison (see [`lock`]).
struct ReleaseOnPanic {
    shared: SharedRef,
    peer: SocketAddr,
    id: Option<ConnId>,
}

impl Drop for ReleaseOnPanic {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        tracing::error!(peer = %self.peer, "a connection's handling panicked: its session is released");
        // Not here, during the unwind: a second panic in broker code would abort the process.
        // A task of its own costs only itself if it panics too.
        if let (Some(id), Ok(runtime)) = (self.id, tokio::runtime::Handle::try_current()) {
            let shared = self.shared.clone();
            runtime.spawn(async move {
                let mut s = lock(&shared);
                s.broker.disconnect(id);
                s.wakers.remove(&id);
                s.wake_all();
            });
        }
    }
}

/// Writes all of `buf` and flushes (a TLS stream may hold records back after accepting the
/// bytes), failing with `TimedOut` when one step makes no progress for `timeout`. Progress,
/// not the whole write, is timed: a large delivery to a slow but reading client is fine.
async fn write_out<S: AsyncWrite + Unpin>(
    stream: &mut S,
    mut buf: &[u8],
    timeout: Duration,
) -> std::io::Result<()> {
    let stalled =
        || std::io::Error::new(std::io::ErrorKind::TimedOut, format!("no write progress in {timeout:?}"));
    while !buf.is_empty() {
        match tokio::time::timeout(timeout, stream.write(buf)).await {
            Ok(Ok(0)) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(Ok(n)) => buf = &buf[n..],
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(stalled()),
        }
    }
    tokio::time::timeout(timeout, stream.flush()).await.map_err(|_| stalled())?
}

/// Socket reads start this large...
const MIN_READ: usize = 8 << 10;
/// ...and grow to this for a connection whose reads fill the buffer (a busy publisher): one
/// read, and one turn of the broker lock, then covers hundreds of publishes. Idle connections
/// keep the small buffer.
const MAX_READ: usize = 128 << 10;

/// Reads into `buf` with room for `size` octets, adapting `size` to how full reads come back.
async fn read_some<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut bytes::BytesMut,
    size: &mut usize,
) -> std::io::Result<usize> {
    if buf.capacity() - buf.len() < *size {
        buf.reserve(*size);
    }
    let room = buf.capacity() - buf.len();
    let n = stream.read_buf(buf).await?;
    *size = if n == room {
        (*size * 2).min(MAX_READ)
    } else if n < *size / 8 {
        (*size / 2).max(MIN_READ)
    } else {
        *size
    };
    Ok(n)
}

fn log_event(peer: SocketAddr, user: &mut Option<String>, event: Event) {
    let who = user.clone().unwrap_or_default();
    match event {
        Event::Opened { user: u, vhost } => {
            info!(%peer, user = %u, %vhost, "connection opened");
            *user = Some(u);
        }
        Event::AuthFailed { reason } => warn!(%peer, %reason, "login refused"),
        Event::Closed { code: 0, text, by_peer } => {
            info!(%peer, user = %who, reason = %text, by_peer, "connection closed")
        }
        Event::Closed { code: 200, by_peer, .. } => info!(%peer, user = %who, by_peer, "connection closed"),
        Event::Closed { code, text, by_peer } => {
            warn!(%peer, user = %who, code, name = code_name(code), reason = %text, by_peer, "connection closed with error")
        }
    }
}
