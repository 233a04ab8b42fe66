//! End-to-end behaviour through lapin, a real AMQP 0-9-1 client, over TCP: publishing,
//! consuming, acknowledgements, prefetch, confirms. Errors and limits are in t11.

mod common;

use std::time::Duration;

use common::lapin_client::{connect, declare, get, publish};
use common::{TestBroker, eventually};
use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Confirmation};

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
