//! MQTT load, for any MQTT broker (Warren's adapter, mosquitto, RabbitMQ's MQTT plugin) with
//! the same client: one publisher fanning out to N subscribers at QoS 0 or 1, and idle
//! connections for memory per connection. The client is `warren-mqtt`'s codec over tokio,
//! so the broker under test is the only thing that differs between runs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;
use tokio::sync::Semaphore;
use warren_mqtt::{Connect, Packet, Properties, Publish, QoS, Subscribe, Subscription, Version};

use crate::histogram::Histogram;

/// What to run.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// The broker's MQTT listener.
    pub addr: SocketAddr,
    /// User name and password.
    pub user: (String, String),
    /// 0 or 1.
    pub qos: u8,
    /// Subscribers, each getting every message.
    pub subscribers: usize,
    /// Body size (at least 8: a timestamp).
    pub size: usize,
    /// How long to publish.
    pub duration: Duration,
    /// QoS 1 publishes in flight (unacked) at most.
    pub window: usize,
    /// MQTT 3.1.1 or 5.
    pub version: Version,
}

/// What was measured.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Messages published (QoS 1: acked).
    pub published: u64,
    /// Messages received, over all subscribers.
    pub received: u64,
    /// Messages that should have been received (published × subscribers).
    pub expected: u64,
    /// Seconds publishing.
    pub seconds: f64,
    /// Seconds from the first publish to the last delivery.
    pub delivery_seconds: f64,
    /// Publish→deliver latency quantiles, microseconds: p50, p99.
    pub latency_us: (u64, u64),
}

impl Summary {
    /// One line of text.
    pub fn text(&self) -> String {
        format!(
            "published {:.0} msg/s, delivered {:.0} msg/s over all subscribers until the last ({} of {} expected), latency p50 {} µs p99 {} µs",
            self.published as f64 / self.seconds,
            self.received as f64 / self.delivery_seconds,
            self.received,
            self.expected,
            self.latency_us.0,
            self.latency_us.1
        )
    }

    /// One JSON object.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "mode": "mqtt",
            "published_per_s": (self.published as f64 / self.seconds).round(),
            "delivered_per_s": (self.received as f64 / self.delivery_seconds).round(),
            "delivered": self.received,
            "expected": self.expected,
            "p50_us": self.latency_us.0,
            "p99_us": self.latency_us.1,
        })
    }
}

/// A connected client: its halves and what it has read but not decoded.
struct Client {
    read: OwnedReadHalf,
    write: tokio::net::tcp::OwnedWriteHalf,
    buf: BytesMut,
    version: Version,
}

impl Client {
    async fn connect(s: &Scenario, id: &str) -> anyhow::Result<Client> {
        let stream = TcpStream::connect(s.addr).await.with_context(|| format!("connecting to {}", s.addr))?;
        stream.set_nodelay(true)?;
        let (read, write) = stream.into_split();
        let mut c = Client { read, write, buf: BytesMut::new(), version: s.version };
        let connect = Connect {
            version: s.version,
            client_id: id.into(),
            clean_start: true,
            keep_alive: 0,
            username: Some(s.user.0.clone()),
            password: Some(Bytes::from(s.user.1.clone().into_bytes())),
            will: None,
            properties: Properties::default(),
        };
        c.send(&Packet::Connect(Box::new(connect))).await?;
        match c.recv().await? {
            Some(Packet::ConnAck(a)) if a.code == 0 => Ok(c),
            other => bail!("CONNECT refused: {other:?}"),
        }
    }

    async fn send(&mut self, p: &Packet) -> anyhow::Result<()> {
        let mut out = BytesMut::new();
        warren_mqtt::encode(p, self.version, &mut out)?;
        self.write.write_all(&out).await?;
        Ok(())
    }

    async fn recv(&mut self) -> anyhow::Result<Option<Packet>> {
        recv(&mut self.read, &mut self.buf, self.version).await
    }
}

async fn recv(read: &mut OwnedReadHalf, buf: &mut BytesMut, v: Version) -> anyhow::Result<Option<Packet>> {
    loop {
        if let Some(p) = warren_mqtt::decode(buf, v, u32::MAX)? {
            return Ok(Some(p));
        }
        if read.read_buf(buf).await? == 0 {
            return Ok(None);
        }
    }
}

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

fn qos(q: u8) -> QoS {
    if q == 0 { QoS::AtMostOnce } else { QoS::AtLeastOnce }
}

/// Runs the scenario.
pub async fn run(s: &Scenario) -> anyhow::Result<Summary> {
    if s.size < 8 {
        bail!("--size must be at least 8 (a timestamp)");
    }
    let topic = format!("warren-perf/{}", std::process::id());
    let received = Arc::new(AtomicU64::new(0));
    let latency = Arc::new(std::sync::Mutex::new(Histogram::default()));
    let mut subscribers = Vec::new();
    for i in 0..s.subscribers {
        let mut c = Client::connect(s, &format!("perf-sub-{}-{i}", std::process::id())).await?;
        let sub = Subscribe {
            packet_id: 1,
            properties: Properties::default(),
            filters: vec![Subscription {
                filter: topic.clone(),
                qos: qos(s.qos),
                no_local: false,
                retain_as_published: false,
                retain_handling: 0,
            }],
        };
        c.send(&Packet::Subscribe(sub)).await?;
        match c.recv().await? {
            Some(Packet::SubAck(_)) => {}
            other => bail!("SUBSCRIBE refused: {other:?}"),
        }
        let (received, latency) = (received.clone(), latency.clone());
        subscribers.push(tokio::spawn(async move {
            if let Err(e) = subscribe(c, received, latency).await {
                eprintln!("subscriber {i} stopped: {e:#}");
            }
        }));
    }
    let publisher = Client::connect(s, &format!("perf-pub-{}", std::process::id())).await?;
    let started = Instant::now();
    let published = publish(publisher, s, &topic).await?;
    let seconds = started.elapsed().as_secs_f64();
    // Deliveries still in flight: wait until all came, or nothing came for two seconds.
    let want = published * s.subscribers as u64;
    let mut last = received.load(Ordering::Relaxed);
    let mut still = Instant::now();
    while received.load(Ordering::Relaxed) < want && still.elapsed() < Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = received.load(Ordering::Relaxed);
        if now != last {
            (last, still) = (now, Instant::now());
        }
    }
    let delivery_seconds = still.duration_since(started).as_secs_f64().max(seconds);
    for t in subscribers {
        t.abort();
    }
    let latency = latency.lock().unwrap_or_else(|p| p.into_inner());
    let q = |x| latency.quantile(x).map_or(0, |d: Duration| d.as_micros() as u64);
    Ok(Summary {
        published,
        received: received.load(Ordering::Relaxed),
        expected: want,
        seconds,
        delivery_seconds,
        latency_us: (q(0.5), q(0.99)),
    })
}

/// Publishes until the duration ends; QoS 1 keeps at most `window` unacked.
async fn publish(c: Client, s: &Scenario, topic: &str) -> anyhow::Result<u64> {
    let Client { mut read, mut write, mut buf, version } = c;
    let deadline = Instant::now() + s.duration;
    let window = Arc::new(Semaphore::new(s.window.max(1)));
    let acked = Arc::new(AtomicU64::new(0));
    let reader = {
        let (window, acked) = (window.clone(), acked.clone());
        tokio::spawn(async move {
            while let Ok(Some(p)) = recv(&mut read, &mut buf, version).await {
                if let Packet::PubAck(_) = p {
                    acked.fetch_add(1, Ordering::Relaxed);
                    window.add_permits(1);
                }
            }
        })
    };
    let mut sent = 0u64;
    let mut id: u16 = 0;
    let mut out = BytesMut::new();
    let padding = vec![0u8; s.size - 8];
    while Instant::now() < deadline {
        // A batch per write: 64 messages, each waiting for a window slot at QoS 1.
        for _ in 0..64 {
            let packet_id = if s.qos == 1 {
                window.acquire().await?.forget();
                id = id.checked_add(1).unwrap_or(1);
                Some(id)
            } else {
                None
            };
            let mut payload = BytesMut::with_capacity(s.size);
            payload.extend_from_slice(&now_ns().to_be_bytes());
            payload.extend_from_slice(&padding);
            let p = Publish {
                dup: false,
                qos: qos(s.qos),
                retain: false,
                topic: topic.to_string(),
                packet_id,
                properties: Properties::default(),
                payload: payload.freeze(),
            };
            warren_mqtt::encode(&Packet::Publish(p), version, &mut out)?;
            sent += 1;
        }
        write.write_all(&out).await?;
        out.clear();
    }
    if s.qos == 1 {
        // Acks of the last publishes: wait a little, then count what came.
        let end = Instant::now() + Duration::from_secs(5);
        while acked.load(Ordering::Relaxed) < sent && Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        reader.abort();
        return Ok(acked.load(Ordering::Relaxed));
    }
    reader.abort();
    Ok(sent)
}

/// Counts deliveries, records their latency (merged into `shared` after each read), and
/// acks QoS 1 ones.
async fn subscribe(
    mut c: Client,
    received: Arc<AtomicU64>,
    shared: Arc<std::sync::Mutex<Histogram>>,
) -> anyhow::Result<()> {
    let mut acks = BytesMut::new();
    loop {
        let mut latency = Histogram::default();
        // Everything buffered is handled, then the acks go in one write.
        let Some(p) = c.recv().await? else { return Ok(()) };
        let mut next = Some(p);
        while let Some(p) = next {
            if let Packet::Publish(p) = p {
                received.fetch_add(1, Ordering::Relaxed);
                if let Some(ts) = p.payload.get(..8).and_then(|b| <[u8; 8]>::try_from(b).ok()) {
                    let sent = u64::from_be_bytes(ts);
                    latency.record(Duration::from_nanos(now_ns().saturating_sub(sent)));
                }
                if let Some(id) = p.packet_id {
                    warren_mqtt::encode(&Packet::PubAck(warren_mqtt::Ack::ok(id)), c.version, &mut acks)?;
                }
            }
            next = warren_mqtt::decode(&mut c.buf, c.version, u32::MAX)?;
        }
        shared.lock().unwrap_or_else(|p| p.into_inner()).merge(&latency);
        if !acks.is_empty() {
            c.write.write_all(&acks).await?;
            acks.clear();
        }
    }
}

/// Opens `count` idle MQTT connections and reports the broker's memory per connection.
pub async fn connections(
    s: &Scenario,
    count: usize,
    pid: Option<u32>,
) -> anyhow::Result<(usize, Option<f64>)> {
    let before = pid.and_then(crate::connections::rss_anon);
    let mut open = Vec::with_capacity(count);
    for i in 0..count {
        match Client::connect(s, &format!("perf-idle-{}-{i}", std::process::id())).await {
            Ok(c) => open.push(c),
            Err(e) => {
                eprintln!("stopped at {i}: {e:#}");
                break;
            }
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = pid.and_then(crate::connections::rss_anon);
    let per = before.zip(after).map(|(b, a)| (a.saturating_sub(b)) as f64 / open.len().max(1) as f64);
    Ok((open.len(), per))
}
