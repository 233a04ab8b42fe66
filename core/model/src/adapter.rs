//! A session for a protocol other than AMQP (an adapter's: MQTT today): its operations go
//! through the same door as AMQP's ([`Broker::apply`]) on channels of one broker session,
//! and the broker's replies come back as answers to the operation that asked.
//!
//! Three channels keep failures apart, as a careful AMQP client would: topology on one (a
//! refused bind closes only it, and it is opened again), consuming and acks on another,
//! publishing with confirms on a third. Replies on a channel come in the order its
//! operations were applied (a durable declare's -ok waits for its sync), so each channel
//! keeps its operations waiting in order.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use warren_codec::{
    BasicConsume, BasicProperties, BasicPublish, BasicQos, ConfirmSelect, FieldTable, FieldValue, Method,
    QueueBind, QueueDeclare, QueueDelete, QueueUnbind,
};

use crate::broker::{Broker, ConnId, ConnectionInfo};
use crate::command::{Command, Publish};
use crate::error::AmqpError;
use crate::message::{Message, Outgoing};

/// What an adapter asks of the broker. Operations with an `id` are answered with
/// [`Answer::Done`] carrying it.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// Declare a queue; `Done` says whether it existed before.
    DeclareQueue {
        /// Answered with `Done`.
        id: u64,
        /// Its name.
        name: String,
        /// Survives restarts.
        durable: bool,
        /// This session's own.
        exclusive: bool,
        /// `x-expires`, milliseconds.
        expires_ms: Option<u64>,
    },
    /// Delete a queue (one that does not exist is no failure).
    DeleteQueue {
        /// Answered with `Done`.
        id: u64,
        /// Its name.
        name: String,
    },
    /// Bind a queue to an exchange.
    Bind {
        /// Answered with `Done`.
        id: u64,
        /// The queue.
        queue: String,
        /// The exchange.
        exchange: String,
        /// The binding key.
        key: String,
    },
    /// Remove a binding.
    Unbind {
        /// Answered with `Done`.
        id: u64,
        /// The queue.
        queue: String,
        /// The exchange.
        exchange: String,
        /// The binding key.
        key: String,
    },
    /// Consume from a queue with acks, at most `prefetch` unacked.
    Consume {
        /// Answered with `Done`.
        id: u64,
        /// The queue.
        queue: String,
        /// Unacked deliveries at most (0: no limit).
        prefetch: u16,
    },
    /// Publish; with `confirm`, answered [`Answer::Confirmed`] or [`Answer::Refused`].
    Publish {
        /// The confirm id.
        confirm: Option<u64>,
        /// The exchange.
        exchange: String,
        /// The routing key.
        routing_key: String,
        /// Properties and headers (boxed: they are most of an operation's size).
        properties: Box<BasicProperties>,
        /// The body.
        body: Bytes,
    },
    /// Acknowledge a delivery.
    Ack {
        /// Its tag.
        delivery_tag: u64,
    },
}

/// What the broker answers an adapter.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// The operation with this id is done: `Ok(existed)` (for a declare, whether the queue
    /// was there), or the broker's refusal.
    Done {
        /// The operation's id.
        id: u64,
        /// Its outcome.
        result: Result<bool, AmqpError>,
    },
    /// The publish with this confirm id is the broker's.
    Confirmed(u64),
    /// The publish with this confirm id was refused, or may not have been taken (its
    /// channel failed before the broker said).
    Refused(u64),
    /// A message for the session's consumer.
    Delivery {
        /// The tag to ack it with.
        delivery_tag: u64,
        /// Delivered before.
        redelivered: bool,
        /// The message (exchange, routing key, properties, body).
        message: Arc<Message>,
    },
    /// The session's consumer is gone (its queue was deleted, or its channel failed): the
    /// adapter's session cannot go on receiving.
    ConsumerLost(String),
    /// The session is over (an operator closed it, a connection-level error, no channel
    /// left): every operation is refused from now on; end it with [`Bridge::close_session`].
    Closed(String),
}

/// What a reply on a channel answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Waiting {
    /// An operation's `Done`, with what the declare knew beforehand.
    Done { id: u64, existed: bool },
    /// A reply the bridge asked for itself (channel.open-ok, confirm.select-ok, qos-ok).
    Own,
}

/// Which channel does what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Topology,
    Consume,
    Publish,
}

const ROLES: [Role; 3] = [Role::Topology, Role::Consume, Role::Publish];

/// One channel of the bridge: its number, the reply it waits for, and what waits behind it.
///
/// One synchronous operation at a time per channel: the broker holds a durable change's -ok
/// until its sync while a later operation's -ok would go at once, so replies are matched to
/// operations only when no two are outstanding on a channel.
#[derive(Debug, Default)]
struct Lane {
    ch: u16,
    /// Replies owed for the bridge's own setup of the channel (open-ok, select-ok): never
    /// held by a sync, so they come before any operation's.
    own: u8,
    waiting: Option<Waiting>,
    backlog: VecDeque<(Command, Waiting)>,
}

/// An adapter's session in the broker.
#[derive(Debug)]
pub struct Bridge {
    conn: ConnId,
    lanes: [Lane; 3],
    next_channel: u16,
    /// Confirm sequence numbers on the publish channel, with the confirm id asked for.
    confirms: BTreeMap<u64, Option<u64>>,
    next_seq: u64,
    answers: Vec<Answer>,
    outgoing: Vec<Outgoing>,
    /// Deliveries wait for room: poll again once the last ones are written.
    more: bool,
    /// The consume channel failed: its delivery tags are void until a new consume.
    consumer_lost: bool,
    /// The session is over (the broker closed it, or the bridge could not go on).
    closed: Option<String>,
    /// The channel being failed: nothing more is applied on it meanwhile.
    failing: Option<Role>,
    /// Synchronous operations applied so far (a poll goes on while -oks let more go).
    applied: u64,
}

/// The consumer tag of an adapter session's consumer.
pub const CONSUMER_TAG: &str = "adapter";

impl Bridge {
    /// Opens a session for `info` (its user and vhost checked as an AMQP connection's are)
    /// with its channels.
    pub fn open(broker: &mut Broker, info: ConnectionInfo) -> Result<Bridge, AmqpError> {
        let conn = broker.open_session(info)?;
        let mut b = Bridge {
            conn,
            lanes: Default::default(),
            next_channel: 0,
            confirms: BTreeMap::new(),
            next_seq: 1,
            answers: Vec::new(),
            outgoing: Vec::new(),
            more: false,
            consumer_lost: false,
            closed: None,
            failing: None,
            applied: 0,
        };
        for role in ROLES {
            if let Err(e) = b.open_channel(broker, role) {
                broker.disconnect(conn);
                return Err(e);
            }
        }
        Ok(b)
    }

    /// The broker session's id.
    pub fn conn(&self) -> ConnId {
        self.conn
    }

    /// Why the session is over, once it is: every operation is refused from then on.
    pub fn closed(&self) -> Option<&str> {
        self.closed.as_deref()
    }

    fn lane(&mut self, role: Role) -> &mut Lane {
        &mut self.lanes[role as usize]
    }

    fn open_channel(&mut self, broker: &mut Broker, role: Role) -> Result<(), AmqpError> {
        // A failed channel's number is not reused: a late reply on it cannot be taken for
        // one on its successor.
        self.next_channel = self.next_channel.checked_add(1).ok_or_else(|| {
            AmqpError::new(warren_codec::reply_code::CHANNEL_ERROR, "no channel number left")
        })?;
        let ch = self.next_channel;
        let lane = self.lane(role);
        lane.ch = ch;
        lane.own = 0;
        lane.waiting = None;
        broker.apply(self.conn, ch, Command::OpenChannel)?;
        self.lane(role).own += 1;
        if role == Role::Publish {
            // In confirm mode before any publish can reach it.
            self.next_seq = 1;
            broker.apply(self.conn, ch, Command::SelectConfirms(ConfirmSelect { no_wait: false }))?;
            self.lane(role).own += 1;
        }
        Ok(())
    }

    /// Applies one operation.
    pub fn submit(&mut self, broker: &mut Broker, op: Op) {
        if let Some(why) = self.closed.clone() {
            return self.refuse(op, &why);
        }
        match op {
            Op::DeclareQueue { id, name, durable, exclusive, expires_ms } => {
                let existed = broker.queue_exists_for(self.conn, &name);
                let mut arguments = FieldTable::new();
                if let Some(ms) = expires_ms {
                    arguments
                        .insert("x-expires".into(), FieldValue::I64(i64::try_from(ms).unwrap_or(i64::MAX)));
                }
                // A queue that exists is taken as it is (checked passively): a session resumed
                // with other settings (its expiry) must not fail on AMQP's equivalence check.
                let m = QueueDeclare {
                    queue: name,
                    passive: existed,
                    durable,
                    exclusive,
                    arguments,
                    ..Default::default()
                };
                self.sync(broker, Role::Topology, Command::DeclareQueue(m), Waiting::Done { id, existed });
            }
            Op::DeleteQueue { id, name } => {
                let m = QueueDelete { queue: name, ..Default::default() };
                self.sync(
                    broker,
                    Role::Topology,
                    Command::DeleteQueue(m),
                    Waiting::Done { id, existed: false },
                );
            }
            Op::Bind { id, queue, exchange, key } => {
                let m = QueueBind { queue, exchange, routing_key: key, ..Default::default() };
                self.sync(
                    broker,
                    Role::Topology,
                    Command::BindQueue(m),
                    Waiting::Done { id, existed: false },
                );
            }
            Op::Unbind { id, queue, exchange, key } => {
                let m = QueueUnbind { queue, exchange, routing_key: key, ..Default::default() };
                self.sync(
                    broker,
                    Role::Topology,
                    Command::UnbindQueue(m),
                    Waiting::Done { id, existed: false },
                );
            }
            Op::Consume { id, queue, prefetch } => {
                self.consumer_lost = false;
                let qos = BasicQos { prefetch_count: prefetch, ..Default::default() };
                let consume = BasicConsume { queue, consumer_tag: CONSUMER_TAG.into(), ..Default::default() };
                self.sync(broker, Role::Consume, Command::Qos(qos), Waiting::Own);
                self.sync(
                    broker,
                    Role::Consume,
                    Command::Consume(consume),
                    Waiting::Done { id, existed: false },
                );
            }
            Op::Publish { confirm, exchange, routing_key, properties, body } => {
                let ch = self.lane(Role::Publish).ch;
                self.confirms.insert(self.next_seq, confirm);
                self.next_seq += 1;
                let method = BasicPublish { exchange, routing_key, ..Default::default() };
                let p = Publish { method, properties, body };
                if let Err(e) = broker.apply(self.conn, ch, Command::Publish(p)) {
                    self.failed(broker, Role::Publish, e, None);
                }
            }
            Op::Ack { delivery_tag } => {
                // A lost consumer's tags name nothing on its channel's successor.
                if self.consumer_lost {
                    return;
                }
                let ch = self.lane(Role::Consume).ch;
                if let Err(e) = broker.apply(self.conn, ch, Command::Ack { delivery_tag, multiple: false }) {
                    self.failed(broker, Role::Consume, e, None);
                }
            }
        }
    }

    /// The answer an operation gets once the session is over.
    fn refuse(&mut self, op: Op, why: &str) {
        let e = AmqpError::new(warren_codec::reply_code::CHANNEL_ERROR, why.to_string());
        match op {
            Op::DeclareQueue { id, .. }
            | Op::DeleteQueue { id, .. }
            | Op::Bind { id, .. }
            | Op::Unbind { id, .. }
            | Op::Consume { id, .. } => self.answers.push(Answer::Done { id, result: Err(e) }),
            Op::Publish { confirm, .. } => self.answers.extend(confirm.map(Answer::Refused)),
            Op::Ack { .. } => {}
        }
    }

    /// A synchronous operation on `role`'s channel: applied now if nothing is outstanding
    /// there, else after what is.
    fn sync(&mut self, broker: &mut Broker, role: Role, cmd: Command, w: Waiting) {
        self.lane(role).backlog.push_back((cmd, w));
        self.pump(broker, role);
    }

    /// Applies the next operations waiting on `role`'s channel, one outstanding at a time.
    fn pump(&mut self, broker: &mut Broker, role: Role) {
        // Nothing while the session waits for the cluster to apply a change it asked for:
        // what follows may need it (a consume of the queue being declared).
        while self.closed.is_none()
            && self.failing != Some(role)
            && self.lane(role).waiting.is_none()
            && !broker.awaits_answer(self.conn)
        {
            let Some((cmd, w)) = self.lane(role).backlog.pop_front() else { return };
            let ch = self.lane(role).ch;
            match broker.apply(self.conn, ch, cmd) {
                Ok(()) => {
                    self.lane(role).waiting = Some(w);
                    self.applied += 1;
                }
                Err(e) => {
                    let op = match w {
                        Waiting::Done { id, .. } => Some(id),
                        Waiting::Own => None,
                    };
                    self.failed(broker, role, e, op);
                }
            }
        }
    }

    /// A channel failed (for operation `op`, when one was refused as it was applied): the
    /// broker closes it; what waited on it is answered, and a fresh channel takes its role
    /// (the consumer's is not restarted: its loss is told). A connection-level error, or a
    /// channel that cannot be opened again, ends the session.
    fn failed(&mut self, broker: &mut Broker, role: Role, e: AmqpError, op: Option<u64>) {
        // What the broker already answered (a confirm, an -ok) is matched first: only what
        // is still outstanding fails with the channel.
        let outer = self.failing.replace(role);
        self.drain(broker);
        self.failing = outer;
        if let Some(id) = op {
            self.answers.push(Answer::Done { id, result: Err(e.clone()) });
        }
        if e.is_hard() {
            return self.close(&e.text);
        }
        let ch = self.lane(role).ch;
        broker.channel_error(self.conn, ch, &e);
        if let Some(Waiting::Done { id, .. }) = self.lane(role).waiting.take() {
            self.answers.push(Answer::Done { id, result: Err(e.clone()) });
        }
        match role {
            Role::Publish => {
                for (_, id) in std::mem::take(&mut self.confirms) {
                    self.answers.extend(id.map(Answer::Refused));
                }
            }
            Role::Consume => {
                self.consumer_lost = true;
                self.answers.push(Answer::ConsumerLost(e.text.clone()));
            }
            Role::Topology => {}
        }
        if let Err(e) = self.open_channel(broker, role) {
            return self.close(&e.text);
        }
        // What waited behind the failed operation goes on, on the new channel.
        self.pump(broker, role);
    }

    /// Ends the session: everything outstanding is answered as refused.
    fn close(&mut self, why: &str) {
        if self.closed.is_some() {
            return;
        }
        self.closed = Some(why.to_string());
        let e = AmqpError::new(warren_codec::reply_code::CHANNEL_ERROR, why.to_string());
        for role in ROLES {
            let lane = self.lane(role);
            let waiting = lane.waiting.take();
            let backlog: Vec<Waiting> = lane.backlog.drain(..).map(|(_, w)| w).collect();
            for w in waiting.into_iter().chain(backlog) {
                if let Waiting::Done { id, .. } = w {
                    self.answers.push(Answer::Done { id, result: Err(e.clone()) });
                }
            }
        }
        for (_, id) in std::mem::take(&mut self.confirms) {
            self.answers.extend(id.map(Answer::Refused));
        }
        self.answers.push(Answer::Closed(why.to_string()));
    }

    /// Whether deliveries wait for room: [`Bridge::poll`] again once the answers of the last
    /// one were written to the client (at most a bounded batch comes out per poll).
    pub fn more(&self) -> bool {
        self.more
    }

    /// The broker's replies and deliveries since the last call, as answers.
    pub fn poll(&mut self, broker: &mut Broker) -> Vec<Answer> {
        // Each -ok may let a waiting operation go, whose own -ok may be out at once; a poll
        // ends when none did (each round takes at least one from the finite backlog), not
        // when deliveries stop coming: those wait for the next poll (`more`).
        loop {
            let before = self.applied;
            self.drain(broker);
            // Lanes held while the session waited for the cluster go on once it answered.
            if !broker.awaits_answer(self.conn) {
                for role in ROLES {
                    self.pump(broker, role);
                }
            }
            if self.applied == before {
                break;
            }
        }
        for (ch, e) in broker.take_errors(self.conn) {
            if ch == 0 || e.is_hard() {
                self.close(&e.text);
            } else {
                self.failed_on(broker, ch, e);
            }
        }
        std::mem::take(&mut self.answers)
    }

    /// The broker failed channel `ch` on its own (not in answer to an operation applied just
    /// now); a channel no longer in use (one the bridge failed already) is let be.
    fn failed_on(&mut self, broker: &mut Broker, ch: u16, e: AmqpError) {
        if let Some(role) = ROLES.into_iter().find(|r| self.lanes[*r as usize].ch == ch) {
            self.failed(broker, role, e, None);
        }
    }

    /// Matches what the broker sent so far to what waits for it.
    fn drain(&mut self, broker: &mut Broker) {
        let mut out = std::mem::take(&mut self.outgoing);
        self.more = broker.take_outbound(self.conn, &mut out);
        for item in out.drain(..) {
            self.reply(broker, item);
        }
        self.outgoing = out;
    }

    fn reply(&mut self, broker: &mut Broker, item: Outgoing) {
        match item {
            Outgoing::Deliver { delivery_tag, redelivered, message, .. } => {
                self.answers.push(Answer::Delivery { delivery_tag, redelivered, message });
            }
            Outgoing::Content { .. } => {}
            Outgoing::Method { channel, method } => match method {
                Method::BasicAck(a) => self.settle(a.delivery_tag, a.multiple, true),
                Method::BasicNack(n) => self.settle(n.delivery_tag, n.multiple, false),
                Method::BasicCancel(_) => {
                    self.consumer_lost = true;
                    self.answers.push(Answer::ConsumerLost("the queue was deleted".into()));
                }
                Method::ChannelClose(c) => {
                    self.failed_on(broker, channel, AmqpError::new(c.reply_code, c.reply_text.clone()))
                }
                Method::ConnectionClose(c) => self.close(&c.reply_text),
                // Every other method is the -ok of the operation outstanding on its channel.
                _ => {
                    let Some(role) = ROLES.into_iter().find(|r| self.lanes[*r as usize].ch == channel) else {
                        return;
                    };
                    let lane = self.lane(role);
                    if lane.own > 0 {
                        lane.own -= 1;
                        return;
                    }
                    if let Some(Waiting::Done { id, existed }) = lane.waiting.take() {
                        self.answers.push(Answer::Done { id, result: Ok(existed) });
                    }
                    self.pump(broker, role);
                }
            },
        }
    }

    fn settle(&mut self, tag: u64, multiple: bool, ok: bool) {
        let done: Vec<u64> =
            if multiple { self.confirms.range(..=tag).map(|(s, _)| *s).collect() } else { vec![tag] };
        for seq in done {
            if let Some(Some(id)) = self.confirms.remove(&seq) {
                self.answers.push(if ok { Answer::Confirmed(id) } else { Answer::Refused(id) });
            }
        }
    }

    /// Ends the session: its consumer cancelled, unacked deliveries back in their queue,
    /// exclusive queues gone.
    pub fn close_session(self, broker: &mut Broker) {
        broker.disconnect(self.conn);
    }
}
