//! Durable storage figures: `cargo bench -p warren --bench storage`.
//!
//! 1. In process, no network: 1 000 000 persistent 16-byte messages published into a durable
//!    queue through the broker model and the file store, synced in groups as the syncer does;
//!    then start-up (open + recover + restore into a broker) with all of them queued, and the
//!    memory each queued message costs (heap, and file-backed pages of the mapped log).
//! 2. Over AMQP with lapin, the same client against Warren (release binary, fsync before
//!    confirm) and, when it is installed, RabbitMQ (Debian's `rabbitmq-server`, which confirms
//!    without fsync): persistent 16-byte messages into a durable queue, confirms with a window
//!    of 256, a consumer with prefetch 1000 acking every 100 with multiple.
#![allow(missing_docs)]

use std::collections::VecDeque;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use warren_codec::{BasicProperties as Props, BasicPublish, QueueDeclare};
use warren_core::broker::ConfirmPolicy;
use warren_core::broker::ConnectionInfo;
use warren_core::{Broker, BrokerConfig};
use warren_storage::{FileStore, Options};

const IN_PROCESS: usize = 1_000_000;
const OVER_AMQP: usize = 50_000;
const WINDOW: usize = 256;
const ROUNDS: usize = 3;
const RECOVERY: usize = 200_000;

fn main() {
    let dir = tempfile::tempdir().expect("dir");
    // STORAGE_BENCH=amqp runs the AMQP part only.
    if std::env::var("STORAGE_BENCH").as_deref() != Ok("amqp") {
        in_process(dir.path());
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    rt.block_on(over_amqp());
}

/// (RssAnon, RssFile) of this process in octets.
fn rss() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("RssAnon:"), field("RssFile:"))
}

fn in_process(dir: &Path) {
    println!("== in process: {IN_PROCESS} persistent 16-byte messages, one durable queue");
    let store_dir = dir.join("store");
    let (store, mut syncer) = FileStore::open(&store_dir, Options::default()).expect("open");
    let mut b = Broker::new(BrokerConfig::default(), Instant::now());
    b.attach_storage(Box::new(store), ConfirmPolicy::AfterSync).expect("attach");
    let conn = b.connect(ConnectionInfo::default());
    b.open_channel(conn, 1);
    let declare = QueueDeclare { queue: "q".into(), durable: true, ..Default::default() };
    b.handle_method(conn, 1, declare.into()).expect("declare");
    let props = Props { delivery_mode: Some(2), ..Default::default() };
    let body = Bytes::from_static(&[7; 16]);
    let mut out = Vec::new();
    let (mut fsyncs, mut rounds) = (0, 0);
    let started = Instant::now();
    for i in 0..IN_PROCESS {
        let m = BasicPublish { routing_key: "q".into(), ..Default::default() };
        b.publish(conn, 1, m, props.clone(), body.clone()).expect("publish");
        // A group of 1 000, as the syncer gathers under load.
        if i % 1000 == 999 {
            let r = syncer.sync(true).expect("sync");
            fsyncs += r.fsyncs;
            rounds += 1;
            let _ = b.take_outbound(conn, &mut out);
            out.clear();
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "publish through model + store, fsync per 1000: {:>9.0} msg/s ({fsyncs} fsyncs in {rounds} syncs, {:.0} per million)",
        IN_PROCESS as f64 / secs,
        fsyncs as f64 * 1e6 / IN_PROCESS as f64
    );
    drop(b);
    let disk: u64 = std::fs::read_dir(store_dir.join("segments"))
        .map(|d| d.filter_map(|e| e.ok()?.metadata().ok()).map(|m| m.len()).sum())
        .unwrap_or(0);
    println!(
        "log on disk: {:.1} MiB ({:.0} octets per message)",
        disk as f64 / 1048576.0,
        disk as f64 / IN_PROCESS as f64
    );

    let (anon0, file0) = rss();
    let started = Instant::now();
    let (store, mut syncer) = FileStore::open(&store_dir, Options::default()).expect("reopen");
    let opened = started.elapsed();
    let mut b = Broker::new(BrokerConfig::default(), Instant::now());
    let report = b.attach_storage(Box::new(store), ConfirmPolicy::AfterSync).expect("recover");
    let total = started.elapsed();
    let (anon1, file1) = rss();
    assert_eq!(report.messages, IN_PROCESS);
    println!(
        "start-up with {IN_PROCESS} queued: {:.0} ms (replay of the log {:.0} ms, restore into the broker {:.0} ms)",
        total.as_secs_f64() * 1e3,
        opened.as_secs_f64() * 1e3,
        (total - opened).as_secs_f64() * 1e3
    );
    println!(
        "memory per queued message: {:.0} octets of heap, {:.0} octets of mapped log pages (page cache, evictable)",
        anon1.saturating_sub(anon0) as f64 / IN_PROCESS as f64,
        file1.saturating_sub(file0) as f64 / IN_PROCESS as f64
    );
    // A clean stop writes the queue index; the next start loads it instead of the log.
    let started = Instant::now();
    let indexed = b.checkpoint_storage().expect("checkpoint");
    syncer.sync(true).expect("sync");
    let written = started.elapsed();
    drop(b);
    FileStore::mark_clean(&store_dir).expect("clean");
    let started = Instant::now();
    let (store, _syncer) = FileStore::open(&store_dir, Options::default()).expect("reopen");
    let from_index = store.report().from_index;
    let mut b = Broker::new(BrokerConfig::default(), Instant::now());
    let report = b.attach_storage(Box::new(store), ConfirmPolicy::AfterSync).expect("recover");
    assert!(from_index && report.messages == IN_PROCESS);
    println!(
        "clean stop: queue index of {indexed} entries written in {:.0} ms; start-up from it {:.0} ms",
        written.as_secs_f64() * 1e3,
        started.elapsed().as_secs_f64() * 1e3
    );
    drop(b);
}

/// A broker to run the AMQP scenario against.
struct Target {
    name: &'static str,
    addr: SocketAddr,
    metrics: Option<SocketAddr>,
    /// Warren's process and how to start it again; RabbitMQ runs as a service.
    child: Option<(Child, Vec<String>)>,
}

impl Target {
    /// The broker's process id.
    fn pid(&self) -> Option<u32> {
        match &self.child {
            Some((c, _)) => Some(c.id()),
            None => {
                let out = Command::new("pgrep").args(["-f", "beam.smp"]).output().ok()?;
                String::from_utf8_lossy(&out.stdout).lines().next()?.trim().parse().ok()
            }
        }
    }

    /// Stops the broker cleanly and starts it again (RabbitMQ: its application, in the running
    /// VM); returns when it accepts connections.
    fn restart(&mut self) {
        match self.child.as_mut() {
            Some((c, args)) => {
                let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
                let _ = c.wait();
                *c = Command::new(env!("CARGO_BIN_EXE_warren"))
                    .args(args.iter())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("restart warren");
            }
            None => {
                let _ = Command::new("rabbitmqctl").arg("stop_app").stdout(Stdio::null()).status();
                let _ = Command::new("rabbitmqctl").arg("start_app").stdout(Stdio::null()).status();
            }
        }
        assert!(wait_for(self.addr, 120), "{} did not come back", self.name);
    }
}

/// Anonymous resident memory (heap) of a process, in octets.
fn rss_anon(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("RssAnon:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some((c, _)) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port").port()
}

fn wait_for(addr: SocketAddr, secs: u64) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if TcpStream::connect(addr).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Warren with `fsync` as its `[storage] fsync` mode.
fn warren(dir: &Path, name: &'static str, fsync: &str) -> Target {
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let dir = dir.join(fsync);
    std::fs::create_dir_all(&dir).expect("dir");
    let config = dir.join("warren.toml");
    std::fs::write(&config, format!("[storage]\nfsync = \"{fsync}\"\n")).expect("config");
    let args: Vec<String> = [
        "--config".to_string(),
        config.display().to_string(),
        "--amqp-listen".to_string(),
        addr.to_string(),
        "--metrics-listen".to_string(),
        metrics.to_string(),
        "--management-listen".to_string(),
        "127.0.0.1:0".to_string(),
        "--quic-listen".to_string(),
        "127.0.0.1:0".to_string(),
        "--data-dir".to_string(),
        dir.display().to_string(),
    ]
    .into();
    let child = Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(args.iter())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start warren");
    assert!(wait_for(addr, 30), "warren did not start");
    Target { name, addr, metrics: Some(metrics), child: Some((child, args)) }
}

/// RabbitMQ on 5672: already running, or started here when installed.
fn rabbitmq() -> Option<Target> {
    let addr = SocketAddr::from(([127, 0, 0, 1], 5672));
    if TcpStream::connect(addr).is_ok() {
        return Some(Target { name: "RabbitMQ", addr, metrics: None, child: None });
    }
    let started = Command::new("rabbitmq-server").arg("-detached").status().ok()?.success();
    (started && wait_for(addr, 90)).then_some(Target { name: "RabbitMQ", addr, metrics: None, child: None })
}

async fn fsyncs(t: &Target) -> Option<f64> {
    let addr = t.metrics?;
    let text = reqwest_lite(addr).await?;
    text.lines()
        .find(|l| l.starts_with("warren_storage_fsyncs_total "))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// GET /metrics with a plain HTTP/1.0 request.
async fn reqwest_lite(addr: SocketAddr) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").await.ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).await.ok()?;
    Some(out)
}

struct Figures {
    throughput: f64,
    p50: Duration,
    p99: Duration,
    fsyncs_per_million: Option<f64>,
}

async fn scenario(t: &Target) -> Figures {
    let uri = format!("amqp://guest:guest@{}/%2f", t.addr);
    let pconn = Connection::connect(&uri, ConnectionProperties::default()).await.expect("connect");
    let cconn = Connection::connect(&uri, ConnectionProperties::default()).await.expect("connect");
    let (pch, cch) = (pconn.create_channel().await.expect("ch"), cconn.create_channel().await.expect("ch"));
    let queue = format!("bench-{}", std::process::id());
    let durable = QueueDeclareOptions { durable: true, ..Default::default() };
    pch.queue_declare(queue.as_str().into(), durable, FieldTable::default()).await.expect("declare");
    pch.confirm_select(ConfirmSelectOptions::default()).await.expect("confirms");
    cch.basic_qos(1000, BasicQosOptions::default()).await.expect("qos");
    let mut consumer = cch
        .basic_consume(
            queue.as_str().into(),
            "c".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let before = fsyncs(t).await;
    let started = Instant::now();
    let consume = tokio::spawn(async move {
        for n in 1..=OVER_AMQP {
            let d = consumer.next().await.expect("delivery").expect("ok");
            if n % 100 == 0 || n == OVER_AMQP {
                d.ack(BasicAckOptions { multiple: true }).await.expect("ack");
            }
        }
    });
    let latencies = publish_window(&pch, &queue, OVER_AMQP).await;
    consume.await.expect("consumer");
    let secs = started.elapsed().as_secs_f64();
    let after = fsyncs(t).await;
    let _ = pch.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await;
    let mut latencies = latencies;
    latencies.sort();
    Figures {
        throughput: OVER_AMQP as f64 / secs,
        p50: latencies[latencies.len() / 2],
        p99: latencies[latencies.len() * 99 / 100],
        fsyncs_per_million: before.zip(after).map(|(a, b)| (b - a) * 1e6 / OVER_AMQP as f64),
    }
}

/// Publishes `n` persistent 16-byte messages with at most WINDOW unconfirmed; returns each
/// one's confirm latency.
async fn publish_window(pch: &lapin::Channel, queue: &str, n: usize) -> Vec<Duration> {
    let props = BasicProperties::default().with_delivery_mode(2);
    let mut window: VecDeque<(Instant, lapin::PublisherConfirm)> = VecDeque::with_capacity(WINDOW);
    let mut latencies = Vec::with_capacity(n);
    for i in 0..n {
        if window.len() == WINDOW {
            let (at, c) = window.pop_front().expect("window");
            assert!(c.await.expect("confirm").is_ack());
            latencies.push(at.elapsed());
        }
        let body = [(i % 251) as u8; 16];
        let c = pch
            .basic_publish("".into(), queue.into(), BasicPublishOptions::default(), &body, props.clone())
            .await
            .expect("publish");
        window.push_back((Instant::now(), c));
    }
    for (at, c) in window {
        assert!(c.await.expect("confirm").is_ack());
        latencies.push(at.elapsed());
    }
    latencies
}

/// Fills a durable queue with RECOVERY persistent messages and reports the broker's heap per
/// queued message, then restarts the broker and times until the queue is back, full.
async fn recovery(t: &mut Target) -> (f64, Duration) {
    let uri = format!("amqp://guest:guest@{}/%2f", t.addr);
    let queue = "bench-recovery";
    {
        let conn = Connection::connect(&uri, ConnectionProperties::default()).await.expect("connect");
        let ch = conn.create_channel().await.expect("ch");
        let durable = QueueDeclareOptions { durable: true, ..Default::default() };
        ch.queue_declare(queue.into(), durable, FieldTable::default()).await.expect("declare");
        ch.queue_purge(queue.into(), QueuePurgeOptions::default()).await.expect("purge");
        ch.confirm_select(ConfirmSelectOptions::default()).await.expect("confirms");
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = t.pid().map_or(0, rss_anon);
        publish_window(&ch, queue, RECOVERY).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let after = t.pid().map_or(0, rss_anon);
        let _ = conn.close(200, "done".into()).await;
        let per_message = after.saturating_sub(before) as f64 / RECOVERY as f64;
        let started = Instant::now();
        t.restart();
        loop {
            let back = async {
                let conn = Connection::connect(&uri, ConnectionProperties::default()).await.ok()?;
                let ch = conn.create_channel().await.ok()?;
                let passive = QueueDeclareOptions { passive: true, ..Default::default() };
                let q = ch.queue_declare(queue.into(), passive, FieldTable::default()).await.ok()?;
                let _ = conn.close(200, "done".into()).await;
                Some(q.message_count() as usize)
            };
            if back.await == Some(RECOVERY) {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(300), "{} did not recover", t.name);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let took = started.elapsed();
        let conn = Connection::connect(&uri, ConnectionProperties::default()).await.expect("connect");
        let ch = conn.create_channel().await.expect("ch");
        let _ = ch.queue_delete(queue.into(), QueueDeleteOptions::default()).await;
        (per_message, took)
    }
}

async fn over_amqp() {
    println!(
        "\n== over AMQP (lapin): {OVER_AMQP} persistent 16-byte messages, durable queue, confirm window {WINDOW}, prefetch 1000, multi-ack 100"
    );
    let dir = tempfile::tempdir().expect("dir");
    let mut targets = vec![
        warren(dir.path(), "Warren", "before-confirm"),
        warren(dir.path(), "Warren (fsync every 200 ms)", "interval"),
    ];
    match rabbitmq() {
        Some(r) => targets.push(r),
        None => println!("RabbitMQ: not installed or did not start; Warren only"),
    }
    // A warm-up run each, then ROUNDS measured runs alternating between brokers (so drift in
    // the machine hits all alike); medians are printed.
    for t in &targets {
        let _ = scenario(t).await;
    }
    let mut runs: Vec<Vec<Figures>> = targets.iter().map(|_| Vec::new()).collect();
    for _ in 0..ROUNDS {
        for (t, r) in targets.iter().zip(runs.iter_mut()) {
            r.push(scenario(t).await);
        }
    }
    println!(
        "{:<28} {:>10} {:>14} {:>14} {:>16}",
        "broker (median of 3 runs)", "msg/s", "confirm p50", "confirm p99", "fsyncs/million"
    );
    let median = |mut v: Vec<f64>| -> f64 {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let mut results = Vec::new();
    for (t, r) in targets.iter().zip(&runs) {
        let throughput = median(r.iter().map(|f| f.throughput).collect());
        let p50 = median(r.iter().map(|f| f.p50.as_secs_f64() * 1e3).collect());
        let p99 = median(r.iter().map(|f| f.p99.as_secs_f64() * 1e3).collect());
        let fsyncs = r.iter().map(|f| f.fsyncs_per_million).collect::<Option<Vec<f64>>>();
        let fs = fsyncs.map_or("not exposed".to_string(), |v| format!("{:.0}", median(v)));
        println!("{:<28} {:>10.0} {:>12.2}ms {:>12.2}ms {:>16}", t.name, throughput, p50, p99, fs);
        results.push(throughput);
    }
    println!(
        "\n{RECOVERY} persistent 16-byte messages queued: heap per queued message, and a clean restart until the queue is back"
    );
    println!("{:<28} {:>16} {:>12}", "broker", "heap/message", "restart");
    for t in targets.iter_mut().filter(|t| t.name != "Warren (fsync every 200 ms)") {
        let (per_message, took) = recovery(t).await;
        println!("{:<28} {:>14.0} B {:>10.0}ms", t.name, per_message, took.as_secs_f64() * 1e3);
    }
    if let [w, _, r] = results[..] {
        println!(
            "Warren/RabbitMQ throughput: {:.2}x (Warren fsyncs before every confirm; RabbitMQ does not)",
            w / r
        );
    }
}
