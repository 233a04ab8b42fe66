//! Warren's dead-letter headers against the ones a real RabbitMQ wrote for the same scenario.
//!
//! The fixture was recorded from Debian's rabbitmq-server 3.10.8 with
//! `RABBITMQ_URL=amqp://guest:guest@127.0.0.1:5672/%2f cargo test -p warren --test
//! t61_x_death_vs_rabbitmq -- --ignored record`, and is compared on every run.

mod common;

use std::time::Duration;

use common::{TestBroker, s, table};
use lapin::options::*;
use lapin::types::{AMQPValue, FieldArray, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties};

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/x_death_rabbitmq_3.10.8.txt");

/// One line per header, sorted, with types; timestamps masked since they differ per run.
fn render(v: &AMQPValue) -> String {
    match v {
        AMQPValue::Timestamp(_) => "Timestamp(<time>)".into(),
        AMQPValue::FieldTable(t) => {
            let mut entries: Vec<_> = t.inner().iter().collect();
            entries.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
            let inner: Vec<String> =
                entries.iter().map(|(k, v)| format!("{}: {}", k.as_str(), render(v))).collect();
            format!("{{{}}}", inner.join(", "))
        }
        AMQPValue::FieldArray(a) => {
            let inner: Vec<String> = a.as_slice().iter().map(render).collect();
            format!("[{}]", inner.join(", "))
        }
        AMQPValue::LongString(s) => format!("LongString({:?})", s.to_string()),
        other => format!("{other:?}"),
    }
}

/// Rejected in `xd-first`, expired in `xd-second`, read from `xd-final`: the headers it arrives
/// with, rendered.
async fn scenario(uri: &str) -> String {
    let conn = Connection::connect(uri, ConnectionProperties::default()).await.expect("connect");
    let ch = conn.create_channel().await.expect("channel");
    for q in ["xd-first", "xd-second", "xd-final"] {
        ch.queue_delete(q.into(), QueueDeleteOptions::default()).await.expect("clean up");
    }
    let declare = |name: &'static str, args: FieldTable| {
        let ch = ch.clone();
        async move { ch.queue_declare(name.into(), QueueDeclareOptions::default(), args).await.expect("declare") }
    };
    declare("xd-final", FieldTable::default()).await;
    declare(
        "xd-second",
        table(&[
            ("x-message-ttl", AMQPValue::LongInt(50)),
            ("x-dead-letter-exchange", s("")),
            ("x-dead-letter-routing-key", s("xd-final")),
        ]),
    )
    .await;
    declare(
        "xd-first",
        table(&[("x-dead-letter-exchange", s("")), ("x-dead-letter-routing-key", s("xd-second"))]),
    )
    .await;
    let props = BasicProperties::default()
        .with_expiration("60000".into())
        .with_headers(table(&[("CC", AMQPValue::FieldArray(FieldArray::from(vec![s("nobody")])))]));
    ch.basic_publish("".into(), "xd-first".into(), BasicPublishOptions::default(), b"twice", props)
        .await
        .expect("publish");
    let m = loop {
        if let Some(m) = ch.basic_get("xd-first".into(), BasicGetOptions::default()).await.expect("get") {
            break m;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    m.delivery.reject(BasicRejectOptions { requeue: false }).await.expect("reject");
    let d = loop {
        if let Some(m) = ch.basic_get("xd-final".into(), BasicGetOptions { no_ack: true }).await.expect("get")
        {
            break m.delivery;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let headers = d.properties.headers().clone().unwrap_or_default();
    let mut lines: Vec<String> =
        headers.inner().iter().map(|(k, v)| format!("{} = {}", k.as_str(), render(v))).collect();
    lines.push(format!("expiration = {:?}", d.properties.expiration()));
    lines.push(format!("routing-key = {}", d.routing_key.as_str()));
    lines.sort();
    for q in ["xd-first", "xd-second", "xd-final"] {
        let _ = ch.queue_delete(q.into(), QueueDeleteOptions::default()).await;
    }
    lines.join("\n") + "\n"
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "records the fixture from a RabbitMQ at RABBITMQ_URL"]
async fn record() {
    let uri =
        std::env::var("RABBITMQ_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    std::fs::write(FIXTURE, scenario(&uri).await).expect("write fixture");
}

#[tokio::test(flavor = "multi_thread")]
async fn x_death_matches_what_rabbitmq_writes() {
    let b = TestBroker::start().await;
    let ours = scenario(&b.uri()).await;
    let theirs = std::fs::read_to_string(FIXTURE).expect("fixture (see the module doc to record it)");
    // RabbitMQ 3.10 does not write the x-last-death-* headers (later versions do, and the
    // dead-letter issue asks for them): compare everything else line by line.
    let ours: Vec<&str> = ours.lines().filter(|l| !l.starts_with("x-last-death-")).collect();
    let theirs: Vec<&str> = theirs.lines().filter(|l| !l.starts_with("x-last-death-")).collect();
    assert_eq!(ours, theirs);
}
