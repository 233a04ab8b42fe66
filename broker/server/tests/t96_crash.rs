//! The crash test: the real `warren` binary killed with SIGKILL while it works, restarted on
//! the same data directory. Every confirmed message must come back exactly once; acked ones
//! must not, except the few whose acks were still in flight, which come back redelivered.

use std::collections::BTreeMap;
use std::time::Duration;

mod common;

use common::process::{Process as Broker, log_of};
use common::publish_confirmed;
use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel};

const MESSAGES: usize = 20_000;

/// Consumes everything in `queue` with auto-ack: body number → times seen, redelivered flags.
async fn drain(ch: &Channel) -> BTreeMap<usize, Vec<bool>> {
    let mut seen: BTreeMap<usize, Vec<bool>> = BTreeMap::new();
    let passive = QueueDeclareOptions { passive: true, ..Default::default() };
    let q = ch.queue_declare("crash".into(), passive, FieldTable::default()).await.expect("queue is back");
    let total = q.message_count() as usize;
    let opts = BasicConsumeOptions { no_ack: true, ..Default::default() };
    let mut c =
        ch.basic_consume("crash".into(), "drain".into(), opts, FieldTable::default()).await.expect("consume");
    for _ in 0..total {
        let d = tokio::time::timeout(Duration::from_secs(10), c.next()).await.expect("delivery in time");
        let d = d.expect("delivery").expect("ok");
        let n: usize = std::str::from_utf8(&d.data).ok().and_then(|s| s.parse().ok()).expect("numbered body");
        seen.entry(n).or_default().push(d.redelivered);
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_messages_survive_kill_9_exactly_once_and_acked_ones_stay_gone() {
    let dir = tempfile::tempdir().expect("dir");
    let b = Broker::start(dir.path(), &[]);
    let (_conn, ch) = b.channel().await;
    ch.confirm_select(ConfirmSelectOptions::default()).await.expect("confirms");
    let durable = QueueDeclareOptions { durable: true, ..Default::default() };
    ch.queue_declare("crash".into(), durable, FieldTable::default()).await.expect("declare");
    let props = BasicProperties::default().with_delivery_mode(2);
    let bodies: Vec<String> = (0..MESSAGES).map(|i| i.to_string()).collect();
    publish_confirmed(&ch, "", "crash", &bodies, props).await;
    b.kill();

    let b = Broker::start(dir.path(), &[]);
    let (_conn, ch) = b.channel().await;
    let passive = QueueDeclareOptions { passive: true, ..Default::default() };
    let q = ch.queue_declare("crash".into(), passive, FieldTable::default()).await.expect("queue is back");
    assert_eq!(q.message_count() as usize, MESSAGES, "every confirmed message, once: {}", log_of(dir.path()));
    // Consume and ack the first half, then crash again with the acks just sent.
    ch.basic_qos(1000, BasicQosOptions::default()).await.expect("qos");
    let mut c = ch
        .basic_consume("crash".into(), "half".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await
        .expect("consume");
    for i in 0..MESSAGES / 2 {
        let d = c.next().await.expect("delivery").expect("ok");
        assert_eq!(std::str::from_utf8(&d.data).ok(), Some(i.to_string().as_str()), "in publish order");
        d.ack(BasicAckOptions::default()).await.expect("ack");
    }
    b.kill();

    let b = Broker::start(dir.path(), &[]);
    let (_conn, ch) = b.channel().await;
    let seen = drain(&ch).await;
    for (n, flags) in &seen {
        assert_eq!(flags.len(), 1, "message {n} came back {} times", flags.len());
        if *n < MESSAGES / 2 {
            assert!(flags[0], "message {n} was acked; if it is back, it is marked redelivered");
        }
    }
    let second_half = seen.keys().filter(|n| **n >= MESSAGES / 2).count();
    assert_eq!(second_half, MESSAGES / 2, "every unacked message is there");
    let in_flight = seen.len() - second_half;
    // Acks still in the socket at the kill may be lost, never more than were sent late.
    assert!(in_flight < MESSAGES / 2, "{in_flight} acked messages came back");
    eprintln!("acked messages back after the crash (acks in flight): {in_flight}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_messages_survive_kill_9_with_their_deadline() {
    use lapin::types::AMQPValue;
    let dir = tempfile::tempdir().expect("dir");
    let b = Broker::start(dir.path(), &[]);
    let (_conn, ch) = b.channel().await;
    ch.confirm_select(ConfirmSelectOptions::default()).await.expect("confirms");
    let mut args = FieldTable::default();
    args.insert("x-delayed-type".into(), AMQPValue::LongString("fanout".into()));
    let xopts = ExchangeDeclareOptions { durable: true, ..Default::default() };
    ch.exchange_declare("delay".into(), lapin::ExchangeKind::Custom("x-delayed-message".into()), xopts, args)
        .await
        .expect("declare");
    let durable = QueueDeclareOptions { durable: true, ..Default::default() };
    ch.queue_declare("held".into(), durable, FieldTable::default()).await.expect("declare");
    ch.queue_bind(
        "held".into(),
        "delay".into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("bind");
    let mut headers = FieldTable::default();
    headers.insert("x-delay".into(), AMQPValue::LongInt(1500));
    let props = BasicProperties::default().with_delivery_mode(2).with_headers(headers);
    let started = std::time::Instant::now();
    publish_confirmed(&ch, "delay", "", &["held through a crash".to_string()], props).await;
    b.kill();

    let b = Broker::start(dir.path(), &[]);
    let (_conn, ch) = b.channel().await;
    let got = loop {
        if let Some(m) = ch.basic_get("held".into(), BasicGetOptions { no_ack: true }).await.expect("get") {
            break m;
        }
        assert!(started.elapsed() < Duration::from_secs(15), "never came back: {}", log_of(dir.path()));
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(&got.delivery.data[..], b"held through a crash");
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "released early, after {:?}",
        started.elapsed()
    );
}
