//! Connections between nodes. Each node dials each peer for its own requests: one
//! connection for control traffic (votes, appends, pings, proposals) and one for bulk
//! (snapshots, later message bodies), so a large transfer never delays a heartbeat. Each
//! connection carries many requests at once, matched to responses by id.
//!
//! Bounds: a frame is at most [`crate::wire::MAX_FRAME`] octets; a dial or a request waits at
//! most its deadline; a node accepts at most [`MAX_INBOUND`] connections and works on at most
//! [`MAX_IN_FLIGHT`] requests of one at a time (the next is not read until one finishes);
//! a dialer must say hello within [`HELLO_TIMEOUT`] and name this cluster.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::cookie::{self, Cookie};
use crate::types::{Member, NodeId};
use crate::wire::{self, Challenge, Class, Hello, MAX_HANDSHAKE_FRAME, Proof, Reply, Request, Response, Rpc};

/// Connections a node accepts at once.
pub const MAX_INBOUND: usize = 64;
/// Requests of one connection a node works on at once.
pub const MAX_IN_FLIGHT: usize = 256;
/// How long a dialer has to say hello.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a dial may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long an accepted connection may send nothing (peers ping every 500 ms on control
/// connections; an idle bulk connection is dialed again when next needed).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No connection could be made: the request was not sent.
    #[error("cannot reach {0}: {1}")]
    Connect(String, String),
    /// The connection ended before the answer: the request may or may not have been done.
    #[error("the connection to {0} was lost")]
    Lost(String),
    /// No answer in time: the request may or may not have been done.
    #[error("no answer from {0} within {1:?}")]
    Timeout(String, Duration),
}

/// Mutual TLS between nodes: both sides present a certificate of the cluster's CA, and a
/// dialer checks that the peer's names the address it dialed.
#[derive(Debug)]
pub struct Tls {
    /// What the listener presents and how it checks dialers.
    pub server: Arc<rustls::ServerConfig>,
    /// What a dialer presents and how it checks the listener.
    pub client: Arc<rustls::ClientConfig>,
}

/// A connection, plain or TLS.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// The cluster's id as this node knows it: empty until a joining node has joined.
pub type ClusterId = Arc<std::sync::RwLock<String>>;

/// The cluster's id as known now.
pub(crate) fn id_of(cluster: &ClusterId) -> String {
    cluster.read().unwrap_or_else(|p| p.into_inner()).clone()
}

/// This node's lines to its peers.
pub struct Transport {
    cluster: ClusterId,
    me: String,
    /// Where this node's configuration says each peer is, by name: it wins over the address
    /// the membership holds (a proxy, a NAT, an address that moved).
    routes: HashMap<String, String>,
    tls: Option<Arc<Tls>>,
    cookie: Cookie,
    peers: Mutex<HashMap<NodeId, Arc<Peer>>>,
}

/// One peer: its two lines and what the failure detector last heard of it.
pub struct Peer {
    /// Who it is.
    pub member: Member,
    /// Votes, appends, pings, proposals.
    pub control: Link,
    /// Snapshots.
    pub bulk: Link,
    /// Whether it answered a ping lately (see `crate::cluster`'s detector).
    pub up: AtomicBool,
    /// Milliseconds since the Unix epoch of its last answer to a ping; 0 for never.
    pub last_seen_ms: AtomicU64,
}

/// One connection to a peer, made when first needed and again after it broke.
pub struct Link {
    addr: String,
    tls: Option<Arc<Tls>>,
    cookie: Cookie,
    cluster: ClusterId,
    from: String,
    class: Class,
    conn: tokio::sync::Mutex<Option<Arc<Conn>>>,
}

struct Conn {
    tx: mpsc::Sender<Request>,
    pending: Arc<Mutex<HashMap<u64, oneshot::Sender<Reply>>>>,
    next: AtomicU64,
    alive: Arc<AtomicBool>,
}

impl Transport {
    /// The lines of node `me` of cluster `cluster`, reaching the peers `routes` names at the
    /// addresses it gives, over TLS when `tls` is given.
    pub fn new(
        cluster: ClusterId,
        me: &str,
        routes: HashMap<String, String>,
        tls: Option<Arc<Tls>>,
        cookie: Cookie,
    ) -> Arc<Transport> {
        Arc::new(Transport { cluster, me: me.into(), routes, tls, cookie, peers: Mutex::new(HashMap::new()) })
    }

    /// A line to `addr` outside the membership (a joining node's first contact).
    pub fn link_to(&self, addr: &str) -> Link {
        Link::new(addr, self.tls.clone(), self.cookie.clone(), self.cluster.clone(), &self.me, Class::Control)
    }

    /// The peer `id`, known as `member` (its address is updated when it changed).
    pub fn peer(&self, id: NodeId, member: &Member) -> Arc<Peer> {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = peers.get(&id).filter(|p| p.member == *member) {
            return p.clone();
        }
        let addr = self.routes.get(&member.name).unwrap_or(&member.addr);
        let link = |class| {
            Link::new(addr, self.tls.clone(), self.cookie.clone(), self.cluster.clone(), &self.me, class)
        };
        let p = Arc::new(Peer {
            member: member.clone(),
            control: link(Class::Control),
            bulk: link(Class::Bulk),
            up: AtomicBool::new(false),
            last_seen_ms: AtomicU64::new(0),
        });
        peers.insert(id, p.clone());
        p
    }

    /// Every peer known so far.
    pub fn peers(&self) -> Vec<(NodeId, Arc<Peer>)> {
        let peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        peers.iter().map(|(id, p)| (*id, p.clone())).collect()
    }
}

impl Link {
    fn new(
        addr: &str,
        tls: Option<Arc<Tls>>,
        cookie: Cookie,
        cluster: ClusterId,
        from: &str,
        class: Class,
    ) -> Link {
        Link {
            addr: addr.into(),
            tls,
            cookie,
            cluster,
            from: from.into(),
            class,
            conn: tokio::sync::Mutex::new(None),
        }
    }

    /// The connection, TLS when configured: the peer's certificate must chain to the cluster's
    /// CA and name the IP address dialed.
    async fn dial(&self) -> Result<Box<dyn Stream>, String> {
        let tcp = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&self.addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err(format!("no connection within {CONNECT_TIMEOUT:?}")),
        };
        let _ = tcp.set_nodelay(true);
        let Some(tls) = &self.tls else {
            return Ok(Box::new(tcp));
        };
        let ip = tcp.peer_addr().map_err(|e| e.to_string())?.ip();
        let name = rustls_pki_types::ServerName::IpAddress(ip.into());
        let connector = tokio_rustls::TlsConnector::from(tls.client.clone());
        match tokio::time::timeout(HELLO_TIMEOUT, connector.connect(name, tcp)).await {
            Ok(Ok(s)) => Ok(Box::new(s)),
            Ok(Err(e)) => Err(format!("TLS: {e}")),
            Err(_) => Err(format!("no TLS handshake within {HELLO_TIMEOUT:?}")),
        }
    }

    async fn conn(&self) -> Result<Arc<Conn>, CallError> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref().filter(|c| c.alive.load(Ordering::Acquire)) {
            return Ok(c.clone());
        }
        let failed = |e: String| CallError::Connect(self.addr.clone(), e);
        let stream = self.dial().await.map_err(failed)?;
        let (mut r, mut w) = tokio::io::split(stream);
        let nonce = cookie::nonce().map_err(|e| failed(e.to_string()))?;
        let hello =
            Hello { cluster: id_of(&self.cluster), from: self.from.clone(), class: self.class, nonce };
        wire::write(&mut w, &hello).await.map_err(|e| failed(e.to_string()))?;
        let challenge = tokio::time::timeout(
            HELLO_TIMEOUT,
            wire::read_limited::<_, Challenge>(&mut r, MAX_HANDSHAKE_FRAME),
        );
        let challenge = match challenge.await {
            Ok(Ok(Some(c))) => c,
            Ok(Ok(None)) => return Err(failed("closed at the handshake (another cluster?)".into())),
            Ok(Err(e)) => return Err(failed(e.to_string())),
            Err(_) => return Err(failed(format!("no handshake within {HELLO_TIMEOUT:?}"))),
        };
        if !self.cookie.verify(&challenge.proof, "listener", &hello.nonce, &challenge.nonce) {
            return Err(failed("the peer does not hold this cluster's cookie".into()));
        }
        let proof = Proof { proof: self.cookie.proof("dialer", &challenge.nonce, &hello.nonce) };
        wire::write(&mut w, &proof).await.map_err(|e| failed(e.to_string()))?;
        let (tx, mut rx) = mpsc::channel::<Request>(1024);
        let alive = Arc::new(AtomicBool::new(true));
        let pending: Arc<Mutex<HashMap<u64, oneshot::Sender<Reply>>>> = Arc::default();
        let writer_alive = alive.clone();
        tokio::spawn(async move {
            while let Some(req) = rx.recv().await {
                if wire::write(&mut w, &req).await.is_err() {
                    break;
                }
            }
            writer_alive.store(false, Ordering::Release);
        });
        let (reader_alive, reader_pending, addr) = (alive.clone(), pending.clone(), self.addr.clone());
        tokio::spawn(async move {
            loop {
                match wire::read::<_, Response>(&mut r).await {
                    Ok(Some(resp)) => {
                        let waiting =
                            reader_pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&resp.id);
                        if let Some(w) = waiting {
                            let _ = w.send(resp.reply);
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!(peer = %addr, error = %e, "an inter-node connection failed");
                        break;
                    }
                }
            }
            reader_alive.store(false, Ordering::Release);
            // Every request still waiting hears the connection is gone.
            reader_pending.lock().unwrap_or_else(|p| p.into_inner()).clear();
        });
        let conn = Arc::new(Conn { tx, pending, next: AtomicU64::new(1), alive });
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// Sends `rpc` and waits at most `ttl` for its answer (the dial included).
    pub async fn call(&self, rpc: Rpc, ttl: Duration) -> Result<Reply, CallError> {
        let deadline = tokio::time::Instant::now() + ttl;
        let conn = match tokio::time::timeout_at(deadline, self.conn()).await {
            Ok(c) => c?,
            Err(_) => {
                return Err(CallError::Connect(self.addr.clone(), format!("no connection within {ttl:?}")));
            }
        };
        let id = conn.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        conn.pending.lock().unwrap_or_else(|p| p.into_inner()).insert(id, tx);
        let forget = || conn.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
        match tokio::time::timeout_at(deadline, conn.tx.send(Request { id, rpc })).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => {
                forget();
                return Err(CallError::Lost(self.addr.clone()));
            }
            Err(_) => {
                forget();
                return Err(CallError::Timeout(self.addr.clone(), ttl));
            }
        }
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(CallError::Lost(self.addr.clone())),
            Err(_) => {
                forget();
                Err(CallError::Timeout(self.addr.clone(), ttl))
            }
        }
    }
}

/// Serves the requests of peers of cluster `cluster` that connect to `listener`, answering
/// each with `handle` (a node that has not joined may only ask to join); runs until the
/// future is dropped, which closes every connection it accepted.
pub async fn serve<F, Fut>(
    listener: TcpListener,
    cluster: ClusterId,
    tls: Option<Arc<Tls>>,
    cookie: Cookie,
    handle: F,
) where
    F: Fn(Rpc) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Reply> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(MAX_INBOUND));
    let mut connections = tokio::task::JoinSet::new();
    loop {
        // Finished connections are reaped as they go, so the set holds the open ones.
        while connections.try_join_next().is_some() {}
        let (stream, from) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "the inter-node listener could not accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%from, limit = MAX_INBOUND, "too many inter-node connections; refused");
            continue;
        };
        let (handle, cluster, tls, cookie) = (handle.clone(), cluster.clone(), tls.clone(), cookie.clone());
        connections.spawn(async move {
            let _slot = slot;
            let _ = stream.set_nodelay(true);
            let stream: Box<dyn Stream> = match tls {
                None => Box::new(stream),
                Some(tls) => {
                    let acceptor = tokio_rustls::TlsAcceptor::from(tls.server.clone());
                    match tokio::time::timeout(HELLO_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => Box::new(s),
                        Ok(Err(e)) => {
                            tracing::warn!(%from, error = %e, "an inter-node TLS handshake failed; closed");
                            return;
                        }
                        Err(_) => {
                            tracing::warn!(%from, "no inter-node TLS handshake in time; closed");
                            return;
                        }
                    }
                }
            };
            let (mut r, mut w) = tokio::io::split(stream);
            let hello = wire::read_limited::<_, Hello>(&mut r, MAX_HANDSHAKE_FRAME);
            let hello = match tokio::time::timeout(HELLO_TIMEOUT, hello).await {
                Ok(Ok(Some(h))) => h,
                Ok(Ok(None)) => return,
                Ok(Err(e)) => {
                    tracing::warn!(%from, error = %e, "an inter-node connection sent no hello; closed");
                    return;
                }
                Err(_) => {
                    tracing::warn!(%from, "an inter-node connection said no hello in time; closed");
                    return;
                }
            };
            let ours = id_of(&cluster);
            let joining = hello.cluster.is_empty();
            // A node that has not joined takes anyone's traffic: its leader-to-be replicates
            // to it before telling it the cluster's id.
            if !joining && !ours.is_empty() && hello.cluster != ours {
                tracing::warn!(%from, theirs = %hello.cluster, %ours, node = %hello.from,
                    "a node of another cluster (or this one has not joined yet); refused");
                return;
            }
            // Both sides prove they hold the cookie before anything else is read.
            let Ok(nonce) = cookie::nonce() else { return };
            let challenge = Challenge { proof: cookie.proof("listener", &hello.nonce, &nonce), nonce };
            if wire::write(&mut w, &challenge).await.is_err() {
                return;
            }
            let proof = wire::read_limited::<_, Proof>(&mut r, MAX_HANDSHAKE_FRAME);
            match tokio::time::timeout(HELLO_TIMEOUT, proof).await {
                Ok(Ok(Some(p))) if cookie.verify(&p.proof, "dialer", &challenge.nonce, &hello.nonce) => {}
                _ => {
                    tracing::warn!(%from, node = %hello.from, "an inter-node connection did not prove it holds the cluster's cookie; closed");
                    return;
                }
            }
            let (tx, mut rx) = mpsc::channel::<Response>(MAX_IN_FLIGHT);
            let mut work = tokio::task::JoinSet::new();
            let writer = work.spawn(async move {
                while let Some(resp) = rx.recv().await {
                    if wire::write(&mut w, &resp).await.is_err() {
                        break;
                    }
                }
            });
            let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
            loop {
                let Ok(permit) = in_flight.clone().acquire_owned().await else { break };
                let req = match tokio::time::timeout(IDLE_TIMEOUT, wire::read::<_, Request>(&mut r)).await {
                    Err(_) => break,
                    Ok(Ok(Some(req))) => req,
                    Ok(Ok(None)) => break,
                    Ok(Err(e)) => {
                        tracing::warn!(%from, node = %hello.from, error = %e, "a bad inter-node frame; connection closed");
                        break;
                    }
                };
                let (handle, tx) = (handle.clone(), tx.clone());
                work.spawn(async move {
                    let reply = match req.rpc {
                        rpc @ Rpc::Join(_) => handle(rpc).await,
                        _ if joining => Reply::Failed("join the cluster first".into()),
                        rpc => handle(rpc).await,
                    };
                    let _ = tx.send(Response { id: req.id, reply }).await;
                    drop(permit);
                });
                while work.try_join_next().is_some() {}
            }
            drop(tx);
            // The answers still being worked on go out before the connection closes.
            while work.join_next().await.is_some() {}
            let _ = writer;
        });
    }
}
