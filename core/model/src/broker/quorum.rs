//! Quorum queues served on this node: AMQP's operations become the machine's commands
//! ([`crate::queue::quorum::Command`]), and its effects become deliveries, dead letters,
//! timers and deletions.
//!
//! A node serves a quorum queue as a one-member group ([`crate::queue::quorum::Local`]): a
//! command is committed once it is in the node's log, so it is applied at once. Every
//! message of a quorum queue is stored, persistent or not (its log holds them all, as
//! RabbitMQ's does), and its publisher's confirm waits for the store's sync like any stored
//! message's. A restart puts the stored messages back through the machine in publish order,
//! with their delivery counts. What the machine decides (order, priorities, prefetch,
//! single active consumer, TTL at the head, length limits, `x-delivery-limit`,
//! `x-expires`) is decided there and nowhere else; the broker keeps what is per channel
//! (delivery tags, unacked entries, the consumer timeout).

use std::sync::Arc;

use warren_codec::reply_code::PRECONDITION_FAILED;

use super::deliver::{count_delivery, delivered_form};
use super::timers::Timer;
use super::{Broker, ConnId, VHostId};
use crate::channel::{QuorumDelivery, Unacked};
use crate::error::AmqpError;
use crate::message::{Message, Outgoing, QueuedMessage};
use crate::queue::Offer;
use crate::queue::quorum::{Command, ConsumerId, Delivery, Effect, Header, Owner, PRIORITIES, Reply};
use crate::retry::ExternalDecision;

/// Deliveries an auto-ack consumer of a quorum queue may have waiting for its connection to
/// take them (they are settled then); the rest wait in the queue.
pub(super) const AUTO_ACK_WINDOW: u32 = 1024;

/// How long an at-least-once dead letter whose copy found no taker waits to be tried again.
pub(super) const DEAD_LETTER_RETRY_MS: u64 = 1000;

/// The machine's name for consumer `tag` on channel `ch` of `conn` (the empty tag is the
/// channel's `basic.get`).
fn consumer_id(conn: ConnId, ch: u16, tag: &str) -> ConsumerId {
    // One node: every owner is on node 0 until the cluster serves quorum queues.
    ConsumerId { owner: Owner { node: 0, conn }, channel: ch, tag: tag.to_string() }
}

/// What a quorum queue knows of a message entering it.
fn header(m: &Message, ttl_ms: Option<u64>, delivery_count: u32, delay_ms: Option<u64>) -> Header {
    Header {
        size: m.body.len() as u64,
        priority: m.properties.priority.unwrap_or(0).min(PRIORITIES - 1),
        ttl_ms,
        delivery_count,
        delay_ms,
    }
}

/// How an unacked message of a quorum queue is given back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Giveback {
    /// Back to the queue; `failed` counts towards `x-delivery-limit`.
    Return {
        /// A failed delivery (RabbitMQ 4.3: `basic.reject`, a lost consumer).
        failed: bool,
        /// Held out this long first (a retry policy's delay).
        delay_ms: Option<u64>,
    },
    /// Rejected without requeue: dead-lettered.
    Discard,
}

impl Broker {
    /// Whether `queue` of `vh` is a quorum queue.
    pub(super) fn is_quorum(&self, vh: VHostId, queue: &str) -> bool {
        self.vhosts[vh].queues.get(queue).is_some_and(|q| q.quorum.is_some())
    }

    /// Applies `command` to quorum queue `queue` (incarnation `queue_id` when given) and
    /// carries out its effects; `None` when there is no such quorum queue.
    fn quorum_apply(
        &mut self,
        vh: VHostId,
        queue: &str,
        queue_id: Option<u64>,
        command: Command,
    ) -> Option<Reply> {
        let now_ms = self.unix_ms;
        let q = self.vhosts[vh].queues.get_mut(queue).filter(|q| queue_id.is_none_or(|id| q.id == id))?;
        let id = q.id;
        let (reply, effects) = q.quorum.as_mut()?.apply(now_ms, command);
        let name: Arc<str> = q.name.clone();
        self.quorum_effects(vh, &name, id, effects);
        Some(reply)
    }

    /// Carries out what the machine asked for.
    fn quorum_effects(&mut self, vh: VHostId, queue: &Arc<str>, queue_id: u64, effects: Vec<Effect>) {
        for effect in effects {
            match effect {
                Effect::Deliver { consumer, deliveries } => {
                    self.quorum_deliver(vh, queue, queue_id, consumer, deliveries);
                }
                Effect::DeadLetter { reason, msgs } => {
                    self.quorum_dead(vh, queue, queue_id, reason, msgs, true)
                }
                Effect::Timer { at_ms } => {
                    let armed = self.vhosts[vh]
                        .queues
                        .get_mut(&**queue)
                        .filter(|q| q.id == queue_id)
                        .and_then(|q| q.quorum.as_mut())
                        .map(|l| l.armed.replace(at_ms));
                    if armed.is_some_and(|before| before != Some(at_ms)) {
                        let at = self.after(at_ms.saturating_sub(self.unix_ms));
                        self.arm(at, Timer::QuorumTick { vh, queue: queue.clone(), queue_id, at_ms });
                    }
                }
                Effect::Expired => {
                    if self.vhosts[vh].queues.get(&**queue).is_some_and(|q| q.id == queue_id) {
                        self.delete_queue(vh, queue);
                    }
                }
                Effect::ConsumerTimedOut { consumer } => {
                    // The broker times consumers out per channel (the machine's own timeout
                    // is off); were the machine to do it, the channel is closed as RabbitMQ does.
                    let text =
                        format!("consumer '{}' timed out waiting for an acknowledgement", consumer.tag);
                    let err = AmqpError::new(PRECONDITION_FAILED, text);
                    self.raise_error(consumer.owner.conn, consumer.channel, err);
                }
            }
        }
    }

    /// Messages that died in quorum queue `queue` (`count`ed as dead letters, unless this is
    /// a retry). At most once (the default): to the dead-letter exchange if the queue has
    /// one, then forgotten. At least once: the machine keeps each (counted in the queue's
    /// length) until every queue its copy reaches took it, and only then lets it go
    /// (`DeadLettered`); one whose copy reached no queue, or a full one, is tried again
    /// every [`DEAD_LETTER_RETRY_MS`], as RabbitMQ's dead-letter worker does.
    fn quorum_dead(
        &mut self,
        vh: VHostId,
        queue: &Arc<str>,
        queue_id: u64,
        reason: crate::deadletter::Reason,
        msgs: Vec<crate::queue::quorum::MsgRef>,
        count: bool,
    ) {
        let Some(l) =
            self.vhosts[vh].queues.get(&**queue).filter(|q| q.id == queue_id).and_then(|q| q.quorum.as_ref())
        else {
            return;
        };
        if !l.machine().at_least_once() {
            for m in msgs {
                if let Some(body) = self.quorum_body(vh, queue, queue_id, m.index) {
                    self.dead_letter(vh, queue, body, reason);
                }
            }
            return;
        }
        let mut done = Vec::new();
        let mut waiting = false;
        for m in msgs {
            let body = self.vhosts[vh]
                .queues
                .get(&**queue)
                .and_then(|q| q.quorum.as_ref())
                .and_then(|l| l.body(m.index).cloned());
            let Some(body) = body else {
                // The machine and the bodies disagree: said, and let go rather than kept
                // (and counted in the length) for ever.
                self.events.push(crate::stats::BrokerEvent::StorageError {
                    error: format!("quorum queue '{queue}': no body for dead letter {}", m.index),
                });
                done.push(m.index);
                continue;
            };
            if count {
                if let Some(q) = self.vhosts[vh].queues.get_mut(&**queue) {
                    q.count_dead_letter(reason);
                }
                self.stats.dead_lettered[reason as usize] += 1;
            }
            // The copy is written (where its target stores) before the original's removal,
            // in one log: a crash between them leaves both, never neither. A retry goes only
            // to the queues that did not take it yet.
            let mut taken = self
                .quorum_local(vh, queue, queue_id)
                .and_then(|l| l.dead_taken.remove(&m.index))
                .unwrap_or_default();
            let finished = self.route_dead_copy(vh, queue, &body, reason, &mut taken);
            if !finished && let Some(l) = self.quorum_local(vh, queue, queue_id) {
                l.dead_taken.insert(m.index, taken);
            }
            if finished {
                if let Some(body) = self.quorum_body(vh, queue, queue_id, m.index) {
                    self.forget(queue_id, &body);
                }
                done.push(m.index);
            } else {
                waiting = true;
            }
        }
        if !done.is_empty() {
            self.quorum_apply(vh, queue, Some(queue_id), Command::DeadLettered { indexes: done });
        }
        if waiting {
            self.arm_dead_letter_retry(vh, queue, queue_id);
        }
    }

    /// Quorum queue `queue` (incarnation `queue_id`) as served here.
    fn quorum_local(
        &mut self,
        vh: VHostId,
        queue: &str,
        queue_id: u64,
    ) -> Option<&mut crate::queue::quorum::Local> {
        self.vhosts[vh]
            .queues
            .get_mut(queue)
            .filter(|q| q.id == queue_id)
            .and_then(|q| q.quorum.as_deref_mut())
    }

    /// Arms a retry of quorum queue `queue`'s kept dead letters, unless one is armed.
    fn arm_dead_letter_retry(&mut self, vh: VHostId, queue: &Arc<str>, queue_id: u64) {
        let Some(l) = self.vhosts[vh]
            .queues
            .get_mut(&**queue)
            .filter(|q| q.id == queue_id)
            .and_then(|q| q.quorum.as_mut())
            .filter(|l| !l.retrying_dead)
        else {
            return;
        };
        l.retrying_dead = true;
        let at = self.after(DEAD_LETTER_RETRY_MS);
        self.arm(at, Timer::QuorumDeadLetters { vh, queue: queue.clone(), queue_id });
    }

    /// The retry of quorum queue `queue`'s kept dead letters is due.
    pub(super) fn quorum_dead_letter_retry(&mut self, vh: VHostId, queue: &Arc<str>, queue_id: u64) {
        let Some(l) = self.vhosts[vh]
            .queues
            .get_mut(&**queue)
            .filter(|q| q.id == queue_id)
            .and_then(|q| q.quorum.as_mut())
        else {
            return;
        };
        l.retrying_dead = false;
        for e in l.machine().resend() {
            if let Effect::DeadLetter { reason, msgs } = e {
                self.quorum_dead(vh, queue, queue_id, reason, msgs, false);
            }
        }
    }

    /// Takes the body of message `index` out of quorum queue `queue`.
    fn quorum_body(&mut self, vh: VHostId, queue: &str, queue_id: u64, index: u64) -> Option<QueuedMessage> {
        let q = self.vhosts[vh].queues.get_mut(queue).filter(|q| q.id == queue_id)?;
        let body = q.quorum.as_mut()?.take(index);
        if body.is_none() {
            // The machine and the bodies disagree: a bug, said loudly rather than hidden.
            self.events.push(crate::stats::BrokerEvent::StorageError {
                error: format!("quorum queue '{queue}': no body for message {index}"),
            });
        }
        body
    }

    /// Hands the machine's deliveries to their consumer's channel.
    fn quorum_deliver(
        &mut self,
        vh: VHostId,
        queue: &Arc<str>,
        queue_id: u64,
        consumer: ConsumerId,
        deliveries: Vec<Delivery>,
    ) {
        let now = self.now;
        let (conn, channel) = (consumer.owner.conn, consumer.channel);
        let mut auto = Vec::new();
        let mut unknown = Vec::new();
        let mut due = None;
        for d in deliveries {
            let Some(mut m) = self.quorum_body(vh, queue, queue_id, d.msg.index) else {
                continue;
            };
            m.delivery_count = d.msg.delivery_count;
            m.redelivered |= d.redelivered;
            let Some(c) = self.sessions.get_mut(&conn).and_then(|s| s.channels.get_mut(&channel)) else {
                unknown.push((d.id, d.msg.index, m));
                continue;
            };
            let Some(k) = c.consumers.get_mut(&consumer.tag) else {
                unknown.push((d.id, d.msg.index, m));
                continue;
            };
            let no_ack = k.no_ack;
            if !no_ack {
                k.unacked += 1;
                due = k.timeout.map(|t| now + t).or(due);
            }
            let delivery_tag = c.next_delivery_tag();
            let consumer_tag: Arc<str> = Arc::from(consumer.tag.as_str());
            let message = delivered_form(&m);
            let redelivered = m.redelivered;
            let u = Unacked {
                queue_id,
                queue: queue.clone(),
                message: m,
                consumer: Some(consumer_tag.clone()),
                delivered_at: now,
                quorum: Some(QuorumDelivery { id: d.id, index: d.msg.index }),
            };
            if no_ack {
                auto.push((channel, u));
            } else {
                c.unacked.insert(delivery_tag, u);
            }
            if let Some(q) = self.vhosts[vh].queues.get_mut(&**queue) {
                count_delivery(&mut self.stats, q, redelivered);
            }
            self.push(conn, Outgoing::Deliver { channel, consumer_tag, delivery_tag, redelivered, message });
        }
        if let Some(at) = due {
            self.arm_consumer_sweep(at);
        }
        if let Some(s) = self.sessions.get_mut(&conn) {
            // Settled when the connection takes them for its socket (`take_outbound`), not
            // now: the consumer's window (AUTO_ACK_WINDOW) holds the rest in the queue while
            // the client does not read, as a prefetch does for manual acks.
            s.autoacked.extend(auto);
        }
        if !unknown.is_empty() {
            // A consumer the machine still had but its channel no longer does: gone, and
            // what it was given goes back (cancelled first, or it would be handed them again).
            let ids = unknown.iter().map(|(id, _, _)| *id).collect();
            self.quorum_keep(vh, queue, queue_id, unknown.into_iter().map(|(_, index, m)| (index, m)));
            self.quorum_apply(vh, queue, Some(queue_id), Command::Cancel { consumer: consumer.clone() });
            let back = Command::Return { consumer, ids, failed: false, delay_ms: None };
            self.quorum_apply(vh, queue, Some(queue_id), back);
        }
    }

    /// Puts bodies back in quorum queue `queue` under their machine indexes.
    fn quorum_keep(
        &mut self,
        vh: VHostId,
        queue: &str,
        queue_id: u64,
        bodies: impl IntoIterator<Item = (u64, QueuedMessage)>,
    ) {
        let Some(l) = self.vhosts[vh]
            .queues
            .get_mut(queue)
            .filter(|q| q.id == queue_id)
            .and_then(|q| q.quorum.as_mut())
        else {
            return;
        };
        for (index, m) in bodies {
            l.keep(index, m);
        }
    }

    /// Puts a routed message in quorum queue `queue`: stored first (every message of a
    /// quorum queue is), then enqueued by the machine, which may hand it to a consumer at
    /// once. `hold_ms` holds it first (a delayed-message exchange's `x-delay`).
    pub(super) fn quorum_offer(
        &mut self,
        vh: VHostId,
        queue: &str,
        message: Arc<Message>,
        own_ttl: Option<u64>,
        hold_ms: Option<u64>,
    ) -> Offer {
        let (now, unix_ms) = (self.now, self.unix_ms);
        let Some(q) = self.vhosts[vh].queues.get_mut(queue) else {
            return Offer::NoQueue;
        };
        let (id, seq) = (q.id, q.allocate_seq());
        // The shorter of the queue's and the message's TTL, from when it joins the queue:
        // the machine applies it; the entry keeps the deadline for a restart.
        let ttl = own_ttl.into_iter().chain(q.args.message_ttl).min();
        let joins = now + std::time::Duration::from_millis(hold_ms.unwrap_or(0));
        let expires_at = ttl.map(|ms| joins + std::time::Duration::from_millis(ms));
        let mut entry = QueuedMessage::new(seq, message, expires_at, unix_ms);
        let due_ms = hold_ms.map(|ms| unix_ms.saturating_add(ms));
        let stored = self.has_store();
        if stored && let Err(e) = self.store_entry(id, &mut entry, due_ms) {
            // Not written, not queued: the publisher's confirm becomes a nack.
            self.storage_result(Err(e));
            return Offer::Refused;
        }
        if let Some(q) = self.vhosts[vh].queues.get_mut(queue) {
            q.stats.published += 1;
        }
        // A hold is the machine's: the message counts towards the length limits meanwhile.
        if self.quorum_enqueue(vh, queue, id, entry, hold_ms) {
            Offer::Accepted { stored }
        } else {
            Offer::Refused
        }
    }

    /// The TTL left to message `m` (none when it has none), as its machine takes it.
    fn ttl_left(&self, m: &QueuedMessage) -> Option<u64> {
        m.expires_at
            .map(|at| at.saturating_duration_since(self.now).as_millis().try_into().unwrap_or(u64::MAX))
    }

    /// Enqueues a message (stored already, when there is a store) in quorum queue `queue`,
    /// held out `delay_ms` first; false when the queue refused it (`x-overflow:
    /// reject-publish`), which forgets it.
    pub(super) fn quorum_enqueue(
        &mut self,
        vh: VHostId,
        queue: &str,
        queue_id: u64,
        m: QueuedMessage,
        delay_ms: Option<u64>,
    ) -> bool {
        // The entry's deadline counts the hold in; the machine's TTL runs from the join.
        let ttl = self.ttl_left(&m).map(|t| t.saturating_sub(delay_ms.unwrap_or(0)));
        let Some(q) = self.vhosts[vh].queues.get_mut(queue).filter(|q| q.id == queue_id) else {
            self.forget(queue_id, &m);
            return false;
        };
        let Some(l) = q.quorum.as_mut() else {
            return false;
        };
        let index = l.next_index();
        let h = header(&m.message, ttl, m.delivery_count, delay_ms);
        // Kept before the apply: the machine may hand it to a consumer in the same step.
        l.keep(index, m);
        let reply =
            self.quorum_apply(vh, queue, Some(queue_id), Command::Enqueue { publish: None, header: h });
        if reply == Some(Reply::Enqueued) {
            return true;
        }
        if let Some(m) = self.quorum_body(vh, queue, queue_id, index) {
            self.forget(queue_id, &m);
        }
        false
    }

    /// basic.consume on a quorum queue: the machine registers the consumer and may deliver.
    pub(super) fn quorum_checkout(
        &mut self,
        vh: VHostId,
        queue: &str,
        (conn, ch, tag): (ConnId, u16, &str),
        no_ack: bool,
        prefetch: u16,
        priority: i64,
    ) {
        let consumer = consumer_id(conn, ch, tag);
        // An auto-ack consumer's deliveries are settled as its connection takes them: the
        // window bounds what waits for that in front of a client that does not read.
        let prefetch = if no_ack { AUTO_ACK_WINDOW } else { u32::from(prefetch) };
        self.quorum_apply(vh, queue, None, Command::Checkout { consumer, prefetch, priority });
    }

    /// A consumer of a quorum queue is gone (cancelled, its channel closed, timed out): no
    /// more deliveries; what it holds is settled or given back through its channel.
    pub(super) fn quorum_cancel(&mut self, vh: VHostId, queue: &str, conn: ConnId, ch: u16, tag: &str) {
        if self.is_quorum(vh, queue) {
            self.quorum_apply(vh, queue, None, Command::Cancel { consumer: consumer_id(conn, ch, tag) });
        }
    }

    /// An acknowledged delivery from a quorum queue (its stored entry is forgotten already).
    pub(super) fn quorum_ack(&mut self, vh: VHostId, conn: ConnId, ch: u16, u: &Unacked) {
        let Some(d) = u.quorum else {
            return;
        };
        let consumer = consumer_id(conn, ch, u.consumer.as_deref().unwrap_or(""));
        self.quorum_apply(vh, &u.queue, Some(u.queue_id), Command::Settle { consumer, ids: vec![d.id] });
    }

    /// Gives an unacked delivery back to its quorum queue as `how` says, through the queue's
    /// retry policy when it has one for this kind of return. As RabbitMQ 4.3 has it for
    /// quorum queues, `x-delayed-retry-type: failed` means a failed delivery (a reject, a
    /// lost consumer) and `returned` any other (a nack, a recover); the leader works the
    /// delay out and the machine holds the message out for it.
    pub(super) fn quorum_return(
        &mut self,
        vh: VHostId,
        (conn, ch): (ConnId, u16),
        mut u: Unacked,
        how: super::deliver::Return,
    ) {
        let failed = how.failed();
        let policy = self.vhosts[vh]
            .queues
            .get(&*u.queue)
            .filter(|q| q.id == u.queue_id)
            .and_then(|q| q.args.retry.clone())
            .filter(|p| p.applies(failed));
        let Some(policy) = policy else {
            return self.quorum_give_back(vh, conn, ch, u, Giveback::Return { failed, delay_ms: None });
        };
        let previous = super::deliver::retry_count(&u.message.message);
        let count = u.message.delivery_count.saturating_add(u32::from(failed));
        match policy.decide(&u.message.message, previous, count, crate::deadletter::Reason::Rejected) {
            ExternalDecision::DeadLetter => self.quorum_give_back(vh, conn, ch, u, Giveback::Discard),
            ExternalDecision::Drop => {
                self.forget(u.queue_id, &u.message);
                self.quorum_ack(vh, conn, ch, &u);
            }
            ExternalDecision::Retry { delay_ms, set_headers, remove_headers } => {
                let attempt = previous.saturating_add(1);
                u.message.message =
                    super::deliver::retried(&u.message.message, attempt, set_headers, &remove_headers);
                if u.message.stored.is_some() {
                    // Stored again with its new headers.
                    let due_ms = self.unix_ms.saturating_add(delay_ms);
                    let r = self.store_entry(u.queue_id, &mut u.message, Some(due_ms));
                    self.storage_result(r);
                }
                self.quorum_give_back(vh, conn, ch, u, Giveback::Return { failed, delay_ms: Some(delay_ms) });
            }
        }
    }

    /// Gives an unacked delivery back to its quorum queue (if the queue is still there).
    pub(super) fn quorum_give_back(&mut self, vh: VHostId, conn: ConnId, ch: u16, u: Unacked, how: Giveback) {
        let Some(QuorumDelivery { id, index }) = u.quorum else {
            return;
        };
        let (queue, queue_id) = (u.queue.clone(), u.queue_id);
        if self.vhosts[vh].queues.get(&*queue).is_none_or(|q| q.id != queue_id) {
            return; // gone with its queue, and its stored entry with it
        }
        let consumer = consumer_id(conn, ch, u.consumer.as_deref().unwrap_or(""));
        let mut m = u.message;
        if matches!(how, Giveback::Return { failed: true, .. }) {
            // The machine counts it too; the store keeps the count for a restart.
            m.delivery_count = m.delivery_count.saturating_add(1);
            self.store_delivery_count(queue_id, m.seq, m.stored, m.delivery_count);
        }
        self.quorum_keep(vh, &queue, queue_id, [(index, m)]);
        let command = match how {
            Giveback::Return { failed, delay_ms } => {
                Command::Return { consumer, ids: vec![id], failed, delay_ms }
            }
            Giveback::Discard => Command::Discard { consumer, ids: vec![id] },
        };
        if self.quorum_apply(vh, &queue, Some(queue_id), command) == Some(Reply::NoConsumer) {
            // The machine gave it back already (its consumer went): what it holds keeps its
            // body, and nothing else does.
            let held = self.vhosts[vh]
                .queues
                .get(&*queue)
                .and_then(|q| q.quorum.as_ref())
                .is_some_and(|l| l.machine().live_indexes().contains(&index));
            if !held && let Some(m) = self.quorum_body(vh, &queue, queue_id, index) {
                self.forget(queue_id, &m);
            }
        }
    }

    /// basic.get on a quorum queue.
    pub(super) fn quorum_get(
        &mut self,
        vh: VHostId,
        (conn, ch): (ConnId, u16),
        queue: &str,
        no_ack: bool,
    ) -> Result<(), AmqpError> {
        let Some((queue_id, name)) = self.vhosts[vh].queues.get(queue).map(|q| (q.id, q.name.clone())) else {
            return Ok(());
        };
        let consumer = consumer_id(conn, ch, "");
        let reply =
            self.quorum_apply(vh, queue, Some(queue_id), Command::Dequeue { consumer, settle: no_ack });
        let (d, remaining) = match reply {
            Some(Reply::Dequeued { delivery: Some(d), remaining }) => (d, remaining),
            Some(Reply::Unsupported(what)) => return Err(AmqpError::new(PRECONDITION_FAILED, what)),
            _ => {
                self.reply(conn, ch, false, warren_codec::BasicGetEmpty::default());
                return Ok(());
            }
        };
        let Some(mut m) = self.quorum_body(vh, queue, queue_id, d.msg.index) else {
            self.reply(conn, ch, false, warren_codec::BasicGetEmpty::default());
            return Ok(());
        };
        m.delivery_count = d.msg.delivery_count;
        m.redelivered |= d.redelivered;
        if let Some(q) = self.vhosts[vh].queues.get_mut(queue) {
            count_delivery(&mut self.stats, q, m.redelivered);
        }
        let count = u32::try_from(remaining).unwrap_or(u32::MAX);
        let quorum = Some(QuorumDelivery { id: d.id, index: d.msg.index });
        self.get_ok((conn, ch), (queue_id, name), m, count, no_ack, quorum);
        Ok(())
    }

    /// queue.purge on a quorum queue: its ready messages go (unacked ones stay); how many.
    pub(super) fn quorum_purge(&mut self, vh: VHostId, queue: &str) -> u32 {
        let Some(queue_id) = self.vhosts[vh].queues.get(queue).map(|q| q.id) else {
            return 0;
        };
        let purged = match self.quorum_apply(vh, queue, Some(queue_id), Command::Purge) {
            Some(Reply::Purged(n)) => n,
            _ => 0,
        };
        let dropped = self.vhosts[vh]
            .queues
            .get_mut(queue)
            .and_then(|q| q.quorum.as_mut())
            .map(|l| l.take_dropped())
            .unwrap_or_default();
        for m in &dropped {
            self.forget(queue_id, m);
        }
        u32::try_from(purged).unwrap_or(u32::MAX)
    }

    /// A quorum queue's timer for `at_ms` fired: time passes for its machine. A timer armed
    /// for a deadline the machine replaced since does nothing (each deadline has one timer,
    /// so they cannot pile up).
    pub(super) fn quorum_tick(&mut self, vh: VHostId, queue: &str, queue_id: u64, at_ms: u64) {
        let current = self.vhosts[vh]
            .queues
            .get_mut(queue)
            .filter(|q| q.id == queue_id)
            .and_then(|q| q.quorum.as_mut())
            .filter(|l| l.armed == Some(at_ms))
            .map(|l| l.armed = None);
        if current.is_none() {
            return;
        }
        self.quorum_apply(vh, queue, Some(queue_id), Command::Tick);
        // A tick before the deadline (the wall clock stepped back) moves nothing, and the
        // machine asks for no new timer: armed again from its deadline, or it would stall.
        let next = self.vhosts[vh]
            .queues
            .get_mut(queue)
            .filter(|q| q.id == queue_id)
            .and_then(|q| q.quorum.as_mut())
            .filter(|l| l.armed.is_none())
            .and_then(|l| {
                let at = l.machine().next_deadline()?;
                l.armed = Some(at);
                Some(at)
            });
        if let Some(at_ms) = next {
            // At least a millisecond on, so a clock that stepped back cannot spin this.
            let at = self.after(at_ms.saturating_sub(self.unix_ms).max(1));
            self.arm(at, Timer::QuorumTick { vh, queue: Arc::from(queue), queue_id, at_ms });
        }
    }

    /// A new quorum queue's first tick, which arms its machine's timer (`x-expires`).
    pub(super) fn quorum_start(&mut self, vh: VHostId, queue: &str, queue_id: u64) {
        self.quorum_apply(vh, queue, Some(queue_id), Command::Tick);
    }

    /// A redeclare of quorum queue `queue` is a use of it (for `x-expires`).
    pub(super) fn quorum_used(&mut self, vh: VHostId, queue: &str) {
        let config = self.vhosts[vh]
            .queues
            .get(queue)
            .filter(|q| q.quorum.is_some())
            .map(|q| (q.id, machine_config(&q.args, false)));
        if let Some((id, config)) = config {
            self.quorum_configure(vh, queue, id, config);
        }
    }

    /// Applies a configuration to quorum queue `queue`; dead letters it stops keeping (at
    /// least once turned off) are let go with their bodies, as at most once.
    fn quorum_configure(
        &mut self,
        vh: VHostId,
        queue: &str,
        queue_id: u64,
        config: crate::queue::quorum::Config,
    ) {
        let kept = |b: &mut Self| {
            b.quorum_local(vh, queue, queue_id).map_or(0, |l| l.machine().dead_letters_pending())
        };
        let before = kept(self);
        self.quorum_apply(vh, queue, Some(queue_id), Command::Configure(config));
        if kept(self) < before {
            let dropped = self
                .quorum_local(vh, queue, queue_id)
                .map(|l| {
                    l.dead_taken.clear();
                    l.take_dropped()
                })
                .unwrap_or_default();
            for m in &dropped {
                self.forget(queue_id, m);
            }
        }
    }
}

impl Broker {
    /// Puts a message restored from the store back in its quorum queue, with its count,
    /// held out until `ready_at_ms` when a delay was still running.
    pub(super) fn quorum_restore(
        &mut self,
        vh: VHostId,
        queue: &str,
        queue_id: u64,
        m: QueuedMessage,
        ready_at_ms: Option<u64>,
    ) {
        let delay = ready_at_ms.map(|at| at.saturating_sub(self.unix_ms)).filter(|d| *d > 0);
        self.quorum_enqueue(vh, queue, queue_id, m, delay);
    }

    /// Consumers of quorum queues went without settling (their channel closed, their
    /// connection went, one timed out): the bodies of what they held go back to their
    /// queues first (`held`, taken out of the channels), then each of the `queues` applies
    /// `lost` once, which returns them as failed deliveries and removes the consumers in
    /// one step.
    pub(super) fn quorum_lost(
        &mut self,
        vh: VHostId,
        conn: ConnId,
        held: Vec<(u16, Unacked)>,
        queues: Vec<Arc<str>>,
        lost: &Command,
    ) {
        let mut affected: Vec<(Arc<str>, u64)> = Vec::new();
        for (ch, u) in held {
            let Some(QuorumDelivery { index, .. }) = u.quorum else { continue };
            let (queue, queue_id) = (u.queue.clone(), u.queue_id);
            let Some(q) = self.vhosts[vh].queues.get(&*queue).filter(|q| q.id == queue_id) else {
                continue; // gone with its queue, and its stored entry with it
            };
            if q.args.retry.as_ref().is_some_and(|p| p.applies(true)) {
                // A retry policy for failures decides each one (held out, dead-lettered or
                // dropped): returned one by one; the lost consumer is removed after.
                affected.push((queue, queue_id));
                self.quorum_return(vh, (conn, ch), u, super::deliver::Return::Lost);
                continue;
            }
            let mut m = u.message;
            // The machine counts the failed delivery too; the store keeps it for a restart.
            m.delivery_count = m.delivery_count.saturating_add(1);
            self.store_delivery_count(queue_id, m.seq, m.stored, m.delivery_count);
            self.quorum_keep(vh, &queue, queue_id, [(index, m)]);
            affected.push((queue, queue_id));
        }
        for name in queues {
            if let Some(q) = self.vhosts[vh].queues.get(&*name).filter(|q| q.quorum.is_some()) {
                affected.push((name, q.id));
            }
        }
        affected.sort();
        affected.dedup();
        for (queue, queue_id) in affected {
            self.quorum_apply(vh, &queue, Some(queue_id), lost.clone());
        }
    }

    /// Settles the auto-ack deliveries connection `conn` just took for its socket: forgotten,
    /// and their consumers' windows open again (which may deliver more, for the next pull).
    pub(super) fn settle_taken(&mut self, conn: ConnId) {
        let vh = self.vh(conn);
        let Some(s) = self.sessions.get_mut(&conn).filter(|s| !s.autoacked.is_empty()) else {
            return;
        };
        for (ch, u) in std::mem::take(&mut s.autoacked) {
            self.forget(u.queue_id, &u.message);
            self.quorum_ack(vh, conn, ch, &u);
        }
    }

    /// Connection `conn` is going: every quorum queue it consumed from takes back what its
    /// channels held and drops its consumers in one step ([`Command::Down`]), so a message
    /// returned from one of its channels is not handed to another of them and counted as
    /// failed twice. What stays in the channels is for the classic queues.
    pub(super) fn quorum_disconnect(&mut self, vh: VHostId, conn: ConnId) {
        let Some(session) = self.sessions.get_mut(&conn) else {
            return;
        };
        // Auto-ack deliveries its socket never took go back with the rest.
        let mut held = std::mem::take(&mut session.autoacked);
        let mut queues: Vec<Arc<str>> = Vec::new();
        for (&ch, c) in session.channels.iter_mut() {
            let tags: Vec<u64> =
                c.unacked.iter().filter(|(_, u)| u.quorum.is_some()).map(|(t, _)| *t).collect();
            held.extend(tags.iter().filter_map(|t| c.unacked.remove(t)).map(|u| (ch, u)));
            let gone: Vec<String> = c
                .consumers
                .iter()
                .filter(|(_, k)| self.vhosts[vh].queues.get(&*k.queue).is_some_and(|q| q.quorum.is_some()))
                .map(|(tag, _)| tag.clone())
                .collect();
            for tag in gone {
                if let Some(k) = c.consumers.remove(&tag) {
                    if let Some(q) = self.vhosts[vh].queues.get_mut(&*k.queue) {
                        q.remove_consumer(conn, ch, &tag);
                    }
                    queues.push(k.queue);
                }
            }
        }
        queues.extend(held.iter().map(|(_, u)| u.queue.clone()));
        let down = Self::lost_command(conn, None, None);
        self.quorum_lost(vh, conn, held, queues, &down);
    }

    /// The machine's command for consumers lost on channel `ch` of `conn` (all of them, or
    /// `tag`'s), or on the whole connection.
    pub(super) fn lost_command(conn: ConnId, ch: Option<u16>, tag: Option<&str>) -> Command {
        let owner = Owner { node: 0, conn };
        match ch {
            Some(channel) => Command::Lost { owner, channel, tag: tag.map(str::to_string) },
            None => Command::Down { owner },
        }
    }

    /// Lifts (`restoring`) or sets again the length limits of every quorum queue: a restore
    /// puts back every stored message, whatever a policy changed since, and never refuses
    /// one (which would forget it); the limits then apply as to any queue.
    pub(super) fn quorum_restoring(&mut self, restoring: bool) {
        let queues: Vec<(VHostId, Arc<str>, u64, crate::queue::quorum::Config)> = self
            .vhosts
            .all_queues()
            .filter(|q| q.quorum.is_some())
            .map(|q| (q.vhost, q.name.clone(), q.id, machine_config(&q.args, restoring)))
            .collect();
        for (vh, name, id, config) in queues {
            self.quorum_configure(vh, &name, id, config);
        }
    }
}

/// A quorum queue's machine configuration from its arguments (with policies applied);
/// without length limits while `restoring`.
pub(super) fn machine_config(
    args: &crate::queue_args::QueueArgs,
    restoring: bool,
) -> crate::queue::quorum::Config {
    let mut config = crate::queue::quorum::Config::from_args(args);
    // Consumers time out per channel, as from a classic queue (`consumer_timeout.rs`).
    config.consumer_timeout_ms = None;
    // Without limits nothing overflows, so reject-publish refuses nothing; it stays, with
    // it the at-least-once condition (a dead letter made during the restore is kept).
    if restoring {
        config.max_length = None;
        config.max_length_bytes = None;
    }
    config
}
