//! The Warren broker binary's library half: settings, listeners and connection drivers.
//!
//! # Layout
//! - [`alarms`]: the disk, memory and storage alarms that block publishers.
//! - [`bridge`]: `warren bridge`, plain AMQP over TCP carried over QUIC.
//! - [`quic`]: QUIC endpoints (mapping v1: one stream, one AMQP connection).
//! - [`config`]: flags, environment, TOML file, defaults.
//! - [`http`]: serving the HTTP endpoints with header timeouts and a connection cap.
//! - [`management`]: the management HTTP API (queues, dead-letter replay).
//! - [`memory`]: the memory alarm (RabbitMQ's `vm_memory_high_watermark`).
//! - [`metrics`]: Prometheus `/metrics`, read from the broker at scrape time.
//! - [`tls`]: AMQPS configuration and client-certificate identities.
//! - [`storage`]: the durable store's start-up recovery, group-commit thread, disk monitor,
//!   and what a failed fsync does.
//! - [`server`]: the TCP listener and the per-connection driver around
//!   [`warren_core::Connection`].
//!
//! Tests start a [`server::Server`] in-process on `127.0.0.1:0` and talk to it over a real
//! socket with real AMQP clients.

pub mod alarms;
pub mod bridge;
pub mod channel_streams;
pub mod config;
pub mod http;
pub mod management;
pub mod memory;
pub mod metrics;
pub mod plugins;
pub mod quic;
pub mod server;
pub mod storage;
pub mod tls;
