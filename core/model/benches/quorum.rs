//! The quorum queue's machine alone, as every replica runs it: a message enqueued, delivered
//! and settled (three commands), a 1 000-deep queue, and what an idle queue costs. The log,
//! the network and fsync come on top: `cargo bench -p warren-core --bench quorum`.
#![allow(missing_docs, clippy::disallowed_methods)] // a benchmark reads the clock by design

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use warren_core::queue::quorum::{Command, Config, ConsumerId, Effect, Header, Meta, Owner, QuorumQueue};

struct Log {
    q: QuorumQueue,
    index: u64,
}

impl Log {
    fn apply(&mut self, c: Command) -> Vec<Effect> {
        self.index += 1;
        self.q.apply(Meta { index: self.index, time_ms: self.index }, c).1
    }
}

fn consumer() -> ConsumerId {
    ConsumerId { owner: Owner { node: 1, conn: 1 }, channel: 1, tag: "c".into() }
}

fn enqueue() -> Command {
    Command::Enqueue {
        publish: None,
        header: Header { size: 16, priority: 0, ttl_ms: None, delivery_count: 0, delay_ms: None },
    }
}

fn machine(c: &mut Criterion) {
    let mut group = c.benchmark_group("quorum machine");
    group.throughput(Throughput::Elements(1));
    group.bench_function("enqueue, deliver, settle (consumer with prefetch 100, 1 000 ready)", |b| {
        let mut log = Log { q: QuorumQueue::new(Config::default(), 0), index: 0 };
        for _ in 0..1_000 {
            log.apply(enqueue());
        }
        let fx = log.apply(Command::Checkout { consumer: consumer(), prefetch: 100, priority: 0 });
        let mut unacked: std::collections::VecDeque<u64> = fx
            .iter()
            .flat_map(|e| match e {
                Effect::Deliver { deliveries, .. } => deliveries.iter().map(|d| d.id).collect(),
                _ => Vec::new(),
            })
            .collect();
        b.iter(|| {
            log.apply(enqueue());
            let oldest = unacked.pop_front().unwrap_or(0);
            let fx = log.apply(Command::Settle { consumer: consumer(), ids: vec![oldest] });
            for e in &fx {
                if let Effect::Deliver { deliveries, .. } = e {
                    unacked.extend(deliveries.iter().map(|d| d.id));
                }
            }
            black_box(fx);
        })
    });
    group.bench_function("enqueue, deliver, settle with 100 consumers (prefetch 10)", |b| {
        let mut log = Log { q: QuorumQueue::new(Config::default(), 0), index: 0 };
        let ids: Vec<ConsumerId> = (0..100)
            .map(|i| ConsumerId { owner: Owner { node: 1, conn: i }, channel: 1, tag: format!("c{i}") })
            .collect();
        let mut unacked: std::collections::VecDeque<(ConsumerId, u64)> = std::collections::VecDeque::new();
        for id in &ids {
            log.apply(Command::Checkout { consumer: id.clone(), prefetch: 10, priority: 0 });
        }
        for _ in 0..2_000 {
            for e in log.apply(enqueue()) {
                if let Effect::Deliver { consumer, deliveries } = e {
                    unacked.extend(deliveries.iter().map(|d| (consumer.clone(), d.id)));
                }
            }
        }
        b.iter(|| {
            log.apply(enqueue());
            let Some((consumer, id)) = unacked.pop_front() else { return };
            for e in log.apply(Command::Settle { consumer, ids: vec![id] }) {
                if let Effect::Deliver { consumer, deliveries } = e {
                    unacked.extend(deliveries.iter().map(|d| (consumer.clone(), d.id)));
                }
            }
        })
    });
    group.finish();

    // What an idle queue holds: the struct, and its snapshot.
    let idle = QuorumQueue::new(Config::default(), 0);
    let snapshot = serde_json::to_vec(&idle).map(|v| v.len()).unwrap_or(0);
    println!(
        "idle quorum queue: {} bytes in place, no heap until it holds a message or a consumer; \
         JSON snapshot {snapshot} bytes",
        std::mem::size_of::<QuorumQueue>()
    );
}

criterion_group!(benches, machine);
criterion_main!(benches);
