//! Raft RPCs between nodes of one process: each (group, node) registers its [`Raft`] handle
//! with a [`LocalRouter`], and a node's network client calls its peer's handle directly. A
//! node cut off ([`LocalRouter::cut`]) answers nothing, as a crashed or partitioned node:
//! its peers see `Unreachable` and elect without it.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use openraft::alias::{SnapshotOf, VoteOf};
use openraft::error::{RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::storage::RaftStateMachine;
use openraft::{Raft, RaftNetworkFactory, RaftNetworkV2, RaftTypeConfig};

/// Which group of the process a Raft node belongs to.
pub type GroupId = u64;

/// The registered nodes, by (group, node id).
type Nodes<C, SM> = HashMap<(GroupId, <C as RaftTypeConfig>::NodeId), Raft<C, SM>>;

/// Every registered node of every group, by (group, node id).
pub struct LocalRouter<C: RaftTypeConfig, SM: RaftStateMachine<C>> {
    nodes: Mutex<Nodes<C, SM>>,
}

impl<C, SM> Default for LocalRouter<C, SM>
where
    C: RaftTypeConfig,
    SM: RaftStateMachine<C>,
{
    fn default() -> Self {
        LocalRouter { nodes: Mutex::new(HashMap::new()) }
    }
}

impl<C, SM> LocalRouter<C, SM>
where
    C: RaftTypeConfig,
    C::NodeId: Hash,
    SM: RaftStateMachine<C>,
{
    /// Makes `raft` reachable as `node` of `group`.
    pub fn register(&self, group: GroupId, node: C::NodeId, raft: Raft<C, SM>) {
        self.lock().insert((group, node), raft);
    }

    /// Takes `node` of `group` off the network; its handle, to shut it down or put it back.
    pub fn cut(&self, group: GroupId, node: &C::NodeId) -> Option<Raft<C, SM>> {
        self.lock().remove(&(group, node.clone()))
    }

    /// The handle of `node` of `group`, while it is reachable.
    pub fn get(&self, group: GroupId, node: &C::NodeId) -> Option<Raft<C, SM>> {
        self.lock().get(&(group, node.clone())).cloned()
    }

    /// The network factory `node`s of `group` are built with.
    pub fn network(self: &Arc<Self>, group: GroupId) -> LocalNetwork<C, SM> {
        LocalNetwork { router: self.clone(), group }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Nodes<C, SM>> {
        self.nodes.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Builds the clients one node of a group sends its RPCs through.
pub struct LocalNetwork<C: RaftTypeConfig, SM: RaftStateMachine<C>> {
    router: Arc<LocalRouter<C, SM>>,
    group: GroupId,
}

impl<C, SM> RaftNetworkFactory<C> for LocalNetwork<C, SM>
where
    C: RaftTypeConfig,
    C::NodeId: Hash,
    SM: RaftStateMachine<C>,
{
    type Network = LocalClient<C, SM>;

    async fn new_client(&mut self, target: C::NodeId, _node: &C::Node) -> Self::Network {
        LocalClient { router: self.router.clone(), group: self.group, target }
    }
}

/// One node's line to one peer of its group.
pub struct LocalClient<C: RaftTypeConfig, SM: RaftStateMachine<C>> {
    router: Arc<LocalRouter<C, SM>>,
    group: GroupId,
    target: C::NodeId,
}

impl<C, SM> LocalClient<C, SM>
where
    C: RaftTypeConfig,
    C::NodeId: Hash,
    SM: RaftStateMachine<C>,
{
    fn peer(&self) -> Result<Raft<C, SM>, Unreachable<C>> {
        self.router.get(self.group, &self.target).ok_or_else(|| {
            Unreachable::from_string(format!("node {} of group {} is cut off", self.target, self.group))
        })
    }
}

impl<C, SM> RaftNetworkV2<C> for LocalClient<C, SM>
where
    C: RaftTypeConfig,
    C::NodeId: Hash,
    SM: RaftStateMachine<C>,
{
    type SnapshotData = SM::SnapshotData;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<C>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<C>, RPCError<C>> {
        let peer = self.peer()?;
        peer.append_entries(rpc).await.map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<C>,
        _option: RPCOption,
    ) -> Result<VoteResponse<C>, RPCError<C>> {
        let peer = self.peer()?;
        peer.vote(rpc).await.map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))
    }

    async fn full_snapshot(
        &mut self,
        vote: VoteOf<C>,
        snapshot: SnapshotOf<C, Self::SnapshotData>,
        _cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<C>, StreamingError<C>> {
        let peer = self.peer()?;
        peer.install_full_snapshot(vote, snapshot)
            .await
            .map_err(|e| StreamingError::Unreachable(Unreachable::new(&e)))
    }
}
