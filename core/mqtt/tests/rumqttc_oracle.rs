//! Our codec against rumqttc's (the round-trip oracle, as amq-protocol is for AMQP): MQTT
//! 3.1.1 packets written by one are read by the other as the same packet, both ways.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use rumqttc::mqttbytes::v4 as theirs;
use rumqttc::mqttbytes::{Protocol, QoS as TheirQoS};
use warren_mqtt::*;

fn their_qos(q: QoS) -> TheirQoS {
    match q {
        QoS::AtMostOnce => TheirQoS::AtMostOnce,
        QoS::AtLeastOnce => TheirQoS::AtLeastOnce,
        QoS::ExactlyOnce => TheirQoS::ExactlyOnce,
    }
}

/// The same packet in rumqttc's types.
fn to_theirs(p: &Packet) -> theirs::Packet {
    match p {
        Packet::Connect(c) => theirs::Packet::Connect(theirs::Connect {
            protocol: Protocol::V4,
            keep_alive: c.keep_alive,
            client_id: c.client_id.clone(),
            clean_session: c.clean_start,
            last_will: c.will.as_ref().map(|w| theirs::LastWill {
                topic: w.topic.clone(),
                message: w.payload.clone(),
                qos: their_qos(w.qos),
                retain: w.retain,
            }),
            login: c.username.as_ref().map(|u| theirs::Login {
                username: u.clone(),
                password: c
                    .password
                    .as_ref()
                    .map(|p| String::from_utf8_lossy(p).into_owned())
                    .unwrap_or_default(),
            }),
        }),
        Packet::ConnAck(c) => theirs::Packet::ConnAck(theirs::ConnAck {
            session_present: c.session_present,
            code: match c.code {
                0 => theirs::ConnectReturnCode::Success,
                1 => theirs::ConnectReturnCode::RefusedProtocolVersion,
                2 => theirs::ConnectReturnCode::BadClientId,
                3 => theirs::ConnectReturnCode::ServiceUnavailable,
                4 => theirs::ConnectReturnCode::BadUserNamePassword,
                _ => theirs::ConnectReturnCode::NotAuthorized,
            },
        }),
        Packet::Publish(p) => theirs::Packet::Publish(theirs::Publish {
            dup: p.dup,
            qos: their_qos(p.qos),
            retain: p.retain,
            topic: p.topic.clone(),
            pkid: p.packet_id.unwrap_or(0),
            payload: p.payload.clone(),
        }),
        Packet::PubAck(a) => theirs::Packet::PubAck(theirs::PubAck { pkid: a.packet_id }),
        Packet::PubRec(a) => theirs::Packet::PubRec(theirs::PubRec { pkid: a.packet_id }),
        Packet::PubRel(a) => theirs::Packet::PubRel(theirs::PubRel { pkid: a.packet_id }),
        Packet::PubComp(a) => theirs::Packet::PubComp(theirs::PubComp { pkid: a.packet_id }),
        Packet::Subscribe(s) => theirs::Packet::Subscribe(theirs::Subscribe {
            pkid: s.packet_id,
            filters: s
                .filters
                .iter()
                .map(|f| theirs::SubscribeFilter { path: f.filter.clone(), qos: their_qos(f.qos) })
                .collect(),
        }),
        Packet::SubAck(s) => theirs::Packet::SubAck(theirs::SubAck {
            pkid: s.packet_id,
            return_codes: s
                .codes
                .iter()
                .map(|c| match QoS::from_bits(*c) {
                    Some(q) => theirs::SubscribeReasonCode::Success(their_qos(q)),
                    None => theirs::SubscribeReasonCode::Failure,
                })
                .collect(),
        }),
        Packet::Unsubscribe(u) => {
            theirs::Packet::Unsubscribe(theirs::Unsubscribe { pkid: u.packet_id, topics: u.filters.clone() })
        }
        Packet::UnsubAck(u) => theirs::Packet::UnsubAck(theirs::UnsubAck { pkid: u.packet_id }),
        Packet::PingReq => theirs::Packet::PingReq,
        Packet::PingResp => theirs::Packet::PingResp,
        Packet::Disconnect(_) | Packet::Auth(_) => theirs::Packet::Disconnect,
    }
}

fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![Just(QoS::AtMostOnce), Just(QoS::AtLeastOnce), Just(QoS::ExactlyOnce)]
}

fn name() -> impl Strategy<Value = String> {
    "[a-z0-9é]{1,6}(/[a-z0-9.]{0,5}){0,3}"
}

fn text() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 /._é-]{1,12}"
}

fn payload() -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..40).prop_map(Bytes::from)
}

/// The 3.1.1 packets both codecs can say alike (rumqttc's login is a user name and a
/// UTF-8 password together; its SUBACK codes are granted QoS or 0x80).
fn packet() -> impl Strategy<Value = Packet> {
    let none = Properties::default;
    let will = proptest::option::of((name(), payload(), qos(), any::<bool>()));
    let login = proptest::option::of((text(), text()));
    prop_oneof![
        (text(), any::<bool>(), any::<u16>(), will, login).prop_map(
            move |(client_id, clean_start, keep_alive, will, login)| {
                Packet::Connect(Box::new(Connect {
                    version: Version::V311,
                    client_id,
                    clean_start,
                    keep_alive,
                    username: login.as_ref().map(|l| l.0.clone()),
                    password: login.map(|l| Bytes::from(l.1)),
                    will: will.map(|(topic, payload, qos, retain)| Will {
                        topic,
                        payload,
                        qos,
                        retain,
                        properties: none(),
                    }),
                    properties: none(),
                }))
            }
        ),
        (any::<bool>(), 0..6u8).prop_map(move |(session_present, code)| Packet::ConnAck(ConnAck {
            session_present,
            code,
            properties: none()
        })),
        (qos(), any::<bool>(), any::<bool>(), name(), 1..=u16::MAX, payload()).prop_map(
            move |(qos, dup, retain, topic, id, payload)| {
                let zero = qos == QoS::AtMostOnce;
                Packet::Publish(Publish {
                    dup: dup && !zero,
                    qos,
                    retain,
                    topic,
                    packet_id: (!zero).then_some(id),
                    properties: none(),
                    payload,
                })
            }
        ),
        (1..=u16::MAX).prop_map(|id| Packet::PubAck(Ack::ok(id))),
        (1..=u16::MAX).prop_map(|id| Packet::PubRec(Ack::ok(id))),
        (1..=u16::MAX).prop_map(|id| Packet::PubRel(Ack::ok(id))),
        (1..=u16::MAX).prop_map(|id| Packet::PubComp(Ack::ok(id))),
        (1..=u16::MAX, proptest::collection::vec((text(), qos()), 1..4)).prop_map(move |(packet_id, fs)| {
            let filters = fs
                .into_iter()
                .map(|(filter, qos)| Subscription {
                    filter,
                    qos,
                    no_local: false,
                    retain_as_published: false,
                    retain_handling: 0,
                })
                .collect();
            Packet::Subscribe(Subscribe { packet_id, properties: none(), filters })
        }),
        (1..=u16::MAX, proptest::collection::vec(prop_oneof![Just(0u8), Just(1), Just(2), Just(0x80)], 1..4))
            .prop_map(move |(packet_id, codes)| Packet::SubAck(SubAck {
                packet_id,
                properties: none(),
                codes
            })),
        (1..=u16::MAX, proptest::collection::vec(text(), 1..4)).prop_map(move |(packet_id, filters)| {
            Packet::Unsubscribe(Unsubscribe { packet_id, properties: none(), filters })
        }),
        (1..=u16::MAX).prop_map(move |packet_id| Packet::UnsubAck(UnsubAck {
            packet_id,
            properties: none(),
            codes: Vec::new()
        })),
        Just(Packet::PingReq),
        Just(Packet::PingResp),
        Just(Packet::Disconnect(Reasoned { code: 0, properties: Properties::default() })),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn rumqttc_reads_what_we_write(p in packet()) {
        let mut out = BytesMut::new();
        encode(&p, Version::V311, &mut out).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let bytes = out.clone();
        let read = theirs::Packet::read(&mut out, 1 << 20).map_err(|e| TestCaseError::fail(format!("{e:?} reading {bytes:02x?}")))?;
        prop_assert_eq!(read, to_theirs(&p));
        prop_assert!(out.is_empty());
    }

    #[test]
    fn we_read_what_rumqttc_writes(p in packet()) {
        let mut out = BytesMut::new();
        to_theirs(&p).write(&mut out, 1 << 20).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
        let read = decode(&mut out, Version::V311, 1 << 20).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(read, Some(p));
        prop_assert!(out.is_empty());
    }
}

mod v5 {
    //! MQTT 5 PUBLISH (with every property a PUBLISH may carry) and SUBSCRIBE (with the
    //! version's subscription options), both ways.

    use super::*;
    use rumqttc::v5::mqttbytes::QoS as Q5;
    use rumqttc::v5::mqttbytes::v5 as their5;

    fn q5(q: QoS) -> Q5 {
        match q {
            QoS::AtMostOnce => Q5::AtMostOnce,
            QoS::AtLeastOnce => Q5::AtLeastOnce,
            QoS::ExactlyOnce => Q5::ExactlyOnce,
        }
    }

    fn publish() -> impl Strategy<Value = Publish> {
        let props = (
            proptest::option::of(0..2u8),
            proptest::option::of(any::<u32>()),
            proptest::option::of(1..=u16::MAX),
            proptest::option::of(name()),
            proptest::option::of(payload()),
            proptest::collection::vec((text(), text()), 0..3),
            proptest::collection::vec(1..268_435_455u32, 0..3),
            proptest::option::of(text()),
        )
            .prop_map(|(pfi, expiry, alias, response, correlation, user, ids, content_type)| Properties {
                payload_format_indicator: pfi,
                message_expiry_interval: expiry,
                topic_alias: alias,
                response_topic: response,
                correlation_data: correlation,
                user_properties: user,
                subscription_identifiers: ids,
                content_type,
                ..Properties::default()
            });
        (qos(), any::<bool>(), any::<bool>(), name(), 1..=u16::MAX, props, payload()).prop_map(
            |(qos, dup, retain, topic, id, properties, payload)| {
                let zero = qos == QoS::AtMostOnce;
                Publish {
                    dup: dup && !zero,
                    qos,
                    retain,
                    topic,
                    packet_id: (!zero).then_some(id),
                    properties,
                    payload,
                }
            },
        )
    }

    fn theirs(p: &Publish) -> their5::Publish {
        let q = &p.properties;
        let properties = (!q.is_empty()).then(|| their5::PublishProperties {
            payload_format_indicator: q.payload_format_indicator,
            message_expiry_interval: q.message_expiry_interval,
            topic_alias: q.topic_alias,
            response_topic: q.response_topic.clone(),
            correlation_data: q.correlation_data.clone(),
            user_properties: q.user_properties.clone(),
            subscription_identifiers: q.subscription_identifiers.iter().map(|&i| i as usize).collect(),
            content_type: q.content_type.clone(),
        });
        their5::Publish {
            dup: p.dup,
            qos: q5(p.qos),
            retain: p.retain,
            topic: Bytes::from(p.topic.clone()),
            pkid: p.packet_id.unwrap_or(0),
            payload: p.payload.clone(),
            properties,
        }
    }

    fn subscribe() -> impl Strategy<Value = Subscribe> {
        let filter = (text(), qos(), any::<bool>(), any::<bool>(), 0..3u8).prop_map(
            |(filter, qos, no_local, rap, rh)| Subscription {
                filter,
                qos,
                no_local,
                retain_as_published: rap,
                retain_handling: rh,
            },
        );
        let props =
            (proptest::option::of(1..268_435_455u32), proptest::collection::vec((text(), text()), 0..2))
                .prop_map(|(id, user)| Properties {
                    subscription_identifiers: id.into_iter().collect(),
                    user_properties: user,
                    ..Properties::default()
                });
        (1..=u16::MAX, props, proptest::collection::vec(filter, 1..4))
            .prop_map(|(packet_id, properties, filters)| Subscribe { packet_id, properties, filters })
    }

    fn their_subscribe(s: &Subscribe) -> their5::Subscribe {
        their5::Subscribe {
            pkid: s.packet_id,
            filters: s
                .filters
                .iter()
                .map(|f| their5::Filter {
                    path: f.filter.clone(),
                    qos: q5(f.qos),
                    nolocal: f.no_local,
                    preserve_retain: f.retain_as_published,
                    retain_forward_rule: match f.retain_handling {
                        0 => their5::RetainForwardRule::OnEverySubscribe,
                        1 => their5::RetainForwardRule::OnNewSubscribe,
                        _ => their5::RetainForwardRule::Never,
                    },
                })
                .collect(),
            properties: (!s.properties.is_empty()).then(|| their5::SubscribeProperties {
                id: s.properties.subscription_identifiers.first().map(|&i| i as usize),
                user_properties: s.properties.user_properties.clone(),
            }),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        #[test]
        fn publish_both_ways(p in publish()) {
            let mut out = BytesMut::new();
            encode(&Packet::Publish(p.clone()), Version::V5, &mut out).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let read = their5::Packet::read(&mut out, None).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
            prop_assert_eq!(read, their5::Packet::Publish(theirs(&p)));
            let mut out = BytesMut::new();
            their5::Packet::Publish(theirs(&p)).write(&mut out, None).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
            let ours = decode(&mut out, Version::V5, 1 << 20).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(ours, Some(Packet::Publish(p)));
        }

        #[test]
        fn subscribe_both_ways(s in subscribe()) {
            let mut out = BytesMut::new();
            encode(&Packet::Subscribe(s.clone()), Version::V5, &mut out).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let read = their5::Packet::read(&mut out, None).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
            prop_assert_eq!(read, their5::Packet::Subscribe(their_subscribe(&s)));
            let mut out = BytesMut::new();
            their5::Packet::Subscribe(their_subscribe(&s)).write(&mut out, None).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
            let ours = decode(&mut out, Version::V5, 1 << 20).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(ours, Some(Packet::Subscribe(s)));
        }
    }
}
