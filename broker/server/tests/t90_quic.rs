//! AMQP over QUIC (mapping v1: one stream, one AMQP connection), and the TCP-to-QUIC bridge.

mod common;

use std::path::Path;

use common::TestBroker;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use warren_examples::quic::{AmqpOverQuic, connect};

async fn quic_broker(data: &Path) -> TestBroker {
    let data = data.to_path_buf();
    TestBroker::start_with(move |s| {
        s.quic_listen = Some("127.0.0.1:0".parse().expect("addr"));
        s.data_dir = data;
    })
    .await
}

fn url(b: &TestBroker) -> String {
    format!("quic://localhost:{}", b.quic.as_ref().expect("quic on").0.port())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_codec_client_publishes_and_gets_over_a_quic_stream() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = quic_broker(dir.path()).await;
    let cert = b.quic.as_ref().expect("quic").1.clone();
    let quic = connect(&url(&b), &cert).await.expect("QUIC connection");
    let mut amqp = AmqpOverQuic::open(&quic, "guest", "guest").await.expect("AMQP handshake");
    amqp.declare("over-quic").await.expect("declare");
    let big = vec![7u8; 300_000];
    amqp.publish("over-quic", b"small").await.expect("publish");
    amqp.publish("over-quic", &big).await.expect("publish");
    assert_eq!(amqp.get("over-quic").await.expect("get").as_deref(), Some(&b"small"[..]));
    assert_eq!(amqp.get("over-quic").await.expect("get").map(|b| b.len()), Some(300_000));
    assert_eq!(amqp.get("over-quic").await.expect("get"), None);
    amqp.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread")]
async fn several_amqp_connections_share_one_quic_connection() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = quic_broker(dir.path()).await;
    let cert = b.quic.as_ref().expect("quic").1.clone();
    let quic = connect(&url(&b), &cert).await.expect("QUIC connection");
    let mut producer = AmqpOverQuic::open(&quic, "guest", "guest").await.expect("first");
    let mut consumer = AmqpOverQuic::open(&quic, "guest", "guest").await.expect("second");
    producer.declare("shared").await.expect("declare");
    producer.publish("shared", b"from stream one").await.expect("publish");
    assert!(common::eventually(|| b.counts("shared") == Some((1, 0, 0))).await);
    assert_eq!(warren::server::lock(&b.shared).broker.open_counts().0, 2, "two AMQP connections");
    assert_eq!(consumer.get("shared").await.expect("get").as_deref(), Some(&b"from stream one"[..]));
    // A wrong password on a third stream is refused without touching the other two.
    assert!(AmqpOverQuic::open(&quic, "guest", "nope").await.is_err());
    producer.publish("shared", b"still fine").await.expect("publish");
    // Different streams are not ordered with each other: wait for the publish to land.
    assert!(common::eventually(|| b.counts("shared") == Some((1, 0, 0))).await);
    assert_eq!(consumer.get("shared").await.expect("get").as_deref(), Some(&b"still fine"[..]));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unchanged_amqp_client_uses_quic_through_the_bridge() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = quic_broker(dir.path()).await;
    let cert = b.quic.as_ref().expect("quic").1.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let bridge = listener.local_addr().expect("addr");
    let to = url(&b);
    tokio::spawn(async move { warren::bridge::run(listener, &to, &cert).await });
    let conn =
        Connection::connect(&format!("amqp://guest:guest@{bridge}/%2f"), ConnectionProperties::default())
            .await
            .expect("lapin through the bridge");
    let ch = conn.create_channel().await.expect("channel");
    ch.queue_declare("bridged".into(), QueueDeclareOptions::default(), FieldTable::default())
        .await
        .expect("declare");
    for i in 0..100 {
        let body = format!("m{i}");
        ch.basic_publish(
            "".into(),
            "bridged".into(),
            BasicPublishOptions::default(),
            body.as_bytes(),
            BasicProperties::default(),
        )
        .await
        .expect("publish");
    }
    for i in 0..100 {
        let m = ch
            .basic_get("bridged".into(), BasicGetOptions { no_ack: true })
            .await
            .expect("get")
            .expect("message");
        assert_eq!(m.delivery.data, format!("m{i}").as_bytes());
    }
    // A second client shares the bridge's QUIC connection on its own stream.
    let other =
        Connection::connect(&format!("amqp://guest:guest@{bridge}/%2f"), ConnectionProperties::default())
            .await
            .expect("second client");
    assert!(other.status().connected());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_self_signed_certificate_is_made_once_and_reused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = quic_broker(dir.path()).await;
    let cert = std::fs::read(dir.path().join("quic/cert.pem")).expect("made at first start");
    first.stop().await;
    let second = quic_broker(dir.path()).await;
    assert_eq!(std::fs::read(dir.path().join("quic/cert.pem")).expect("still there"), cert);
    let quic = connect(&url(&second), &dir.path().join("quic/cert.pem")).await.expect("trusted");
    AmqpOverQuic::open(&quic, "guest", "guest").await.expect("AMQP over QUIC");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_channel_stream_does_not_hold_up_the_other_channels() {
    let _ = tracing_subscriber::fmt().with_env_filter("warren=debug").with_test_writer().try_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let b = quic_broker(dir.path()).await;
    let cert = b.quic.as_ref().expect("quic").1.clone();
    let quic = connect(&url(&b), &cert).await.expect("QUIC connection");
    let mut control = AmqpOverQuic::open(&quic, "guest", "guest").await.expect("AMQP connection");
    // Channel 2 on its own stream consumes a queue, then its reader stops reading.
    let mut slow = control.open_channel_stream(&quic, 2).await.expect("channel stream");
    slow.declare("flood").await.expect("declare");
    slow.consume("flood").await.expect("consume");
    // 16 MiB of deliveries for it: far more than one stream's flow-control window.
    let chunk = vec![b'f'; 128 * 1024];
    for _ in 0..128 {
        control.publish("flood", &chunk).await.expect("publish");
    }
    // Channel 3 on another stream of the same AMQP connection keeps working meanwhile.
    let mut fast = control.open_channel_stream(&quic, 3).await.expect("channel stream");
    fast.declare("quick").await.expect("declare");
    let flowing = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        for i in 0..20 {
            fast.publish("quick", format!("q{i}").as_bytes()).await.expect("publish");
            assert_eq!(
                fast.get("quick").await.expect("get").map(|b| b.to_vec()),
                Some(format!("q{i}").into_bytes())
            );
        }
    })
    .await;
    assert!(flowing.is_ok(), "channel 3 was held up by channel 2's stalled stream");
    // The stalled stream holds a bounded backlog; the rest waits in the queue, as under
    // channel.flow, though the consumer has no prefetch limit.
    let (ready, unacked, _) = b.counts("flood").expect("flood");
    assert!(ready >= 64, "{ready} ready, {unacked} delivered to a stream nobody reads");
    // Nothing was lost on the stalled stream: it gets every delivery once it reads again.
    for _ in 0..128 {
        let body = tokio::time::timeout(std::time::Duration::from_secs(10), slow.next_delivery())
            .await
            .expect("delivery in time")
            .expect("delivery");
        assert_eq!(body.len(), chunk.len());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn closing_a_channel_stream_releases_its_channels() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = quic_broker(dir.path()).await;
    let cert = b.quic.as_ref().expect("quic").1.clone();
    let quic = connect(&url(&b), &cert).await.expect("QUIC connection");
    let mut control = AmqpOverQuic::open(&quic, "guest", "guest").await.expect("AMQP connection");
    control.declare("held").await.expect("declare");
    let mut side = control.open_channel_stream(&quic, 5).await.expect("channel stream");
    side.consume("held").await.expect("consume");
    assert!(common::eventually(|| b.counts("held") == Some((0, 0, 1))).await);
    assert_eq!(warren::server::lock(&b.shared).broker.open_counts(), (1, 2));
    side.close_stream();
    assert!(common::eventually(|| b.counts("held") == Some((0, 0, 0))).await, "consumer not cancelled");
    assert_eq!(warren::server::lock(&b.shared).broker.open_counts(), (1, 1));
    control.publish("held", b"still here").await.expect("the AMQP connection lives on");
    assert_eq!(control.get("held").await.expect("get").as_deref(), Some(&b"still here"[..]));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_channel_travels_only_on_the_stream_that_opened_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = quic_broker(dir.path()).await;
    let cert = b.quic.as_ref().expect("quic").1.clone();
    let quic = connect(&url(&b), &cert).await.expect("QUIC connection");
    let mut control = AmqpOverQuic::open(&quic, "guest", "guest").await.expect("AMQP connection");
    // A channel stream that speaks for channel 1, which lives on the connection stream.
    let mut rogue = control.open_channel_stream(&quic, 9).await.expect("channel stream");
    rogue.retarget(1);
    // No answer comes on the rogue stream: the broker answers on the connection stream.
    let no_answer = tokio::time::timeout(std::time::Duration::from_millis(300), rogue.declare("x")).await;
    assert!(no_answer.is_err(), "{no_answer:?}");
    // The connection error arrives where connection frames go: on the connection stream.
    let e = control.declare("y").await.expect_err("connection closed");
    assert!(e.to_string().contains("CHANNEL_ERROR - channel 1 is not open on this stream"), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn under_a_resource_alarm_publishes_on_channel_streams_wait_too() {
    use warren::alarms::Alarm;
    let dir = tempfile::tempdir().expect("tempdir");
    let b = quic_broker(dir.path()).await;
    let cert = b.quic.as_ref().expect("quic").1.clone();
    let quic = connect(&url(&b), &cert).await.expect("QUIC connection");
    let control = AmqpOverQuic::open(&quic, "guest", "guest").await.expect("AMQP connection");
    let mut side = control.open_channel_stream(&quic, 2).await.expect("channel stream");
    side.declare("blocked").await.expect("declare");
    let alarm = |raised: bool| {
        b.alarms.set(Alarm::Storage, raised, &b.node);
    };
    alarm(true);
    // The first publish marks the connection as a publisher; from then on it is not read.
    side.publish("blocked", b"one").await.expect("publish");
    assert!(common::eventually(|| b.counts("blocked") == Some((1, 0, 0))).await);
    side.publish("blocked", b"two").await.expect("publish");
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(b.counts("blocked"), Some((1, 0, 0)), "a blocked connection's channel stream was read");
    alarm(false);
    assert!(common::eventually(|| b.counts("blocked") == Some((2, 0, 0))).await, "read again once cleared");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_channel_stream_that_takes_nothing_for_the_write_timeout_is_ended_and_its_channel_closed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().to_path_buf();
    let b = TestBroker::start_with(move |s| {
        s.quic_listen = Some("127.0.0.1:0".parse().expect("addr"));
        s.data_dir = data;
        s.connection.write_timeout = std::time::Duration::from_millis(500);
    })
    .await;
    let cert = b.quic.as_ref().expect("quic").1.clone();
    let quic = connect(&url(&b), &cert).await.expect("QUIC connection");
    let mut control = AmqpOverQuic::open(&quic, "guest", "guest").await.expect("AMQP connection");
    let mut slow = control.open_channel_stream(&quic, 2).await.expect("channel stream");
    slow.declare("never-read").await.expect("declare");
    slow.consume("never-read").await.expect("consume");
    let chunk = vec![b'f'; 128 * 1024];
    for _ in 0..64 {
        control.publish("never-read", &chunk).await.expect("publish");
    }
    // Its client reads nothing: after the write timeout its stream is reset and its channel
    // closed, which cancels its consumer; the AMQP connection goes on.
    let gone = async {
        while b.counts("never-read").is_none_or(|c| c.2 != 0) {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    };
    assert!(
        tokio::time::timeout(std::time::Duration::from_secs(10), gone).await.is_ok(),
        "consumer still there"
    );
    control.declare("after").await.expect("the connection still works");
    control.publish("after", b"ok").await.expect("publish");
    assert_eq!(control.get("after").await.expect("get").as_deref(), Some(&b"ok"[..]));
    drop(slow);
}
