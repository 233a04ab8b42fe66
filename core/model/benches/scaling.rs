//! How the model scales over cores: 1, 2 and 4 independent publisher → queue → consumer
//! pairs, each on a thread of its own, driving the brokers the way the server's connection
//! tasks do (decode and encode outside the lock, the broker's work under it). Two layouts:
//! every pair in one vhost (one broker, one lock), and each pair in a vhost of its own (a
//! broker and a lock each, one census between them, as the server runs them). Prints the
//! messages per second of each run and its ratio to one pair.
//!
//! `cargo bench -p warren-core --bench scaling`. Pairs that share a lock take turns; pairs in
//! different vhosts do not (issue #18 asks for at least 1.7 with 2 pairs on an idle 2-core
//! machine).
#![allow(missing_docs, clippy::disallowed_methods)] // a benchmark reads the clock by design

use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use warren_codec::*;
use warren_core::broker::Census;
use warren_core::{Broker, BrokerConfig, Connection, ConnectionConfig};

/// Messages per read, about what one 128 KiB socket read carries at 16 octets.
const BATCH: usize = 2000;
/// How long each run lasts.
const RUN: Duration = Duration::from_secs(2);
/// Runs per configuration, interleaved; the median is printed (single runs vary by a
/// third on a shared machine).
const ROUNDS: usize = 5;

fn open(broker: &Mutex<Broker>, vhost: &str, then: impl FnOnce(&mut BytesMut)) -> Connection {
    let mut bytes = warren_core::connection::guest_handshake_to(vhost, 131_072);
    then(&mut bytes);
    let mut c = Connection::new(ConnectionConfig::default(), true, Instant::now());
    c.read_buf().extend_from_slice(&bytes);
    c.handle_input(Instant::now(), &mut broker.lock().expect("lock"));
    let _ = c.take_output();
    assert!(c.id().is_some(), "handshake failed");
    c
}

fn publishes(queue: &str) -> Bytes {
    let mut out = BytesMut::new();
    let body = Bytes::from_static(&[7u8; 16]);
    for _ in 0..BATCH {
        let publish = BasicPublish { routing_key: queue.into(), ..Default::default() };
        encode_content(&mut out, 1, publish, &BasicProperties::default(), &body, 131_072);
    }
    out.freeze()
}

/// Messages per second through `pairs` pairs at once, and the share of each pair's time
/// spent holding the lock.
fn run(pairs: usize, layout: Layout) -> (f64, f64) {
    let census = Arc::new(Census::default());
    let broker = |vhost: &str| {
        let config = BrokerConfig { vhost: vhost.into(), census: census.clone(), ..Default::default() };
        Arc::new(Mutex::new(Broker::new(config, Instant::now())))
    };
    let shared = broker("/");
    let start = Arc::new(Barrier::new(pairs));
    let threads: Vec<_> = (0..pairs)
        .map(|i| {
            let (vhost, broker) = match layout {
                Layout::OneVhost => ("/".to_string(), shared.clone()),
                Layout::VhostEach => (format!("v{i}"), broker(&format!("v{i}"))),
            };
            let start = start.clone();
            std::thread::spawn(move || {
                let queue = format!("q{i}");
                let mut publisher = open(&broker, &vhost, |_| {});
                let mut consumer = open(&broker, &vhost, |out| {
                    Frame::method(1, QueueDeclare { queue: queue.clone(), ..Default::default() }).encode(out);
                    let consume = BasicConsume { queue: queue.clone(), no_ack: true, ..Default::default() };
                    Frame::method(1, consume).encode(out);
                });
                let batch = publishes(&queue);
                start.wait();
                let began = Instant::now();
                let mut sent = 0u64;
                let mut held = Duration::ZERO;
                while began.elapsed() < RUN {
                    publisher.read_buf().extend_from_slice(&batch);
                    publisher.decode_input();
                    {
                        let mut b = broker.lock().expect("lock");
                        let now = Instant::now();
                        publisher.handle_input(now, &mut b);
                        consumer.pull_outbound(now, &mut b);
                        held += now.elapsed();
                    }
                    let out = consumer.take_output();
                    assert!(out.len() > BATCH * 16, "deliveries missing");
                    sent += BATCH as u64;
                }
                let took = began.elapsed().as_secs_f64();
                (sent as f64 / took, held.as_secs_f64() / took)
            })
        })
        .collect();
    let results: Vec<(f64, f64)> = threads.into_iter().map(|t| t.join().expect("thread")).collect();
    let rate = results.iter().map(|r| r.0).sum();
    let held = results.iter().map(|r| r.1).sum::<f64>() / pairs as f64;
    (rate, held)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Where the pairs' queues are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// All in `/`: one broker, one lock.
    OneVhost,
    /// Each in a vhost of its own: a broker and a lock each.
    VhostEach,
}

fn main() {
    // `cargo bench` passes flags meant for criterion; this bench takes none.
    let configs = [1usize, 2, 4];
    let layouts = [Layout::OneVhost, Layout::VhostEach];
    let mut rates = vec![vec![Vec::new(); configs.len()]; layouts.len()];
    let mut held = Vec::new();
    for _ in 0..ROUNDS {
        for (l, layout) in layouts.iter().enumerate() {
            for (i, pairs) in configs.iter().enumerate() {
                let (rate, h) = run(*pairs, *layout);
                rates[l][i].push(rate);
                if *pairs == 1 && *layout == Layout::OneVhost {
                    held.push(h);
                }
            }
        }
    }
    let held = median(held);
    println!("independent pairs, 16 B auto-ack, {} cores, median of {ROUNDS}", num_cpus());
    println!(
        "  one pair holds its broker's lock {:.0}% of its time: one lock caps scaling at {:.1}x",
        held * 100.0,
        1.0 / held
    );
    for (layout, rates) in layouts.iter().zip(rates) {
        let title = match layout {
            Layout::OneVhost => "all pairs in one vhost (one broker, one lock)",
            Layout::VhostEach => "each pair in a vhost of its own (a broker and a lock each)",
        };
        println!("  {title}:");
        let one = median(rates[0].clone());
        for (pairs, r) in configs.iter().zip(rates) {
            let rate = median(r);
            println!("    {pairs} pair(s): {rate:>10.0} msg/s  ({:.2}x one pair)", rate / one);
        }
    }
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}
