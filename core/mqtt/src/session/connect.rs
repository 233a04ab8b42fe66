//! CONNECT to CONNACK: the client identifier's rules, the limits each side states, the
//! broker's login, and the session's queue (kept or cleaned).

use bytes::Bytes;

use super::{Command, Failure, Message, Session, State};
use crate::error::reason;
use crate::packet::*;
use crate::properties::Properties;
use crate::topic;

/// The longest client identifier: its queue's name, `mqtt-subscription-<id>qos1`, must be
/// an AMQP short string (255 bytes).
pub const MAX_CLIENT_ID: usize = 255 - "mqtt-subscription-".len() - "qos1".len();

/// What CONNECT asked for, kept until CONNACK and, for the will, to the end.
#[derive(Debug)]
pub(super) struct Login {
    clean_start: bool,
    assigned: bool,
    /// Granted session expiry, seconds; 0 for a session that ends with the connection.
    session_expiry: u32,
    requested_expiry: Option<u32>,
    will: Option<Will>,
    /// The login step waited for: the Authenticate, then the queue's declare or delete,
    /// then the consume.
    waiting: u64,
    step: Step,
    session_present: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Authenticate,
    Declare,
    Delete,
    Consume,
}

impl Session {
    pub(super) fn connect(&mut self, c: Connect) {
        self.version = c.version;
        let v5 = c.version == Version::V5;
        let assigned = c.client_id.is_empty();
        if assigned && !v5 && !c.clean_start {
            // 3.1.1: a client that wants its session kept must say who it is.
            return self.refuse_connect(
                reason::V311_IDENTIFIER_REJECTED,
                "an empty client identifier with a kept session",
            );
        }
        if c.client_id.len() > MAX_CLIENT_ID {
            let code = if v5 { reason::CLIENT_ID_NOT_VALID } else { reason::V311_IDENTIFIER_REJECTED };
            return self.refuse_connect(code, "a client identifier over 233 bytes");
        }
        if v5 && c.properties.authentication_method.is_some() {
            return self
                .refuse_connect(reason::BAD_AUTHENTICATION_METHOD, "extended authentication is not offered");
        }
        if let Some(w) = &c.will {
            if v5 && w.qos == QoS::ExactlyOnce {
                // CONNACK says maximum QoS 1 [MQTT-3.2.2-12].
                return self.refuse_connect(reason::QOS_NOT_SUPPORTED, "a QoS 2 will");
            }
            if topic::to_routing_key(&w.topic).is_err() {
                if v5 {
                    return self.refuse_connect(reason::TOPIC_NAME_INVALID, "a will topic over 255 bytes");
                }
                return self.end("a will topic over 255 bytes", false);
            }
        }
        if !assigned {
            self.client_id = c.client_id.clone();
        }
        self.queue = format!("mqtt-subscription-{}qos1", self.client_id);
        self.keep_alive_ms = u64::from(c.keep_alive) * 1500;
        self.client_max_packet = c.properties.maximum_packet_size.unwrap_or(u32::MAX);
        let receive_maximum = c.properties.receive_maximum.unwrap_or(u16::MAX);
        self.config.prefetch = self.config.prefetch.min(receive_maximum).max(1);
        let requested_expiry = c.properties.session_expiry_interval;
        let session_expiry = match (v5, c.clean_start) {
            (true, _) => requested_expiry.unwrap_or(0).min(self.config.max_session_expiry),
            // 3.1.1 keeps a session as long as the server allows, or not at all.
            (false, false) => self.config.max_session_expiry,
            (false, true) => 0,
        };
        let id = self.next_id();
        self.command(Command::Authenticate {
            id,
            client_id: self.client_id.clone(),
            username: c.username,
            password: c.password,
        });
        self.connect = Some(Login {
            clean_start: c.clean_start,
            assigned,
            session_expiry,
            requested_expiry,
            will: c.will,
            waiting: id,
            step: Step::Authenticate,
            session_present: false,
        });
        self.state = State::LoggingIn;
    }

    /// One of the broker's answers during the login.
    pub(super) fn login_step(&mut self, now_ms: u64, id: u64, result: Result<bool, Failure>) {
        let Some(login) = self.connect.as_mut() else { return };
        if id != login.waiting {
            return;
        }
        let v5 = self.version == Version::V5;
        let step = login.step;
        let existed = match result {
            Ok(existed) => existed,
            // A refused login earns its own code; any later failure is the server's.
            Err(f) => {
                let code = match (step, f.code, v5) {
                    (Step::Authenticate, 403, false) => reason::V311_NOT_AUTHORIZED,
                    (Step::Authenticate, _, false) => reason::V311_BAD_USERNAME_OR_PASSWORD,
                    (Step::Authenticate, 403, true) => reason::NOT_AUTHORIZED,
                    (Step::Authenticate, _, true) => reason::BAD_USERNAME_OR_PASSWORD,
                    (_, _, false) => 0x03,
                    (_, _, true) => 0x88,
                };
                let text = format!("login refused: {}", f.text);
                return self.refuse_connect(code, &text);
            }
        };
        let next = match step {
            Step::Authenticate if login.clean_start => Step::Delete,
            Step::Authenticate => Step::Declare,
            Step::Declare => {
                login.session_present = existed;
                Step::Consume
            }
            Step::Delete | Step::Consume => return self.connack(now_ms),
        };
        let id = self.next_id();
        let (name, expiry) = (self.queue.clone(), self.connect.as_ref().map_or(0, |l| l.session_expiry));
        let c = match next {
            Step::Delete => Command::DeleteQueue { id, name },
            Step::Declare => self.declare(id, expiry),
            _ => {
                self.consuming = true;
                Command::Consume { id, queue: name, prefetch: self.config.prefetch }
            }
        };
        if let Some(login) = self.connect.as_mut() {
            login.step = next;
            login.waiting = id;
        }
        self.command(c);
    }

    /// The session queue's declare: kept across connections while the session lives,
    /// the connection's own when it ends with it.
    pub(super) fn declare(&mut self, id: u64, expiry: u32) -> Command {
        let persistent = expiry > 0;
        Command::DeclareQueue {
            id,
            name: self.queue.clone(),
            durable: persistent,
            exclusive: !persistent,
            expires_ms: persistent.then(|| u64::from(expiry) * 1000),
        }
    }

    pub(super) fn session_expiry(&self) -> u32 {
        self.connect.as_ref().map_or(0, |l| l.session_expiry)
    }

    fn connack(&mut self, now_ms: u64) {
        let Some(login) = self.connect.as_ref() else { return };
        let mut properties = Properties::default();
        if self.version == Version::V5 {
            if login.assigned {
                properties.assigned_client_identifier = Some(self.client_id.clone());
            }
            if login.requested_expiry.is_some_and(|r| r != login.session_expiry) {
                properties.session_expiry_interval = Some(login.session_expiry);
            }
            properties.receive_maximum = Some(self.config.receive_maximum);
            properties.topic_alias_maximum = Some(self.config.topic_alias_maximum);
            properties.maximum_qos = Some(1);
            properties.maximum_packet_size = Some(self.config.max_packet_size);
            properties.subscription_identifier_available = Some(0);
            properties.shared_subscription_available = Some(0);
        }
        let session_present = login.session_present;
        self.send(&Packet::ConnAck(ConnAck { session_present, code: 0, properties }));
        self.state = State::Connected;
        self.deadline = (self.keep_alive_ms > 0).then(|| now_ms.saturating_add(self.keep_alive_ms));
        // What waited for CONNACK: deliveries to a resumed session, then the packets the
        // client sent right after CONNECT.
        for e in std::mem::take(&mut self.early) {
            self.handle(now_ms, e);
        }
        self.process(now_ms);
    }

    /// Answers CONNECT with a refusal and ends the session (no will: it never began).
    fn refuse_connect(&mut self, code: u8, why: &str) {
        self.send(&Packet::ConnAck(ConnAck {
            session_present: false,
            code,
            properties: Properties::default(),
        }));
        self.end(why, false);
    }

    /// The will, handed to the broker with its delay (which the broker keeps, so a client
    /// that comes back in time cancels it).
    pub(super) fn publish_will(&mut self) {
        let Some(will) = self.connect.as_mut().and_then(|l| l.will.take()) else { return };
        let Ok(routing_key) = topic::to_routing_key(&will.topic) else { return };
        let delay = u64::from(will.properties.will_delay_interval.unwrap_or(0))
            .min(u64::from(self.session_expiry()))
            .saturating_mul(1000);
        // A 3.1.1 will at QoS 2 goes at QoS 1, as its publishes do.
        let message = message_of(&will.properties, will.qos.min(QoS::AtLeastOnce), will.payload);
        self.command(Command::Will {
            client_id: self.client_id.clone(),
            routing_key,
            exchange: self.config.exchange.clone(),
            retain: will.retain,
            message,
            delay_ms: delay,
        });
    }
}

/// The broker's message for an MQTT publish or will: QoS 1 is persistent, MQTT 5's
/// properties become AMQP's (RabbitMQ's mapping).
pub(super) fn message_of(p: &Properties, qos: QoS, body: Bytes) -> Message {
    Message {
        persistent: qos != QoS::AtMostOnce,
        qos: (qos as u8).min(1),
        content_type: p.content_type.clone(),
        correlation_id: p.correlation_data.clone(),
        reply_to: p.response_topic.as_deref().and_then(|t| topic::to_routing_key(t).ok()),
        expiration_ms: p.message_expiry_interval.map(|s| u64::from(s) * 1000),
        headers: p.user_properties.clone(),
        body,
    }
}
