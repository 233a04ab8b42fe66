//! A queue's enqueue and dequeue, and requeue back to the original position:
//! `cargo bench -p warren-core --bench queue`.
#![allow(missing_docs, clippy::disallowed_methods)] // a benchmark reads the clock by design

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use warren_codec::FieldTable;
use warren_core::message::{Message, QueuedMessage};
use warren_core::queue::{Queue, QueueSpec};
use warren_core::queue_args::QueueArgs;

fn queue() -> Queue {
    let spec =
        QueueSpec { durable: false, auto_delete: false, exclusive_owner: None, arguments: FieldTable::new() };
    Queue::new(1, "bench".into(), spec, QueueArgs::default(), Instant::now())
}

fn message() -> Arc<Message> {
    Arc::new(Message {
        exchange: String::new(),
        routing_key: "bench".into(),
        properties: Default::default(),
        body: Bytes::from_static(&[0u8; 16]),
    })
}

fn push(q: &mut Queue, m: &Arc<Message>) {
    let seq = q.allocate_seq();
    q.push(QueuedMessage::new(seq, m.clone(), None, 0));
}

fn enqueue_dequeue(c: &mut Criterion) {
    let mut group = c.benchmark_group("queue");
    group.throughput(Throughput::Elements(1));
    let m = message();
    group.bench_function("push then pop (steady state, 1 000 deep)", |b| {
        let mut q = queue();
        for _ in 0..1_000 {
            push(&mut q, &m);
        }
        b.iter(|| {
            push(&mut q, &m);
            black_box(q.pop());
        })
    });
    group.bench_function("requeue into the middle of 10 000", |b| {
        b.iter_batched(
            || {
                let mut q = queue();
                for _ in 0..10_000 {
                    push(&mut q, &m);
                }
                let taken: Vec<_> = (0..5_000).filter_map(|_| q.pop()).collect();
                (q, taken.into_iter().last())
            },
            // The queue is returned so criterion drops it outside the timing.
            |(mut q, last)| {
                if let Some(m) = last {
                    q.requeue(m);
                }
                q
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

criterion_group!(benches, enqueue_dequeue);
criterion_main!(benches);
