//! Handing messages to consumers, and settling them: ack, nack, reject, requeue.

use warren_codec::BasicDeliver;

use super::{Broker, ConnId};
use crate::channel::{TxOp, Unacked};
use crate::error::{AmqpError, precondition};
use crate::message::Outgoing;

impl Broker {
    /// Delivers ready messages of `queue` round-robin to consumers with room in their
    /// prefetch window, until the queue is empty or every consumer is full.
    pub(super) fn dispatch(&mut self, queue: &str) {
        let Some(q) = self.queues.get_mut(queue) else {
            return;
        };
        while !q.ready.is_empty() && !q.consumers.is_empty() {
            let n = q.consumers.len();
            // With a single active consumer only the earliest registered one is eligible.
            // Otherwise the highest priority with room wins, round-robin among equals.
            let eligible = if q.single_active { 1 } else { n };
            let sessions = &self.sessions;
            let mut best: Option<(i64, usize)> = None;
            for i in 0..eligible {
                let idx = (q.next_consumer + i) % n;
                let idx = if q.single_active { 0 } else { idx };
                let k = &q.consumers[idx];
                let has_room = sessions
                    .get(&k.conn)
                    .and_then(|s| s.channels.get(&k.channel))
                    .is_some_and(|c| c.can_deliver(&k.tag));
                if has_room && best.is_none_or(|(p, _)| k.priority > p) {
                    best = Some((k.priority, idx));
                }
            }
            let Some((_, idx)) = best else {
                break;
            };
            q.next_consumer = (idx + 1) % n;
            let Some(msg) = q.ready.pop_front() else {
                break;
            };
            let key = q.consumers[idx].clone();
            let Some(session) = self.sessions.get_mut(&key.conn) else {
                break;
            };
            let Some(ch) = session.channels.get_mut(&key.channel) else {
                break;
            };
            let delivery_tag = ch.next_delivery_tag();
            let method = BasicDeliver {
                consumer_tag: key.tag.clone(),
                delivery_tag,
                redelivered: msg.redelivered,
                exchange: msg.message.exchange.clone(),
                routing_key: msg.message.routing_key.clone(),
            };
            let message = msg.message.clone();
            if let Some(c) = ch.consumers.get_mut(&key.tag).filter(|c| !c.no_ack) {
                c.unacked += 1;
                let u = Unacked {
                    queue_id: q.id,
                    queue: q.name.clone(),
                    message: msg,
                    consumer: Some(key.tag),
                };
                ch.unacked.insert(delivery_tag, u);
            }
            session.outbound.push(Outgoing::Content {
                channel: key.channel,
                method: method.into(),
                message,
            });
            if !session.woken {
                session.woken = true;
                self.wakeups.push(key.conn);
            }
        }
    }

    /// basic.ack (`requeue` None), basic.nack and basic.reject (`requeue` Some).
    pub(super) fn settle(
        &mut self,
        conn: ConnId,
        ch: u16,
        delivery_tag: u64,
        multiple: bool,
        requeue: Option<bool>,
    ) -> Result<(), AmqpError> {
        let Some(c) = self.channel(conn, ch) else {
            return Ok(());
        };
        if c.tx.is_some() {
            // Checked now, applied at tx.commit.
            if !c.knows_tag(delivery_tag, multiple) {
                return Err(precondition(format!("unknown delivery tag {delivery_tag}")));
            }
            if let Some(tx) = c.tx.as_mut() {
                tx.push(TxOp::Settle {
                    tag: delivery_tag,
                    multiple,
                    requeue,
                });
            }
            return Ok(());
        }
        self.settle_now(conn, ch, delivery_tag, multiple, requeue)
    }

    /// Applies an ack, nack or reject.
    pub(super) fn settle_now(
        &mut self,
        conn: ConnId,
        ch: u16,
        delivery_tag: u64,
        multiple: bool,
        requeue: Option<bool>,
    ) -> Result<(), AmqpError> {
        let Some(c) = self.channel(conn, ch) else {
            return Ok(());
        };
        let taken = c
            .take_unacked(delivery_tag, multiple)
            .ok_or_else(|| precondition(format!("unknown delivery tag {delivery_tag}")))?;
        for u in &taken {
            c.settled(u);
        }
        let mut queues: Vec<String> = c.consumers.values().map(|c| c.queue.clone()).collect();
        for u in taken {
            if requeue == Some(true) {
                queues.push(u.queue.clone());
                self.requeue(u);
            }
            // Acked, or rejected without requeue: the message is done (dead-lettering
            // arrives with the DLX issue).
        }
        queues.sort();
        queues.dedup();
        for q in queues {
            self.dispatch(&q);
        }
        Ok(())
    }

    /// Puts an unacked message back in its queue, if that queue still exists.
    pub(super) fn requeue(&mut self, u: Unacked) {
        if let Some(q) = self.queues.get_mut(&u.queue).filter(|q| q.id == u.queue_id) {
            q.requeue(u.message);
        }
    }
}
