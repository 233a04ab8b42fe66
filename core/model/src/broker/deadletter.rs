//! Offering messages to queues (TTL, length limits) and dead-lettering them.

use std::sync::Arc;

use warren_codec::BasicProperties;
use warren_codec::reply_code::PRECONDITION_FAILED;

use super::Broker;
use super::VHostId;
use super::timers::Timer;
use crate::deadletter::{self, Reason};
use crate::error::AmqpError;
use crate::message::{Message, QueuedMessage};
use crate::queue::Offer;
use crate::queue_args::Overflow;

/// A per-message TTL from the `expiration` property: milliseconds as a decimal string.
pub(super) fn message_ttl(p: &BasicProperties) -> Result<Option<u64>, AmqpError> {
    let Some(e) = p.expiration.as_deref() else {
        return Ok(None);
    };
    e.parse::<u64>().map(Some).map_err(|_| {
        AmqpError::new(PRECONDITION_FAILED, format!("invalid expiration '{e}': not a non-negative integer"))
    })
}

impl Broker {
    /// Puts a routed message in `queue`, applying its TTL (`own_ttl` is the message's
    /// `expiration`, parsed once by the caller for all its queues) and length limits, and hands
    /// it to a consumer if one is ready.
    pub(super) fn offer(
        &mut self,
        vh: VHostId,
        queue: &str,
        message: Arc<Message>,
        own_ttl: Option<u64>,
    ) -> Offer {
        self.offer_after(vh, queue, message, own_ttl, None)
    }

    /// [`Broker::offer`], the message held `hold_ms` before it joins the queue (a
    /// delayed-message exchange's `x-delay`): it is stored, counted in the queue's length
    /// limits and held like a retry delay, and joins the queue at its publish position.
    pub(super) fn offer_after(
        &mut self,
        vh: VHostId,
        queue: &str,
        message: Arc<Message>,
        own_ttl: Option<u64>,
        hold_ms: Option<u64>,
    ) -> Offer {
        let (now, has_store) = (self.now, self.has_store());
        let Some(q) = self.vhosts[vh].queues.get_mut(queue) else {
            return Offer::NoQueue;
        };
        if q.home.is_some() {
            return self.forward(vh, queue, message, hold_ms).map_or(Offer::NoQueue, Offer::Forwarded);
        }
        if q.quorum.is_some() {
            return self.quorum_offer(vh, queue, message, own_ttl, hold_ms);
        }
        let size = message.body.len() as u64;
        if q.would_overflow(size) {
            match q.args.overflow {
                Overflow::DropHead => {}
                Overflow::RejectPublish => return Offer::Refused,
                Overflow::RejectPublishDlx => {
                    let m = QueuedMessage::new(0, message, None, 0);
                    self.dead_letter(vh, queue, m, Reason::MaxLen);
                    return Offer::Refused;
                }
            }
        }
        // The shorter of the queue's and the message's TTL.
        let ttl = match (q.args.message_ttl, own_ttl) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let expires_at = ttl.map(|ms| now + std::time::Duration::from_millis(ms));
        let seq = q.allocate_seq();
        let id = q.id;
        let store = has_store && super::persist::must_store(&q.spec, &message);
        // A held message's TTL counts from when it joins the queue.
        let entry_expires = match hold_ms {
            Some(ms) => expires_at.map(|t| t + std::time::Duration::from_millis(ms)),
            None => expires_at,
        };
        let mut entry = QueuedMessage::new(seq, message, entry_expires, self.unix_ms);
        let due_ms = hold_ms.map(|ms| self.unix_ms.saturating_add(ms));
        // Only a stored message needs the queue looked up again (the store borrows the broker).
        let q = if store {
            if let Err(e) = self.store_entry(id, &mut entry, due_ms) {
                // Not written, not queued: the publisher's confirm becomes a nack.
                self.storage_result(Err(e));
                return Offer::Refused;
            }
            let Some(q) = self.vhosts[vh].queues.get_mut(queue) else {
                return Offer::Refused;
            };
            q
        } else {
            q
        };
        if let (Some(ms), Some(due_ms)) = (hold_ms, due_ms) {
            q.stats.published += 1;
            q.delayed += 1;
            let delayed = self.next_delayed;
            self.next_delayed += 1;
            let name: Arc<str> = Arc::from(queue);
            self.hold_message(
                delayed,
                super::timers::Delayed { vh, queue: name, queue_id: id, message: entry, due_ms },
            );
            let at = self.after(ms);
            self.arm(at, Timer::Retry { id: delayed });
            return Offer::Accepted { stored: store };
        }
        q.push(entry);
        // drop-head: the oldest messages make room.
        if q.over_limit() {
            while let Some(q) = self.vhosts[vh].queues.get_mut(queue).filter(|q| q.over_limit()) {
                // RabbitMQ drops from the head, the next to deliver: in a priority queue, the
                // highest priority's oldest (checked against RabbitMQ 3.10 in t62).
                let Some(head) = q.pop() else {
                    break;
                };
                self.dead_letter(vh, queue, head, Reason::MaxLen);
            }
        }
        self.dispatch(vh, queue);
        if let Some(at) = expires_at {
            if ttl == Some(0) {
                // TTL 0: delivered at once to a waiting consumer, or expired now.
                self.expire_now(vh, queue, seq);
            } else {
                self.arm(at, Timer::Expire { vh, queue: Arc::from(queue), queue_id: id, seq });
            }
        }
        Offer::Accepted { stored: store }
    }

    fn expire_now(&mut self, vh: VHostId, queue: &str, seq: u64) {
        if let Some(m) = self.vhosts[vh].queues.get_mut(queue).and_then(|q| q.take(seq)) {
            self.dead_letter(vh, queue, m, Reason::Expired);
        }
    }

    /// Sends a message that died in `queue` to the queue's dead-letter exchange, or drops
    /// it when there is none, then forgets the stored original: the copy is written first.
    pub(super) fn dead_letter(&mut self, vh: VHostId, queue: &str, m: QueuedMessage, reason: Reason) {
        self.send_to_dlx(vh, queue, &m, reason);
        if let Some(id) = self.vhosts[vh].queues.get(queue).map(|q| q.id) {
            self.forget(id, &m);
        }
    }

    /// Routes a dead-lettered copy of `m` through its queue's dead-letter exchange, counted
    /// as a dead letter of `reason`.
    fn send_to_dlx(&mut self, vh: VHostId, queue: &str, m: &QueuedMessage, reason: Reason) {
        let Some(q) = self.vhosts[vh].queues.get_mut(queue) else {
            return;
        };
        if q.args.dead_letter_exchange.is_none() {
            return;
        }
        q.count_dead_letter(reason);
        self.stats.dead_lettered[reason as usize] += 1;
        self.route_dead_copy(vh, queue, m, reason, &mut Vec::new());
    }

    /// Routes a dead-lettered copy of `m` through its queue's dead-letter exchange to every
    /// queue it reaches but those in `taken`, adding those that take it; whether it is done
    /// (what an at-least-once dead letter waits for): every queue it reaches has it, or it
    /// reaches only queues that would form an automatic cycle (skipped, and so dropped, as
    /// RabbitMQ does). Reaching no queue at all is not done.
    pub(super) fn route_dead_copy(
        &mut self,
        vh: VHostId,
        queue: &str,
        m: &QueuedMessage,
        reason: Reason,
        taken: &mut Vec<Arc<str>>,
    ) -> bool {
        let Some(q) = self.vhosts[vh].queues.get(queue) else {
            return false;
        };
        let Some(dlx) = q.args.dead_letter_exchange.clone() else {
            return false;
        };
        let dlrk = q.args.dead_letter_routing_key.clone();
        let now_secs = self.unix_ms / 1000;
        let dead = deadletter::dead_letter(&m.message, queue, reason, &dlx, dlrk.as_deref(), now_secs);
        // A missing dead-letter exchange drops the message, as in RabbitMQ.
        let Ok(mut targets) =
            self.route(vh, &dlx, &dead.routing_key, &dead.properties, dead.body.len() as u64)
        else {
            return false;
        };
        if targets.is_empty() {
            return false;
        }
        targets.retain(|t| !deadletter::is_cycle(&dead.properties, reason, t) && !taken.contains(t));
        let dead = Arc::new(dead);
        let mut done = true;
        for t in targets {
            // A copy forwarded to another node counts as taken: dead-lettering across nodes is
            // at most once.
            if matches!(self.offer(vh, &t, dead.clone(), None), Offer::Accepted { .. } | Offer::Forwarded(_))
            {
                taken.push(t);
            } else {
                done = false;
            }
        }
        done
    }
}
