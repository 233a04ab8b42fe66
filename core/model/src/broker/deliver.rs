//! Handing messages to consumers, and settling them: ack, nack, reject, requeue, with the
//! delivery limit and retry policy applied to messages that come back.

use std::sync::Arc;

use warren_codec::FieldValue;

use super::VHostId;
use super::{Broker, ConnId};
use crate::channel::{TxOp, Unacked};
use crate::deadletter::Reason;
use crate::error::{AmqpError, precondition};
use crate::message::{Message, Outgoing, QueuedMessage};
use crate::retry::ExternalDecision;

/// How an unacked message came back to its queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Return {
    /// A consumer nacked it with requeue: the retry policy applies.
    Refused,
    /// A consumer rejected it with requeue: as [`Return::Refused`], and a quorum queue counts
    /// it as a failed delivery (RabbitMQ 4.3; a nack does not count).
    Rejected,
    /// The client asked to recover: it simply goes back.
    Released,
    /// Its consumer is gone (its channel closed, it timed out): it goes back, and a quorum
    /// queue counts it as a failed delivery.
    Lost,
}

impl Return {
    /// Whether a consumer refused it (a retry policy for failures applies).
    fn refused(self) -> bool {
        matches!(self, Return::Refused | Return::Rejected)
    }

    /// Whether a quorum queue counts it as a failed delivery (RabbitMQ 4.3).
    pub(super) fn failed(self) -> bool {
        matches!(self, Return::Rejected | Return::Lost)
    }
}

impl Broker {
    /// Delivers ready messages of `queue` to consumers with room in their prefetch window,
    /// until the queue is empty or every consumer is full. Expired messages met on the way
    /// are dead-lettered, never delivered.
    pub(super) fn dispatch(&mut self, vh: VHostId, queue: &str) {
        loop {
            let now = self.now;
            let Some(q) = self.vhosts[vh].queues.get_mut(queue) else {
                return;
            };
            // A quorum queue's machine hands out its messages itself (`broker/quorum.rs`).
            if q.consumers.is_empty() || q.quorum.is_some() {
                return;
            }
            let Some(head) = q.head() else {
                return;
            };
            if head.expires_at.is_some_and(|t| t <= now) {
                if let Some(msg) = q.pop() {
                    self.dead_letter(vh, queue, msg, Reason::Expired);
                }
                continue;
            }
            let n = q.consumers.len();
            // With a single active consumer only the earliest registered one is eligible.
            // Otherwise the highest priority with room wins, round-robin among equals. When
            // all priorities are equal (the usual case) that is the first with room in
            // round-robin order: the search claims it and delivers through the references it
            // already holds, one lookup of the session, channel and consumer per message.
            let single = q.args.single_active_consumer;
            let mixed = !single && q.consumers.iter().any(|k| k.priority != q.consumers[0].priority);
            // Where the search starts and how many it may try.
            let (start, tries) = if mixed {
                let mut best: Option<(i64, usize)> = None;
                for i in 0..n {
                    let idx = (q.next_consumer + i) % n;
                    let k = &q.consumers[idx];
                    let has_room = self.sessions.get_mut(&k.conn).is_some_and(|s| {
                        s.has_room() && s.channels.get(&k.channel).is_some_and(|c| c.can_deliver(&k.tag))
                    });
                    if has_room && best.is_none_or(|(p, _)| k.priority > p) {
                        best = Some((k.priority, idx));
                    }
                }
                let Some((_, idx)) = best else {
                    return;
                };
                (idx, 1)
            } else if single {
                (0, 1)
            } else {
                (q.next_consumer, n)
            };
            let mut settled = None;
            let mut delivered = false;
            let mut due = None;
            for i in 0..tries {
                let idx = (start + i) % n;
                let key = &q.consumers[idx];
                let Some(session) = self.sessions.get_mut(&key.conn) else {
                    continue;
                };
                if !session.has_room() {
                    continue;
                }
                let Some(ch) = session.channels.get_mut(&key.channel) else {
                    continue;
                };
                let Some((no_ack, timeout)) = ch.claim(&key.tag) else {
                    continue;
                };
                let (conn, channel, consumer_tag) = (key.conn, key.channel, key.tag.clone());
                let Some(msg) = q.pop() else {
                    return;
                };
                q.next_consumer = (idx + 1) % n;
                count_delivery(&mut self.stats, q, msg.redelivered);
                let delivery_tag = ch.next_delivery_tag();
                let redelivered = msg.redelivered;
                let message = delivered_form(&msg);
                if no_ack {
                    // Auto-ack: delivered is done.
                    settled = Some((q.id, msg));
                } else {
                    let consumer = Some(consumer_tag.clone());
                    let u = Unacked {
                        queue_id: q.id,
                        queue: q.name.clone(),
                        message: msg,
                        consumer,
                        delivered_at: now,
                        quorum: None,
                    };
                    ch.unacked.insert(delivery_tag, u);
                    due = timeout.map(|t| now + t);
                }
                // Encoded straight from the shared message: no copy of the tag, exchange or key.
                let out = Outgoing::Deliver { channel, consumer_tag, delivery_tag, redelivered, message };
                session.outbound.push(out);
                if !session.woken {
                    session.woken = true;
                    self.wakeups.push(conn);
                }
                delivered = true;
                break;
            }
            if !delivered {
                return;
            }
            // Known now, so the loop need not look the queue up again to find it empty (the
            // common case: each publish dispatches the one message it queued).
            let drained = q.is_empty();
            if let Some((queue_id, m)) = settled {
                self.forget(queue_id, &m);
            }
            if let Some(at) = due {
                self.arm_consumer_sweep(at);
            }
            if drained {
                return;
            }
        }
    }

    /// basic.ack (`requeue` None), basic.nack and basic.reject (`requeue` Some); `how` says
    /// which of the two refused a message it requeues.
    pub(super) fn settle(
        &mut self,
        conn: ConnId,
        ch: u16,
        delivery_tag: u64,
        multiple: bool,
        requeue: Option<bool>,
        how: Return,
    ) -> Result<(), AmqpError> {
        let Some(c) = self.channel(conn, ch) else {
            return Ok(());
        };
        if c.tx.is_some() {
            // Checked now, applied at tx.commit.
            if !c.knows_tag(delivery_tag, multiple) {
                return Err(precondition(format!("unknown delivery tag {delivery_tag}")));
            }
            let reject = how == Return::Rejected;
            return self.hold_in_tx(conn, ch, TxOp::Settle { tag: delivery_tag, multiple, requeue, reject });
        }
        self.settle_as(conn, ch, delivery_tag, multiple, requeue, how)
    }

    /// Applies an ack, nack or reject now; a requeue counts as `how` (a consumer's nack
    /// refuses the message, a recover only gives it back).
    pub(super) fn settle_as(
        &mut self,
        conn: ConnId,
        ch: u16,
        delivery_tag: u64,
        multiple: bool,
        requeue: Option<bool>,
        how: Return,
    ) -> Result<(), AmqpError> {
        let vh = self.vh(conn);
        let Some(c) = self.channel(conn, ch) else {
            return Ok(());
        };
        let taken = c
            .take_unacked(delivery_tag, multiple)
            .ok_or_else(|| precondition(format!("unknown delivery tag {delivery_tag}")))?;
        for u in &taken {
            c.settled(u);
        }
        let mut queues: Vec<Arc<str>> = c.consumer_queues().collect();
        if requeue.is_none() {
            self.stats.acknowledged += taken.len() as u64;
            for u in &taken {
                if let Some(q) = self.vhosts[vh].queues.get_mut(&*u.queue).filter(|q| q.id == u.queue_id) {
                    q.stats.acked += 1;
                }
                self.forget(u.queue_id, &u.message);
                self.quorum_ack(vh, conn, ch, u);
            }
        }
        for u in taken {
            // Usually the queue of a consumer already listed: no list growing per message.
            if !queues.contains(&u.queue) {
                queues.push(u.queue.clone());
            }
            match requeue {
                None => {}
                Some(true) => self.give_back(vh, (conn, ch), u, how),
                Some(false) if u.quorum.is_some() => {
                    self.quorum_give_back(vh, conn, ch, u, super::quorum::Giveback::Discard);
                }
                Some(false) if self.vhosts[vh].queues.get(&*u.queue).is_some_and(|q| q.id == u.queue_id) => {
                    self.dead_letter(vh, &u.queue, u.message, Reason::Rejected);
                }
                // Its queue is gone, and with it the stored entry.
                Some(false) => {}
            }
        }
        queues.sort();
        queues.dedup();
        for q in queues {
            self.dispatch(vh, &q);
        }
        Ok(())
    }

    /// Returns an unacked message to its queue (if that queue still exists): counted against
    /// `x-delivery-limit`, held back by the retry policy when a consumer refused it, and
    /// otherwise put back at its original position.
    pub(super) fn give_back(&mut self, vh: VHostId, (conn, ch): (ConnId, u16), u: Unacked, how: Return) {
        if u.quorum.is_some() {
            return self.quorum_return(vh, (conn, ch), u, how);
        }
        let now = self.now;
        let Some(q) = self.vhosts[vh].queues.get_mut(&*u.queue).filter(|q| q.id == u.queue_id) else {
            return;
        };
        let mut m = u.message;
        m.delivery_count = m.delivery_count.saturating_add(1);
        if q.args.delivery_limit.is_some_and(|limit| m.delivery_count > limit) {
            return self.dead_letter(vh, &u.queue, m, Reason::DeliveryLimit);
        }
        if m.expires_at.is_some_and(|t| t <= now) {
            return self.dead_letter(vh, &u.queue, m, Reason::Expired);
        }
        if let Some(policy) = q.args.retry.as_ref().filter(|p| p.applies(how.refused())) {
            let previous = retry_count(&m.message);
            let attempt = previous.saturating_add(1);
            match policy.decide(&m.message, previous, m.delivery_count, Reason::Rejected) {
                ExternalDecision::DeadLetter => return self.dead_letter(vh, &u.queue, m, Reason::Rejected),
                ExternalDecision::Drop => return self.forget(u.queue_id, &m),
                ExternalDecision::Retry { delay_ms, set_headers, remove_headers } => {
                    m.message = retried(&m.message, attempt, set_headers, &remove_headers);
                    return self.delay(vh, &u.queue, u.queue_id, m, delay_ms);
                }
            }
        }
        let (seq, at, count) = (m.seq, m.stored, m.delivery_count);
        q.requeue(m);
        self.store_delivery_count(u.queue_id, seq, at, count);
    }
}

/// Counts one delivery from `q` in the queue's and the broker's counters.
pub(super) fn count_delivery(
    stats: &mut crate::stats::GlobalStats,
    q: &mut crate::queue::Queue,
    redelivered: bool,
) {
    stats.delivered += 1;
    q.stats.delivered += 1;
    if redelivered {
        q.stats.redelivered += 1;
    }
}

/// The message as a consumer sees it: redeliveries carry `x-delivery-count`.
pub(super) fn delivered_form(m: &QueuedMessage) -> Arc<Message> {
    if m.delivery_count == 0 {
        return m.message.clone();
    }
    with_header(&m.message, "x-delivery-count", FieldValue::I64(i64::from(m.delivery_count)))
}

fn with_header(m: &Message, key: &str, value: FieldValue) -> Arc<Message> {
    let mut copy = m.clone();
    copy.properties.headers.get_or_insert_with(Default::default).insert(key.into(), value);
    Arc::new(copy)
}

/// The message a retry policy sends round again: its header changes, and `x-retry-count`.
pub(super) fn retried(
    m: &Message,
    attempt: u32,
    set_headers: warren_codec::FieldTable,
    remove_headers: &[String],
) -> Arc<Message> {
    let mut copy = m.clone();
    let headers = copy.properties.headers.get_or_insert_with(Default::default);
    for k in remove_headers {
        headers.remove(k);
    }
    headers.extend(set_headers);
    headers.insert("x-retry-count".into(), FieldValue::I64(i64::from(attempt)));
    Arc::new(copy)
}

pub(super) fn retry_count(m: &Message) -> u32 {
    m.properties
        .headers
        .as_ref()
        .and_then(|h| h.get("x-retry-count"))
        .and_then(FieldValue::as_i64)
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or(0)
}
