//! Warren's cluster: Raft groups on openraft, the only crate that depends on it.
//!
//! # Layout
//! - [`cluster`]: a node's part in the cluster: identity, the metadata group's Raft node,
//!   the listener, the failure detector, proposals and status.
//! - [`machine`]: the metadata group's state machine around the server's [`MetaMachine`],
//!   with snapshots on disk.
//! - [`store`]: the metadata group's Raft log on disk (records with CRCs, vote, committed).
//! - [`network`]: openraft's network over the transport.
//! - [`transport`]: connections between nodes (control and bulk), requests and responses.
//! - [`cookie`]: the cluster's shared secret and the mutual challenge every connection starts with.
//! - [`wire`]: the inter-node frames and messages.
//! - [`types`]: the metadata group's Raft types.
//! - [`files`]: small files written whole and durably.
//! - [`local`]: an in-process network that carries Raft RPCs between groups' nodes living in
//!   one process, by (group, node), for tests and the spike (`benches/spike.rs`).

pub mod cluster;
pub mod cookie;
pub mod files;
pub mod local;
pub mod machine;
pub mod network;
pub mod store;
pub mod transport;
pub mod types;
pub mod wire;

pub use cluster::{Cluster, ClusterConfig, ClusterError, MemberStatus, ProposeError, Status};
pub use machine::MetaMachine;
pub use types::Member;
