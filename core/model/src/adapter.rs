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
    /// The broker closed the session (an operator, a deleted vhost).
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

/// An adapter's session in the broker.
#[derive(Debug)]
pub struct Bridge {
    conn: ConnId,
    /// The channel of each role.
    channels: [u16; 3],
    next_channel: u16,
    waiting: BTreeMap<u16, VecDeque<Waiting>>,
    /// Confirm sequence numbers on the publish channel, with the confirm id asked for.
    confirms: BTreeMap<u64, Option<u64>>,
    next_seq: u64,
    answers: Vec<Answer>,
    outgoing: Vec<Outgoing>,
    /// Deliveries wait for room: poll again once the last ones are written.
    more: bool,
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
            channels: [0; 3],
            next_channel: 0,
            waiting: BTreeMap::new(),
            confirms: BTreeMap::new(),
            next_seq: 1,
            answers: Vec::new(),
            outgoing: Vec::new(),
            more: false,
        };
        for role in [Role::Topology, Role::Consume, Role::Publish] {
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

    fn channel(&self, role: Role) -> u16 {
        self.channels[role as usize]
    }

    fn open_channel(&mut self, broker: &mut Broker, role: Role) -> Result<(), AmqpError> {
        // A failed channel's number is not reused: a late reply on it cannot be taken for
        // one on its successor.
        self.next_channel = self.next_channel.checked_add(1).ok_or_else(|| {
            AmqpError::new(warren_codec::reply_code::CHANNEL_ERROR, "no channel number left")
        })?;
        let ch = self.next_channel;
        self.channels[role as usize] = ch;
        broker.apply(self.conn, ch, Command::OpenChannel)?;
        self.wait(ch, Waiting::Own);
        if role == Role::Publish {
            self.next_seq = 1;
            broker.apply(self.conn, ch, Command::SelectConfirms(ConfirmSelect { no_wait: false }))?;
            self.wait(ch, Waiting::Own);
        }
        Ok(())
    }

    fn wait(&mut self, ch: u16, w: Waiting) {
        self.waiting.entry(ch).or_default().push_back(w);
    }

    /// Applies one operation.
    pub fn submit(&mut self, broker: &mut Broker, op: Op) {
        match op {
            Op::DeclareQueue { id, name, durable, exclusive, expires_ms } => {
                let existed = broker.queue(&name).is_some();
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
                self.topology(broker, id, existed, Command::DeclareQueue(m));
            }
            Op::DeleteQueue { id, name } => {
                let m = QueueDelete { queue: name, ..Default::default() };
                self.topology(broker, id, false, Command::DeleteQueue(m));
            }
            Op::Bind { id, queue, exchange, key } => {
                let m = QueueBind { queue, exchange, routing_key: key, ..Default::default() };
                self.topology(broker, id, false, Command::BindQueue(m));
            }
            Op::Unbind { id, queue, exchange, key } => {
                let m = QueueUnbind { queue, exchange, routing_key: key, ..Default::default() };
                self.topology(broker, id, false, Command::UnbindQueue(m));
            }
            Op::Consume { id, queue, prefetch } => {
                let ch = self.channel(Role::Consume);
                let qos = BasicQos { prefetch_count: prefetch, ..Default::default() };
                let consume = BasicConsume { queue, consumer_tag: CONSUMER_TAG.into(), ..Default::default() };
                let r = broker.apply(self.conn, ch, Command::Qos(qos)).and_then(|()| {
                    self.wait(ch, Waiting::Own);
                    broker.apply(self.conn, ch, Command::Consume(consume))
                });
                match r {
                    Ok(()) => self.wait(ch, Waiting::Done { id, existed: false }),
                    Err(e) => self.failed(broker, Role::Consume, e, Some(id)),
                }
            }
            Op::Publish { confirm, exchange, routing_key, properties, body } => {
                let ch = self.channel(Role::Publish);
                self.confirms.insert(self.next_seq, confirm);
                self.next_seq += 1;
                let method = BasicPublish { exchange, routing_key, ..Default::default() };
                let p = Publish { method, properties, body };
                if let Err(e) = broker.apply(self.conn, ch, Command::Publish(p)) {
                    self.failed(broker, Role::Publish, e, None);
                }
            }
            Op::Ack { delivery_tag } => {
                let ch = self.channel(Role::Consume);
                if let Err(e) = broker.apply(self.conn, ch, Command::Ack { delivery_tag, multiple: false }) {
                    self.failed(broker, Role::Consume, e, None);
                }
            }
        }
    }

    fn topology(&mut self, broker: &mut Broker, id: u64, existed: bool, cmd: Command) {
        let ch = self.channel(Role::Topology);
        match broker.apply(self.conn, ch, cmd) {
            Ok(()) => self.wait(ch, Waiting::Done { id, existed }),
            Err(e) => self.failed(broker, Role::Topology, e, Some(id)),
        }
    }

    /// A channel failed (for operation `op`, when one was refused as it was applied): the
    /// broker closes it; what waited on it is answered, and a fresh channel takes its role
    /// (the consumer's is not restarted: its loss is told).
    fn failed(&mut self, broker: &mut Broker, role: Role, e: AmqpError, op: Option<u64>) {
        // Replies the broker already sent on the channel answer their operations first: only
        // what is still waiting after them fails with it.
        self.drain(broker);
        if let Some(id) = op {
            self.answers.push(Answer::Done { id, result: Err(e.clone()) });
        }
        let ch = self.channel(role);
        broker.channel_error(self.conn, ch, &e);
        for w in self.waiting.remove(&ch).unwrap_or_default() {
            if let Waiting::Done { id, .. } = w {
                self.answers.push(Answer::Done { id, result: Err(e.clone()) });
            }
        }
        match role {
            Role::Publish => {
                for (_, id) in std::mem::take(&mut self.confirms) {
                    self.answers.extend(id.map(Answer::Refused));
                }
            }
            Role::Consume => self.answers.push(Answer::ConsumerLost(e.text.clone())),
            Role::Topology => {}
        }
        if let Err(e) = self.open_channel(broker, role) {
            self.answers.push(Answer::Closed(e.text));
        }
    }

    /// Whether deliveries wait for room: [`Bridge::poll`] again once the answers of the last
    /// one were written to the client (at most a bounded batch comes out per poll).
    pub fn more(&self) -> bool {
        self.more
    }

    /// The broker's replies and deliveries since the last call, as answers.
    pub fn poll(&mut self, broker: &mut Broker) -> Vec<Answer> {
        self.drain(broker);
        for (ch, e) in broker.take_errors(self.conn) {
            if ch == 0 {
                self.answers.push(Answer::Closed(e.text));
            } else {
                self.failed_on(broker, ch, e);
            }
        }
        std::mem::take(&mut self.answers)
    }

    /// The broker failed channel `ch` on its own (not in answer to an operation applied just
    /// now); a channel no longer in use (one the bridge failed already) is let be.
    fn failed_on(&mut self, broker: &mut Broker, ch: u16, e: AmqpError) {
        let role = match self.channels.iter().position(|c| *c == ch) {
            Some(0) => Role::Topology,
            Some(1) => Role::Consume,
            Some(_) => Role::Publish,
            None => return,
        };
        self.failed(broker, role, e, None);
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
                    self.answers.push(Answer::ConsumerLost("the queue was deleted".into()))
                }
                Method::ChannelClose(c) => {
                    self.failed_on(broker, channel, AmqpError::new(c.reply_code, c.reply_text.clone()))
                }
                Method::ConnectionClose(c) => self.answers.push(Answer::Closed(c.reply_text)),
                // Every other method is the -ok of the oldest operation waiting on its channel.
                _ => {
                    let w = self.waiting.get_mut(&channel).and_then(VecDeque::pop_front);
                    if let Some(Waiting::Done { id, existed }) = w {
                        self.answers.push(Answer::Done { id, result: Ok(existed) });
                    }
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
    pub fn close(self, broker: &mut Broker) {
        broker.disconnect(self.conn);
    }
}
