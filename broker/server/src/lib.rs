//! The Warren broker binary's library half: settings, listeners and connection drivers.
//!
//! # Layout
//! - [`server`]: binds what the settings name, builds the broker, runs the background tasks
//!   and one [`driver`] task per connection; [`server::Parts`] lets a test assemble its own.
//! - [`node`]: one broker per vhost, each behind its own lock, the store they share, the
//!   directory they read; vhosts added and removed at run time; each broker's timer task.
//! - [`directory_file`]: the directory (users, vhosts, permissions) kept durably in the data
//!   directory, and how the configuration file applies over it at start.
//! - [`definitions`]: RabbitMQ's definitions JSON, its users, vhosts and permissions.
//! - [`shared`]: a broker behind its lock, its connection tasks' wakers, the [`shared::Clock`].
//! - [`services`]: handles shared without the lock (alarms, storage/memory metrics, plugins).
//! - [`driver`]: one AMQP connection's task around [`warren_core::Connection`].
//! - [`adapter`]: protocol adapters (`[[plugins.adapter]]`): their listeners, one task per
//!   connection driving a session in the adapter's wasm instance, and the names, wills and
//!   retained messages their sessions share.
//! - [`listen`]: the dual-stack TCP bind, accepting on TCP/TLS/QUIC, QUIC stream routing.
//! - [`channel_streams`]: QUIC channel streams (one stream per AMQP channel), bounded both ways.
//! - [`quic`]: QUIC endpoints and certificates (mapping v1: one stream, one AMQP connection).
//! - [`tls`]: AMQPS configuration and client-certificate identities.
//! - [`bridge`]: `warren bridge`, plain AMQP over TCP carried over QUIC.
//! - [`config`]: flags, environment, TOML file, defaults.
//! - [`ctl`]: `warren ctl`, the operator's tool over the management API.
//! - [`alarms`]: the disk, memory and storage alarms that block publishers.
//! - [`memory`]: the memory alarm (RabbitMQ's `vm_memory_high_watermark`).
//! - [`storage`]: the durable store's start-up recovery, group-commit thread, disk monitor,
//!   and what a failed fsync does.
//! - [`plugins`]: loading, reloading and measuring the wasm plugin components.
//! - [`http`]: serving the HTTP endpoints with header timeouts and a connection cap.
//! - [`management`]: the management HTTP API (queues, dead-letter replay).
//! - [`metrics`]: Prometheus `/metrics`, read from the broker at scrape time.
//! - [`cluster_meta`]: the cluster's metadata on this node: directory and topology changes
//!   proposed to the metadata group and applied by every member.
//! - [`cluster_work`]: a member's brokers' proposals and forwards carried out, and messages
//!   other members forward to queues that live here.
//!
//! Modules depend one way: `server` on the rest, the rest on `node`, `shared` and `services`,
//! `node` on `shared` and `directory_file`, and `shared` on nothing of this crate.
//!
//! Tests start a [`server::Server`] in-process on `127.0.0.1:0` and talk to it over a real
//! socket with real AMQP clients.

pub mod adapter;
pub mod alarms;
pub mod bridge;
pub mod channel_streams;
pub mod cluster_meta;
pub mod cluster_work;
pub mod config;
pub mod ctl;
pub mod definitions;
pub mod directory_file;
pub mod driver;
pub mod http;
pub mod listen;
pub mod management;
pub mod memory;
pub mod metrics;
pub mod node;
pub mod plugins;
pub mod quic;
pub mod server;
pub mod services;
pub mod shared;
pub mod storage;
pub mod tls;
