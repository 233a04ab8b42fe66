//! A node's part in the cluster: its identity, the metadata group's Raft node, the
//! inter-node listener, the failure detector, and the door proposals go through.
//!
//! Every node of `[cluster] peers` is a voter from the start; each fresh node initializes the
//! group with that same set (openraft allows it when the set is the same everywhere), so the
//! first majority to come up elects a leader. Node ids are the ranks of the names in the
//! sorted list, the same on every node; the cluster's id is that list, so a node configured
//! with other peers is refused at its hello rather than joining a different group.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use openraft::alias::SnapshotOf;
use openraft::error::{ClientWriteError, RaftError};
use openraft::type_config::async_runtime::WatchReceiver;
use openraft::{Config, Raft, ServerState, SnapshotPolicy};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::files;
use crate::machine::{MetaMachine, StateMachine};
use crate::network::Network;
use crate::store::LogStore;
use crate::transport::{self, Transport};
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

/// What a node is told about the cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// This node's name.
    pub node: String,
    /// Where this node listens for its peers.
    pub listen: SocketAddr,
    /// Every initial member, this node included.
    pub peers: Vec<Member>,
    /// Where the node keeps its identity, Raft log and snapshots.
    pub dir: PathBuf,
    /// How long a proposal may wait to be committed and applied here.
    pub propose_timeout: Duration,
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
    cluster: String,
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
    id: NodeId,
    name: String,
    raft: Raft<Meta, StateMachine>,
    transport: Arc<Transport>,
    propose_timeout: Duration,
    leader_changes: Arc<AtomicU64>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Checks (or, on a fresh data dir, writes) the node's identity.
fn identity(dir: &Path, name: &str, cluster: &str) -> Result<(), ClusterError> {
    let path = dir.join("identity.json");
    match files::read(&path, 1 << 16)? {
        Some(bytes) => {
            let id: Identity = serde_json::from_slice(&bytes)
                .map_err(|e| ClusterError::Config(format!("{}: {e}", path.display())))?;
            if id.name != name {
                return Err(ClusterError::Config(format!(
                    "this data dir belongs to node '{}', not '{name}': a node's name never changes (use a fresh data dir for a new node)",
                    id.name
                )));
            }
            if id.cluster != cluster {
                return Err(ClusterError::Config(format!(
                    "this data dir belongs to a cluster of [{}], not of [{cluster}]: the initial peers never change",
                    id.cluster
                )));
            }
            Ok(())
        }
        None => {
            let bytes = serde_json::to_vec(&Identity { name: name.into(), cluster: cluster.into() })
                .map_err(std::io::Error::other)?;
            Ok(files::replace(&path, &bytes, true)?)
        }
    }
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
        let Some(rank) = names.iter().position(|n| *n == config.node) else {
            return Err(ClusterError::Config(format!(
                "[cluster] peers does not name this node, '{}'",
                config.node
            )));
        };
        let id = rank as NodeId + 1;
        let cluster_id = names.iter().copied().collect::<Vec<_>>().join(",");
        let members: BTreeMap<NodeId, Member> = config
            .peers
            .iter()
            .map(|m| (names.iter().position(|n| *n == m.name).map_or(0, |r| r as NodeId + 1), m.clone()))
            .collect();
        std::fs::create_dir_all(&config.dir)?;
        identity(&config.dir, &config.node, &cluster_id)?;
        let log = LogStore::open(&config.dir)?;
        let sm = StateMachine::open(&config.dir, machine)?;
        let transport = Transport::new(&cluster_id, &config.node);
        let listener = TcpListener::bind(config.listen).await.map_err(|e| {
            std::io::Error::new(e.kind(), format!("cannot listen for peers on {}: {e}", config.listen))
        })?;
        let raft_config = Config {
            cluster_name: cluster_id.clone(),
            heartbeat_interval: HEARTBEAT_MS,
            election_timeout_min: ELECTION_MS.0,
            election_timeout_max: ELECTION_MS.1,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(1000),
            ..Default::default()
        };
        let raft_config = Arc::new(raft_config.validate().map_err(|e| ClusterError::Raft(e.to_string()))?);
        let raft = Raft::new(id, raft_config, Network::new(transport.clone()), log, sm)
            .await
            .map_err(|e| ClusterError::Raft(e.to_string()))?;
        let mut tasks = Vec::new();
        let (served, timeout) = (raft.clone(), config.propose_timeout);
        tasks.push(tokio::spawn(transport::serve(listener, cluster_id, move |rpc| {
            handle(served.clone(), timeout, rpc)
        })));
        if !raft.is_initialized().await.map_err(|e| ClusterError::Raft(e.to_string()))? {
            // Every fresh member proposes the same set; whichever entry wins, it is that set.
            if let Err(e) = raft.initialize(members.clone()).await {
                tracing::debug!(error = %e, "the metadata group was initialized elsewhere first");
            }
        }
        let leader_changes = Arc::new(AtomicU64::new(0));
        tasks.push(tokio::spawn(watch_leader(raft.clone(), leader_changes.clone())));
        tasks.push(tokio::spawn(detect(raft.clone(), transport.clone(), id)));
        tracing::info!(node = %config.node, id, listen = %config.listen, peers = members.len(), "cluster member started");
        Ok(Arc::new(Cluster {
            id,
            name: config.node,
            raft,
            transport,
            propose_timeout: config.propose_timeout,
            leader_changes,
            tasks: Mutex::new(tasks),
        }))
    }

    /// Proposes `body` to the metadata group: the machine's answer once the change is
    /// committed by a majority and applied on this node.
    pub async fn propose(&self, body: String) -> Result<String, ProposeError> {
        let deadline = tokio::time::Instant::now() + self.propose_timeout;
        let proposal = Proposal { body };
        loop {
            let written = tokio::time::timeout_at(deadline, self.raft.client_write(proposal.clone())).await;
            let leader = match written {
                Err(_) => return Err(ProposeError::NoQuorum(self.propose_timeout)),
                Ok(Ok(r)) => return settle(r.data),
                Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => f.leader_id,
                Ok(Err(e)) => return Err(ProposeError::Failed(e.to_string())),
            };
            match leader.filter(|l| *l != self.id) {
                Some(l) => {
                    if let Some(r) = self.forward(l, &proposal, deadline).await? {
                        return r;
                    }
                }
                None => {}
            }
            // No leader yet, or it changed under us before the proposal was sent: again.
            if tokio::time::Instant::now() + Duration::from_millis(100) >= deadline {
                return Err(ProposeError::NoQuorum(self.propose_timeout));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Forwards `proposal` to `leader`; `None` when it was not sent (try again).
    async fn forward(
        &self,
        leader: NodeId,
        proposal: &Proposal,
        deadline: tokio::time::Instant,
    ) -> Result<Option<Result<String, ProposeError>>, ProposeError> {
        let metrics = self.raft.metrics().borrow_watched().clone();
        let Some(member) =
            metrics.membership_config.nodes().find(|(id, _)| **id == leader).map(|(_, m)| m.clone())
        else {
            return Ok(None);
        };
        let peer = self.transport.peer(leader, &member);
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

    /// What `warren cluster status` shows.
    pub fn status(&self) -> Status {
        let m = self.raft.metrics().borrow_watched().clone();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let peers: BTreeMap<NodeId, Arc<transport::Peer>> = self.transport.peers().into_iter().collect();
        let now = now_ms();
        let members = membership
            .nodes()
            .map(|(id, member)| {
                let (up, seen) = if *id == self.id {
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
            .collect();
        let leader = m
            .current_leader
            .and_then(|l| membership.nodes().find(|(id, _)| **id == l))
            .map(|(_, n)| n.name.clone());
        Status {
            node: self.name.clone(),
            state: state_name(m.state).into(),
            term: m.current_term,
            leader,
            commit_index: m.cluster_committed.map(|l| l.index()),
            applied_index: m.last_applied.map(|l| l.index()),
            leader_changes: self.leader_changes.load(Ordering::Relaxed),
            members,
        }
    }

    /// Whether a metadata leader is known (writes can be made).
    pub fn has_leader(&self) -> bool {
        self.raft.metrics().borrow_watched().current_leader.is_some()
    }

    /// Waits up to `timeout` for this node to have applied what the cluster had committed
    /// when it started (so what it serves is no older than what it served before a restart).
    pub async fn caught_up(&self, timeout: Duration) -> bool {
        self.raft.wait_for_recovery(Some(timeout)).await.is_ok()
    }

    /// Leaves the group's work: the Raft node stops and the listener closes.
    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "the metadata group did not stop cleanly");
        }
        for t in self.tasks.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            t.abort();
        }
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

/// Answers one peer's request.
async fn handle(raft: Raft<Meta, StateMachine>, timeout: Duration, rpc: Rpc) -> Reply {
    match rpc {
        Rpc::Ping => Reply::Pong,
        Rpc::AppendEntries(r) => {
            raft.append_entries(r).await.map_or_else(|e| Reply::Failed(e.to_string()), Reply::AppendEntries)
        }
        Rpc::Vote(r) => raft.vote(r).await.map_or_else(|e| Reply::Failed(e.to_string()), Reply::Vote),
        Rpc::Snapshot { vote, meta, data } => {
            let snapshot =
                SnapshotOf::<Meta, Cursor<Vec<u8>>> { meta, snapshot: Cursor::new(data.into_bytes()) };
            raft.install_full_snapshot(vote, snapshot)
                .await
                .map_or_else(|e| Reply::Failed(e.to_string()), Reply::Snapshot)
        }
        Rpc::Propose(p) => match tokio::time::timeout(timeout, raft.client_write(p)).await {
            Ok(Ok(r)) => Reply::Proposed { outcome: r.data, index: r.log_id.index() },
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                Reply::NotLeader(f.leader_id)
            }
            Ok(Err(e)) => Reply::Failed(e.to_string()),
            Err(_) => Reply::Failed(format!("not committed within {timeout:?}")),
        },
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
