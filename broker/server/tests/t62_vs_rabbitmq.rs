//! The same scenarios against Warren and, when `RABBITMQ_URL` names one (for example
//! `amqp://guest:guest@127.0.0.1:5672/%2f` after `rabbitmq-server -detached`), against a real
//! RabbitMQ: each scenario's outcome, as the client sees it, must be the same on both.
//! Without `RABBITMQ_URL` the RabbitMQ half is skipped with a message.

mod common;

use std::time::Duration;

use common::{TestBroker, code};
use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties};

/// Runs `scenario` on Warren, and on RabbitMQ when configured; asserts both saw the same.
async fn compare<F, Fut>(what: &str, scenario: F)
where
    F: Fn(String, String) -> Fut,
    Fut: std::future::Future<Output = Vec<String>>,
{
    let b = TestBroker::start().await;
    // Names differ per run, so a RabbitMQ that keeps state between runs is not confused.
    let run = format!("{}-{}", what, std::process::id());
    let warren = scenario(b.uri(), run.clone()).await;
    match std::env::var("RABBITMQ_URL") {
        Ok(url) => {
            let rabbit = scenario(url, run).await;
            assert_eq!(warren, rabbit, "{what}: Warren (left) and RabbitMQ (right) differ");
            println!("{what}: same as RabbitMQ: {warren:?}");
        }
        Err(_) => println!("{what}: RABBITMQ_URL not set, RabbitMQ half skipped; Warren saw {warren:?}"),
    }
}

/// Publishes `body` to queue `q` through the default exchange and waits for its confirm.
async fn publish_confirmed(ch: &lapin::Channel, q: &str, body: &str, props: BasicProperties) {
    ch.basic_publish("".into(), q.into(), BasicPublishOptions::default(), body.as_bytes(), props)
        .await
        .expect("publish")
        .await
        .expect("confirm");
}

/// Every body left in queue `q`, in delivery order.
async fn drain(ch: &lapin::Channel, q: &str) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(m) = ch.basic_get(q.into(), BasicGetOptions { no_ack: true }).await.expect("get") {
        out.push(String::from_utf8_lossy(&m.delivery.data).into_owned());
    }
    out
}

async fn connect(uri: &str) -> Connection {
    Connection::connect(uri, ConnectionProperties::default()).await.expect("connect")
}

#[tokio::test(flavor = "multi_thread")]
async fn direct_reply_to_behaves_as_in_rabbitmq() {
    compare("direct-reply-to", |uri, run| async move {
        let mut seen = Vec::new();
        let requester = connect(&uri).await;
        let ch = requester.create_channel().await.expect("channel");
        let rpc = format!("rpc-{run}");
        let opts = QueueDeclareOptions { auto_delete: true, ..Default::default() };
        ch.queue_declare(rpc.as_str().into(), opts, FieldTable::default()).await.expect("declare");
        let no_ack = BasicConsumeOptions { no_ack: true, ..Default::default() };
        let mut replies = ch
            .basic_consume("amq.rabbitmq.reply-to".into(), "".into(), no_ack, FieldTable::default())
            .await
            .expect("consume");
        let props = BasicProperties::default().with_reply_to("amq.rabbitmq.reply-to".into());
        ch.basic_publish("".into(), rpc.as_str().into(), BasicPublishOptions::default(), b"ping", props)
            .await
            .expect("request");
        let server = connect(&uri).await;
        let sch = server.create_channel().await.expect("channel");
        let req = loop {
            if let Some(m) =
                sch.basic_get(rpc.as_str().into(), BasicGetOptions { no_ack: true }).await.expect("get")
            {
                break m;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let reply_to = req.delivery.properties.reply_to().clone().expect("reply-to").to_string();
        seen.push(format!("rewritten: {}", reply_to.starts_with("amq.rabbitmq.reply-to.")));
        sch.basic_publish(
            "".into(),
            reply_to.as_str().into(),
            BasicPublishOptions::default(),
            b"pong",
            BasicProperties::default(),
        )
        .await
        .expect("reply");
        let got = tokio::time::timeout(Duration::from_secs(5), replies.next()).await.expect("in time");
        seen.push(format!(
            "reply: {:?}",
            got.map(|d| String::from_utf8_lossy(&d.expect("ok").data).into_owned())
        ));
        requester.close(200, "bye".into()).await.expect("close");
        sch.confirm_select(ConfirmSelectOptions::default()).await.expect("confirms");
        let mandatory = BasicPublishOptions { mandatory: true, ..Default::default() };
        let c = sch
            .basic_publish(
                "".into(),
                reply_to.as_str().into(),
                mandatory,
                b"late",
                BasicProperties::default(),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        seen.push(match c {
            Confirmation::Ack(Some(r)) => format!("late reply returned {}", r.reply_code),
            other => format!("late reply {other:?}"),
        });
        let ch = server.create_channel().await.expect("channel");
        let acking = ch
            .basic_consume(
                "amq.rabbitmq.reply-to".into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await;
        seen.push(format!("acking reply consumer: {:?}", acking.err().as_ref().and_then(code)));
        let ch = server.create_channel().await.expect("channel");
        let props = BasicProperties::default().with_reply_to("amq.rabbitmq.reply-to".into());
        ch.confirm_select(ConfirmSelectOptions::default()).await.expect("confirms");
        let confirm = ch
            .basic_publish("".into(), rpc.as_str().into(), BasicPublishOptions::default(), b"x", props)
            .await
            .expect("sent");
        // The confirm carries the channel's close, whenever lapin reads it.
        let e = confirm.await;
        seen.push(format!("reply-to without a consumer: {:?}", e.err().as_ref().and_then(code)));
        seen
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn priority_order_is_rabbitmqs() {
    compare("priorities", |uri, run| async move {
        let conn = connect(&uri).await;
        let ch = conn.create_channel().await.expect("channel");
        let q = format!("prio-{run}");
        let mut args = FieldTable::default();
        args.insert("x-max-priority".into(), AMQPValue::LongInt(5));
        let opts = QueueDeclareOptions { auto_delete: true, ..Default::default() };
        ch.queue_declare(q.as_str().into(), opts, args).await.expect("declare");
        ch.confirm_select(ConfirmSelectOptions::default()).await.expect("confirms");
        for (body, p) in
            [("a", None), ("b", Some(3)), ("c", Some(9)), ("d", Some(3)), ("e", Some(0)), ("f", Some(5))]
        {
            let props = match p {
                Some(p) => BasicProperties::default().with_priority(p),
                None => BasicProperties::default(),
            };
            publish_confirmed(&ch, &q, body, props).await;
        }
        drain(&ch, &q).await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn error_codes_and_shortcuts_are_rabbitmqs() {
    compare("behaviours", |uri, run| async move {
        let mut seen = Vec::new();
        let conn = connect(&uri).await;
        let none = FieldTable::default;
        let q = format!("q-{run}");
        let ch = conn.create_channel().await.expect("channel");
        let exclusive = QueueDeclareOptions { exclusive: true, ..Default::default() };
        ch.queue_declare(q.as_str().into(), exclusive, none()).await.expect("declare");
        // The last declared queue stands in for an empty name.
        ch.queue_bind("".into(), "amq.direct".into(), "".into(), QueueBindOptions::default(), none())
            .await
            .expect("bind by shortcut");
        ch.basic_publish(
            "amq.direct".into(),
            q.as_str().into(),
            BasicPublishOptions::default(),
            b"m",
            BasicProperties::default(),
        )
        .await
        .expect("publish");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let got = ch.basic_get("".into(), BasicGetOptions { no_ack: true }).await.expect("get");
        seen.push(format!("get by shortcut: {:?}", got.map(|m| m.delivery.data)));
        let u = |r: Result<(), lapin::Error>| format!("{:?}", r.err().as_ref().and_then(code));
        seen.push(format!(
            "unbind missing binding: {}",
            u(ch.queue_unbind(q.as_str().into(), "amq.direct".into(), "nope".into(), none()).await)
        ));
        seen.push(format!(
            "unbind missing exchange: {}",
            u(ch.queue_unbind(q.as_str().into(), format!("none-{run}").as_str().into(), "k".into(), none())
                .await)
        ));
        let redeclare = ch.queue_declare(q.as_str().into(), QueueDeclareOptions::default(), none()).await;
        seen.push(format!("redeclare not exclusive: {:?}", redeclare.err().as_ref().and_then(code)));
        let ch = conn.create_channel().await.expect("channel");
        let passive = ExchangeDeclareOptions { passive: true, ..Default::default() };
        let d = ch.exchange_declare("".into(), lapin::ExchangeKind::Direct, passive, none()).await;
        seen.push(format!("passive default exchange: {:?}", d.err().as_ref().and_then(code)));
        let ch = conn.create_channel().await.expect("channel");
        let fresh = ch.basic_get("".into(), BasicGetOptions::default()).await;
        seen.push(format!("shortcut with nothing declared: {:?}", fresh.err().as_ref().and_then(code)));
        let ch = conn.create_channel().await.expect("channel");
        seen.push(format!(
            "flow on: {:?}",
            ch.channel_flow(ChannelFlowOptions { active: true }).await.is_ok()
        ));
        let off = ch.channel_flow(ChannelFlowOptions { active: false }).await;
        seen.push(format!("flow off: {:?}", off.err().as_ref().and_then(code)));
        seen
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_priority_queue_drops_as_rabbitmq_does() {
    compare("priority-drop-head", |uri, run| async move {
        let conn = connect(&uri).await;
        let ch = conn.create_channel().await.expect("channel");
        let q = format!("full-{run}");
        let mut args = FieldTable::default();
        args.insert("x-max-priority".into(), AMQPValue::LongInt(5));
        args.insert("x-max-length".into(), AMQPValue::LongInt(2));
        let opts = QueueDeclareOptions { auto_delete: true, ..Default::default() };
        ch.queue_declare(q.as_str().into(), opts, args).await.expect("declare");
        ch.confirm_select(ConfirmSelectOptions::default()).await.expect("confirms");
        for (body, p) in [("low-1", 1), ("high", 5), ("low-2", 1)] {
            let props = BasicProperties::default().with_priority(p);
            publish_confirmed(&ch, &q, body, props).await;
        }
        drain(&ch, &q).await
    })
    .await;
}
