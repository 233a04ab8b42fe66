//! basic.* methods other than acknowledgements, plus confirm.select and channel.flow.

use std::sync::Arc;

use bytes::Bytes;
use warren_codec::reply_code::{ACCESS_REFUSED, NO_ROUTE, NOT_ALLOWED, NOT_IMPLEMENTED};
use warren_codec::{
    BasicCancel, BasicCancelOk, BasicConsume, BasicConsumeOk, BasicGet, BasicGetEmpty, BasicGetOk,
    BasicProperties, BasicPublish, BasicQos, BasicQosOk, BasicRecoverOk, BasicReturn, ChannelFlow,
    ChannelFlowOk, ConfirmSelect, ConfirmSelectOk,
};

use super::deadletter::message_ttl;
use super::deliver::{count_delivery, delivered_form};
use super::{Broker, ConnId, VHostId};
use crate::channel::{Consumer, TxOp, Unacked};
use crate::deadletter::Reason;
use crate::error::{AmqpError, no_queue, precondition};
use crate::message::{Message, Outgoing};
use crate::queue::{ConsumerKey, Offer};

/// Whether a message carries CC or BCC routing keys.
fn carries_cc(p: &BasicProperties) -> bool {
    p.headers.as_ref().is_some_and(|h| h.contains_key("CC") || h.contains_key("BCC"))
}

impl Broker {
    /// Handles a fully received basic.publish: routes it now, or holds it until tx.commit
    /// on a transactional channel.
    pub(super) fn publish_message(
        &mut self,
        conn: ConnId,
        ch: u16,
        m: BasicPublish,
        mut properties: Box<BasicProperties>,
        body: Bytes,
    ) -> Result<(), AmqpError> {
        let on = |e: AmqpError| AmqpError { class_id: 60, method_id: 40, ..e };
        // One look at the session for its vhost and whether this is its first publish.
        let (vh, first) = match self.sessions.get_mut(&conn) {
            Some(s) => (s.vhost, !std::mem::replace(&mut s.published, true)),
            None => (VHostId::DEFAULT, false),
        };
        if first {
            self.tell_blocked(conn);
        }
        if m.immediate {
            // RabbitMQ dropped immediate in 3.0 and closes the connection for it.
            return Err(on(AmqpError::new(NOT_IMPLEMENTED, "immediate=true")));
        }
        self.check_publish_target(vh, &m.exchange).map_err(on)?;
        // After the exchange's existence, as RabbitMQ orders them.
        self.check_user_id(conn, &properties).map_err(on)?;
        message_ttl(&properties).map_err(on)?;
        self.rewrite_reply_to(conn, ch, &mut properties).map_err(on)?;
        // One look at the channel for both questions: held for a transaction? confirmed?
        let confirm = match self.channel(conn, ch) {
            Some(c) if c.tx.is_some() => {
                return self.hold_in_tx(conn, ch, TxOp::Publish { method: m, properties, body }).map_err(on);
            }
            Some(c) => c.next_confirm_seq(),
            None => None,
        };
        self.route_and_deliver(conn, ch, m, properties, body, confirm).map(|_| ()).map_err(on)
    }

    /// Routes a message, queues it, and answers with a return and, when `confirm` holds its
    /// publish sequence number, a confirm; returns whether it was stored.
    pub(super) fn route_and_deliver(
        &mut self,
        conn: ConnId,
        ch: u16,
        m: BasicPublish,
        mut properties: Box<BasicProperties>,
        body: Bytes,
        confirm: Option<u64>,
    ) -> Result<bool, AmqpError> {
        let vh = self.vh(conn);
        // `publish` checked the exchange; a transaction re-checks existence here at commit.
        // The default exchange without CC/BCC routes to the queue named by the key, or nowhere:
        // the common case, taken without building a destination list.
        let direct = super::exchanges::is_default(&m.exchange) && !carries_cc(&properties);
        // A delayed-message exchange holds the message in each queue for its x-delay.
        // The header first: most messages carry none, and they cost no second exchange lookup.
        let hold = if direct {
            None
        } else {
            super::exchanges::delay_of(&properties)
                .filter(|_| self.vhosts[vh].exchanges.get(&m.exchange).is_some_and(|x| x.delays))
        };
        let destinations = if direct {
            Vec::new()
        } else {
            self.route(vh, &m.exchange, &m.routing_key, &properties, body.len() as u64)?
        };
        // BCC keys route the message but are never shown to consumers.
        if let Some(h) = properties.headers.as_mut() {
            h.remove("BCC");
        }
        let message =
            Arc::new(Message { exchange: m.exchange, routing_key: m.routing_key, properties, body });
        // Validated in `publish`; parsed once here for every destination.
        let own_ttl = message_ttl(&message.properties).ok().flatten();
        // Offering finds the queue, so the direct path needs no separate existence check.
        let (mut reached, mut refused, mut stored) = (false, false, false);
        let mut forwarded = Vec::new();
        let mut offer =
            |b: &mut Broker, name: &str| match b.offer_after(vh, name, message.clone(), own_ttl, hold) {
                Offer::NoQueue => {}
                Offer::Refused => (reached, refused) = (true, true),
                Offer::Accepted { stored: s } => (reached, stored) = (true, stored | s),
                Offer::Forwarded(id) => {
                    reached = true;
                    forwarded.push(id);
                }
            };
        let mut replied = false;
        if direct && super::reply_to::is_reply_key(&message.routing_key) {
            // A direct reply: to its requester's channel, never to a queue.
            replied = self.deliver_reply(vh, &message.routing_key, message.clone());
        } else if direct {
            offer(self, &message.routing_key);
        }
        for name in destinations {
            offer(self, &name);
        }
        reached |= replied;
        self.stats.received += 1;
        match (reached, m.mandatory) {
            (true, _) => self.stats.routed += 1,
            (false, true) => self.stats.unroutable_returned += 1,
            (false, false) => self.stats.unroutable_dropped += 1,
        }
        // Unroutable means nothing was offered, so nothing was sent ahead of the return.
        if !reached && m.mandatory {
            let ret = BasicReturn {
                reply_code: NO_ROUTE,
                reply_text: "NO_ROUTE".into(),
                exchange: message.exchange.clone(),
                routing_key: message.routing_key.clone(),
            };
            let out = Outgoing::Content { channel: ch, method: ret.into(), message: message.clone() };
            self.push(conn, out);
        }
        if !forwarded.is_empty() {
            self.collected(&forwarded);
        }
        if let Some(delivery_tag) = confirm {
            // A queue that refused it (x-overflow reject-publish, a failed write) makes the
            // confirm a nack; a stored message is acked once the store has synced it.
            if !forwarded.is_empty() {
                // And one forwarded to another node once that node took it.
                self.hold_confirm(conn, ch, delivery_tag, &forwarded, stored, refused);
            } else if refused {
                self.send_confirm(conn, ch, delivery_tag, false, false);
            } else {
                self.confirm(conn, ch, delivery_tag, stored);
            }
        }
        Ok(stored)
    }

    pub(super) fn basic_qos(&mut self, conn: ConnId, ch: u16, m: BasicQos) -> Result<(), AmqpError> {
        if m.prefetch_size != 0 {
            return Err(AmqpError::new(NOT_IMPLEMENTED, format!("prefetch_size!=0 ({})", m.prefetch_size)));
        }
        let Some(c) = self.channel(conn, ch) else {
            return Ok(());
        };
        // As RabbitMQ: global=false sets the limit for consumers created after it,
        // global=true a limit shared by the channel.
        if m.global {
            c.channel_prefetch = m.prefetch_count;
        } else {
            c.consumer_prefetch = m.prefetch_count;
        }
        let queues: Vec<Arc<str>> = c.consumer_queues().collect();
        self.reply(conn, ch, false, BasicQosOk {});
        let vh = self.vh(conn);
        for q in queues {
            self.dispatch(vh, &q);
        }
        Ok(())
    }

    pub(super) fn basic_consume(&mut self, conn: ConnId, ch: u16, m: BasicConsume) -> Result<(), AmqpError> {
        if m.queue == super::reply_to::PSEUDO_QUEUE {
            return self.consume_replies(conn, ch, m);
        }
        let vh = self.vh(conn);
        let vhost = &self.vhosts[vh].name;
        let Some(q) = self.vhosts[vh].queues.get(&m.queue) else {
            return Err(no_queue(vhost, &m.queue));
        };
        q.check_access(conn)?;
        let queue = q.name.clone();
        if q.exclusive_consumer || (m.exclusive && !q.consumers.is_empty()) {
            return Err(AmqpError::new(
                ACCESS_REFUSED,
                format!("queue '{}' in vhost '{vhost}' in exclusive use", m.queue),
            ));
        }
        let priority = match m.arguments.get("x-priority") {
            None => 0,
            Some(v) => v.as_i64().ok_or_else(|| {
                precondition(format!("invalid arg 'x-priority' for consumer: expected an integer, got {v:?}"))
            })?,
        };
        // The consumer's own x-consumer-timeout, else its queue's, else the broker's.
        let timeout = match m.arguments.get("x-consumer-timeout") {
            None if q.args.consumer_timeout_off => None,
            None => q.args.consumer_timeout.or(self.consumer_timeout),
            Some(v) => match v.as_i64() {
                Some(0) => None,
                Some(ms) if ms > 0 => Some(std::time::Duration::from_millis(ms as u64)),
                _ => {
                    return Err(precondition(format!(
                        "invalid arg 'x-consumer-timeout' for consumer: expected a non-negative integer, got {v:?}"
                    )));
                }
            },
        };
        let tag = if m.consumer_tag.is_empty() { self.names.name("amq.ctag-") } else { m.consumer_tag };
        let max_consumers = self.limits.max_consumers_per_channel;
        if let Some(max) = self.limits.max_consumers
            && self.node_count(super::census::Count::Consumers) >= max
        {
            return Err(precondition(format!(
                "cannot consume from '{queue}' in vhost '{}': consumer limit of {max} is reached",
                self.vhosts[vh].name
            )));
        }
        let Some(c) = self.channel(conn, ch) else {
            return Ok(());
        };
        if c.consumers.contains_key(&tag) || c.reply.as_ref().is_some_and(|r| *r.tag == *tag) {
            return Err(AmqpError::new(NOT_ALLOWED, format!("attempt to reuse consumer tag '{tag}'")));
        }
        if let Some(max) = max_consumers
            && c.consumers.len() >= max
        {
            // RabbitMQ's words and code for consumer_max_per_channel.
            return Err(AmqpError::new(
                NOT_ALLOWED,
                format!("reached maximum ({max}) of consumers per channel"),
            ));
        }
        let prefetch = c.consumer_prefetch;
        let consumer = Consumer { queue, no_ack: m.no_ack, prefetch, unacked: 0, timeout };
        c.consumers.insert(tag.clone(), consumer);
        if let Some(q) = self.vhosts[vh].queues.get_mut(&m.queue) {
            q.consumers.push(ConsumerKey { conn, channel: ch, tag: Arc::from(tag.as_str()), priority });
            q.exclusive_consumer = m.exclusive;
            q.had_consumer = true;
            q.last_used = self.now;
        }
        if self.is_quorum(vh, &m.queue) {
            // Its deliveries follow consume-ok.
            self.reply(conn, ch, m.no_wait, BasicConsumeOk { consumer_tag: tag.clone() });
            self.quorum_checkout(vh, &m.queue, (conn, ch, &tag), m.no_ack, prefetch, priority);
            return Ok(());
        }
        self.reply(conn, ch, m.no_wait, BasicConsumeOk { consumer_tag: tag });
        self.dispatch(vh, &m.queue);
        Ok(())
    }

    pub(super) fn basic_cancel(&mut self, conn: ConnId, ch: u16, m: BasicCancel) -> Result<(), AmqpError> {
        if self.cancel_replies(conn, ch, &m.consumer_tag) {
            self.reply(conn, ch, m.no_wait, BasicCancelOk { consumer_tag: m.consumer_tag });
            return Ok(());
        }
        // An unknown tag is not an error: the consumer may be gone with its queue already.
        let queue = self.channel(conn, ch).and_then(|c| c.consumers.remove(&m.consumer_tag)).map(|c| c.queue);
        self.reply(conn, ch, m.no_wait, BasicCancelOk { consumer_tag: m.consumer_tag.clone() });
        let Some(queue) = queue else {
            return Ok(());
        };
        let vh = self.vh(conn);
        let Some(q) = self.vhosts[vh].queues.get_mut(&*queue) else {
            return Ok(());
        };
        q.remove_consumer(conn, ch, &m.consumer_tag);
        self.quorum_cancel(vh, &queue, conn, ch, &m.consumer_tag);
        let Some(q) = self.vhosts[vh].queues.get_mut(&*queue) else {
            return Ok(());
        };
        if q.should_auto_delete() {
            self.drop_own_queue(vh, &queue);
            return Ok(());
        }
        if q.consumers.is_empty() {
            self.arm_queue_expiry(vh, &queue);
        }
        self.dispatch(vh, &queue);
        Ok(())
    }

    pub(super) fn basic_get(&mut self, conn: ConnId, ch: u16, m: BasicGet) -> Result<(), AmqpError> {
        let now = self.now;
        let vh = self.vh(conn);
        let Some(q) = self.vhosts[vh].queues.get_mut(&m.queue) else {
            return Err(no_queue(&self.vhosts[vh].name, &m.queue));
        };
        q.check_access(conn)?;
        q.last_used = now;
        if q.quorum.is_some() {
            return self.quorum_get(vh, (conn, ch), &m.queue, m.no_ack);
        }
        let msg = loop {
            let Some(q) = self.vhosts[vh].queues.get_mut(&m.queue) else {
                return Ok(());
            };
            let Some(msg) = q.pop() else {
                self.reply(conn, ch, false, BasicGetEmpty::default());
                return Ok(());
            };
            if msg.expires_at.is_some_and(|t| t <= now) {
                self.dead_letter(vh, &m.queue, msg, Reason::Expired);
                continue;
            }
            break msg;
        };
        let Some(q) = self.vhosts[vh].queues.get_mut(&m.queue) else {
            return Ok(());
        };
        let (queue_id, queue, message_count) = (q.id, q.name.clone(), q.len() as u32);
        count_delivery(&mut self.stats, q, msg.redelivered);
        self.get_ok((conn, ch), (queue_id, queue), msg, message_count, m.no_ack, None);
        Ok(())
    }

    /// Answers basic.get with `msg`, taken from queue `queue` (incarnation `queue_id`):
    /// get-ok with its message, held as unacked unless `no_ack` (then forgotten: it is
    /// delivered). `quorum` is the delivery a quorum queue's machine knows it by.
    pub(super) fn get_ok(
        &mut self,
        (conn, ch): (ConnId, u16),
        (queue_id, queue): (u64, Arc<str>),
        msg: crate::message::QueuedMessage,
        message_count: u32,
        no_ack: bool,
        quorum: Option<crate::channel::QuorumDelivery>,
    ) {
        let now = self.now;
        let Some(c) = self.channel(conn, ch) else {
            return;
        };
        let delivery_tag = c.next_delivery_tag();
        let method = BasicGetOk {
            delivery_tag,
            redelivered: msg.redelivered,
            exchange: msg.message.exchange.clone(),
            routing_key: msg.message.routing_key.clone(),
            message_count,
        };
        let message = delivered_form(&msg);
        if no_ack {
            self.forget(queue_id, &msg);
        } else {
            let u = Unacked { queue_id, queue, message: msg, consumer: None, delivered_at: now, quorum };
            c.unacked.insert(delivery_tag, u);
        }
        self.reply_content(conn, ch, method.into(), message);
    }

    pub(super) fn basic_recover(
        &mut self,
        conn: ConnId,
        ch: u16,
        requeue: bool,
        reply: bool,
    ) -> Result<(), AmqpError> {
        if !requeue {
            // RabbitMQ refuses redelivery to the original consumer the same way.
            return Err(AmqpError::new(NOT_IMPLEMENTED, "requeue=false"));
        }
        // Given back, not refused: a retry policy for failures does not delay them.
        self.settle_as(conn, ch, 0, true, Some(true), super::deliver::Return::Released)?;
        if reply {
            self.reply(conn, ch, false, BasicRecoverOk {});
        }
        Ok(())
    }

    pub(super) fn confirm_select(
        &mut self,
        conn: ConnId,
        ch: u16,
        m: ConfirmSelect,
    ) -> Result<(), AmqpError> {
        if let Some(c) = self.channel(conn, ch) {
            if c.tx.is_some() {
                return Err(precondition("cannot switch from tx to confirm mode"));
            }
            c.confirm_seq.get_or_insert(1);
        }
        self.reply(conn, ch, m.no_wait, ConfirmSelectOk {});
        Ok(())
    }

    pub(super) fn channel_flow(&mut self, conn: ConnId, ch: u16, m: ChannelFlow) -> Result<(), AmqpError> {
        // As RabbitMQ: clients test for this code, and some misbehave when the pause succeeds.
        if !m.active {
            return Err(AmqpError::new(warren_codec::reply_code::NOT_IMPLEMENTED, "active=false"));
        }
        let Some(c) = self.channel(conn, ch) else {
            return Ok(());
        };
        c.active = m.active;
        self.reply(conn, ch, false, ChannelFlowOk { active: m.active });
        self.dispatch_channel(conn, ch);
        Ok(())
    }

    /// Holds deliveries to channel `ch` of `conn` back while `held`, and lets them go again:
    /// for a transport whose channel has a stream of its own that the client stopped reading
    /// (QUIC channel streams), so its messages wait in their queues instead of in a buffer.
    pub fn hold_deliveries(&mut self, conn: ConnId, ch: u16, held: bool) {
        let Some(c) = self.channel(conn, ch).filter(|c| c.held != held) else {
            return;
        };
        c.held = held;
        if !held {
            self.dispatch_channel(conn, ch);
        }
    }

    /// Offers the queues of channel `ch`'s consumers to them again.
    fn dispatch_channel(&mut self, conn: ConnId, ch: u16) {
        let queues: Vec<Arc<str>> =
            self.channel(conn, ch).map(|c| c.consumer_queues().collect()).unwrap_or_default();
        let vh = self.vh(conn);
        for q in queues {
            self.dispatch(vh, &q);
        }
    }
}
