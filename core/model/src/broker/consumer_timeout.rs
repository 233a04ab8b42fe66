//! RabbitMQ's `consumer_timeout`: a consumer that holds a delivery unacknowledged for longer
//! than its timeout is stuck, and its messages should go to someone who works. A client that
//! understands `consumer_cancel_notify` gets `basic.cancel` for that consumer and its
//! deliveries go back to the queue (a late ack of one settles nothing); any other client has
//! the channel closed with 406, which returns them too.
//!
//! One timer serves every consumer: armed at the earliest deadline a delivery sets, it sweeps
//! the unacked deliveries and arms itself again at the next deadline, but no sooner than a
//! tenth of the shortest timeout from now, so a busy broker does not sweep on every delivery.

use std::sync::Arc;
use std::time::{Duration, Instant};

use warren_codec::BasicCancel;
use warren_codec::reply_code::PRECONDITION_FAILED;

use super::deliver::Return;
use super::timers::Timer;
use super::{Broker, ConnId};
use crate::error::AmqpError;

impl Broker {
    /// Makes sure a sweep runs by `at`.
    pub(super) fn arm_consumer_sweep(&mut self, at: Instant) {
        if self.consumer_sweep.is_none_or(|armed| at < armed) {
            self.consumer_sweep = Some(at);
            self.arm(at, Timer::ConsumerTimeouts);
        }
    }

    pub(super) fn sweep_consumer_timeouts(&mut self) {
        if self.consumer_sweep.is_some_and(|armed| armed > self.now) {
            return; // an earlier timer that a later arm superseded
        }
        self.consumer_sweep = None;
        let now = self.now;
        let mut stuck: Vec<(ConnId, u16, Arc<str>, Duration)> = Vec::new();
        let mut next: Option<Instant> = None;
        let mut shortest: Option<Duration> = None;
        for (conn, s) in &self.sessions {
            for (ch, c) in &s.channels {
                for u in c.unacked.values() {
                    let Some(tag) = &u.consumer else { continue };
                    let Some(timeout) = c.consumers.get(&**tag).and_then(|k| k.timeout) else { continue };
                    let due = u.delivered_at + timeout;
                    if due <= now {
                        if !stuck.iter().any(|(c2, ch2, t, _)| c2 == conn && ch2 == ch && t == tag) {
                            stuck.push((*conn, *ch, tag.clone(), timeout));
                        }
                    } else {
                        next = Some(next.map_or(due, |n| n.min(due)));
                        shortest = Some(shortest.map_or(timeout, |s| s.min(timeout)));
                    }
                }
            }
        }
        for (conn, ch, tag, timeout) in stuck {
            self.consumer_timed_out(conn, ch, &tag, timeout);
        }
        if let (Some(at), Some(shortest)) = (next, shortest) {
            let gap = (shortest / 10).clamp(Duration::from_millis(10), Duration::from_secs(60));
            self.arm_consumer_sweep(at.max(now + gap));
        }
    }

    fn consumer_timed_out(&mut self, conn: ConnId, ch: u16, tag: &str, timeout: Duration) {
        let text = format!(
            "consumer '{tag}' on channel {ch} did not acknowledge a delivery within {} ms (consumer timeout)",
            timeout.as_millis()
        );
        let Some(session) = self.sessions.get_mut(&conn) else {
            return;
        };
        let vh = session.vhost;
        if !session.info.consumer_cancel_notify {
            // Closing the channel returns every delivery it holds.
            return self.raise_error(conn, ch, AmqpError::new(PRECONDITION_FAILED, text));
        }
        let Some(c) = session.channels.get_mut(&ch) else {
            return;
        };
        let Some(consumer) = c.consumers.remove(tag) else {
            return;
        };
        let tags: Vec<u64> =
            c.unacked.iter().filter(|(_, u)| u.consumer.as_deref() == Some(tag)).map(|(t, _)| *t).collect();
        let mut returned = Vec::with_capacity(tags.len());
        for t in tags {
            if let Some(u) = c.unacked.remove(&t) {
                c.timed_out.insert(t);
                returned.push(u);
            }
        }
        if let Some(q) = self.vhosts[vh].queues.get_mut(&*consumer.queue) {
            q.remove_consumer(conn, ch, tag);
        }
        self.send(conn, ch, BasicCancel { consumer_tag: tag.to_string(), no_wait: true });
        self.events
            .push(crate::stats::BrokerEvent::ConsumerTimedOut { consumer: tag.to_string(), detail: text });
        let (held, classic): (Vec<_>, Vec<_>) = returned.into_iter().partition(|u| u.quorum.is_some());
        for u in classic {
            self.give_back(vh, (conn, ch), u, Return::Lost);
        }
        let lost = Self::lost_command(conn, Some(ch), Some(tag));
        let held = held.into_iter().map(|u| (ch, u)).collect();
        self.quorum_lost(vh, conn, held, vec![consumer.queue.clone()], &lost);
        self.dispatch(vh, &consumer.queue);
    }
}
