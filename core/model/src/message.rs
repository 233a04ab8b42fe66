//! Messages as the broker holds them, and what it sends to connections.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use warren_codec::{BasicProperties, Method};

/// A published message. Shared by every queue it was routed to; the body is never copied.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// The exchange it was published to.
    pub exchange: String,
    /// The routing key it was published with.
    pub routing_key: String,
    /// Its properties.
    pub properties: Box<BasicProperties>,
    /// Its body.
    pub body: Bytes,
}

/// A message in a queue: the shared message plus this queue's view of it.
#[derive(Debug, Clone)]
pub struct QueuedMessage {
    /// Position in the queue's publish order; requeued messages go back by it.
    pub seq: u64,
    /// The message.
    pub message: Arc<Message>,
    /// Whether it was delivered before.
    pub redelivered: bool,
    /// When its TTL (queue's or its own, the shorter) runs out.
    pub expires_at: Option<Instant>,
    /// How many times it went back to the queue after a delivery (`x-delivery-count`).
    pub delivery_count: u32,
    /// Wall-clock milliseconds when it entered the queue (for the head message's age).
    pub enqueued_ms: u64,
    /// Where the store keeps it, when it is stored.
    pub stored: Option<crate::storage::StoreRef>,
}

impl QueuedMessage {
    /// A message entering a queue: never delivered, never returned.
    pub fn new(seq: u64, message: Arc<Message>, expires_at: Option<Instant>, enqueued_ms: u64) -> Self {
        QueuedMessage {
            seq,
            message,
            redelivered: false,
            expires_at,
            delivery_count: 0,
            enqueued_ms,
            stored: None,
        }
    }
}

/// Something the broker has for a connection to send, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Outgoing {
    /// A method frame.
    Method {
        /// Channel number.
        channel: u16,
        /// The method.
        method: Method,
    },
    /// basic.deliver with the message, encoded from the shared message itself (the hot path:
    /// no copy of the consumer tag, exchange or routing key per delivery).
    Deliver {
        /// Channel number.
        channel: u16,
        /// The consumer's tag.
        consumer_tag: Arc<str>,
        /// The delivery tag.
        delivery_tag: u64,
        /// Whether it was delivered before.
        redelivered: bool,
        /// The message.
        message: Arc<Message>,
    },
    /// A method followed by a message's header and body (get-ok, return).
    Content {
        /// Channel number.
        channel: u16,
        /// basic.deliver, basic.get-ok or basic.return.
        method: Method,
        /// The message.
        message: Arc<Message>,
    },
}
