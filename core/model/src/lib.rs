//! Warren's broker model, free of I/O: events and `now` go in, frames and effects come out.
//!
//! ```text
//!  socket bytes ─► Connection ── handshake, frames, content assembly, heartbeats
//!                      │ methods, complete publishes
//!                      ▼
//!                   Broker ── vhosts (exchanges, queues, bindings), sessions, delivery, acks
//!                      │ Outgoing per connection + which connections to wake
//!                      ▼
//!              Connection::pull_outbound ─► bytes for the socket
//! ```
//!
//! `DESIGN.md` beside this crate's `Cargo.toml` says who owns which state, how a publish
//! flows from socket to consumer (each hop, copy and lock), and where the command/effect
//! boundary, quorum queues and protocol adapters go.
//!
//! # Layout
//! - [`connection`]: the per-connection AMQP machine; one file per part (handshake as
//!   typestates, running, content assembly, timers, close, output).
//! - [`adapter`]: a session for another protocol's adapter (MQTT): its operations applied on
//!   channels of a broker session, the replies matched to them.
//! - [`command`]: the commands a protocol machine submits ([`Broker::apply`], the door of every
//!   channel operation), translated from AMQP methods or built by another protocol.
//! - [`broker`]: the model's state and its doors: sessions and their channels, vhosts
//!   (`broker/vhost.rs`), method handlers by class (queues, exchanges and routing, basic,
//!   tx), delivery and settling, dead-lettering, confirms, persistence, timers, direct
//!   reply-to, consumer timeouts, operator actions (replay), the census a node's brokers
//!   share (one broker per vhost), and its in-memory tests.
//! - [`queue`]: one queue's declaration checks, consumers and messages: the classic queue
//!   (`queue/mod.rs`), the priority lane every kind keeps its ready messages in
//!   (`queue/lane.rs`), and the quorum queue's replicated state machine (`queue/quorum/`:
//!   the machine, its consumers, and the pair encoding of its snapshot's maps).
//! - [`catalog`]: a cluster's topology (exchanges, queues with their home node, bindings) as
//!   one replicated state machine the metadata group's log drives.
//! - [`queue_args`]: the one table of queue arguments: parsing, equivalence, policy keys.
//! - [`channel`]: per-channel delivery tags, unacked messages, prefetch, transactions.
//! - [`exchange`]: the exchange types, one per file, behind [`exchange::ExchangeType`].
//! - [`deadletter`]: the dead-lettered copy of a message and its `x-death` history.
//! - [`retry`]: retry policies (native, RabbitMQ 4.3's `x-delayed-retry-*`, plugins).
//! - [`policy`]: queue policies by vhost and name pattern.
//! - [`message`]: messages, queued entries, and what is sent to connections.
//! - [`storage`]: the storage trait the broker writes through, and an in-memory store.
//! - [`stats`]: counters read by the metrics endpoint.
//! - [`auth`]: users, PLAIN, AMQPLAIN and EXTERNAL.
//! - [`password`]: RabbitMQ's salted password hashes (sha256, sha512, md5), checked in
//!   constant time.
//! - [`directory`]: the node's users, vhosts and permissions, changed one [`directory::Change`]
//!   at a time and shared by every broker of the node.
//! - [`permissions`]: RabbitMQ's access rules: configure/write/read patterns per user and
//!   vhost, topic permissions.
//! - [`names`]: `amq.gen-` and `amq.ctag-` names.
//! - [`hash`]: the model's hash maps, under a seed the driver sets.
//! - [`harness`]: clients and a broker in memory on virtual time, for protocol tests.
//! - [`error`]: AMQP errors with reply codes.
//!
//! Nothing here reads a clock, a socket or a file; the driver in `broker/server` does.

pub mod adapter;
pub mod auth;
pub mod broker;
pub mod catalog;
pub mod channel;
pub mod command;
pub mod connection;
pub mod deadletter;
pub mod directory;
pub mod error;
pub mod exchange;
pub mod harness;
pub mod hash;
pub mod message;
pub mod names;
pub mod password;
pub mod permissions;
pub mod policy;
pub mod queue;
pub mod queue_args;
pub mod retry;
pub mod stats;
pub mod storage;

pub use broker::{Broker, BrokerConfig, ConnId};
pub use command::Command;
pub use connection::{Connection, ConnectionConfig, Event};
pub use error::AmqpError;
