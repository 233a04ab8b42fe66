//! The output door: what the broker queued for this connection, encoded outside the lock a
//! chunk at a time, and the frames this machine sends itself.

use std::time::Instant;

use bytes::BytesMut;
use warren_codec::{Frame, Method, encode_content};

use super::*;
use crate::broker::Broker;
use crate::message::Outgoing;

impl Connection {
    /// Bytes to write to the socket, taken out of the machine. Encodes what
    /// [`Connection::pull_outbound`] took from the broker: call it without the broker lock.
    /// At most about [`OUTPUT_CHUNK`] octets (or one message) per call: call again while
    /// [`Connection::has_output`], so a backlog of deliveries or pipelined `basic.get`s of a
    /// large message is copied into memory a chunk at a time, not all at once.
    pub fn take_output(&mut self) -> BytesMut {
        self.encode_pending_up_to(OUTPUT_CHUNK);
        self.output.split()
    }

    /// Whether the broker has more deliveries for this connection than the last pull took:
    /// the driver should pull again once the output is written.
    pub fn has_backlog(&self) -> bool {
        self.backlog
    }

    /// Whether there are bytes to write.
    pub fn has_output(&self) -> bool {
        !self.output.is_empty() || !self.pending.is_empty()
    }

    /// Takes what the broker queued for this connection; [`Connection::take_output`] encodes it.
    pub fn pull_outbound(&mut self, now: Instant, broker: &mut Broker) {
        self.now = now;
        let Some(id) = self.id else {
            return;
        };
        let before = self.pending.len();
        self.backlog = broker.take_outbound(id, &mut self.pending);
        if self.pending.len() > before {
            self.mark_sent();
        }
        for (channel, e) in broker.take_errors(id) {
            match channel {
                0 => self.fail(now, e, broker),
                ch if self.channels.get(&ch).is_some_and(|p| !matches!(p, Phase::Closing)) => {
                    self.channel_error(now, ch, e, broker)
                }
                _ => {}
            }
        }
    }

    /// Encodes the frames the broker queued, ahead of anything the connection sends next.
    pub(super) fn encode_pending(&mut self) {
        self.encode_pending_up_to(usize::MAX);
    }

    /// Encodes queued frames until the output holds `limit` octets; the rest stay queued, in
    /// order. Whole items only, so a message's frames are never split.
    pub(super) fn encode_pending_up_to(&mut self, limit: usize) {
        let mut items = std::mem::take(&mut self.pending);
        let mut rest = Vec::new();
        let mut drain = items.drain(..);
        while let Some(item) = drain.next() {
            self.encode_outgoing(item);
            if self.output.len() >= limit {
                rest.extend(drain.by_ref());
                break;
            }
        }
        drop(drain);
        self.pending = if rest.is_empty() { items } else { rest };
    }

    pub(super) fn encode_outgoing(&mut self, item: Outgoing) {
        match item {
            Outgoing::Method { channel, method } => {
                Frame::Method { channel, method }.encode(&mut self.output)
            }
            Outgoing::Deliver { channel, consumer_tag, delivery_tag, redelivered, message } => {
                let m = &message;
                let deliver = warren_codec::frame::Deliver {
                    consumer_tag: &consumer_tag,
                    delivery_tag,
                    redelivered,
                    exchange: &m.exchange,
                    routing_key: &m.routing_key,
                };
                deliver.encode(&mut self.output, channel, &m.properties, &m.body, self.frame_max)
            }
            Outgoing::Content { channel, method, message } => encode_content(
                &mut self.output,
                channel,
                method,
                &message.properties,
                &message.body,
                self.frame_max,
            ),
        }
    }

    pub(super) fn send(&mut self, channel: u16, method: impl Into<Method>) {
        self.encode_pending();
        Frame::method(channel, method).encode(&mut self.output);
        self.mark_sent();
    }

    pub(super) fn mark_sent(&mut self) {
        self.last_send = self.now;
    }
}
