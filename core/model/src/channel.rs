//! The broker's state for one open channel: delivery tags, unacked messages, consumers and
//! prefetch limits.

use std::collections::BTreeMap;

use crate::hash::Map;

use crate::message::QueuedMessage;

/// A consumer as its channel sees it.
#[derive(Debug, Clone)]
pub struct Consumer {
    /// The queue it consumes from (its name, shared with the queue).
    pub queue: std::sync::Arc<str>,
    /// Deliveries need no acknowledgement.
    pub no_ack: bool,
    /// Per-consumer prefetch limit (basic.qos global=false); 0 is unlimited.
    pub prefetch: u16,
    /// Its deliveries not yet acknowledged.
    pub unacked: u32,
    /// How long a delivery may wait for its acknowledgement (RabbitMQ's `consumer_timeout`);
    /// `None` for no limit.
    pub timeout: Option<std::time::Duration>,
}

impl Consumer {
    /// Whether it may take one more delivery, given whether its channel's window has room
    /// (auto-ack consumers are limited by neither).
    fn has_room(&self, channel_room: bool) -> bool {
        self.no_ack || (channel_room && (self.prefetch == 0 || self.unacked < u32::from(self.prefetch)))
    }
}

/// A delivered message waiting for ack, nack or reject.
#[derive(Debug, Clone)]
pub struct Unacked {
    /// The queue incarnation it came from.
    pub queue_id: u64,
    /// That queue's name.
    pub queue: std::sync::Arc<str>,
    /// The message.
    pub message: QueuedMessage,
    /// The consumer it went to; `None` for basic.get.
    pub consumer: Option<std::sync::Arc<str>>,
    /// When it was delivered, for the consumer timeout.
    pub delivered_at: std::time::Instant,
    /// Which delivery of a quorum queue's machine it is; `None` from a classic queue.
    pub quorum: Option<QuorumDelivery>,
}

/// A delivery from a quorum queue as its machine knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuorumDelivery {
    /// Its id among its consumer's deliveries: the machine settles by it.
    pub id: u64,
    /// The message's index: its body goes back under it when it is returned.
    pub index: u64,
}

/// One channel's delivery state.
#[derive(Debug)]
pub struct ChannelState {
    /// Unique per channel incarnation, broker-wide.
    pub id: u64,
    next_tag: u64,
    /// Unacked deliveries by delivery tag, in delivery order.
    pub unacked: BTreeMap<u64, Unacked>,
    /// Consumers by tag.
    pub consumers: Map<String, Consumer>,
    /// The prefetch new consumers get (basic.qos global=false).
    pub consumer_prefetch: u16,
    /// The channel-wide prefetch (basic.qos global=true); 0 is unlimited.
    pub channel_prefetch: u16,
    /// Cleared by channel.flow active=false: no deliveries to this channel's consumers.
    pub active: bool,
    /// Set while the transport holds this channel's deliveries back (a QUIC channel stream
    /// whose client is not reading): they wait in their queues, as under channel.flow.
    pub held: bool,
    /// Method replies of this channel waiting for a sync: a later reply waits behind them,
    /// so a client gets its replies in the order it sent the methods.
    pub held_replies: usize,
    /// Next publish sequence number once confirm.select was received.
    pub confirm_seq: Option<u64>,
    /// Publishes and settlements held for tx.commit, once tx.select was received.
    pub tx: Option<Vec<TxOp>>,
    /// Body octets of the publishes in `tx`.
    pub tx_bytes: u64,
    /// The last queue declared on this channel, for the empty-name shortcut.
    pub last_queue: Option<String>,
    /// Which of its publishes were confirmed, for coalescing acks.
    pub confirmed: crate::broker::Confirmed,
    /// Its consumer of `amq.rabbitmq.reply-to`, if it has one.
    pub reply: Option<crate::broker::ReplyConsumer>,
    /// Delivery tags whose messages went back to their queue when their consumer timed out:
    /// a late ack or nack of one settles nothing, instead of failing as an unknown tag.
    pub timed_out: std::collections::BTreeSet<u64>,
}

/// Work a transactional channel holds until tx.commit.
#[derive(Debug)]
pub enum TxOp {
    /// A publish, routed at commit.
    Publish {
        /// The method.
        method: warren_codec::BasicPublish,
        /// Its properties (boxed: settlements are far more common in a transaction).
        properties: Box<warren_codec::BasicProperties>,
        /// Its body.
        body: bytes::Bytes,
    },
    /// An ack (`requeue` None), nack or reject, applied at commit.
    Settle {
        /// Delivery tag.
        tag: u64,
        /// Multiple flag.
        multiple: bool,
        /// Requeue flag for nack and reject.
        requeue: Option<bool>,
        /// A basic.reject (a failed delivery for a quorum queue), not a nack.
        reject: bool,
    },
}

impl Default for ChannelState {
    fn default() -> Self {
        ChannelState {
            id: 0,
            next_tag: 1,
            unacked: BTreeMap::new(),
            consumers: Map::default(),
            consumer_prefetch: 0,
            channel_prefetch: 0,
            active: true,
            held: false,
            held_replies: 0,
            confirm_seq: None,
            tx: None,
            tx_bytes: 0,
            last_queue: None,
            confirmed: Default::default(),
            reply: None,
            timed_out: Default::default(),
        }
    }
}

impl ChannelState {
    /// Allocates the next delivery tag.
    pub fn next_delivery_tag(&mut self) -> u64 {
        let t = self.next_tag;
        self.next_tag += 1;
        t
    }

    /// The publish sequence number of the next message, once confirm.select was received.
    pub fn next_confirm_seq(&mut self) -> Option<u64> {
        let seq = self.confirm_seq?;
        self.confirm_seq = Some(seq + 1);
        Some(seq)
    }

    /// Whether the channel-wide prefetch (basic.qos global=true) leaves room for one more.
    fn under_channel_prefetch(&self) -> bool {
        self.channel_prefetch == 0 || self.unacked.len() < usize::from(self.channel_prefetch)
    }

    /// Whether its consumers get deliveries at all (neither channel.flow nor the transport
    /// holds them).
    fn flowing(&self) -> bool {
        self.active && !self.held
    }

    /// Whether consumer `tag` may receive one more message now.
    pub fn can_deliver(&self, tag: &str) -> bool {
        self.flowing() && self.consumers.get(tag).is_some_and(|c| c.has_room(self.under_channel_prefetch()))
    }

    /// Takes a place in consumer `tag`'s prefetch window for one delivery, if it has room;
    /// `Some(no_ack)` when it does. [`ChannelState::can_deliver`] with the claim, in one lookup.
    pub fn claim(&mut self, tag: &str) -> Option<(bool, Option<std::time::Duration>)> {
        let (active, channel_room) = (self.flowing(), self.under_channel_prefetch());
        let c = self.consumers.get_mut(tag).filter(|c| active && c.has_room(channel_room))?;
        if !c.no_ack {
            c.unacked += 1;
        }
        Some((c.no_ack, c.timeout))
    }

    /// The queues this channel's consumers take from (a queue once per consumer).
    pub fn consumer_queues(&self) -> impl Iterator<Item = std::sync::Arc<str>> + '_ {
        self.consumers.values().map(|c| c.queue.clone())
    }

    /// Removes the unacked deliveries an ack, nack or reject names, RabbitMQ's way:
    /// `multiple` with tag 0 takes all; otherwise the tag must be outstanding, and
    /// `multiple` takes every tag up to it. `None` means an unknown tag.
    pub fn take_unacked(&mut self, tag: u64, multiple: bool) -> Option<Vec<Unacked>> {
        if multiple && tag == 0 {
            return Some(std::mem::take(&mut self.unacked).into_values().collect());
        }
        if !self.unacked.contains_key(&tag) {
            if !self.timed_out.remove(&tag) {
                return None;
            }
            if !multiple {
                return Some(Vec::new());
            }
        }
        if !multiple {
            return self.unacked.remove(&tag).map(|u| vec![u]);
        }
        let rest = self.unacked.split_off(&(tag + 1));
        let taken = std::mem::replace(&mut self.unacked, rest);
        Some(taken.into_values().collect())
    }

    /// Whether an ack, nack or reject for `tag` would find something to settle.
    pub fn knows_tag(&self, tag: u64, multiple: bool) -> bool {
        (multiple && tag == 0) || self.unacked.contains_key(&tag) || self.timed_out.contains(&tag)
    }

    /// Counts a settled delivery off its consumer's prefetch window.
    pub fn settled(&mut self, u: &Unacked) {
        if let Some(c) = u.consumer.as_ref().and_then(|t| self.consumers.get_mut(&**t)) {
            c.unacked = c.unacked.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::message::Message;

    fn unacked() -> Unacked {
        let message = Arc::new(Message {
            exchange: String::new(),
            routing_key: String::new(),
            properties: Default::default(),
            body: Default::default(),
        });
        Unacked {
            queue_id: 1,
            queue: "q".into(),
            message: QueuedMessage::new(0, message, None, 0),
            consumer: None,
            #[allow(clippy::disallowed_methods)] // a test needs some instant
            delivered_at: std::time::Instant::now(),
            quorum: None,
        }
    }

    #[test]
    fn multiple_takes_every_tag_up_to_the_named_one() {
        let mut ch = ChannelState::default();
        for _ in 0..5 {
            let t = ch.next_delivery_tag();
            ch.unacked.insert(t, unacked());
        }
        assert!(ch.take_unacked(9, true).is_none());
        assert_eq!(ch.take_unacked(3, true).map(|v| v.len()), Some(3));
        assert!(ch.take_unacked(2, false).is_none());
        assert_eq!(ch.take_unacked(0, true).map(|v| v.len()), Some(2));
        assert!(ch.take_unacked(0, false).is_none());
    }
}
