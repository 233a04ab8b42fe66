//! MQTT 3.1.1 and 5 as a protocol adapter: each connection runs `warren-mqtt`'s session
//! (the protocol's rules, no I/O), whose commands become the broker's protocol-neutral ones,
//! with RabbitMQ's mapping: publishes go to `amq.topic`, topic levels `/` are routing-key
//! words `.`, `+` is `*`, and a session's subscriptions are bindings of its queue
//! `mqtt-subscription-<client id>qos1`.
//!
//! The config table (`[plugins.adapter.config]`) takes RabbitMQ's `mqtt.*` settings by their
//! short names: `exchange`, `prefetch`, `vhost` (the default vhost), `allow-anonymous`,
//! `default-user`, `default-pass`, `max-packet-size`, `max-packet-size-unauthenticated`,
//! `topic-alias-maximum`, `max-session-expiry`, `connect-timeout-ms`; and Warren's
//! `input-budget` (the octets all sessions of an instance may hold in unread packets) and
//! `partial-packet-timeout-ms` (how long a packet may stay incomplete).
//!
//! Sessions share an instance and its memory cap, so one client's large packets must not
//! cost the others. When the instance's held input goes over its budget, the session
//! holding the most ends (MQTT 5: 0x97 quota exceeded): at once if it is the one reading,
//! else at its next call, which its partial-packet deadline brings at the latest.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

use bytes::Bytes;
use warren_mqtt::session::{self, Config, Event as MqttEvent, Failure as MqttFailure};
use warren_mqtt::topic;
use warren_plugin_sdk::adapter::*;

/// The input this instance's sessions hold, shared by them.
#[derive(Default)]
struct Budget {
    /// Octets each session holds.
    held: BTreeMap<u64, usize>,
    total: usize,
    /// Sessions to end at their next call: they held the most when the budget was spent.
    doomed: BTreeSet<u64>,
    next_id: u64,
}

impl Budget {
    /// Records what session `id` holds now; over `limit`, returns whether `id` itself holds
    /// the most (and must end now), else dooms the one that does.
    fn update(&mut self, id: u64, held: usize, limit: usize) -> bool {
        let old = self.held.insert(id, held).unwrap_or(0);
        self.total = self.total - old + held;
        if self.total <= limit {
            return false;
        }
        match self.held.iter().max_by_key(|(_, n)| **n).map(|(k, _)| *k) {
            Some(top) if top == id => true,
            Some(top) => {
                self.doomed.insert(top);
                false
            }
            None => false,
        }
    }

    fn forget(&mut self, id: u64) {
        self.total -= self.held.remove(&id).unwrap_or(0);
        self.doomed.remove(&id);
    }
}

/// The adapter: the sessions' configuration.
struct Mqtt {
    config: Config,
    budget: Rc<RefCell<Budget>>,
    limit: usize,
    partial_timeout_ms: u64,
    /// The vhost of a login that names none (`mqtt.vhost`).
    vhost: String,
    /// Who a client that sends no user name logs in as (`mqtt.allow_anonymous` with
    /// `mqtt.default_user` and `mqtt.default_pass`), if anyone.
    anonymous: Option<(String, Vec<u8>)>,
}

/// The instance's budget for held input unless configured: half the default memory cap of
/// an adapter instance (512 MiB), the rest left for copies in flight and sessions.
const DEFAULT_INPUT_BUDGET: usize = 256 << 20;
/// How long a packet may stay incomplete unless configured: a 16 MiB packet at 1 Mbit/s
/// takes about two minutes.
const DEFAULT_PARTIAL_TIMEOUT_MS: u64 = 180_000;

/// One MQTT connection.
struct Connection {
    session: session::Session,
    id: u64,
    budget: Rc<RefCell<Budget>>,
    limit: usize,
    partial_timeout_ms: u64,
    /// Since when a packet has been incomplete (the session reading, with bytes held).
    partial_since: Option<u64>,
    exchange: String,
    vhost: String,
    anonymous: Option<(String, Vec<u8>)>,
}

fn number<T: std::str::FromStr>(key: &str, value: &str) -> Result<T, String> {
    value.parse().map_err(|_| format!("{key} = '{value}' is not a value it takes"))
}

impl Adapter for Mqtt {
    type Session = Connection;

    fn new(entries: Vec<(String, String)>) -> Result<Self, String> {
        let mut config = Config::default();
        let mut vhost = "/".to_string();
        let (mut anonymous, mut user, mut pass) = (true, "guest".to_string(), "guest".to_string());
        let mut budget = DEFAULT_INPUT_BUDGET;
        let mut partial_timeout_ms = DEFAULT_PARTIAL_TIMEOUT_MS;
        for (key, value) in entries {
            let v = value.as_str();
            match key.as_str() {
                "exchange" => config.exchange = value,
                "prefetch" => config.prefetch = number(&key, v)?,
                "vhost" => vhost = value,
                "allow-anonymous" => anonymous = number(&key, v)?,
                "default-user" => user = value,
                "default-pass" => pass = value,
                "max-packet-size" => config.max_packet_size = number(&key, v)?,
                "max-packet-size-unauthenticated" => {
                    config.max_packet_size_unauthenticated = number(&key, v)?
                }
                "topic-alias-maximum" => config.topic_alias_maximum = number(&key, v)?,
                "max-session-expiry" => config.max_session_expiry = number(&key, v)?,
                "connect-timeout-ms" => config.connect_timeout_ms = number(&key, v)?,
                "input-budget" => budget = number(&key, v)?,
                "partial-packet-timeout-ms" => partial_timeout_ms = number(&key, v)?,
                _ => return Err(format!("unknown setting '{key}'")),
            }
        }
        if budget < config.max_packet_size as usize {
            return Err(format!(
                "input-budget = {budget} is below max-packet-size = {}: no large packet could arrive",
                config.max_packet_size
            ));
        }
        if config.prefetch == 0 {
            return Err("prefetch = 0 would let a client that never acks take a whole queue".into());
        }
        let anonymous = anonymous.then(|| (user, pass.into_bytes()));
        Ok(Mqtt { config, budget: Rc::default(), limit: budget, partial_timeout_ms, vhost, anonymous })
    }

    fn open(&self, info: ConnectionInfo, now: u64) -> Connection {
        // A client that sends no identifier gets one unique among this node's connections:
        // its address and the time.
        let assigned = format!("warren-{}-{now}", info.peer);
        Connection {
            session: session::Session::new(self.config.clone(), now, assigned),
            id: {
                let mut b = self.budget.borrow_mut();
                b.next_id += 1;
                b.next_id
            },
            budget: self.budget.clone(),
            limit: self.limit,
            partial_timeout_ms: self.partial_timeout_ms,
            partial_since: None,
            exchange: self.config.exchange.clone(),
            vhost: self.vhost.clone(),
            anonymous: self.anonymous.clone(),
        }
    }
}

impl Session for Connection {
    fn receive(&mut self, now: u64, bytes: Vec<u8>) -> Output {
        if !self.doomed() {
            self.session.receive(now, &bytes);
        }
        self.output(now)
    }

    fn handle(&mut self, now: u64, events: Vec<Event>) -> Output {
        self.doomed();
        for e in events {
            match e {
                Event::Done(d) => {
                    let result = d.outcome.map_err(|f| MqttFailure { code: f.code, text: f.text });
                    self.session.handle(now, MqttEvent::Done { id: d.id, result });
                }
                Event::Confirmed(id) => self.session.handle(now, MqttEvent::Confirmed(id)),
                Event::Refused(id) => self.session.handle(now, MqttEvent::Refused(id)),
                Event::Delivery(d) => self.session.handle(
                    now,
                    MqttEvent::Delivery {
                        delivery_tag: d.delivery_tag,
                        redelivered: d.redelivered,
                        retained: d.retained,
                        routing_key: d.routing_key,
                        message: from_broker(d.message),
                    },
                ),
                Event::TakenOver => self.session.handle(now, MqttEvent::TakenOver),
                // The session cannot go on without its consumer or its broker session: as in
                // RabbitMQ, the connection ends (and the will goes).
                Event::ConsumerLost(_) | Event::Closed(_) => self.session.socket_closed(),
                // As RabbitMQ at a node's shutdown: MQTT 5 hears 0x8B, and the will goes (the
                // server closed the connection, which is when a will is published).
                Event::ShuttingDown => self.session.abort(0x8B, "the server is shutting down"),
            }
        }
        self.output(now)
    }

    fn timeout(&mut self, now: u64) -> Output {
        if !self.doomed() {
            if self.partial_since.is_some_and(|t| now >= t.saturating_add(self.partial_timeout_ms)) {
                self.session
                    .abort(warren_mqtt::error::reason::MALFORMED, "a packet stayed incomplete too long");
            } else {
                self.session.handle_timeout(now);
            }
        }
        self.output(now)
    }

    fn socket_closed(&mut self, now: u64) -> Output {
        self.session.socket_closed();
        self.output(now)
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.budget.borrow_mut().forget(self.id);
    }
}

impl Connection {
    /// Everything the session has for the host. The bytes are taken first: the QoS 0
    /// deliveries in them are acked by commands that come with them.
    /// Ends the session if it was doomed for holding the most of a spent budget.
    fn doomed(&mut self) -> bool {
        if !self.budget.borrow_mut().doomed.remove(&self.id) {
            return false;
        }
        self.quota_exceeded();
        true
    }

    fn quota_exceeded(&mut self) {
        self.session.abort(
            warren_mqtt::error::reason::QUOTA_EXCEEDED,
            "it held the most input when its adapter instance's input budget was spent",
        );
    }

    fn output(&mut self, now: u64) -> Output {
        // Every call may have taken in or used up held input (a login's answer lets the
        // packets held behind it be read).
        let held = self.session.buffered();
        if self.budget.borrow_mut().update(self.id, held, self.limit) {
            self.quota_exceeded();
            self.budget.borrow_mut().update(self.id, 0, self.limit);
        }
        self.partial_since = match (held, self.session.wants_input(), self.partial_since) {
            (0, _, _) | (_, false, _) => None,
            (_, true, since) => Some(since.unwrap_or(now)),
        };
        let partial_deadline = self.partial_since.map(|t| t.saturating_add(self.partial_timeout_ms));
        let timeout = match (self.session.poll_timeout(), partial_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let bytes = self.session.take_output().to_vec();
        let mut commands = Vec::new();
        while let Some(c) = self.session.poll_command() {
            if let Some(c) = self.command(c) {
                commands.push(c);
            }
        }
        Output { commands, bytes, timeout, wants_input: self.session.wants_input() }
    }

    fn command(&self, c: session::Command) -> Option<Command> {
        use session::Command as C;
        Some(match c {
            C::Authenticate { id, client_id, username, password } => {
                let (username, password) = match (username, &self.anonymous) {
                    (Some(u), _) => (u, password.map(|p| p.to_vec()).unwrap_or_default()),
                    (None, Some((u, p))) => (u.clone(), p.clone()),
                    // Refused by the broker: no user has an empty name.
                    (None, None) => (String::new(), Vec::new()),
                };
                // RabbitMQ's `vhost:user` form names the vhost in the user name.
                let (vhost, username) = match username.split_once(':') {
                    Some((v, u)) if !v.is_empty() => (v.to_string(), u.to_string()),
                    _ => (self.vhost.clone(), username),
                };
                Command::Login(Login { id, username, password, vhost: Some(vhost), claim: Some(client_id) })
            }
            C::DeclareQueue { id, name, durable, exclusive, expires_ms } => {
                Command::DeclareQueue(DeclareQueue { id, name, durable, exclusive, expires_ms })
            }
            C::DeleteQueue { id, name } => Command::DeleteQueue(QueueRef { id, name }),
            C::Bind { id, queue, exchange, key } => Command::Bind(Bind { id, queue, exchange, key }),
            C::Unbind { id, queue, exchange, key } => Command::Unbind(Bind { id, queue, exchange, key }),
            C::Consume { id, queue, prefetch } => Command::Consume(Consume { id, queue, prefetch }),
            C::Publish { confirm, exchange, routing_key, message } => {
                Command::Publish(Publish { confirm, exchange, routing_key, message: to_broker(message) })
            }
            C::Retain { topic, message } => Command::Retain(Retain {
                exchange: self.exchange.clone(),
                // A topic the session took has a routing key (it checked its length).
                routing_key: topic::to_routing_key(&topic).ok()?,
                message: to_broker(message),
            }),
            C::SendRetained { filter, qos: _ } => Command::SendRetained(SendRetained {
                exchange: self.exchange.clone(),
                pattern: topic::to_binding_key(&filter).ok()?,
            }),
            C::Will { client_id: _, routing_key, exchange, retain, message, delay_ms } => {
                Command::Will(Will {
                    publish: Publish { confirm: None, exchange, routing_key, message: to_broker(message) },
                    retain,
                    delay_ms,
                })
            }
            C::Ack { delivery_tag } => Command::Ack(delivery_tag),
            C::Close { reason } => Command::Close(reason),
        })
    }
}

/// The header carrying the QoS a message was published with (RabbitMQ's name).
const QOS_HEADER: &str = "x-mqtt-publish-qos";
/// Where correlation data that is no AMQP short string goes (RabbitMQ's name).
const CORRELATION_HEADER: &str = "x-correlation-id";

/// An MQTT message as the broker's, with RabbitMQ's mapping of MQTT 5's properties.
fn to_broker(m: session::Message) -> Message {
    let mut properties = no_properties();
    properties.delivery_mode = Some(if m.persistent { 2 } else { 1 });
    properties.content_type = m.content_type;
    properties.reply_to = m.reply_to;
    properties.expiration = m.expiration_ms.map(|ms| ms.to_string());
    let mut headers = vec![Field { name: QOS_HEADER.into(), value: FieldValue::Uint8(m.qos) }];
    if let Some(c) = m.correlation_id {
        match std::str::from_utf8(&c) {
            Ok(s) if s.len() <= 255 => properties.correlation_id = Some(s.to_string()),
            _ => {
                headers.push(Field { name: CORRELATION_HEADER.into(), value: FieldValue::Bytes(c.to_vec()) })
            }
        }
    }
    // A user property whose name is no AMQP field name (over 255 octets) cannot travel.
    headers.extend(
        m.headers
            .into_iter()
            .filter(|(k, _)| k.len() <= 255)
            .map(|(name, v)| Field { name, value: FieldValue::LongString(v.into_bytes()) }),
    );
    Message { properties, headers, body: m.body.to_vec() }
}

/// A broker message as MQTT's: its QoS from RabbitMQ's header (else its persistence), its
/// string headers as user properties.
fn from_broker(m: Message) -> session::Message {
    let p = m.properties;
    let persistent = p.delivery_mode == Some(2);
    let mut qos = u8::from(persistent);
    let mut correlation = p.correlation_id.map(|s| Bytes::from(s.into_bytes()));
    let mut headers = Vec::new();
    for f in m.headers {
        match (f.name.as_str(), f.value) {
            (QOS_HEADER, v) => qos = integer(&v).map_or(qos, |q| q.clamp(0, 1) as u8),
            (CORRELATION_HEADER, FieldValue::Bytes(b) | FieldValue::LongString(b)) => {
                correlation = Some(Bytes::from(b))
            }
            (_, FieldValue::LongString(b)) => {
                if let Ok(s) = String::from_utf8(b) {
                    headers.push((f.name, s));
                }
            }
            _ => {}
        }
    }
    session::Message {
        persistent,
        qos,
        content_type: p.content_type,
        correlation_id: correlation,
        reply_to: p.reply_to,
        expiration_ms: p.expiration.and_then(|e| e.parse().ok()),
        headers,
        body: Bytes::from(m.body),
    }
}

fn integer(v: &FieldValue) -> Option<i64> {
    Some(match *v {
        FieldValue::Int8(n) => n.into(),
        FieldValue::Uint8(n) => n.into(),
        FieldValue::Int16(n) => n.into(),
        FieldValue::Uint16(n) => n.into(),
        FieldValue::Int32(n) => n.into(),
        FieldValue::Uint32(n) => n.into(),
        FieldValue::Int64(n) => n,
        _ => return None,
    })
}

warren_plugin_sdk::export_adapter!(Mqtt);
