//! Dead lettering, TTL, length limits, delivery limits and retry through lapin, with real
//! (short) time.

mod common;

use std::time::{Duration, Instant};

use common::{TestBroker, eventually, s, table};
use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldArray, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind};

async fn channel(b: &TestBroker) -> (Connection, Channel) {
    let conn = Connection::connect(&b.uri(), ConnectionProperties::default()).await.expect("connect");
    let ch = conn.create_channel().await.expect("channel");
    (conn, ch)
}

fn int(v: i64) -> AMQPValue {
    AMQPValue::LongLongInt(v)
}

async fn queue(ch: &Channel, name: &str, args: FieldTable) {
    ch.queue_declare(name.into(), QueueDeclareOptions::default(), args).await.expect("declare");
}

/// A fanout DLX named `dlx-<dlq>` feeding queue `dlq`.
async fn dlq(ch: &Channel, dlq: &str) -> String {
    let x = format!("dlx-{dlq}");
    ch.exchange_declare(
        x.as_str().into(),
        ExchangeKind::Fanout,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("dlx");
    queue(ch, dlq, FieldTable::default()).await;
    ch.queue_bind(
        dlq.into(),
        x.as_str().into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("bind");
    x
}

async fn publish(ch: &Channel, key: &str, body: &str, props: BasicProperties) {
    ch.basic_publish("".into(), key.into(), BasicPublishOptions::default(), body.as_bytes(), props)
        .await
        .expect("publish");
}

async fn get(ch: &Channel, q: &str) -> Option<lapin::message::BasicGetMessage> {
    ch.basic_get(q.into(), BasicGetOptions::default()).await.expect("get")
}

fn deaths(m: &lapin::message::Delivery) -> Vec<FieldTable> {
    let h = m.properties.headers().clone().unwrap_or_default();
    match h.inner().get("x-death") {
        Some(AMQPValue::FieldArray(a)) => a
            .as_slice()
            .iter()
            .filter_map(|v| match v {
                AMQPValue::FieldTable(t) => Some(t.clone()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn field<'a>(t: &'a FieldTable, k: &str) -> Option<&'a AMQPValue> {
    t.inner().get(k)
}

fn text(v: Option<&AMQPValue>) -> Option<String> {
    match v {
        Some(AMQPValue::LongString(s)) => Some(s.to_string()),
        Some(AMQPValue::ShortString(s)) => Some(s.to_string()),
        _ => None,
    }
}

fn header(m: &lapin::message::Delivery, k: &str) -> Option<AMQPValue> {
    m.properties.headers().clone().unwrap_or_default().inner().get(k).cloned()
}

#[tokio::test(flavor = "multi_thread")]
async fn rejected_messages_keep_properties_and_get_rabbitmqs_x_death() {
    let b = TestBroker::start().await;
    let (_c, ch) = channel(&b).await;
    let dlx = dlq(&ch, "dead").await;
    queue(&ch, "work", table(&[("x-dead-letter-exchange", s(&dlx))])).await;
    let props = BasicProperties::default()
        .with_message_id("m-1".into())
        .with_expiration("60000".into())
        .with_headers(table(&[("CC", AMQPValue::FieldArray(FieldArray::from(vec![s("also")])))]));
    publish(&ch, "work", "body", props).await;
    let m = get(&ch, "work").await.expect("message");
    m.delivery.reject(BasicRejectOptions { requeue: false }).await.expect("reject");
    assert!(eventually(|| b.counts("dead") == Some((1, 0, 0))).await);
    let d = get(&ch, "dead").await.expect("dead letter").delivery;
    assert_eq!(d.data, b"body");
    assert_eq!(d.properties.message_id().as_ref().map(|s| s.as_str()), Some("m-1"));
    assert_eq!(d.properties.expiration(), &None, "expiration moves into x-death");
    assert_eq!((d.exchange.as_str(), d.routing_key.as_str()), (dlx.as_str(), "work"));
    let x = deaths(&d);
    assert_eq!(x.len(), 1);
    assert_eq!(field(&x[0], "count"), Some(&int(1)));
    assert_eq!(text(field(&x[0], "queue")).as_deref(), Some("work"));
    assert_eq!(text(field(&x[0], "reason")).as_deref(), Some("rejected"));
    assert_eq!(text(field(&x[0], "exchange")).as_deref(), Some(""));
    assert_eq!(text(field(&x[0], "original-expiration")).as_deref(), Some("60000"));
    assert!(matches!(field(&x[0], "time"), Some(AMQPValue::Timestamp(t)) if *t > 1_700_000_000));
    let keys = field(&x[0], "routing-keys");
    assert_eq!(keys, Some(&AMQPValue::FieldArray(FieldArray::from(vec![s("work"), s("also")]))));
    assert_eq!(text(header(&d, "x-first-death-reason").as_ref()).as_deref(), Some("rejected"));
    assert_eq!(text(header(&d, "x-last-death-queue").as_ref()).as_deref(), Some("work"));
}

#[tokio::test(flavor = "multi_thread")]
async fn dead_letter_routing_key_replaces_the_key_and_drops_cc() {
    let b = TestBroker::start().await;
    let (_c, ch) = channel(&b).await;
    queue(&ch, "parking", FieldTable::default()).await;
    let args = table(&[("x-dead-letter-exchange", s("")), ("x-dead-letter-routing-key", s("parking"))]);
    queue(&ch, "src", args).await;
    let cc = table(&[("CC", AMQPValue::FieldArray(FieldArray::from(vec![s("x")])))]);
    publish(&ch, "src", "m", BasicProperties::default().with_headers(cc)).await;
    get(&ch, "src").await.expect("m").delivery.nack(BasicNackOptions::default()).await.expect("nack");
    assert!(eventually(|| b.counts("parking") == Some((1, 0, 0))).await);
    let d = get(&ch, "parking").await.expect("dead letter").delivery;
    assert_eq!(d.routing_key.as_str(), "parking");
    assert!(header(&d, "CC").is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn queue_ttl_expires_unread_messages_into_the_dlq() {
    let b = TestBroker::start().await;
    let (_c, ch) = channel(&b).await;
    let dlx = dlq(&ch, "expired").await;
    queue(&ch, "short", table(&[("x-message-ttl", int(100)), ("x-dead-letter-exchange", s(&dlx))])).await;
    publish(&ch, "short", "old", BasicProperties::default()).await;
    assert!(eventually(|| b.counts("expired") == Some((1, 0, 0))).await, "not expired in time");
    assert_eq!(b.counts("short"), Some((0, 0, 0)));
    let d = get(&ch, "expired").await.expect("dead letter").delivery;
    assert_eq!(text(field(&deaths(&d)[0], "reason")).as_deref(), Some("expired"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_short_ttl_behind_a_long_one_still_expires_on_time() {
    let b = TestBroker::start().await;
    let (_c, ch) = channel(&b).await;
    let dlx = dlq(&ch, "gone").await;
    queue(&ch, "mixed", table(&[("x-dead-letter-exchange", s(&dlx))])).await;
    publish(&ch, "mixed", "long", BasicProperties::default().with_expiration("60000".into())).await;
    publish(&ch, "mixed", "short", BasicProperties::default().with_expiration("100".into())).await;
    let started = Instant::now();
    assert!(
        eventually(|| b.counts("gone") == Some((1, 0, 0))).await,
        "the message behind the head did not expire"
    );
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(b.counts("mixed"), Some((1, 0, 0)));
    let d = get(&ch, "gone").await.expect("short").delivery;
    assert_eq!(d.data, b"short");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_expiration_is_406() {
    let b = TestBroker::start().await;
    let (_c, ch) = channel(&b).await;
    ch.confirm_select(ConfirmSelectOptions::default()).await.expect("confirm");
    queue(&ch, "q", FieldTable::default()).await;
    let c = ch
        .basic_publish(
            "".into(),
            "q".into(),
            BasicPublishOptions::default(),
            b"x",
            BasicProperties::default().with_expiration("soon".into()),
        )
        .await
        .expect("publish");
    let e = c.await.expect_err("406");
    assert!(matches!(e.kind(), lapin::ErrorKind::ProtocolError(p) if p.get_id() == 406), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn max_length_drop_head_dead_letters_the_oldest() {
    let b = TestBroker::start().await;
    let (_c, ch) = channel(&b).await;
    let dlx = dlq(&ch, "overflowed").await;
    queue(&ch, "capped", table(&[("x-max-length", int(2)), ("x-dead-letter-exchange", s(&dlx))])).await;
    for body in ["1", "2", "3"] {
        publish(&ch, "capped", body, BasicProperties::default()).await;
    }
    assert!(eventually(|| b.counts("overflowed") == Some((1, 0, 0))).await);
    let d = get(&ch, "overflowed").await.expect("dropped head").delivery;
    assert_eq!(d.data, b"1");
    assert_eq!(text(field(&deaths(&d)[0], "reason")).as_deref(), Some("maxlen"));
    assert_eq!(b.counts("capped"), Some((2, 0, 0)));
}

#[tokio::test(flavor = "multi_thread")]
async fn reject_publish_nacks_and_reject_publish_dlx_also_dead_letters() {
    let b = TestBroker::start().await;
    let (_c, ch) = channel(&b).await;
    ch.confirm_select(ConfirmSelectOptions::default()).await.expect("confirm");
    let dlx = dlq(&ch, "refused").await;
    let args = |mode: &str| {
        table(&[("x-max-length-bytes", int(5)), ("x-overflow", s(mode)), ("x-dead-letter-exchange", s(&dlx))])
    };
    queue(&ch, "rp", args("reject-publish")).await;
    queue(&ch, "rpd", args("reject-publish-dlx")).await;
    for q in ["rp", "rpd"] {
        let publish = |body: &'static str| {
            let ch = ch.clone();
            async move {
                ch.basic_publish(
                    "".into(),
                    q.into(),
                    BasicPublishOptions::default(),
                    body.as_bytes(),
                    BasicProperties::default(),
                )
                .await
                .expect("publish")
                .await
                .expect("confirm")
            }
        };
        assert!(matches!(publish("12345").await, Confirmation::Ack(_)));
        assert!(matches!(publish("6").await, Confirmation::Nack(_)), "{q}: a full queue must nack");
        assert_eq!(b.counts(q), Some((1, 0, 0)));
    }
    assert!(
        eventually(|| b.counts("refused") == Some((1, 0, 0))).await,
        "reject-publish-dlx must dead-letter"
    );
    let d = get(&ch, "refused").await.expect("refused").delivery;
    assert_eq!(
        (d.data.as_slice(), text(field(&deaths(&d)[0], "queue")).as_deref()),
        (&b"6"[..], Some("rpd"))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_automatic_dead_letter_loop_is_dropped_but_a_rejection_breaks_it() {
    let b = TestBroker::start().await;
    let (_c, ch) = channel(&b).await;
    // `loop` dead-letters expired messages back into itself through the default exchange.
    let args = table(&[
        ("x-message-ttl", int(50)),
        ("x-dead-letter-exchange", s("")),
        ("x-dead-letter-routing-key", s("loop")),
    ]);
    queue(&ch, "loop", args).await;
    publish(&ch, "loop", "round", BasicProperties::default()).await;
    // The loop's exact timing is tested on virtual time in core/model/tests/protocol.rs.
    assert!(eventually(|| b.counts("loop") == Some((0, 0, 0))).await, "a TTL loop must end, not spin");

    // Rejections are never cycles: a rejected message can come back to the same queue.
    let args = table(&[("x-dead-letter-exchange", s("")), ("x-dead-letter-routing-key", s("again"))]);
    queue(&ch, "again", args).await;
    publish(&ch, "again", "r", BasicProperties::default()).await;
    for round in 1..=3i64 {
        let m = get(&ch, "again").await.expect("back again");
        let x = deaths(&m.delivery);
        if round > 1 {
            assert_eq!(field(&x[0], "count"), Some(&int(round - 1)));
        }
        m.delivery.reject(BasicRejectOptions { requeue: false }).await.expect("reject");
        assert!(eventually(|| b.counts("again") == Some((1, 0, 0))).await);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn x_death_lists_the_newest_death_first_across_two_queues() {
    let b = TestBroker::start().await;
    let (_c, ch) = channel(&b).await;
    queue(&ch, "final", FieldTable::default()).await;
    queue(
        &ch,
        "second",
        table(&[
            ("x-message-ttl", int(50)),
            ("x-dead-letter-exchange", s("")),
            ("x-dead-letter-routing-key", s("final")),
        ]),
    )
    .await;
    queue(
        &ch,
        "first",
        table(&[("x-dead-letter-exchange", s("")), ("x-dead-letter-routing-key", s("second"))]),
    )
    .await;
    publish(&ch, "first", "twice", BasicProperties::default()).await;
    get(&ch, "first")
        .await
        .expect("m")
        .delivery
        .reject(BasicRejectOptions { requeue: false })
        .await
        .expect("reject");
    assert!(eventually(|| b.counts("final") == Some((1, 0, 0))).await);
    let d = get(&ch, "final").await.expect("twice dead").delivery;
    let x = deaths(&d);
    let order: Vec<_> = x.iter().map(|t| (text(field(t, "queue")), text(field(t, "reason")))).collect();
    assert_eq!(
        order,
        vec![
            (Some("second".into()), Some("expired".into())),
            (Some("first".into()), Some("rejected".into()))
        ]
    );
    assert_eq!(text(header(&d, "x-first-death-queue").as_ref()).as_deref(), Some("first"));
    assert_eq!(text(header(&d, "x-last-death-queue").as_ref()).as_deref(), Some("second"));
    assert_eq!(text(header(&d, "x-last-death-reason").as_ref()).as_deref(), Some("expired"));
}

#[tokio::test(flavor = "multi_thread")]
async fn delivery_limit_dead_letters_after_too_many_returns_and_shows_the_count() {
    let b = TestBroker::start().await;
    let (_c, ch) = channel(&b).await;
    let dlx = dlq(&ch, "poison").await;
    queue(&ch, "limited", table(&[("x-delivery-limit", int(2)), ("x-dead-letter-exchange", s(&dlx))])).await;
    publish(&ch, "limited", "bad", BasicProperties::default()).await;
    for expected in [None, Some(1), Some(2)] {
        let m = get(&ch, "limited").await.expect("delivery").delivery;
        assert_eq!(header(&m, "x-delivery-count"), expected.map(int));
        m.nack(BasicNackOptions { requeue: true, ..Default::default() }).await.expect("nack");
    }
    assert!(eventually(|| b.counts("poison") == Some((1, 0, 0))).await);
    assert_eq!(b.counts("limited"), Some((0, 0, 0)));
    let d = get(&ch, "poison").await.expect("poison").delivery;
    assert_eq!(text(field(&deaths(&d)[0], "reason")).as_deref(), Some("delivery_limit"));
}

#[tokio::test(flavor = "multi_thread")]
async fn retry_policy_backs_off_without_blocking_the_queue_then_dead_letters() {
    let b = TestBroker::start().await;
    let (_c, ch) = channel(&b).await;
    let dlx = dlq(&ch, "retries-exhausted").await;
    let args = table(&[
        ("x-retry-policy", s("exponential")),
        ("x-retry-delay-ms", int(150)),
        ("x-retry-max-attempts", int(2)),
        ("x-dead-letter-exchange", s(&dlx)),
    ]);
    queue(&ch, "jobs", args).await;
    let mut consumer = ch
        .basic_consume("jobs".into(), "worker".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await
        .expect("consume");
    publish(&ch, "jobs", "flaky", BasicProperties::default()).await;
    publish(&ch, "jobs", "fine", BasicProperties::default()).await;

    let first = consumer.next().await.expect("d").expect("ok");
    assert_eq!(first.data, b"flaky");
    let nacked_at = Instant::now();
    first.nack(BasicNackOptions { requeue: true, ..Default::default() }).await.expect("nack");
    // The rest of the queue flows while the failed message waits.
    let next = consumer.next().await.expect("d").expect("ok");
    assert_eq!(next.data, b"fine");
    next.ack(BasicAckOptions::default()).await.expect("ack");

    let mut waits = Vec::new();
    for attempt in 1..=2i64 {
        let again = consumer.next().await.expect("d").expect("ok");
        waits.push(nacked_at.elapsed());
        assert_eq!(again.data, b"flaky");
        assert_eq!(header(&again, "x-retry-count"), Some(int(attempt)));
        again.nack(BasicNackOptions { requeue: true, ..Default::default() }).await.expect("nack");
    }
    // First delay 150 ms, second 300 ms (doubling).
    assert!(waits[0] >= Duration::from_millis(140), "{waits:?}");
    assert!(waits[1] >= Duration::from_millis(140 + 290), "{waits:?}");
    assert!(eventually(|| b.counts("retries-exhausted") == Some((1, 0, 0))).await);
    let d = get(&ch, "retries-exhausted").await.expect("dead").delivery;
    assert_eq!(text(field(&deaths(&d)[0], "reason")).as_deref(), Some("rejected"));
}

#[tokio::test(flavor = "multi_thread")]
async fn config_policies_give_matching_queues_a_dead_letter_exchange() {
    let b = TestBroker::start_with(|s| {
        let arguments = warren_core::policy::arguments_from(&[(
            "dead-letter-exchange",
            warren_codec::FieldValue::str("dlx-policy-dlq"),
        )])
        .expect("keys");
        s.policies = vec![warren_core::policy::Policy {
            vhost: "/".into(),
            name: "orders".into(),
            pattern: regex::Regex::new("^orders\\.").expect("regex"),
            priority: 0,
            arguments,
        }];
    })
    .await;
    let (_c, ch) = channel(&b).await;
    dlq(&ch, "policy-dlq").await;
    queue(&ch, "orders.eu", FieldTable::default()).await;
    queue(&ch, "audit", FieldTable::default()).await;
    for q in ["orders.eu", "audit"] {
        publish(&ch, q, q, BasicProperties::default()).await;
        get(&ch, q)
            .await
            .expect("m")
            .delivery
            .reject(BasicRejectOptions { requeue: false })
            .await
            .expect("reject");
    }
    assert!(eventually(|| b.counts("policy-dlq") == Some((1, 0, 0))).await);
    assert_eq!(get(&ch, "policy-dlq").await.expect("dead").delivery.data, b"orders.eu");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_operator_lists_queues_and_replays_a_dead_letter_queue() {
    let b = TestBroker::start().await;
    let (_c, ch) = channel(&b).await;
    let dlx = dlq(&ch, "replay-dlq").await;
    queue(&ch, "billing", table(&[("x-dead-letter-exchange", s(&dlx))])).await;
    for i in 0..3 {
        publish(&ch, "billing", &format!("invoice-{i}"), BasicProperties::default()).await;
        get(&ch, "billing")
            .await
            .expect("m")
            .delivery
            .reject(BasicRejectOptions { requeue: false })
            .await
            .expect("reject");
    }
    assert!(eventually(|| b.counts("replay-dlq") == Some((3, 0, 0))).await);

    let (status, body) = common::http(&b, "GET", "/api/queues").await;
    assert_eq!(status, 200, "{body}");
    let queues: serde_json::Value = serde_json::from_str(&body).expect("json");
    let find = |name: &str| queues.as_array().and_then(|a| a.iter().find(|q| q["name"] == name)).cloned();
    let dead = find("replay-dlq").expect("listed");
    assert_eq!(
        (dead["dead_letter_target"].as_bool(), dead["messages_ready"].as_u64()),
        (Some(true), Some(3))
    );
    let billing = find("billing").expect("listed");
    assert_eq!(billing["dead_letter_target"].as_bool(), Some(false));
    assert_eq!(billing["dead_lettered"]["rejected"].as_u64(), Some(3));

    let (status, body) = common::http(&b, "POST", "/api/queues/%2F/replay-dlq/replay?count=2").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&body).expect("json")["moved"], 2);
    assert_eq!(b.counts("billing"), Some((2, 0, 0)));
    assert_eq!(b.counts("replay-dlq"), Some((1, 0, 0)));
    let back = get(&ch, "billing").await.expect("replayed").delivery;
    assert_eq!(back.data, b"invoice-0", "oldest first");
    assert_eq!(deaths(&back).len(), 1, "the history stays on the message");

    let (status, _) = common::http(&b, "POST", "/api/queues/%2F/replay-dlq/replay").await;
    assert_eq!(status, 200);
    assert_eq!(b.counts("replay-dlq"), Some((0, 0, 0)));
    let (status, body) = common::http(&b, "POST", "/api/queues/%2F/nope/replay").await;
    assert_eq!(status, 404, "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replay_never_loses_a_message_its_queue_refuses_and_works_in_batches() {
    let b = TestBroker::start().await;
    let (_c, ch) = channel(&b).await;
    let dlx = dlq(&ch, "refuse-dlq").await;
    let args = table(&[
        ("x-dead-letter-exchange", s(&dlx)),
        ("x-max-length", int(1)),
        ("x-overflow", s("reject-publish")),
    ]);
    queue(&ch, "small", args).await;
    for i in 0..3 {
        publish(&ch, "small", &format!("dead-{i}"), BasicProperties::default()).await;
        let m = get(&ch, "small").await.expect("m").delivery;
        m.reject(BasicRejectOptions { requeue: false }).await.expect("reject");
    }
    assert!(eventually(|| b.counts("refuse-dlq") == Some((3, 0, 0))).await);
    publish(&ch, "small", "filler", BasicProperties::default()).await;
    assert!(eventually(|| b.counts("small") == Some((1, 0, 0))).await);
    let replay = || common::http(&b, "POST", "/api/queues/%2F/refuse-dlq/replay");
    let json = |body: &str| serde_json::from_str::<serde_json::Value>(body).expect("json");
    // The queue they died in is full: nothing moves, nothing is lost.
    let (status, body) = replay().await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (json(&body)["moved"].as_u64(), json(&body)["refused"].as_u64()),
        (Some(0), Some(3)),
        "{body}"
    );
    assert_eq!(b.counts("refuse-dlq"), Some((3, 0, 0)));
    // Room for one: the oldest moves, the others stay.
    assert_eq!(get(&ch, "small").await.expect("filler").delivery.data, b"filler");
    let (_, body) = replay().await;
    assert_eq!(
        (json(&body)["moved"].as_u64(), json(&body)["refused"].as_u64()),
        (Some(1), Some(2)),
        "{body}"
    );
    assert_eq!(b.counts("refuse-dlq"), Some((2, 0, 0)));
    assert_eq!(get(&ch, "small").await.expect("replayed").delivery.data, b"dead-0");

    // 2 500 dead letters take three batches, each its own turn of the broker lock.
    let dlx = dlq(&ch, "bulk-dlq").await;
    queue(&ch, "bulk", table(&[("x-dead-letter-exchange", s(&dlx))])).await;
    let expired = BasicProperties::default().with_expiration("0".into());
    for i in 0..2500 {
        publish(&ch, "bulk", &i.to_string(), expired.clone()).await;
    }
    assert!(eventually(|| b.counts("bulk-dlq") == Some((2500, 0, 0))).await, "{:?}", b.counts("bulk-dlq"));
    let (status, body) = common::http(&b, "POST", "/api/queues/%2F/bulk-dlq/replay").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["moved"].as_u64(), Some(2500), "{body}");
    assert_eq!(b.counts("bulk"), Some((2500, 0, 0)));
    assert_eq!(get(&ch, "bulk").await.expect("first").delivery.data, b"0", "oldest first");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_consumer_that_never_acks_is_cancelled_after_its_timeout_and_another_gets_the_message() {
    let b = TestBroker::start().await;
    let (_c, ch) = channel(&b).await;
    queue(&ch, "stuck-consumer", table(&[("x-consumer-timeout", int(300))])).await;
    publish(&ch, "stuck-consumer", "work", BasicProperties::default()).await;
    let mut lazy = ch
        .basic_consume(
            "stuck-consumer".into(),
            "lazy".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let first = lazy.next().await.expect("delivery").expect("ok");
    assert_eq!(first.data, b"work");
    // lapin asks for consumer_cancel_notify: the broker cancels the consumer instead of
    // closing the channel, and the message goes back.
    assert!(
        eventually(|| b.counts("stuck-consumer") == Some((1, 0, 0))).await,
        "{:?}",
        b.counts("stuck-consumer")
    );
    let again = get(&ch, "stuck-consumer").await.expect("back in the queue").delivery;
    assert!(again.redelivered);
    again.ack(BasicAckOptions::default()).await.expect("ack");
    // The late ack of the first delivery is harmless: the channel stays open.
    first.ack(BasicAckOptions::default()).await.expect("late ack");
    queue(&ch, "still-open", FieldTable::default()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rabbitmq_4_3_delayed_retry_arguments_delay_nacks_and_returns() {
    use std::time::{Duration, Instant};
    let b = TestBroker::start().await;
    let conn =
        lapin::Connection::connect(&b.uri(), lapin::ConnectionProperties::default()).await.expect("connect");
    let ch = conn.create_channel().await.expect("channel");
    let args = common::table(&[
        ("x-delayed-retry-type", common::s("all")),
        ("x-delayed-retry-min", lapin::types::AMQPValue::LongInt(300)),
        ("x-delayed-retry-max", lapin::types::AMQPValue::LongInt(500)),
    ]);
    ch.queue_declare("later".into(), lapin::options::QueueDeclareOptions::default(), args)
        .await
        .expect("declare");
    ch.basic_publish(
        "".into(),
        "later".into(),
        Default::default(),
        b"job",
        lapin::BasicProperties::default(),
    )
    .await
    .expect("publish");
    let get = |ch: lapin::Channel| async move {
        let started = Instant::now();
        loop {
            if let Some(m) = ch.basic_get("later".into(), Default::default()).await.expect("get") {
                return (m, started.elapsed());
            }
            assert!(started.elapsed() < Duration::from_secs(5), "never came back");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let (m, _) = get(ch.clone()).await;
    // A nack with requeue: held min × 1 = 300 ms.
    m.nack(lapin::options::BasicNackOptions { requeue: true, ..Default::default() }).await.expect("nack");
    let (m, waited) = get(ch.clone()).await;
    assert!(waited >= Duration::from_millis(250), "back after {waited:?}");
    // A return by a closing channel ("all"): held min × 2 = 600, capped at 500 ms.
    drop(m);
    ch.close(200, "bye".into()).await.expect("close");
    let ch = conn.create_channel().await.expect("channel");
    let (m, waited) = get(ch.clone()).await;
    assert!(waited >= Duration::from_millis(400), "back after {waited:?}");
    let count =
        m.delivery.properties.headers().as_ref().and_then(|h| h.inner().get("x-delivery-count").cloned());
    assert_eq!(count, Some(lapin::types::AMQPValue::LongLongInt(2)));
}
