//! Runnable examples for Warren (`cargo run -p warren-examples --bin NAME -- [AMQP_URL]`):
//!
//! - `dead-letter`: a work queue with a dead-letter exchange; a rejected message lands in the
//!   dead-letter queue with its `x-death` history, and stays there for you to look at
//!   (`curl -s -u guest:guest 127.0.0.1:15672/api/queues`) or replay.
//! - `quic-client`: AMQP 0-9-1 over QUIC directly, with `warren-codec` frames on a quinn
//!   stream ([`quic`]).
//! - `retry`: a queue with an exponential `x-retry-policy`; a consumer that fails twice and
//!   then succeeds, with the broker doing the backoff.
//!
//! Prometheus configuration and alert rules are in `examples/prometheus/`, a Grafana
//! dashboard in `examples/grafana/`.

pub mod quic;

/// The broker URL from the first argument, or Warren's default.
pub fn url() -> String {
    std::env::args().nth(1).unwrap_or_else(|| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}
