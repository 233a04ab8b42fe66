//! Every packet of both versions survives encode then decode; hostile bytes get the right
//! refusal; bytes arriving one at a time decode as they would whole.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

use crate::error::DecodeError;
use crate::packet::*;
use crate::properties::{Context, Properties, allowed};
use crate::{decode, encode};

const MAX: u32 = 1 << 20;

fn topic_name() -> impl Strategy<Value = String> {
    "[a-z0-9$ é]{1,6}(/[a-z0-9.]{0,5}){0,3}"
}

fn text() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 /._é€-]{0,12}"
}

/// A topic filter: at least one character.
fn filter() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 /._é€-]{1,12}"
}

fn bytes() -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..24).prop_map(Bytes::from)
}

/// Properties for context `c`: every kind drawn, then those `c` may not carry dropped.
fn properties(c: Context) -> impl Strategy<Value = Properties> {
    let a = (
        proptest::option::of(0..2u8),
        proptest::option::of(any::<u32>()),
        proptest::option::of(text()),
        proptest::option::of(topic_name()),
        proptest::option::of(bytes()),
        proptest::collection::vec(1..268_435_455u32, 0..3),
        proptest::option::of(any::<u32>()),
        proptest::option::of(text()),
        proptest::option::of(any::<u16>()),
        proptest::option::of(text()),
    );
    let b = (
        proptest::option::of(bytes()),
        proptest::option::of(0..2u8),
        proptest::option::of(any::<u32>()),
        proptest::option::of(0..2u8),
        proptest::option::of(text()),
        proptest::option::of(text()),
        proptest::option::of(text()),
        proptest::option::of(1..=u16::MAX),
        proptest::option::of(any::<u16>()),
        proptest::option::of(1..=u16::MAX),
    );
    let d = (
        proptest::option::of(0..2u8),
        proptest::option::of(0..2u8),
        proptest::collection::vec((text(), text()), 0..3),
        proptest::option::of(1..=u32::MAX),
        proptest::option::of(0..2u8),
        proptest::option::of(0..2u8),
        proptest::option::of(0..2u8),
    );
    (a, b, d).prop_map(move |(a, b, d)| {
        let mut p = Properties {
            payload_format_indicator: a.0,
            message_expiry_interval: a.1,
            content_type: a.2,
            response_topic: a.3,
            correlation_data: a.4,
            subscription_identifiers: a.5,
            session_expiry_interval: a.6,
            assigned_client_identifier: a.7,
            server_keep_alive: a.8,
            authentication_method: a.9,
            authentication_data: b.0,
            request_problem_information: b.1,
            will_delay_interval: b.2,
            request_response_information: b.3,
            response_information: b.4,
            server_reference: b.5,
            reason_string: b.6,
            receive_maximum: b.7,
            topic_alias_maximum: b.8,
            topic_alias: b.9,
            maximum_qos: d.0,
            retain_available: d.1,
            user_properties: d.2,
            maximum_packet_size: d.3,
            wildcard_subscription_available: d.4,
            subscription_identifier_available: d.5,
            shared_subscription_available: d.6,
        };
        keep_allowed(&mut p, c);
        p
    })
}

fn keep_allowed(p: &mut Properties, c: Context) {
    macro_rules! keep {
        ($($id:literal => $field:ident),* $(,)?) => {
            $(if !allowed($id, c) { p.$field = Default::default(); })*
        };
    }
    keep!(
        0x01 => payload_format_indicator, 0x02 => message_expiry_interval, 0x03 => content_type,
        0x08 => response_topic, 0x09 => correlation_data, 0x0B => subscription_identifiers,
        0x11 => session_expiry_interval, 0x12 => assigned_client_identifier, 0x13 => server_keep_alive,
        0x15 => authentication_method, 0x16 => authentication_data, 0x17 => request_problem_information,
        0x18 => will_delay_interval, 0x19 => request_response_information, 0x1A => response_information,
        0x1C => server_reference, 0x1F => reason_string, 0x21 => receive_maximum,
        0x22 => topic_alias_maximum, 0x23 => topic_alias, 0x24 => maximum_qos, 0x25 => retain_available,
        0x26 => user_properties, 0x27 => maximum_packet_size, 0x28 => wildcard_subscription_available,
        0x29 => subscription_identifier_available, 0x2A => shared_subscription_available,
    );
    if c == Context::Subscribe {
        p.subscription_identifiers.truncate(1);
    }
    // Authentication data comes with its method.
    if p.authentication_method.is_none() {
        p.authentication_data = None;
    }
}

fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![Just(QoS::AtMostOnce), Just(QoS::AtLeastOnce), Just(QoS::ExactlyOnce)]
}

/// Any packet `v` can carry, with the properties of MQTT 5 only there.
pub(crate) fn packet(v: Version) -> impl Strategy<Value = Packet> {
    let v5 = v == Version::V5;
    let props = move |c: Context| properties(c).prop_map(move |p| if v5 { p } else { Properties::default() });
    let code = move || if v5 { (0..=255u8).boxed() } else { Just(0u8).boxed() };
    let ack = move || {
        (1..=u16::MAX, code(), props(Context::Ack)).prop_map(|(packet_id, code, properties)| Ack {
            packet_id,
            code,
            properties,
        })
    };
    let will = (topic_name(), bytes(), qos(), any::<bool>(), props(Context::Will)).prop_map(
        |(topic, payload, qos, retain, properties)| Will { topic, payload, qos, retain, properties },
    );
    let connect = (
        text(),
        any::<bool>(),
        any::<u16>(),
        proptest::option::of(text()),
        proptest::option::of(bytes()),
        proptest::option::of(will),
        props(Context::Connect),
    )
        .prop_map(move |(client_id, clean_start, keep_alive, username, password, will, properties)| {
            // 3.1.1 has no password without a user name.
            let username =
                if !v5 && password.is_some() { Some(username.unwrap_or_default()) } else { username };
            Packet::Connect(Box::new(Connect {
                version: v,
                client_id,
                clean_start,
                keep_alive,
                username,
                password,
                will,
                properties,
            }))
        });
    let publish =
        (qos(), any::<bool>(), any::<bool>(), topic_name(), 1..=u16::MAX, props(Context::Publish), bytes())
            .prop_map(|(qos, dup, retain, topic, id, properties, payload)| {
                let at_most_once = qos == QoS::AtMostOnce;
                Packet::Publish(Publish {
                    dup: dup && !at_most_once,
                    qos,
                    retain,
                    topic,
                    packet_id: (!at_most_once).then_some(id),
                    properties,
                    payload,
                })
            });
    let subscription = (filter(), qos(), any::<bool>(), any::<bool>(), 0..3u8).prop_map(
        move |(filter, qos, nl, rap, rh)| Subscription {
            filter,
            qos,
            no_local: nl && v5,
            retain_as_published: rap && v5,
            retain_handling: if v5 { rh } else { 0 },
        },
    );
    prop_oneof![
        connect,
        (any::<bool>(), code(), props(Context::ConnAck)).prop_map(|(session_present, code, properties)| {
            Packet::ConnAck(ConnAck { session_present, code, properties })
        }),
        publish,
        ack().prop_map(Packet::PubAck),
        ack().prop_map(Packet::PubRec),
        ack().prop_map(Packet::PubRel),
        ack().prop_map(Packet::PubComp),
        (1..=u16::MAX, props(Context::Subscribe), proptest::collection::vec(subscription, 1..4)).prop_map(
            |(packet_id, properties, filters)| Packet::Subscribe(Subscribe {
                packet_id,
                properties,
                filters
            })
        ),
        (1..=u16::MAX, props(Context::SubAck), proptest::collection::vec(any::<u8>(), 1..4)).prop_map(
            |(packet_id, properties, codes)| Packet::SubAck(SubAck { packet_id, properties, codes })
        ),
        (1..=u16::MAX, props(Context::Unsubscribe), proptest::collection::vec(filter(), 1..4)).prop_map(
            |(packet_id, properties, filters)| Packet::Unsubscribe(Unsubscribe {
                packet_id,
                properties,
                filters
            })
        ),
        (1..=u16::MAX, props(Context::SubAck), proptest::collection::vec(any::<u8>(), 1..4)).prop_map(
            move |(packet_id, properties, codes)| Packet::UnsubAck(UnsubAck {
                packet_id,
                properties,
                codes: if v5 { codes } else { Vec::new() }
            })
        ),
        Just(Packet::PingReq),
        Just(Packet::PingResp),
        (code(), props(Context::Disconnect))
            .prop_map(|(code, properties)| Packet::Disconnect(Reasoned { code, properties })),
    ]
}

fn version() -> impl Strategy<Value = Version> {
    prop_oneof![Just(Version::V311), Just(Version::V5)]
}

fn decode_all(bytes: &[u8], v: Version) -> Result<Option<Packet>, DecodeError> {
    let mut buf = BytesMut::from(bytes);
    let p = decode(&mut buf, v, MAX)?;
    assert!(p.is_none() || buf.is_empty(), "a decoded packet takes exactly its bytes");
    Ok(p)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn every_packet_survives_encode_then_decode(p in version().prop_flat_map(|v| (Just(v), packet(v)))) {
        let (v, p) = p;
        let mut out = BytesMut::new();
        encode(&p, v, &mut out).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let back = decode_all(&out, v).map_err(|e| TestCaseError::fail(format!("{e} for {p:?}")))?;
        prop_assert_eq!(back, Some(p));
    }

    /// A packet that arrives a byte at a time decodes once, when its last byte is in.
    #[test]
    fn a_packet_split_anywhere_waits_for_its_end(p in version().prop_flat_map(|v| (Just(v), packet(v)))) {
        let (v, p) = p;
        let mut whole = BytesMut::new();
        encode(&p, v, &mut whole).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut buf = BytesMut::new();
        for (i, b) in whole.iter().enumerate() {
            buf.extend_from_slice(&[*b]);
            let got = decode(&mut buf, v, MAX).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(got.is_some(), i + 1 == whole.len());
        }
    }

    /// Any bytes: a packet, a wait, or a refusal; never a panic, and a packet decoded from
    /// them encodes back to bytes that decode to it.
    #[test]
    fn arbitrary_bytes_never_panic(v in version(), bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        let mut buf = BytesMut::from(&bytes[..]);
        if let Ok(Some(p)) = decode(&mut buf, v, MAX) {
            let v = match &p { Packet::Connect(c) => c.version, _ => v };
            let mut out = BytesMut::new();
            if encode(&p, v, &mut out).is_ok() {
                prop_assert_eq!(decode_all(&out, v).ok().flatten(), Some(p));
            }
        }
    }
}

fn refused(bytes: &[u8], v: Version) -> DecodeError {
    match decode_all(bytes, v) {
        Err(e) => e,
        other => panic!("{bytes:02x?} decoded as {other:?}"),
    }
}

#[test]
fn malformed_fixed_headers_are_refused_before_their_body_is_waited_for() {
    // Reserved types, reserved flags, QoS 3, DUP on QoS 0: the first byte is enough.
    for (first, v) in [
        (0x00, Version::V5),
        (0xf0, Version::V311),
        (0x36, Version::V5),
        (0x38, Version::V5),
        (0x60, Version::V311),
    ] {
        assert!(matches!(refused(&[first], v), DecodeError::Malformed(_)), "{first:02x}");
    }
    assert!(matches!(refused(&[0x80], Version::V311), DecodeError::Malformed(_)), "SUBSCRIBE without 0010");
    assert!(matches!(refused(&[0xc1], Version::V5), DecodeError::Malformed(_)), "PINGREQ with a flag");
    // A fifth length byte.
    assert!(matches!(refused(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01], Version::V5), DecodeError::Malformed(_)));
    // Over the limit, from its length alone.
    let mut buf = BytesMut::from(&[0x30u8, 0xff, 0xff, 0x7f][..]);
    assert_eq!(
        decode(&mut buf, Version::V5, 1024),
        Err(DecodeError::TooLarge { size: 2_097_155, max: 1024 })
    );
    assert_eq!(DecodeError::TooLarge { size: 0, max: 0 }.reason_code(), 0x95);
}

#[test]
fn bad_connects_get_the_answer_the_specification_gives() {
    let connect = |name: &str, level: u8, flags: u8| {
        let mut body = vec![0, name.len() as u8];
        body.extend_from_slice(name.as_bytes());
        body.extend_from_slice(&[level, flags, 0, 60, 0, 0]);
        let mut p = vec![0x10, body.len() as u8];
        p.extend(body);
        p
    };
    assert!(decode_all(&connect("MQTT", 4, 0x02), Version::V311).is_ok());
    assert_eq!(refused(&connect("MQIsdp", 3, 0x02), Version::V311), DecodeError::UnsupportedVersion(3));
    assert_eq!(refused(&connect("MQTT", 6, 0x02), Version::V311), DecodeError::UnsupportedVersion(6));
    assert!(matches!(refused(&connect("MQIsdp", 4, 0x02), Version::V311), DecodeError::Malformed(_)));
    assert!(matches!(refused(&connect("HTTP", 4, 0x02), Version::V311), DecodeError::Malformed(_)));
    assert!(
        matches!(refused(&connect("MQTT", 4, 0x03), Version::V311), DecodeError::Malformed(_)),
        "reserved flag"
    );
    assert!(
        matches!(refused(&connect("MQTT", 4, 0x18), Version::V311), DecodeError::Malformed(_)),
        "will QoS 3"
    );
    assert!(
        matches!(refused(&connect("MQTT", 4, 0x20), Version::V311), DecodeError::Malformed(_)),
        "will retain, no will"
    );
    assert!(
        matches!(refused(&connect("MQTT", 4, 0x40), Version::V311), DecodeError::Malformed(_)),
        "password, no user"
    );
}

#[test]
fn bad_packets_after_connect_are_refused_with_their_reason() {
    let v5 = Version::V5;
    // PUBLISH QoS 1 with packet id 0.
    assert!(matches!(refused(&[0x32, 0x06, 0, 1, b't', 0, 0, 0], v5), DecodeError::Protocol(_)));
    // PUBLISH with a wildcard topic.
    assert!(matches!(refused(&[0x30, 0x04, 0, 1, b'#', 0], v5), DecodeError::Protocol(_)));
    // PUBLISH with an empty topic and no alias.
    assert!(matches!(refused(&[0x30, 0x03, 0, 0, 0], v5), DecodeError::Protocol(_)));
    // A topic that is not UTF-8, or holds U+0000.
    assert!(matches!(refused(&[0x30, 0x04, 0, 1, 0xff, 0], v5), DecodeError::Malformed(_)));
    assert!(matches!(refused(&[0x30, 0x04, 0, 1, 0x00, 0], v5), DecodeError::Malformed(_)));
    // A property twice, one PUBLISH may not carry, and an unknown one.
    assert!(matches!(refused(&[0x30, 0x08, 0, 1, b't', 4, 0x01, 0, 0x01, 1], v5), DecodeError::Protocol(_)));
    assert!(
        matches!(refused(&[0x30, 0x06, 0, 1, b't', 2, 0x02, 0], v5), DecodeError::Malformed(_)),
        "cut short"
    );
    assert!(
        matches!(refused(&[0x30, 0x09, 0, 1, b't', 5, 0x11, 0, 0, 0, 1], v5), DecodeError::Malformed(_)),
        "§2.2.2.2"
    );
    // A response topic with a wildcard; a property id, a length written longer than needed.
    assert!(matches!(
        refused(&[0x30, 0x0a, 0, 1, b'a', 6, 0x08, 0, 3, b'b', b'/', b'+'], v5),
        DecodeError::Protocol(_)
    ));
    assert!(matches!(refused(&[0x30, 0x07, 0, 1, b't', 3, 0x81, 0x00, 1], v5), DecodeError::Malformed(_)));
    assert!(matches!(refused(&[0xc0, 0x80, 0x00], v5), DecodeError::Malformed(_)));
    // Empty topic filters.
    assert!(matches!(refused(&[0x82, 0x06, 0, 1, 0, 0, 0, 0], v5), DecodeError::Protocol(_)));
    assert!(matches!(refused(&[0xa2, 0x04, 0, 1, 0, 0], Version::V311), DecodeError::Protocol(_)));
    // More user properties than Warren takes.
    let mut props = Vec::new();
    for _ in 0..=crate::properties::MAX_USER_PROPERTIES {
        props.extend_from_slice(&[0x26, 0, 0, 0, 0]);
    }
    let mut body = BytesMut::from(&[0u8, 1, b't'][..]);
    crate::wire::put_varint(&mut body, props.len() as u32).expect("fits");
    body.extend_from_slice(&props);
    let mut packet = BytesMut::from(&[0x30u8][..]);
    crate::wire::put_varint(&mut packet, body.len() as u32).expect("fits");
    packet.extend_from_slice(&body);
    assert!(matches!(refused(&packet, v5), DecodeError::Protocol(_)));
    assert!(matches!(refused(&[0x30, 0x06, 0, 1, b't', 2, 0x7f, 0], v5), DecodeError::Malformed(_)));
    // A property list longer than the packet.
    assert!(matches!(refused(&[0x30, 0x04, 0, 1, b't', 9], v5), DecodeError::Malformed(_)));
    // SUBSCRIBE without a filter, with reserved option bits, with retain handling 3.
    assert!(matches!(refused(&[0x82, 0x03, 0, 1, 0], v5), DecodeError::Protocol(_)));
    assert!(matches!(refused(&[0x82, 0x07, 0, 1, 0, 0, 1, b'a', 0xc0], v5), DecodeError::Malformed(_)));
    assert!(matches!(refused(&[0x82, 0x07, 0, 1, 0, 0, 1, b'a', 0x30], v5), DecodeError::Protocol(_)));
    assert!(matches!(
        refused(&[0x82, 0x06, 0, 1, 0, 1, b'a', 0x04], Version::V311),
        DecodeError::Malformed(_)
    ));
    // Bytes after a PINGREQ's end, and after a 3.1.1 PUBACK's.
    assert!(matches!(refused(&[0xc0, 0x01, 0], v5), DecodeError::Malformed(_)));
    assert!(matches!(refused(&[0x40, 0x03, 0, 1, 0], Version::V311), DecodeError::Malformed(_)));
    // AUTH is MQTT 5's alone.
    assert!(matches!(refused(&[0xf0, 0x00], Version::V311), DecodeError::Malformed(_)));
    assert_eq!(
        decode_all(&[0xf0, 0x00], v5),
        Ok(Some(Packet::Auth(Reasoned { code: 0, properties: Properties::default() })))
    );
}

#[test]
fn a_publish_payload_is_a_view_of_the_bytes_received() {
    let mut out = BytesMut::new();
    let p = Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: "t".into(),
        packet_id: None,
        properties: Properties::default(),
        payload: Bytes::from_static(b"hello"),
    };
    encode(&Packet::Publish(p), Version::V311, &mut out).expect("encodes");
    let received = out.clone();
    let start = received.as_ptr() as usize;
    let mut buf = received;
    let Ok(Some(Packet::Publish(got))) = decode(&mut buf, Version::V311, MAX) else { panic!("a publish") };
    let at = got.payload.as_ptr() as usize;
    assert!(at >= start && at < start + out.len(), "no copy");
}

#[test]
fn what_3_1_1_cannot_say_is_refused_by_the_encoder() {
    let mut out = BytesMut::new();
    let with_code = Packet::PubAck(Ack { packet_id: 1, code: 0x80, properties: Properties::default() });
    assert!(encode(&with_code, Version::V311, &mut out).is_err());
    assert!(
        encode(
            &Packet::Auth(Reasoned { code: 0, properties: Properties::default() }),
            Version::V311,
            &mut out
        )
        .is_err()
    );
    let long = Packet::Unsubscribe(Unsubscribe {
        packet_id: 1,
        properties: Properties::default(),
        filters: vec!["x".repeat(70_000)],
    });
    assert!(encode(&long, Version::V311, &mut out).is_err());
    assert!(out.is_empty(), "a refused packet writes nothing");
}
