//! End-to-end behaviour through lapin, a real AMQP 0-9-1 client, over TCP.

mod common;

use std::time::Duration;

use common::{TestBroker, code, eventually};
use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};

async fn connect(b: &TestBroker) -> Connection {
    Connection::connect(&b.uri(), ConnectionProperties::default()).await.expect("connect")
}

async fn declare(ch: &Channel, name: &str) {
    ch.queue_declare(name.into(), QueueDeclareOptions::default(), FieldTable::default())
        .await
        .expect("declare");
}

async fn publish(ch: &Channel, queue: &str, body: &[u8]) {
    ch.basic_publish(
        "".into(),
        queue.into(),
        BasicPublishOptions::default(),
        body,
        BasicProperties::default(),
    )
    .await
    .expect("publish");
}

async fn get(ch: &Channel, queue: &str, no_ack: bool) -> Option<lapin::message::BasicGetMessage> {
    ch.basic_get(queue.into(), BasicGetOptions { no_ack }).await.expect("get")
}

#[tokio::test(flavor = "multi_thread")]
async fn publish_then_get_and_consume_with_acks() {
    let b = TestBroker::start().await;
    let conn = connect(&b).await;
    let ch = conn.create_channel().await.expect("channel");
    declare(&ch, "work").await;
    for body in [&b"one"[..], b"two", b"three"] {
        publish(&ch, "work", body).await;
    }
    let first = get(&ch, "work", false).await.expect("a message");
    assert_eq!(first.delivery.data, b"one");
    assert_eq!(first.message_count, 2);
    first.delivery.ack(BasicAckOptions::default()).await.expect("ack");

    let mut consumer = ch
        .basic_consume("work".into(), "".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await
        .expect("consume");
    assert!(consumer.tag().as_str().starts_with("amq.ctag-"));
    for want in [&b"two"[..], b"three"] {
        let d = consumer.next().await.expect("delivery").expect("ok");
        assert_eq!(d.data, want);
        assert!(!d.redelivered);
        d.ack(BasicAckOptions::default()).await.expect("ack");
    }
    assert!(eventually(|| b.counts("work") == Some((0, 0, 1))).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn nack_requeue_restores_order_and_marks_redelivered() {
    let b = TestBroker::start().await;
    let conn = connect(&b).await;
    let ch = conn.create_channel().await.expect("channel");
    declare(&ch, "q").await;
    for body in ["a", "b", "c", "d"] {
        publish(&ch, "q", body.as_bytes()).await;
    }
    let a = get(&ch, "q", false).await.expect("a");
    let bm = get(&ch, "q", false).await.expect("b");
    let c = get(&ch, "q", false).await.expect("c");
    // Requeue b alone, then a and c with one multiple nack: all go back where they were.
    bm.delivery.nack(BasicNackOptions { multiple: false, requeue: true }).await.expect("nack");
    ch.basic_nack(c.delivery.delivery_tag, BasicNackOptions { multiple: true, requeue: true })
        .await
        .expect("nack multiple");
    drop(a);
    let mut seen = Vec::new();
    while let Some(m) = get(&ch, "q", true).await {
        seen.push((String::from_utf8_lossy(&m.delivery.data).to_string(), m.delivery.redelivered));
    }
    let want: Vec<(String, bool)> = [("a", true), ("b", true), ("c", true), ("d", false)]
        .iter()
        .map(|(s, r)| (s.to_string(), *r))
        .collect();
    assert_eq!(seen, want);
}

#[tokio::test(flavor = "multi_thread")]
async fn reject_without_requeue_drops_and_with_requeue_redelivers() {
    let b = TestBroker::start().await;
    let conn = connect(&b).await;
    let ch = conn.create_channel().await.expect("channel");
    declare(&ch, "r").await;
    publish(&ch, "r", b"x").await;
    publish(&ch, "r", b"y").await;
    let x = get(&ch, "r", false).await.expect("x");
    x.delivery.reject(BasicRejectOptions { requeue: false }).await.expect("reject");
    let y = get(&ch, "r", false).await.expect("y");
    y.delivery.reject(BasicRejectOptions { requeue: true }).await.expect("reject");
    let again = get(&ch, "r", true).await.expect("y again");
    assert_eq!(again.delivery.data, b"y");
    assert!(again.delivery.redelivered);
    assert!(get(&ch, "r", true).await.is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn per_consumer_prefetch_limits_unacked_deliveries() {
    let b = TestBroker::start().await;
    let conn = connect(&b).await;
    let ch = conn.create_channel().await.expect("channel");
    declare(&ch, "p").await;
    for i in 0..5 {
        publish(&ch, "p", format!("{i}").as_bytes()).await;
    }
    ch.basic_qos(2, BasicQosOptions { global: false }).await.expect("qos");
    let mut consumer = ch
        .basic_consume("p".into(), "c1".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await
        .expect("consume");
    let d1 = consumer.next().await.expect("d1").expect("ok");
    let _d2 = consumer.next().await.expect("d2").expect("ok");
    assert!(eventually(|| b.counts("p") == Some((3, 2, 1))).await);
    let third = tokio::time::timeout(Duration::from_millis(200), consumer.next()).await;
    assert!(third.is_err(), "a third delivery arrived past prefetch 2");
    d1.ack(BasicAckOptions::default()).await.expect("ack");
    let d3 = consumer.next().await.expect("d3").expect("ok");
    assert_eq!(d3.data, b"2");
}

#[tokio::test(flavor = "multi_thread")]
async fn global_prefetch_is_shared_by_the_channel() {
    let b = TestBroker::start().await;
    let conn = connect(&b).await;
    let ch = conn.create_channel().await.expect("channel");
    declare(&ch, "g1").await;
    declare(&ch, "g2").await;
    for _ in 0..3 {
        publish(&ch, "g1", b"1").await;
        publish(&ch, "g2", b"2").await;
    }
    ch.basic_qos(3, BasicQosOptions { global: true }).await.expect("qos");
    let _c1 =
        ch.basic_consume("g1".into(), "".into(), BasicConsumeOptions::default(), FieldTable::default()).await;
    let _c2 =
        ch.basic_consume("g2".into(), "".into(), BasicConsumeOptions::default(), FieldTable::default()).await;
    assert!(
        eventually(|| {
            let (r1, u1, _) = b.counts("g1").unwrap_or_default();
            let (r2, u2, _) = b.counts("g2").unwrap_or_default();
            u1 + u2 == 3 && r1 + r2 == 3
        })
        .await
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn deliveries_round_robin_across_consumers() {
    let b = TestBroker::start().await;
    let conn = connect(&b).await;
    let ch = conn.create_channel().await.expect("channel");
    declare(&ch, "rr").await;
    let opts = BasicConsumeOptions { no_ack: true, ..Default::default() };
    let mut c1 = ch.basic_consume("rr".into(), "one".into(), opts, FieldTable::default()).await.expect("c1");
    let mut c2 = ch.basic_consume("rr".into(), "two".into(), opts, FieldTable::default()).await.expect("c2");
    for i in 0..6 {
        publish(&ch, "rr", format!("{i}").as_bytes()).await;
    }
    let mut one = Vec::new();
    let mut two = Vec::new();
    for _ in 0..3 {
        one.push(c1.next().await.expect("d").expect("ok").data);
        two.push(c2.next().await.expect("d").expect("ok").data);
    }
    assert_eq!(one, vec![b"0".to_vec(), b"2".to_vec(), b"4".to_vec()]);
    assert_eq!(two, vec![b"1".to_vec(), b"3".to_vec(), b"5".to_vec()]);
}

#[tokio::test(flavor = "multi_thread")]
async fn auto_ack_consumers_on_other_connections_get_a_burst_bigger_than_their_window() {
    // Far more than the 4 096 deliveries a connection may have waiting: the rest wait in the
    // queue and go out as each consumer's connection pulls.
    const TOTAL: usize = 30_000;
    let b = TestBroker::start().await;
    let publisher = connect(&b).await;
    let ch = publisher.create_channel().await.expect("channel");
    declare(&ch, "burst").await;
    let opts = BasicConsumeOptions { no_ack: true, ..Default::default() };
    let mut consumers = Vec::new();
    for tag in ["one", "two"] {
        let conn = connect(&b).await;
        let c = conn.create_channel().await.expect("channel");
        let consumer =
            c.basic_consume("burst".into(), tag.into(), opts, FieldTable::default()).await.expect("consume");
        consumers.push((conn, consumer));
    }
    ch.confirm_select(ConfirmSelectOptions::default()).await.expect("confirm mode");
    for i in 0..TOTAL {
        publish(&ch, "burst", format!("{i}").as_bytes()).await;
    }
    assert!(ch.wait_for_confirms().await.expect("confirms").is_empty(), "every publish acked");
    let mut seen = Vec::new();
    for (_, consumer) in &mut consumers {
        let mut last = None;
        tokio::time::timeout(Duration::from_secs(30), async {
            // Round robin: each consumer gets half, in publish order.
            for _ in 0..TOTAL / 2 {
                let d = consumer.next().await.expect("delivery").expect("ok");
                let n: usize = std::str::from_utf8(&d.data).expect("utf-8").parse().expect("number");
                assert!(last.is_none_or(|l| n > l), "out of order: {n} after {last:?}");
                last = Some(n);
                seen.push(n);
            }
        })
        .await
        .expect("deliveries stalled");
    }
    seen.sort_unstable();
    assert_eq!(seen, (0..TOTAL).collect::<Vec<_>>(), "each message exactly once");
}

#[tokio::test(flavor = "multi_thread")]
async fn unacked_messages_return_when_the_channel_or_connection_closes() {
    let b = TestBroker::start().await;
    let conn = connect(&b).await;
    let ch = conn.create_channel().await.expect("channel");
    declare(&ch, "back").await;
    publish(&ch, "back", b"m1").await;
    publish(&ch, "back", b"m2").await;
    let other = conn.create_channel().await.expect("channel");
    let _m1 = get(&other, "back", false).await.expect("m1");
    other.close(200, "bye".into()).await.expect("close channel");
    assert!(eventually(|| b.counts("back") == Some((2, 0, 0))).await);

    let conn2 = connect(&b).await;
    let ch2 = conn2.create_channel().await.expect("channel");
    let _m = get(&ch2, "back", false).await.expect("m1");
    let _n = get(&ch2, "back", false).await.expect("m2");
    assert!(eventually(|| b.counts("back") == Some((0, 2, 0))).await);
    conn2.close(200, "bye".into()).await.expect("close conn");
    assert!(eventually(|| b.counts("back") == Some((2, 0, 0))).await);
    let m = get(&ch, "back", true).await.expect("m1 again");
    assert_eq!((m.delivery.data.as_slice(), m.delivery.redelivered), (&b"m1"[..], true));
}

#[tokio::test(flavor = "multi_thread")]
async fn basic_recover_requeues_everything_unacked() {
    let b = TestBroker::start().await;
    let conn = connect(&b).await;
    let ch = conn.create_channel().await.expect("channel");
    declare(&ch, "rec").await;
    publish(&ch, "rec", b"z").await;
    let _z = get(&ch, "rec", false).await.expect("z");
    ch.basic_recover(BasicRecoverOptions { requeue: true }).await.expect("recover");
    let z = get(&ch, "rec", true).await.expect("z again");
    assert!(z.delivery.redelivered);
}

#[tokio::test(flavor = "multi_thread")]
async fn server_named_queues_purge_and_delete() {
    let b = TestBroker::start().await;
    let conn = connect(&b).await;
    let ch = conn.create_channel().await.expect("channel");
    let q = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions { exclusive: true, ..Default::default() },
            FieldTable::default(),
        )
        .await
        .expect("declare");
    let name = q.name().as_str().to_string();
    assert!(name.starts_with("amq.gen-"), "{name}");
    publish(&ch, &name, b"1").await;
    publish(&ch, &name, b"2").await;
    let again = ch
        .queue_declare(
            name.as_str().into(),
            QueueDeclareOptions { passive: true, ..Default::default() },
            FieldTable::default(),
        )
        .await
        .expect("passive");
    assert_eq!(again.message_count(), 2);
    assert_eq!(ch.queue_purge(name.as_str().into(), QueuePurgeOptions::default()).await.expect("purge"), 2);
    publish(&ch, &name, b"3").await;
    assert_eq!(
        ch.queue_delete(name.as_str().into(), QueueDeleteOptions::default()).await.expect("delete"),
        1
    );
    assert_eq!(b.counts(&name), None);
}

#[tokio::test(flavor = "multi_thread")]
async fn exclusive_and_auto_delete_queues_go_with_their_owner() {
    let b = TestBroker::start().await;
    let conn = connect(&b).await;
    let ch = conn.create_channel().await.expect("channel");
    let opts = QueueDeclareOptions { exclusive: true, ..Default::default() };
    ch.queue_declare("mine".into(), opts, FieldTable::default()).await.expect("declare");
    let ad = QueueDeclareOptions { auto_delete: true, ..Default::default() };
    ch.queue_declare("ad".into(), ad, FieldTable::default()).await.expect("declare");
    let c = ch
        .basic_consume("ad".into(), "t".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await;
    assert!(c.is_ok());
    ch.basic_cancel("t".into(), BasicCancelOptions::default()).await.expect("cancel");
    assert!(eventually(|| b.counts("ad").is_none()).await, "auto-delete queue survived its last consumer");
    conn.close(200, "bye".into()).await.expect("close");
    assert!(eventually(|| b.counts("mine").is_none()).await, "exclusive queue survived its owner");
}

#[tokio::test(flavor = "multi_thread")]
async fn large_messages_cross_many_frames_intact() {
    let b = TestBroker::start().await;
    let conn = connect(&b).await;
    let ch = conn.create_channel().await.expect("channel");
    declare(&ch, "big").await;
    let body: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    publish(&ch, "big", &body).await;
    let m = get(&ch, "big", true).await.expect("big");
    assert_eq!(m.delivery.data.len(), body.len());
    assert!(m.delivery.data == body);
}

#[tokio::test(flavor = "multi_thread")]
async fn confirms_ack_each_publish_and_mandatory_returns_come_first() {
    let b = TestBroker::start().await;
    let conn = connect(&b).await;
    let ch = conn.create_channel().await.expect("channel");
    ch.confirm_select(ConfirmSelectOptions::default()).await.expect("confirm");
    declare(&ch, "c").await;
    let ok = ch
        .basic_publish(
            "".into(),
            "c".into(),
            BasicPublishOptions::default(),
            b"x",
            BasicProperties::default(),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    assert!(matches!(ok, Confirmation::Ack(None)));
    let opts = BasicPublishOptions { mandatory: true, ..Default::default() };
    let returned = ch
        .basic_publish("".into(), "nowhere".into(), opts, b"lost", BasicProperties::default())
        .await
        .expect("publish")
        .await
        .expect("confirm");
    let Confirmation::Ack(Some(ret)) = returned else {
        panic!("expected a returned message, got {returned:?}")
    };
    assert_eq!(ret.reply_code, 312);
    assert_eq!(ret.delivery.data, b"lost");
}

#[tokio::test(flavor = "multi_thread")]
async fn properties_and_headers_survive_the_trip() {
    let b = TestBroker::start().await;
    let conn = connect(&b).await;
    let ch = conn.create_channel().await.expect("channel");
    declare(&ch, "props").await;
    let mut headers = FieldTable::default();
    headers.insert("n".into(), AMQPValue::LongLongInt(-7));
    headers.insert("s".into(), AMQPValue::LongString("v".into()));
    let props = BasicProperties::default()
        .with_content_type("text/plain".into())
        .with_delivery_mode(2)
        .with_message_id("id-1".into())
        .with_timestamp(1_700_000_000)
        .with_headers(headers.clone());
    ch.basic_publish("".into(), "props".into(), BasicPublishOptions::default(), b"p", props.clone())
        .await
        .expect("publish");
    let m = get(&ch, "props", true).await.expect("message");
    assert_eq!(m.delivery.properties, props);
}

// --- errors, with RabbitMQ's reply codes ---

#[tokio::test(flavor = "multi_thread")]
async fn passive_declare_of_a_missing_queue_is_404_and_closes_only_the_channel() {
    let b = TestBroker::start().await;
    let conn = connect(&b).await;
    let ch = conn.create_channel().await.expect("channel");
    let opts = QueueDeclareOptions { passive: true, ..Default::default() };
    let e = ch.queue_declare("ghost".into(), opts, FieldTable::default()).await.expect_err("404");
    assert_eq!(code(&e), Some(404));
    let ch2 = conn.create_channel().await.expect("the connection still works");
    declare(&ch2, "alive").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn redeclare_with_different_flags_is_406() {
    let b = TestBroker::start().await;
    let conn = connect(&b).await;
    let ch = conn.create_channel().await.expect("channel");
    declare(&ch, "d").await;
    let opts = QueueDeclareOptions { durable: true, ..Default::default() };
    let e = ch.queue_declare("d".into(), opts, FieldTable::default()).await.expect_err("406");
    assert_eq!(code(&e), Some(406));
}

#[tokio::test(flavor = "multi_thread")]
async fn exclusive_queue_from_another_connection_is_405() {
    let b = TestBroker::start().await;
    let owner = connect(&b).await;
    let ch = owner.create_channel().await.expect("channel");
    let opts = QueueDeclareOptions { exclusive: true, ..Default::default() };
    ch.queue_declare("excl".into(), opts, FieldTable::default()).await.expect("declare");
    let other = connect(&b).await;
    let ch2 = other.create_channel().await.expect("channel");
    let e = ch2
        .basic_consume("excl".into(), "".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await
        .expect_err("405");
    assert_eq!(code(&e), Some(405));
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_delivery_tag_closes_the_channel() {
    // The exact code (406, on basic.ack) is asserted frame by frame in t30_raw_frames; here a
    // real client sees its channel closed and the connection still working.
    let b = TestBroker::start().await;
    let conn = connect(&b).await;
    let ch = conn.create_channel().await.expect("channel");
    ch.basic_ack(99, BasicAckOptions::default()).await.expect("ack is async");
    // The close arrives asynchronously: the next call fails with the 406 if it was sent before
    // the close arrived, or with the channel's closed state if after.
    let e = ch
        .queue_declare("x".into(), QueueDeclareOptions::default(), FieldTable::default())
        .await
        .expect_err("channel closed");
    assert!(code(&e) == Some(406) || !ch.status().connected(), "{e}");
    let again = conn.create_channel().await.expect("the connection still works");
    assert!(again.status().connected());
}

#[tokio::test(flavor = "multi_thread")]
async fn delete_if_unused_and_if_empty_are_406() {
    let b = TestBroker::start().await;
    let conn = connect(&b).await;
    let ch = conn.create_channel().await.expect("channel");
    declare(&ch, "busy").await;
    publish(&ch, "busy", b"x").await;
    let e = ch
        .queue_delete("busy".into(), QueueDeleteOptions { if_empty: true, ..Default::default() })
        .await
        .expect_err("not empty");
    assert_eq!(code(&e), Some(406));
    let ch = conn.create_channel().await.expect("channel");
    let _c = ch
        .basic_consume("busy".into(), "".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await;
    let e = ch
        .queue_delete("busy".into(), QueueDeleteOptions { if_unused: true, ..Default::default() })
        .await
        .expect_err("in use");
    assert_eq!(code(&e), Some(406));
}

#[tokio::test(flavor = "multi_thread")]
async fn consume_from_missing_queue_is_404_and_reused_tag_is_530() {
    let b = TestBroker::start().await;
    let conn = connect(&b).await;
    let ch = conn.create_channel().await.expect("channel");
    let e = ch
        .basic_consume("nope".into(), "".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await
        .expect_err("404");
    assert_eq!(code(&e), Some(404));
    let ch = conn.create_channel().await.expect("channel");
    declare(&ch, "t").await;
    let _c = ch
        .basic_consume("t".into(), "same".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await;
    let e = ch
        .basic_consume("t".into(), "same".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await
        .expect_err("530");
    assert_eq!(code(&e), Some(530));
}

#[tokio::test(flavor = "multi_thread")]
async fn publish_to_a_missing_exchange_is_404() {
    let b = TestBroker::start().await;
    let conn = connect(&b).await;
    let ch = conn.create_channel().await.expect("channel");
    ch.confirm_select(ConfirmSelectOptions::default()).await.expect("confirm");
    // lapin sends content after other pending methods: read the error from the publish's own
    // confirm, not from a later call.
    let confirm = ch
        .basic_publish(
            "no-such".into(),
            "k".into(),
            BasicPublishOptions::default(),
            b"x",
            BasicProperties::default(),
        )
        .await
        .expect("publish is async");
    let e = confirm.await.expect_err("channel closed");
    assert_eq!(code(&e), Some(404), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn immediate_publish_closes_the_connection_with_540() {
    let b = TestBroker::start().await;
    let conn = connect(&b).await;
    let ch = conn.create_channel().await.expect("channel");
    declare(&ch, "i").await;
    let opts = BasicPublishOptions { immediate: true, ..Default::default() };
    let _ = ch.basic_publish("".into(), "i".into(), opts, b"x", BasicProperties::default()).await;
    assert!(eventually(|| !conn.status().connected()).await, "connection still open after immediate=true");
    assert_eq!(b.counts("i"), Some((0, 0, 0)));
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_password_is_refused() {
    let b = TestBroker::start().await;
    let uri = format!("amqp://guest:wrong@{}/%2f", b.addr);
    let e = Connection::connect(&uri, ConnectionProperties::default()).await.expect_err("refused");
    assert_eq!(code(&e), Some(403), "{e}");
    let ok = connect(&b).await;
    assert!(ok.status().connected());
}

#[tokio::test(flavor = "multi_thread")]
async fn exclusive_consumer_excludes_others_with_403() {
    let b = TestBroker::start().await;
    let conn = connect(&b).await;
    let ch = conn.create_channel().await.expect("channel");
    declare(&ch, "solo").await;
    let opts = BasicConsumeOptions { exclusive: true, ..Default::default() };
    let _c =
        ch.basic_consume("solo".into(), "first".into(), opts, FieldTable::default()).await.expect("consume");
    let ch2 = conn.create_channel().await.expect("channel");
    let e = ch2
        .basic_consume("solo".into(), "second".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await
        .expect_err("403");
    assert_eq!(code(&e), Some(403));
    // And an exclusive consumer cannot join a queue that already has consumers.
    declare(&ch, "shared").await;
    let _d = ch
        .basic_consume("shared".into(), "a".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await;
    let ch3 = conn.create_channel().await.expect("channel");
    let e =
        ch3.basic_consume("shared".into(), "b".into(), opts, FieldTable::default()).await.expect_err("403");
    assert_eq!(code(&e), Some(403));
}

#[tokio::test(flavor = "multi_thread")]
async fn channel_flow_off_is_not_implemented_as_in_rabbitmq_and_on_is_answered() {
    let b = TestBroker::start().await;
    let conn = connect(&b).await;
    let ch = conn.create_channel().await.expect("channel");
    declare(&ch, "flow").await;
    ch.channel_flow(ChannelFlowOptions { active: true }).await.expect("flow on");
    let opts = BasicConsumeOptions { no_ack: true, ..Default::default() };
    let mut c =
        ch.basic_consume("flow".into(), "".into(), opts, FieldTable::default()).await.expect("consume");
    publish(&ch, "flow", b"flowing").await;
    assert_eq!(c.next().await.expect("delivery").expect("ok").data, b"flowing");
    // RabbitMQ answers active=false with 540, a connection error; clients test for it.
    let e = ch.channel_flow(ChannelFlowOptions { active: false }).await.expect_err("540");
    assert_eq!(code(&e), Some(540), "{e}");
}

#[tokio::test]
async fn unbinding_what_is_not_there_is_ok_as_in_rabbitmq() {
    let b = TestBroker::start().await;
    let conn = connect(&b).await;
    let ch = conn.create_channel().await.expect("channel");
    declare(&ch, "here").await;
    let none = FieldTable::default;
    ch.queue_unbind("here".into(), "amq.direct".into(), "never-bound".into(), none())
        .await
        .expect("no binding");
    ch.queue_unbind("here".into(), "no-such-exchange".into(), "k".into(), none()).await.expect("no source");
    ch.queue_unbind("no-such-queue".into(), "amq.direct".into(), "k".into(), none()).await.expect("no queue");
    let opts = ExchangeUnbindOptions::default();
    ch.exchange_unbind("no-such-x".into(), "amq.direct".into(), "k".into(), opts, none())
        .await
        .expect("no dest");
    ch.exchange_unbind("amq.fanout".into(), "no-such-x".into(), "k".into(), opts, none())
        .await
        .expect("no source");
    // The default exchange is still off limits.
    let e = ch.queue_unbind("here".into(), "".into(), "here".into(), none()).await.expect_err("403");
    assert_eq!(code(&e), Some(403), "{e}");
}

#[tokio::test]
async fn a_passive_declare_of_the_default_exchange_is_refused_as_in_rabbitmq() {
    let b = TestBroker::start().await;
    let conn = connect(&b).await;
    let ch = conn.create_channel().await.expect("channel");
    let passive = ExchangeDeclareOptions { passive: true, ..Default::default() };
    let e = ch
        .exchange_declare("".into(), lapin::ExchangeKind::Direct, passive, FieldTable::default())
        .await
        .expect_err("403");
    assert_eq!(code(&e), Some(403), "{e}");
}

#[tokio::test]
async fn redeclaring_with_another_exclusive_flag_is_resource_locked() {
    let b = TestBroker::start().await;
    let conn = connect(&b).await;
    let ch = conn.create_channel().await.expect("channel");
    let exclusive = QueueDeclareOptions { exclusive: true, ..Default::default() };
    ch.queue_declare("mine".into(), exclusive, FieldTable::default()).await.expect("declare");
    ch.queue_declare("mine".into(), exclusive, FieldTable::default()).await.expect("the same again");
    let e = ch
        .queue_declare("mine".into(), QueueDeclareOptions::default(), FieldTable::default())
        .await
        .expect_err("405");
    assert_eq!(code(&e), Some(405), "{e}");
    assert!(e.to_string().contains("exclusive property value does not match"), "{e}");
    let ch = conn.create_channel().await.expect("channel");
    declare(&ch, "shared").await;
    let e = ch.queue_declare("shared".into(), exclusive, FieldTable::default()).await.expect_err("405");
    assert_eq!(code(&e), Some(405), "{e}");
}

#[tokio::test]
async fn exchange_binding_consumer_and_transaction_limits_refuse_with_rabbitmqs_codes() {
    let b = TestBroker::start_with(|s| {
        let l = &mut s.limits.counts;
        (l.max_exchanges, l.max_bindings, l.max_consumers_per_channel) = (Some(1), Some(2), Some(2));
        l.max_consumers = Some(3);
        (l.max_tx_operations, l.max_tx_bytes) = (Some(3), Some(1000));
    })
    .await;
    let conn = connect(&b).await;
    let ch = conn.create_channel().await.expect("channel");
    let direct = |name: &str| {
        let ch = ch.clone();
        let name = name.to_string();
        async move {
            let opts = ExchangeDeclareOptions::default();
            ch.exchange_declare(
                name.as_str().into(),
                lapin::ExchangeKind::Direct,
                opts,
                FieldTable::default(),
            )
            .await
        }
    };
    direct("x1").await.expect("the first exchange fits");
    direct("x1").await.expect("declared again: not a new one");
    let e = direct("x2").await.expect_err("over the exchange limit");
    assert_eq!(code(&e), Some(406), "{e}");
    assert!(e.to_string().contains("exchange limit of 1"), "{e}");

    let ch = conn.create_channel().await.expect("channel");
    declare(&ch, "q").await;
    let bind = |key: &str| {
        let (ch, key) = (ch.clone(), key.to_string());
        async move {
            ch.queue_bind(
                "q".into(),
                "x1".into(),
                key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
        }
    };
    bind("a").await.expect("first binding");
    bind("b").await.expect("second binding");
    bind("b").await.expect("the same binding again: not a new one");
    let e = bind("c").await.expect_err("over the binding limit");
    assert_eq!(code(&e), Some(406), "{e}");
    assert!(e.to_string().contains("binding limit of 2"), "{e}");

    let ch = conn.create_channel().await.expect("channel");
    // Kept: lapin cancels a consumer it drops.
    let mut consumers = Vec::new();
    for tag in ["c1", "c2"] {
        let c = ch
            .basic_consume("q".into(), tag.into(), BasicConsumeOptions::default(), FieldTable::default())
            .await
            .expect("within the consumer limit");
        consumers.push(c);
    }
    let e = ch
        .basic_consume("q".into(), "c3".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await
        .expect_err("over the consumer limit");
    // RabbitMQ's consumer_max_per_channel: 530, which closes the connection.
    assert_eq!(code(&e), Some(530), "{e}");
    assert!(e.to_string().contains("reached maximum (2) of consumers per channel"), "{e}");
    drop(consumers);

    // Three consumers in all, on any channels.
    let conn = connect(&b).await;
    let mut all = Vec::new();
    for tag in ["d1", "d2", "d3"] {
        let ch = conn.create_channel().await.expect("channel");
        let c =
            ch.basic_consume("q".into(), tag.into(), BasicConsumeOptions::default(), FieldTable::default());
        all.push((c.await.expect("within the limit"), ch));
    }
    let ch = conn.create_channel().await.expect("channel");
    let e = ch
        .basic_consume("q".into(), "d4".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await
        .expect_err("over the consumer limit");
    assert_eq!(code(&e), Some(406), "{e}");
    assert!(e.to_string().contains("consumer limit of 3"), "{e}");
    drop(all);

    let conn = connect(&b).await;
    let ch = conn.create_channel().await.expect("channel");
    ch.tx_select().await.expect("tx");
    for _ in 0..3 {
        publish(&ch, "q", b"held").await;
    }
    ch.tx_commit().await.expect("three operations fit");
    publish(&ch, "q", &[0; 600]).await;
    publish(&ch, "q", &[0; 600]).await;
    // The channel is closed by the publish over the limit; lapin may learn of it before or
    // after it sends the commit, so the exact code is checked with raw frames in t30.
    ch.tx_commit().await.expect_err("1 200 octets held, over 1 000");
    assert_eq!(b.counts("q").map(|c| c.0), Some(3), "the refused transaction published nothing");

    let ch = conn.create_channel().await.expect("a fresh channel on the same connection");
    ch.tx_select().await.expect("tx");
    for _ in 0..4 {
        publish(&ch, "q", b"one too many").await;
    }
    ch.tx_commit().await.expect_err("four operations, over three");
    assert_eq!(b.counts("q").map(|c| c.0), Some(3));
}

#[tokio::test]
async fn an_empty_queue_name_means_the_last_queue_declared_on_the_channel() {
    let b = TestBroker::start().await;
    let conn = connect(&b).await;
    let ch = conn.create_channel().await.expect("channel");
    let q = ch
        .queue_declare("".into(), QueueDeclareOptions::default(), FieldTable::default())
        .await
        .expect("server-named");
    let name = q.name().to_string();
    // Bound with an empty name and key: the queue, under its own name.
    ch.queue_bind(
        "".into(),
        "amq.direct".into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("bind");
    ch.basic_publish(
        "amq.direct".into(),
        name.as_str().into(),
        BasicPublishOptions::default(),
        b"via the shortcut",
        BasicProperties::default(),
    )
    .await
    .expect("publish");
    assert!(eventually(|| b.counts(&name) == Some((1, 0, 0))).await);
    let got = ch.basic_get("".into(), BasicGetOptions { no_ack: true }).await.expect("get").expect("message");
    assert_eq!(got.delivery.data, b"via the shortcut");
    publish(&ch, &name, b"purged").await;
    assert!(eventually(|| b.counts(&name) == Some((1, 0, 0))).await);
    assert_eq!(ch.queue_purge("".into(), QueuePurgeOptions::default()).await.expect("purge"), 1);
    let _c = ch
        .basic_consume("".into(), "c".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await
        .expect("consume");
    assert!(eventually(|| b.counts(&name).is_some_and(|c| c.2 == 1)).await);
    ch.queue_delete("".into(), QueueDeleteOptions::default()).await.expect("delete");
    assert_eq!(b.counts(&name), None);
    // A channel that declared nothing has no last queue.
    let fresh = conn.create_channel().await.expect("channel");
    let e = fresh.basic_get("".into(), BasicGetOptions::default()).await.expect_err("404");
    assert_eq!(code(&e), Some(404), "{e}");
    assert!(e.to_string().contains("no previously declared queue"), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn direct_reply_to_routes_replies_to_the_requesting_channel_without_a_queue() {
    let b = TestBroker::start().await;
    let requester = connect(&b).await;
    let ch = requester.create_channel().await.expect("channel");
    declare(&ch, "rpc").await;
    let no_ack = BasicConsumeOptions { no_ack: true, ..Default::default() };
    let mut replies = ch
        .basic_consume("amq.rabbitmq.reply-to".into(), "".into(), no_ack, FieldTable::default())
        .await
        .expect("consume the pseudo-queue");
    let props = BasicProperties::default()
        .with_reply_to("amq.rabbitmq.reply-to".into())
        .with_correlation_id("req-1".into());
    ch.basic_publish("".into(), "rpc".into(), BasicPublishOptions::default(), b"2+2", props)
        .await
        .expect("request");

    // The server side, on another connection, answers to the rewritten reply-to.
    let server = connect(&b).await;
    let sch = server.create_channel().await.expect("channel");
    assert!(eventually(|| b.counts("rpc") == Some((1, 0, 0))).await);
    let req =
        sch.basic_get("rpc".into(), BasicGetOptions { no_ack: true }).await.expect("get").expect("request");
    let reply_to = req.delivery.properties.reply_to().clone().expect("reply-to").to_string();
    assert!(reply_to.starts_with("amq.rabbitmq.reply-to.") && reply_to.len() > 30, "{reply_to}");
    let passive = QueueDeclareOptions { passive: true, ..Default::default() };
    sch.queue_declare(reply_to.as_str().into(), passive, FieldTable::default()).await.expect("a live token");
    let answer = BasicProperties::default().with_correlation_id("req-1".into());
    sch.basic_publish("".into(), reply_to.as_str().into(), BasicPublishOptions::default(), b"4", answer)
        .await
        .expect("reply");
    let got = tokio::time::timeout(Duration::from_secs(5), replies.next())
        .await
        .expect("in time")
        .expect("reply")
        .expect("ok");
    assert_eq!(got.data, b"4");
    assert_eq!(got.properties.correlation_id().as_ref().map(|c| c.to_string()), Some("req-1".to_string()));
    assert_eq!(b.counts("rpc"), Some((0, 0, 0)));

    // The requester gone, a mandatory reply comes back to its sender; a plain one is dropped.
    requester.close(200, "bye".into()).await.expect("close");
    sch.confirm_select(ConfirmSelectOptions::default()).await.expect("confirms");
    let mandatory = BasicPublishOptions { mandatory: true, ..Default::default() };
    let c = sch
        .basic_publish("".into(), reply_to.as_str().into(), mandatory, b"late", BasicProperties::default())
        .await
        .expect("publish")
        .await
        .expect("confirm");
    assert!(matches!(&c, Confirmation::Ack(Some(r)) if r.reply_code == 312), "{c:?}");

    // RabbitMQ's errors: a reply consumer must not ack; a reply-to needs a reply consumer.
    let ch = server.create_channel().await.expect("channel");
    let e = ch
        .basic_consume(
            "amq.rabbitmq.reply-to".into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect_err("406");
    assert_eq!(code(&e), Some(406), "{e}");
    let ch = server.create_channel().await.expect("channel");
    let props = BasicProperties::default().with_reply_to("amq.rabbitmq.reply-to".into());
    ch.confirm_select(ConfirmSelectOptions::default()).await.expect("confirms");
    let confirm = ch
        .basic_publish("".into(), "rpc".into(), BasicPublishOptions::default(), b"x", props)
        .await
        .expect("sent");
    // The confirm carries the error the channel was closed with, whenever lapin reads it.
    let e = confirm.await.expect_err("the channel was closed");
    assert_eq!(code(&e), Some(406), "{e}");
    assert!(e.to_string().contains("fast reply consumer does not exist"), "{e}");
}
