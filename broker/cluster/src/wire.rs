//! The inter-node wire: length-prefixed JSON frames (a big-endian `u32`, then that many
//! octets), a hello naming the cluster, the sender and the stream's class, then requests one
//! way and responses the other, matched by id so one connection carries many at once.
//!
//! JSON because metadata traffic is small and a capture is readable; a frame over
//! [`MAX_FRAME`] ends the connection before its body is read.

use openraft::alias::{SnapshotMetaOf, VoteOf};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::types::{Member, Meta, NodeId, Outcome, Proposal};

/// Octets one frame may have: a snapshot of the largest directory fits.
pub const MAX_FRAME: usize = 64 << 20;
/// Octets the frames of the handshake (hello, challenge, proof) may have.
pub const MAX_HANDSHAKE_FRAME: usize = 4 << 10;

/// Which traffic a connection carries: control (votes, appends, pings, proposals) is never
/// queued behind bulk (snapshots, later message bodies).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Class {
    /// Small and urgent.
    Control,
    /// Large.
    Bulk,
}

/// The first frame a dialer sends.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Hello {
    /// The cluster's id: a peer of another cluster is refused. Empty from a node that has not
    /// joined yet, whose connection may then only ask to join.
    pub cluster: String,
    /// The dialer's name.
    pub from: String,
    /// What the connection carries.
    pub class: Class,
    /// The dialer's challenge to the listener: 16 random octets, hex.
    pub nonce: String,
}

/// The listener's answer to a hello: its proof that it holds the cookie, and its own
/// challenge.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Challenge {
    /// 16 random octets, hex.
    pub nonce: String,
    /// HMAC-SHA256 under the cookie of the two nonces, hex (see `crate::cookie`).
    pub proof: String,
}

/// The dialer's proof that it holds the cookie.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Proof {
    /// HMAC-SHA256 under the cookie of the two nonces, the other way round, hex.
    pub proof: String,
}

/// A request, by its id on its connection.
#[derive(Debug, Serialize, Deserialize)]
pub struct Request {
    /// Matches the response.
    pub id: u64,
    /// What is asked.
    pub rpc: Rpc,
}

/// What one node asks of another.
#[derive(Debug, Serialize, Deserialize)]
pub enum Rpc {
    /// Are you there? (the failure detector's heartbeat)
    Ping,
    /// Raft: replicate entries.
    AppendEntries(AppendEntriesRequest<Meta>),
    /// Raft: a vote.
    Vote(VoteRequest<Meta>),
    /// Raft: a whole snapshot.
    Snapshot {
        /// The sender's vote.
        vote: VoteOf<Meta>,
        /// What the snapshot covers.
        meta: SnapshotMetaOf<Meta>,
        /// The machine's state.
        data: String,
    },
    /// A proposal forwarded to the leader.
    Propose(Proposal),
    /// A new node asks to become a member (forwarded to the leader).
    Join(Member),
    /// A member leaves for good, its name retired (forwarded to the leader).
    Remove(String),
    /// Has this node a group (is its Raft initialized)? Asked by a fresh initial member.
    Probe,
    /// A request of the server's own (a message for a queue that lives on this node).
    App(String),
}

/// A response, by the id of its request.
#[derive(Debug, Serialize, Deserialize)]
pub struct Response {
    /// The request's id.
    pub id: u64,
    /// The answer.
    pub reply: Reply,
}

/// What a node answers.
#[derive(Debug, Serialize, Deserialize)]
pub enum Reply {
    /// To a ping.
    Pong,
    /// Raft's answers.
    AppendEntries(AppendEntriesResponse<Meta>),
    /// Raft's answers.
    Vote(VoteResponse<Meta>),
    /// Raft's answers.
    Snapshot(SnapshotResponse<Meta>),
    /// The proposal was applied on the leader at `index`.
    Proposed {
        /// What its apply gave.
        outcome: Outcome,
        /// Its log index: the proposer waits until it has applied that far.
        index: u64,
    },
    /// This node is not the leader; the leader it knows, if any.
    NotLeader(Option<NodeId>),
    /// The node joined the cluster of this id, as a voter.
    Joined {
        /// The cluster's id, for the new member's hellos.
        cluster: String,
        /// The log index of its promotion: it answers its operator once it applied that far.
        index: u64,
    },
    /// The member was removed.
    Removed,
    /// To a probe.
    Probed {
        /// Whether this node's Raft is initialized.
        initialized: bool,
    },
    /// The answer to [`Rpc::App`].
    App(String),
    /// The request failed here.
    Failed(String),
}

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The connection failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// A frame announced more octets than allowed.
    #[error("a frame of {0} octets, over the limit")]
    TooLarge(usize),
    /// A frame that is not what was expected.
    #[error("a malformed frame: {0}")]
    Malformed(#[from] serde_json::Error),
}

/// Writes `value` as one frame.
pub async fn write<W: AsyncWrite + Unpin, T: Serialize>(w: &mut W, value: &T) -> Result<(), WireError> {
    let body = serde_json::to_vec(value)?;
    if body.len() > MAX_FRAME {
        return Err(WireError::TooLarge(body.len()));
    }
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    w.write_all(&frame).await?;
    Ok(())
}

/// Reads one frame; `None` at a clean end of the stream.
pub async fn read<R: AsyncRead + Unpin, T: DeserializeOwned>(r: &mut R) -> Result<Option<T>, WireError> {
    read_limited(r, MAX_FRAME).await
}

/// Reads one frame of at most `max` octets; `None` at a clean end of the stream.
pub async fn read_limited<R: AsyncRead + Unpin, T: DeserializeOwned>(
    r: &mut R,
    max: usize,
) -> Result<Option<T>, WireError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(WireError::TooLarge(len));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    Ok(Some(serde_json::from_slice(&body)?))
}

/// Decodes the frame at the start of `buf` (at most `max` octets): the value and the octets
/// it took, `None` while the frame is incomplete. The same rules as [`read_limited`], for a
/// buffer (and the fuzz target).
pub fn decode<T: DeserializeOwned>(buf: &[u8], max: usize) -> Result<Option<(T, usize)>, WireError> {
    let Some(header) = buf.get(..4) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
    if len > max {
        return Err(WireError::TooLarge(len));
    }
    let Some(body) = buf.get(4..4 + len) else {
        return Ok(None);
    };
    Ok(Some((serde_json::from_slice(body)?, 4 + len)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_oversized_ones_are_refused_before_their_body() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let hello = Hello { cluster: "c".into(), from: "n1".into(), class: Class::Bulk, nonce: "00".into() };
        write(&mut a, &hello).await.expect("write");
        let got: Hello = read(&mut b).await.expect("read").expect("a frame");
        assert_eq!((got.from.as_str(), got.class), ("n1", Class::Bulk));
        // A length over the limit, and no body at all: refused on the length alone.
        a.write_all(&((MAX_FRAME as u32) + 1).to_be_bytes()).await.expect("write");
        assert!(matches!(read::<_, Hello>(&mut b).await, Err(WireError::TooLarge(_))));
        drop(a);
        assert!(read::<_, Hello>(&mut b).await.expect("clean end").is_none());
    }
}
