//! Direct reply-to, as RabbitMQ has it: the RPC pattern without a reply queue. A requester
//! consumes the pseudo-queue `amq.rabbitmq.reply-to` (no-ack only) and publishes requests with
//! `reply-to = amq.rabbitmq.reply-to`; the broker rewrites that to
//! `amq.rabbitmq.reply-to.<token>`, and a reply published to the default exchange with that
//! routing key goes straight to the requester's channel. The token is random, names one
//! channel incarnation, and dies with its channel: a reply to a requester that is gone is
//! dropped, or returned when mandatory.

use std::sync::Arc;

use warren_codec::{BasicConsume, BasicConsumeOk, BasicProperties};

use super::{Broker, ConnId, VHostId};
use crate::error::{AmqpError, precondition};
use crate::message::{Message, Outgoing};

/// The pseudo-queue a requester consumes and names as `reply-to`.
pub const PSEUDO_QUEUE: &str = "amq.rabbitmq.reply-to";

/// What a rewritten `reply-to` starts with.
const PREFIX: &str = "amq.rabbitmq.reply-to.";

/// A channel's consumer of [`PSEUDO_QUEUE`].
#[derive(Debug, Clone)]
pub struct ReplyConsumer {
    /// Its consumer tag.
    pub tag: Arc<str>,
    /// The routing key replies to it are published with.
    pub token: String,
}

/// Whether `key` is a rewritten `reply-to`.
pub(super) fn is_reply_key(key: &str) -> bool {
    key.starts_with(PREFIX)
}

impl Broker {
    /// basic.consume of [`PSEUDO_QUEUE`].
    pub(super) fn consume_replies(
        &mut self,
        conn: ConnId,
        ch: u16,
        m: BasicConsume,
    ) -> Result<(), AmqpError> {
        if !m.no_ack {
            return Err(precondition("reply consumer cannot acknowledge"));
        }
        let tag = if m.consumer_tag.is_empty() { self.names.name("amq.ctag-") } else { m.consumer_tag };
        let Some(c) = self.channel(conn, ch) else {
            return Ok(());
        };
        // The token is all that stands between a stranger and this channel's replies: keyed
        // hashes (SipHash keyed with a secret the driver drew from the OS), not the name
        // generator, whose state one public name gives away.
        // The connection id is unique on the node: brokers of other vhosts, whose channel ids
        // and nonces count alike, never make the same token (and each has its own secret).
        let id = c.id;
        self.reply_nonce += 1;
        let nonce = (conn, id, self.reply_nonce);
        let token = format!(
            "{PREFIX}{:016x}{:016x}",
            keyed_hash(self.reply_secret, (nonce, 1u8)),
            keyed_hash(self.reply_secret, (nonce, 2u8))
        );
        let Some(c) = self.channel(conn, ch) else {
            return Ok(());
        };
        if c.reply.is_some() {
            return Err(precondition("reply consumer already set"));
        }
        if c.consumers.contains_key(&tag) {
            return Err(AmqpError::new(
                warren_codec::reply_code::NOT_ALLOWED,
                format!("attempt to reuse consumer tag '{tag}'"),
            ));
        }
        c.reply = Some(ReplyConsumer { tag: Arc::from(tag.as_str()), token: token.clone() });
        let id = c.id;
        self.replies.insert(token, (conn, ch, id));
        self.reply(conn, ch, m.no_wait, BasicConsumeOk { consumer_tag: tag });
        Ok(())
    }

    /// Cancels channel `ch`'s reply consumer if `tag` is its tag; returns whether it was.
    pub(super) fn cancel_replies(&mut self, conn: ConnId, ch: u16, tag: &str) -> bool {
        let Some(c) = self.channel(conn, ch) else {
            return false;
        };
        if c.reply.as_ref().is_none_or(|r| &*r.tag != tag) {
            return false;
        }
        if let Some(r) = c.reply.take() {
            self.replies.remove(&r.token);
        }
        true
    }

    /// Forgets a released channel's reply consumer.
    pub(super) fn forget_replies(&mut self, reply: Option<ReplyConsumer>) {
        if let Some(r) = reply {
            self.replies.remove(&r.token);
        }
    }

    /// Rewrites `reply-to = amq.rabbitmq.reply-to` on a publish from channel `ch` to that
    /// channel's token; 406 when the channel has no reply consumer, as in RabbitMQ.
    pub(super) fn rewrite_reply_to(
        &mut self,
        conn: ConnId,
        ch: u16,
        properties: &mut BasicProperties,
    ) -> Result<(), AmqpError> {
        if properties.reply_to.as_deref() != Some(PSEUDO_QUEUE) {
            return Ok(());
        }
        let token = self.channel(conn, ch).and_then(|c| c.reply.as_ref()).map(|r| r.token.clone());
        properties.reply_to = Some(token.ok_or_else(|| precondition("fast reply consumer does not exist"))?);
        Ok(())
    }

    /// Hands a reply published in vhost `vh` to `key` to its requester; returns whether one
    /// took it. A requester in another vhost is no destination: messages never cross.
    pub(super) fn deliver_reply(&mut self, vh: VHostId, key: &str, message: Arc<Message>) -> bool {
        let Some(&(conn, ch, id)) = self.replies.get(key) else {
            return false;
        };
        if self.vh(conn) != vh {
            return false;
        }
        let Some(c) = self.channel(conn, ch).filter(|c| c.id == id) else {
            return false;
        };
        let Some(consumer_tag) = c.reply.as_ref().map(|r| r.tag.clone()) else {
            return false;
        };
        // No room for it in front of a requester that does not read: undeliverable, as a
        // reply to a requester that is gone.
        if !self.sessions.get(&conn).is_some_and(super::Session::has_room_for_reply) {
            return false;
        }
        let Some(c) = self.channel(conn, ch) else {
            return false;
        };
        let delivery_tag = c.next_delivery_tag();
        let out = Outgoing::Deliver { channel: ch, consumer_tag, delivery_tag, redelivered: false, message };
        self.push(conn, out);
        true
    }

    /// Whether `name` is the pseudo-queue or a live reply token (a passive declare of either
    /// succeeds, as in RabbitMQ).
    pub(super) fn is_reply_queue(&self, vh: VHostId, name: &str) -> bool {
        name == PSEUDO_QUEUE || self.replies.get(name).is_some_and(|(conn, _, _)| self.vh(*conn) == vh)
    }
}

/// SipHash-2-4 under `key`: a PRF, so tokens drawn from a secret key cannot be predicted from
/// other tokens. std's `SipHasher` is deprecated only in favour of `DefaultHasher`, which
/// takes no key.
#[allow(deprecated)]
fn keyed_hash(key: [u64; 2], value: impl std::hash::Hash) -> u64 {
    use std::hash::Hasher;
    let mut h = std::hash::SipHasher::new_with_keys(key[0], key[1]);
    value.hash(&mut h);
    h.finish()
}
