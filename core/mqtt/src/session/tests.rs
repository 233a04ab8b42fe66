//! The session played packet by packet: a client's bytes in, the broker's commands and
//! answers, the bytes back decoded and checked against what MQTT and RabbitMQ say.

use bytes::{Bytes, BytesMut};

use super::*;

/// A client and its session, on a clock the test moves.
struct Client {
    s: Session,
    v: Version,
    now: u64,
}

fn connect_packet(v: Version, client_id: &str, clean_start: bool) -> Connect {
    Connect {
        version: v,
        client_id: client_id.into(),
        clean_start,
        keep_alive: 10,
        username: Some("guest".into()),
        password: Some(Bytes::from_static(b"guest")),
        will: None,
        properties: Properties::default(),
    }
}

impl Client {
    fn new(v: Version) -> Self {
        Client { s: Session::new(Config::default(), 0, "warren-assigned-1".into()), v, now: 0 }
    }

    fn send(&mut self, p: Packet) {
        let mut buf = BytesMut::new();
        let v = match &p {
            Packet::Connect(c) => c.version,
            _ => self.v,
        };
        encode(&p, v, &mut buf).expect("the test's packet encodes");
        self.s.receive(self.now, &buf);
    }

    /// The packets the session wrote.
    fn packets(&mut self) -> Vec<Packet> {
        let mut out = self.s.take_output();
        let mut got = Vec::new();
        while let Some(p) = decode(&mut out, self.v, u32::MAX).expect("the session writes valid packets") {
            got.push(p);
        }
        got
    }

    fn commands(&mut self) -> Vec<Command> {
        std::iter::from_fn(|| self.s.poll_command()).collect()
    }

    /// Answers every command that wants an answer with success (`existed` for declares).
    fn answer_all(&mut self, existed: bool) -> Vec<Command> {
        let mut seen = Vec::new();
        loop {
            let cs = self.commands();
            if cs.is_empty() {
                return seen;
            }
            for c in cs {
                if let Some(id) = command_id(&c) {
                    let ok = matches!(c, Command::DeclareQueue { .. }) && existed;
                    self.s.handle(self.now, Event::Done { id, result: Ok(ok) });
                }
                seen.push(c);
            }
        }
    }

    /// CONNECT, every login step answered, CONNACK read.
    fn login(v: Version, client_id: &str, clean_start: bool) -> (Client, ConnAck) {
        let mut c = Client::new(v);
        c.send(Packet::Connect(Box::new(connect_packet(v, client_id, clean_start))));
        c.answer_all(false);
        let Some(Packet::ConnAck(ack)) = c.packets().pop() else { panic!("no CONNACK") };
        (c, ack)
    }
}

fn command_id(c: &Command) -> Option<u64> {
    match c {
        Command::Authenticate { id, .. }
        | Command::DeclareQueue { id, .. }
        | Command::DeleteQueue { id, .. }
        | Command::Bind { id, .. }
        | Command::Unbind { id, .. }
        | Command::Consume { id, .. } => Some(*id),
        _ => None,
    }
}

fn is_close(c: &Command) -> bool {
    matches!(c, Command::Close { .. })
}

fn publish(topic: &str, qos: QoS, packet_id: Option<u16>) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic.into(),
        packet_id,
        properties: Properties::default(),
        payload: Bytes::from_static(b"22.5"),
    })
}

fn subscribe(packet_id: u16, filters: &[(&str, QoS)]) -> Packet {
    Packet::Subscribe(Subscribe {
        packet_id,
        properties: Properties::default(),
        filters: filters
            .iter()
            .map(|(f, qos)| Subscription {
                filter: f.to_string(),
                qos: *qos,
                no_local: false,
                retain_as_published: false,
                retain_handling: 0,
            })
            .collect(),
    })
}

#[test]
fn a_clean_session_logs_in_and_drops_any_old_session_queue() {
    let mut c = Client::new(Version::V311);
    c.send(Packet::Connect(Box::new(connect_packet(Version::V311, "sensor-1", true))));
    let cs = c.commands();
    let [Command::Authenticate { id, client_id, username, .. }] = &cs[..] else { panic!("{cs:?}") };
    assert_eq!((client_id.as_str(), username.as_deref()), ("sensor-1", Some("guest")));
    assert!(c.packets().is_empty(), "no CONNACK before the broker said yes");
    c.s.handle(0, Event::Done { id: *id, result: Ok(false) });
    let cs = c.commands();
    let [Command::DeleteQueue { id, name }] = &cs[..] else { panic!("{cs:?}") };
    assert_eq!(name, "mqtt-subscription-sensor-1qos1");
    // Nothing to delete is no failure: the broker answers a missing queue's delete ok.
    c.s.handle(0, Event::Done { id: *id, result: Ok(false) });
    let packets = c.packets();
    assert!(
        matches!(&packets[..], [Packet::ConnAck(ConnAck { session_present: false, code: 0, .. })]),
        "{packets:?}"
    );
}

#[test]
fn a_kept_session_declares_its_durable_queue_consumes_it_and_says_whether_it_was_there() {
    let mut c = Client::new(Version::V311);
    c.send(Packet::Connect(Box::new(connect_packet(Version::V311, "logger", false))));
    let cs = c.answer_all(true);
    let declare = cs.iter().find(|c| matches!(c, Command::DeclareQueue { .. })).expect("declared");
    assert_eq!(
        declare,
        &Command::DeclareQueue {
            id: 2,
            name: "mqtt-subscription-loggerqos1".into(),
            durable: true,
            exclusive: false,
            expires_ms: Some(86_400_000),
        }
    );
    assert!(cs.iter().any(|c| matches!(c, Command::Consume { prefetch: 10, .. })));
    assert!(matches!(c.packets()[..], [Packet::ConnAck(ConnAck { session_present: true, code: 0, .. })]));
}

#[test]
fn a_refused_login_gets_the_versions_code_and_no_session() {
    for (v, status, code) in [
        (Version::V311, 403, 0x05),
        (Version::V311, 401, 0x04),
        (Version::V5, 403, 0x87),
        (Version::V5, 401, 0x86),
    ] {
        let mut c = Client::new(v);
        c.send(Packet::Connect(Box::new(connect_packet(v, "x", true))));
        let Some(Command::Authenticate { id, .. }) = c.commands().pop() else { panic!() };
        let failure = Failure { code: status, text: "no".into() };
        c.s.handle(0, Event::Done { id, result: Err(failure) });
        let packets = c.packets();
        assert!(
            matches!(&packets[..], [Packet::ConnAck(ConnAck { code: got, .. })] if *got == code),
            "{packets:?}"
        );
        let cs = c.commands();
        assert!(cs.iter().any(is_close) && !cs.iter().any(|c| matches!(c, Command::Will { .. })));
    }
}

#[test]
fn connect_first_and_once() {
    let mut c = Client::new(Version::V311);
    c.send(Packet::PingReq);
    assert!(c.packets().is_empty());
    assert!(c.s.closed().is_some());

    let (mut c, _) = Client::login(Version::V5, "x", true);
    c.send(Packet::Connect(Box::new(connect_packet(Version::V5, "x", true))));
    assert!(matches!(c.packets()[..], [Packet::Disconnect(Reasoned { code: 0x82, .. })]));
    assert!(c.s.closed().is_some());
}

#[test]
fn client_identifiers_follow_each_versions_rules() {
    let mut c = Client::new(Version::V311);
    c.send(Packet::Connect(Box::new(connect_packet(Version::V311, "", false))));
    assert!(matches!(c.packets()[..], [Packet::ConnAck(ConnAck { code: 0x02, .. })]));
    let (c, ack) = Client::login(Version::V5, "", true);
    assert_eq!(ack.properties.assigned_client_identifier.as_deref(), Some("warren-assigned-1"));
    assert_eq!(c.s.client_id(), "warren-assigned-1");
    let mut c = Client::new(Version::V5);
    c.send(Packet::Connect(Box::new(connect_packet(Version::V5, &"x".repeat(300), true))));
    assert!(matches!(c.packets()[..], [Packet::ConnAck(ConnAck { code: 0x85, .. })]));
}

#[test]
fn a_qos1_publish_is_acked_only_once_the_broker_confirms_it() {
    let (mut c, _) = Client::login(Version::V311, "s", true);
    c.send(publish("home/kitchen.v2/temp", QoS::AtLeastOnce, Some(7)));
    let cs = c.commands();
    let [Command::Publish { confirm: Some(id), exchange, routing_key, message }] = &cs[..] else {
        panic!("{cs:?}")
    };
    assert_eq!((exchange.as_str(), routing_key.as_str()), ("amq.topic", "home.kitchen.v2.temp"));
    assert!(message.persistent && message.qos == 1 && &message.body[..] == b"22.5");
    assert!(c.packets().is_empty(), "no PUBACK before the confirm");
    c.s.handle(0, Event::Confirmed(*id));
    assert_eq!(c.packets(), [Packet::PubAck(Ack::ok(7))]);

    // Refused: MQTT 5 says so; 3.1.1 has no way to and sends nothing, as RabbitMQ.
    c.send(publish("t", QoS::AtLeastOnce, Some(8)));
    let Some(Command::Publish { confirm: Some(id), .. }) = c.commands().pop() else { panic!() };
    c.s.handle(0, Event::Refused(id));
    assert!(c.packets().is_empty());
    let (mut c, _) = Client::login(Version::V5, "s", true);
    c.send(publish("t", QoS::AtLeastOnce, Some(8)));
    let Some(Command::Publish { confirm: Some(id), .. }) = c.commands().pop() else { panic!() };
    c.s.handle(0, Event::Refused(id));
    assert!(matches!(c.packets()[..], [Packet::PubAck(Ack { packet_id: 8, code: 0x97, .. })]));
}

#[test]
fn qos2_is_taken_as_qos1_in_3_1_1_and_refused_in_5() {
    let (mut c, _) = Client::login(Version::V311, "s", true);
    c.send(publish("t", QoS::ExactlyOnce, Some(3)));
    let Some(Command::Publish { confirm: Some(id), message, .. }) = c.commands().pop() else { panic!() };
    assert_eq!(message.qos, 1);
    c.s.handle(0, Event::Confirmed(id));
    assert_eq!(c.packets(), [Packet::PubAck(Ack::ok(3))], "PUBACK, not PUBREC");

    let (mut c, _) = Client::login(Version::V5, "s", true);
    c.send(publish("t", QoS::ExactlyOnce, Some(3)));
    assert!(matches!(c.packets()[..], [Packet::Disconnect(Reasoned { code: 0x9B, .. })]));
    assert!(c.commands().iter().any(is_close));
}

#[test]
fn topic_aliases_stand_for_their_topics_within_the_maximum() {
    let (mut c, _) = Client::login(Version::V5, "s", true);
    let aliased = |topic: &str, alias: u16| {
        let mut p = Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: topic.into(),
            packet_id: None,
            properties: Properties::default(),
            payload: Bytes::new(),
        };
        p.properties.topic_alias = Some(alias);
        Packet::Publish(p)
    };
    c.send(aliased("a/b", 1));
    c.send(aliased("", 1));
    let keys: Vec<_> = c
        .commands()
        .into_iter()
        .filter_map(|c| match c {
            Command::Publish { routing_key, .. } => Some(routing_key),
            _ => None,
        })
        .collect();
    assert_eq!(keys, ["a.b", "a.b"]);
    c.send(aliased("", 2));
    assert!(matches!(c.packets()[..], [Packet::Disconnect(Reasoned { code: 0x82, .. })]), "never set");

    let (mut c, _) = Client::login(Version::V5, "s", true);
    c.send(aliased("a", 17));
    assert!(matches!(c.packets()[..], [Packet::Disconnect(Reasoned { code: 0x94, .. })]), "over 16");
}

#[test]
fn more_unconfirmed_publishes_than_the_receive_maximum_end_the_session() {
    let mut c = Client::new(Version::V5);
    c.s.config.receive_maximum = 2;
    c.send(Packet::Connect(Box::new(connect_packet(Version::V5, "s", true))));
    c.answer_all(false);
    let Some(Packet::ConnAck(ack)) = c.packets().pop() else { panic!() };
    assert_eq!(ack.properties.receive_maximum, Some(2));
    for id in 1..=3 {
        c.send(publish("t", QoS::AtLeastOnce, Some(id)));
    }
    assert!(matches!(c.packets()[..], [Packet::Disconnect(Reasoned { code: 0x93, .. })]));
}

#[test]
fn a_subscription_is_a_binding_of_the_session_queue_acked_once_the_broker_did_it() {
    let (mut c, _) = Client::login(Version::V5, "sub", true);
    c.send(subscribe(
        1,
        &[("home/+/temp", QoS::ExactlyOnce), ("bad#", QoS::AtMostOnce), ("$share/g/x", QoS::AtMostOnce)],
    ));
    let cs = c.commands();
    assert!(matches!(&cs[0], Command::DeclareQueue { exclusive: true, durable: false, .. }));
    assert!(matches!(&cs[1], Command::Consume { .. }));
    let Command::Bind { key, exchange, queue, .. } = &cs[2] else { panic!("{cs:?}") };
    assert_eq!(
        (key.as_str(), exchange.as_str(), queue.as_str()),
        ("home.*.temp", "amq.topic", "mqtt-subscription-subqos1")
    );
    assert_eq!(cs.len(), 3, "no binding for the refused filters");
    assert!(c.packets().is_empty(), "SUBACK waits for the broker");
    for cmd in &cs {
        let id = command_id(cmd).expect("answered");
        c.s.handle(0, Event::Done { id, result: Ok(false) });
    }
    let packets = c.packets();
    let [Packet::SubAck(ack)] = &packets[..] else { panic!("{packets:?}") };
    assert_eq!(ack.codes, [1, 0x8F, 0x9E], "QoS 2 granted as 1; a bad filter; no shared subscriptions yet");
    assert!(
        matches!(&c.commands()[..], [Command::SendRetained { filter, qos: 1 }] if filter == "home/+/temp")
    );

    // A refused binding is that filter's failure.
    c.send(subscribe(2, &[("a", QoS::AtMostOnce), ("b", QoS::AtLeastOnce)]));
    let cs = c.commands();
    assert_eq!(cs.len(), 2, "the queue is declared once a connection");
    let ids: Vec<u64> = cs.iter().filter_map(command_id).collect();
    c.s.handle(0, Event::Done { id: ids[0], result: Err(Failure { code: 403, text: "no".into() }) });
    c.s.handle(0, Event::Done { id: ids[1], result: Ok(false) });
    let packets = c.packets();
    assert!(
        matches!(&packets[..], [Packet::SubAck(SubAck { codes, .. })] if codes == &[0x87, 1]),
        "{packets:?}"
    );
}

#[test]
fn deliveries_go_at_the_granted_qos_and_qos1_is_acked_after_puback() {
    let (mut c, _) = Client::login(Version::V311, "d", true);
    c.send(subscribe(1, &[("alerts/#", QoS::AtLeastOnce), ("news/+", QoS::AtMostOnce)]));
    c.answer_all(false);
    c.packets();
    c.commands();
    let persistent =
        Message { persistent: true, qos: 1, body: Bytes::from_static(b"m"), ..Message::default() };
    let deliver = |tag: u64, key: &str| Event::Delivery {
        delivery_tag: tag,
        redelivered: false,
        retained: false,
        routing_key: key.into(),
        message: persistent.clone(),
    };
    c.s.handle(0, deliver(10, "alerts.fire"));
    let packets = c.packets();
    let [Packet::Publish(p)] = &packets[..] else { panic!("{packets:?}") };
    assert_eq!((p.topic.as_str(), p.qos), ("alerts/fire", QoS::AtLeastOnce));
    assert!(c.commands().is_empty(), "not acked before PUBACK");
    c.send(Packet::PubAck(Ack::ok(p.packet_id.expect("QoS 1"))));
    assert_eq!(c.commands(), [Command::Ack { delivery_tag: 10 }]);

    c.s.handle(0, deliver(11, "news.today"));
    let packets = c.packets();
    assert!(matches!(&packets[..], [Packet::Publish(Publish { qos: QoS::AtMostOnce, packet_id: None, .. })]));
    assert_eq!(c.commands(), [Command::Ack { delivery_tag: 11 }], "QoS 0 is settled as sent");
}

#[test]
fn a_delivery_larger_than_the_client_takes_is_settled_not_sent() {
    let mut c = Client::new(Version::V5);
    let mut connect = connect_packet(Version::V5, "small", true);
    connect.properties.maximum_packet_size = Some(64);
    c.send(Packet::Connect(Box::new(connect)));
    c.answer_all(false);
    c.packets();
    let big = Message { body: Bytes::from(vec![0u8; 100]), ..Message::default() };
    c.s.handle(
        0,
        Event::Delivery {
            delivery_tag: 5,
            redelivered: false,
            retained: false,
            routing_key: "t".into(),
            message: big,
        },
    );
    assert!(c.packets().is_empty());
    assert_eq!(c.commands(), [Command::Ack { delivery_tag: 5 }]);
}

#[test]
fn unsubscribe_unbinds_every_filter_known_here_or_not() {
    let (mut c, _) = Client::login(Version::V5, "u", true);
    c.send(subscribe(1, &[("a/b", QoS::AtLeastOnce)]));
    c.answer_all(false);
    c.packets();
    // "never" may be a resumed session's, bound on an earlier connection: unbound too.
    c.send(Packet::Unsubscribe(Unsubscribe {
        packet_id: 2,
        properties: Properties::default(),
        filters: vec!["a/b".into(), "never".into()],
    }));
    let cs = c.answer_all(false);
    let keys: Vec<&str> = cs
        .iter()
        .filter_map(|c| match c {
            Command::Unbind { key, .. } => Some(key.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(keys, ["a.b", "never"]);
    assert!(matches!(&c.packets()[..], [Packet::UnsubAck(UnsubAck { codes, .. })] if codes == &[0, 0]));
}

#[test]
fn a_silent_client_is_dropped_at_one_and_a_half_keep_alives_and_its_will_goes() {
    let mut c = Client::new(Version::V5);
    let mut connect = connect_packet(Version::V5, "w", true);
    connect.will = Some(Will {
        topic: "status/w".into(),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtLeastOnce,
        retain: true,
        properties: Properties { will_delay_interval: Some(30), ..Properties::default() },
    });
    connect.properties.session_expiry_interval = Some(10);
    c.send(Packet::Connect(Box::new(connect)));
    c.answer_all(false);
    c.packets();
    c.now = 1_000;
    c.send(Packet::PingReq);
    assert_eq!(c.packets(), [Packet::PingResp]);
    assert_eq!(c.s.poll_timeout(), Some(16_000));
    c.s.handle_timeout(15_999);
    assert!(c.s.closed().is_none());
    c.s.handle_timeout(16_000);
    assert!(matches!(c.packets()[..], [Packet::Disconnect(Reasoned { code: 0x8D, .. })]));
    let cs = c.commands();
    let will = cs.iter().find(|c| matches!(c, Command::Will { .. })).expect("the will");
    let Command::Will { routing_key, retain, delay_ms, message, .. } = will else { unreachable!() };
    assert_eq!(
        (routing_key.as_str(), *retain, *delay_ms),
        ("status.w", true, 10_000),
        "delayed no longer than the session lives"
    );
    assert!(message.persistent);
    assert!(cs.iter().any(is_close));
}

#[test]
fn a_connection_without_connect_is_dropped_at_the_timeout() {
    let mut c = Client::new(Version::V311);
    assert_eq!(c.s.poll_timeout(), Some(10_000));
    c.s.handle_timeout(10_000);
    assert!(c.s.closed().is_some());
}

#[test]
fn disconnect_discards_the_will_unless_mqtt5_asks_for_it() {
    let with_will = |v: Version| {
        let mut c = Client::new(v);
        let mut connect = connect_packet(v, "w", true);
        connect.will = Some(Will {
            topic: "s".into(),
            payload: Bytes::new(),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: Properties::default(),
        });
        c.send(Packet::Connect(Box::new(connect)));
        c.answer_all(false);
        c.packets();
        c
    };
    let wills = |c: &mut Client| c.commands().iter().filter(|c| matches!(c, Command::Will { .. })).count();
    let mut c = with_will(Version::V311);
    c.send(Packet::Disconnect(Reasoned { code: 0, properties: Properties::default() }));
    assert_eq!(wills(&mut c), 0);
    let mut c = with_will(Version::V5);
    c.send(Packet::Disconnect(Reasoned { code: 0x04, properties: Properties::default() }));
    assert_eq!(wills(&mut c), 1);
    let mut c = with_will(Version::V311);
    c.s.socket_closed();
    assert_eq!(wills(&mut c), 1);
    let mut c = with_will(Version::V5);
    c.s.handle(0, Event::TakenOver);
    assert!(matches!(c.packets()[..], [Packet::Disconnect(Reasoned { code: 0x8E, .. })]));
    assert_eq!(wills(&mut c), 1);
}

#[test]
fn subscribes_waiting_for_the_broker_are_bounded() {
    let (mut c, _) = Client::login(Version::V5, "q", true);
    for id in 1..=subscribe::MAX_PENDING as u16 + 1 {
        c.send(subscribe(id, &[("a", QoS::AtMostOnce)]));
    }
    assert!(matches!(c.packets()[..], [Packet::Disconnect(Reasoned { code: 0x97, .. })]));
}

#[test]
fn routing_keys_that_make_no_topic_name_are_settled_not_sent() {
    let (mut c, _) = Client::login(Version::V311, "k", true);
    c.send(subscribe(1, &[("#", QoS::AtLeastOnce)]));
    c.answer_all(false);
    c.packets();
    for (tag, key) in [(1, ""), (2, "a.*"), (3, "#"), (4, "a\0b")] {
        let message = Message { qos: 1, persistent: true, ..Message::default() };
        c.s.handle(
            0,
            Event::Delivery {
                delivery_tag: tag,
                redelivered: false,
                retained: false,
                routing_key: key.into(),
                message,
            },
        );
        assert!(c.packets().is_empty(), "{key:?}");
        assert_eq!(c.commands(), [Command::Ack { delivery_tag: tag }]);
    }
    assert!(c.s.closed().is_none());
}

#[test]
fn before_login_packets_are_small() {
    let mut c = Client::new(Version::V311);
    let mut connect = connect_packet(Version::V311, "big", true);
    connect.password = Some(Bytes::from(vec![b'p'; 60_000]));
    connect.username = Some("u".repeat(10_000));
    c.send(Packet::Connect(Box::new(connect)));
    assert!(c.s.closed().is_some_and(|why| why.contains("over the limit")), "{:?}", c.s.closed());
}

/// One step of a random conversation.
#[derive(Debug, Clone)]
enum Step {
    Client(Box<Packet>),
    Done(u64, bool),
    Confirm(u64, bool),
    Deliver(u64, String, u8),
    Wait(u64),
    TakenOver,
    SocketClosed,
}

fn conversation() -> impl proptest::strategy::Strategy<Value = (Version, bool, Vec<Step>)> {
    use proptest::prelude::*;
    prop_oneof![Just(Version::V311), Just(Version::V5)]
        .prop_flat_map(|v| (Just(v), any::<bool>(), proptest::collection::vec(step(v), 0..40)))
}

fn step(v: Version) -> impl proptest::strategy::Strategy<Value = Step> {
    use proptest::prelude::*;
    prop_oneof![
        4 => crate::tests::packet(v).prop_map(|p| Step::Client(Box::new(p))),
        3 => (1..30u64, any::<bool>()).prop_map(|(id, ok)| Step::Done(id, ok)),
        2 => (1..30u64, any::<bool>()).prop_map(|(id, ok)| Step::Confirm(id, ok)),
        2 => (0..20u64, "[a-z.*#]{0,6}", 0..3u8).prop_map(|(t, k, q)| Step::Deliver(t, k, q)),
        1 => (0..20_000u64).prop_map(Step::Wait),
        1 => Just(Step::TakenOver),
        1 => Just(Step::SocketClosed),
    ]
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(500))]

    /// Whatever a client sends and the broker answers, in any order: no panic, every byte
    /// written is a valid packet, nothing is written or asked after the session closed
    /// (its Close the last command), and deliveries in flight stay within packet ids.
    #[test]
    fn any_conversation_leaves_the_session_sound(
        (v, start, steps) in conversation()
    ) {
        use proptest::prelude::*;
        let mut c = Client::new(v);
        if start {
            c.send(Packet::Connect(Box::new(connect_packet(v, "p", false))));
        }
        let mut closed_seen = false;
        let mut wrote_any = false;
        for s in steps {
            match s {
                Step::Client(p) => c.send(*p),
                Step::Done(id, ok) => {
                    let result = if ok { Ok(false) } else { Err(Failure { code: 403, text: "no".into() }) };
                    c.s.handle(c.now, Event::Done { id, result });
                }
                Step::Confirm(id, ok) => c.s.handle(c.now, if ok { Event::Confirmed(id) } else { Event::Refused(id) }),
                Step::Deliver(tag, key, qos) => {
                    let message = Message { qos, persistent: qos > 0, ..Message::default() };
                    c.s.handle(c.now, Event::Delivery { delivery_tag: tag, redelivered: false, retained: false, routing_key: key, message });
                }
                Step::Wait(ms) => {
                    c.now += ms;
                    c.s.handle_timeout(c.now);
                }
                Step::TakenOver => c.s.handle(c.now, Event::TakenOver),
                Step::SocketClosed => c.s.socket_closed(),
            }
            let out = c.s.take_output();
            let mut buf = out.clone();
            // What the session writes decodes in the version it speaks (CONNACK may go out
            // before a 3.1.1 client's version is known: both decode it alike), and the first
            // packet it ever writes is CONNACK [MQTT-3.2.0-1].
            while let Some(p) = decode(&mut buf, c.s.version, u32::MAX).map_err(|e| TestCaseError::fail(e.to_string()))? {
                if !wrote_any {
                    prop_assert!(matches!(p, Packet::ConnAck(_)), "first: {p:?}");
                    wrote_any = true;
                }
            }
            let cs = c.commands();
            if closed_seen {
                prop_assert!(out.is_empty() && cs.is_empty(), "{out:?} {cs:?}");
            }
            if let Some(at) = cs.iter().position(is_close) {
                prop_assert_eq!(at, cs.len() - 1, "Close is the last command");
                closed_seen = true;
            }
            prop_assert!(c.s.inflight.len() < usize::from(u16::MAX));
        }
    }
}

#[test]
fn packets_sent_right_after_connect_wait_for_connack() {
    let mut c = Client::new(Version::V5);
    let mut bytes = BytesMut::new();
    encode(&Packet::Connect(Box::new(connect_packet(Version::V5, "fast", true))), Version::V5, &mut bytes)
        .expect("encodes");
    encode(&subscribe(1, &[("a", QoS::AtMostOnce)]), Version::V5, &mut bytes).expect("encodes");
    c.s.receive(0, &bytes);
    assert!(!c.s.wants_input(), "nothing more is read before CONNACK");
    c.answer_all(false);
    let packets = c.packets();
    assert!(
        matches!(&packets[..], [Packet::ConnAck(_), Packet::SubAck(SubAck { codes, .. })] if codes == &[0]),
        "{packets:?}"
    );
}

#[test]
fn deliveries_before_connack_wait_for_it() {
    let mut c = Client::new(Version::V311);
    c.send(Packet::Connect(Box::new(connect_packet(Version::V311, "resumed", false))));
    // Authenticate, then the declare: answer those, and deliver before the consume's Done.
    for _ in 0..2 {
        for cmd in c.commands() {
            if let Some(id) = command_id(&cmd) {
                c.s.handle(0, Event::Done { id, result: Ok(true) });
            }
        }
    }
    let Some(Command::Consume { id, .. }) = c.commands().pop() else { panic!("consume") };
    let m = Message { qos: 1, persistent: true, body: Bytes::from_static(b"kept"), ..Message::default() };
    c.s.handle(
        0,
        Event::Delivery {
            delivery_tag: 1,
            redelivered: true,
            retained: false,
            routing_key: "a.b".into(),
            message: m,
        },
    );
    assert!(c.packets().is_empty());
    c.s.handle(0, Event::Done { id, result: Ok(false) });
    let packets = c.packets();
    assert!(
        matches!(&packets[..], [Packet::ConnAck(ConnAck { session_present: true, .. }), Packet::Publish(p)]
        if p.qos == QoS::AtLeastOnce && p.dup && p.topic == "a/b"),
        "a resumed session's queue is its QoS 1 queue: {packets:?}"
    );
    assert!(c.commands().is_empty(), "not acked before PUBACK");
}

#[test]
fn a_filter_with_a_dot_grants_its_qos_as_the_broker_routed() {
    let (mut c, _) = Client::login(Version::V311, "dot", true);
    c.send(subscribe(1, &[("home/kitchen.v2/temp", QoS::AtLeastOnce), ("news/#", QoS::AtMostOnce)]));
    c.answer_all(false);
    c.packets();
    let m = Message { qos: 1, persistent: true, ..Message::default() };
    let deliver = |tag: u64, key: &str| Event::Delivery {
        delivery_tag: tag,
        redelivered: false,
        retained: false,
        routing_key: key.into(),
        message: m.clone(),
    };
    c.s.handle(0, deliver(1, "home.kitchen.v2.temp"));
    assert!(matches!(&c.packets()[..], [Packet::Publish(Publish { qos: QoS::AtLeastOnce, .. })]));
    c.s.handle(0, deliver(2, "news.a.b"));
    assert!(matches!(&c.packets()[..], [Packet::Publish(Publish { qos: QoS::AtMostOnce, .. })]), "granted 0");
}

#[test]
fn qos0_deliveries_are_acked_once_the_host_takes_the_bytes() {
    let (mut c, _) = Client::login(Version::V311, "slow", true);
    c.send(subscribe(1, &[("t", QoS::AtMostOnce)]));
    c.answer_all(false);
    c.packets();
    c.commands();
    c.s.handle(
        0,
        Event::Delivery {
            delivery_tag: 9,
            redelivered: false,
            retained: false,
            routing_key: "t".into(),
            message: Message::default(),
        },
    );
    assert!(c.commands().is_empty(), "a client that does not read holds the broker's prefetch");
    let _ = c.s.take_output();
    assert_eq!(c.commands(), [Command::Ack { delivery_tag: 9 }]);
}

#[test]
fn pubacks_go_out_in_the_order_the_publishes_came() {
    let (mut c, _) = Client::login(Version::V311, "o", true);
    for id in 1..=3 {
        c.send(publish("t", QoS::AtLeastOnce, Some(id)));
    }
    let ids: Vec<u64> = c
        .commands()
        .into_iter()
        .filter_map(|c| match c {
            Command::Publish { confirm, .. } => confirm,
            _ => None,
        })
        .collect();
    c.s.handle(0, Event::Confirmed(ids[2]));
    assert!(c.packets().is_empty(), "the third waits for the first two");
    c.s.handle(0, Event::Refused(ids[0]));
    assert!(c.packets().is_empty(), "the second still waits");
    c.s.handle(0, Event::Confirmed(ids[1]));
    assert_eq!(
        c.packets(),
        [Packet::PubAck(Ack::ok(2)), Packet::PubAck(Ack::ok(3))],
        "3.1.1 has no PUBACK for the refused first"
    );
}

#[test]
fn a_3_1_1_client_at_the_receive_maximum_is_not_read_until_confirms_come() {
    let mut c = Client::new(Version::V311);
    c.s.config.receive_maximum = 1;
    c.send(Packet::Connect(Box::new(connect_packet(Version::V311, "q", true))));
    c.answer_all(false);
    c.packets();
    c.send(publish("t", QoS::AtLeastOnce, Some(1)));
    c.send(publish("t", QoS::AtLeastOnce, Some(2)));
    assert!(!c.s.wants_input() && c.s.closed().is_none());
    let cs = c.commands();
    assert_eq!(cs.len(), 1, "the second waits unread");
    let Command::Publish { confirm: Some(id), .. } = cs[0] else { panic!() };
    c.s.handle(0, Event::Confirmed(id));
    assert_eq!(c.packets(), [Packet::PubAck(Ack::ok(1))]);
    assert!(matches!(&c.commands()[..], [Command::Publish { .. }]), "read once there was room");
}

#[test]
fn a_client_held_back_by_slow_confirms_is_not_taken_for_silent() {
    let mut c = Client::new(Version::V311);
    c.s.config.receive_maximum = 1;
    c.send(Packet::Connect(Box::new(connect_packet(Version::V311, "q", true))));
    c.answer_all(false);
    c.packets();
    c.send(publish("t", QoS::AtLeastOnce, Some(1)));
    c.send(publish("t", QoS::AtLeastOnce, Some(2)));
    let cs = c.commands();
    let Command::Publish { confirm: Some(id), .. } = cs[0] else { panic!() };
    // Keep-alive 10 s: at 15 s the session holds its input, so waits another 15 s.
    c.s.handle_timeout(15_000);
    assert!(c.s.closed().is_none(), "its silence is the broker's doing");
    assert_eq!(c.s.poll_timeout(), Some(30_000));
    c.s.handle(15_500, Event::Confirmed(id));
    c.packets();
    let cs = c.commands();
    let Command::Publish { confirm: Some(second), .. } = cs[0] else { panic!("{cs:?}") };
    c.s.handle(15_600, Event::Confirmed(second));
    // The held publish is read at 15.5 s, which counts as hearing from the client; silent
    // from there, it is closed 15 s later.
    c.s.handle_timeout(30_499);
    assert!(c.s.closed().is_none());
    c.s.handle_timeout(30_500);
    assert!(c.s.closed().is_some(), "a client that is read and says nothing times out");
}

#[test]
fn an_unsupported_protocol_level_gets_connack_0x01() {
    let mut c = Client::new(Version::V311);
    let mut bytes = vec![0x10, 12, 0, 6];
    bytes.extend_from_slice(b"MQIsdp");
    bytes.extend_from_slice(&[3, 0x02, 0, 60]);
    c.s.receive(0, &bytes);
    assert!(matches!(
        &c.packets()[..],
        [Packet::ConnAck(ConnAck { code: 0x01, session_present: false, .. })]
    ));
    assert!(c.s.closed().is_some());
}

#[test]
fn a_disconnect_with_an_error_code_publishes_the_will() {
    let mut c = Client::new(Version::V5);
    let mut connect = connect_packet(Version::V5, "w", true);
    connect.will = Some(Will {
        topic: "s".into(),
        payload: Bytes::new(),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Properties::default(),
    });
    c.send(Packet::Connect(Box::new(connect)));
    c.answer_all(false);
    c.send(Packet::Disconnect(Reasoned { code: 0x80, properties: Properties::default() }));
    assert!(c.commands().iter().any(|c| matches!(c, Command::Will { .. })));
}

#[test]
fn options_not_offered_yet_are_refused_not_ignored() {
    let (mut c, _) = Client::login(Version::V5, "nl", true);
    let Packet::Subscribe(mut s) = subscribe(1, &[("a", QoS::AtMostOnce), ("b", QoS::AtMostOnce)]) else {
        unreachable!()
    };
    s.filters[0].no_local = true;
    c.send(Packet::Subscribe(s));
    c.answer_all(false);
    assert!(matches!(&c.packets()[..], [Packet::SubAck(SubAck { codes, .. })] if codes == &[0x83, 0]));
}

#[test]
fn a_qos1_delivery_too_large_for_the_client_is_settled_and_not_held() {
    let mut c = Client::new(Version::V5);
    let mut connect = connect_packet(Version::V5, "small1", true);
    connect.properties.maximum_packet_size = Some(64);
    c.send(Packet::Connect(Box::new(connect)));
    c.answer_all(false);
    c.send(subscribe(1, &[("t", QoS::AtLeastOnce)]));
    c.answer_all(false);
    c.packets();
    let big = Message { qos: 1, persistent: true, body: Bytes::from(vec![0u8; 100]), ..Message::default() };
    c.s.handle(
        0,
        Event::Delivery {
            delivery_tag: 5,
            redelivered: false,
            retained: false,
            routing_key: "t".into(),
            message: big,
        },
    );
    assert!(c.packets().is_empty());
    assert_eq!(c.commands(), [Command::Ack { delivery_tag: 5 }]);
    assert!(c.s.inflight.is_empty());
}
