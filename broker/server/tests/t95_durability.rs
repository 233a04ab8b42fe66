//! Durable queues through a real client: what survives a restart of the broker on the same
//! data directory, confirms after fsync, and the disk alarm.

mod common;

use common::{TestBroker, eventually, http_to, publish_confirmed, table};
use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};

async fn channel(b: &TestBroker) -> (Connection, Channel) {
    let conn = Connection::connect(&b.uri(), ConnectionProperties::default()).await.expect("connect");
    let ch = conn.create_channel().await.expect("channel");
    (conn, ch)
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions { durable: true, ..Default::default() }
}

fn persistent() -> BasicProperties {
    BasicProperties::default().with_delivery_mode(2)
}

async fn start(dir: &std::path::Path) -> TestBroker {
    let dir = dir.to_path_buf();
    TestBroker::start_with(move |s| s.data_dir = dir).await
}

async fn drain(ch: &Channel, queue: &str) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    while let Some(m) = ch.basic_get(queue.into(), BasicGetOptions { no_ack: true }).await.expect("get") {
        out.push((String::from_utf8_lossy(&m.delivery.data).into_owned(), m.delivery.redelivered));
    }
    out
}

#[tokio::test]
async fn durable_topology_and_persistent_messages_survive_a_restart() {
    let dir = tempfile::tempdir().expect("dir");
    let b = start(dir.path()).await;
    let (conn, ch) = channel(&b).await;
    ch.confirm_select(ConfirmSelectOptions::default()).await.expect("confirms");
    let args = table(&[("x-max-length", AMQPValue::LongLongInt(1000))]);
    ch.queue_declare("orders".into(), durable(), args).await.expect("declare");
    ch.queue_declare("scratch".into(), QueueDeclareOptions::default(), FieldTable::default())
        .await
        .expect("declare");
    let xopts = ExchangeDeclareOptions { durable: true, ..Default::default() };
    ch.exchange_declare("shop".into(), ExchangeKind::Topic, xopts, FieldTable::default())
        .await
        .expect("exchange");
    ch.queue_bind(
        "orders".into(),
        "shop".into(),
        "order.*".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("bind");
    let bodies: Vec<String> = (0..100).map(|i| format!("order-{i}")).collect();
    publish_confirmed(&ch, "shop", "order.new", &bodies, persistent()).await;
    publish_confirmed(&ch, "", "orders", &["transient".to_string()], BasicProperties::default()).await;
    publish_confirmed(&ch, "", "scratch", &["lost".to_string()], persistent()).await;
    conn.close(200, "bye".into()).await.expect("close");
    b.stop().await;
    let storage = dir.path().join("storage");
    assert!(storage.join("clean-shutdown").exists() && storage.join("queues/segments.idx").exists());

    let b = start(dir.path()).await;
    let (_conn, ch) = channel(&b).await;
    let passive = QueueDeclareOptions { passive: true, ..Default::default() };
    let q = ch.queue_declare("orders".into(), passive, FieldTable::default()).await.expect("orders is back");
    assert_eq!(
        q.message_count(),
        100,
        "persistent messages only; the transient one is dropped as in RabbitMQ"
    );
    let e = ch.queue_declare("scratch".into(), passive, FieldTable::default()).await;
    assert!(e.is_err(), "a transient queue does not come back");
    let (_conn, ch) = channel(&b).await;
    ch.confirm_select(ConfirmSelectOptions::default()).await.expect("confirms");
    // Redeclaring with the same arguments is accepted: they were kept.
    let args = table(&[("x-max-length", AMQPValue::LongLongInt(1000))]);
    ch.queue_declare("orders".into(), durable(), args).await.expect("equivalent redeclare");
    // The durable binding routes.
    publish_confirmed(&ch, "shop", "order.late", &["late".to_string()], persistent()).await;
    let got = drain(&ch, "orders").await;
    let mut want: Vec<(String, bool)> = bodies.into_iter().map(|b| (b, false)).collect();
    want.push(("late".into(), false));
    assert_eq!(got, want, "in publish order, not redelivered after a clean stop");
}

#[tokio::test]
async fn unacked_messages_come_back_redelivered_with_their_delivery_count() {
    let dir = tempfile::tempdir().expect("dir");
    let b = start(dir.path()).await;
    let (conn, ch) = channel(&b).await;
    ch.confirm_select(ConfirmSelectOptions::default()).await.expect("confirms");
    ch.queue_declare("jobs".into(), durable(), FieldTable::default()).await.expect("declare");
    let bodies: Vec<String> = (0..3).map(|i| format!("job-{i}")).collect();
    publish_confirmed(&ch, "", "jobs", &bodies, persistent()).await;
    let mut consumer = ch
        .basic_consume("jobs".into(), "c".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await
        .expect("consume");
    let first = consumer.next().await.expect("delivery").expect("ok");
    first.ack(BasicAckOptions::default()).await.expect("ack");
    for _ in 0..2 {
        consumer.next().await.expect("delivery").expect("ok");
    }
    // Two deliveries are unacked when the connection closes: they go back to the queue.
    conn.close(200, "bye".into()).await.expect("close");
    b.stop().await;

    let b = start(dir.path()).await;
    let (_conn, ch) = channel(&b).await;
    let m =
        ch.basic_get("jobs".into(), BasicGetOptions { no_ack: true }).await.expect("get").expect("a message");
    assert_eq!(&m.delivery.data[..], b"job-1");
    assert!(m.delivery.redelivered);
    let count =
        m.delivery.properties.headers().as_ref().and_then(|h| h.inner().get("x-delivery-count").cloned());
    assert_eq!(count, Some(AMQPValue::LongLongInt(1)));
    assert_eq!(drain(&ch, "jobs").await.len(), 1, "job-0 was acked and stays gone");
}

#[tokio::test]
async fn confirms_follow_fsyncs_which_are_counted() {
    let b = TestBroker::start().await;
    let (_conn, ch) = channel(&b).await;
    ch.confirm_select(ConfirmSelectOptions::default()).await.expect("confirms");
    ch.queue_declare("q".into(), durable(), FieldTable::default()).await.expect("declare");
    let bodies: Vec<String> = (0..2000).map(|i| i.to_string()).collect();
    publish_confirmed(&ch, "", "q", &bodies, persistent()).await;
    let (_, text) = http_to(b.metrics.expect("metrics"), "GET", "/metrics").await;
    let value = |name: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} in {text}"))
    };
    let (fsyncs, syncs, records) = (
        value("warren_storage_fsyncs_total"),
        value("warren_storage_syncs_total"),
        value("warren_storage_records_per_sync_sum"),
    );
    assert!(fsyncs >= 1.0 && syncs >= 1.0, "fsyncs {fsyncs}, syncs {syncs}");
    assert!(records >= 2000.0, "every record was synced: {records}");
    assert!(syncs < 2000.0, "group commit: {syncs} syncs for 2000 messages");
    assert_eq!(value("warren_global_messages_confirmed_total"), 2000.0);
}

#[tokio::test]
async fn below_the_disk_free_limit_publishers_are_blocked() {
    let b = TestBroker::start_with(|s| s.storage.disk_free_limit = u64::MAX).await;
    let (conn, ch) = channel(&b).await;
    ch.queue_declare("q".into(), durable(), FieldTable::default()).await.expect("declare");
    ch.basic_publish("".into(), "q".into(), BasicPublishOptions::default(), b"first", persistent())
        .await
        .expect("publish");
    let status = conn.status().clone();
    assert!(eventually(|| status.blocked()).await, "connection.blocked reaches the client");
    // The blocked connection is not read from; lapin, told it is blocked, holds the publish.
    let ch2 = ch.clone();
    let held = tokio::spawn(async move {
        ch2.basic_publish("".into(), "q".into(), BasicPublishOptions::default(), b"second", persistent())
            .await
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!held.is_finished());
    assert!(b.counts("q").is_some_and(|(ready, _, _)| ready <= 1), "{:?}", b.counts("q"));
    let (_, text) = http_to(b.metrics.expect("metrics"), "GET", "/metrics").await;
    assert!(text.contains("warren_connections_blocked 1"), "{text}");
    assert!(text.contains("warren_disk_space_alarm 1"), "{text}");
    // A consumer-only connection still works, so queues can drain.
    let (_c2, ch2) = channel(&b).await;
    let m = ch2.basic_get("q".into(), BasicGetOptions { no_ack: true }).await.expect("get");
    assert!(m.is_some_and(|m| &m.delivery.data[..] == b"first"));
}

/// Octets of the segment files under `dir`.
fn segments_size(dir: &std::path::Path) -> u64 {
    let segments = dir.join("storage/segments");
    std::fs::read_dir(&segments)
        .map(|d| d.filter_map(|e| e.ok()?.metadata().ok()).map(|m| m.len()).sum())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_message_parked_for_days_does_not_pin_the_log() {
    parked_while_200_mb_go_by(false).await;
}

#[tokio::test]
async fn an_unacked_message_held_for_days_does_not_pin_the_log_and_its_ack_still_counts() {
    parked_while_200_mb_go_by(true).await;
}

/// One message stays in a dead-letter queue (delivered and unacked all along, with `held`)
/// while 200 MB of persistent messages are published and acked through another queue.
async fn parked_while_200_mb_go_by(held: bool) {
    let dir = tempfile::tempdir().expect("dir");
    let b = start(dir.path()).await;
    let (conn, ch) = channel(&b).await;
    ch.confirm_select(ConfirmSelectOptions::default()).await.expect("confirms");
    ch.queue_declare("parked".into(), durable(), FieldTable::default()).await.expect("declare");
    let args = table(&[
        ("x-dead-letter-exchange", AMQPValue::LongString("".into())),
        ("x-dead-letter-routing-key", AMQPValue::LongString("parked".into())),
    ]);
    ch.queue_declare("work".into(), durable(), args).await.expect("declare");
    // One message rejected into the dead-letter queue, where nobody looks at it.
    publish_confirmed(&ch, "", "work", &["keep me".to_string()], persistent()).await;
    let m = ch.basic_get("work".into(), BasicGetOptions::default()).await.expect("get").expect("message");
    m.nack(BasicNackOptions { requeue: false, ..Default::default() }).await.expect("nack");
    assert!(eventually(|| b.counts("parked").is_some_and(|c| c.0 == 1)).await);
    let holder = conn.create_channel().await.expect("channel");
    let kept = if held {
        let m = holder.basic_get("parked".into(), BasicGetOptions::default()).await.expect("get");
        Some(m.expect("the parked message"))
    } else {
        None
    };

    // 200 MB through the other queue, published and acked in batches, with 1 MiB segments.
    ch.basic_qos(64, BasicQosOptions::default()).await.expect("qos");
    let mut consumer = ch
        .basic_consume("work".into(), "c".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await
        .expect("consume");
    let body = "x".repeat(64 << 10);
    let batch: Vec<String> = vec![body; 32];
    let mut peak = 0;
    for _ in 0..100 {
        publish_confirmed(&ch, "", "work", &batch, persistent()).await;
        for _ in 0..batch.len() {
            let d = consumer.next().await.expect("delivery").expect("ok");
            d.ack(BasicAckOptions::default()).await.expect("ack");
        }
        peak = peak.max(segments_size(dir.path()));
    }
    // Compaction runs once a second: the kept message moves to the head and the segments it
    // pinned go.
    let mut size = segments_size(dir.path());
    for _ in 0..150 {
        if size <= 8 << 20 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        size = segments_size(dir.path());
    }
    assert!(size <= 8 << 20, "{size} octets of segments left after 200 MB (peak {peak})");
    let metrics = http_to(b.metrics.expect("metrics"), "GET", "/metrics").await.1;
    let moved = metrics
        .lines()
        .find_map(|l| l.strip_prefix("warren_storage_compacted_messages_total "))
        .and_then(|v| v.trim().parse::<u64>().ok());
    assert!(moved.is_some_and(|n| n >= 1), "compaction moved the parked message: {moved:?}");
    if let Some(m) = kept {
        // Acked where it was moved to: the ack must remove the moved entry, not the old one.
        assert_eq!(&m.delivery.data[..], b"keep me");
        m.ack(BasicAckOptions::default()).await.expect("ack");
        assert!(eventually(|| b.counts("parked").is_some_and(|c| c == (0, 0, 0))).await);
    }
    conn.close(200, "bye".into()).await.expect("close");
    b.stop().await;

    let b = start(dir.path()).await;
    let (_conn, ch) = channel(&b).await;
    assert_eq!(drain(&ch, "work").await.len(), 0, "nothing acked came back");
    let parked = drain(&ch, "parked").await;
    let expected: &[&str] = if held { &[] } else { &["keep me"] };
    assert_eq!(parked.iter().map(|p| p.0.as_str()).collect::<Vec<_>>(), expected);
}

#[tokio::test]
async fn a_priority_queue_delivers_higher_priorities_first_and_keeps_them_over_a_restart() {
    let dir = tempfile::tempdir().expect("dir");
    let b = start(dir.path()).await;
    let (conn, ch) = channel(&b).await;
    ch.confirm_select(ConfirmSelectOptions::default()).await.expect("confirms");
    let args = table(&[("x-max-priority", AMQPValue::ShortShortUInt(10))]);
    ch.queue_declare("jobs".into(), durable(), args).await.expect("declare");
    // Without a priority is 0; above the maximum is the maximum.
    let sent: [(&str, Option<u8>); 6] = [
        ("a0", None),
        ("b5", Some(5)),
        ("c9", Some(9)),
        ("d255", Some(255)),
        ("e5", Some(5)),
        ("f0", Some(0)),
    ];
    for (body, priority) in sent {
        let props = match priority {
            Some(p) => persistent().with_priority(p),
            None => persistent(),
        };
        publish_confirmed(&ch, "", "jobs", &[body.to_string()], props).await;
    }
    // A consumer that refuses the first it gets sees it again first: it keeps its place.
    let first = ch.basic_get("jobs".into(), BasicGetOptions::default()).await.expect("get").expect("message");
    assert_eq!(&first.delivery.data[..], b"d255");
    first.nack(BasicNackOptions { requeue: true, ..Default::default() }).await.expect("nack");
    conn.close(200, "bye".into()).await.expect("close");
    b.stop().await;

    let b = start(dir.path()).await;
    let (_conn, ch) = channel(&b).await;
    let got: Vec<String> = drain(&ch, "jobs").await.into_iter().map(|(body, _)| body).collect();
    assert_eq!(got, ["d255", "c9", "b5", "e5", "a0", "f0"], "by priority, then in publish order");

    // Full: drop-head drops from the head, the next to deliver, as RabbitMQ does.
    let args = table(&[("x-max-priority", AMQPValue::LongInt(9)), ("x-max-length", AMQPValue::LongInt(3))]);
    ch.queue_declare("bounded".into(), durable(), args).await.expect("declare");
    for (body, p) in [("x1", 1), ("y9", 9), ("z5", 5), ("w1", 1)] {
        let props = BasicProperties::default().with_priority(p);
        ch.basic_publish("".into(), "bounded".into(), BasicPublishOptions::default(), body.as_bytes(), props)
            .await
            .expect("publish");
    }
    assert!(eventually(|| b.counts("bounded").is_some_and(|c| c.0 == 3)).await);
    let got: Vec<String> = drain(&ch, "bounded").await.into_iter().map(|(body, _)| body).collect();
    assert_eq!(got, ["z5", "x1", "w1"]);
    // Over 255 is refused.
    let e = ch
        .queue_declare("too-many".into(), durable(), table(&[("x-max-priority", AMQPValue::LongInt(256))]))
        .await
        .expect_err("406");
    assert!(e.to_string().contains("x-max-priority"), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_delayed_message_exchange_holds_each_message_for_its_x_delay_even_over_a_restart() {
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().expect("dir");
    let b = start(dir.path()).await;
    let (conn, ch) = channel(&b).await;
    ch.confirm_select(ConfirmSelectOptions::default()).await.expect("confirms");
    let xopts = ExchangeDeclareOptions { durable: true, ..Default::default() };
    let delayed = || ExchangeKind::Custom("x-delayed-message".into());
    // The type it routes as is required, and must exist.
    let e =
        ch.exchange_declare("bad".into(), delayed(), xopts, FieldTable::default()).await.expect_err("406");
    assert!(e.to_string().contains("x-delayed-type"), "{e}");
    let (conn, ch) = {
        drop(conn);
        channel(&b).await
    };
    ch.confirm_select(ConfirmSelectOptions::default()).await.expect("confirms");
    let args = table(&[("x-delayed-type", AMQPValue::LongString("direct".into()))]);
    ch.exchange_declare("later".into(), delayed(), xopts, args).await.expect("declare");
    ch.queue_declare("timed".into(), durable(), FieldTable::default()).await.expect("declare");
    ch.queue_bind(
        "timed".into(),
        "later".into(),
        "k".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("bind");
    let with_delay = |ms: i64| persistent().with_headers(table(&[("x-delay", AMQPValue::LongLongInt(ms))]));
    let started = Instant::now();
    publish_confirmed(&ch, "later", "k", &["in 700 ms".to_string()], with_delay(700)).await;
    publish_confirmed(&ch, "later", "k", &["in 300 ms".to_string()], with_delay(300)).await;
    publish_confirmed(&ch, "later", "k", &["now".to_string()], persistent()).await;
    publish_confirmed(&ch, "later", "k", &["in 5 s".to_string()], with_delay(5000)).await;
    assert_eq!(drain(&ch, "timed").await, [("now".to_string(), false)], "only the undelayed one at once");
    let metrics = http_to(b.metrics.expect("metrics"), "GET", "/metrics").await.1;
    assert!(
        metrics.contains("warren_exchange_messages_delayed{exchange=\"later\",vhost=\"/\"} 3"),
        "{metrics}"
    );
    // Each comes when its delay is over, in deadline order.
    let mut got = Vec::new();
    while got.len() < 2 {
        for (body, redelivered) in drain(&ch, "timed").await {
            assert!(!redelivered, "a delayed message was never delivered before");
            got.push((body, started.elapsed()));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(got[0].0, "in 300 ms");
    assert_eq!(got[1].0, "in 700 ms");
    assert!(got[0].1 >= Duration::from_millis(300) && got[1].1 >= Duration::from_millis(700), "{got:?}");
    // A TTL counts from the release: the message is there, then gone.
    ch.queue_declare("brief".into(), durable(), FieldTable::default()).await.expect("declare");
    ch.queue_bind(
        "brief".into(),
        "later".into(),
        "b".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("bind");
    let short_ttl = with_delay(300).with_expiration("1000".into());
    let sent = Instant::now();
    publish_confirmed(&ch, "later", "b", &["brief".to_string()], short_ttl).await;
    let passive = QueueDeclareOptions { passive: true, ..Default::default() };
    loop {
        let n = ch
            .queue_declare("brief".into(), passive, FieldTable::default())
            .await
            .expect("q")
            .message_count();
        if n == 1 {
            break;
        }
        assert!(sent.elapsed() < Duration::from_millis(1200), "the held message expired before it joined");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let n =
        ch.queue_declare("brief".into(), passive, FieldTable::default()).await.expect("q").message_count();
    assert_eq!(n, 0, "its TTL ran out after it joined the queue");
    conn.close(200, "bye".into()).await.expect("close");
    b.stop().await;

    // The last one waits through a restart and comes at its deadline, not before.
    let b = start(dir.path()).await;
    let (_conn, ch) = channel(&b).await;
    let mut last = Vec::new();
    while last.is_empty() {
        last = drain(&ch, "timed").await;
        if last.is_empty() {
            assert!(started.elapsed() < Duration::from_secs(10), "the delayed message never came");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert_eq!(last[0].0, "in 5 s");
    assert!(started.elapsed() >= Duration::from_secs(5), "came after {:?}", started.elapsed());
}
