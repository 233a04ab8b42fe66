//! Warren's broker model, free of I/O: events and `now` go in, frames and effects come out.
//!
//! ```text
//!  socket bytes ─► Connection ── handshake, frames, content assembly, heartbeats
//!                      │ methods, complete publishes
//!                      ▼
//!                   Broker ── queues, consumers, delivery, acks (one vhost, "/")
//!                      │ Outgoing per connection + which connections to wake
//!                      ▼
//!              Connection::pull_outbound ─► bytes for the socket
//! ```
//!
//! # Layout
//! - [`connection`]: the per-connection machine (handshake → running → closing).
//! - [`broker`]: the vhost and connection sessions; method handlers by class.
//! - [`queue`]: a queue's messages, consumers, declaration checks.
//! - [`channel`]: per-channel delivery tags, unacked messages, prefetch.
//! - [`message`]: messages and what is sent to connections.
//! - [`auth`]: users, PLAIN and AMQPLAIN.
//! - [`names`]: `amq.gen-` and `amq.ctag-` names.
//! - [`error`]: AMQP errors with reply codes.
//!
//! Nothing here reads a clock, a socket or a file; the driver in `broker/server` does.

pub mod auth;
pub mod broker;
pub mod channel;
pub mod connection;
pub mod deadletter;
pub mod error;
pub mod exchange;
pub mod harness;
pub mod hash;
pub mod message;
pub mod names;
pub mod policy;
pub mod queue;
pub mod queue_args;
pub mod retry;
pub mod stats;
pub mod storage;

pub use broker::{Broker, BrokerConfig, ConnId};
pub use connection::{Connection, ConnectionConfig, Event};
pub use error::AmqpError;
