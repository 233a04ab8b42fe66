//! Errors, limits and RabbitMQ's answers through lapin: each refused with RabbitMQ's code,
//! closing the channel or the connection as RabbitMQ does.

mod common;

use std::time::Duration;

use common::lapin_client::{connect, declare, publish};
use common::{TestBroker, code, eventually};
use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties};

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
