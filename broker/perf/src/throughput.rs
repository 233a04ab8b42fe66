//! The throughput and latency modes: producers and consumers on connections of their own,
//! counting what was sent, confirmed and received, and how long each message took from the
//! producer to a consumer (a timestamp leads every body).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use bytes::{BufMut, BytesMut};
use tokio::sync::Semaphore;
use warren_codec::*;

use crate::client::{Reader, Uri, Writer, call, connect};
use crate::histogram::Histogram;

/// What to run.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// The broker.
    pub uri: Uri,
    /// Where producers connect, when not to `uri`.
    pub publish_uri: Option<Uri>,
    /// Publishing connections.
    pub producers: usize,
    /// Consuming connections.
    pub consumers: usize,
    /// Body size in octets (at least 8: the timestamp).
    pub size: usize,
    /// How long producers publish.
    pub duration: Duration,
    /// Publisher confirms with at most this many unconfirmed per producer.
    pub confirm: Option<usize>,
    /// delivery-mode 2 into a durable queue.
    pub persistent: bool,
    /// Consumers ack automatically; otherwise `prefetch` and `multi_ack` apply.
    pub autoack: bool,
    /// basic.qos prefetch for manual-ack consumers.
    pub prefetch: u16,
    /// Manual-ack consumers ack every this many deliveries (multiple=true).
    pub multi_ack: u32,
    /// Messages per second across all producers; unlimited when `None`.
    pub rate: Option<f64>,
    /// The queue (with an exchange: the prefix of each consumer's own queue).
    pub queue: String,
    /// Queue arguments.
    pub queue_args: FieldTable,
    /// Publish to this exchange (declared with `exchange_type`); each consumer then has a
    /// queue of its own bound with the routing key, so every message reaches every consumer.
    pub exchange: Option<String>,
    /// Type of `exchange`.
    pub exchange_type: String,
    /// Routing key for publishes through `exchange`.
    pub routing_key: String,
    /// Delete the queues at the end.
    pub cleanup: bool,
    /// Print a line per second to stderr.
    pub progress: bool,
}

/// What a run measured.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Messages published.
    pub sent: u64,
    /// Publishes confirmed with basic.ack.
    pub confirmed: u64,
    /// Publishes refused with basic.nack.
    pub nacked: u64,
    /// Deliveries received by consumers.
    pub received: u64,
    /// Seconds producers published.
    pub publish_seconds: f64,
    /// Seconds until the last delivery was received.
    pub consume_seconds: f64,
    /// Producer to consumer.
    pub latency: Histogram,
    /// Publish to confirm.
    pub confirm_latency: Histogram,
}

impl Summary {
    /// Published messages per second.
    pub fn publish_rate(&self) -> f64 {
        self.sent as f64 / self.publish_seconds.max(1e-9)
    }

    /// Received messages per second.
    pub fn consume_rate(&self) -> f64 {
        self.received as f64 / self.consume_seconds.max(1e-9)
    }

    /// One JSON object.
    pub fn json(&self, mode: &str) -> serde_json::Value {
        let us = |h: &Histogram, q: f64| h.quantile(q).map(|d| d.as_secs_f64() * 1e6);
        serde_json::json!({
            "mode": mode,
            "sent": self.sent,
            "confirmed": self.confirmed,
            "nacked": self.nacked,
            "received": self.received,
            "publish_rate": self.publish_rate().round(),
            "consume_rate": self.consume_rate().round(),
            "latency_p50_us": us(&self.latency, 0.5),
            "latency_p99_us": us(&self.latency, 0.99),
            "latency_p999_us": us(&self.latency, 0.999),
            "confirm_p50_us": us(&self.confirm_latency, 0.5),
            "confirm_p99_us": us(&self.confirm_latency, 0.99),
        })
    }

    /// A few human lines.
    pub fn text(&self) -> String {
        let ms = |h: &Histogram, q: f64| {
            h.quantile(q).map_or("-".into(), |d| format!("{:.3} ms", d.as_secs_f64() * 1e3))
        };
        format!(
            "sent {} ({:.0} msg/s), confirmed {}, nacked {}, received {} ({:.0} msg/s)\n\
             latency p50 {} p99 {} p99.9 {}; confirm p50 {} p99 {}",
            self.sent,
            self.publish_rate(),
            self.confirmed,
            self.nacked,
            self.received,
            self.consume_rate(),
            ms(&self.latency, 0.5),
            ms(&self.latency, 0.99),
            ms(&self.latency, 0.999),
            ms(&self.confirm_latency, 0.5),
            ms(&self.confirm_latency, 0.99),
        )
    }
}

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    confirmed: AtomicU64,
    nacked: AtomicU64,
    received: AtomicU64,
}

impl Scenario {
    /// The queue each consumer reads: the one queue, or (through an exchange) its own.
    fn queue_of(&self, consumer: usize) -> String {
        match self.exchange {
            Some(_) => format!("{}-{consumer}", self.queue),
            None => self.queue.clone(),
        }
    }

    /// How many queues every message reaches.
    fn fanout(&self) -> u64 {
        if self.exchange.is_some() { self.consumers.max(1) as u64 } else { 1 }
    }

    /// Declares the exchange, the queues and the bindings.
    async fn declare(&self) -> anyhow::Result<()> {
        let (mut r, mut w) = connect(&self.uri).await?;
        if let Some(x) = &self.exchange {
            let d = ExchangeDeclare {
                exchange: x.clone(),
                kind: self.exchange_type.clone(),
                durable: self.persistent,
                ..Default::default()
            };
            expect(call(&mut r, &mut w, d).await?, "exchange.declare")?;
        }
        let queues: Vec<String> = match self.exchange {
            Some(_) => (0..self.consumers).map(|i| self.queue_of(i)).collect(),
            None => vec![self.queue.clone()],
        };
        for q in &queues {
            let d = QueueDeclare {
                queue: q.clone(),
                durable: self.persistent,
                arguments: self.queue_args.clone(),
                ..Default::default()
            };
            expect(call(&mut r, &mut w, d).await?, "queue.declare")?;
            if let Some(x) = &self.exchange {
                let b = QueueBind {
                    queue: q.clone(),
                    exchange: x.clone(),
                    routing_key: self.routing_key.clone(),
                    ..Default::default()
                };
                expect(call(&mut r, &mut w, b).await?, "queue.bind")?;
            }
        }
        w.close().await
    }

    async fn delete_queues(&self) -> anyhow::Result<()> {
        let (mut r, mut w) = connect(&self.uri).await?;
        let n = if self.exchange.is_some() { self.consumers } else { 1 };
        for i in 0..n {
            call(&mut r, &mut w, QueueDelete { queue: self.queue_of(i), ..Default::default() }).await?;
        }
        w.close().await
    }
}

fn expect(m: Method, what: &str) -> anyhow::Result<()> {
    match m {
        Method::ExchangeDeclareOk(_)
        | Method::QueueDeclareOk(_)
        | Method::QueueBindOk(_)
        | Method::BasicQosOk(_)
        | Method::BasicConsumeOk(_)
        | Method::ConfirmSelectOk(_) => Ok(()),
        other => bail!("{what}: unexpected {}", other.name()),
    }
}

/// Runs a scenario to the end and says what it measured.
pub async fn run(s: &Scenario) -> anyhow::Result<Summary> {
    if s.size < 8 {
        bail!("--size must be at least 8 (the timestamp)");
    }
    s.declare().await?;
    let epoch = Instant::now();
    let counters = Arc::new(Counters::default());
    let stop = Arc::new(AtomicBool::new(false));
    let latency = Arc::new(Mutex::new(Histogram::default()));
    let confirm_latency = Arc::new(Mutex::new(Histogram::default()));
    let mut consumers = Vec::new();
    for i in 0..s.consumers {
        let (mut r, mut w) = connect(&s.uri).await?;
        if !s.autoack {
            let qos = BasicQos { prefetch_count: s.prefetch, ..Default::default() };
            expect(call(&mut r, &mut w, qos).await?, "basic.qos")?;
        }
        let c = BasicConsume { queue: s.queue_of(i), no_ack: s.autoack, ..Default::default() };
        expect(call(&mut r, &mut w, c).await?, "basic.consume")?;
        let (counters, latency, s2) = (counters.clone(), latency.clone(), s.clone());
        consumers.push(tokio::spawn(async move { consume(r, w, &s2, epoch, &counters, &latency).await }));
    }
    let started = Instant::now();
    let mut producers = Vec::new();
    for _ in 0..s.producers {
        let (counters, stop, confirm_latency, s2) =
            (counters.clone(), stop.clone(), confirm_latency.clone(), s.clone());
        producers
            .push(tokio::spawn(async move { produce(&s2, epoch, &counters, &stop, &confirm_latency).await }));
    }
    let progress = s.progress.then(|| tokio::spawn(report_progress(counters.clone())));
    tokio::time::sleep(s.duration).await;
    stop.store(true, Ordering::Release);
    for p in producers {
        p.await??;
    }
    let publish_seconds = started.elapsed().as_secs_f64();
    // Drain: until every consumer has what was sent, or nothing arrives for two seconds.
    let expected = counters.sent.load(Ordering::Acquire) * s.fanout();
    let mut last = (counters.received.load(Ordering::Acquire), Instant::now());
    let mut consume_seconds = publish_seconds;
    loop {
        let now = counters.received.load(Ordering::Acquire);
        if now != last.0 {
            last = (now, Instant::now());
            consume_seconds = started.elapsed().as_secs_f64();
        }
        if s.consumers == 0 || now >= expected || last.1.elapsed() > Duration::from_secs(2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for c in &consumers {
        c.abort();
    }
    for c in consumers {
        if let Ok(Err(e)) = c.await {
            return Err(e);
        }
    }
    if let Some(p) = progress {
        p.abort();
    }
    if s.cleanup {
        s.delete_queues().await?;
    }
    let take = |h: &Mutex<Histogram>| h.lock().map(|h| h.clone()).unwrap_or_default();
    Ok(Summary {
        sent: counters.sent.load(Ordering::Acquire),
        confirmed: counters.confirmed.load(Ordering::Acquire),
        nacked: counters.nacked.load(Ordering::Acquire),
        received: counters.received.load(Ordering::Acquire),
        publish_seconds,
        consume_seconds,
        latency: take(&latency),
        confirm_latency: take(&confirm_latency),
    })
}

async fn report_progress(c: Arc<Counters>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let mut last = (0, 0, 0);
    for second in 1.. {
        tick.tick().await;
        let now = (
            c.sent.load(Ordering::Relaxed),
            c.confirmed.load(Ordering::Relaxed),
            c.received.load(Ordering::Relaxed),
        );
        eprintln!(
            "{second:>4}s  sent {:>9}/s  confirmed {:>9}/s  received {:>9}/s",
            now.0 - last.0,
            now.1 - last.1,
            now.2 - last.2
        );
        last = now;
    }
}

/// Unconfirmed publishes of one producer: (tag, when sent), in tag order.
type Outstanding = Arc<Mutex<VecDeque<(u64, Instant)>>>;

async fn produce(
    s: &Scenario,
    epoch: Instant,
    counters: &Arc<Counters>,
    stop: &AtomicBool,
    confirm_latency: &Arc<Mutex<Histogram>>,
) -> anyhow::Result<()> {
    let (mut r, mut w) = connect(s.publish_uri.as_ref().unwrap_or(&s.uri)).await?;
    let window = s.confirm.map(|n| Arc::new(Semaphore::new(n)));
    let outstanding: Outstanding = Arc::default();
    let confirms = match &window {
        Some(window) => {
            expect(call(&mut r, &mut w, ConfirmSelect { no_wait: false }).await?, "confirm.select")?;
            let confirms = Confirms {
                window: window.clone(),
                outstanding: outstanding.clone(),
                counters: counters.clone(),
                latency: confirm_latency.clone(),
            };
            Some(tokio::spawn(async move { confirms.read(r).await }))
        }
        None => None,
    };
    let (exchange, routing_key) = match &s.exchange {
        Some(x) => (x.clone(), s.routing_key.clone()),
        None => (String::new(), s.queue.clone()),
    };
    let properties =
        BasicProperties { delivery_mode: Some(if s.persistent { 2 } else { 1 }), ..Default::default() };
    let interval = s.rate.map(|r| Duration::from_secs_f64(s.producers as f64 / r.max(1e-3)));
    let mut next = Instant::now();
    let mut tag = 0u64;
    let mut body = BytesMut::new();
    while !stop.load(Ordering::Acquire) {
        if let Some(window) = &window {
            match window.try_acquire() {
                Ok(p) => p.forget(),
                Err(_) => {
                    w.flush().await?;
                    let acquired = tokio::time::timeout(Duration::from_millis(100), window.acquire()).await;
                    match acquired {
                        Ok(Ok(p)) => p.forget(),
                        Ok(Err(_)) => bail!("the confirm reader stopped"),
                        Err(_) => continue,
                    }
                }
            }
        }
        if let Some(interval) = interval {
            if Instant::now() < next {
                w.flush().await?;
                tokio::time::sleep_until(next.into()).await;
            }
            next += interval;
        }
        let now = Instant::now();
        body.reserve(s.size);
        body.put_u64(now.duration_since(epoch).as_nanos() as u64);
        body.put_bytes(0, s.size - 8);
        let m = BasicPublish {
            exchange: exchange.clone(),
            routing_key: routing_key.clone(),
            ..Default::default()
        };
        w.publish(m, &properties, &body.split().freeze());
        tag += 1;
        if window.is_some()
            && let Ok(mut o) = outstanding.lock()
        {
            o.push_back((tag, now));
        }
        counters.sent.fetch_add(1, Ordering::Relaxed);
        if w.pending() >= 1 << 16 || interval.is_some() {
            w.flush().await?;
        }
    }
    w.flush().await?;
    if let Some(c) = confirms {
        // The last confirms, for a while: a broker that never confirms must not hang the run.
        let deadline = Instant::now() + Duration::from_secs(10);
        while outstanding.lock().is_ok_and(|o| !o.is_empty()) && Instant::now() < deadline && !c.is_finished()
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        c.abort();
        if let Ok(Err(e)) = c.await {
            return Err(e);
        }
    }
    w.close().await
}

/// A producer's confirm reader: settles outstanding publishes and frees window slots.
struct Confirms {
    window: Arc<Semaphore>,
    outstanding: Outstanding,
    counters: Arc<Counters>,
    latency: Arc<Mutex<Histogram>>,
}

impl Confirms {
    async fn read(self, mut r: Reader) -> anyhow::Result<()> {
        loop {
            let (tag, multiple, ack) = match r.method().await? {
                Method::BasicAck(a) => (a.delivery_tag, a.multiple, true),
                Method::BasicNack(n) => (n.delivery_tag, n.multiple, false),
                // basic.return and the like: the confirm follows.
                _ => continue,
            };
            let now = Instant::now();
            let mut settled = Vec::new();
            if let Ok(mut o) = self.outstanding.lock() {
                if multiple {
                    while o.front().is_some_and(|(t, _)| *t <= tag) {
                        settled.extend(o.pop_front().map(|(_, at)| at));
                    }
                } else if let Some(i) = o.iter().position(|(t, _)| *t == tag) {
                    settled.extend(o.remove(i).map(|(_, at)| at));
                }
            }
            let n = settled.len() as u64;
            if ack {
                self.counters.confirmed.fetch_add(n, Ordering::Relaxed);
                if let Ok(mut h) = self.latency.lock() {
                    for at in settled {
                        h.record(now.saturating_duration_since(at));
                    }
                }
            } else {
                self.counters.nacked.fetch_add(n, Ordering::Relaxed);
            }
            self.window.add_permits(n as usize);
        }
    }
}

async fn consume(
    mut r: Reader,
    mut w: Writer,
    s: &Scenario,
    epoch: Instant,
    counters: &Counters,
    latency: &Mutex<Histogram>,
) -> anyhow::Result<()> {
    let mut tag = 0;
    let mut remaining = 0u64;
    let mut stamp: Option<u64> = None;
    let mut unacked = 0u32;
    loop {
        match r.frame().await? {
            Frame::Method { method: Method::BasicDeliver(d), .. } => {
                tag = d.delivery_tag;
                stamp = None;
            }
            Frame::Method { method: Method::ConnectionClose(c), .. } => {
                bail!("connection closed by the broker: {} {}", c.reply_code, c.reply_text)
            }
            Frame::Method { method: Method::ChannelClose(c), .. } => {
                bail!("channel closed by the broker: {} {}", c.reply_code, c.reply_text)
            }
            Frame::Method { .. } | Frame::Heartbeat { .. } => continue,
            Frame::Header { header, .. } => remaining = header.body_size,
            Frame::Body { payload, .. } => {
                if stamp.is_none() && payload.len() >= 8 {
                    stamp = payload.get(..8).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes);
                }
                remaining = remaining.saturating_sub(payload.len() as u64);
                if remaining > 0 {
                    continue;
                }
                if let Some(ns) = stamp {
                    let sent = epoch + Duration::from_nanos(ns);
                    if let Ok(mut h) = latency.lock() {
                        h.record(Instant::now().saturating_duration_since(sent));
                    }
                }
                counters.received.fetch_add(1, Ordering::Relaxed);
                if !s.autoack {
                    unacked += 1;
                    if unacked >= s.multi_ack.max(1) {
                        w.method(1, BasicAck { delivery_tag: tag, multiple: true });
                        w.flush().await?;
                        unacked = 0;
                    }
                }
            }
        }
    }
}
