//! MQTT and AMQP in one broker, in memory: an MQTT session (`warren_mqtt::session`) whose
//! commands a small host carries out through the broker model's adapter bridge, beside AMQP
//! clients of the in-memory harness. RabbitMQ's mapping holds both ways: an MQTT publish
//! reaches AMQP consumers bound to `amq.topic`, an AMQP publish reaches MQTT subscribers,
//! and a QoS 1 publish is acked only once the broker confirmed it.
//!
//! The host here is the shape of the adapter's two halves: the session runs in the adapter,
//! the bridge in the broker, and this glue is what crosses between them.
#![allow(clippy::disallowed_methods)] // one real Instant to start the virtual clock from

use std::time::Instant;

use bytes::{Bytes, BytesMut};
use warren_codec::{
    BasicConsume, BasicProperties, BasicPublish, FieldValue, Frame, Method, QueueBind, QueueDeclare,
};
use warren_core::adapter::{Answer, Bridge, Op};
use warren_core::broker::ConnectionInfo;
use warren_core::harness::Harness;
use warren_mqtt::session::{Command, Config, Event, Failure, Message, Session};
use warren_mqtt::*;

/// An MQTT client's session and its bridge into the harness's broker.
struct Mqtt {
    session: Session,
    bridge: Option<Bridge>,
    v: Version,
}

impl Mqtt {
    fn new(v: Version) -> Self {
        Mqtt { session: Session::new(Config::default(), 0, "assigned".into()), bridge: None, v }
    }

    fn send(&mut self, h: &mut Harness, p: Packet) -> Vec<Packet> {
        let mut buf = BytesMut::new();
        let v = match &p {
            Packet::Connect(c) => c.version,
            _ => self.v,
        };
        encode(&p, v, &mut buf).expect("encodes");
        self.session.receive(0, &buf);
        self.run(h)
    }

    /// Carries out the session's commands and feeds back the broker's answers until both
    /// are quiet; returns the packets the session wrote.
    fn run(&mut self, h: &mut Harness) -> Vec<Packet> {
        for _ in 0..100 {
            let mut busy = false;
            while let Some(c) = self.session.poll_command() {
                busy = true;
                self.carry_out(h, c);
            }
            if let Some(b) = self.bridge.as_mut() {
                for a in b.poll(&mut h.broker) {
                    busy = true;
                    match event(a) {
                        Some(e) => self.session.handle(0, e),
                        // The session's consumer or broker session is gone: as RabbitMQ, the
                        // MQTT connection ends (its will goes).
                        None => self.session.socket_closed(),
                    }
                }
            }
            if !busy {
                break;
            }
        }
        let mut out = self.session.take_output();
        std::iter::from_fn(|| decode(&mut out, self.v, u32::MAX).expect("valid output")).collect()
    }

    fn carry_out(&mut self, h: &mut Harness, c: Command) {
        let op = match c {
            Command::Authenticate { id, username, password, .. } => {
                let users = &h.broker.directory().users;
                let name = username.unwrap_or_default();
                let password =
                    String::from_utf8(password.map(|p| p.to_vec()).unwrap_or_default()).unwrap_or_default();
                let result = warren_core::auth::check_password(users, &name, &password, true)
                    .map(|u| u.name.clone())
                    .map_err(|e| Failure { code: 403, text: e.to_string() })
                    .and_then(|user| {
                        let info = ConnectionInfo {
                            user,
                            vhost: "/".into(),
                            name: "mqtt".into(),
                            ..Default::default()
                        };
                        Bridge::open(&mut h.broker, info).map_err(|e| Failure { code: e.code, text: e.text })
                    });
                let result = result.map(|b| {
                    self.bridge = Some(b);
                    false
                });
                self.session.handle(0, Event::Done { id, result });
                return;
            }
            Command::DeclareQueue { id, name, durable, exclusive, expires_ms } => {
                Op::DeclareQueue { id, name, durable, exclusive, expires_ms }
            }
            Command::DeleteQueue { id, name } => Op::DeleteQueue { id, name },
            Command::Bind { id, queue, exchange, key } => Op::Bind { id, queue, exchange, key },
            Command::Unbind { id, queue, exchange, key } => Op::Unbind { id, queue, exchange, key },
            Command::Consume { id, queue, prefetch } => Op::Consume { id, queue, prefetch },
            Command::Ack { delivery_tag } => Op::Ack { delivery_tag },
            Command::Publish { confirm, exchange, routing_key, message } => {
                let mut headers = warren_codec::FieldTable::new();
                headers.insert("x-mqtt-publish-qos".into(), FieldValue::U8(message.qos));
                for (k, v) in message.headers {
                    headers.insert(k, FieldValue::str(&v));
                }
                let properties = BasicProperties {
                    delivery_mode: Some(if message.persistent { 2 } else { 1 }),
                    headers: Some(headers),
                    content_type: message.content_type,
                    ..Default::default()
                };
                Op::Publish {
                    confirm,
                    exchange,
                    routing_key,
                    properties: Box::new(properties),
                    body: message.body,
                }
            }
            Command::Close { .. } => {
                if let Some(b) = self.bridge.take() {
                    b.close_session(&mut h.broker);
                }
                return;
            }
            // Retained messages and wills are the broker's stores, not this test's.
            Command::Retain { .. } | Command::SendRetained { .. } | Command::Will { .. } => return,
        };
        if let Some(b) = self.bridge.as_mut() {
            b.submit(&mut h.broker, op);
        }
    }
}

/// The session's event for a bridge answer.
fn event(a: Answer) -> Option<Event> {
    Some(match a {
        Answer::Done { id, result } => {
            Event::Done { id, result: result.map_err(|e| Failure { code: e.code, text: e.text }) }
        }
        Answer::Confirmed(id) => Event::Confirmed(id),
        Answer::Refused(id) => Event::Refused(id),
        Answer::Delivery { delivery_tag, redelivered, message } => {
            let p = &message.properties;
            let qos = match p
                .headers
                .as_ref()
                .and_then(|h| h.get("x-mqtt-publish-qos"))
                .and_then(FieldValue::as_i64)
            {
                Some(q) => q.clamp(0, 1) as u8,
                None => u8::from(p.delivery_mode == Some(2)),
            };
            Event::Delivery {
                delivery_tag,
                redelivered,
                retained: false,
                routing_key: message.routing_key.clone(),
                message: Message {
                    persistent: qos == 1,
                    qos,
                    body: message.body.clone(),
                    ..Message::default()
                },
            }
        }
        Answer::ConsumerLost(_) | Answer::Closed(_) => return None,
    })
}

fn connect(v: Version, client_id: &str) -> Packet {
    Packet::Connect(Box::new(Connect {
        version: v,
        client_id: client_id.into(),
        clean_start: true,
        keep_alive: 30,
        username: Some("guest".into()),
        password: Some(Bytes::from_static(b"guest")),
        will: None,
        properties: Properties::default(),
    }))
}

#[test]
fn an_mqtt_publish_reaches_an_amqp_consumer_and_is_acked_after_the_confirm() {
    for v in [Version::V311, Version::V5] {
        let mut h = Harness::new(Instant::now());
        let amqp = h.open();
        h.open_channel(amqp, 1);
        h.send_method(amqp, 1, QueueDeclare { queue: "readings".into(), ..Default::default() });
        assert!(matches!(h.method(amqp), Some(Method::QueueDeclareOk(_))));
        let bind = QueueBind {
            queue: "readings".into(),
            exchange: "amq.topic".into(),
            routing_key: "home.*.temp".into(),
            ..Default::default()
        };
        h.send_method(amqp, 1, bind);
        assert!(matches!(h.method(amqp), Some(Method::QueueBindOk(_))));

        let mut m = Mqtt::new(v);
        let out = m.send(&mut h, connect(v, "sensor"));
        assert!(matches!(&out[..], [Packet::ConnAck(ConnAck { code: 0, .. })]), "{out:?}");
        let publish = Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: "home/kitchen/temp".into(),
            packet_id: Some(42),
            properties: Properties::default(),
            payload: Bytes::from_static(b"21.5"),
        };
        let out = m.send(&mut h, Packet::Publish(publish));
        assert_eq!(out, [Packet::PubAck(Ack::ok(42))], "acked once the broker confirmed");
        assert_eq!(h.broker.queue_counts("readings").map(|c| c.0), Some(1));

        h.send_method(
            amqp,
            1,
            BasicConsume {
                queue: "readings".into(),
                consumer_tag: "c".into(),
                no_ack: true,
                ..Default::default()
            },
        );
        assert!(matches!(h.method(amqp), Some(Method::BasicConsumeOk(_))));
        let frames = h.drain(amqp);
        assert!(frames.iter().any(|f| matches!(f, Frame::Body { payload, .. } if &payload[..] == b"21.5")));
        assert!(
            frames.iter().any(
                |f| matches!(f, Frame::Header { header, .. } if header.properties.delivery_mode == Some(2))
            ),
            "QoS 1 is persistent"
        );
    }
}

#[test]
fn an_amqp_publish_reaches_an_mqtt_subscriber_which_acks_it_with_puback() {
    let v = Version::V5;
    let mut h = Harness::new(Instant::now());
    let mut m = Mqtt::new(v);
    m.send(&mut h, connect(v, "display"));
    let subscribe = Subscribe {
        packet_id: 1,
        properties: Properties::default(),
        filters: vec![Subscription {
            filter: "alerts/+".into(),
            qos: QoS::AtLeastOnce,
            no_local: false,
            retain_as_published: false,
            retain_handling: 2,
        }],
    };
    let out = m.send(&mut h, Packet::Subscribe(subscribe));
    assert!(matches!(&out[..], [Packet::SubAck(SubAck { codes, .. })] if codes == &[1]), "{out:?}");

    let amqp = h.open();
    h.open_channel(amqp, 1);
    let publish = BasicPublish {
        exchange: "amq.topic".into(),
        routing_key: "alerts.fire".into(),
        ..Default::default()
    };
    let props = BasicProperties { delivery_mode: Some(2), ..Default::default() };
    let mut buf = BytesMut::new();
    warren_codec::encode_content(&mut buf, 1, publish, &props, &Bytes::from_static(b"evacuate"), 131_072);
    h.send(amqp, &buf);
    let out = m.run(&mut h);
    let [Packet::Publish(p)] = &out[..] else { panic!("{out:?}") };
    assert_eq!(
        (p.topic.as_str(), p.qos, &p.payload[..]),
        ("alerts/fire", QoS::AtLeastOnce, &b"evacuate"[..])
    );
    let queue = "mqtt-subscription-displayqos1";
    assert_eq!(h.broker.queue_counts(queue).map(|c| (c.0, c.1)), Some((0, 1)), "unacked until PUBACK");
    m.send(&mut h, Packet::PubAck(Ack::ok(p.packet_id.expect("QoS 1"))));
    assert_eq!(h.broker.queue_counts(queue).map(|c| (c.0, c.1)), Some((0, 0)));
}

#[test]
fn a_wrong_password_is_refused_with_the_versions_code() {
    let mut h = Harness::new(Instant::now());
    let mut m = Mqtt::new(Version::V311);
    let Packet::Connect(mut c) = connect(Version::V311, "x") else { unreachable!() };
    c.password = Some(Bytes::from_static(b"wrong"));
    let out = m.send(&mut h, Packet::Connect(c));
    assert!(matches!(&out[..], [Packet::ConnAck(ConnAck { code: 0x05, .. })]), "{out:?}");
    assert!(m.session.closed().is_some());
}
