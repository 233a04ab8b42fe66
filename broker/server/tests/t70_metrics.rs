//! `/metrics` read from a live broker after known operations.

mod common;

use std::collections::BTreeMap;

use common::{TestBroker, http_to};
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};

/// (name, labels) -> value, from the text exposition format.
fn parse(text: &str) -> Vec<(String, BTreeMap<String, String>, f64)> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
        let Some((series, value)) = line.rsplit_once(' ') else { continue };
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let labels = labels
            .split(',')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
            .collect();
        out.push((name.to_string(), labels, value.parse().unwrap_or(f64::NAN)));
    }
    out
}

fn value(
    series: &[(String, BTreeMap<String, String>, f64)],
    name: &str,
    labels: &[(&str, &str)],
) -> Option<f64> {
    series
        .iter()
        .find(|(n, l, _)| n == name && labels.iter().all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v)))
        .map(|(_, _, v)| *v)
}

async fn scrape(b: &TestBroker) -> Vec<(String, BTreeMap<String, String>, f64)> {
    let (status, body) = http_to(b.metrics.expect("metrics on"), "GET", "/metrics").await;
    assert_eq!(status, 200);
    parse(&body)
}

#[tokio::test(flavor = "multi_thread")]
async fn publish_three_ack_one_dead_letter_one_gives_exact_numbers() {
    let b = TestBroker::start().await;
    let conn = Connection::connect(&b.uri(), ConnectionProperties::default()).await.expect("connect");
    let ch = conn.create_channel().await.expect("channel");
    ch.exchange_declare(
        "m-dlx".into(),
        ExchangeKind::Fanout,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("dlx");
    ch.queue_declare("m-dlq".into(), QueueDeclareOptions::default(), FieldTable::default())
        .await
        .expect("dlq");
    ch.queue_bind(
        "m-dlq".into(),
        "m-dlx".into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("bind");
    let mut args = FieldTable::default();
    args.insert(ShortString::from("x-dead-letter-exchange"), AMQPValue::LongString("m-dlx".into()));
    ch.queue_declare("m".into(), QueueDeclareOptions::default(), args).await.expect("declare");
    for i in 0..3 {
        ch.basic_publish(
            "".into(),
            "m".into(),
            BasicPublishOptions::default(),
            format!("{i}").as_bytes(),
            BasicProperties::default(),
        )
        .await
        .expect("publish");
    }
    let get = || ch.basic_get("m".into(), BasicGetOptions::default());
    let first = get().await.expect("get").expect("first");
    let second = get().await.expect("get").expect("second");
    first.delivery.ack(BasicAckOptions::default()).await.expect("ack");
    second.delivery.reject(BasicRejectOptions { requeue: false }).await.expect("reject");
    assert!(common::eventually(|| b.counts("m-dlq") == Some((1, 0, 0))).await);

    let m = scrape(&b).await;
    let q = |name: &str| value(&m, name, &[("queue", "m"), ("vhost", "/"), ("dead_letter_target", "false")]);
    assert_eq!(q("warren_queue_messages_ready"), Some(1.0));
    assert_eq!(q("warren_queue_messages_unacked"), Some(0.0));
    assert_eq!(q("warren_queue_messages"), Some(1.0));
    assert_eq!(q("warren_queue_messages_bytes"), Some(1.0));
    assert_eq!(q("warren_queue_consumers"), Some(0.0));
    assert_eq!(q("warren_queue_messages_published_total"), Some(3.0));
    assert_eq!(q("warren_queue_messages_delivered_total"), Some(2.0));
    assert_eq!(q("warren_queue_messages_acked_total"), Some(1.0));
    assert!(q("warren_queue_head_message_timestamp").is_some_and(|t| t > 1.7e9));
    let dead =
        value(&m, "warren_queue_messages_dead_lettered_total", &[("queue", "m"), ("reason", "rejected")]);
    assert_eq!(dead, Some(1.0));
    let dlq = value(&m, "warren_queue_messages_ready", &[("queue", "m-dlq"), ("dead_letter_target", "true")]);
    assert_eq!(dlq, Some(1.0));
    let g = |name: &str| value(&m, name, &[]);
    assert_eq!(g("warren_global_messages_received_total"), Some(3.0));
    assert_eq!(g("warren_global_messages_routed_total"), Some(3.0));
    assert_eq!(g("warren_global_messages_delivered_total"), Some(2.0));
    assert_eq!(g("warren_global_messages_acknowledged_total"), Some(1.0));
    assert_eq!(value(&m, "warren_global_messages_dead_lettered_total", &[("reason", "rejected")]), Some(1.0));
    assert_eq!(value(&m, "warren_global_messages_dead_lettered_total", &[("reason", "expired")]), Some(0.0));
    assert_eq!(g("warren_connections"), Some(1.0));
    assert_eq!(g("warren_channels"), Some(1.0));
    assert_eq!(g("warren_queues"), Some(2.0));
    assert!(g("warren_process_resident_memory_bytes").is_some_and(|v| v > 0.0));
    assert!(g("warren_process_open_fds").is_some_and(|v| v > 0.0));
    assert!(g("warren_process_start_time_seconds").is_some_and(|v| v > 1.7e9));

    ch.queue_delete("m".into(), QueueDeleteOptions::default()).await.expect("delete");
    let m = scrape(&b).await;
    assert!(
        m.iter().all(|(_, l, _)| l.get("queue").map(String::as_str) != Some("m")),
        "stale series for a deleted queue"
    );
    assert_eq!(
        value(&m, "warren_queue_messages_ready", &[("queue", "m-dlq"), ("dead_letter_target", "false")]),
        Some(1.0),
        "with its source queue gone, the DLQ is no longer a dead-letter target"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unroutable_and_returned_messages_are_counted() {
    let b = TestBroker::start().await;
    let conn = Connection::connect(&b.uri(), ConnectionProperties::default()).await.expect("connect");
    let ch = conn.create_channel().await.expect("channel");
    ch.confirm_select(ConfirmSelectOptions::default()).await.expect("confirm");
    for mandatory in [false, true, true] {
        let o = BasicPublishOptions { mandatory, ..Default::default() };
        ch.basic_publish("amq.direct".into(), "nobody".into(), o, b"x", BasicProperties::default())
            .await
            .expect("publish")
            .await
            .expect("confirm");
    }
    let m = scrape(&b).await;
    assert_eq!(value(&m, "warren_global_messages_unroutable_dropped_total", &[]), Some(1.0));
    assert_eq!(value(&m, "warren_global_messages_unroutable_returned_total", &[]), Some(2.0));
    assert_eq!(value(&m, "warren_global_messages_confirmed_total", &[]), Some(3.0));
}

#[tokio::test(flavor = "multi_thread")]
async fn every_metric_the_dashboard_and_alerts_use_is_exported() {
    // Plugin families exist once a plugin is loaded.
    let b = TestBroker::start_with(|s| {
        s.plugins.exchanges.push(warren::config::PluginEntry {
            name: "x-wasm-fanout".into(),
            component: warren_plugin_host::guests::component("exchange-fanout"),
            config: Vec::new(),
            limits: Default::default(),
        })
    })
    .await;
    // Per-queue families only appear once there is a queue.
    let conn = Connection::connect(&b.uri(), ConnectionProperties::default()).await.expect("connect");
    let ch = conn.create_channel().await.expect("channel");
    ch.queue_declare("any".into(), QueueDeclareOptions::default(), FieldTable::default())
        .await
        .expect("declare");
    // ... and the head timestamp once the queue holds a message.
    ch.basic_publish(
        "".into(),
        "any".into(),
        BasicPublishOptions::default(),
        b"x",
        BasicProperties::default(),
    )
    .await
    .expect("publish");
    assert!(common::eventually(|| b.counts("any") == Some((1, 0, 0))).await);
    let (status, body) = http_to(b.metrics.expect("metrics on"), "GET", "/metrics").await;
    assert_eq!(status, 200, "{body}");
    let exported: Vec<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples");
    let re = regex::Regex::new(r"warren_[a-z_]+").expect("regex");
    for file in ["grafana/warren.json", "prometheus/alerts.yml"] {
        let text = std::fs::read_to_string(format!("{root}/{file}")).expect("example file");
        // A cluster member's own series are checked against one (t79_cluster).
        let single = |n: &&str| !n.starts_with("warren_cluster_") && !n.starts_with("warren_raft_");
        for name in re.find_iter(&text).map(|m| m.as_str()).filter(single) {
            assert!(exported.contains(&name), "{file} uses {name}, which /metrics does not export");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn above_the_memory_watermark_publishers_are_blocked_and_consumers_drain() {
    use futures_lite::StreamExt;
    // One octet: the alarm is raised at the first check.
    let b = TestBroker::start_with(|s| {
        s.limits.memory_high_watermark = warren::config::Watermark::Absolute(warren::config::Size(1))
    })
    .await;
    let m = async {
        for _ in 0..50 {
            let m = scrape(&b).await;
            if value(&m, "warren_memory_alarm", &[]) == Some(1.0) {
                return m;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!("the memory alarm was not raised");
    }
    .await;
    assert_eq!(value(&m, "warren_resident_memory_limit_bytes", &[]), Some(1.0));
    let publisher = Connection::connect(&b.uri(), ConnectionProperties::default()).await.expect("connect");
    let ch = publisher.create_channel().await.expect("channel");
    ch.queue_declare("mem".into(), QueueDeclareOptions::default(), FieldTable::default())
        .await
        .expect("declare");
    let publish = |body: &'static [u8]| {
        ch.basic_publish(
            "".into(),
            "mem".into(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default(),
        )
    };
    publish(b"first").await.expect("publish");
    // The first publish goes through and marks the connection as a publisher: blocked now.
    assert!(common::eventually(|| b.counts("mem") == Some((1, 0, 0))).await);
    let blocked = async {
        for _ in 0..50 {
            if value(&scrape(&b).await, "warren_connections_blocked", &[]) == Some(1.0) {
                return true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        false
    };
    assert!(blocked.await, "the publisher is blocked");
    // Whatever lapin does with connection.blocked, the broker does not read more publishes.
    let _ = tokio::time::timeout(std::time::Duration::from_millis(300), publish(b"second")).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(b.counts("mem"), Some((1, 0, 0)), "nothing more was taken from the blocked publisher");
    // A consumer on another connection still drains the queue.
    let consumer = Connection::connect(&b.uri(), ConnectionProperties::default()).await.expect("connect");
    let cch = consumer.create_channel().await.expect("channel");
    let opts = BasicConsumeOptions { no_ack: true, ..Default::default() };
    let mut c =
        cch.basic_consume("mem".into(), "c".into(), opts, FieldTable::default()).await.expect("consume");
    let d = tokio::time::timeout(std::time::Duration::from_secs(5), c.next()).await.expect("in time");
    assert_eq!(d.expect("delivery").expect("ok").data, b"first");
}
