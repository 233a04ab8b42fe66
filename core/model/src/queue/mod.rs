//! A queue: its declaration, its ready messages in publish order, and its consumers.
//!
//! The classic queue is [`Queue`] here; [`quorum`] is the replicated kind, a state machine
//! that owns its consumers too. Both keep their ready messages in [`Lane`]s.

use std::time::Instant;

use std::sync::Arc;

use warren_codec::{FieldTable, FieldValue};

use crate::broker::ConnId;
use crate::deadletter::Reason;
use crate::error::{AmqpError, precondition};
use crate::message::QueuedMessage;
use crate::queue_args::QueueArgs;

mod lane;
pub mod quorum;

pub use lane::{Lane, Ordered};

/// Identifies one consumer: the connection, channel and tag it was registered under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerKey {
    /// The owning connection.
    pub conn: ConnId,
    /// The owning channel.
    pub channel: u16,
    /// The consumer tag.
    pub tag: Arc<str>,
    /// `x-priority`: higher-priority consumers get messages first while they have room.
    pub priority: i64,
}

/// The flags a queue was declared with.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueSpec {
    /// Survives a restart (once storage lands).
    pub durable: bool,
    /// Deleted when its last consumer goes.
    pub auto_delete: bool,
    /// Owned by one connection and deleted with it.
    pub exclusive_owner: Option<ConnId>,
    /// Declare arguments.
    pub arguments: FieldTable,
}

/// A queue in a vhost.
#[derive(Debug)]
pub struct Queue {
    /// Unique per incarnation: a queue deleted and declared again under the same name is a
    /// different queue, and unacked messages of the old one must not land in the new one.
    pub id: u64,
    /// Its name, shared with each unacked delivery from it (no copy per delivery).
    pub name: std::sync::Arc<str>,
    /// The vhost it belongs to.
    pub vhost: crate::broker::VHostId,
    /// That vhost's name, for errors.
    pub vhost_name: std::sync::Arc<str>,
    /// On a cluster member, the node it lives on when that is another one: it holds no
    /// messages here, and what is routed to it is forwarded there.
    pub home: Option<std::sync::Arc<str>>,
    /// How it was declared.
    pub spec: QueueSpec,
    /// Its arguments, parsed.
    pub args: QueueArgs,
    /// Messages ready for delivery, one lane per priority (one lane without `x-max-priority`),
    /// each in publish order. Change them only through the methods below, which keep `count`
    /// and `ready_bytes` right.
    lanes: Vec<Lane<QueuedMessage>>,
    /// Ready messages in all lanes.
    count: usize,
    /// Body octets of the ready messages (for `x-max-length-bytes`).
    ready_bytes: u64,
    /// Last declare, get or consumer change (for `x-expires`).
    pub last_used: Instant,
    /// Dead-lettered messages by reason, for metrics.
    pub dead_lettered: [u64; 4],
    /// Messages held out of the queue by its retry policy.
    pub delayed: usize,
    /// Counters for metrics.
    pub stats: crate::stats::QueueStats,
    /// Consumers in round-robin order.
    pub consumers: Vec<ConsumerKey>,
    /// Where the next round-robin search starts.
    pub next_consumer: usize,
    /// Whether one consumer holds exclusive access.
    pub exclusive_consumer: bool,
    /// Whether it ever had a consumer; auto-delete applies only after the first.
    pub had_consumer: bool,
    next_seq: u64,
    /// A quorum queue's machine and bodies; `None` for a classic queue. A quorum queue's
    /// lanes stay empty: its messages, their order and their consumers' turns are the
    /// machine's (`consumers` above is kept for the broker's bookkeeping: cancels, counts).
    pub quorum: Option<Box<quorum::Local>>,
}

/// What happened to a message offered to a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// It is in the queue; `stored` when it was written to storage too.
    Accepted {
        /// Written to storage (a persistent message in a durable queue).
        stored: bool,
    },
    /// The queue is full and refuses new messages (`x-overflow` reject-publish*).
    Refused,
    /// There is no queue by that name (any more).
    NoQueue,
    /// The queue lives on another node: the message is forwarded there, and this forward's
    /// answer says whether it took it.
    Forwarded(u64),
}

impl Queue {
    /// A new, empty queue.
    pub fn new(id: u64, name: String, spec: QueueSpec, args: QueueArgs, now: Instant) -> Self {
        let lanes = (0..=args.max_priority.unwrap_or(0)).map(|_| Lane::default()).collect();
        Queue {
            args,
            ready_bytes: 0,
            last_used: now,
            dead_lettered: [0; 4],
            delayed: 0,
            stats: Default::default(),
            id,
            name: name.into(),
            vhost: crate::broker::VHostId::DEFAULT,
            vhost_name: std::sync::Arc::from("/"),
            home: None,
            spec,
            lanes,
            count: 0,
            consumers: Vec::new(),
            next_consumer: 0,
            exclusive_consumer: false,
            had_consumer: false,
            next_seq: 0,
            quorum: None,
        }
    }

    /// Checks a redeclare against the existing declaration, as RabbitMQ does.
    pub fn check_equivalent(
        &self,
        durable: bool,
        auto_delete: bool,
        args: &FieldTable,
    ) -> Result<(), AmqpError> {
        let current = (self.spec.durable, self.spec.auto_delete, &self.spec.arguments);
        check_equivalent(&self.vhost_name, &self.name, current, (durable, auto_delete, args))
    }

    /// A queue.delete's conditions: `if_unused` refuses a queue with consumers, `if_empty`
    /// one with ready messages (RabbitMQ's 406s).
    pub fn check_delete(&self, if_unused: bool, if_empty: bool) -> Result<(), AmqpError> {
        let (name, vhost) = (&self.name, &self.vhost_name);
        if if_unused && !self.consumers.is_empty() {
            return Err(precondition(format!("queue '{name}' in vhost '{vhost}' in use")));
        }
        if if_empty && !self.is_empty() {
            return Err(precondition(format!("queue '{name}' in vhost '{vhost}' is not empty")));
        }
        Ok(())
    }

    /// Refuses access from any connection but the owner of an exclusive queue.
    pub fn check_access(&self, conn: ConnId) -> Result<(), AmqpError> {
        match self.spec.exclusive_owner {
            Some(owner) if owner != conn => Err(self.locked()),
            _ => Ok(()),
        }
    }

    /// A redeclare by its owner must say `exclusive` as the declaration did (RabbitMQ's
    /// `check_exclusivity`): `exclusive` is the redeclare's flag.
    pub fn check_exclusivity(&self, conn: ConnId, exclusive: bool) -> Result<(), AmqpError> {
        if self.spec.exclusive_owner != exclusive.then_some(conn) {
            return Err(self.locked());
        }
        Ok(())
    }

    /// RabbitMQ's 405 for a queue this connection may not use as asked.
    fn locked(&self) -> AmqpError {
        AmqpError::new(
            warren_codec::reply_code::RESOURCE_LOCKED,
            format!(
                "cannot obtain exclusive access to locked queue '{}' in vhost '{}'. It could be \
                 originally declared on another connection or the exclusive property value does \
                 not match that of the original declaration.",
                self.name, self.vhost_name
            ),
        )
    }

    /// The seq the next message entering the queue gets; the caller builds the entry with it
    /// (and may store it) before [`Queue::push`].
    pub fn allocate_seq(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
    }

    /// Appends a newly routed message, its seq taken from [`Queue::allocate_seq`].
    pub fn push(&mut self, m: QueuedMessage) {
        self.ready_bytes += m.message.body.len() as u64;
        self.stats.published += 1;
        self.insert_ordered(m);
    }

    /// Puts a message back at its original position, marked redelivered.
    pub fn requeue(&mut self, mut m: QueuedMessage) {
        m.redelivered = true;
        self.ready_bytes += m.message.body.len() as u64;
        self.insert_ordered(m);
    }

    /// Puts a message recovered from storage back, as it was stored.
    pub fn restore(&mut self, m: QueuedMessage) {
        self.next_seq = self.next_seq.max(m.seq + 1);
        self.ready_bytes += m.message.body.len() as u64;
        self.insert_ordered(m);
    }

    /// Makes sure no new message gets a seq at or below one recovered into a delay.
    pub fn reserve_seq(&mut self, seq: u64) {
        self.next_seq = self.next_seq.max(seq + 1);
    }

    fn insert_ordered(&mut self, m: QueuedMessage) {
        let lane = self.lane_of(&m);
        if let Some(l) = self.lanes.get_mut(lane) {
            self.count += 1;
            l.insert(m);
        }
    }

    /// The lane of a message: its priority, as RabbitMQ reads it (none is 0, above the
    /// queue's maximum is the maximum).
    fn lane_of(&self, m: &QueuedMessage) -> usize {
        let top = self.lanes.len().saturating_sub(1);
        if top == 0 {
            return 0;
        }
        usize::from(m.message.properties.priority.unwrap_or(0)).min(top)
    }

    /// Takes the next message to deliver: the oldest of the highest priority.
    pub fn pop(&mut self) -> Option<QueuedMessage> {
        let m = match self.lanes.as_mut_slice() {
            // The common case, without a priority: no search.
            [lane] => lane.pop(),
            lanes => lanes.iter_mut().rev().find_map(Lane::pop),
        }?;
        self.took(&m);
        Some(m)
    }

    /// Takes the ready message with `seq`, wherever it is.
    pub fn take(&mut self, seq: u64) -> Option<QueuedMessage> {
        let m = self.lanes.iter_mut().find_map(|l| l.take(seq))?;
        self.took(&m);
        Some(m)
    }

    fn took(&mut self, m: &QueuedMessage) {
        self.count -= 1;
        self.ready_bytes -= m.message.body.len() as u64;
    }

    /// The highest seq given out so far (0 before the first): every message in the queue has
    /// one at or below it.
    pub fn last_seq(&self) -> u64 {
        self.next_seq.saturating_sub(1)
    }

    /// The seqs of up to `n` ready messages after `after` (from the oldest when `None`),
    /// oldest first whatever their priority: a cursor over the queue that costs the batch,
    /// not the queue.
    pub fn seqs_after(&self, after: Option<u64>, n: usize) -> Vec<u64> {
        if let [lane] = self.lanes.as_slice() {
            return lane.orders_after(after, n);
        }
        let mut out: Vec<u64> = self.lanes.iter().flat_map(|l| l.orders_after(after, n)).collect();
        out.sort_unstable();
        out.truncate(n);
        out
    }

    /// The messages it holds and no consumer does (a quorum queue's delayed and dead ones
    /// too), in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &QueuedMessage> {
        let quorum = self.quorum.iter().flat_map(|l| l.bodies());
        self.lanes.iter().flat_map(Lane::iter).chain(quorum)
    }

    /// [`Queue::iter`], to change what the store keeps of them (never their body's length,
    /// seq or priority).
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut QueuedMessage> {
        let quorum = self.quorum.iter_mut().flat_map(|l| l.bodies_mut());
        self.lanes.iter_mut().flat_map(Lane::iter_mut).chain(quorum)
    }

    /// The message delivered next.
    pub fn head(&self) -> Option<&QueuedMessage> {
        self.lanes.iter().rev().find_map(Lane::head)
    }

    /// Its type as RabbitMQ names it: `classic` or `quorum`.
    pub fn kind(&self) -> &'static str {
        if self.quorum.is_some() { "quorum" } else { "classic" }
    }

    /// Number of ready messages.
    pub fn len(&self) -> usize {
        match &self.quorum {
            Some(l) => usize::try_from(l.machine().ready()).unwrap_or(usize::MAX),
            None => self.count,
        }
    }

    /// Whether no message is ready.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Body octets of the ready messages.
    pub fn bytes(&self) -> u64 {
        match &self.quorum {
            Some(l) => l.machine().ready_bytes(),
            None => self.ready_bytes,
        }
    }

    /// Takes every ready message out.
    pub fn purge(&mut self) -> Vec<QueuedMessage> {
        self.ready_bytes = 0;
        self.count = 0;
        let mut all = Vec::new();
        for lane in &mut self.lanes {
            all.extend(lane.drain());
        }
        all
    }

    /// Whether one more message of `size` octets would exceed a length limit.
    pub fn would_overflow(&self, size: u64) -> bool {
        // Messages held out of the queue for a while (retry, x-delay) are still its own.
        self.args.max_length.is_some_and(|max| (self.len() + self.delayed) as u64 >= max)
            || self.args.max_length_bytes.is_some_and(|max| self.ready_bytes + size > max)
    }

    /// Whether the queue is over a length limit now.
    pub fn over_limit(&self) -> bool {
        self.args.max_length.is_some_and(|max| (self.len() + self.delayed) as u64 > max)
            || self.args.max_length_bytes.is_some_and(|max| self.ready_bytes > max)
    }

    /// Counts a dead-lettered message.
    pub fn count_dead_letter(&mut self, reason: Reason) {
        self.dead_lettered[reason as usize] += 1;
    }

    /// Removes one consumer; returns whether it was there.
    pub fn remove_consumer(&mut self, conn: ConnId, channel: u16, tag: &str) -> bool {
        let before = self.consumers.len();
        self.consumers.retain(|c| !(c.conn == conn && c.channel == channel && &*c.tag == tag));
        let removed = self.consumers.len() != before;
        if removed {
            self.exclusive_consumer = false;
            if self.next_consumer >= self.consumers.len() {
                self.next_consumer = 0;
            }
        }
        removed
    }

    /// Whether an auto-delete queue has lost its last consumer.
    pub fn should_auto_delete(&self) -> bool {
        self.spec.auto_delete && self.had_consumer && self.consumers.is_empty()
    }
}

impl Ordered for QueuedMessage {
    fn order(&self) -> u64 {
        self.seq
    }
}

/// RabbitMQ's equivalence check of a queue redeclare: `durable`, `auto_delete` and the
/// arguments the table marks, current against received. Shared by a queue and the cluster's
/// catalog, so both refuse with the same words.
pub(crate) fn check_equivalent(
    vhost: &str,
    name: &str,
    current: (bool, bool, &FieldTable),
    received: (bool, bool, &FieldTable),
) -> Result<(), AmqpError> {
    let flag = |what: &str, received: bool, current: bool| {
        precondition(format!(
            "inequivalent arg '{what}' for queue '{name}' in vhost '{vhost}': received '{received}' but current is '{current}'"
        ))
    };
    if received.0 != current.0 {
        return Err(flag("durable", received.0, current.0));
    }
    if received.1 != current.1 {
        return Err(flag("auto_delete", received.1, current.1));
    }
    for key in crate::queue_args::equivalence_args() {
        let (new, old) = (received.2.get(key), current.2.get(key));
        if new != old {
            return Err(precondition(format!(
                "inequivalent arg '{key}' for queue '{name}' in vhost '{vhost}': received {} but current is {}",
                describe(new),
                describe(old)
            )));
        }
    }
    Ok(())
}

fn describe(v: Option<&FieldValue>) -> String {
    match v {
        None => "none".into(),
        Some(FieldValue::LongString(s)) => format!("'{}'", String::from_utf8_lossy(s)),
        Some(v) => match v.as_i64() {
            Some(n) => format!("'{n}'"),
            None => format!("{v:?}"),
        },
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests need an Instant to start from
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;

    use super::*;
    use crate::message::Message;

    fn queue() -> Queue {
        let spec = QueueSpec {
            durable: false,
            auto_delete: false,
            exclusive_owner: None,
            arguments: FieldTable::new(),
        };
        Queue::new(1, "q".into(), spec, QueueArgs::default(), Instant::now())
    }

    fn msg(body: &'static str) -> Arc<Message> {
        Arc::new(Message {
            exchange: String::new(),
            routing_key: "q".into(),
            properties: Default::default(),
            body: Bytes::from_static(body.as_bytes()),
        })
    }

    #[test]
    fn requeued_messages_return_to_their_original_position() {
        let mut q = queue();
        for b in ["a", "b", "c", "d"] {
            let seq = q.allocate_seq();
            q.push(QueuedMessage::new(seq, msg(b), None, 0));
        }
        let a = q.pop();
        let b = q.pop();
        for m in [b, a].into_iter().flatten() {
            q.requeue(m);
        }
        assert_eq!(q.bytes(), 4);
        assert_eq!(q.head().map(|m| m.seq), Some(0));
        let out: Vec<_> =
            std::iter::from_fn(|| q.pop()).map(|m| (m.message.body.clone(), m.redelivered)).collect();
        let want = [("a", true), ("b", true), ("c", false), ("d", false)];
        assert_eq!(out, want.map(|(s, r)| (Bytes::from_static(s.as_bytes()), r)));
        assert_eq!(q.bytes(), 0);
    }

    #[test]
    fn redeclare_with_other_durability_is_refused() {
        let q = queue();
        let e = q.check_equivalent(true, false, &FieldTable::new());
        assert_eq!(e.map_err(|e| e.code), Err(406));
        assert!(q.check_equivalent(false, false, &FieldTable::new()).is_ok());
    }

    proptest::proptest! {
        /// Pushes, pops, returns and takes anywhere keep the queue in seq order, with its
        /// length and byte count right: checked against a sorted map.
        #[test]
        fn the_queue_is_always_in_seq_order(ops in proptest::collection::vec((0..4u8, 0..50usize), 1..300)) {
            let mut q = queue();
            let mut model: std::collections::BTreeMap<u64, ()> = Default::default();
            let mut out: Vec<QueuedMessage> = Vec::new();
            for (op, pick) in ops {
                match op {
                    0 => {
                        let seq = q.allocate_seq();
                        q.push(QueuedMessage::new(seq, msg("x"), None, 0));
                        model.insert(seq, ());
                    }
                    1 => {
                        let got = q.pop().map(|m| m.seq);
                        proptest::prop_assert_eq!(got, model.pop_first().map(|(s, _)| s));
                        if let Some(seq) = got {
                            out.push(QueuedMessage::new(seq, msg("x"), None, 0));
                        }
                    }
                    2 if !out.is_empty() => {
                        let m = out.remove(pick % out.len());
                        model.insert(m.seq, ());
                        q.requeue(m);
                    }
                    _ => {
                        if let Some(&seq) = model.keys().nth(pick % model.len().max(1)) {
                            proptest::prop_assert_eq!(q.take(seq).map(|m| m.seq), Some(seq));
                            model.remove(&seq);
                        }
                    }
                }
                proptest::prop_assert_eq!(q.len(), model.len());
                proptest::prop_assert_eq!(q.bytes(), model.len() as u64);
                proptest::prop_assert_eq!(q.head().map(|m| m.seq), model.keys().next().copied());
            }
        }
    }

    #[test]
    fn a_priority_queue_serves_the_highest_lane_first() {
        let spec = QueueSpec {
            durable: false,
            auto_delete: false,
            exclusive_owner: None,
            arguments: FieldTable::new(),
        };
        let args = QueueArgs { max_priority: Some(3), ..Default::default() };
        let mut q = Queue::new(1, "p".into(), spec, args, Instant::now());
        let with = |body: &'static str, p: Option<u8>| {
            let mut m = Message::clone(&msg(body));
            m.properties.priority = p;
            Arc::new(m)
        };
        for (b, p) in [("low", None), ("hi", Some(3)), ("mid", Some(2)), ("over", Some(9)), ("low2", Some(0))]
        {
            let seq = q.allocate_seq();
            q.push(QueuedMessage::new(seq, with(b, p), None, 0));
        }
        assert_eq!(q.len(), 5);
        assert_eq!(q.seqs_after(None, 10), [0, 1, 2, 3, 4], "the replay cursor is in publish order");
        assert_eq!(q.seqs_after(Some(1), 2), [2, 3]);
        let first = q.pop().expect("hi");
        assert_eq!(&first.message.body[..], b"hi");
        q.requeue(first);
        assert_eq!(q.head().map(|m| &m.message.body[..]), Some(&b"hi"[..]), "back in its place");
        let order: Vec<_> = std::iter::from_fn(|| q.pop()).map(|m| m.message.body.clone()).collect();
        assert_eq!(order, [&b"hi"[..], b"over", b"mid", b"low", b"low2"]);
        assert!(q.is_empty() && q.bytes() == 0);
    }
}
