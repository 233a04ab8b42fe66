//! `warren-perf`: a load generator for AMQP 0-9-1 brokers, in the spirit of RabbitMQ's
//! PerfTest and lavinmqperf, built on `warren-codec` and tokio so that the tool is not what
//! limits the figures.
//!
//! - [`client`]: handshake, batched frame writes, frame reads.
//! - [`throughput`]: producers and consumers; throughput, end-to-end and confirm latency.
//! - [`connections`]: many idle connections, and the broker's memory for each.
//! - [`histogram`]: latency quantiles without storing every sample.
//! - [`mqtt`]: MQTT fan-out at QoS 0 or 1, and idle MQTT connections, for any MQTT broker.

pub mod client;
pub mod connections;
pub mod histogram;
pub mod mqtt;
pub mod throughput;
