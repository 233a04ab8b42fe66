//! Quorum queues served by the broker, frame by frame in memory on virtual time: what a
//! client sees of a one-member quorum queue (RabbitMQ 4.3's answers), with the machine in
//! `queue/quorum/` deciding and the broker translating.
#![allow(clippy::disallowed_methods)] // one real Instant to start the virtual clock from

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use warren_codec::*;
use warren_core::harness::{Client, Harness};

fn harness() -> Harness {
    Harness::new(Instant::now())
}

fn args(pairs: &[(&str, FieldValue)]) -> FieldTable {
    pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
}

fn quorum(extra: &[(&str, FieldValue)]) -> FieldTable {
    let mut t = args(&[("x-queue-type", FieldValue::str("quorum"))]);
    t.extend(args(extra));
    t
}

/// A client with channel 1 open.
fn client(h: &mut Harness) -> Client {
    let c = h.open();
    h.open_channel(c, 1);
    c
}

fn declare(h: &mut Harness, c: Client, queue: &str, durable: bool, arguments: FieldTable) -> Method {
    h.send_method(c, 1, QueueDeclare { queue: queue.into(), durable, arguments, ..Default::default() });
    h.method(c).expect("an answer to queue.declare")
}

fn publish(h: &mut Harness, c: Client, key: &str, body: &str, props: BasicProperties) {
    let mut buf = BytesMut::new();
    let m = BasicPublish { routing_key: key.into(), ..Default::default() };
    encode_content(&mut buf, 1, m, &props, &Bytes::copy_from_slice(body.as_bytes()), 131_072);
    h.send(c, &buf);
}

fn consume(h: &mut Harness, c: Client, queue: &str, tag: &str, no_ack: bool) {
    let m = BasicConsume { queue: queue.into(), consumer_tag: tag.into(), no_ack, ..Default::default() };
    h.send_method(c, 1, m);
}

/// A delivery as the client saw it.
#[derive(Debug)]
struct Seen {
    tag: u64,
    redelivered: bool,
    body: String,
    delivery_count: Option<i64>,
}

/// Every delivery waiting for `c` (other frames are skipped).
fn deliveries(h: &mut Harness, c: Client) -> Vec<Seen> {
    let mut out = Vec::new();
    let mut frames = h.drain(c).into_iter();
    while let Some(f) = frames.next() {
        let Frame::Method { method: Method::BasicDeliver(d), .. } = f else { continue };
        let Some(Frame::Header { header, .. }) = frames.next() else { panic!("a header after a deliver") };
        let body = match header.body_size {
            0 => String::new(),
            _ => match frames.next() {
                Some(Frame::Body { payload, .. }) => String::from_utf8_lossy(&payload).into_owned(),
                other => panic!("a body, got {other:?}"),
            },
        };
        let count = header
            .properties
            .headers
            .as_ref()
            .and_then(|h| h.get("x-delivery-count"))
            .and_then(FieldValue::as_i64);
        out.push(Seen { tag: d.delivery_tag, redelivered: d.redelivered, body, delivery_count: count });
    }
    out
}

fn bodies(seen: &[Seen]) -> Vec<&str> {
    seen.iter().map(|s| s.body.as_str()).collect()
}

#[test]
fn a_quorum_queue_takes_publishes_and_hands_them_out_in_order_within_the_prefetch() {
    let mut h = harness();
    let c = client(&mut h);
    assert!(matches!(declare(&mut h, c, "qq", true, quorum(&[])), Method::QueueDeclareOk(_)));
    // Redeclared alike: fine; as another type: RabbitMQ's inequivalent-argument 406.
    assert!(matches!(declare(&mut h, c, "qq", true, quorum(&[])), Method::QueueDeclareOk(_)));
    h.send_method(c, 1, ConfirmSelect::default());
    assert!(matches!(h.method(c), Some(Method::ConfirmSelectOk(_))));
    for i in 0..5 {
        publish(&mut h, c, "qq", &format!("m{i}"), BasicProperties::default());
    }
    let acks: Vec<Method> = std::iter::from_fn(|| h.method(c)).collect();
    assert!(acks.iter().all(|m| matches!(m, Method::BasicAck(_))), "{acks:?}");
    assert_eq!(h.broker.queue_counts("qq"), Some((5, 0, 0)));
    h.send_method(c, 1, BasicQos { prefetch_count: 2, ..Default::default() });
    assert!(matches!(h.method(c), Some(Method::BasicQosOk(_))));
    consume(&mut h, c, "qq", "ctag", false);
    assert!(matches!(h.method(c), Some(Method::BasicConsumeOk(_))), "consume-ok before deliveries");
    let first = deliveries(&mut h, c);
    assert_eq!(bodies(&first), ["m0", "m1"], "the prefetch holds back the rest");
    assert_eq!(h.broker.queue_counts("qq"), Some((3, 2, 1)));
    h.send_method(c, 1, BasicAck { delivery_tag: first[1].tag, multiple: true });
    let next = deliveries(&mut h, c);
    assert_eq!(bodies(&next), ["m2", "m3"]);
    h.send_method(c, 1, BasicAck { delivery_tag: next[0].tag, multiple: false });
    assert_eq!(bodies(&deliveries(&mut h, c)), ["m4"]);
    assert_eq!(h.broker.queue_counts("qq"), Some((0, 2, 1)));
}

#[test]
fn rejects_count_towards_the_delivery_limit_and_nacks_do_not() {
    let mut h = harness();
    let c = client(&mut h);
    declare(&mut h, c, "dead", false, FieldTable::new());
    let a = quorum(&[
        ("x-delivery-limit", FieldValue::I64(2)),
        ("x-dead-letter-exchange", FieldValue::str("")),
        ("x-dead-letter-routing-key", FieldValue::str("dead")),
    ]);
    assert!(matches!(declare(&mut h, c, "qq", true, a), Method::QueueDeclareOk(_)));
    publish(&mut h, c, "qq", "poison", BasicProperties::default());
    consume(&mut h, c, "qq", "ctag", false);
    h.method(c);
    // A nack with requeue is no failed delivery (RabbitMQ 4.3): no count, however many.
    for _ in 0..3 {
        let d = deliveries(&mut h, c);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].delivery_count, None);
        h.send_method(c, 1, BasicNack { delivery_tag: d[0].tag, multiple: false, requeue: true });
    }
    // Each reject counts; the third goes past the limit of 2 and is dead-lettered.
    for want in [Some(1), Some(2)] {
        let d = deliveries(&mut h, c);
        assert_eq!(d.len(), 1, "delivered again");
        assert!(d[0].redelivered);
        h.send_method(c, 1, BasicReject { delivery_tag: d[0].tag, requeue: true });
        let again = deliveries(&mut h, c);
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].delivery_count, want, "x-delivery-count after {want:?} rejects");
        h.send_method(c, 1, BasicNack { delivery_tag: again[0].tag, multiple: false, requeue: true });
    }
    let d = deliveries(&mut h, c);
    h.send_method(c, 1, BasicReject { delivery_tag: d[0].tag, requeue: true });
    assert!(deliveries(&mut h, c).is_empty(), "past the limit: not delivered again");
    assert_eq!(h.broker.queue_counts("qq"), Some((0, 0, 1)));
    assert_eq!(h.broker.queue_counts("dead"), Some((1, 0, 0)), "dead-lettered");
}

#[test]
fn a_closed_channel_gives_its_deliveries_back_as_failed_ones_to_the_next_consumer() {
    let mut h = harness();
    let a = client(&mut h);
    declare(&mut h, a, "qq", true, quorum(&[]));
    for i in 0..3 {
        publish(&mut h, a, "qq", &format!("m{i}"), BasicProperties::default());
    }
    consume(&mut h, a, "qq", "first", false);
    h.method(a);
    assert_eq!(deliveries(&mut h, a).len(), 3);
    let b = client(&mut h);
    consume(&mut h, b, "qq", "second", false);
    h.method(b);
    assert!(deliveries(&mut h, b).is_empty(), "all three are the first consumer's");
    h.disconnect(a);
    let d = deliveries(&mut h, b);
    assert_eq!(bodies(&d), ["m0", "m1", "m2"], "back in publish order");
    assert!(d.iter().all(|s| s.redelivered && s.delivery_count == Some(1)), "{d:?}");
    h.send_method(b, 1, BasicRecover { requeue: true });
    // The redeliveries and recover-ok, in the order a classic queue sends them too.
    let d = deliveries(&mut h, b);
    assert_eq!(d.len(), 3, "a recover gives them back, and they come again");
    assert!(d.iter().all(|s| s.delivery_count == Some(1)), "a recover is no failed delivery: {d:?}");
}

#[test]
fn basic_get_purge_and_auto_ack_go_through_the_machine() {
    let mut h = harness();
    let c = client(&mut h);
    declare(&mut h, c, "qq", true, quorum(&[]));
    for i in 0..4 {
        publish(&mut h, c, "qq", &format!("m{i}"), BasicProperties::default());
    }
    h.send_method(c, 1, BasicGet { queue: "qq".into(), no_ack: false, ..Default::default() });
    let Some(Method::BasicGetOk(ok)) = h.method(c) else { panic!("get-ok") };
    assert_eq!(ok.message_count, 3);
    h.drain(c);
    assert_eq!(h.broker.queue_counts("qq"), Some((3, 1, 0)));
    h.send_method(c, 1, QueuePurge { queue: "qq".into(), ..Default::default() });
    let Some(Method::QueuePurgeOk(p)) = h.method(c) else { panic!("purge-ok") };
    assert_eq!(p.message_count, 3, "ready ones go; the unacked one stays");
    h.send_method(c, 1, BasicReject { delivery_tag: ok.delivery_tag, requeue: true });
    assert_eq!(h.broker.queue_counts("qq"), Some((1, 0, 0)), "rejected back into the queue");
    consume(&mut h, c, "qq", "auto", true);
    h.method(c);
    assert_eq!(bodies(&deliveries(&mut h, c)), ["m0"]);
    publish(&mut h, c, "qq", "late", BasicProperties::default());
    assert_eq!(bodies(&deliveries(&mut h, c)), ["late"]);
    assert_eq!(h.broker.queue_counts("qq"), Some((0, 0, 1)), "auto-ack settles as it delivers");
    h.send_method(c, 1, BasicGet { queue: "qq".into(), no_ack: true, ..Default::default() });
    assert!(matches!(h.method(c), Some(Method::BasicGetEmpty(_))));
}

#[test]
fn ttl_length_limits_and_x_expires_are_the_machines() {
    let mut h = harness();
    let c = client(&mut h);
    declare(&mut h, c, "dead", false, FieldTable::new());
    let a = quorum(&[
        ("x-message-ttl", FieldValue::I64(1000)),
        ("x-max-length", FieldValue::I64(2)),
        ("x-dead-letter-exchange", FieldValue::str("")),
        ("x-dead-letter-routing-key", FieldValue::str("dead")),
    ]);
    declare(&mut h, c, "qq", true, a);
    for i in 0..3 {
        publish(&mut h, c, "qq", &format!("m{i}"), BasicProperties::default());
    }
    assert_eq!(h.broker.queue_counts("qq"), Some((2, 0, 0)), "drop-head keeps two");
    assert_eq!(h.broker.queue_counts("dead"), Some((1, 0, 0)));
    h.advance(Duration::from_millis(1001));
    assert_eq!(h.broker.queue_counts("qq"), Some((0, 0, 0)), "expired at their deadline");
    assert_eq!(h.broker.queue_counts("dead"), Some((3, 0, 0)));
    // x-expires: an unused queue goes at its deadline.
    declare(&mut h, c, "brief", true, quorum(&[("x-expires", FieldValue::I64(5000))]));
    h.advance(Duration::from_millis(4000));
    assert!(h.broker.queue_counts("brief").is_some());
    // A redeclare is a use: the deadline moves.
    declare(&mut h, c, "brief", true, quorum(&[("x-expires", FieldValue::I64(5000))]));
    h.advance(Duration::from_millis(4000));
    assert!(h.broker.queue_counts("brief").is_some(), "kept by the redeclare");
    h.advance(Duration::from_millis(1001));
    assert_eq!(h.broker.queue_counts("brief"), None, "expired unused");
}

#[test]
fn declares_rabbitmq_refuses_are_refused_with_its_words() {
    let mut h = harness();
    for (durable, extra, exclusive, want) in [
        (false, vec![], false, "invalid property 'non-durable' for queue 'qq' in vhost '/'"),
        (true, vec![], true, "invalid property 'exclusive-owner' for queue 'qq' in vhost '/'"),
        (true, vec![("x-max-priority", FieldValue::I64(5))], false, "invalid arg 'x-max-priority'"),
    ] {
        let c = client(&mut h);
        let m = QueueDeclare {
            queue: "qq".into(),
            durable,
            exclusive,
            arguments: quorum(&extra),
            ..Default::default()
        };
        h.send_method(c, 1, m);
        let Some(Method::ChannelClose(close)) = h.method(c) else { panic!("expected channel.close") };
        assert_eq!(close.reply_code, 406);
        assert!(close.reply_text.contains(want), "{}", close.reply_text);
    }
}

#[test]
fn a_delayed_retry_holds_a_failed_delivery_out_and_a_nack_comes_back_at_once() {
    let mut h = harness();
    let c = client(&mut h);
    let a = quorum(&[
        ("x-delayed-retry-type", FieldValue::str("failed")),
        ("x-delayed-retry-min", FieldValue::I64(200)),
        ("x-delayed-retry-max", FieldValue::I64(200)),
    ]);
    assert!(matches!(declare(&mut h, c, "qq", true, a), Method::QueueDeclareOk(_)));
    publish(&mut h, c, "qq", "flaky", BasicProperties::default());
    consume(&mut h, c, "qq", "ctag", false);
    h.method(c);
    let d = deliveries(&mut h, c);
    // A nack is a return, not a failure: RabbitMQ 4.3's `failed` type leaves it alone.
    h.send_method(c, 1, BasicNack { delivery_tag: d[0].tag, multiple: false, requeue: true });
    let d = deliveries(&mut h, c);
    assert_eq!(d.len(), 1, "a nacked message comes back at once");
    // A reject is a failed delivery: held out for the policy's delay.
    h.send_method(c, 1, BasicReject { delivery_tag: d[0].tag, requeue: true });
    assert!(deliveries(&mut h, c).is_empty(), "held out");
    h.advance(Duration::from_millis(150));
    assert!(deliveries(&mut h, c).is_empty(), "still held out");
    h.advance(Duration::from_millis(60));
    let d = deliveries(&mut h, c);
    assert_eq!(bodies(&d), ["flaky"], "back after the delay");
    assert_eq!(d[0].delivery_count, Some(1));
}

#[test]
fn a_lost_connection_counts_once_whichever_of_its_channels_held_a_message() {
    let mut h = harness();
    let a = client(&mut h);
    h.open_channel(a, 2);
    declare(&mut h, a, "qq", true, quorum(&[("x-delivery-limit", FieldValue::I64(1))]));
    for ch in [1u16, 2] {
        let m = BasicConsume { queue: "qq".into(), consumer_tag: format!("c{ch}"), ..Default::default() };
        h.send_method(a, ch, m);
    }
    for i in 0..4 {
        publish(&mut h, a, "qq", &format!("m{i}"), BasicProperties::default());
    }
    assert_eq!(deliveries(&mut h, a).len(), 4, "shared between the two channels");
    let b = client(&mut h);
    consume(&mut h, b, "qq", "other", false);
    h.method(b);
    h.disconnect(a);
    let d = deliveries(&mut h, b);
    assert_eq!(bodies(&d), ["m0", "m1", "m2", "m3"], "none dead-lettered, back in order");
    assert!(d.iter().all(|s| s.delivery_count == Some(1)), "one failed delivery each: {d:?}");
}

#[test]
fn a_single_active_consumers_messages_come_back_before_its_successor_takes_any() {
    let mut h = harness();
    let a = client(&mut h);
    declare(&mut h, a, "qq", true, quorum(&[("x-single-active-consumer", FieldValue::Bool(true))]));
    h.send_method(a, 1, BasicQos { prefetch_count: 2, ..Default::default() });
    h.method(a);
    consume(&mut h, a, "qq", "first", false);
    h.method(a);
    let b = client(&mut h);
    consume(&mut h, b, "qq", "second", false);
    h.method(b);
    for i in 0..4 {
        publish(&mut h, a, "qq", &format!("m{i}"), BasicProperties::default());
    }
    assert_eq!(bodies(&deliveries(&mut h, a)), ["m0", "m1"]);
    assert!(deliveries(&mut h, b).is_empty(), "waiting behind the active one");
    h.send_method(a, 1, ChannelClose::default());
    let d = deliveries(&mut h, b);
    assert_eq!(bodies(&d), ["m0", "m1", "m2", "m3"], "in the queue's order");
}

#[test]
fn a_delayed_message_counts_towards_the_length_limit_while_it_is_held() {
    let mut h = harness();
    let c = client(&mut h);
    let x = ExchangeDeclare {
        exchange: "later".into(),
        kind: "x-delayed-message".into(),
        durable: true,
        arguments: args(&[("x-delayed-type", FieldValue::str("direct"))]),
        ..Default::default()
    };
    h.send_method(c, 1, x);
    assert!(matches!(h.method(c), Some(Method::ExchangeDeclareOk(_))));
    let a =
        quorum(&[("x-max-length", FieldValue::I64(1)), ("x-overflow", FieldValue::str("reject-publish"))]);
    declare(&mut h, c, "qq", true, a);
    h.send_method(
        c,
        1,
        QueueBind {
            queue: "qq".into(),
            exchange: "later".into(),
            routing_key: "k".into(),
            ..Default::default()
        },
    );
    assert!(matches!(h.method(c), Some(Method::QueueBindOk(_))));
    h.send_method(c, 1, ConfirmSelect::default());
    h.method(c);
    let mut buf = BytesMut::new();
    let m = BasicPublish { exchange: "later".into(), routing_key: "k".into(), ..Default::default() };
    let props =
        BasicProperties { headers: Some(args(&[("x-delay", FieldValue::I64(1000))])), ..Default::default() };
    encode_content(&mut buf, 1, m, &props, &Bytes::from_static(b"held"), 131_072);
    h.send(c, &buf);
    assert!(matches!(h.method(c), Some(Method::BasicAck(_))), "held, and confirmed");
    publish(&mut h, c, "qq", "direct", BasicProperties::default());
    assert!(matches!(h.method(c), Some(Method::BasicNack(_))), "the held one fills the queue");
    consume(&mut h, c, "qq", "ctag", true);
    h.method(c);
    assert!(deliveries(&mut h, c).is_empty(), "not before its delay");
    h.advance(Duration::from_millis(1001));
    assert_eq!(bodies(&deliveries(&mut h, c)), ["held"]);
}

#[test]
fn an_at_least_once_dead_letter_is_kept_until_its_copy_is_taken() {
    let mut h = harness();
    let c = client(&mut h);
    let a = quorum(&[
        ("x-dead-letter-strategy", FieldValue::str("at-least-once")),
        ("x-overflow", FieldValue::str("reject-publish")),
        ("x-max-length", FieldValue::I64(2)),
        // Not declared yet: the copies reach no queue.
        ("x-dead-letter-exchange", FieldValue::str("dlx")),
    ]);
    assert!(matches!(declare(&mut h, c, "qq", true, a), Method::QueueDeclareOk(_)));
    h.send_method(c, 1, ConfirmSelect::default());
    h.method(c);
    for i in 0..2 {
        publish(&mut h, c, "qq", &format!("m{i}"), BasicProperties::default());
        assert!(matches!(h.method(c), Some(Method::BasicAck(_))));
    }
    consume(&mut h, c, "qq", "ctag", false);
    h.method(c);
    for d in deliveries(&mut h, c) {
        h.send_method(c, 1, BasicReject { delivery_tag: d.tag, requeue: false });
    }
    assert_eq!(h.broker.queue_counts("qq"), Some((0, 0, 1)));
    publish(&mut h, c, "qq", "m2", BasicProperties::default());
    assert!(matches!(h.method(c), Some(Method::BasicNack(_))), "the kept dead letters fill the queue");
    // The dead-letter exchange appears; the next retry delivers the copies and lets go.
    let x = ExchangeDeclare { exchange: "dlx".into(), kind: "fanout".into(), ..Default::default() };
    h.send_method(c, 1, x);
    assert!(matches!(h.method(c), Some(Method::ExchangeDeclareOk(_))));
    declare(&mut h, c, "dead", false, FieldTable::new());
    h.send_method(c, 1, QueueBind { queue: "dead".into(), exchange: "dlx".into(), ..Default::default() });
    assert!(matches!(h.method(c), Some(Method::QueueBindOk(_))));
    assert_eq!(h.broker.queue_counts("dead"), Some((0, 0, 0)));
    h.advance(Duration::from_millis(1001));
    assert_eq!(h.broker.queue_counts("dead"), Some((2, 0, 0)), "both copies, once each");
    h.send_method(c, 1, BasicCancel { consumer_tag: "ctag".into(), no_wait: false });
    h.method(c);
    publish(&mut h, c, "qq", "m3", BasicProperties::default());
    assert!(matches!(h.method(c), Some(Method::BasicAck(_))), "room again");
}

#[test]
fn a_lost_consumers_messages_go_through_the_retry_policy_for_failures() {
    let mut h = harness();
    let a = client(&mut h);
    let args = quorum(&[
        ("x-delayed-retry-type", FieldValue::str("failed")),
        ("x-delayed-retry-min", FieldValue::I64(300)),
        ("x-delayed-retry-max", FieldValue::I64(300)),
    ]);
    declare(&mut h, a, "qq", true, args);
    publish(&mut h, a, "qq", "job", BasicProperties::default());
    consume(&mut h, a, "qq", "crashes", false);
    h.method(a);
    assert_eq!(deliveries(&mut h, a).len(), 1);
    let b = client(&mut h);
    consume(&mut h, b, "qq", "next", false);
    h.method(b);
    h.disconnect(a);
    assert!(deliveries(&mut h, b).is_empty(), "held out by the policy, not handed on at once");
    h.advance(Duration::from_millis(301));
    let d = deliveries(&mut h, b);
    assert_eq!(bodies(&d), ["job"]);
    assert_eq!(d[0].delivery_count, Some(1), "the lost delivery counted once");
}

#[test]
fn an_at_least_once_retry_goes_only_to_the_queues_that_did_not_take_the_copy() {
    let mut h = harness();
    let c = client(&mut h);
    let x = ExchangeDeclare { exchange: "dlx".into(), kind: "fanout".into(), ..Default::default() };
    h.send_method(c, 1, x);
    h.method(c);
    declare(&mut h, c, "took", false, FieldTable::new());
    let full =
        args(&[("x-max-length", FieldValue::I64(1)), ("x-overflow", FieldValue::str("reject-publish"))]);
    declare(&mut h, c, "full", false, full);
    publish(&mut h, c, "full", "filler", BasicProperties::default());
    for q in ["took", "full"] {
        h.send_method(c, 1, QueueBind { queue: q.into(), exchange: "dlx".into(), ..Default::default() });
        assert!(matches!(h.method(c), Some(Method::QueueBindOk(_))));
    }
    let a = quorum(&[
        ("x-dead-letter-strategy", FieldValue::str("at-least-once")),
        ("x-overflow", FieldValue::str("reject-publish")),
        ("x-dead-letter-exchange", FieldValue::str("dlx")),
    ]);
    declare(&mut h, c, "qq", true, a);
    publish(&mut h, c, "qq", "dies", BasicProperties::default());
    h.send_method(c, 1, BasicGet { queue: "qq".into(), no_ack: false, ..Default::default() });
    let Some(Method::BasicGetOk(ok)) = h.method(c) else { panic!("get-ok") };
    h.drain(c);
    h.send_method(c, 1, BasicReject { delivery_tag: ok.delivery_tag, requeue: false });
    assert_eq!(h.broker.queue_counts("took"), Some((1, 0, 0)));
    for _ in 0..3 {
        h.advance(Duration::from_millis(1001));
        assert_eq!(h.broker.queue_counts("took"), Some((1, 0, 0)), "no copy twice to a queue that took one");
    }
    // Room in the full one: the next retry completes the dead letter.
    h.send_method(c, 1, QueuePurge { queue: "full".into(), ..Default::default() });
    h.method(c);
    h.advance(Duration::from_millis(1001));
    assert_eq!(h.broker.queue_counts("full"), Some((1, 0, 0)));
    assert_eq!(h.broker.queue_counts("took"), Some((1, 0, 0)));
    h.advance(Duration::from_millis(3000));
    assert_eq!(h.broker.queue_counts("full"), Some((1, 0, 0)), "let go: tried no more");
}

#[test]
fn an_at_least_once_dead_letter_that_only_cycles_back_is_dropped_not_kept() {
    let mut h = harness();
    let c = client(&mut h);
    let a = quorum(&[
        ("x-dead-letter-strategy", FieldValue::str("at-least-once")),
        ("x-overflow", FieldValue::str("reject-publish")),
        ("x-max-length", FieldValue::I64(1)),
        ("x-message-ttl", FieldValue::I64(100)),
        // Back into itself by the message's own routing key: an automatic cycle on expiry.
        ("x-dead-letter-exchange", FieldValue::str("")),
    ]);
    declare(&mut h, c, "qq", true, a);
    h.send_method(c, 1, ConfirmSelect::default());
    h.method(c);
    publish(&mut h, c, "qq", "m0", BasicProperties::default());
    assert!(matches!(h.method(c), Some(Method::BasicAck(_))));
    h.advance(Duration::from_millis(101));
    publish(&mut h, c, "qq", "m1", BasicProperties::default());
    assert!(matches!(h.method(c), Some(Method::BasicAck(_))), "the cycled one is not kept taking room");
}
