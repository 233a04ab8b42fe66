//! One MQTT connection's rules, free of I/O: bytes and broker events in, bytes and broker
//! commands out, time as milliseconds passed in. The MQTT adapter component runs one per
//! client connection; the commands are the broker's protocol-neutral vocabulary (declare,
//! bind, consume, publish with a confirm, ack), so MQTT meets AMQP clients in the same
//! queues and exchanges, with RabbitMQ's mapping.
//!
//! What a session decides: the handshake (CONNECT first and once, the version, client
//! identifier rules, CONNACK), keep-alive (1.5 × the interval), QoS (0 and 1; QoS 2 as
//! RabbitMQ: granted as 1 for subscriptions, a 3.1.1 publish taken as QoS 1, a 5 one
//! refused with 0x9B), topic aliases from the client, the client's receive maximum and
//! packet-size limit, PUBACK only after the broker's confirm, packet identifiers for QoS 1
//! deliveries, SUBACK and UNSUBACK once the broker has answered, the will.
//!
//! What it leaves to the broker: who may log in, which client identifier is taken by whom
//! (takeover), retained messages and will delays (it says what to keep and when).

use std::collections::{BTreeMap, VecDeque};

use bytes::{Bytes, BytesMut};

use crate::decode;
use crate::encode;
use crate::error::{DecodeError, reason};
use crate::packet::*;
use crate::properties::Properties;
use crate::topic;

mod connect;
mod inbound;
mod outbound;
mod subscribe;
#[cfg(test)]
mod tests;

/// Limits and names a session works with; RabbitMQ's defaults where it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The largest packet accepted once logged in (RabbitMQ's
    /// `mqtt.max_packet_size_authenticated`: 16 MiB).
    pub max_packet_size: u32,
    /// The largest packet accepted before (`mqtt.max_packet_size_unauthenticated`: 64 KiB).
    pub max_packet_size_unauthenticated: u32,
    /// Milliseconds a connection may take to send CONNECT.
    pub connect_timeout_ms: u64,
    /// The exchange publishes go to and subscriptions bind to (`mqtt.exchange`).
    pub exchange: String,
    /// Unacked QoS 1 deliveries in flight to the client (`mqtt.prefetch`: 10); a client's
    /// smaller receive maximum wins.
    pub prefetch: u16,
    /// Unconfirmed QoS 1 publishes the client may have in flight (our receive maximum).
    pub receive_maximum: u16,
    /// Topic aliases the client may set up (`mqtt.topic_alias_maximum`: 16).
    pub topic_alias_maximum: u16,
    /// The longest session expiry granted, seconds (`mqtt.max_session_expiry_interval_seconds`:
    /// one day).
    pub max_session_expiry: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_packet_size: 16 * 1024 * 1024,
            max_packet_size_unauthenticated: 65_536,
            connect_timeout_ms: 10_000,
            exchange: "amq.topic".into(),
            prefetch: 10,
            receive_maximum: 1024,
            topic_alias_maximum: 16,
            max_session_expiry: 86_400,
        }
    }
}

/// A message as the broker carries it: AMQP's properties that MQTT fills.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Message {
    /// Delivery mode 2: published at QoS 1.
    pub persistent: bool,
    /// The QoS it was published with (header `x-mqtt-publish-qos`).
    pub qos: u8,
    /// MQTT 5 content type.
    pub content_type: Option<String>,
    /// MQTT 5 correlation data.
    pub correlation_id: Option<Bytes>,
    /// MQTT 5 response topic, as a routing key.
    pub reply_to: Option<String>,
    /// MQTT 5 message expiry, milliseconds (AMQP's `expiration`).
    pub expiration_ms: Option<u64>,
    /// MQTT 5 user properties, in order (AMQP headers).
    pub headers: Vec<(String, String)>,
    /// The payload.
    pub body: Bytes,
}

/// What the session asks of the broker. Commands with an `id` are answered with
/// [`Event::Done`] carrying it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Check the credentials and register the client identifier on this connection (a
    /// connection holding it already is told [`Event::TakenOver`]).
    Authenticate {
        /// Answered with `Done`.
        id: u64,
        /// The client identifier (assigned if the client sent none).
        client_id: String,
        /// User name.
        username: Option<String>,
        /// Password.
        password: Option<Bytes>,
    },
    /// Declare the session's queue; `Done` says whether it existed (session present).
    DeclareQueue {
        /// Answered with `Done`.
        id: u64,
        /// `mqtt-subscription-<client id>qos1`.
        name: String,
        /// A persistent session's queue survives restarts.
        durable: bool,
        /// A clean session's queue is this connection's.
        exclusive: bool,
        /// `x-expires`: the session expiry.
        expires_ms: Option<u64>,
    },
    /// Delete the session's queue (a clean start ending a persistent session).
    DeleteQueue {
        /// Answered with `Done`.
        id: u64,
        /// The queue.
        name: String,
    },
    /// Bind the session's queue.
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
    /// Consume from the session's queue.
    Consume {
        /// Answered with `Done`.
        id: u64,
        /// The queue.
        queue: String,
        /// Unacked deliveries at most.
        prefetch: u16,
    },
    /// Publish; with `confirm`, the broker answers [`Event::Confirmed`] or
    /// [`Event::Refused`] with it.
    Publish {
        /// Confirm id, for QoS 1.
        confirm: Option<u64>,
        /// The exchange.
        exchange: String,
        /// The routing key.
        routing_key: String,
        /// The message.
        message: Message,
    },
    /// Keep this message as the topic's retained one (an empty body clears it).
    Retain {
        /// The MQTT topic.
        topic: String,
        /// The message.
        message: Message,
    },
    /// Send the retained messages matching a new subscription as deliveries with
    /// `retained` set.
    SendRetained {
        /// The filter.
        filter: String,
        /// The QoS granted.
        qos: u8,
    },
    /// Publish the will after `delay_ms` unless a connection with the same client
    /// identifier comes back first.
    Will {
        /// The client identifier.
        client_id: String,
        /// The routing key.
        routing_key: String,
        /// The exchange.
        exchange: String,
        /// Whether it is retained too.
        retain: bool,
        /// The message.
        message: Message,
        /// MQTT 5 will delay, milliseconds.
        delay_ms: u64,
    },
    /// Acknowledge a delivery.
    Ack {
        /// Its tag.
        delivery_tag: u64,
    },
    /// The session is over: close the connection once the bytes before it are written.
    Close {
        /// Why, for the log.
        reason: String,
    },
}

/// A broker's refusal of a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The AMQP reply code (403, 404, 406…).
    pub code: u16,
    /// Why.
    pub text: String,
}

/// What the broker tells the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A command with this id is done: `existed` for a declare, whether the queue was
    /// there before.
    Done {
        /// The command's id.
        id: u64,
        /// Its outcome.
        result: Result<bool, Failure>,
    },
    /// A publish with this confirm id is the broker's.
    Confirmed(u64),
    /// A publish with this confirm id was refused (a full queue that rejects publishes).
    Refused(u64),
    /// A message for the session.
    Delivery {
        /// The tag to ack it with.
        delivery_tag: u64,
        /// Delivered before.
        redelivered: bool,
        /// A retained message sent for a new subscription.
        retained: bool,
        /// Its routing key.
        routing_key: String,
        /// The message.
        message: Message,
    },
    /// Another connection took this client identifier.
    TakenOver,
}

/// An empty input buffer with more capacity than this is let go.
const SHRINK_ABOVE: usize = 64 << 10;

/// Where a session stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for CONNECT.
    Connecting,
    /// CONNECT received; waiting for the broker's answers before CONNACK.
    LoggingIn,
    /// Serving.
    Connected,
    /// Over: nothing more is read or sent.
    Closed,
}

/// One MQTT connection.
#[derive(Debug)]
pub struct Session {
    config: Config,
    state: State,
    version: Version,
    /// Bytes received, not yet a whole packet.
    input: BytesMut,
    /// Bytes for the client.
    output: BytesMut,
    commands: VecDeque<Command>,
    next_id: u64,
    /// Milliseconds: the deadline for the next packet from the client.
    deadline: Option<u64>,
    /// The keep-alive in milliseconds, with the 1.5 factor; 0 for none.
    keep_alive_ms: u64,
    /// What CONNECT said, kept for the login and the will.
    connect: Option<connect::Login>,
    /// The client identifier in use, once known.
    client_id: String,
    /// The session's queue.
    queue: String,
    /// The client's limits.
    client_max_packet: u32,
    /// Aliases the client set up.
    aliases: BTreeMap<u16, String>,
    /// QoS 1 publishes from the client in the order they came, awaiting the broker's answer:
    /// confirm id → packet id and the answer once given (PUBACKs go out in this order).
    confirms: BTreeMap<u64, (u16, Option<bool>)>,
    /// QoS 0 deliveries written to `output`, acked once the host takes the bytes: the
    /// broker's prefetch then bounds what waits for a client that does not read.
    written: Vec<u64>,
    /// Broker events that came before CONNACK (deliveries to a resumed session), handled
    /// right after it.
    early: Vec<Event>,
    /// QoS 1 deliveries awaiting the client's PUBACK: packet id → delivery tag.
    inflight: BTreeMap<u16, u64>,
    next_packet_id: u16,
    /// Subscriptions: filter → its binding key and granted QoS.
    subscriptions: BTreeMap<String, (String, QoS)>,
    /// SUBSCRIBE and UNSUBSCRIBE packets waiting for the broker.
    pending: Vec<subscribe::Pending>,
    /// Whether the queue was declared and consumed on this connection.
    consuming: bool,
    /// Why the session closed, once it did.
    closed: Option<String>,
}

impl Session {
    /// A session for a connection accepted at `now_ms`; `assigned_id` is the client
    /// identifier given to a client that sends none (unique, from the host).
    pub fn new(config: Config, now_ms: u64, assigned_id: String) -> Self {
        let deadline = Some(now_ms.saturating_add(config.connect_timeout_ms));
        Session {
            config,
            state: State::Connecting,
            version: Version::V311,
            input: BytesMut::new(),
            output: BytesMut::new(),
            commands: VecDeque::new(),
            next_id: 0,
            deadline,
            keep_alive_ms: 0,
            connect: None,
            client_id: assigned_id,
            queue: String::new(),
            client_max_packet: u32::MAX,
            aliases: BTreeMap::new(),
            confirms: BTreeMap::new(),
            written: Vec::new(),
            early: Vec::new(),
            inflight: BTreeMap::new(),
            next_packet_id: 0,
            subscriptions: BTreeMap::new(),
            pending: Vec::new(),
            consuming: false,
            closed: None,
        }
    }

    /// Bytes read from the client, in any split.
    pub fn receive(&mut self, now_ms: u64, bytes: &[u8]) {
        if self.state == State::Closed {
            return;
        }
        self.input.extend_from_slice(bytes);
        self.process(now_ms);
        // A large packet's buffer is not kept once it is handled: an idle session holds
        // little, however large its past packets were.
        if self.input.is_empty() && self.input.capacity() > SHRINK_ABOVE {
            self.input = BytesMut::new();
        }
    }

    /// Octets received and held, not yet a whole packet (or held back by `wants_input`).
    pub fn buffered(&self) -> usize {
        self.input.len()
    }

    /// Ends the session for a reason of the host's (a resource bound): MQTT 5 is told
    /// `code` first, and the will goes, as for any end without DISCONNECT.
    pub fn abort(&mut self, code: u8, why: &str) {
        if self.state == State::Closed {
            return;
        }
        if self.version == Version::V5 && self.state == State::Connected {
            self.disconnect(code);
        }
        self.input.clear();
        self.end(why, true);
    }

    /// Whether the host should read more from the client: not while CONNACK is pending or a
    /// 3.1.1 client has as many QoS 1 publishes unconfirmed as the receive maximum (3.1.1
    /// has no way to tell it to wait; not reading is RabbitMQ's answer too).
    pub fn wants_input(&self) -> bool {
        match self.state {
            State::Connecting => true,
            State::LoggingIn | State::Closed => false,
            // A 5 client was told our receive maximum: going over it is its error (0x93).
            State::Connected => {
                self.version == Version::V5 || self.confirms.len() < usize::from(self.config.receive_maximum)
            }
        }
    }

    /// Decodes and handles the packets buffered, as far as the session may now.
    fn process(&mut self, now_ms: u64) {
        loop {
            if !self.wants_input() && self.state != State::Closed {
                // Held, not read: but a host that keeps pushing bytes is bounded.
                let cap = self.config.max_packet_size.saturating_mul(2) as usize;
                let cap = if self.state == State::LoggingIn {
                    self.config.max_packet_size_unauthenticated as usize
                } else {
                    cap
                };
                if self.input.len() > cap {
                    self.end("more bytes than may wait unread", true);
                }
                return;
            }
            if self.state == State::Closed {
                return;
            }
            let max = if self.state == State::Connected {
                self.config.max_packet_size
            } else {
                self.config.max_packet_size_unauthenticated
            };
            match decode(&mut self.input, self.version, max) {
                Ok(Some(p)) => {
                    if self.keep_alive_ms > 0 {
                        self.deadline = Some(now_ms.saturating_add(self.keep_alive_ms));
                    }
                    self.packet(p);
                    if self.state == State::Closed {
                        return;
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    self.refuse(&e);
                    return;
                }
            }
        }
    }

    /// The bytes to write to the client. The QoS 0 deliveries in them are acked now.
    pub fn take_output(&mut self) -> BytesMut {
        for delivery_tag in std::mem::take(&mut self.written) {
            self.commands.push_back(Command::Ack { delivery_tag });
        }
        std::mem::take(&mut self.output)
    }

    /// The next command for the broker.
    pub fn poll_command(&mut self) -> Option<Command> {
        self.commands.pop_front()
    }

    /// When [`Session::handle_timeout`] must be called.
    pub fn poll_timeout(&self) -> Option<u64> {
        if self.state == State::Closed { None } else { self.deadline }
    }

    /// The time passed: a client silent past its keep-alive (or a connection without
    /// CONNECT) is closed, its will published.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        // Input the session holds back (a login under way, a 3.1.1 client at the receive
        // maximum) is not the client's silence: its keep-alive waits too.
        let held = self.state == State::LoggingIn || (self.state == State::Connected && !self.wants_input());
        if held && self.keep_alive_ms > 0 && self.deadline.is_some_and(|d| now_ms >= d) {
            self.deadline = Some(now_ms.saturating_add(self.keep_alive_ms));
            return;
        }
        if self.deadline.is_some_and(|d| now_ms >= d) && self.state != State::Closed {
            let why =
                if self.state == State::Connecting { "no CONNECT in time" } else { "keep-alive timeout" };
            if self.version == Version::V5 && self.state == State::Connected {
                self.disconnect(reason::KEEP_ALIVE_TIMEOUT);
            }
            self.end(why, true);
        }
    }

    /// The connection closed under the session (the socket, not a DISCONNECT): the will goes.
    pub fn socket_closed(&mut self) {
        if self.state != State::Closed {
            self.end("the connection closed without DISCONNECT", true);
        }
    }

    /// Whether the session is over, and why.
    pub fn closed(&self) -> Option<&str> {
        self.closed.as_deref()
    }

    /// The protocol version the session speaks (3.1.1 until CONNECT says otherwise).
    pub fn version(&self) -> Version {
        self.version
    }

    /// The client identifier in use.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// An event from the broker at `now_ms`.
    pub fn handle(&mut self, now_ms: u64, event: Event) {
        if self.state == State::Closed {
            return;
        }
        match event {
            Event::Done { id, result } => {
                if self.state == State::LoggingIn {
                    self.login_step(now_ms, id, result);
                } else {
                    self.done(id, result);
                }
            }
            Event::Confirmed(id) => self.confirmed(now_ms, id, true),
            Event::Refused(id) => self.confirmed(now_ms, id, false),
            // Before CONNACK nothing goes to the client: held (the broker's prefetch bounds it).
            e @ Event::Delivery { .. } if self.state != State::Connected => self.early.push(e),
            Event::Delivery { delivery_tag, redelivered, retained, routing_key, message } => {
                self.deliver(delivery_tag, redelivered, retained, &routing_key, message)
            }
            Event::TakenOver if self.state != State::Connected => {
                self.end("another connection took the client identifier before CONNACK", false)
            }
            Event::TakenOver => {
                if self.version == Version::V5 {
                    self.disconnect(reason::SESSION_TAKEN_OVER);
                }
                // RabbitMQ publishes the will of a session taken over.
                self.end("another connection took the client identifier", true);
            }
        }
    }

    fn packet(&mut self, p: Packet) {
        match (self.state, p) {
            (State::Connecting, Packet::Connect(c)) => self.connect(*c),
            (State::Connecting, _) => self.end("the first packet is not CONNECT", false),
            (_, Packet::Connect(_)) => self.protocol_error("a second CONNECT"),
            // Not reached: input waits while logging in (`wants_input`).
            (State::LoggingIn, _) => {}
            (_, Packet::Publish(p)) => self.publish(p),
            (_, Packet::PubAck(a)) => self.puback(a.packet_id),
            (_, Packet::Subscribe(s)) => self.subscribe(s),
            (_, Packet::Unsubscribe(u)) => self.unsubscribe(u),
            (_, Packet::PingReq) => {
                self.send(&Packet::PingResp);
            }
            (_, Packet::Disconnect(d)) => {
                // Only a normal DISCONNECT (0x00) discards the will: MQTT 5's 0x04 asks for it,
                // and an error code (0x80 and up) is no normal end [MQTT-3.14.4-3].
                let will = self.version == Version::V5 && d.code != 0;
                self.end("the client disconnected", will);
            }
            (_, Packet::PubRec(_) | Packet::PubRel(_) | Packet::PubComp(_)) => {
                self.protocol_error("QoS 2 flow on a session that grants QoS 1 at most")
            }
            (_, Packet::Auth(_)) => self.protocol_error("AUTH without an authentication method"),
            (_, Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp) => {
                self.protocol_error("a packet only a server sends")
            }
        }
    }

    fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn command(&mut self, c: Command) {
        self.commands.push_back(c);
    }

    /// Writes a packet for the client; a PUBLISH larger than the client accepts is not sent
    /// (every other packet the server sends is small).
    fn send(&mut self, p: &Packet) -> bool {
        // Written in place (a refused packet writes nothing), taken back if too large: a
        // delivery's payload is copied once, into the output.
        let start = self.output.len();
        if encode(p, self.version, &mut self.output).is_err() {
            return false;
        }
        if matches!(p, Packet::Publish(_)) && self.output.len() - start > self.client_max_packet as usize {
            self.output.truncate(start);
            return false;
        }
        true
    }

    /// MQTT 5: tells the client why before closing.
    fn disconnect(&mut self, code: u8) {
        self.send(&Packet::Disconnect(Reasoned { code, properties: Properties::default() }));
    }

    fn protocol_error(&mut self, why: &'static str) {
        self.refuse(&DecodeError::Protocol(why));
    }

    /// Ends the session for bad bytes: MQTT 5 says why first (the will goes, as for any
    /// end without DISCONNECT).
    fn refuse(&mut self, e: &DecodeError) {
        match (e, self.state) {
            // [MQTT-3.1.2-2]: CONNACK 0x01, in 3.1.1's form, which every version reads.
            (DecodeError::UnsupportedVersion(_), State::Connecting) => {
                let nack = ConnAck {
                    session_present: false,
                    code: reason::V311_UNACCEPTABLE_PROTOCOL_VERSION,
                    properties: Properties::default(),
                };
                let mut buf = BytesMut::new();
                if encode(&Packet::ConnAck(nack), Version::V311, &mut buf).is_ok() {
                    self.output.extend_from_slice(&buf);
                }
            }
            // A second CONNECT, whatever its level, is a protocol error.
            (DecodeError::UnsupportedVersion(_), State::Connected) if self.version == Version::V5 => {
                self.disconnect(reason::PROTOCOL_ERROR)
            }
            (_, State::Connected) if self.version == Version::V5 => self.disconnect(e.reason_code()),
            _ => {}
        }
        let text = e.to_string();
        self.end(&text, true);
    }

    fn end(&mut self, why: &str, will: bool) {
        if self.state == State::Closed {
            return;
        }
        if will && self.state == State::Connected {
            self.publish_will();
        }
        self.state = State::Closed;
        self.closed = Some(why.to_string());
        self.command(Command::Close { reason: why.to_string() });
    }

    /// The topic's routing key, or `None` when it cannot be one (over 255 bytes).
    fn routing_key(topic: &str) -> Option<String> {
        topic::to_routing_key(topic).ok()
    }
}
