//! A quorum queue as a replicated state machine, in the style of RabbitMQ's `rabbit_fifo`.
//!
//! Every replica applies the same commands in the same order and reaches the same state,
//! consumers and their unacked messages included, so a new leader resumes deliveries where
//! the old one stopped. [`QuorumQueue::apply`] reads no clock and no random source: time comes
//! in [`Meta`], stamped by the leader that proposed the entry, and every collection is
//! ordered. Only the leader executes the [`Effect`]s; followers drop them.
//!
//! Bodies are not held here: a message is the log entry that enqueued it
//! ([`MsgRef::index`]), read from the log when it is delivered, and
//! [`QuorumQueue::live_indexes`] says which entries the log must keep, so one old message
//! at the head pins its own entry, not the whole log.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::lane::{Lane, Ordered};
use crate::deadletter::Reason;

mod consumers;
mod local;
mod pairs;
#[cfg(test)]
mod tests;

pub use consumers::{Consumer, ConsumerId, Consumers, Owner, Status};
pub use local::Local;

/// RabbitMQ 4's default `x-delivery-limit` for quorum queues.
pub const DEFAULT_DELIVERY_LIMIT: u32 = 20;

/// Priorities a quorum queue tells apart (RabbitMQ 4.3: 32 strict levels, no
/// `x-max-priority` needed); a higher priority counts as the highest.
pub const PRIORITIES: u8 = 32;

/// What the log says of an entry besides its command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    /// The entry's index in the queue's log.
    pub index: u64,
    /// The proposing leader's wall clock, milliseconds since the epoch.
    pub time_ms: u64,
}

/// What the queue keeps of a message; the body stays in the log entry at `index`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MsgRef {
    /// The log entry that enqueued it: its place in publish order, and where its body is.
    pub index: u64,
    /// Body octets (for `x-max-length-bytes`).
    pub size: u64,
    /// Its priority, at most `PRIORITIES - 1`.
    pub priority: u8,
    /// When its TTL runs out (the queue's or its own, the shorter), in `Meta::time_ms`.
    pub expires_ms: Option<u64>,
    /// Failed deliveries so far (`x-delivery-count`): rejected with requeue, or held by a
    /// consumer that went away.
    pub delivery_count: u32,
    /// Deliveries so far, failed or not (the `redelivered` flag).
    pub acquired: u32,
    /// When it was last handed to a consumer, in `Meta::time_ms` (for `x-consumer-timeout`).
    pub delivered_ms: u64,
}

impl Ordered for MsgRef {
    fn order(&self) -> u64 {
        self.index
    }
}

/// What the queue must know of a message being published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Body octets.
    pub size: u64,
    /// Its `priority` property (0 when absent).
    pub priority: u8,
    /// Its `expiration` property, milliseconds.
    pub ttl_ms: Option<u64>,
    /// Failed deliveries it had before (0 for a publish): a message carried over, as one
    /// restored from the node's log after a restart, keeps its count.
    pub delivery_count: u32,
    /// Held out this long before it joins the queue (a delayed-message exchange's
    /// `x-delay`, or what was left of a retry delay when the log is replayed); it counts
    /// towards the length limits meanwhile, and its TTL runs from when it joins.
    pub delay_ms: Option<u64>,
}

/// A channel publishing with confirms, in one incarnation: a channel number reopened, or a
/// connection id reused after a node restarts, is another publisher. The proposer must never
/// reuse one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PublisherId {
    /// Its connection.
    pub owner: Owner,
    /// Its channel.
    pub channel: u16,
    /// Which opening of that channel, unique on its node across restarts.
    pub incarnation: u64,
}

/// Refusals a publisher's entry remembers for enqueues proposed again; older ones are
/// forgotten, and a repeat of a forgotten one is answered [`Reply::Rejected`]: the client
/// publishes it again, which at worst duplicates it, never loses it.
pub const MAX_REMEMBERED_REFUSALS: usize = 4096;

/// A publish awaiting a confirm: who sent it and its sequence number, so an enqueue proposed
/// again after a leader change is answered as the first one was instead of being enqueued
/// twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Publish {
    /// The channel.
    pub publisher: PublisherId,
    /// This publisher's enqueues to this queue counted from 1, without gaps: the queue
    /// answers a repeat as it answered the first, and refuses one past a gap
    /// ([`Reply::OutOfSequence`]) so a lost proposal is never skipped over.
    pub seq: u64,
    /// The lowest sequence number the proposer still awaits an answer for: outcomes below it
    /// are never asked for again, so the queue forgets them.
    pub oldest_unanswered: u64,
}

/// The queue's arguments and policy, as far as the machine acts on them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    /// `x-max-length`: ready messages.
    pub max_length: Option<u64>,
    /// `x-max-length-bytes`: body octets of ready messages.
    pub max_length_bytes: Option<u64>,
    /// `x-overflow: reject-publish` (else drop-head).
    pub reject_publish: bool,
    /// `x-delivery-limit`: failed deliveries before the message is dead-lettered; `None`
    /// when disabled (`-1`).
    pub delivery_limit: Option<u32>,
    /// `x-message-ttl`, milliseconds.
    pub message_ttl: Option<u64>,
    /// `x-expires`, milliseconds unused before the queue asks to be deleted.
    pub expires: Option<u64>,
    /// `x-single-active-consumer`.
    pub single_active_consumer: bool,
    /// Whether a dead-letter exchange is set: without one, dead messages are dropped.
    pub dead_letter: bool,
    /// `x-consumer-timeout`: how long a delivery may wait for its settlement before its
    /// consumer is cancelled and its messages returned (RabbitMQ's `consumer_timeout`).
    pub consumer_timeout_ms: Option<u64>,
    /// `x-dead-letter-strategy: at-least-once`: a dead message stays the queue's (and counts
    /// towards its length) until the leader reports it published to the dead-letter
    /// exchange and confirmed ([`Command::DeadLettered`]). As in RabbitMQ it holds only with
    /// a dead-letter exchange and `x-overflow: reject-publish`; otherwise at most once.
    pub dead_letter_at_least_once: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_length: None,
            max_length_bytes: None,
            reject_publish: false,
            delivery_limit: Some(DEFAULT_DELIVERY_LIMIT),
            message_ttl: None,
            expires: None,
            single_active_consumer: false,
            dead_letter: false,
            consumer_timeout_ms: None,
            dead_letter_at_least_once: false,
        }
    }
}

impl Config {
    /// The machine's part of a quorum queue's parsed arguments (with policies applied).
    /// `reject-publish-dlx` is not a quorum queue's: RabbitMQ falls back to drop-head for
    /// it, and so does this.
    pub fn from_args(a: &crate::queue_args::QueueArgs) -> Config {
        use crate::queue_args::Overflow;
        Config {
            max_length: a.max_length,
            max_length_bytes: a.max_length_bytes,
            reject_publish: a.overflow == Overflow::RejectPublish,
            delivery_limit: if a.delivery_limit_off {
                None
            } else {
                Some(a.delivery_limit.unwrap_or(DEFAULT_DELIVERY_LIMIT))
            },
            message_ttl: a.message_ttl,
            expires: a.expires,
            single_active_consumer: a.single_active_consumer,
            dead_letter: a.dead_letter_exchange.is_some(),
            consumer_timeout_ms: a.consumer_timeout.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            dead_letter_at_least_once: a.dead_letter_at_least_once,
        }
    }
}

/// What a replica applies, in log order.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// A message published to the queue (its body is the entry's).
    Enqueue {
        /// The publisher, when it wants a confirm.
        publish: Option<Publish>,
        /// What the queue must know of the message.
        header: Header,
    },
    /// `basic.consume` (or a changed prefetch or priority for an existing consumer).
    Checkout {
        /// Who.
        consumer: ConsumerId,
        /// Unacked messages it may hold; 0 is no limit.
        prefetch: u32,
        /// `x-priority`.
        priority: i64,
    },
    /// `basic.cancel`: no more deliveries; unacked ones may still be settled.
    Cancel {
        /// Who.
        consumer: ConsumerId,
    },
    /// Acknowledged: the messages are done.
    Settle {
        /// Whose deliveries.
        consumer: ConsumerId,
        /// Which.
        ids: Vec<u64>,
    },
    /// Requeued by `basic.reject`, `basic.nack` or `basic.recover`.
    Return {
        /// Whose deliveries.
        consumer: ConsumerId,
        /// Which.
        ids: Vec<u64>,
        /// Whether it counts as a failed delivery towards `x-delivery-limit` (RabbitMQ 4.3:
        /// `basic.reject` does, `basic.nack` does not).
        failed: bool,
        /// Held out of the queue this long first (a retry policy's delay). The leader works
        /// it out and proposes it, so every replica holds the message equally long whatever
        /// the policy (a plugin's included).
        delay_ms: Option<u64>,
    },
    /// Rejected without requeue: dead-lettered.
    Discard {
        /// Whose deliveries.
        consumer: ConsumerId,
        /// Which.
        ids: Vec<u64>,
    },
    /// `basic.get`.
    Dequeue {
        /// The channel's get side: its connection and channel, the empty tag.
        consumer: ConsumerId,
        /// `no-ack`: settled as it is taken.
        settle: bool,
    },
    /// A connection ended: its consumers go, their unacked messages return as failed
    /// deliveries, its publishers are forgotten.
    Down {
        /// The connection.
        owner: Owner,
    },
    /// Consumers of one channel went without settling (the channel closed, or `tag`'s
    /// consumer timed out; the empty tag is the channel's `basic.get`): they go, and their
    /// unacked messages return as failed deliveries, all in one step, so neither another
    /// consumer of the channel nor a single active consumer's successor takes one first.
    Lost {
        /// The channel's connection.
        owner: Owner,
        /// The channel.
        channel: u16,
        /// Only this consumer of it, when given.
        tag: Option<String>,
    },
    /// The failure detector declared a node down: its consumers are suspected, not gone
    /// (it may be a partition): nothing more is delivered to them, and their unacked
    /// messages stay theirs until [`Command::NodeUp`] or [`Command::NodeRemoved`], as
    /// `rabbit_fifo` does, so a healed partition does not deliver everything twice.
    NodeDown {
        /// The node.
        node: u64,
    },
    /// A node declared down is back: its suspected consumers receive again.
    NodeUp {
        /// The node.
        node: u64,
    },
    /// A node left the cluster (or stayed down past the cluster's limit): [`Command::Down`]
    /// for each of its connections.
    NodeRemoved {
        /// The node.
        node: u64,
    },
    /// `queue.purge`: ready messages go (not dead-lettered); unacked ones stay.
    Purge,
    /// At-least-once dead-lettering: these messages (by index) were published to the
    /// dead-letter exchange and confirmed; the queue lets them go.
    DeadLettered {
        /// Their indexes.
        indexes: Vec<u64>,
    },
    /// Time passed: the leader proposes one when an [`Effect::Timer`] it was given fires.
    Tick,
    /// Arguments or policy changed.
    Configure(Config),
}

/// What one command answers its proposer.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// Done.
    Ok,
    /// The message is in the queue (or was, when this repeats an enqueue applied before).
    Enqueued,
    /// The queue is full and refuses it (`x-overflow: reject-publish`): nacked.
    Rejected,
    /// `basic.get`'s answer, with the ready messages left.
    Dequeued {
        /// The message, if one was ready.
        delivery: Option<Delivery>,
        /// Ready messages after it.
        remaining: u64,
    },
    /// `queue.purge`'s count.
    Purged(u64),
    /// The command named a consumer the queue does not have.
    NoConsumer,
    /// An enqueue past a gap in its publisher's sequence: propose the missing ones first.
    OutOfSequence {
        /// The sequence number the queue expects next from this publisher.
        expected: u64,
    },
    /// `basic.get` on a queue with a single active consumer, which RabbitMQ refuses too.
    Unsupported(&'static str),
}

/// A message handed to a consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    /// Its id among the consumer's deliveries (0 for a settled `basic.get`: nothing to
    /// settle).
    pub id: u64,
    /// The message.
    pub msg: MsgRef,
    /// Whether it was delivered before.
    pub redelivered: bool,
}

/// What the leader does after applying a command.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Send these messages to the consumer, in this order.
    Deliver {
        /// To whom.
        consumer: ConsumerId,
        /// What.
        deliveries: Vec<Delivery>,
    },
    /// These messages died (expired, over a limit, rejected, past the delivery limit):
    /// publish them to the dead-letter exchange when the queue has one (at most once: they
    /// have left the queue), else drop them. Reported either way, so the holder of their
    /// bodies lets them go.
    DeadLetter {
        /// Why.
        reason: Reason,
        /// Which, oldest first.
        msgs: Vec<MsgRef>,
    },
    /// Propose a [`Command::Tick`] at this time (a TTL or `x-expires` deadline); replaces
    /// the timer asked for before.
    Timer {
        /// When, in `Meta::time_ms`.
        at_ms: u64,
    },
    /// `x-expires` passed with the queue unused: delete it.
    Expired,
    /// A consumer's delivery waited longer than `x-consumer-timeout`: the consumer is gone
    /// and its messages are back; close its channel (RabbitMQ: 406, delivery acknowledgement
    /// timed out).
    ConsumerTimedOut {
        /// Whose.
        consumer: ConsumerId,
    },
}

/// Counters for metrics, replicated like the rest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Messages enqueued.
    pub enqueued: u64,
    /// Publishes refused by `reject-publish`.
    pub rejected: u64,
    /// Enqueues answered again without enqueuing (proposed twice).
    pub duplicates: u64,
    /// Deliveries to consumers and `basic.get`.
    pub delivered: u64,
    /// Messages settled.
    pub settled: u64,
    /// Messages returned to the queue.
    pub returned: u64,
    /// Messages dead-lettered (or dropped, without a dead-letter exchange) by reason.
    pub dead_lettered: [u64; 4],
    /// At-least-once dead letters confirmed by the dead-letter exchange (and let go).
    pub dead_letters_confirmed: u64,
}

/// Counts one more; a counter read from a hostile snapshot cannot make it panic.
fn bump(counter: &mut u64) {
    *counter = counter.saturating_add(1);
}

/// A publisher's enqueues as the queue saw them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Enqueuer {
    /// The highest sequence number applied.
    last: u64,
    /// Sequence numbers at or below `last` that were refused, not yet known answered.
    rejected: BTreeSet<u64>,
    /// Refusals below this were forgotten ([`MAX_REMEMBERED_REFUSALS`]).
    forgotten_below: u64,
}

/// One quorum queue's replicated state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuorumQueue {
    config: Config,
    /// Ready messages by priority.
    lanes: BTreeMap<u8, Lane<MsgRef>>,
    ready: u64,
    ready_bytes: u64,
    consumers: Consumers,
    /// Returned messages held out until their delay ends: (release time, index).
    #[serde(with = "pairs")]
    delayed: BTreeMap<(u64, u64), MsgRef>,
    /// At-least-once dead letters not yet confirmed by the dead-letter exchange, by index.
    #[serde(with = "pairs")]
    dead: BTreeMap<u64, (Reason, MsgRef)>,
    #[serde(with = "pairs")]
    enqueuers: BTreeMap<PublisherId, Enqueuer>,
    /// The last declare, consume, cancel or get (for `x-expires`).
    last_used_ms: u64,
    /// The deadline last given in an [`Effect::Timer`].
    armed: Option<u64>,
    stats: Stats,
}

/// Effects gathered during one apply, one delivery list per consumer.
#[derive(Default)]
struct Gathered {
    deliveries: Vec<(ConsumerId, Vec<Delivery>)>,
    dead: Vec<(Reason, Vec<MsgRef>)>,
    timer: Option<u64>,
    expired: bool,
    timed_out: Vec<ConsumerId>,
}

impl Gathered {
    fn deliver(&mut self, consumer: &ConsumerId, d: Delivery) {
        match self.deliveries.iter_mut().find(|(c, _)| c == consumer) {
            Some((_, list)) => list.push(d),
            None => self.deliveries.push((consumer.clone(), vec![d])),
        }
    }

    fn dead_letter(&mut self, reason: Reason, m: MsgRef) {
        match self.dead.iter_mut().find(|(r, _)| *r == reason) {
            Some((_, list)) => list.push(m),
            None => self.dead.push((reason, vec![m])),
        }
    }

    fn finish(self) -> Vec<Effect> {
        let mut out: Vec<Effect> = self
            .deliveries
            .into_iter()
            .map(|(consumer, deliveries)| Effect::Deliver { consumer, deliveries })
            .collect();
        out.extend(self.dead.into_iter().map(|(reason, msgs)| Effect::DeadLetter { reason, msgs }));
        out.extend(self.timer.map(|at_ms| Effect::Timer { at_ms }));
        if self.expired {
            out.push(Effect::Expired);
        }
        out.extend(self.timed_out.into_iter().map(|consumer| Effect::ConsumerTimedOut { consumer }));
        out
    }
}

impl QuorumQueue {
    /// A new, empty queue, declared at `now_ms`.
    pub fn new(config: Config, now_ms: u64) -> Self {
        QuorumQueue {
            config,
            lanes: BTreeMap::new(),
            ready: 0,
            ready_bytes: 0,
            consumers: Consumers::default(),
            delayed: BTreeMap::new(),
            dead: BTreeMap::new(),
            enqueuers: BTreeMap::new(),
            last_used_ms: now_ms,
            armed: None,
            stats: Stats::default(),
        }
    }

    /// Applies one committed command: the only door into the queue's state.
    pub fn apply(&mut self, meta: Meta, command: Command) -> (Reply, Vec<Effect>) {
        let mut fx = Gathered::default();
        let now = meta.time_ms;
        self.release_delayed(now);
        self.time_out_consumers(now, &mut fx);
        self.expire(now, &mut fx);
        let sac = self.config.single_active_consumer;
        let mut expired_on_arrival = false;
        let reply = match command {
            Command::Enqueue { publish, header } => {
                // A TTL of 0 (the message's or the queue's): now or never.
                let ttl = header.ttl_ms.into_iter().chain(self.config.message_ttl).min();
                expired_on_arrival = ttl == Some(0);
                self.enqueue(meta, publish, header)
            }
            // The empty tag is basic.get's, and only basic.get's.
            Command::Checkout { consumer, .. } | Command::Dequeue { consumer, .. }
                if consumer.tag.is_empty() != matches!(command, Command::Dequeue { .. }) =>
            {
                Reply::NoConsumer
            }
            Command::Checkout { consumer, prefetch, priority } => {
                self.last_used_ms = now;
                self.consumers.checkout(consumer, prefetch, priority, sac);
                Reply::Ok
            }
            Command::Cancel { consumer } => {
                self.last_used_ms = now;
                if self.consumers.cancel(&consumer, sac) { Reply::Ok } else { Reply::NoConsumer }
            }
            // A consumer the queue no longer has (timed out, its node removed) is told so: its
            // channel learns it from its next settle, even if the effect that said so was lost.
            Command::Settle { consumer, .. }
            | Command::Return { consumer, .. }
            | Command::Discard { consumer, .. }
                if self.consumers.get(&consumer).is_none() =>
            {
                Reply::NoConsumer
            }
            Command::Settle { consumer, ids } => {
                for id in ids {
                    if self.consumers.take(&consumer, id).is_some() {
                        bump(&mut self.stats.settled);
                    }
                }
                Reply::Ok
            }
            Command::Return { consumer, ids, failed, delay_ms } => {
                for id in ids {
                    if let Some(m) = self.consumers.take(&consumer, id) {
                        self.give_back(m, failed, delay_ms.map(|d| now.saturating_add(d)), &mut fx);
                    }
                }
                Reply::Ok
            }
            Command::Discard { consumer, ids } => {
                for id in ids {
                    if let Some(m) = self.consumers.take(&consumer, id) {
                        self.dead_letter(Reason::Rejected, m, &mut fx);
                    }
                }
                Reply::Ok
            }
            Command::Dequeue { .. } if sac => {
                Reply::Unsupported("basic.get on a single active consumer queue")
            }
            Command::Dequeue { consumer, settle } => self.dequeue(meta, consumer, settle, &mut fx),
            Command::Down { owner } => {
                self.down(|id| id.owner == owner, now, &mut fx);
                self.enqueuers.retain(|p, _| p.owner != owner);
                Reply::Ok
            }
            Command::Lost { owner, channel, tag } => {
                let gone = |id: &ConsumerId| {
                    id.owner == owner && id.channel == channel && tag.as_ref().is_none_or(|t| *t == id.tag)
                };
                self.down(gone, now, &mut fx);
                Reply::Ok
            }
            Command::NodeDown { node } => {
                if sac {
                    // The single active consumer's messages come back before another takes
                    // over, so the queue's order holds (`rabbit_fifo` returns them all).
                    for id in self.consumers.active_on(node) {
                        for m in self.consumers.take_all(&id) {
                            self.give_back(m, false, None, &mut fx);
                        }
                    }
                }
                self.consumers.suspect(node, true, sac);
                Reply::Ok
            }
            Command::NodeUp { node } => {
                self.consumers.suspect(node, false, sac);
                Reply::Ok
            }
            Command::NodeRemoved { node } => {
                self.down(|id| id.owner.node == node, now, &mut fx);
                self.enqueuers.retain(|p, _| p.owner.node != node);
                Reply::Ok
            }
            Command::Purge => {
                let n = self.ready;
                self.lanes.clear();
                self.ready = 0;
                self.ready_bytes = 0;
                Reply::Purged(n)
            }
            Command::DeadLettered { indexes } => {
                for index in indexes {
                    if self.dead.remove(&index).is_some() {
                        bump(&mut self.stats.dead_letters_confirmed);
                    }
                }
                Reply::Ok
            }
            Command::Tick => {
                // Asked again at every tick past the deadline: a leader that died before
                // deleting the queue leaves the next one to ask.
                if self.unused_deadline().is_some_and(|at| now >= at) {
                    fx.expired = true;
                }
                Reply::Ok
            }
            Command::Configure(config) => {
                // A policy cannot make a queue single-active-consumer or undo it (an argument
                // fixed at declare, as in RabbitMQ): consumers already waiting or active keep
                // their places.
                self.config = Config { single_active_consumer: sac, ..config };
                self.last_used_ms = now;
                // Dead letters kept for a confirm that no longer matters (at-least-once turned
                // off) are let go, as `rabbit_fifo_dlx` cleans up: they were handed out already.
                if !self.at_least_once() {
                    self.dead.clear();
                }
                Reply::Ok
            }
        };
        self.deliver(meta, &mut fx);
        // The length limit first, then a TTL-0 message no one took: the order a classic
        // queue goes in (a full queue drops its head for the new message, which then expires).
        if !self.config.reject_publish {
            self.drop_over_limit(&mut fx);
        }
        self.expire_unwanted(meta, expired_on_arrival, &mut fx);
        self.expire(now, &mut fx);
        self.arm(&mut fx);
        (reply, fx.finish())
    }

    /// A message this entry enqueued already expired (a TTL of 0) and no consumer took it:
    /// it goes now, wherever it stands, as RabbitMQ expires such a message at once rather
    /// than at the head ("now or never").
    fn expire_unwanted(&mut self, meta: Meta, expired_on_arrival: bool, fx: &mut Gathered) {
        if !expired_on_arrival {
            return;
        }
        // Its lane is its priority's; a consumer may have taken it already.
        let taken = self.lanes.values_mut().find_map(|l| l.take(meta.index));
        if let Some(m) = taken {
            self.lanes.retain(|_, l| !l.is_empty());
            self.took(&m);
            self.dead_letter(Reason::Expired, m, fx);
        }
    }

    fn enqueue(&mut self, meta: Meta, publish: Option<Publish>, header: Header) -> Reply {
        // Whether this publish is tracked for repeats: a publisher's first enqueue is 1. A
        // later one from a publisher the queue does not know (its first was lost, or its
        // connection was declared down) is refused as out of sequence: its proposer nacks
        // what it has in flight and goes on as a new incarnation. Unconfirmed publishes of
        // a connection declared down are not owed a place, as in RabbitMQ.
        let mut tracked = None;
        if let Some(p) = &publish {
            match self.enqueuers.get_mut(&p.publisher) {
                Some(e) => {
                    e.rejected = e.rejected.split_off(&p.oldest_unanswered);
                    if p.seq <= e.last {
                        bump(&mut self.stats.duplicates);
                        let refused = e.rejected.contains(&p.seq) || p.seq < e.forgotten_below;
                        return if refused { Reply::Rejected } else { Reply::Enqueued };
                    }
                    if p.seq != e.last.saturating_add(1) {
                        return Reply::OutOfSequence { expected: e.last.saturating_add(1) };
                    }
                    tracked = Some(p.publisher);
                }
                None if p.seq == 1 => tracked = Some(p.publisher),
                None => return Reply::OutOfSequence { expected: 1 },
            }
        }
        let refused = self.config.reject_publish && self.would_overflow(header.size);
        if let (Some(id), Some(p)) = (tracked, publish) {
            let e = self.enqueuers.entry(id).or_default();
            e.last = p.seq;
            if refused {
                e.rejected.insert(p.seq);
                if e.rejected.len() > MAX_REMEMBERED_REFUSALS
                    && let Some(oldest) = e.rejected.pop_first()
                {
                    e.forgotten_below = e.forgotten_below.max(oldest.saturating_add(1));
                }
            }
        }
        if refused {
            bump(&mut self.stats.rejected);
            return Reply::Rejected;
        }
        let ttl = match (header.ttl_ms, self.config.message_ttl) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let delay = header.delay_ms.unwrap_or(0);
        let joins = meta.time_ms.saturating_add(delay);
        let msg = MsgRef {
            index: meta.index,
            size: header.size,
            priority: header.priority.min(PRIORITIES - 1),
            expires_ms: ttl.map(|t| joins.saturating_add(t)),
            delivery_count: header.delivery_count,
            acquired: header.delivery_count,
            delivered_ms: 0,
        };
        if delay > 0 {
            self.delayed.insert((joins, msg.index), msg);
        } else {
            self.push(msg);
        }
        bump(&mut self.stats.enqueued);
        Reply::Enqueued
    }

    fn dequeue(&mut self, meta: Meta, consumer: ConsumerId, settle: bool, fx: &mut Gathered) -> Reply {
        self.last_used_ms = meta.time_ms;
        let delivery = self.take_next(meta, fx).and_then(|(m, redelivered)| {
            bump(&mut self.stats.delivered);
            let id = if settle {
                bump(&mut self.stats.settled);
                0
            } else {
                // assign_pulled registers the consumer first, so it always gives an id; were
                // it not to, the message is kept rather than lost.
                let Some(id) = self.consumers.assign_pulled(consumer, m) else {
                    self.push(m);
                    return None;
                };
                id
            };
            Some(Delivery { id, msg: m, redelivered })
        });
        Reply::Dequeued { delivery, remaining: self.ready }
    }

    /// Hands ready messages to consumers with room, highest priority first.
    fn deliver(&mut self, meta: Meta, fx: &mut Gathered) {
        while self.consumers.next().is_some() {
            let Some((m, redelivered)) = self.take_next(meta, fx) else { return };
            match self.consumers.assign_next(m) {
                Ok((consumer, id)) => {
                    bump(&mut self.stats.delivered);
                    fx.deliver(consumer, Delivery { id, msg: m, redelivered });
                }
                Err(mut m) => {
                    m.acquired = m.acquired.saturating_sub(1);
                    self.push(m);
                    return;
                }
            }
        }
    }

    /// The next ready message to hand out, marked as delivered now, and whether it was
    /// delivered before; expired ones on the way are dead-lettered.
    fn take_next(&mut self, meta: Meta, fx: &mut Gathered) -> Option<(MsgRef, bool)> {
        loop {
            let mut m = self.pop()?;
            if self.is_expired(&m, meta) {
                self.dead_letter(Reason::Expired, m, fx);
                continue;
            }
            let redelivered = m.acquired > 0;
            m.acquired = m.acquired.saturating_add(1);
            m.delivered_ms = meta.time_ms;
            return Some((m, redelivered));
        }
    }

    /// Whether a message popped for delivery has expired. One enqueued by this very entry
    /// may still go to a waiting consumer: a TTL of 0 means "now or never", as in RabbitMQ.
    fn is_expired(&self, m: &MsgRef, meta: Meta) -> bool {
        m.index != meta.index && m.expires_ms.is_some_and(|at| at <= meta.time_ms)
    }

    /// Dead-letters expired messages at the head of each lane (RabbitMQ expires a message
    /// once it reaches the head, never from the middle).
    fn expire(&mut self, now: u64, fx: &mut Gathered) {
        let mut gone = Vec::new();
        for lane in self.lanes.values_mut() {
            while lane.head().is_some_and(|m| m.expires_ms.is_some_and(|at| at <= now)) {
                gone.extend(lane.pop());
            }
        }
        for m in gone {
            self.took(&m);
            self.dead_letter(Reason::Expired, m, fx);
        }
        self.lanes.retain(|_, l| !l.is_empty());
    }

    fn drop_over_limit(&mut self, fx: &mut Gathered) {
        while self.over_limit() {
            let Some(m) = self.pop() else { return };
            self.dead_letter(Reason::MaxLen, m, fx);
        }
    }

    fn down(&mut self, gone: impl Fn(&ConsumerId) -> bool, now: u64, fx: &mut Gathered) {
        let sac = self.config.single_active_consumer;
        for id in self.consumers.matching(&gone) {
            // Losing a consumer is a use, as a cancel is (for `x-expires`).
            self.last_used_ms = now;
            if let Some(c) = self.consumers.remove(&id, sac) {
                let held: Vec<MsgRef> = c.checked_out().map(|(_, m)| *m).collect();
                for m in held {
                    self.give_back(m, true, None, fx);
                }
            }
        }
    }

    /// Puts a returned message back in its place (at `until`, when a delay holds it out
    /// first), or dead-letters it past the delivery limit.
    fn give_back(&mut self, mut m: MsgRef, failed: bool, until: Option<u64>, fx: &mut Gathered) {
        bump(&mut self.stats.returned);
        if failed {
            m.delivery_count = m.delivery_count.saturating_add(1);
        }
        if self.config.delivery_limit.is_some_and(|limit| m.delivery_count > limit) {
            self.dead_letter(Reason::DeliveryLimit, m, fx);
        } else if let Some(at) = until {
            self.delayed.insert((at, m.index), m);
        } else {
            self.push(m);
        }
    }

    /// Delayed messages whose time came go back to their place among the ready ones.
    fn release_delayed(&mut self, now: u64) {
        while let Some(entry) = self.delayed.first_entry() {
            if entry.key().0 > now {
                return;
            }
            let m = entry.remove();
            self.push(m);
        }
    }

    /// `x-consumer-timeout`: a consumer whose oldest unsettled delivery waited too long is
    /// removed and its messages returned, as failed deliveries (its channel is closed).
    fn time_out_consumers(&mut self, now: u64, fx: &mut Gathered) {
        let Some(limit) = self.config.consumer_timeout_ms else { return };
        let sac = self.config.single_active_consumer;
        for id in self.consumers.oldest_before(now.saturating_sub(limit), limit <= now) {
            if let Some(c) = self.consumers.remove(&id, sac) {
                // Losing a consumer is a use of the queue, as a cancel is (for `x-expires`).
                self.last_used_ms = now;
                let held: Vec<MsgRef> = c.checked_out().map(|(_, m)| *m).collect();
                for m in held {
                    self.give_back(m, true, None, fx);
                }
                fx.timed_out.push(id);
            }
        }
    }

    fn dead_letter(&mut self, reason: Reason, m: MsgRef, fx: &mut Gathered) {
        bump(&mut self.stats.dead_lettered[reason as usize]);
        // Reported with or without a dead-letter exchange: the message has left the queue,
        // and whoever holds its body (the log, the leader's store) lets it go.
        fx.dead_letter(reason, m);
        if self.config.dead_letter && self.at_least_once() {
            self.dead.insert(m.index, (reason, m));
        }
    }

    /// Whether dead letters are kept until confirmed (RabbitMQ's condition for it):
    /// `x-dead-letter-strategy: at-least-once` with a dead-letter exchange and
    /// `x-overflow: reject-publish`.
    pub fn at_least_once(&self) -> bool {
        self.config.dead_letter_at_least_once && self.config.dead_letter && self.config.reject_publish
    }

    /// `x-expires`: when a queue without consumers, not declared, consumed from or read by
    /// `basic.get` since, asks to be deleted (at each [`Command::Tick`] from then on).
    fn unused_deadline(&self) -> Option<u64> {
        let after = self.config.expires?;
        (!self.consumers.any_listening()).then(|| self.last_used_ms.saturating_add(after))
    }

    /// The next time the queue must be ticked: the earliest TTL at a lane's head, or
    /// `x-expires`. A new leader arms its timer from this.
    pub fn next_deadline(&self) -> Option<u64> {
        let ttl = self.lanes.values().filter_map(|l| l.head().and_then(|m| m.expires_ms)).min();
        let delayed = self.delayed.keys().next().map(|(at, _)| *at);
        let timeout = self
            .config
            .consumer_timeout_ms
            .and_then(|limit| self.consumers.oldest_delivery().map(|at| at.saturating_add(limit)));
        [ttl, self.unused_deadline(), delayed, timeout].into_iter().flatten().min()
    }

    fn arm(&mut self, fx: &mut Gathered) {
        let next = self.next_deadline();
        if next != self.armed {
            self.armed = next;
            fx.timer = next;
        }
    }

    // Counters saturate rather than panic or wrap: a hostile size cannot stop a replica, and
    // `check` refuses a snapshot whose counters disagree with its messages.
    fn push(&mut self, m: MsgRef) {
        self.ready = self.ready.saturating_add(1);
        self.ready_bytes = self.ready_bytes.saturating_add(m.size);
        self.lanes.entry(m.priority).or_default().insert(m);
    }

    /// Takes the next ready message: the oldest of the highest priority.
    fn pop(&mut self) -> Option<MsgRef> {
        let mut lane = self.lanes.last_entry()?;
        let m = lane.get_mut().pop()?;
        if lane.get().is_empty() {
            lane.remove();
        }
        self.took(&m);
        Some(m)
    }

    fn took(&mut self, m: &MsgRef) {
        self.ready = self.ready.saturating_sub(1);
        self.ready_bytes = self.ready_bytes.saturating_sub(m.size);
    }

    /// Messages held out by a delay are still the queue's for its length limit, as in a
    /// classic queue.
    fn would_overflow(&self, size: u64) -> bool {
        // Kept dead letters count in bytes too: their bodies are still the queue's.
        let dead_bytes = || self.dead.values().fold(0u64, |n, (_, m)| n.saturating_add(m.size));
        self.config.max_length.is_some_and(|max| self.held() >= max)
            || self
                .config
                .max_length_bytes
                .is_some_and(|max| self.ready_bytes.saturating_add(dead_bytes()).saturating_add(size) > max)
    }

    fn over_limit(&self) -> bool {
        self.config.max_length.is_some_and(|max| self.ready > 0 && self.held() > max)
            || self.config.max_length_bytes.is_some_and(|max| self.ready_bytes > max)
    }

    /// Every unacked delivery, for a new leader to send again: the old one may have died
    /// between committing a delivery and sending it. The consumer's side drops ids it
    /// already has (they rise by one per consumer).
    pub fn resend(&self) -> Vec<Effect> {
        let mut by_reason: Vec<(Reason, Vec<MsgRef>)> = Vec::new();
        for (reason, m) in self.dead.values() {
            match by_reason.iter_mut().find(|(r, _)| r == reason) {
                Some((_, list)) => list.push(*m),
                None => by_reason.push((*reason, vec![*m])),
            }
        }
        let dead = by_reason.into_iter().map(|(reason, msgs)| Effect::DeadLetter { reason, msgs });
        self.consumers
            .iter()
            .filter(|(_, c)| c.status != Status::Pull)
            .filter_map(|(id, c)| {
                let deliveries: Vec<Delivery> = c
                    .checked_out()
                    .map(|(&id, m)| Delivery { id, msg: *m, redelivered: m.acquired > 1 })
                    .collect();
                (!deliveries.is_empty()).then(|| Effect::Deliver { consumer: id.clone(), deliveries })
            })
            .chain(dead)
            .collect()
    }

    /// Checks a state read from a snapshot before it is applied to: its counters agree with
    /// its messages, no message is in two places, priorities and delivery ids are in range.
    /// A snapshot comes from a peer or a disk; a replica does not take one blindly.
    pub fn check(&self) -> Result<(), String> {
        let mut seen = BTreeSet::new();
        let (mut ready, mut bytes) = (0u64, 0u64);
        for (&priority, lane) in &self.lanes {
            if priority >= PRIORITIES || lane.is_empty() {
                return Err(format!("lane {priority} is out of range or empty"));
            }
            for m in lane.iter() {
                if m.priority != priority || !seen.insert(m.index) {
                    return Err(format!("message {} is misplaced or held twice", m.index));
                }
                ready += 1;
                bytes = bytes.checked_add(m.size).ok_or("ready bytes overflow")?;
            }
            if !lane.is_ordered() {
                return Err(format!("lane {priority} is out of order"));
            }
        }
        if (ready, bytes) != (self.ready, self.ready_bytes) {
            return Err(format!(
                "counters say {} ready, {} bytes; the lanes hold {ready}, {bytes}",
                self.ready, self.ready_bytes
            ));
        }
        for m in self
            .consumers
            .checked_out()
            .chain(self.delayed.values())
            .chain(self.dead.values().map(|(_, m)| m))
        {
            if !seen.insert(m.index) {
                return Err(format!("message {} is held twice", m.index));
            }
        }
        if self.delayed.iter().any(|((_, index), m)| *index != m.index)
            || self.dead.iter().any(|(index, (_, m))| *index != m.index)
        {
            return Err("a message is filed under another index".into());
        }
        let held_elsewhere = self
            .consumers
            .checked_out()
            .chain(self.delayed.values())
            .chain(self.dead.values().map(|(_, m)| m));
        if held_elsewhere.into_iter().any(|m| m.priority >= PRIORITIES) {
            return Err("a message's priority is out of range".into());
        }
        if self.config.single_active_consumer
            && self.consumers.iter().filter(|(_, c)| c.status == Status::Active).count() > 1
        {
            return Err("more than one active consumer on a single-active-consumer queue".into());
        }
        self.consumers.check()
    }

    /// The log entries the queue still needs (its messages, ready and unacked): the log may
    /// drop every other entry once a snapshot holds this state.
    pub fn live_indexes(&self) -> BTreeSet<u64> {
        let ready = self.lanes.values().flat_map(Lane::iter).map(|m| m.index);
        let delayed = self.delayed.values().map(|m| m.index);
        let dead = self.dead.keys().copied();
        ready.chain(delayed).chain(dead).chain(self.consumers.checked_out().map(|m| m.index)).collect()
    }

    /// Ready messages.
    pub fn ready(&self) -> u64 {
        self.ready
    }

    /// Body octets of the ready messages.
    pub fn ready_bytes(&self) -> u64 {
        self.ready_bytes
    }

    /// Messages held out by a retry delay.
    pub fn delayed(&self) -> usize {
        self.delayed.len()
    }

    /// The messages held out, by index, with when each joins the queue.
    pub fn holds(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.delayed.keys().map(|&(at, index)| (index, at))
    }

    /// At-least-once dead letters waiting for the dead-letter exchange's confirm.
    pub fn dead_letters_pending(&self) -> usize {
        self.dead.len()
    }

    /// Messages that count towards `x-max-length`: ready, held out by a delay, and dead
    /// letters not yet confirmed.
    fn held(&self) -> u64 {
        self.ready + (self.delayed.len() + self.dead.len()) as u64
    }

    /// Messages delivered and not yet settled.
    pub fn unacked(&self) -> usize {
        self.consumers.checked_out().count()
    }

    /// The consumers.
    pub fn consumers(&self) -> &Consumers {
        &self.consumers
    }

    /// Its arguments and policy.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Its counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }
}
