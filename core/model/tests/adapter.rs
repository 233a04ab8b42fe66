//! An adapter's session (`warren_core::adapter::Bridge`) beside AMQP clients in one broker
//! in memory: its operations answered in order, its publishes confirmed and routed to AMQP
//! consumers, AMQP publishes delivered to it, and a refused operation costing only its own
//! channel.
#![allow(clippy::disallowed_methods)] // one real Instant to start the virtual clock from

use std::time::Instant;

use warren_core::adapter::{Answer, Bridge, Op};
use warren_core::broker::ConnectionInfo;
use warren_core::harness::Harness;

fn bridge(h: &mut Harness) -> Bridge {
    let info =
        ConnectionInfo { user: "guest".into(), vhost: "/".into(), name: "mqtt".into(), ..Default::default() };
    let mut b = Bridge::open(&mut h.broker, info).expect("guest may use /");
    assert!(b.poll(&mut h.broker).is_empty(), "the bridge's own replies are not answers");
    b
}

fn done(answers: &[Answer]) -> Vec<(u64, Result<bool, u16>)> {
    answers
        .iter()
        .filter_map(|a| match a {
            Answer::Done { id, result } => Some((*id, result.clone().map_err(|e| e.code))),
            _ => None,
        })
        .collect()
}

#[test]
fn operations_are_answered_in_order_and_a_refusal_costs_only_its_channel() {
    let mut h = Harness::new(Instant::now());
    let mut b = bridge(&mut h);
    let declare = |id, name: &str| Op::DeclareQueue {
        id,
        name: name.into(),
        durable: false,
        exclusive: true,
        expires_ms: Some(60_000),
    };
    b.submit(&mut h.broker, declare(1, "mqtt-subscription-aqos1"));
    b.submit(&mut h.broker, declare(2, "mqtt-subscription-aqos1"));
    let bind = |id, exchange: &str, key: &str| Op::Bind {
        id,
        queue: "mqtt-subscription-aqos1".into(),
        exchange: exchange.into(),
        key: key.into(),
    };
    b.submit(&mut h.broker, bind(3, "amq.topic", "a.*"));
    b.submit(&mut h.broker, bind(4, "no-such-exchange", "a"));
    b.submit(&mut h.broker, bind(5, "amq.topic", "b.#"));
    let answers = b.poll(&mut h.broker);
    assert_eq!(
        done(&answers),
        [(1, Ok(false)), (2, Ok(true)), (3, Ok(false)), (4, Err(404)), (5, Ok(false))]
    );
    assert_eq!(h.broker.queue_counts("mqtt-subscription-aqos1").map(|c| c.0), Some(0));
}

fn publish(confirm: u64, exchange: &str, key: &str, body: &'static [u8]) -> Op {
    Op::Publish {
        confirm: Some(confirm),
        exchange: exchange.into(),
        routing_key: key.into(),
        properties: Box::new(warren_codec::BasicProperties { delivery_mode: Some(2), ..Default::default() }),
        body: bytes::Bytes::from_static(body),
    }
}

#[test]
fn its_publishes_are_confirmed_and_reach_amqp_consumers_and_a_refused_one_is_told() {
    use warren_codec::{BasicConsume, Method, QueueBind, QueueDeclare};
    let mut h = Harness::new(Instant::now());
    let amqp = h.open();
    h.open_channel(amqp, 1);
    h.send_method(amqp, 1, QueueDeclare { queue: "readings".into(), ..Default::default() });
    assert!(matches!(h.method(amqp), Some(Method::QueueDeclareOk(_))));
    let bind = QueueBind {
        queue: "readings".into(),
        exchange: "amq.topic".into(),
        routing_key: "home.#".into(),
        ..Default::default()
    };
    h.send_method(amqp, 1, bind);
    assert!(matches!(h.method(amqp), Some(Method::QueueBindOk(_))));

    let mut b = bridge(&mut h);
    b.submit(&mut h.broker, publish(7, "amq.topic", "home.kitchen.temp", b"21.5"));
    b.submit(&mut h.broker, publish(8, "no-such-exchange", "x", b"lost"));
    b.submit(&mut h.broker, publish(9, "amq.topic", "home.hall.temp", b"19.0"));
    let answers = b.poll(&mut h.broker);
    assert_eq!(answers, [Answer::Confirmed(7), Answer::Refused(8), Answer::Confirmed(9)]);
    assert_eq!(h.broker.queue_counts("readings").map(|c| c.0), Some(2));

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
    let bodies: Vec<Vec<u8>> = frames
        .into_iter()
        .filter_map(|f| match f {
            warren_codec::Frame::Body { payload, .. } => Some(payload.to_vec()),
            _ => None,
        })
        .collect();
    assert_eq!(bodies, [b"21.5".to_vec(), b"19.0".to_vec()]);
}

#[test]
fn amqp_publishes_reach_its_consumer_and_what_it_did_not_ack_goes_back_when_it_closes() {
    use warren_codec::{BasicProperties, BasicPublish};
    let mut h = Harness::new(Instant::now());
    let mut b = bridge(&mut h);
    let queue = "mqtt-subscription-cqos1".to_string();
    b.submit(
        &mut h.broker,
        Op::DeclareQueue { id: 1, name: queue.clone(), durable: true, exclusive: false, expires_ms: None },
    );
    b.submit(
        &mut h.broker,
        Op::Bind { id: 2, queue: queue.clone(), exchange: "amq.topic".into(), key: "alerts.*".into() },
    );
    b.submit(&mut h.broker, Op::Consume { id: 3, queue: queue.clone(), prefetch: 1 });
    assert_eq!(done(&b.poll(&mut h.broker)), [(1, Ok(false)), (2, Ok(false)), (3, Ok(false))]);

    let amqp = h.open();
    h.open_channel(amqp, 1);
    for body in [&b"fire"[..], b"flood"] {
        let m = BasicPublish {
            exchange: "amq.topic".into(),
            routing_key: "alerts.house".into(),
            ..Default::default()
        };
        let mut buf = bytes::BytesMut::new();
        warren_codec::encode_content(
            &mut buf,
            1,
            m,
            &BasicProperties::default(),
            &bytes::Bytes::from_static(body),
            131_072,
        );
        h.send(amqp, &buf);
    }
    let answers = b.poll(&mut h.broker);
    let [Answer::Delivery { delivery_tag, message, .. }] = &answers[..] else {
        panic!("prefetch 1: {answers:?}")
    };
    assert_eq!((&message.body[..], message.routing_key.as_str()), (&b"fire"[..], "alerts.house"));
    b.submit(&mut h.broker, Op::Ack { delivery_tag: *delivery_tag });
    let answers = b.poll(&mut h.broker);
    assert!(
        matches!(&answers[..], [Answer::Delivery { message, .. }] if &message.body[..] == b"flood"),
        "{answers:?}"
    );
    b.close_session(&mut h.broker);
    assert_eq!(h.broker.queue_counts(&queue).map(|c| c.0), Some(1), "the unacked one is back");
}

#[test]
fn a_consume_it_may_not_make_is_refused_and_its_consumer_reported_lost() {
    let mut h = Harness::new(Instant::now());
    let mut b = bridge(&mut h);
    b.submit(&mut h.broker, Op::Consume { id: 1, queue: "missing".into(), prefetch: 10 });
    let answers = b.poll(&mut h.broker);
    assert_eq!(done(&answers), [(1, Err(404))]);
    assert!(answers.iter().any(|a| matches!(a, Answer::ConsumerLost(_))));
    // Its topology channel still works.
    b.submit(&mut h.broker, Op::DeleteQueue { id: 2, name: "missing".into() });
    assert_eq!(done(&b.poll(&mut h.broker)), [(2, Ok(false))]);
}

#[test]
fn operations_on_a_channel_go_one_at_a_time_and_queues_are_looked_up_in_the_sessions_vhost() {
    use warren_codec::{Method, QueueDeclare};
    let mut h = Harness::new(Instant::now());
    // A queue of the same name in `/`: the session in `a` must not take it for its own.
    let amqp = h.open();
    h.open_channel(amqp, 1);
    h.send_method(amqp, 1, QueueDeclare { queue: "q".into(), ..Default::default() });
    assert!(matches!(h.method(amqp), Some(Method::QueueDeclareOk(_))));
    h.broker.add_vhost("a");
    let info = ConnectionInfo { user: "guest".into(), vhost: "a".into(), ..Default::default() };
    let mut b = Bridge::open(&mut h.broker, info).expect("guest may use a");
    let declare =
        |id| Op::DeclareQueue { id, name: "q".into(), durable: false, exclusive: false, expires_ms: None };
    b.submit(&mut h.broker, declare(1));
    b.submit(
        &mut h.broker,
        Op::Bind { id: 2, queue: "q".into(), exchange: "amq.topic".into(), key: "k".into() },
    );
    // The bind waits for the declare's -ok (a durable one may be held for its sync).
    assert_eq!(h.broker.queue_counts_in(h.broker.vhosts().id("a").expect("a"), "q").map(|c| c.0), Some(0));
    assert_eq!(done(&b.poll(&mut h.broker)), [(1, Ok(false)), (2, Ok(false))], "not there before, in `a`");
    b.submit(&mut h.broker, declare(3));
    assert_eq!(done(&b.poll(&mut h.broker)), [(3, Ok(true))]);
}

#[test]
fn once_the_broker_closes_the_session_every_operation_is_refused() {
    let mut h = Harness::new(Instant::now());
    let mut b = bridge(&mut h);
    h.broker.close_connection(b.conn(), "an operator closed it");
    let answers = b.poll(&mut h.broker);
    assert!(answers.iter().any(|a| matches!(a, Answer::Closed(_))), "{answers:?}");
    assert!(b.closed().is_some());
    b.submit(
        &mut h.broker,
        Op::Bind { id: 1, queue: "q".into(), exchange: "amq.topic".into(), key: "k".into() },
    );
    b.submit(&mut h.broker, publish(2, "amq.topic", "k", b"x"));
    let answers = b.poll(&mut h.broker);
    assert_eq!(done(&answers), [(1, Err(504))]);
    assert!(answers.contains(&Answer::Refused(2)), "{answers:?}");
    b.close_session(&mut h.broker);
}
