//! Warren's cluster: Raft groups on openraft, the only crate that depends on it.
//!
//! # Layout
//! - [`local`]: an in-process network that carries Raft RPCs between groups' nodes living in
//!   one process, by (group, node). It lets tests and the spike (`benches/spike.rs`) run many
//!   groups of several nodes without sockets, and cut a node off to measure a failover.
//!
//! The inter-node transport, the metadata group and membership come with issue #19's later
//! steps; DESIGN.md describes where they go.

pub mod local;
