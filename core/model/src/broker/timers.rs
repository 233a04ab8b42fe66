//! Timed work: message TTL expiry (anywhere in a queue, not only at its head), retry delays,
//! and `x-expires` for unused queues. One ordered set holds every deadline; entries are
//! checked when they fire, so work that became moot (a message delivered before it expired)
//! needs no cancellation.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Broker;
use super::VHostId;
use crate::deadletter::Reason;
use crate::message::QueuedMessage;

/// Something to do at a deadline.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Timer {
    /// A ready message's TTL runs out.
    Expire { vh: VHostId, queue: Arc<str>, queue_id: u64, seq: u64 },
    /// A message held by a retry policy goes back to its queue.
    Retry { id: u64 },
    /// An `x-expires` queue may have gone unused long enough.
    QueueExpires { vh: VHostId, queue: Arc<str>, queue_id: u64 },
    /// Some consumer's delivery may have waited too long for its ack.
    ConsumerTimeouts,
    /// A quorum queue's machine asked to be ticked at `at_ms` (a TTL, `x-expires`, a
    /// delay); one armed for a deadline since replaced does nothing.
    QuorumTick { vh: VHostId, queue: Arc<str>, queue_id: u64, at_ms: u64 },
    /// A quorum queue's at-least-once dead letters are tried again.
    QuorumDeadLetters { vh: VHostId, queue: Arc<str>, queue_id: u64 },
}

/// A message held out of its queue by a retry policy or a delayed-message exchange.
#[derive(Debug)]
pub(super) struct Delayed {
    pub vh: VHostId,
    pub queue: Arc<str>,
    pub queue_id: u64,
    pub message: QueuedMessage,
    /// Wall-clock milliseconds when it goes back.
    pub due_ms: u64,
}

impl Broker {
    /// The driver's clock: monotonic `now` and wall-clock milliseconds since the epoch.
    /// Call before each batch of work.
    pub fn set_time(&mut self, now: Instant, unix_ms: u64) {
        self.now = now;
        self.unix_ms = unix_ms;
    }

    /// When [`Broker::handle_timeout`] should next run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.first().map(|(at, _, _)| *at)
    }

    /// Whether a timer earlier than the last `poll_timeout` answer may have been added;
    /// clears the flag.
    pub fn take_timer_changed(&mut self) -> bool {
        std::mem::take(&mut self.timer_changed)
    }

    /// Does everything that is due at the time last set.
    pub fn handle_timeout(&mut self) {
        let mut counts = false;
        while let Some((at, _, _)) = self.timers.first() {
            if *at > self.now {
                break;
            }
            let Some((_, _, timer)) = self.timers.pop_first() else {
                break;
            };
            match timer {
                Timer::Expire { vh, queue, queue_id, seq } => self.expire_one(vh, &queue, queue_id, seq),
                Timer::Retry { id } => self.release_delayed(id),
                Timer::QueueExpires { vh, queue, queue_id } => {
                    counts = true;
                    self.check_queue_expiry(vh, &queue, queue_id);
                }
                Timer::ConsumerTimeouts => {
                    counts = true;
                    self.sweep_consumer_timeouts();
                }
                Timer::QuorumTick { vh, queue, queue_id, at_ms } => {
                    counts = true;
                    self.quorum_tick(vh, &queue, queue_id, at_ms);
                }
                Timer::QuorumDeadLetters { vh, queue, queue_id } => {
                    self.quorum_dead_letter_retry(vh, &queue, queue_id);
                }
            }
        }
        // A queue that expired took its bindings; a timed-out consumer is gone.
        if counts {
            self.publish_census();
        }
    }

    pub(super) fn arm(&mut self, at: Instant, timer: Timer) {
        if self.timers.first().is_none_or(|(first, _, _)| at < *first) {
            self.timer_changed = true;
        }
        self.timer_seq += 1;
        self.timers.insert((at, self.timer_seq, timer));
    }

    pub(super) fn after(&self, ms: u64) -> Instant {
        self.now + Duration::from_millis(ms)
    }

    fn expire_one(&mut self, vh: VHostId, queue: &str, queue_id: u64, seq: u64) {
        let Some(q) = self.vhosts[vh].queues.get_mut(queue).filter(|q| q.id == queue_id) else {
            return;
        };
        let Some(m) = q.take(seq) else {
            return;
        };
        self.dead_letter(vh, queue, m, Reason::Expired);
    }

    /// Holds `message` for `delay_ms`, then puts it back in `queue`. A stored message is
    /// rewritten with its new headers and the time it is due back.
    pub(super) fn delay(
        &mut self,
        vh: VHostId,
        queue: &str,
        queue_id: u64,
        mut message: QueuedMessage,
        delay_ms: u64,
    ) {
        let due_ms = self.unix_ms.saturating_add(delay_ms);
        if message.stored.is_some() {
            let r = self.store_entry(queue_id, &mut message, Some(due_ms));
            self.storage_result(r);
        }
        let id = self.next_delayed;
        self.next_delayed += 1;
        if let Some(q) = self.vhosts[vh].queues.get_mut(queue) {
            q.delayed += 1;
        }
        let queue: Arc<str> = Arc::from(queue);
        self.hold_message(id, Delayed { vh, queue, queue_id, message, due_ms });
        let at = self.after(delay_ms);
        self.arm(at, Timer::Retry { id });
    }

    /// Puts `d` among the held messages; a delayed-message exchange's hold (never delivered)
    /// is counted for that exchange.
    pub(super) fn hold_message(&mut self, id: u64, d: Delayed) {
        if d.message.delivery_count == 0 {
            *self.vhosts[d.vh].held_by_exchange.entry(d.message.message.exchange.clone()).or_default() += 1;
        }
        self.delayed.insert(id, d);
    }

    /// Takes held message `id` out, uncounting it.
    pub(super) fn unhold_message(&mut self, id: u64) -> Option<Delayed> {
        let d = self.delayed.remove(&id)?;
        if d.message.delivery_count == 0
            && let Some(n) = self.vhosts[d.vh].held_by_exchange.get_mut(&d.message.message.exchange)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.vhosts[d.vh].held_by_exchange.remove(&d.message.message.exchange);
            }
        }
        Some(d)
    }

    fn release_delayed(&mut self, id: u64) {
        let Some(d) = self.unhold_message(id) else {
            return;
        };
        let vh = d.vh;
        let Some(q) = self.vhosts[vh].queues.get_mut(&*d.queue).filter(|q| q.id == d.queue_id) else {
            return;
        };
        q.delayed = q.delayed.saturating_sub(1);
        // Its TTL may have run out while it was held (it counts from now for a delayed-message
        // hold, and kept running through a retry delay): expired now, or armed from now.
        let expires = d.message.expires_at;
        if expires.is_some_and(|t| t <= self.now) {
            return self.dead_letter(vh, &d.queue, d.message, Reason::Expired);
        }
        let seq = d.message.seq;
        // Never delivered (held by a delayed-message exchange): it joins the queue as it is;
        // a retried one comes back flagged redelivered.
        if d.message.delivery_count == 0 {
            q.restore(d.message);
        } else {
            q.requeue(d.message);
        }
        if let Some(at) = expires {
            self.arm(at, Timer::Expire { vh, queue: d.queue.clone(), queue_id: d.queue_id, seq });
        }
        self.dispatch(vh, &d.queue);
    }

    /// Arms the `x-expires` check for a queue that just became unused.
    pub(super) fn arm_queue_expiry(&mut self, vh: VHostId, queue: &str) {
        let Some(q) = self.vhosts[vh].queues.get_mut(queue) else {
            return;
        };
        q.last_used = self.now;
        // A quorum queue's machine keeps its own x-expires.
        if q.quorum.is_some() {
            return;
        }
        let Some(ms) = q.args.expires else {
            return;
        };
        let (name, queue_id) = (Arc::from(queue), q.id);
        let at = self.after(ms);
        self.arm(at, Timer::QueueExpires { vh, queue: name, queue_id });
    }

    fn check_queue_expiry(&mut self, vh: VHostId, queue: &str, queue_id: u64) {
        let now = self.now;
        let Some(q) = self.vhosts[vh].queues.get(queue).filter(|q| q.id == queue_id) else {
            return;
        };
        let Some(ms) = q.args.expires else {
            return;
        };
        if !q.consumers.is_empty() {
            return; // re-armed when the last consumer goes
        }
        let due = q.last_used + Duration::from_millis(ms);
        if now >= due {
            self.drop_own_queue(vh, queue);
        } else {
            let name = Arc::from(queue);
            self.arm(due, Timer::QueueExpires { vh, queue: name, queue_id });
        }
    }
}
