//! Each mode, briefly, against a broker started in-process: correctness only, no timing.

use std::time::Duration;

use warren::config::Settings;
use warren::server::Server;
use warren_codec::{FieldTable, FieldValue};
use warren_perf::client::Uri;
use warren_perf::throughput::{Scenario, run};

async fn broker() -> (Uri, tempfile::TempDir, tokio::sync::oneshot::Sender<()>) {
    let data = tempfile::tempdir().expect("dir");
    let settings = Settings {
        amqp_listen: Some("127.0.0.1:0".parse().expect("addr")),
        management_listen: None,
        metrics_listen: None,
        quic_listen: None,
        data_dir: data.path().to_path_buf(),
        storage: warren::config::StorageSettings { segment_size: 1 << 20, ..Default::default() },
        ..Settings::default()
    };
    let server = Server::bind(&settings).await.expect("bind");
    let addr = server.local_addr().expect("addr");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = server
            .run(async {
                let _ = rx.await;
            })
            .await;
    });
    let uri = format!("amqp://guest:guest@{addr}/%2f").parse().expect("uri");
    (uri, data, tx)
}

fn scenario(uri: Uri) -> Scenario {
    Scenario {
        publish_uri: None,
        uri,
        producers: 1,
        consumers: 1,
        size: 16,
        duration: Duration::from_millis(300),
        confirm: None,
        persistent: false,
        autoack: true,
        prefetch: 100,
        multi_ack: 10,
        rate: None,
        queue: "perf-test".into(),
        queue_args: FieldTable::new(),
        exchange: None,
        exchange_type: "topic".into(),
        routing_key: String::new(),
        cleanup: true,
        progress: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throughput_counts_every_message_once() {
    let (uri, _data, _stop) = broker().await;
    let s = run(&scenario(uri)).await.expect("run");
    assert!(s.sent > 0);
    assert_eq!(s.received, s.sent, "auto-ack: every published message is consumed");
    assert_eq!(s.latency.len(), s.received, "a latency per delivery");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_with_confirms_and_multi_acks() {
    let (uri, _data, _stop) = broker().await;
    let mut sc = scenario(uri);
    sc.persistent = true;
    sc.confirm = Some(64);
    sc.autoack = false;
    sc.multi_ack = 10;
    sc.queue_args.insert("x-max-length".into(), FieldValue::I64(1_000_000));
    let s = run(&sc).await.expect("run");
    assert!(s.sent > 0);
    assert_eq!(s.confirmed, s.sent, "every publish is confirmed");
    assert_eq!(s.nacked, 0);
    assert_eq!(s.confirm_latency.len(), s.confirmed);
    assert_eq!(s.received, s.sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_at_a_fixed_rate() {
    let (uri, _data, _stop) = broker().await;
    let mut sc = scenario(uri);
    sc.rate = Some(500.0);
    sc.duration = Duration::from_millis(400);
    let s = run(&sc).await.expect("run");
    // 500/s for 0.4 s: about 200, never thousands.
    assert!((100..=260).contains(&s.sent), "{} sent", s.sent);
    assert_eq!(s.received, s.sent);
    assert!(s.latency.quantile(0.999).is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_through_an_exchange_reaches_every_consumer() {
    let (uri, _data, _stop) = broker().await;
    let mut sc = scenario(uri);
    sc.consumers = 3;
    sc.exchange = Some("perf-x".into());
    sc.routing_key = "a.b".into();
    let s = run(&sc).await.expect("run");
    assert!(s.sent > 0);
    assert_eq!(s.received, s.sent * 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_opened_and_measured() {
    let (uri, _data, _stop) = broker().await;
    let s = warren_perf::connections::run(&uri, 60, Some(std::process::id())).await.expect("run");
    assert_eq!(s.opened, 60);
    assert!(s.bytes_per_connection.is_some(), "our own process's memory is readable");
}

#[tokio::test]
async fn a_refused_login_is_an_error_not_a_hang() {
    let (uri, _data, _stop) = broker().await;
    let bad = Uri { password: "wrong".into(), ..uri };
    assert!(run(&scenario(bad)).await.is_err());
}
