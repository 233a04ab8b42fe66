//! A node's part in the cluster: its identity, the metadata group's Raft node, the
//! inter-node listener, the failure detector, and the doors proposals, joins and removals go
//! through.
//!
//! Every node of `[cluster] peers` is a voter from the start; each fresh node initializes the
//! group with that same set (openraft allows it when the set is the same everywhere), so the
//! first majority to come up elects a leader. A node's Raft id is a hash of its name
//! ([`node_id`]), the same everywhere. The cluster's id is the sorted list of the initial
//! names, kept in each member's identity file: a node of another cluster is refused at its
//! hello. A node whose `peers` do not name it is a new node: it waits, empty, until
//! [`Cluster::join`] asks a member to add it (a learner first, a voter once it caught up) and
//! learns the cluster's id from the answer. [`Cluster::remove`] takes a member out and
//! retires its name, which no node may join under again.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::alias::SnapshotOf;
use openraft::error::{ClientWriteError, RaftError};
use openraft::type_config::async_runtime::WatchReceiver;
use openraft::{ChangeMembers, Config, Raft, ServerState, SnapshotPolicy};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::files;
use crate::machine::{MetaMachine, StateMachine};
use crate::network::Network;
use crate::store::LogStore;
use crate::transport::{self, ClusterId, Transport};
use crate::types::{Member, Meta, NodeId, Outcome, Proposal};
use crate::wire::{Reply, Rpc};

/// How often the failure detector pings each peer.
pub const PING_EVERY: Duration = Duration::from_millis(500);
/// A peer that answered no ping for this long is down.
pub const DOWN_AFTER: Duration = Duration::from_secs(2);
/// The metadata group's heartbeat, in milliseconds.
pub const HEARTBEAT_MS: u64 = 250;
/// The metadata group's election timeout range, in milliseconds: a leader that stops is
/// replaced within about this long.
pub const ELECTION_MS: (u64, u64) = (1000, 2000);
/// How long each step of a join (or a removal) may take on the leader: a new node catches up
/// with the log first.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a joining node waits for the answer: longer than the leader's steps together.
pub const JOINER_TIMEOUT: Duration = Duration::from_secs(150);
/// Members a cluster may have.
pub const MAX_MEMBERS: usize = 32;
/// Octets one proposal may have: a batch of [`MAX_BATCH`] of them, escaped, stays within a
/// frame ([`crate::wire::MAX_FRAME`]).
pub const MAX_PROPOSAL: usize = 4 << 20;
/// Entries one append request carries at most.
pub const MAX_BATCH: u64 = 8;

/// Whether a joining member's name and address are ones a member could have.
fn valid_member(m: &Member) -> bool {
    let name_ok = !m.name.is_empty()
        && m.name.len() <= 64
        && m.name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    name_ok && m.addr.parse::<SocketAddr>().is_ok()
}

/// A node's Raft id: FNV-1a of its name, so every member computes the same one without
/// asking; names are never reused, and a join whose id meets another name's is refused.
pub fn node_id(name: &str) -> NodeId {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h.max(1)
}

/// What a node is told about the cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// This node's name.
    pub node: String,
    /// Where this node listens for its peers.
    pub listen: SocketAddr,
    /// Every initial member; a node these do not name is a new node that joins later.
    pub peers: Vec<Member>,
    /// Where the node keeps its identity, Raft log and snapshots.
    pub dir: PathBuf,
    /// How long a proposal may wait to be committed and applied here.
    pub propose_timeout: Duration,
    /// Mutual TLS between nodes; `None` for plain TCP.
    pub tls: Option<Arc<transport::Tls>>,
    /// The secret every member holds.
    pub cookie: crate::cookie::Cookie,
}

/// Why the node could not take its place in the cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The configuration cannot work.
    #[error("{0}")]
    Config(String),
    /// A file or the listener failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// openraft refused to start.
    #[error("raft: {0}")]
    Raft(String),
}

/// Why a proposal was not applied.
#[derive(Debug, thiserror::Error)]
pub enum ProposeError {
    /// No majority committed it in time (this node is on the minority side of a partition,
    /// or too many members are down).
    #[error(
        "the cluster's metadata has no quorum: the change was not committed within {0:?} (it may still take effect if a majority returns)"
    )]
    NoQuorum(Duration),
    /// The machine refused it, on every member alike.
    #[error("{0}")]
    Refused(String),
    /// Committed, but this node had not applied it in time.
    #[error("the change was committed but this node has not applied it within {0:?}")]
    Lagging(Duration),
    /// Something else failed.
    #[error("{0}")]
    Failed(String),
}

/// A node's identity, kept in its data dir.
#[derive(Debug, Serialize, Deserialize)]
struct Identity {
    name: String,
    /// The cluster's id; `None` for a new node that has not joined yet.
    cluster: Option<String>,
}

/// What `warren cluster status` shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    /// This node.
    pub node: String,
    /// Its Raft state: leader, follower, candidate, learner.
    pub state: String,
    /// The metadata group's term.
    pub term: u64,
    /// The metadata leader's name, if there is one.
    pub leader: Option<String>,
    /// The last committed index this node knows.
    pub commit_index: Option<u64>,
    /// The last index this node applied.
    pub applied_index: Option<u64>,
    /// Leader changes this node saw since it started.
    pub leader_changes: u64,
    /// Every member.
    pub members: Vec<MemberStatus>,
}

/// One member in a [`Status`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberStatus {
    /// Its name.
    pub name: String,
    /// Its inter-node address.
    pub addr: String,
    /// Whether it votes.
    pub voter: bool,
    /// Whether the failure detector hears it (always for this node).
    pub up: bool,
    /// Milliseconds since it last answered a ping, if it ever did.
    pub last_seen_ms_ago: Option<u64>,
}

/// This node's handle on the cluster.
pub struct Cluster {
    shared: Arc<Shared>,
    dir: PathBuf,
    /// Set by [`Cluster::shutdown`].
    stopped: std::sync::atomic::AtomicBool,
    leader_changes: Arc<AtomicU64>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// What the listener's requests and the node's own calls share.
struct Shared {
    id: NodeId,
    me: Member,
    raft: Raft<Meta, StateMachine>,
    transport: Arc<Transport>,
    cluster_id: ClusterId,
    retired: Arc<Mutex<BTreeSet<String>>>,
    propose_timeout: Duration,
    /// The server's machine, which answers [`Rpc::App`].
    machine: Arc<dyn MetaMachine>,
}

/// Milliseconds on a monotonic clock (since the first call, plus one so 0 means never): a
/// wall-clock jump must not flip members up and down.
fn now_ms() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// The identity kept in `dir`, if any; one of another name is refused.
fn read_identity(dir: &Path, name: &str) -> Result<Option<Identity>, ClusterError> {
    let path = dir.join("identity.json");
    let Some(bytes) = files::read(&path, 1 << 16)? else {
        return Ok(None);
    };
    let id: Identity = serde_json::from_slice(&bytes)
        .map_err(|e| ClusterError::Config(format!("{}: {e}", path.display())))?;
    if id.name != name {
        return Err(ClusterError::Config(format!(
            "this data dir belongs to node '{}', not '{name}': a node's name never changes (use a fresh data dir for a new node)",
            id.name
        )));
    }
    Ok(Some(id))
}

fn write_identity(dir: &Path, id: &Identity) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(id).map_err(std::io::Error::other)?;
    files::replace(&dir.join("identity.json"), &bytes, true)
}

impl Cluster {
    /// Takes this node's place in the cluster `config` describes, its metadata held by
    /// `machine`.
    pub async fn start(
        config: ClusterConfig,
        machine: Arc<dyn MetaMachine>,
    ) -> Result<Arc<Cluster>, ClusterError> {
        let names: BTreeSet<&str> = config.peers.iter().map(|m| m.name.as_str()).collect();
        if names.len() != config.peers.len() {
            return Err(ClusterError::Config("[cluster] peers names a node twice".into()));
        }
        let initial = names.contains(config.node.as_str());
        let id = node_id(&config.node);
        let members: BTreeMap<NodeId, Member> =
            config.peers.iter().map(|m| (node_id(&m.name), m.clone())).collect();
        if members.len() != config.peers.len() {
            return Err(ClusterError::Config(
                "two names of [cluster] peers have the same node id; rename one".into(),
            ));
        }
        std::fs::create_dir_all(&config.dir)?;
        let stored = read_identity(&config.dir, &config.node)?;
        let cluster_id = match stored.as_ref().and_then(|i| i.cluster.clone()) {
            Some(c) => c,
            None if initial => names.iter().copied().collect::<Vec<_>>().join(","),
            None => String::new(),
        };
        let identity = Identity {
            name: config.node.clone(),
            cluster: (!cluster_id.is_empty()).then(|| cluster_id.clone()),
        };
        if stored.as_ref().map(|s| &s.cluster) != Some(&identity.cluster) {
            write_identity(&config.dir, &identity)?;
        }
        let me = config
            .peers
            .iter()
            .find(|m| m.name == config.node)
            .cloned()
            .unwrap_or_else(|| Member { name: config.node.clone(), addr: config.listen.to_string() });
        let log = LogStore::open(&config.dir)?;
        let sm = StateMachine::open(&config.dir, machine.clone(), log.last_index())?;
        let retired = sm.retired();
        let cluster_id: ClusterId = Arc::new(std::sync::RwLock::new(cluster_id));
        let routes = config.peers.iter().map(|m| (m.name.clone(), m.addr.clone())).collect();
        let transport = Transport::new(
            cluster_id.clone(),
            &config.node,
            routes,
            config.tls.clone(),
            config.cookie.clone(),
        );
        let listener = TcpListener::bind(config.listen).await.map_err(|e| {
            std::io::Error::new(e.kind(), format!("cannot listen for peers on {}: {e}", config.listen))
        })?;
        let raft_config = Config {
            cluster_name: "warren".into(),
            heartbeat_interval: HEARTBEAT_MS,
            election_timeout_min: ELECTION_MS.0,
            election_timeout_max: ELECTION_MS.1,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(1000),
            max_payload_entries: MAX_BATCH,
            max_append_entries: Some(64),
            ..Default::default()
        };
        let raft_config = Arc::new(raft_config.validate().map_err(|e| ClusterError::Raft(e.to_string()))?);
        let raft = Raft::new(id, raft_config, Network::new(transport.clone()), log, sm)
            .await
            .map_err(|e| ClusterError::Raft(e.to_string()))?;
        let shared = Arc::new(Shared {
            id,
            me,
            raft: raft.clone(),
            transport: transport.clone(),
            cluster_id: cluster_id.clone(),
            retired,
            propose_timeout: config.propose_timeout,
            machine,
        });
        let mut tasks = Vec::new();
        let served = shared.clone();
        let cookie = config.cookie.clone();
        tasks.push(tokio::spawn(transport::serve(
            listener,
            cluster_id,
            config.tls.clone(),
            cookie,
            move |rpc| {
                let s = served.clone();
                async move { s.handle(rpc).await }
            },
        )));
        let initialized = raft.is_initialized().await.map_err(|e| ClusterError::Raft(e.to_string()))?;
        if initial && !initialized && !shared.formed_elsewhere(&members).await {
            // Every fresh member proposes the same set; whichever entry wins, it is that set.
            if let Err(e) = raft.initialize(members.clone()).await {
                tracing::debug!(error = %e, "the metadata group was initialized elsewhere first");
            }
        }
        if !initial && !initialized {
            tracing::info!(node = %config.node, "a new node: it waits to be joined (warren cluster join)");
        }
        let leader_changes = Arc::new(AtomicU64::new(0));
        tasks.push(tokio::spawn(watch_leader(raft.clone(), leader_changes.clone())));
        tasks.push(tokio::spawn(detect(raft.clone(), transport.clone(), id)));
        tracing::info!(node = %config.node, id, listen = %config.listen, peers = members.len(), "cluster member started");
        Ok(Arc::new(Cluster {
            shared,
            dir: config.dir,
            stopped: std::sync::atomic::AtomicBool::new(false),
            leader_changes,
            tasks: Mutex::new(tasks),
        }))
    }

    /// Whether the node `config` describes would start as a new node that waits to be joined
    /// (its `peers` do not name it, and its data dir holds no cluster yet); known before
    /// [`Cluster::start`], so what it serves meanwhile is set before any entry can arrive.
    pub fn starts_new(config: &ClusterConfig) -> bool {
        if config.peers.iter().any(|m| m.name == config.node) {
            return false;
        }
        let joined =
            matches!(read_identity(&config.dir, &config.node), Ok(Some(Identity { cluster: Some(_), .. })));
        let log = std::fs::metadata(config.dir.join(crate::store::LOG_FILE)).map_or(0, |m| m.len());
        !joined && log == 0
    }

    /// Proposes `body` to the metadata group: the machine's answer once the change is
    /// committed by a majority and applied on this node.
    pub async fn propose(&self, body: String) -> Result<String, ProposeError> {
        self.shared.propose(Proposal::App(body)).await
    }

    /// Sends `body` to member `node`'s machine ([`MetaMachine::serve`]) on the bulk line and
    /// waits at most `ttl` for its answer.
    pub async fn call(&self, node: &str, body: String, ttl: Duration) -> Result<String, String> {
        let member = {
            let m = self.shared.raft.metrics().borrow_watched().clone();
            m.membership_config.nodes().find(|(_, n)| n.name == node).map(|(id, n)| (*id, n.clone()))
        };
        let Some((id, member)) = member else {
            return Err(format!("node '{node}' is not a member of the cluster"));
        };
        let peer = self.shared.transport.peer(id, &member);
        match peer.bulk.call(Rpc::App(body), ttl).await {
            Ok(Reply::App(answer)) => Ok(answer),
            Ok(Reply::Failed(why)) => Err(why),
            Ok(other) => Err(format!("node '{node}' answered {other:?}")),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Whether this node is in the group's membership (a voter or a learner).
    pub fn is_member(&self) -> bool {
        let m = self.shared.raft.metrics().borrow_watched().clone();
        m.membership_config.nodes().any(|(id, _)| *id == self.shared.id)
    }

    /// Asks the member at `via` (its inter-node address) to add this new node; `Ok` once it
    /// is a voter, or when it already was a member.
    pub async fn join(&self, via: &str) -> Result<(), ProposeError> {
        if self.is_member() {
            return Ok(());
        }
        let addr: SocketAddr = self
            .shared
            .me
            .addr
            .parse()
            .map_err(|_| ProposeError::Failed(format!("'{}' is not ip:port", self.shared.me.addr)))?;
        if addr.ip().is_unspecified() {
            return Err(ProposeError::Failed(format!(
                "this node listens on {addr}: a joining node needs a listen address its peers can dial"
            )));
        }
        let link = self.shared.transport.link_to(via);
        match link.call(Rpc::Join(self.shared.me.clone()), JOINER_TIMEOUT).await {
            Ok(Reply::Joined { cluster, index }) => {
                *self.shared.cluster_id.write().unwrap_or_else(|p| p.into_inner()) = cluster.clone();
                let identity = Identity { name: self.shared.me.name.clone(), cluster: Some(cluster) };
                write_identity(&self.dir, &identity).map_err(|e| ProposeError::Failed(e.to_string()))?;
                // Answered once this node has applied the cluster's log up to its promotion: it
                // sees itself a voter and serves the cluster's directory (its users can log in).
                let id = self.shared.id;
                let wait = self.shared.raft.wait(Some(Duration::from_secs(10)));
                let caught_up = wait.metrics(
                    |m| {
                        m.membership_config.membership().voter_ids().any(|v| v == id)
                            && m.last_applied.is_some_and(|a| a.index() >= index)
                    },
                    "this node a voter, caught up",
                );
                if caught_up.await.is_err() {
                    return Err(ProposeError::Lagging(Duration::from_secs(10)));
                }
                tracing::info!(via, "joined the cluster");
                Ok(())
            }
            Ok(Reply::Failed(why)) => Err(ProposeError::Refused(why)),
            Ok(other) => Err(ProposeError::Failed(format!("{via} answered {other:?}"))),
            Err(e) => Err(ProposeError::Failed(e.to_string())),
        }
    }

    /// Takes member `name` out of the cluster for good, its name retired (this node's own
    /// name: it leaves).
    pub async fn remove(&self, name: &str) -> Result<(), ProposeError> {
        match self.shared.handle(Rpc::Remove(name.to_string())).await {
            Reply::Removed => Ok(()),
            Reply::Failed(why) => Err(ProposeError::Refused(why)),
            other => Err(ProposeError::Failed(format!("{other:?}"))),
        }
    }

    /// This node's name.
    pub fn name(&self) -> &str {
        &self.shared.me.name
    }

    /// What `warren cluster status` shows.
    pub fn status(&self) -> Status {
        let m = self.shared.raft.metrics().borrow_watched().clone();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let peers: BTreeMap<NodeId, Arc<transport::Peer>> =
            self.shared.transport.peers().into_iter().collect();
        let now = now_ms();
        let mut members = membership
            .nodes()
            .map(|(id, member)| {
                let (up, seen) = if *id == self.shared.id {
                    (true, Some(0))
                } else {
                    match peers.get(id) {
                        Some(p) => {
                            let at = p.last_seen_ms.load(Ordering::Relaxed);
                            (p.up.load(Ordering::Relaxed), (at > 0).then(|| now.saturating_sub(at)))
                        }
                        None => (false, None),
                    }
                };
                MemberStatus {
                    name: member.name.clone(),
                    addr: member.addr.clone(),
                    voter: voters.contains(id),
                    up,
                    last_seen_ms_ago: seen,
                }
            })
            .collect::<Vec<MemberStatus>>();
        members.sort_by(|a, b| a.name.cmp(&b.name));
        let leader = m
            .current_leader
            .and_then(|l| membership.nodes().find(|(id, _)| **id == l))
            .map(|(_, n)| n.name.clone());
        Status {
            node: self.shared.me.name.clone(),
            state: state_name(m.state).into(),
            term: m.current_term,
            leader,
            commit_index: m.cluster_committed.map(|l| l.index()),
            applied_index: m.last_applied.map(|l| l.index()),
            leader_changes: self.leader_changes.load(Ordering::Relaxed),
            members,
        }
    }

    /// Whether [`Cluster::shutdown`] ran.
    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    /// Why this node's Raft node stopped (its log could not be written, say), if it did: it
    /// takes no part in the cluster any more until a restart.
    pub fn failure(&self) -> Option<String> {
        self.shared.raft.metrics().borrow_watched().running_state.as_ref().err().map(|e| e.to_string())
    }

    /// Whether a metadata leader is known (writes can be made).
    pub fn has_leader(&self) -> bool {
        self.shared.raft.metrics().borrow_watched().current_leader.is_some()
    }

    /// Waits up to `timeout` for this node to have applied what the cluster had committed
    /// when it started (so what it serves is no older than what it served before a restart).
    pub async fn caught_up(&self, timeout: Duration) -> bool {
        self.shared.raft.wait_for_recovery(Some(timeout)).await.is_ok()
    }

    /// Leaves the group's work: the Raft node stops and the listener closes.
    pub async fn shutdown(&self) {
        self.stopped.store(true, Ordering::Release);
        if let Err(e) = self.shared.raft.shutdown().await {
            tracing::warn!(error = %e, "the metadata group did not stop cleanly");
        }
        for t in self.tasks.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            t.abort();
        }
    }
}

impl Shared {
    /// Proposes `proposal`: its outcome once committed and applied here.
    async fn propose(&self, proposal: Proposal) -> Result<String, ProposeError> {
        if let Proposal::App(body) = &proposal
            && body.len() > MAX_PROPOSAL
        {
            return Err(ProposeError::Refused(format!(
                "a change of {} octets, over the {MAX_PROPOSAL} one change may have; make it in parts",
                body.len()
            )));
        }
        let deadline = tokio::time::Instant::now() + self.propose_timeout;
        loop {
            let written = tokio::time::timeout_at(deadline, self.raft.client_write(proposal.clone())).await;
            let leader = match written {
                Err(_) => return Err(ProposeError::NoQuorum(self.propose_timeout)),
                Ok(Ok(r)) => return settle(r.data),
                Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => f.leader_id,
                Ok(Err(e)) => return Err(ProposeError::Failed(e.to_string())),
            };
            if leader.is_some_and(|l| l != self.id)
                && let Some(r) = self.forward(&proposal, deadline).await?
            {
                return r;
            }
            // No leader yet, or it changed under us before the proposal was sent: again.
            if tokio::time::Instant::now() + Duration::from_millis(100) >= deadline {
                return Err(ProposeError::NoQuorum(self.propose_timeout));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The leader's line, when a leader other than this node is known.
    fn leader_peer(&self) -> Option<Arc<transport::Peer>> {
        let m = self.raft.metrics().borrow_watched().clone();
        let leader = m.current_leader.filter(|l| *l != self.id)?;
        let member = m.membership_config.nodes().find(|(id, _)| **id == leader).map(|(_, n)| n.clone())?;
        Some(self.transport.peer(leader, &member))
    }

    /// Forwards `proposal` to the leader; `None` when it was not sent (try again).
    async fn forward(
        &self,
        proposal: &Proposal,
        deadline: tokio::time::Instant,
    ) -> Result<Option<Result<String, ProposeError>>, ProposeError> {
        let Some(peer) = self.leader_peer() else {
            return Ok(None);
        };
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match peer.control.call(Rpc::Propose(proposal.clone()), left).await {
            Ok(Reply::Proposed { outcome, index }) => {
                // Answered once this node has applied it too: its client reads its own write.
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                let applied = self
                    .raft
                    .wait(Some(left))
                    .applied_index_at_least(Some(index), "a forwarded proposal")
                    .await;
                if applied.is_err() {
                    return Err(ProposeError::Lagging(self.propose_timeout));
                }
                Ok(Some(settle(outcome)))
            }
            Ok(Reply::NotLeader(_)) => Ok(None),
            Ok(Reply::Failed(why)) => Err(ProposeError::Failed(why)),
            Ok(other) => Err(ProposeError::Failed(format!("the leader answered {other:?}"))),
            Err(transport::CallError::Connect(..)) => Ok(None),
            Err(transport::CallError::Timeout(..)) => Err(ProposeError::NoQuorum(self.propose_timeout)),
            Err(e) => Err(ProposeError::Failed(format!("{e}; the change may or may not have been made"))),
        }
    }

    /// Answers one peer's request (and this node's own removals).
    async fn handle(&self, rpc: Rpc) -> Reply {
        let raft = &self.raft;
        match rpc {
            // A node whose Raft stopped is not a working member, whatever its listener says.
            Rpc::Ping => match raft.metrics().borrow_watched().running_state.as_ref() {
                Ok(()) => Reply::Pong,
                Err(e) => Reply::Failed(format!("this node's Raft stopped: {e}")),
            },
            Rpc::Probe => match raft.is_initialized().await {
                Ok(initialized) => Reply::Probed { initialized },
                Err(e) => Reply::Failed(e.to_string()),
            },
            Rpc::AppendEntries(r) => raft
                .append_entries(r)
                .await
                .map_or_else(|e| Reply::Failed(e.to_string()), Reply::AppendEntries),
            Rpc::Vote(r) => raft.vote(r).await.map_or_else(|e| Reply::Failed(e.to_string()), Reply::Vote),
            Rpc::Snapshot { vote, meta, data } => {
                let snapshot =
                    SnapshotOf::<Meta, Cursor<Vec<u8>>> { meta, snapshot: Cursor::new(data.into_bytes()) };
                raft.install_full_snapshot(vote, snapshot)
                    .await
                    .map_or_else(|e| Reply::Failed(e.to_string()), Reply::Snapshot)
            }
            Rpc::Propose(p) => match tokio::time::timeout(self.propose_timeout, raft.client_write(p)).await {
                Ok(Ok(r)) => Reply::Proposed { outcome: r.data, index: r.log_id.index() },
                Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                    Reply::NotLeader(f.leader_id)
                }
                Ok(Err(e)) => Reply::Failed(e.to_string()),
                Err(_) => Reply::Failed(format!("not committed within {:?}", self.propose_timeout)),
            },
            Rpc::App(body) => match self.machine.serve(body).await {
                Ok(answer) => Reply::App(answer),
                Err(why) => Reply::Failed(why),
            },
            Rpc::Join(m) if self.leads() => self.admit(m).await,
            Rpc::Remove(name) if self.leads() => self.retire(&name).await,
            rpc @ (Rpc::Join(_) | Rpc::Remove(_)) => match self.leader_peer() {
                Some(peer) => peer
                    .control
                    .call(rpc, JOINER_TIMEOUT)
                    .await
                    .unwrap_or_else(|e| Reply::Failed(e.to_string())),
                None => Reply::Failed("the cluster has no metadata leader now; try again".into()),
            },
        }
    }

    /// Whether a peer of `members` has a group already: then this member, fresh, waits for
    /// the log rather than proposing the first membership again (a data dir that was lost
    /// must not start a group anew).
    async fn formed_elsewhere(&self, members: &BTreeMap<NodeId, Member>) -> bool {
        for (id, m) in members.iter().filter(|(id, _)| **id != self.id) {
            let peer = self.transport.peer(*id, m);
            if let Ok(Reply::Probed { initialized: true }) =
                peer.control.call(Rpc::Probe, Duration::from_secs(2)).await
            {
                tracing::info!(peer = %m, "the cluster has formed already: this fresh member waits for its log");
                return true;
            }
        }
        false
    }

    fn leads(&self) -> bool {
        self.raft.metrics().borrow_watched().current_leader == Some(self.id)
    }

    /// On the leader: adds `member` as a learner, waits for it to catch up, makes it a voter.
    async fn admit(&self, member: Member) -> Reply {
        if self.retired.lock().unwrap_or_else(|p| p.into_inner()).contains(&member.name) {
            return Reply::Failed(format!(
                "the name '{}' belonged to a node that left the cluster; names are never reused, give the new node another",
                member.name
            ));
        }
        if !valid_member(&member) {
            return Reply::Failed(format!(
                "'{}' at '{}' is not a node name at an ip:port",
                member.name, member.addr
            ));
        }
        let id = node_id(&member.name);
        let retired_id =
            self.retired.lock().unwrap_or_else(|p| p.into_inner()).iter().any(|n| node_id(n) == id);
        if retired_id {
            return Reply::Failed(format!(
                "'{}' has the node id of a retired name; give the node another",
                member.name
            ));
        }
        let m = self.raft.metrics().borrow_watched().clone();
        if let Some((_, other)) = m.membership_config.nodes().find(|(i, _)| **i == id) {
            if other.name != member.name {
                return Reply::Failed(format!(
                    "'{}' has the node id of member '{}'; rename it",
                    member.name, other.name
                ));
            }
            if m.membership_config.voter_ids().any(|v| v == id) {
                // A member's data dir holds the cluster's id and it never asks again: this one
                // starts empty, and an empty log must not vote where the old one did.
                return Reply::Failed(format!(
                    "'{}' is a member already: a node that lost its data dir comes back under a new name \
                     (warren cluster forget {} first)",
                    member.name, member.name
                ));
            }
        }
        if m.membership_config.nodes().count() >= MAX_MEMBERS {
            return Reply::Failed(format!("the cluster has {MAX_MEMBERS} members, as many as it may"));
        }
        tracing::info!(node = %member, "a node joins: added as a learner");
        match tokio::time::timeout(JOIN_TIMEOUT, self.raft.add_learner(id, member.clone(), true)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Reply::Failed(format!("adding it as a learner failed: {e}")),
            Err(_) => return Reply::Failed(format!("it did not catch up within {JOIN_TIMEOUT:?}")),
        }
        let promote = self.raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false);
        match tokio::time::timeout(JOIN_TIMEOUT, promote).await {
            Ok(Ok(r)) => {
                tracing::info!(node = %member, "a node joined as a voter");
                Reply::Joined { cluster: transport::id_of(&self.cluster_id), index: r.log_id.index() }
            }
            Ok(Err(e)) => Reply::Failed(format!("making it a voter failed: {e}")),
            Err(_) => Reply::Failed(format!("making it a voter took over {JOIN_TIMEOUT:?}")),
        }
    }

    /// On the leader: retires `name` and takes its node out of the membership.
    async fn retire(&self, name: &str) -> Reply {
        let m = self.raft.metrics().borrow_watched().clone();
        let Some(id) = m.membership_config.nodes().find(|(_, n)| n.name == name).map(|(i, _)| *i) else {
            return Reply::Failed(format!("no member is named '{name}'"));
        };
        let voters: BTreeSet<NodeId> = m.membership_config.voter_ids().collect();
        if voters.len() == 1 && voters.contains(&id) {
            return Reply::Failed(format!(
                "'{name}' is the last voter; a cluster cannot lose its last member"
            ));
        }
        let change = if voters.contains(&id) {
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        };
        // Out of the membership first: a name retired while its node still votes could never
        // be used again by a node that could not leave either.
        match tokio::time::timeout(JOIN_TIMEOUT, self.raft.change_membership(change, false)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Reply::Failed(format!("removing it failed: {e}")),
            Err(_) => return Reply::Failed(format!("removing it took over {JOIN_TIMEOUT:?}")),
        }
        let mut last = String::new();
        for _ in 0..3 {
            match self.propose(Proposal::Retire(name.to_string())).await {
                Ok(_) => {
                    tracing::info!(node = name, "a member left the cluster; its name is retired");
                    return Reply::Removed;
                }
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Reply::Failed(format!("it is out of the cluster, but its name was not retired: {last}"))
    }
}

fn settle(outcome: Outcome) -> Result<String, ProposeError> {
    match outcome.result {
        Some(Ok(answer)) => Ok(answer),
        Some(Err(why)) => Err(ProposeError::Refused(why)),
        None => Err(ProposeError::Failed("the proposal was applied as no change".into())),
    }
}

fn state_name(s: ServerState) -> &'static str {
    match s {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "stopped",
    }
}

/// Logs leader changes and counts them.
async fn watch_leader(raft: Raft<Meta, StateMachine>, changes: Arc<AtomicU64>) {
    let mut rx = raft.metrics();
    let mut last = None;
    loop {
        let (leader, term) = {
            let m = rx.borrow_watched();
            (m.current_leader, m.current_term)
        };
        if leader != last {
            match leader {
                Some(l) => tracing::info!(leader = l, term, "metadata leader elected"),
                None => tracing::warn!(term, "no metadata leader"),
            }
            if leader.is_some() {
                changes.fetch_add(1, Ordering::Relaxed);
            }
            last = leader;
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// The failure detector: pings every peer on its control line and marks it down after
/// [`DOWN_AFTER`] without an answer.
async fn detect(raft: Raft<Meta, StateMachine>, transport: Arc<Transport>, me: NodeId) {
    let mut tick = tokio::time::interval(PING_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let nodes: Vec<(NodeId, Member)> = {
            let m = raft.metrics().borrow_watched().clone();
            m.membership_config.nodes().filter(|(id, _)| **id != me).map(|(id, n)| (*id, n.clone())).collect()
        };
        for (id, member) in nodes {
            let peer = transport.peer(id, &member);
            tokio::spawn(async move {
                if let Ok(Reply::Pong) = peer.control.call(Rpc::Ping, DOWN_AFTER / 2).await {
                    peer.last_seen_ms.store(now_ms(), Ordering::Relaxed);
                }
                let seen = peer.last_seen_ms.load(Ordering::Relaxed);
                let up = seen > 0 && now_ms().saturating_sub(seen) < DOWN_AFTER.as_millis() as u64;
                if peer.up.swap(up, Ordering::Relaxed) != up {
                    if up {
                        tracing::info!(node = %peer.member.name, "cluster node is up");
                    } else {
                        tracing::warn!(node = %peer.member.name, "cluster node is down");
                    }
                }
            });
        }
    }
}
