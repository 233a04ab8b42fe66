//! openraft's network over the [`crate::transport`]: votes and appends on a peer's control
//! line, snapshots on its bulk line.

use std::io::Cursor;
use std::sync::Arc;

use openraft::alias::{SnapshotOf, VoteOf};
use openraft::error::{RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{RaftNetworkFactory, RaftNetworkV2};

use crate::transport::{Peer, Transport};
use crate::types::{Member, Meta, NodeId};
use crate::wire::{Reply, Rpc};

/// Builds a [`PeerClient`] per peer.
pub struct Network {
    transport: Arc<Transport>,
}

impl Network {
    /// The network over `transport`.
    pub fn new(transport: Arc<Transport>) -> Self {
        Network { transport }
    }
}

impl RaftNetworkFactory<Meta> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> PeerClient {
        PeerClient { peer: self.transport.peer(target, node) }
    }
}

/// One node's line to one peer.
pub struct PeerClient {
    peer: Arc<Peer>,
}

fn unreachable(e: impl std::fmt::Display) -> Unreachable<Meta> {
    Unreachable::from_string(e.to_string())
}

fn unexpected(reply: Reply) -> Unreachable<Meta> {
    match reply {
        Reply::Failed(why) => unreachable(why),
        other => unreachable(format!("an answer of the wrong kind: {other:?}")),
    }
}

impl RaftNetworkV2<Meta> for PeerClient {
    type SnapshotData = Cursor<Vec<u8>>;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<Meta>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<Meta>, RPCError<Meta>> {
        match self.peer.control.call(Rpc::AppendEntries(rpc), option.hard_ttl()).await {
            Ok(Reply::AppendEntries(r)) => Ok(r),
            Ok(other) => Err(unexpected(other).into()),
            Err(e) => Err(unreachable(e).into()),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<Meta>,
        option: RPCOption,
    ) -> Result<VoteResponse<Meta>, RPCError<Meta>> {
        match self.peer.control.call(Rpc::Vote(rpc), option.hard_ttl()).await {
            Ok(Reply::Vote(r)) => Ok(r),
            Ok(other) => Err(unexpected(other).into()),
            Err(e) => Err(unreachable(e).into()),
        }
    }

    async fn full_snapshot(
        &mut self,
        vote: VoteOf<Meta>,
        snapshot: SnapshotOf<Meta, Cursor<Vec<u8>>>,
        _cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<Meta>, StreamingError<Meta>> {
        let data = String::from_utf8(snapshot.snapshot.into_inner()).map_err(unreachable)?;
        let rpc = Rpc::Snapshot { vote, meta: snapshot.meta, data };
        match self.peer.bulk.call(rpc, option.hard_ttl()).await {
            Ok(Reply::Snapshot(r)) => Ok(r),
            Ok(other) => Err(unexpected(other).into()),
            Err(e) => Err(unreachable(e).into()),
        }
    }
}
