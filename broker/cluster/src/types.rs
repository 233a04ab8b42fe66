//! The metadata group's Raft types: what a proposal carries, what its apply answers, and
//! what a member is.

use serde::{Deserialize, Serialize};

/// What a proposal asks of the metadata group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Proposal {
    /// A change to the replicated metadata, in the words of the machine that applies it (the
    /// server's JSON); the cluster carries it without reading it.
    App(String),
    /// A member's name leaves for good: no node may join under it again.
    Retire(String),
}

impl std::fmt::Display for Proposal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Proposal::App(body) => write!(f, "proposal of {} bytes", body.len()),
            Proposal::Retire(name) => write!(f, "retirement of {name}"),
        }
    }
}

/// What applying a proposal gave: the machine's answer, or why it refused the change. Every
/// member gets the same one, since the apply is deterministic.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// `Ok` with the machine's answer, `Err` with its reason; `None` for a Raft entry of its
    /// own (a blank or membership entry).
    pub result: Option<Result<String, String>>,
}

/// A member of the cluster: its name (unique, never reused) and its inter-node address.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Member {
    /// Its name, as `[cluster] node` gives it.
    pub name: String,
    /// Where its inter-node listener is.
    pub addr: String,
}

impl std::fmt::Display for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.name, self.addr)
    }
}

openraft::declare_raft_types!(
    /// The metadata group's type configuration.
    pub Meta:
        D = Proposal,
        R = Outcome,
        Node = Member,
);

/// A member's id within the group.
pub type NodeId = u64;
