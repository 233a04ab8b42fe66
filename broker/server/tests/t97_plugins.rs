//! Plugins through a real client: exchange types and a retry policy loaded from a config
//! file, the misbehaving fixtures contained with the broker still serving, bad components
//! refused at start-up, and a component swapped by SIGHUP under a live connection.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{TestBroker, code, publish_confirmed, s, table};
use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind};
use warren::config::{Cli, Settings};
use warren_plugin_host::guests;

/// A config file naming the plugins the tests use, read the way the binary reads it.
fn settings_from_config_file(dir: &Path) -> Settings {
    let path = dir.join("warren.toml");
    let c = |name: &str| format!("{:?}", guests::component(name));
    std::fs::write(
        &path,
        format!(
            r#"
[[plugins.exchange]]
type = "x-consistent-hash"
component = {}

[[plugins.exchange]]
type = "x-trap"
component = {}

[[plugins.exchange]]
type = "x-loop"
component = {}
timeout-ms = 20

[[plugins.retry]]
name = "backoff"
component = {}
config = {{ base-ms = "50", max-attempts = "2" }}
"#,
            c("exchange-consistent-hash"),
            c("fixture-trap"),
            c("fixture-loop"),
            c("retry-exponential")
        ),
    )
    .expect("write config");
    Settings::load(&Cli { config: Some(path), ..Cli::default() }).expect("config loads")
}

async fn start(dir: &Path) -> TestBroker {
    let plugins = settings_from_config_file(dir).plugins;
    TestBroker::start_with(|s| s.plugins = plugins).await
}

async fn channel(b: &TestBroker) -> (Connection, Channel) {
    let conn = Connection::connect(&b.uri(), ConnectionProperties::default()).await.expect("connect");
    let ch = conn.create_channel().await.expect("channel");
    (conn, ch)
}

/// xorshift64*: the same random keys every run, so the share check is exact and repeatable.
fn keys(n: usize) -> Vec<String> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..n)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            format!("{:016x}", x.wrapping_mul(0x2545_f491_4f6c_dd1d))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn consistent_hash_plugin_keeps_each_key_on_one_queue_and_follows_the_weights() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = start(dir.path()).await;
    let (_c, ch) = channel(&b).await;
    let kind = ExchangeKind::Custom("x-consistent-hash".into());
    ch.exchange_declare("hashed".into(), kind, ExchangeDeclareOptions::default(), FieldTable::default())
        .await
        .expect("declare a plugin exchange");
    let weights = [("w1a", 1), ("w1b", 1), ("w2", 2), ("w4", 4)];
    for (q, w) in weights {
        ch.queue_declare(q.into(), QueueDeclareOptions::default(), FieldTable::default())
            .await
            .expect("queue");
        ch.queue_bind(
            q.into(),
            "hashed".into(),
            w.to_string().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind");
    }
    // 10 000 messages; every fifth repeats an earlier key, so stickiness is checked too.
    let distinct = keys(8_000);
    let sent: Vec<&str> =
        (0..10_000).map(|i| if i % 5 == 4 { &*distinct[i / 5] } else { &*distinct[i - i / 5] }).collect();
    ch.confirm_select(ConfirmSelectOptions::default()).await.expect("confirms");
    for chunk in sent.chunks(1000) {
        let mut confirms = Vec::new();
        for key in chunk {
            let c = ch
                .basic_publish(
                    "hashed".into(),
                    (*key).into(),
                    BasicPublishOptions::default(),
                    key.as_bytes(),
                    BasicProperties::default(),
                )
                .await
                .expect("publish");
            confirms.push(c);
        }
        for c in confirms {
            assert!(c.await.expect("confirm").is_ack());
        }
    }
    let mut landed: HashMap<String, &str> = HashMap::new();
    let mut shares: BTreeMap<&str, usize> = BTreeMap::new();
    let depths: Vec<usize> = weights.iter().map(|(q, _)| b.counts(q).expect("queue").0).collect();
    for ((q, _), expected) in weights.into_iter().zip(depths) {
        let mut consumer = ch
            .basic_consume(
                q.into(),
                "".into(),
                BasicConsumeOptions { no_ack: true, ..Default::default() },
                FieldTable::default(),
            )
            .await
            .expect("consume");
        for _ in 0..expected {
            let d = tokio::time::timeout(Duration::from_secs(10), consumer.next())
                .await
                .expect("in time")
                .expect("d")
                .expect("ok");
            let key = String::from_utf8(d.data.clone()).expect("utf-8");
            assert_eq!(d.routing_key.as_str(), key);
            let first = *landed.entry(key.clone()).or_insert(q);
            assert_eq!(first, q, "key {key} landed in {first} and in {q}");
            *shares.entry(q).or_default() += 1;
        }
    }
    let traps = metric(
        &b,
        "warren_plugin_traps_total{kind=\"exchange\",plugin=\"x-consistent-hash\",reason=\"trap\"}",
    )
    .await;
    assert_eq!(
        shares.values().sum::<usize>(),
        10_000,
        "every message routed once: {shares:?}, {traps} traps"
    );
    for (q, w) in weights {
        let expected = 10_000.0 * f64::from(w) / 8.0;
        let got = shares[q] as f64;
        assert!(
            (got - expected).abs() <= expected * 0.10,
            "{q}: {got} messages, weight {w} expects {expected} ± 10%"
        );
    }
    let stats = common_plugin_calls(&b, "x-consistent-hash").await;
    assert!(stats > 0, "routed by the plugin, not the built-in type");
}

/// `warren_plugin_calls_total` for one plugin, from the Prometheus endpoint.
async fn common_plugin_calls(b: &TestBroker, plugin: &str) -> u64 {
    metric(b, &format!("warren_plugin_calls_total{{kind=\"exchange\",plugin=\"{plugin}\"}}")).await
}

async fn metric(b: &TestBroker, series: &str) -> u64 {
    let (status, body) = common::http_to(b.metrics.expect("metrics on"), "GET", "/metrics").await;
    assert_eq!(status, 200);
    body.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no {series} in:\n{body}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn misbehaving_plugins_cost_one_route_or_one_declare_and_the_broker_serves_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = start(dir.path()).await;
    let (conn, ch) = channel(&b).await;
    ch.queue_declare("caught".into(), QueueDeclareOptions::default(), FieldTable::default())
        .await
        .expect("queue");
    ch.confirm_select(ConfirmSelectOptions::default()).await.expect("confirms");
    for (x, bad_key) in [("trapping", "trap"), ("looping", "loop")] {
        let kind = ExchangeKind::Custom(format!("x-{bad_key}"));
        ch.exchange_declare(x.into(), kind, ExchangeDeclareOptions::default(), FieldTable::default())
            .await
            .expect("declare");
        ch.queue_bind(
            "caught".into(),
            x.into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind");
        let mandatory = BasicPublishOptions { mandatory: true, ..Default::default() };
        let c = ch
            .basic_publish(x.into(), bad_key.into(), mandatory, b"bad", BasicProperties::default())
            .await
            .expect("publish")
            .await
            .expect("confirm");
        let Confirmation::Ack(Some(ret)) = c else { panic!("{x}: expected the message back, got {c:?}") };
        assert_eq!(ret.reply_code, 312, "{x}: unroutable");
        publish_confirmed(&ch, x, "fine", &["good".to_string()], BasicProperties::default()).await;
    }
    assert_eq!(b.counts("caught").map(|c| c.0), Some(2), "both exchanges routed again after their failure");
    assert_eq!(
        metric(&b, "warren_plugin_traps_total{kind=\"exchange\",plugin=\"x-trap\",reason=\"trap\"}").await,
        1
    );
    assert_eq!(
        metric(&b, "warren_plugin_traps_total{kind=\"exchange\",plugin=\"x-loop\",reason=\"timeout\"}").await,
        1
    );

    // A declare the plugin fails on closes only that channel, with the plugin's file named.
    let args = table(&[("trap-on-create", AMQPValue::Boolean(true))]);
    let err = ch
        .exchange_declare(
            "doomed".into(),
            ExchangeKind::Custom("x-trap".into()),
            ExchangeDeclareOptions::default(),
            args,
        )
        .await
        .expect_err("refused");
    assert_eq!(code(&err), Some(406), "{err}");
    assert!(err.to_string().contains("fixture_trap.wasm"), "{err}");
    let ch2 = conn.create_channel().await.expect("the connection lives on");
    ch2.queue_declare(
        "caught".into(),
        QueueDeclareOptions { passive: true, ..Default::default() },
        FieldTable::default(),
    )
    .await
    .expect("still serving");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_retry_policy_backs_off_then_dead_letters() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = start(dir.path()).await;
    let (_c, ch) = channel(&b).await;
    ch.queue_declare("dlq".into(), QueueDeclareOptions::default(), FieldTable::default()).await.expect("dlq");
    let args = table(&[
        ("x-retry-policy", s("backoff")),
        ("x-dead-letter-exchange", s("")),
        ("x-dead-letter-routing-key", s("dlq")),
    ]);
    ch.queue_declare("jobs".into(), QueueDeclareOptions::default(), args).await.expect("jobs");
    let mut consumer = ch
        .basic_consume("jobs".into(), "w".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await
        .expect("consume");
    ch.basic_publish(
        "".into(),
        "jobs".into(),
        BasicPublishOptions::default(),
        b"job",
        BasicProperties::default(),
    )
    .await
    .expect("publish");
    let mut seen = Vec::new();
    let mut last = std::time::Instant::now();
    for _ in 0..3 {
        let d = tokio::time::timeout(Duration::from_secs(5), consumer.next())
            .await
            .expect("in time")
            .expect("d")
            .expect("ok");
        let retry = d.properties.headers().as_ref().and_then(|h| h.inner().get("x-retry-count").cloned());
        seen.push((retry, last.elapsed()));
        last = std::time::Instant::now();
        d.reject(BasicRejectOptions { requeue: true }).await.expect("reject");
    }
    assert_eq!(seen[0].0, None);
    assert_eq!(seen[1].0, Some(AMQPValue::LongLongInt(1)));
    assert!(seen[1].1 >= Duration::from_millis(50), "first retry after base-ms: {:?}", seen[1].1);
    assert_eq!(seen[2].0, Some(AMQPValue::LongLongInt(2)));
    assert!(seen[2].1 >= Duration::from_millis(100), "second retry after twice that: {:?}", seen[2].1);
    assert!(
        common::eventually(|| b.counts("dlq").map(|c| c.0) == Some(1)).await,
        "dead-lettered after max-attempts"
    );
}

/// Python and JavaScript components inside the broker, where plugin calls run on Tokio's
/// worker threads. Their compiled code comes from the cache the host tests share, linked in
/// as the data dir's plugin cache, so the 12–18 MB components compile once per machine.
#[tokio::test(flavor = "multi_thread")]
async fn python_and_javascript_exchange_types_route_for_a_real_client() {
    let limits = warren_plugin_host::Limits { memory_bytes: 128 << 20, ..Default::default() };
    let entry = |name: &str, file: &str| warren::config::PluginEntry {
        name: name.into(),
        component: guests::language_component(file),
        config: Vec::new(),
        limits,
    };
    let data = tempfile::tempdir().expect("tempdir");
    let cache = guests::cache_dir();
    std::fs::create_dir_all(&cache).expect("cache dir");
    std::os::unix::fs::symlink(&cache, data.path().join("plugin-cache")).expect("link the cache");
    let b = TestBroker::start_with(|s| {
        s.data_dir = data.path().to_path_buf();
        s.plugins.exchanges.push(entry("x-prefix", "exchange_prefix_py"));
        s.plugins.exchanges.push(entry("x-header-exists", "exchange_header_exists_js"));
    })
    .await;
    let (_c, ch) = channel(&b).await;
    for (x, kind, queue, key) in
        [("by-prefix", "x-prefix", "eu", "eu."), ("by-header", "x-header-exists", "traced", "trace-id")]
    {
        ch.exchange_declare(
            x.into(),
            ExchangeKind::Custom(kind.into()),
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("declare");
        ch.queue_declare(queue.into(), QueueDeclareOptions::default(), FieldTable::default())
            .await
            .expect("queue");
        ch.queue_bind(queue.into(), x.into(), key.into(), QueueBindOptions::default(), FieldTable::default())
            .await
            .expect("bind");
    }
    ch.confirm_select(ConfirmSelectOptions::default()).await.expect("confirms");
    let one = |s: &str| vec![s.to_string()];
    publish_confirmed(&ch, "by-prefix", "eu.fr.paris", &one("p1"), BasicProperties::default()).await;
    publish_confirmed(&ch, "by-prefix", "us.ny", &one("p2"), BasicProperties::default()).await;
    let traced = BasicProperties::default().with_headers(table(&[("trace-id", s("abc"))]));
    publish_confirmed(&ch, "by-header", "any", &one("h1"), traced).await;
    publish_confirmed(&ch, "by-header", "any", &one("h2"), BasicProperties::default()).await;
    assert_eq!(b.counts("eu").map(|c| c.0), Some(1), "Python routed eu.fr.paris and only it");
    assert_eq!(b.counts("traced").map(|c| c.0), Some(1), "JavaScript routed the traced message and only it");

    // An exception in the Python guest costs that one route, inside the broker too.
    let mandatory = BasicPublishOptions { mandatory: true, ..Default::default() };
    let c = ch
        .basic_publish("by-prefix".into(), "raise".into(), mandatory, b"x", BasicProperties::default())
        .await
        .expect("publish")
        .await
        .expect("confirm");
    assert!(matches!(c, Confirmation::Ack(Some(_))), "returned as unroutable: {c:?}");
    publish_confirmed(&ch, "by-prefix", "eu.de", &one("p3"), BasicProperties::default()).await;
    assert_eq!(b.counts("eu").map(|c| c.0), Some(2), "the rebuilt instance routes again");

    // Printing is not failing: a plugin's stdout goes to the broker's log.
    ch.queue_bind(
        "eu".into(),
        "by-prefix".into(),
        "print.".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("bind");
    publish_confirmed(&ch, "by-prefix", "print.me", &one("p4"), BasicProperties::default()).await;
    assert_eq!(b.counts("eu").map(|c| c.0), Some(3), "routed while printing");
    let traps = "warren_plugin_traps_total{kind=\"exchange\",plugin=\"x-prefix\",reason=\"trap\"}";
    assert_eq!(metric(&b, traps).await, 1, "only the exception trapped");
}

#[tokio::test(flavor = "multi_thread")]
async fn components_that_cannot_serve_stop_the_start_with_the_file_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (component, says) in [
        (
            guests::component("fixture-wrong-world"),
            "does not implement the warren:plugin/exchange-plugin world",
        ),
        (dir.path().join("missing.wasm"), "cannot read it"),
    ] {
        let mut settings = Settings { data_dir: dir.path().join("data"), ..Settings::default() };
        settings.amqp_listen = Some("127.0.0.1:0".parse().expect("addr"));
        settings.management_listen = None;
        settings.metrics_listen = None;
        settings.quic_listen = None;
        settings.plugins.exchanges.push(warren::config::PluginEntry {
            name: "x-bad".into(),
            component: component.clone(),
            config: Vec::new(),
            limits: Default::default(),
        });
        let Err(err) = warren::server::Server::bind(&settings).await else {
            panic!("{component:?} accepted")
        };
        let text = err.to_string();
        assert!(text.contains(&component.display().to_string()) && text.contains(says), "{text}");
    }
}

#[test]
fn sighup_swaps_a_component_without_dropping_connections() {
    let dir = tempfile::tempdir().expect("tempdir");
    let swap = dir.path().join("swap.wasm");
    std::fs::copy(guests::component("exchange-fanout"), &swap).expect("copy");
    let config = dir.path().join("warren.toml");
    std::fs::write(
        &config,
        format!(
            "amqp-listen = \"127.0.0.1:0\"\nmanagement-listen = \"127.0.0.1:0\"\nmetrics-listen = \"127.0.0.1:0\"\nquic-listen = \"127.0.0.1:0\"\ndata-dir = {:?}\n\n[[plugins.exchange]]\ntype = \"x-swap\"\ncomponent = {:?}\n",
            dir.path().join("data"),
            swap
        ),
    )
    .expect("write");
    let mut child = Command::new(env!("CARGO_BIN_EXE_warren"))
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1")
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stderr = child.stderr.take().expect("stderr");
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let wait_for = |what: &str| -> String {
        loop {
            let line = rx
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|_| panic!("no log line with {what}"));
            if line.contains(what) {
                return line;
            }
        }
    };
    let line = wait_for("listening for AMQP");
    let at = line.find("addr=").expect("addr field") + 5;
    let addr = line[at..].split_whitespace().next().unwrap_or_default().to_string();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let uri = format!("amqp://guest:guest@{addr}/%2f");
        let conn = Connection::connect(&uri, ConnectionProperties::default()).await.expect("connect");
        let ch = conn.create_channel().await.expect("channel");
        ch.exchange_declare(
            "sw".into(),
            ExchangeKind::Custom("x-swap".into()),
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("declare");
        for (q, key) in [("qa", "a"), ("qb", "b")] {
            ch.queue_declare(q.into(), QueueDeclareOptions::default(), FieldTable::default())
                .await
                .expect("queue");
            ch.queue_bind(
                q.into(),
                "sw".into(),
                key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("bind");
        }
        ch.confirm_select(ConfirmSelectOptions::default()).await.expect("confirms");
        let depth = |ch: &Channel, q: &'static str| {
            let ch = ch.clone();
            async move {
                let o = QueueDeclareOptions { passive: true, ..Default::default() };
                ch.queue_declare(q.into(), o, FieldTable::default()).await.expect("passive").message_count()
            }
        };
        publish_confirmed(&ch, "sw", "a", &["1".to_string()], BasicProperties::default()).await;
        assert_eq!((depth(&ch, "qa").await, depth(&ch, "qb").await), (1, 1), "fanout");

        std::fs::copy(guests::component("exchange-direct"), &swap).expect("replace the component");
        assert!(
            Command::new("kill").args(["-HUP", &child.id().to_string()]).status().expect("kill").success()
        );
        wait_for("exchange type plugin reloaded");
        publish_confirmed(&ch, "sw", "a", &["2".to_string()], BasicProperties::default()).await;
        assert_eq!(
            (depth(&ch, "qa").await, depth(&ch, "qb").await),
            (2, 1),
            "direct now, same connection, same bindings"
        );
        assert!(conn.status().connected());
    });
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let _ = child.wait();
}
