//! Routing and publishing semantics through lapin: every exchange type, bindings, exchange-to-
//! exchange routing, alternate and internal exchanges, CC/BCC, transactions, consumer
//! priorities, single active consumer, and the error codes RabbitMQ gives for each.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{TestBroker, code, eventually, s, table};
use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldArray, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind};

async fn channel(b: &TestBroker) -> (Connection, Channel) {
    let conn = Connection::connect(&b.uri(), ConnectionProperties::default()).await.expect("connect");
    let ch = conn.create_channel().await.expect("channel");
    (conn, ch)
}

async fn exchange(ch: &Channel, name: &str, kind: ExchangeKind) {
    exchange_with(ch, name, kind, ExchangeDeclareOptions::default(), FieldTable::default()).await;
}

async fn exchange_with(
    ch: &Channel,
    name: &str,
    kind: ExchangeKind,
    o: ExchangeDeclareOptions,
    args: FieldTable,
) {
    ch.exchange_declare(name.into(), kind, o, args).await.expect("exchange.declare");
}

async fn queue(ch: &Channel, name: &str) {
    ch.queue_declare(name.into(), QueueDeclareOptions::default(), FieldTable::default())
        .await
        .expect("declare");
}

async fn bind(ch: &Channel, q: &str, x: &str, key: &str, args: FieldTable) {
    ch.queue_bind(q.into(), x.into(), key.into(), QueueBindOptions::default(), args).await.expect("bind");
}

async fn publish_props(ch: &Channel, x: &str, key: &str, body: &str, props: BasicProperties) {
    ch.basic_publish(x.into(), key.into(), BasicPublishOptions::default(), body.as_bytes(), props)
        .await
        .expect("publish");
}

async fn publish(ch: &Channel, x: &str, key: &str, body: &str) {
    publish_props(ch, x, key, body, BasicProperties::default()).await;
}

/// Bodies currently in a queue, drained with auto-ack gets.
async fn drain(ch: &Channel, q: &str) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(m) = ch.basic_get(q.into(), BasicGetOptions { no_ack: true }).await.expect("get") {
        out.push(String::from_utf8_lossy(&m.delivery.data).into_owned());
    }
    out
}

/// The channel error a publish causes. lapin sends content after other pending methods, so
/// the error is read from that publish's own confirm rather than from a later call.
async fn publish_error(ch: &Channel, x: &str, key: &str) -> Option<u16> {
    ch.confirm_select(ConfirmSelectOptions::default()).await.ok()?;
    let confirm = ch
        .basic_publish(x.into(), key.into(), BasicPublishOptions::default(), b"x", BasicProperties::default())
        .await
        .ok()?;
    confirm.await.err().as_ref().and_then(code)
}

#[tokio::test(flavor = "multi_thread")]
async fn direct_fanout_and_topic_route_as_rabbitmq() {
    let b = TestBroker::start().await;
    let (_c, ch) = channel(&b).await;
    exchange(&ch, "d", ExchangeKind::Direct).await;
    exchange(&ch, "f", ExchangeKind::Fanout).await;
    exchange(&ch, "t", ExchangeKind::Topic).await;
    for q in ["q1", "q2", "q3"] {
        queue(&ch, q).await;
    }
    bind(&ch, "q1", "d", "red", FieldTable::default()).await;
    bind(&ch, "q2", "d", "blue", FieldTable::default()).await;
    bind(&ch, "q1", "f", "", FieldTable::default()).await;
    bind(&ch, "q2", "f", "ignored", FieldTable::default()).await;
    bind(&ch, "q1", "t", "stock.*.nyse", FieldTable::default()).await;
    bind(&ch, "q2", "t", "stock.#", FieldTable::default()).await;
    bind(&ch, "q3", "t", "#.eur", FieldTable::default()).await;

    publish(&ch, "d", "red", "d-red").await;
    publish(&ch, "d", "green", "d-green").await;
    publish(&ch, "f", "whatever", "f").await;
    publish(&ch, "t", "stock.ibm.nyse", "t1").await;
    publish(&ch, "t", "stock.eur", "t2").await;
    publish(&ch, "t", "fx.usd", "t3").await;
    assert_eq!(drain(&ch, "q1").await, ["d-red", "f", "t1"]);
    assert_eq!(drain(&ch, "q2").await, ["f", "t1", "t2"]);
    assert_eq!(drain(&ch, "q3").await, ["t2"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn headers_exchange_matches_all_and_any() {
    let b = TestBroker::start().await;
    let (_c, ch) = channel(&b).await;
    queue(&ch, "all").await;
    queue(&ch, "any").await;
    bind(
        &ch,
        "all",
        "amq.headers",
        "",
        table(&[("x-match", s("all")), ("format", s("pdf")), ("type", s("report"))]),
    )
    .await;
    bind(
        &ch,
        "any",
        "amq.match",
        "",
        table(&[("x-match", s("any")), ("format", s("pdf")), ("type", s("log"))]),
    )
    .await;
    let with = |pairs: &[(&str, AMQPValue)]| BasicProperties::default().with_headers(table(pairs));
    publish_props(&ch, "amq.headers", "", "pdf-report", with(&[("format", s("pdf")), ("type", s("report"))]))
        .await;
    publish_props(&ch, "amq.headers", "", "pdf-only", with(&[("format", s("pdf"))])).await;
    publish_props(&ch, "amq.match", "", "log", with(&[("type", s("log"))])).await;
    assert_eq!(drain(&ch, "all").await, ["pdf-report"]);
    assert_eq!(drain(&ch, "any").await, ["log"]);
    let e = ch
        .queue_bind(
            "all".into(),
            "amq.headers".into(),
            "".into(),
            QueueBindOptions::default(),
            table(&[("x-match", s("most"))]),
        )
        .await
        .expect_err("bad x-match");
    assert_eq!(code(&e), Some(406));
}

#[tokio::test(flavor = "multi_thread")]
async fn predeclared_and_reserved_names() {
    let b = TestBroker::start().await;
    let (_c, ch) = channel(&b).await;
    for (name, kind) in [
        ("amq.direct", ExchangeKind::Direct),
        ("amq.fanout", ExchangeKind::Fanout),
        ("amq.topic", ExchangeKind::Topic),
        ("amq.headers", ExchangeKind::Headers),
        ("amq.match", ExchangeKind::Headers),
    ] {
        let o = ExchangeDeclareOptions { passive: true, ..Default::default() };
        ch.exchange_declare(name.into(), kind, o, FieldTable::default()).await.expect(name);
    }
    let e = ch
        .exchange_declare(
            "amq.mine".into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect_err("reserved");
    assert_eq!(code(&e), Some(403));
    let (_c, ch) = channel(&b).await;
    let e =
        ch.exchange_delete("amq.direct".into(), ExchangeDeleteOptions::default()).await.expect_err("system");
    assert_eq!(code(&e), Some(403));
    let (_c, ch) = channel(&b).await;
    queue(&ch, "q").await;
    let e = ch
        .queue_bind("q".into(), "".into(), "q".into(), QueueBindOptions::default(), FieldTable::default())
        .await
        .expect_err("default exchange");
    assert_eq!(code(&e), Some(403));
    let (_c, ch) = channel(&b).await;
    let e =
        ch.exchange_delete("".into(), ExchangeDeleteOptions::default()).await.expect_err("default exchange");
    assert_eq!(code(&e), Some(403));
}

#[tokio::test(flavor = "multi_thread")]
async fn declare_equivalence_unknown_type_and_passive() {
    let b = TestBroker::start().await;
    let (_c, ch) = channel(&b).await;
    exchange(&ch, "x", ExchangeKind::Direct).await;
    exchange(&ch, "x", ExchangeKind::Direct).await;
    let e = ch
        .exchange_declare(
            "x".into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect_err("inequivalent");
    assert_eq!(code(&e), Some(406));
    let (_c, ch) = channel(&b).await;
    let o = ExchangeDeclareOptions { passive: true, ..Default::default() };
    let e = ch
        .exchange_declare("nope".into(), ExchangeKind::Direct, o, FieldTable::default())
        .await
        .expect_err("404");
    assert_eq!(code(&e), Some(404));
    let (conn, ch) = channel(&b).await;
    let kind = ExchangeKind::Custom("x-no-such-type".into());
    let e = ch
        .exchange_declare("y".into(), kind, ExchangeDeclareOptions::default(), FieldTable::default())
        .await
        .expect_err("503");
    assert_eq!(code(&e), Some(503));
    assert!(eventually(|| !conn.status().connected()).await, "503 is a connection error");
}

#[tokio::test(flavor = "multi_thread")]
async fn delete_if_unused_and_deleting_removes_routes() {
    let b = TestBroker::start().await;
    let (_c, ch) = channel(&b).await;
    exchange(&ch, "gone", ExchangeKind::Fanout).await;
    queue(&ch, "q").await;
    bind(&ch, "q", "gone", "", FieldTable::default()).await;
    let e = ch
        .exchange_delete("gone".into(), ExchangeDeleteOptions { if_unused: true, ..Default::default() })
        .await
        .expect_err("in use");
    assert_eq!(code(&e), Some(406));
    let (_c, ch) = channel(&b).await;
    ch.exchange_delete("gone".into(), ExchangeDeleteOptions::default()).await.expect("delete");
    ch.exchange_delete("gone".into(), ExchangeDeleteOptions::default()).await.expect("idempotent");
    assert_eq!(publish_error(&ch, "gone", "").await, Some(404));
    // Deleting a queue removes its bindings too.
    let (_c, ch) = channel(&b).await;
    exchange(&ch, "keep", ExchangeKind::Fanout).await;
    queue(&ch, "tmp").await;
    bind(&ch, "tmp", "keep", "", FieldTable::default()).await;
    ch.queue_delete("tmp".into(), QueueDeleteOptions::default()).await.expect("delete");
    let count = warren::server::lock(&b.shared).broker.exchange("keep").map(|x| x.binding_count());
    assert_eq!(count, Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn exchange_to_exchange_bindings_reach_each_queue_once_even_in_a_loop() {
    let b = TestBroker::start().await;
    let (_c, ch) = channel(&b).await;
    exchange(&ch, "a", ExchangeKind::Fanout).await;
    exchange(&ch, "b", ExchangeKind::Fanout).await;
    queue(&ch, "q").await;
    ch.exchange_bind(
        "b".into(),
        "a".into(),
        "".into(),
        ExchangeBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("a->b");
    ch.exchange_bind(
        "a".into(),
        "b".into(),
        "".into(),
        ExchangeBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("b->a");
    bind(&ch, "q", "a", "", FieldTable::default()).await;
    bind(&ch, "q", "b", "", FieldTable::default()).await;
    publish(&ch, "a", "", "once").await;
    assert_eq!(drain(&ch, "q").await, ["once"]);
    ch.exchange_unbind(
        "a".into(),
        "b".into(),
        "".into(),
        ExchangeUnbindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("unbind");
    let e = ch
        .exchange_bind(
            "missing".into(),
            "a".into(),
            "".into(),
            ExchangeBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect_err("404");
    assert_eq!(code(&e), Some(404));
}

#[tokio::test(flavor = "multi_thread")]
async fn auto_delete_exchange_goes_with_its_last_binding() {
    let b = TestBroker::start().await;
    let (_c, ch) = channel(&b).await;
    let o = ExchangeDeclareOptions { auto_delete: true, ..Default::default() };
    exchange_with(&ch, "ad", ExchangeKind::Direct, o, FieldTable::default()).await;
    queue(&ch, "q").await;
    bind(&ch, "q", "ad", "k", FieldTable::default()).await;
    ch.queue_unbind("q".into(), "ad".into(), "k".into(), FieldTable::default()).await.expect("unbind");
    assert!(eventually(|| warren::server::lock(&b.shared).broker.exchange("ad").is_none()).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn alternate_exchange_takes_what_would_be_unroutable() {
    let b = TestBroker::start().await;
    let (_c, ch) = channel(&b).await;
    exchange(&ch, "ae", ExchangeKind::Fanout).await;
    let args = table(&[("alternate-exchange", s("ae"))]);
    exchange_with(&ch, "main", ExchangeKind::Direct, ExchangeDeclareOptions::default(), args).await;
    queue(&ch, "routed").await;
    queue(&ch, "unrouted").await;
    bind(&ch, "routed", "main", "known", FieldTable::default()).await;
    bind(&ch, "unrouted", "ae", "", FieldTable::default()).await;
    publish(&ch, "main", "known", "k").await;
    publish(&ch, "main", "other", "o").await;
    assert_eq!(drain(&ch, "routed").await, ["k"]);
    assert_eq!(drain(&ch, "unrouted").await, ["o"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn internal_exchanges_refuse_publishes_but_route_from_other_exchanges() {
    let b = TestBroker::start().await;
    let (_c, ch) = channel(&b).await;
    let o = ExchangeDeclareOptions { internal: true, ..Default::default() };
    exchange_with(&ch, "inner", ExchangeKind::Fanout, o, FieldTable::default()).await;
    exchange(&ch, "outer", ExchangeKind::Fanout).await;
    ch.exchange_bind(
        "inner".into(),
        "outer".into(),
        "".into(),
        ExchangeBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("bind");
    queue(&ch, "q").await;
    bind(&ch, "q", "inner", "", FieldTable::default()).await;
    publish(&ch, "outer", "", "via-outer").await;
    assert_eq!(drain(&ch, "q").await, ["via-outer"]);
    assert_eq!(publish_error(&ch, "inner", "").await, Some(403));
}

#[tokio::test(flavor = "multi_thread")]
async fn bindings_are_equal_by_key_and_arguments() {
    let b = TestBroker::start().await;
    let (_c, ch) = channel(&b).await;
    exchange(&ch, "x", ExchangeKind::Direct).await;
    queue(&ch, "q").await;
    bind(&ch, "q", "x", "k", FieldTable::default()).await;
    bind(&ch, "q", "x", "k", FieldTable::default()).await;
    bind(&ch, "q", "x", "k", table(&[("tag", s("1"))])).await;
    let count = || warren::server::lock(&b.shared).broker.exchange("x").map(|x| x.binding_count());
    assert_eq!(count(), Some(2));
    ch.queue_unbind("q".into(), "x".into(), "k".into(), FieldTable::default()).await.expect("unbind");
    assert_eq!(count(), Some(1));
    publish(&ch, "x", "k", "still routed").await;
    assert_eq!(drain(&ch, "q").await, ["still routed"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn cc_and_bcc_add_routing_keys_and_bcc_is_stripped() {
    let b = TestBroker::start().await;
    let (_c, ch) = channel(&b).await;
    for q in ["main", "cc", "bcc"] {
        queue(&ch, q).await;
        bind(&ch, q, "amq.direct", q, FieldTable::default()).await;
    }
    let headers = table(&[
        ("CC", AMQPValue::FieldArray(FieldArray::from(vec![s("cc")]))),
        ("BCC", AMQPValue::FieldArray(FieldArray::from(vec![s("bcc")]))),
    ]);
    publish_props(&ch, "amq.direct", "main", "m", BasicProperties::default().with_headers(headers)).await;
    for q in ["main", "cc", "bcc"] {
        let m = ch.basic_get(q.into(), BasicGetOptions { no_ack: true }).await.expect("get").expect(q);
        let h = m.delivery.properties.headers().clone().unwrap_or_default();
        assert!(h.inner().contains_key("CC"), "{q}: CC must stay");
        assert!(!h.inner().contains_key("BCC"), "{q}: BCC must go");
        assert_eq!(m.delivery.routing_key.as_str(), "main");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn mandatory_unroutable_through_an_exchange_is_returned() {
    let b = TestBroker::start().await;
    let (_c, ch) = channel(&b).await;
    ch.confirm_select(ConfirmSelectOptions::default()).await.expect("confirm");
    let o = BasicPublishOptions { mandatory: true, ..Default::default() };
    let c = ch
        .basic_publish("amq.topic".into(), "no.one.listens".into(), o, b"r", BasicProperties::default())
        .await
        .expect("publish")
        .await
        .expect("confirm");
    let Confirmation::Ack(Some(ret)) = c else { panic!("expected a return, got {c:?}") };
    assert_eq!((ret.reply_code, ret.routing_key.as_str()), (312, "no.one.listens"));
}

#[tokio::test(flavor = "multi_thread")]
async fn transactions_hold_publishes_and_acks_until_commit() {
    let b = TestBroker::start().await;
    let (_c, ch) = channel(&b).await;
    queue(&ch, "tx").await;
    publish(&ch, "", "tx", "before").await;
    ch.tx_select().await.expect("tx.select");
    publish(&ch, "", "tx", "one").await;
    publish(&ch, "", "tx", "two").await;
    let before = ch.basic_get("tx".into(), BasicGetOptions::default()).await.expect("get").expect("before");
    before.delivery.ack(BasicAckOptions::default()).await.expect("ack");
    assert!(eventually(|| b.counts("tx") == Some((0, 1, 0))).await, "publishes visible before commit");
    ch.tx_rollback().await.expect("rollback");
    assert_eq!(b.counts("tx"), Some((0, 1, 0)), "rollback must drop the publishes and keep the ack pending");
    publish(&ch, "", "tx", "three").await;
    // lapin's per-delivery acker refuses a second use; ack by tag on the channel instead.
    ch.basic_ack(before.delivery.delivery_tag, BasicAckOptions::default()).await.expect("ack");
    ch.tx_commit().await.expect("commit");
    assert_eq!(b.counts("tx"), Some((1, 0, 0)));
    assert_eq!(drain(&ch, "tx").await, ["three"]);
    let e = ch.confirm_select(ConfirmSelectOptions::default()).await.expect_err("tx then confirm");
    assert_eq!(code(&e), Some(406));
    let (_c, ch) = channel(&b).await;
    let e = ch.tx_commit().await.expect_err("not transactional");
    assert_eq!(code(&e), Some(406));
}

#[tokio::test(flavor = "multi_thread")]
async fn higher_priority_consumers_are_served_first_while_they_have_room() {
    let b = TestBroker::start().await;
    let (_c, ch) = channel(&b).await;
    queue(&ch, "prio").await;
    ch.basic_qos(1, BasicQosOptions::default()).await.expect("qos");
    let high = table(&[("x-priority", AMQPValue::LongInt(10))]);
    let mut lo = ch
        .basic_consume("prio".into(), "low".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await
        .expect("low");
    let mut hi = ch
        .basic_consume("prio".into(), "high".into(), BasicConsumeOptions::default(), high)
        .await
        .expect("high");
    publish(&ch, "", "prio", "1").await;
    let first = hi.next().await.expect("d").expect("ok");
    assert_eq!(first.data, b"1");
    publish(&ch, "", "prio", "2").await;
    let second = lo.next().await.expect("d").expect("ok");
    assert_eq!(second.data, b"2", "the high-priority consumer was full");
    first.ack(BasicAckOptions::default()).await.expect("ack");
    publish(&ch, "", "prio", "3").await;
    let third = hi.next().await.expect("d").expect("ok");
    assert_eq!(third.data, b"3");
}

#[tokio::test(flavor = "multi_thread")]
async fn single_active_consumer_gets_everything_until_it_cancels() {
    let b = TestBroker::start().await;
    let (_c, ch) = channel(&b).await;
    let args = table(&[("x-single-active-consumer", AMQPValue::Boolean(true))]);
    ch.queue_declare("sac".into(), QueueDeclareOptions::default(), args).await.expect("declare");
    let o = BasicConsumeOptions { no_ack: true, ..Default::default() };
    let mut one = ch.basic_consume("sac".into(), "one".into(), o, FieldTable::default()).await.expect("one");
    let mut two = ch.basic_consume("sac".into(), "two".into(), o, FieldTable::default()).await.expect("two");
    for i in 0..4 {
        publish(&ch, "", "sac", &i.to_string()).await;
    }
    for i in 0..4 {
        assert_eq!(one.next().await.expect("d").expect("ok").data, i.to_string().as_bytes());
    }
    assert!(tokio::time::timeout(Duration::from_millis(100), two.next()).await.is_err());
    ch.basic_cancel("one".into(), BasicCancelOptions::default()).await.expect("cancel");
    publish(&ch, "", "sac", "after").await;
    assert_eq!(two.next().await.expect("d").expect("ok").data, b"after");
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_a_queue_cancels_its_consumers_with_a_notification() {
    let b = TestBroker::start().await;
    let (_c, ch) = channel(&b).await;
    queue(&ch, "doomed").await;
    let mut c = ch
        .basic_consume("doomed".into(), "".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await
        .expect("consume");
    let (_c2, other) = channel(&b).await;
    other.queue_delete("doomed".into(), QueueDeleteOptions::default()).await.expect("delete");
    let end = tokio::time::timeout(Duration::from_secs(2), c.next()).await.expect("consumer should end");
    assert!(end.is_none(), "expected the stream to end on basic.cancel, got {end:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn one_channel_one_queue_keeps_publish_order_through_an_exchange() {
    let b = TestBroker::start().await;
    let (_c, ch) = channel(&b).await;
    queue(&ch, "ordered").await;
    bind(&ch, "ordered", "amq.topic", "orders.#", FieldTable::default()).await;
    for i in 0..200 {
        publish(&ch, "amq.topic", &format!("orders.{}", i % 7), &i.to_string()).await;
    }
    let got = drain(&ch, "ordered").await;
    let want: Vec<String> = (0..200).map(|i| i.to_string()).collect();
    assert_eq!(got, want);
}

#[tokio::test(flavor = "multi_thread")]
async fn consistent_hash_keeps_keys_together_and_follows_weights() {
    let b = TestBroker::start().await;
    let (_c, ch) = channel(&b).await;
    let kind = ExchangeKind::Custom("x-consistent-hash".into());
    ch.exchange_declare("ch".into(), kind, ExchangeDeclareOptions::default(), FieldTable::default())
        .await
        .expect("declare");
    let weights = [("w1a", "1"), ("w1b", "1"), ("w2", "2"), ("w4", "4")];
    for (q, w) in weights {
        queue(&ch, q).await;
        bind(&ch, q, "ch", w, FieldTable::default()).await;
    }
    for i in 0..10_000u32 {
        let key = format!("{:x}", i.wrapping_mul(2_654_435_761));
        publish(&ch, "ch", &key, &key).await;
    }
    assert!(
        eventually(|| weights.iter().map(|(q, _)| b.counts(q).map_or(0, |c| c.0)).sum::<usize>() == 10_000)
            .await
    );
    let mut home: HashMap<String, &str> = HashMap::new();
    for (q, w) in weights {
        let got = drain(&ch, q).await;
        let share = got.len() as f64 / 10_000.0;
        let want = w.parse::<f64>().unwrap_or(0.0) / 8.0;
        assert!((share - want).abs() / want < 0.1, "{q}: {share} vs {want}");
        for key in got {
            assert!(home.insert(key, q).is_none(), "a key landed in two queues");
        }
    }
    // The same keys again land where they landed before.
    for key in home.keys().take(200) {
        publish(&ch, "ch", key, key).await;
    }
    for (q, _) in weights {
        for key in drain(&ch, q).await {
            assert_eq!(home.get(&key), Some(&q));
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn modulus_hash_sends_each_key_to_one_queue() {
    let b = TestBroker::start().await;
    let (_c, ch) = channel(&b).await;
    let kind = ExchangeKind::Custom("x-modulus-hash".into());
    ch.exchange_declare("mh".into(), kind, ExchangeDeclareOptions::default(), FieldTable::default())
        .await
        .expect("declare");
    for q in ["m0", "m1", "m2"] {
        queue(&ch, q).await;
        bind(&ch, q, "mh", "", FieldTable::default()).await;
    }
    for i in 0..300 {
        publish(&ch, "mh", &format!("k{}", i % 30), &format!("k{}", i % 30)).await;
    }
    let mut home: HashMap<String, &str> = HashMap::new();
    for q in ["m0", "m1", "m2"] {
        let got = drain(&ch, q).await;
        assert!(!got.is_empty(), "{q} got nothing");
        for key in got {
            assert_eq!(*home.entry(key).or_insert(q), q);
        }
    }
}
