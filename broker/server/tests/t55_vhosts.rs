//! Vhosts with a real client: each one its own namespace of exchanges, queues and bindings,
//! kept apart on the wire, in dead-lettering, in storage over a restart, in metrics and in
//! the management API.

mod common;

use common::{TestBroker, code, eventually, http, http_to, s, table};
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use warren_core::broker::VHostId;

async fn open(b: &TestBroker, vhost: &str) -> (Connection, Channel) {
    let path = if vhost == "/" { "%2f".to_string() } else { vhost.to_string() };
    let uri = format!("amqp://guest:guest@{}/{path}", b.addr);
    let conn = Connection::connect(&uri, ConnectionProperties::default()).await.expect("connect");
    let ch = conn.create_channel().await.expect("channel");
    ch.confirm_select(ConfirmSelectOptions::default()).await.expect("confirm.select");
    (conn, ch)
}

async fn publish(ch: &Channel, exchange: &str, key: &str, body: &[u8], persistent: bool) {
    let props = BasicProperties::default().with_delivery_mode(if persistent { 2 } else { 1 });
    let confirm = ch
        .basic_publish(exchange.into(), key.into(), BasicPublishOptions::default(), body, props)
        .await
        .expect("publish");
    assert!(confirm.await.expect("confirm").is_ack());
}

/// A queue's counts, from the broker of its vhost (each vhost has its own, behind its own
/// lock); one the configuration dropped is kept by the broker of `/`.
fn counts(b: &TestBroker, vhost: &str, queue: &str) -> Option<(usize, usize, usize)> {
    let shared = b.node.broker(vhost).unwrap_or_else(|| b.node.default_broker().clone());
    let s = warren::server::lock(&shared);
    let vh = s.broker.vhosts().id(vhost)?;
    s.broker.queue_counts_in(vh, queue)
}

fn with_vhosts(names: &[&str]) -> impl FnOnce(&mut warren::config::Settings) {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    move |s| s.vhosts = names
}

#[tokio::test]
async fn each_vhost_has_its_own_queues_exchanges_and_bindings() {
    let b = TestBroker::start_with(with_vhosts(&["a"])).await;
    let (_c1, root) = open(&b, "/").await;
    let (_c2, a) = open(&b, "a").await;
    // The same name with different arguments: two queues, no 406.
    let limited = table(&[("x-max-length", AMQPValue::LongInt(1))]);
    root.queue_declare("q".into(), QueueDeclareOptions::default(), limited).await.expect("declare in /");
    a.queue_declare("q".into(), QueueDeclareOptions::default(), FieldTable::default())
        .await
        .expect("declare in a");
    // The same exchange name as two types.
    let opts = ExchangeDeclareOptions::default();
    root.exchange_declare("x".into(), ExchangeKind::Fanout, opts, FieldTable::default())
        .await
        .expect("x in /");
    a.exchange_declare("x".into(), ExchangeKind::Topic, opts, FieldTable::default()).await.expect("x in a");
    a.queue_bind("q".into(), "x".into(), "k.#".into(), QueueBindOptions::default(), FieldTable::default())
        .await
        .expect("bind in a");
    // Publishes reach only their own vhost's queue.
    for _ in 0..3 {
        publish(&a, "", "q", b"to a", false).await;
    }
    publish(&a, "x", "k.1", b"through a's x", false).await;
    publish(&root, "", "q", b"to /", false).await;
    // / has no binding from its x: unroutable there, acked all the same.
    publish(&root, "x", "k.1", b"nowhere", false).await;
    assert!(eventually(|| counts(&b, "a", "q") == Some((4, 0, 0))).await, "{:?}", counts(&b, "a", "q"));
    assert_eq!(counts(&b, "/", "q"), Some((1, 0, 0)));
    // The predeclared exchanges exist in every vhost.
    publish(&a, "amq.direct", "none", b"unrouted", false).await;
    // A queue of one vhost is a 404 in another, named with the vhost that was asked.
    a.queue_declare("only-a".into(), QueueDeclareOptions::default(), FieldTable::default())
        .await
        .expect("only-a");
    let passive = QueueDeclareOptions { passive: true, ..Default::default() };
    let e = root.queue_declare("only-a".into(), passive, FieldTable::default()).await.expect_err("404 in /");
    assert_eq!(code(&e), Some(404), "{e}");
    assert!(e.to_string().contains("no queue 'only-a' in vhost '/'"), "{e}");
    // Errors name the vhost they happened in.
    let limited = table(&[("x-max-length", AMQPValue::LongInt(2))]);
    let e = a.queue_declare("q".into(), QueueDeclareOptions::default(), limited).await.expect_err("406");
    assert_eq!(code(&e), Some(406), "{e}");
    assert!(e.to_string().contains("for queue 'q' in vhost 'a'"), "{e}");
}

#[tokio::test]
async fn an_unknown_vhost_refuses_the_connection_with_530() {
    let b = TestBroker::start_with(with_vhosts(&["a"])).await;
    let uri = format!("amqp://guest:guest@{}/b", b.addr);
    let e = Connection::connect(&uri, ConnectionProperties::default()).await.expect_err("refused");
    assert_eq!(code(&e), Some(530), "{e}");
    assert!(e.to_string().contains("vhost b not found"), "{e}");
}

/// Each vhost has a broker (and a lock) of its own; the node-wide limits still count every
/// vhost, and a connection slot comes back when its connection goes, whichever vhost it used.
#[tokio::test]
async fn node_wide_limits_count_every_vhost_though_each_has_its_own_broker() {
    let b = TestBroker::start_with(|s| {
        with_vhosts(&["a"])(s);
        (s.limits.counts.max_connections, s.limits.counts.max_exchanges) = (Some(2), Some(1));
    })
    .await;
    let (root, r) = open(&b, "/").await;
    let opts = ExchangeDeclareOptions::default();
    r.exchange_declare("x1".into(), ExchangeKind::Direct, opts, FieldTable::default()).await.expect("x1");
    let (_a_conn, a) = open(&b, "a").await;
    let e = a
        .exchange_declare("x2".into(), ExchangeKind::Direct, opts, FieldTable::default())
        .await
        .expect_err("the exchange in / counts in a too");
    assert_eq!(code(&e), Some(406), "{e}");
    assert!(e.to_string().contains("exchange limit of 1"), "{e}");
    let uri = format!("amqp://guest:guest@{}/a", b.addr);
    let e = Connection::connect(&uri, ConnectionProperties::default()).await.expect_err("a third connection");
    assert_eq!(code(&e), Some(530), "{e}");
    assert!(e.to_string().contains("connection limit (2)"), "{e}");
    root.close(200, "bye".into()).await.expect("close");
    let mut again = None;
    for _ in 0..50 {
        if let Ok(c) = Connection::connect(&uri, ConnectionProperties::default()).await {
            again = Some(c);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(again.is_some(), "the slot of the connection to / serves one to a");
}

/// A connection to `a` that the broker closes for a hard error (a second channel.open) has no
/// id once closed; its task must still unregister from `a`'s broker, not `/`'s.
#[tokio::test]
async fn a_connection_closed_by_the_broker_leaves_nothing_registered_in_its_vhost() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use warren_codec::{ChannelOpen, ConnectionCloseOk, Frame, Method, decode_frame};
    let b = TestBroker::start_with(with_vhosts(&["a"])).await;
    let registered = |vhost: &str| warren::server::lock(&b.node.broker(vhost).expect("broker")).registered();
    for _ in 0..3 {
        let mut sock = tokio::net::TcpStream::connect(b.addr).await.expect("connect");
        // The handshake (and channel 1) first: the connection is open and its task registered
        // with `a`'s broker before the error.
        let out = warren_core::connection::guest_handshake_to("a", 131_072);
        sock.write_all(&out).await.expect("write");
        let mut buf = bytes::BytesMut::new();
        let mut second_open_sent = false;
        let code = loop {
            if let Some(f) = decode_frame(&mut buf, 0).expect("frame") {
                match f {
                    Frame::Method { method: Method::ChannelOpenOk(_), .. } if !second_open_sent => {
                        let mut again = bytes::BytesMut::new();
                        Frame::method(1, ChannelOpen::default()).encode(&mut again);
                        sock.write_all(&again).await.expect("write");
                        second_open_sent = true;
                    }
                    Frame::Method { method: Method::ConnectionClose(c), .. } => break c.reply_code,
                    _ => {}
                }
                continue;
            }
            assert!(sock.read_buf(&mut buf).await.expect("read") > 0, "closed before connection.close");
        };
        assert_eq!(code, 504, "a second channel.open is a hard channel error");
        let mut ok = bytes::BytesMut::new();
        Frame::method(0, ConnectionCloseOk {}).encode(&mut ok);
        sock.write_all(&ok).await.expect("close-ok");
        while sock.read_buf(&mut buf).await.is_ok_and(|n| n > 0) {}
    }
    assert!(eventually(|| registered("a") == 0).await, "{} left registered in a", registered("a"));
    assert_eq!(registered("/"), 0);
}

#[tokio::test]
async fn dead_letters_stay_in_their_vhost() {
    let b = TestBroker::start_with(with_vhosts(&["a"])).await;
    let (_c1, root) = open(&b, "/").await;
    let (_c2, a) = open(&b, "a").await;
    // "dlq" in both vhosts; only a's is the dead-letter target of a's "work".
    for ch in [&root, &a] {
        ch.queue_declare("dlq".into(), QueueDeclareOptions::default(), FieldTable::default())
            .await
            .expect("dlq");
    }
    let args = table(&[
        ("x-dead-letter-exchange", s("")),
        ("x-dead-letter-routing-key", s("dlq")),
        ("x-message-ttl", AMQPValue::LongInt(0)),
    ]);
    a.queue_declare("work".into(), QueueDeclareOptions::default(), args).await.expect("work");
    publish(&a, "", "work", b"expires at once", false).await;
    assert!(eventually(|| counts(&b, "a", "dlq") == Some((1, 0, 0))).await, "{:?}", counts(&b, "a", "dlq"));
    assert_eq!(counts(&b, "/", "dlq"), Some((0, 0, 0)));
}

#[tokio::test]
async fn a_vhosts_durable_queue_survives_a_restart_and_the_config_dropping_the_vhost_closes_it() {
    let dir = tempfile::tempdir().expect("dir");
    let start = |vhosts: &'static [&'static str]| {
        let data = dir.path().to_path_buf();
        TestBroker::start_with(move |s| {
            s.data_dir = data;
            s.vhosts = vhosts.iter().map(|v| v.to_string()).collect();
        })
    };
    let b = start(&["a"]).await;
    let (c, a) = open(&b, "a").await;
    let durable = QueueDeclareOptions { durable: true, ..Default::default() };
    a.queue_declare("d".into(), durable, FieldTable::default()).await.expect("d");
    let opts = ExchangeDeclareOptions { durable: true, ..Default::default() };
    a.exchange_declare("dx".into(), ExchangeKind::Fanout, opts, FieldTable::default()).await.expect("dx");
    a.queue_bind("d".into(), "dx".into(), "".into(), QueueBindOptions::default(), FieldTable::default())
        .await
        .expect("bind");
    publish(&a, "dx", "", b"kept", true).await;
    c.close(200, "bye".into()).await.expect("close");
    b.stop().await;

    let b = start(&["a"]).await;
    assert_eq!(counts(&b, "a", "d"), Some((1, 0, 0)), "back in its vhost");
    assert_eq!(counts(&b, "/", "d"), None, "and nowhere else");
    let (c, a) = open(&b, "a").await;
    publish(&a, "dx", "", b"the binding came back too", true).await;
    assert_eq!(counts(&b, "a", "d"), Some((2, 0, 0)));
    c.close(200, "bye".into()).await.expect("close");
    b.stop().await;

    // A configuration without the vhost does not lose what is stored in it, but no client
    // gets in: dropping a vhost from the configuration is how an operator closes it.
    let b = start(&[]).await;
    assert_eq!(counts(&b, "a", "d"), Some((2, 0, 0)));
    let uri = format!("amqp://guest:guest@{}/a", b.addr);
    let e = Connection::connect(&uri, ConnectionProperties::default()).await.expect_err("closed");
    assert_eq!(code(&e), Some(530), "{e}");
    b.stop().await;
    // Named again, it is open again with everything in it.
    let b = start(&["a"]).await;
    let (_c, a) = open(&b, "a").await;
    let passive = QueueDeclareOptions { passive: true, ..Default::default() };
    a.queue_declare("d".into(), passive, FieldTable::default()).await.expect("still declared");
    assert_eq!(counts(&b, "a", "d"), Some((2, 0, 0)));
}

#[tokio::test]
async fn metrics_and_the_management_api_name_each_queues_vhost() {
    let b = TestBroker::start_with(with_vhosts(&["a"])).await;
    let (_c1, root) = open(&b, "/").await;
    let (_c2, a) = open(&b, "a").await;
    for ch in [&root, &a] {
        ch.queue_declare("m".into(), QueueDeclareOptions::default(), FieldTable::default()).await.expect("m");
    }
    publish(&a, "", "m", b"1", false).await;
    publish(&a, "", "m", b"2", false).await;
    let (status, body) = http_to(b.metrics.expect("metrics on"), "GET", "/metrics").await;
    assert_eq!(status, 200);
    let line = |vhost: &str| {
        body.lines()
            .find(|l| {
                l.starts_with("warren_queue_messages_ready{")
                    && l.contains(&format!("vhost=\"{vhost}\""))
                    && l.contains("queue=\"m\"")
            })
            .map(str::to_string)
    };
    assert!(line("a").is_some_and(|l| l.ends_with(" 2")), "{:?}", line("a"));
    assert!(line("/").is_some_and(|l| l.ends_with(" 0")), "{:?}", line("/"));
    let (status, body) = http(&b, "GET", "/api/queues").await;
    assert_eq!(status, 200);
    let queues: serde_json::Value = serde_json::from_str(&body).expect("json");
    let listed: Vec<(String, String, u64)> = queues
        .as_array()
        .map(|qs| {
            qs.iter()
                .map(|q| {
                    let text = |k: &str| q[k].as_str().unwrap_or_default().to_string();
                    (text("vhost"), text("name"), q["messages_ready"].as_u64().unwrap_or(0))
                })
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(listed, [("/".into(), "m".into(), 0), ("a".into(), "m".into(), 2)]);
    // A replay names its vhost; one that does not exist is a 404.
    let (status, _) = http(&b, "POST", "/api/queues/a/m/replay").await;
    assert_eq!(status, 200);
    let (status, body) = http(&b, "POST", "/api/queues/zz/m/replay").await;
    assert_eq!((status, body.contains("no vhost 'zz'")), (404, true), "{body}");
    // The model agrees with the wire: each vhost is the first (and only) of its own broker.
    for (name, shared) in &b.node.brokers() {
        let s = warren::server::lock(shared);
        assert_eq!(s.broker.vhosts().id(name), Some(VHostId::DEFAULT));
        assert_eq!(s.broker.vhosts().iter().count(), 1, "{name} has a broker of its own");
    }
    assert_eq!(b.node.brokers().iter().map(|(n, _)| &**n).collect::<Vec<_>>(), ["/", "a"]);
}
