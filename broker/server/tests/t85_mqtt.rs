//! MQTT served by the `adapter-mqtt` wasm component on the broker's adapter listener, with
//! real clients: Debian's `mosquitto_pub`/`mosquitto_sub` (3.1.1 and 5), Python's paho, and
//! lapin on the same broker; a raw client (warren-mqtt's codec over a socket) where a test
//! needs exact packets or hostile bytes.
//!
//! Checks RabbitMQ's mapping both ways, QoS 1 acked after the confirm, retained messages,
//! wills, persistent sessions, client-id takeover, login refusals, and that bad bytes cost
//! their connection only.

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use common::TestBroker;
use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use warren::config::{AdapterEntry, PluginEntry};
use warren_mqtt::{Connect, Packet, Properties, Version};
use warren_plugin_host::guests;

/// A broker serving MQTT on an ephemeral port beside AMQP.
async fn broker() -> TestBroker {
    broker_with(|_| {}).await
}

async fn broker_with(more: impl FnOnce(&mut warren::config::Settings)) -> TestBroker {
    let component = guests::component("adapter-mqtt");
    TestBroker::start_with(|s| {
        // Compiled once per machine, not once per test broker.
        let _ = std::fs::create_dir_all(&s.data_dir);
        let _ = std::fs::create_dir_all(guests::cache_dir());
        let _ = std::os::unix::fs::symlink(guests::cache_dir(), s.data_dir.join("plugin-cache"));
        let limits = warren_plugin_host::Limits { memory_bytes: 256 << 20, ..Default::default() };
        s.plugins.adapters.push(AdapterEntry {
            plugin: PluginEntry {
                name: "mqtt".into(),
                component,
                config: vec![("connect-timeout-ms".into(), "2000".into())],
                limits,
            },
            listen: "127.0.0.1:0".parse().expect("addr"),
            tls_listen: None,
            sessions_per_instance: 4,
            max_connections: 64,
        });
        more(s);
    })
    .await
}

fn port(b: &TestBroker) -> String {
    b.mqtt.expect("the MQTT listener").port().to_string()
}

async fn amqp(b: &TestBroker) -> (Connection, Channel) {
    let conn = Connection::connect(&b.uri(), ConnectionProperties::default()).await.expect("connect");
    let ch = conn.create_channel().await.expect("channel");
    (conn, ch)
}

/// A queue bound to `amq.topic` with `key`, and a consumer on it.
async fn bound_consumer(ch: &Channel, queue: &str, key: &str) -> lapin::Consumer {
    ch.queue_declare(queue.into(), QueueDeclareOptions::default(), FieldTable::default())
        .await
        .expect("declare");
    ch.queue_bind(
        queue.into(),
        "amq.topic".into(),
        key.into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("bind");
    ch.basic_consume(
        queue.into(),
        "".into(),
        BasicConsumeOptions { no_ack: true, ..Default::default() },
        FieldTable::default(),
    )
    .await
    .expect("consume")
}

async fn next(c: &mut lapin::Consumer) -> lapin::message::Delivery {
    tokio::time::timeout(Duration::from_secs(10), c.next())
        .await
        .expect("a delivery in time")
        .expect("a delivery")
        .expect("no error")
}

/// Runs a client program to its end, off the async workers.
async fn run(args: Vec<String>) -> std::process::Output {
    tokio::task::spawn_blocking(move || Command::new(&args[0]).args(&args[1..]).output().expect("runs"))
        .await
        .expect("joined")
}

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

/// Starts a client program in the background; its stdout is read at the end.
fn start(a: &[&str]) -> Child {
    Command::new(a[0]).args(&a[1..]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("starts")
}

async fn finish(child: Child) -> String {
    let out =
        tokio::task::spawn_blocking(move || child.wait_with_output().expect("waits")).await.expect("joined");
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// Waits until the broker has a consumer on `queue` (an MQTT subscriber is ready).
async fn subscribed(b: &TestBroker, queue: &str) {
    assert!(common::eventually(|| b.counts(queue).is_some_and(|c| c.2 == 1)).await, "no consumer on {queue}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_and_amqp_clients_meet_on_amq_topic_with_rabbitmqs_mapping() {
    let b = broker().await;
    let p = port(&b);
    let (_conn, ch) = amqp(&b).await;
    let mut readings = bound_consumer(&ch, "readings", "home.*.temp").await;
    for (v, body) in [("mqttv311", "21.5"), ("mqttv5", "22.0")] {
        let out = run(args(&[
            "mosquitto_pub",
            "-p",
            &p,
            "-V",
            v,
            "-q",
            "1",
            "-t",
            "home/kitchen/temp",
            "-m",
            body,
        ]))
        .await;
        assert!(out.status.success(), "{v}: {out:?}");
        let d = next(&mut readings).await;
        assert_eq!((d.routing_key.as_str(), &d.data[..]), ("home.kitchen.temp", body.as_bytes()), "{v}");
        assert_eq!(d.properties.delivery_mode(), &Some(2), "QoS 1 is persistent");
    }

    // And back: an AMQP publish to amq.topic reaches an MQTT subscriber, topic from key.
    for v in ["mqttv311", "mqttv5"] {
        let id = format!("display-{v}");
        let sub = start(&[
            "mosquitto_sub",
            "-p",
            &p,
            "-V",
            v,
            "-i",
            &id,
            "-q",
            "1",
            "-t",
            "alerts/+",
            "-v",
            "-C",
            "1",
            "-W",
            "10",
        ]);
        subscribed(&b, &format!("mqtt-subscription-{id}qos1")).await;
        ch.basic_publish(
            "amq.topic".into(),
            "alerts.fire".into(),
            BasicPublishOptions::default(),
            b"evacuate",
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .expect("publish");
        assert_eq!(finish(sub).await.trim(), "alerts/fire evacuate", "{v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_reach_later_subscribers_until_cleared() {
    let b = broker().await;
    let p = port(&b);
    let out =
        run(args(&["mosquitto_pub", "-p", &p, "-q", "1", "-r", "-t", "status/boiler", "-m", "on"])).await;
    assert!(out.status.success(), "{out:?}");
    // %r: the retain flag as received.
    let got =
        run(args(&["mosquitto_sub", "-p", &p, "-t", "status/#", "-F", "%r %t %p", "-C", "1", "-W", "5"]))
            .await;
    assert_eq!(String::from_utf8_lossy(&got.stdout).trim(), "1 status/boiler on");
    // An empty retained publish clears it: a new subscriber gets nothing.
    let out = run(args(&["mosquitto_pub", "-p", &p, "-r", "-n", "-t", "status/boiler"])).await;
    assert!(out.status.success(), "{out:?}");
    let got = run(args(&["mosquitto_sub", "-p", &p, "-t", "status/#", "-C", "1", "-W", "2"])).await;
    assert!(got.stdout.is_empty(), "cleared: {got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_will_goes_when_the_connection_drops_not_after_a_disconnect() {
    let b = broker().await;
    let p = port(&b);
    let (_conn, ch) = amqp(&b).await;
    let mut wills = bound_consumer(&ch, "wills", "clients.#").await;

    // Ends with DISCONNECT after one message: no will.
    let polite = start(&[
        "mosquitto_sub",
        "-p",
        &p,
        "-i",
        "polite",
        "-t",
        "ping",
        "-C",
        "1",
        "--will-topic",
        "clients/polite",
        "--will-payload",
        "gone",
        "-W",
        "10",
    ]);
    subscribed(&b, "mqtt-subscription-politeqos1").await;
    let out = run(args(&["mosquitto_pub", "-p", &p, "-t", "ping", "-m", "x"])).await;
    assert!(out.status.success());
    assert_eq!(finish(polite).await.trim(), "x");

    // Killed: its socket closes without DISCONNECT, and the will goes.
    let mut rude = start(&[
        "mosquitto_sub",
        "-p",
        &p,
        "-i",
        "rude",
        "-t",
        "ping2",
        "--will-topic",
        "clients/rude",
        "--will-payload",
        "gone",
    ]);
    subscribed(&b, "mqtt-subscription-rudeqos1").await;
    rude.kill().expect("kill");
    let _ = rude.wait();
    let d = next(&mut wills).await;
    assert_eq!((d.routing_key.as_str(), &d.data[..]), ("clients.rude", &b"gone"[..]));
    let extra = tokio::time::timeout(Duration::from_millis(500), wills.next()).await;
    assert!(extra.is_err(), "the polite client's will was not published: {extra:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_session_keeps_qos1_messages_while_its_client_is_away() {
    let b = broker().await;
    let p = port(&b);
    // -c: clean session off; subscribe, then leave.
    let first = run(args(&[
        "mosquitto_sub",
        "-p",
        &p,
        "-c",
        "-i",
        "keeper",
        "-q",
        "1",
        "-t",
        "jobs/#",
        "-C",
        "1",
        "-W",
        "1",
    ]))
    .await;
    assert!(first.stdout.is_empty(), "{first:?}");
    // The broker sees the socket close a moment after the client exits.
    assert!(
        common::eventually(|| b.counts("mqtt-subscription-keeperqos1").map(|c| c.2) == Some(0)).await,
        "the queue outlives the connection, its consumer gone"
    );
    let out = run(args(&["mosquitto_pub", "-p", &p, "-q", "1", "-t", "jobs/7", "-m", "build"])).await;
    assert!(out.status.success());
    let back = run(args(&[
        "mosquitto_sub",
        "-p",
        &p,
        "-c",
        "-i",
        "keeper",
        "-q",
        "1",
        "-t",
        "jobs/#",
        "-v",
        "-C",
        "1",
        "-W",
        "5",
    ]))
    .await;
    assert_eq!(String::from_utf8_lossy(&back.stdout).trim(), "jobs/7 build");
}

/// An MQTT client that writes exact packets.
struct Raw {
    stream: TcpStream,
    buf: BytesMut,
    v: Version,
}

impl Raw {
    async fn open(addr: SocketAddr, v: Version) -> Raw {
        Raw { stream: TcpStream::connect(addr).await.expect("connect"), buf: BytesMut::new(), v }
    }

    async fn connect(addr: SocketAddr, v: Version, id: &str, password: &str) -> (Raw, Option<Packet>) {
        Raw::connect_as(addr, v, id, "guest", password).await
    }

    /// CONNECT with the given credentials; the server's first answer.
    async fn connect_as(
        addr: SocketAddr,
        v: Version,
        id: &str,
        user: &str,
        password: &str,
    ) -> (Raw, Option<Packet>) {
        let mut r = Raw::open(addr, v).await;
        let c = Connect {
            version: v,
            client_id: id.into(),
            clean_start: true,
            keep_alive: 30,
            username: Some(user.into()),
            password: Some(Bytes::copy_from_slice(password.as_bytes())),
            will: None,
            properties: Properties::default(),
        };
        r.send(&Packet::Connect(Box::new(c))).await;
        let ack = r.recv().await;
        (r, ack)
    }

    async fn send(&mut self, p: &Packet) {
        let mut out = BytesMut::new();
        warren_mqtt::encode(p, self.v, &mut out).expect("encodes");
        self.stream.write_all(&out).await.expect("write");
    }

    /// The next packet; `None` once the server closed the connection.
    async fn recv(&mut self) -> Option<Packet> {
        loop {
            if let Some(p) = warren_mqtt::decode(&mut self.buf, self.v, u32::MAX).expect("valid packets") {
                return Some(p);
            }
            let read = tokio::time::timeout(Duration::from_secs(10), self.stream.read_buf(&mut self.buf));
            match read.await.expect("the server answers in time") {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// Whether the server closed the connection (after any packets it sent first).
    async fn closed(&mut self) -> bool {
        while self.recv().await.is_some() {}
        true
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_connection_with_the_same_client_id_takes_the_session_over() {
    let b = broker().await;
    let addr = b.mqtt.expect("listener");
    for v in [Version::V311, Version::V5] {
        let (mut first, ack) = Raw::connect(addr, v, "twin", "guest").await;
        assert!(matches!(ack, Some(Packet::ConnAck(ref a)) if a.code == 0), "{ack:?}");
        let (mut second, ack) = Raw::connect(addr, v, "twin", "guest").await;
        assert!(matches!(ack, Some(Packet::ConnAck(ref a)) if a.code == 0), "{ack:?}");
        // 3.1.1: the first connection is closed; 5: told why first (0x8E session taken over).
        let last = first.recv().await;
        match v {
            Version::V5 => {
                assert!(matches!(last, Some(Packet::Disconnect(ref d)) if d.code == 0x8E), "{last:?}")
            }
            _ => assert!(last.is_none(), "{last:?}"),
        }
        assert!(first.closed().await);
        second.send(&Packet::PingReq).await;
        assert_eq!(second.recv().await, Some(Packet::PingResp), "the new connection serves");
        second
            .send(&Packet::Disconnect(warren_mqtt::Reasoned { code: 0, properties: Properties::default() }))
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_logins_and_bad_bytes_cost_only_their_connection() {
    let b = broker().await;
    let addr = b.mqtt.expect("listener");
    // A bystander that must stay served throughout.
    let (mut bystander, ack) = Raw::connect(addr, Version::V311, "bystander", "guest").await;
    assert!(matches!(ack, Some(Packet::ConnAck(ref a)) if a.code == 0));

    // A wrong password: 3.1.1's code 5, 5's 0x87 (not authorized), then the close.
    let (mut r, ack) = Raw::connect(addr, Version::V311, "intruder", "wrong").await;
    assert!(matches!(ack, Some(Packet::ConnAck(ref a)) if a.code == 5), "{ack:?}");
    assert!(r.closed().await);
    let (mut r, ack) = Raw::connect(addr, Version::V5, "intruder", "wrong").await;
    assert!(matches!(ack, Some(Packet::ConnAck(ref a)) if a.code == 0x87), "{ack:?}");
    assert!(r.closed().await);

    // A first packet that is no CONNECT, a remaining length of five octets, and a CONNECT
    // over the 64 KiB allowed before login: each closed.
    for bytes in [
        vec![0xC0, 0x00],
        vec![0x10, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F],
        [vec![0x10, 0x80, 0x80, 0x08], vec![0u8; 1024]].concat(),
    ] {
        let mut r = Raw::open(addr, Version::V311).await;
        r.stream.write_all(&bytes).await.expect("write");
        assert!(r.closed().await, "{bytes:?}");
    }
    // Silence after connecting: closed at the connect timeout (2 s here).
    let mut silent = Raw::open(addr, Version::V311).await;
    assert!(tokio::time::timeout(Duration::from_secs(6), silent.closed()).await.expect("closed in time"));

    bystander.send(&Packet::PingReq).await;
    assert_eq!(bystander.recv().await, Some(Packet::PingResp));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paho_mqtt5_properties_become_amqp_properties_and_headers() {
    let b = broker().await;
    let (_conn, ch) = amqp(&b).await;
    let mut c = bound_consumer(&ch, "props", "rpc.#").await;
    let script = format!(
        r#"
import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes
c = mqtt.Client(client_id="paho", protocol=mqtt.MQTTv5)
c.username_pw_set("guest", "guest")
c.connect("127.0.0.1", {port})
c.loop_start()
p = Properties(PacketTypes.PUBLISH)
p.UserProperty = [("tenant", "acme")]
p.ContentType = "application/json"
p.ResponseTopic = "rpc/replies/paho"
p.CorrelationData = b"req-1"
p.MessageExpiryInterval = 60
info = c.publish("rpc/calc", b'{{"x": 1}}', qos=1, properties=p)
info.wait_for_publish(10)
assert info.is_published()
c.disconnect()
c.loop_stop()
"#,
        port = port(&b)
    );
    let out = run(args(&["/usr/bin/python3", "-c", &script])).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let d = next(&mut c).await;
    let p = &d.properties;
    assert_eq!(&d.data[..], br#"{"x": 1}"#);
    assert_eq!(p.content_type().as_ref().map(|s| s.as_str()), Some("application/json"));
    assert_eq!(
        p.reply_to().as_ref().map(|s| s.as_str()),
        Some("rpc.replies.paho"),
        "response topic as a routing key"
    );
    assert_eq!(p.correlation_id().as_ref().map(|s| s.as_str()), Some("req-1"));
    assert_eq!(p.expiration().as_ref().map(|s| s.as_str()), Some("60000"));
    let headers = p.headers().as_ref().expect("headers");
    let h = headers.inner();
    assert_eq!(h.get("tenant"), Some(&AMQPValue::LongString("acme".into())));
    assert!(h.contains_key("x-mqtt-publish-qos"), "{h:?}");
}

/// An echo connection to the misbehaving adapter.
async fn echo(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    assert!(echoes(&mut s).await, "a new connection is served");
    s
}

/// Whether the connection still echoes.
async fn echoes(s: &mut TcpStream) -> bool {
    if s.write_all(b"hi\n").await.is_err() {
        return false;
    }
    let mut buf = [0u8; 3];
    matches!(tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf)).await, Ok(Ok(_)) if &buf == b"hi\n")
}

/// Whether the server closed the connection.
async fn dropped(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 16];
    matches!(tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await, Ok(Ok(0) | Err(_)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adapter_that_traps_loops_or_hoards_memory_costs_its_instances_sessions_only() {
    let b = broker_with(|s| {
        let limits = warren_plugin_host::Limits { memory_bytes: 32 << 20, ..Default::default() };
        s.plugins.adapters.push(AdapterEntry {
            plugin: PluginEntry {
                name: "echo".into(),
                component: guests::component("fixture-adapter-misbehave"),
                config: Vec::new(),
                limits,
            },
            listen: "127.0.0.1:0".parse().expect("addr"),
            tls_listen: None,
            // Two sessions per instance: a failure costs both, and only both.
            sessions_per_instance: 2,
            max_connections: 64,
        });
    })
    .await;
    let addr = b.adapters.iter().find(|(p, _)| p == "echo").expect("echo listener").1;
    for word in ["trap", "loop", "grow"] {
        let (mut a, mut b2) = (echo(addr).await, echo(addr).await);
        let mut other = echo(addr).await;
        a.write_all(format!("{word}\n").as_bytes()).await.expect("write");
        assert!(dropped(&mut a).await, "{word}: the misbehaving session ends");
        assert!(dropped(&mut b2).await, "{word}: so does the other session of its instance");
        assert!(echoes(&mut other).await, "{word}: a session of another instance is served on");
        drop(other);
    }
    // The broker serves on: new echo sessions, MQTT, AMQP.
    let mut fresh = echo(addr).await;
    assert!(echoes(&mut fresh).await);
    let (mut m, ack) = Raw::connect(b.mqtt.expect("mqtt"), Version::V311, "after", "guest").await;
    assert!(matches!(ack, Some(Packet::ConnAck(ref a)) if a.code == 0));
    m.send(&Packet::PingReq).await;
    assert_eq!(m.recv().await, Some(Packet::PingResp));
    let (_conn, ch) = amqp(&b).await;
    ch.queue_declare("still".into(), QueueDeclareOptions::default(), FieldTable::default())
        .await
        .expect("amqp serves");
    let (status, body) = common::http_to(b.metrics.expect("metrics"), "GET", "/metrics").await;
    assert_eq!(status, 200);
    for reason in ["trap", "timeout", "memory"] {
        let series =
            format!("warren_plugin_traps_total{{kind=\"adapter\",plugin=\"echo\",reason=\"{reason}\"}} 1");
        assert!(body.contains(&series), "{series} in:\n{body}");
    }
    for series in [
        "warren_adapter_connections_accepted_total{protocol=\"echo\"} 10",
        "warren_adapter_received_bytes_total{protocol=\"echo\"} ",
        "warren_adapter_sent_bytes_total{protocol=\"echo\"} ",
        "warren_adapter_connections{protocol=\"mqtt\"} 1",
        "warren_adapter_sessions{protocol=\"mqtt\"} 1",
    ] {
        assert!(body.contains(series), "{series} in:\n{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_holding_the_most_of_a_spent_input_budget_loses_its_session_alone() {
    let b = broker_with(|s| {
        let config = &mut s.plugins.adapters[0].plugin.config;
        config.push(("max-packet-size".into(), "65536".into()));
        config.push(("input-budget".into(), "100000".into()));
        config.push(("partial-packet-timeout-ms".into(), "1000".into()));
    })
    .await;
    let addr = b.mqtt.expect("mqtt");
    // QoS 0 PUBLISHes to topic "a": 65 000 octets for the hoarder, 60 000 for the other.
    let big = [0x30, 0xE8, 0xFB, 0x03, 0x00, 0x01, b'a'];
    let small = [0x30, 0xE0, 0xD4, 0x03, 0x00, 0x01, b'a'];
    let body = vec![7u8; 65_000];
    let (mut hoarder, _) = Raw::connect(addr, Version::V5, "hoarder", "guest").await;
    let (mut other, _) = Raw::connect(addr, Version::V311, "other", "guest").await;
    hoarder.stream.write_all(&big).await.expect("write");
    hoarder.stream.write_all(&body[..60_000]).await.expect("write");
    tokio::time::sleep(Duration::from_millis(200)).await;
    // 60 007 held by the hoarder, then 45 007 by the other: over 100 000. The hoarder holds
    // the most, so it goes (at its next call: its partial-packet deadline), not the reader.
    other.stream.write_all(&small).await.expect("write");
    other.stream.write_all(&body[..45_000]).await.expect("write");
    let last = hoarder.recv().await;
    assert!(matches!(last, Some(Packet::Disconnect(ref d)) if d.code == 0x97), "quota exceeded: {last:?}");
    assert!(hoarder.closed().await);
    other.stream.write_all(&body[..60_000 - 3 - 45_000]).await.expect("write");
    other.send(&Packet::PingReq).await;
    assert_eq!(other.recv().await, Some(Packet::PingResp), "the other finished its packet and is served");

    // A packet left incomplete past its deadline ends its session on its own.
    let (mut slow, _) = Raw::connect(addr, Version::V5, "slow", "guest").await;
    slow.stream.write_all(&small[..4]).await.expect("write");
    let last = tokio::time::timeout(Duration::from_secs(5), slow.recv()).await.expect("closed in time");
    assert!(matches!(last, Some(Packet::Disconnect(ref d)) if d.code == 0x81), "malformed: {last:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_refused_for_its_vhost_takes_no_session_over() {
    use warren_core::auth::User;
    use warren_core::password::Password;
    use warren_core::permissions::{Access, Pattern, Permission};
    let b = broker_with(|s| {
        s.vhosts = vec!["orders".into()];
        let mallory = User {
            name: "mallory".into(),
            password: Password::plain("m"),
            loopback_only: false,
            tags: Vec::new(),
            limits: Default::default(),
        };
        s.users = vec![User::guest(), mallory];
        let all = || Pattern::new(".*").expect("pattern");
        let permission = |user: &str, vhost: &str| Permission {
            user: user.into(),
            vhost: vhost.into(),
            configure: all(),
            write: all(),
            read: all(),
        };
        // mallory may use "orders" only.
        s.access = std::sync::Arc::new(Access::rules(
            vec![permission("guest", "/"), permission("mallory", "orders")],
            Vec::new(),
        ));
    })
    .await;
    let addr = b.mqtt.expect("mqtt");
    let (mut victim, ack) = Raw::connect(addr, Version::V5, "victim", "guest").await;
    assert!(matches!(ack, Some(Packet::ConnAck(ref a)) if a.code == 0));
    // mallory names the victim's vhost and client identifier: refused, and nobody is kicked.
    let (_r, ack) = Raw::connect_as(addr, Version::V5, "victim", "/:mallory", "m").await;
    assert!(matches!(ack, Some(Packet::ConnAck(ref a)) if a.code != 0), "{ack:?}");
    victim.send(&Packet::PingReq).await;
    assert_eq!(victim.recv().await, Some(Packet::PingResp), "the victim's session is untouched");
    // In her own vhost she logs in with the same client identifier: another namespace.
    let (_own, ack) = Raw::connect_as(addr, Version::V5, "victim", "orders:mallory", "m").await;
    assert!(matches!(ack, Some(Packet::ConnAck(ref a)) if a.code == 0), "{ack:?}");
    victim.send(&Packet::PingReq).await;
    assert_eq!(victim.recv().await, Some(Packet::PingResp), "still untouched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_over_tls_uses_the_brokers_certificate() {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let dir = tempfile::tempdir().expect("tempdir");
    let path = |name: &str| dir.path().join(name);
    let ca_key = KeyPair::generate().expect("key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "Warren test CA");
    let ca_cert = ca.self_signed(&ca_key).expect("ca");
    std::fs::write(path("ca.pem"), ca_cert.pem()).expect("write");
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
    params.distinguished_name.push(DnType::CommonName, "localhost");
    let cert = params.signed_by(&key, &issuer).expect("sign");
    std::fs::write(path("server.pem"), cert.pem()).expect("write");
    std::fs::write(path("server.key"), key.serialize_pem()).expect("write");
    let tls = warren::tls::TlsConfig {
        cert: path("server.pem"),
        key: path("server.key"),
        ca: None,
        fail_if_no_peer_cert: false,
    };
    let b = broker_with(move |s| {
        s.amqps = Some(("127.0.0.1:0".parse().expect("addr"), tls));
        s.plugins.adapters[0].tls_listen = Some("127.0.0.1:0".parse().expect("addr"));
    })
    .await;
    let port = b.mqtts.expect("the MQTT TLS listener").port().to_string();
    let ca = path("ca.pem").display().to_string();
    let sub = start(&[
        "mosquitto_sub",
        "-h",
        "localhost",
        "-p",
        &port,
        "--cafile",
        &ca,
        "-i",
        "tls-sub",
        "-t",
        "secure/#",
        "-v",
        "-C",
        "1",
        "-W",
        "10",
    ]);
    subscribed(&b, "mqtt-subscription-tls-subqos1").await;
    let out = run(args(&[
        "mosquitto_pub",
        "-h",
        "localhost",
        "-p",
        &port,
        "--cafile",
        &ca,
        "-q",
        "1",
        "-t",
        "secure/door",
        "-m",
        "locked",
    ]))
    .await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(finish(sub).await.trim(), "secure/door locked");
    // A client that does not trust the certificate is refused at the handshake.
    let untrusting = run(args(&[
        "mosquitto_pub",
        "-h",
        "localhost",
        "-p",
        &port,
        "--capath",
        "/nonexistent",
        "-t",
        "x",
        "-m",
        "y",
    ]))
    .await;
    assert!(!untrusting.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().to_path_buf();
    let b = broker_with({
        let data = data.clone();
        move |s| s.data_dir = data
    })
    .await;
    let p = port(&b);
    let out =
        run(args(&["mosquitto_pub", "-p", &p, "-q", "1", "-r", "-t", "status/pump", "-m", "running"])).await;
    assert!(out.status.success(), "{out:?}");
    b.stop().await;
    let b = broker_with(move |s| s.data_dir = data).await;
    let p = port(&b);
    let got =
        run(args(&["mosquitto_sub", "-p", &p, "-t", "status/#", "-F", "%r %t %p", "-C", "1", "-W", "5"]))
            .await;
    assert_eq!(String::from_utf8_lossy(&got.stdout).trim(), "1 status/pump running");
}

/// A broker that stops tells its MQTT 5 clients why (DISCONNECT 0x8B, server shutting
/// down) before it closes their connections; 3.1.1 has no way to say it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_broker_tells_mqtt5_clients_it_is_shutting_down() {
    let b = broker().await;
    let addr = b.mqtt.expect("listener");
    let (mut v5, ack) = Raw::connect(addr, Version::V5, "leaving-5", "guest").await;
    assert!(matches!(ack, Some(Packet::ConnAck(ref a)) if a.code == 0), "{ack:?}");
    let (mut v3, ack) = Raw::connect(addr, Version::V311, "leaving-3", "guest").await;
    assert!(matches!(ack, Some(Packet::ConnAck(ref a)) if a.code == 0), "{ack:?}");
    let stopping = tokio::spawn(b.stop());
    let last = v5.recv().await;
    assert!(matches!(last, Some(Packet::Disconnect(ref d)) if d.code == 0x8B), "{last:?}");
    assert!(v5.closed().await);
    assert_eq!(v3.recv().await, None, "3.1.1: closed without a word");
    stopping.await.expect("stopped");
}
