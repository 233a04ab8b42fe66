//! MQTT 3.1.1 and 5 on the wire, free of I/O: bytes in, packets out, and back.
//!
//! The MQTT adapter component (`plugins/adapter-mqtt`) is built on this crate, so it keeps
//! to what compiles for `wasm32-wasip2`: no runtime, no sockets, no clock. The decoder
//! checks what the specifications make a malformed packet or a protocol error and says
//! which, with the reason code an MQTT 5 server sends for it; the limits (packet size, the
//! remaining length's four bytes) are checked before a byte of the body is waited for.
//!
//! # Layout
//! - [`packet`]: the packets of both versions as one set of types.
//! - [`properties`]: MQTT 5 properties: which packet may carry which, read and written.
//! - [`decode`]: bytes to packets, with the limits.
//! - [`encode`]: packets to bytes.
//! - [`session`]: one connection's rules, sans-IO: CONNECT to CONNACK with the broker's
//!   login, keep-alive, QoS 0 and 1 with PUBACK after the broker's confirm, topic aliases,
//!   subscriptions as bindings of the session's queue, deliveries with packet identifiers,
//!   the will (`session/`: the session, connect, inbound, outbound, subscribe).
//! - [`topic`]: topic names and filters (checks, matching, shared subscriptions) and
//!   RabbitMQ's mapping between MQTT topics and AMQP routing keys.
//! - [`error`]: what the decoder and encoder refuse, with MQTT 5 reason codes.
//! - `wire`: the primitive encodings (integers, strings, variable byte integers).

pub mod decode;
pub mod encode;
pub mod error;
pub mod packet;
pub mod properties;
pub mod session;
pub mod topic;
mod wire;

#[cfg(test)]
mod tests;

pub use decode::decode;
pub use encode::encode;
pub use error::{DecodeError, EncodeError};
pub use packet::*;
pub use properties::Properties;
