//! Topic routing with many bindings, for regressions in review:
//! `cargo bench -p warren-core --bench topic`. The exchange type alone (the trie walk), and
//! through the broker, where the route cache serves repeated keys.
#![allow(missing_docs, clippy::disallowed_methods)] // a benchmark reads the clock by design

use std::hint::black_box;
use std::time::Instant;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use warren_codec::{BasicProperties, ExchangeDeclare, FieldTable, Method, QueueBind, QueueDeclare};
use warren_core::broker::ConnectionInfo;
use warren_core::exchange::{Binding, Destination, RoutingInput, TypeRegistry};
use warren_core::{Broker, BrokerConfig};

/// Binding `i`: one in ten has a wildcard, so the trie has branches to try.
fn key(i: usize) -> String {
    match i % 10 {
        0 => format!("orders.*.{}", i % 1000),
        1 => format!("orders.{}.#", i % 1000),
        _ => format!("orders.{}.{}", i % 1000, i % 7),
    }
}

fn topic(c: &mut Criterion) {
    let mut group = c.benchmark_group("topic");
    group.throughput(Throughput::Elements(1));
    let props = BasicProperties::default();
    for n in [1_000usize, 100_000] {
        let registry = TypeRegistry::builtin();
        let factory = registry.get("topic").expect("topic");
        let mut x = factory.create(&FieldTable::new()).expect("create");
        for i in 0..n {
            let destination = Destination::Queue(format!("q{i}").into());
            x.add_binding(&Binding { destination, key: key(i), arguments: FieldTable::new() });
        }
        let mut out = Vec::new();
        let mut k = 0usize;
        group.bench_function(format!("trie, {n} bindings"), |b| {
            b.iter(|| {
                k = k.wrapping_add(7919);
                let rk = format!("orders.{}.{}", k % 1000, k % 7);
                out.clear();
                x.route(
                    RoutingInput { routing_key: &rk, properties: &props, exchange: "bench", body_size: 0 },
                    &mut out,
                )
                .expect("routes");
                black_box(out.len())
            })
        });
        let mut broker = Broker::new(BrokerConfig::default(), Instant::now());
        let conn = broker.connect(ConnectionInfo::default());
        broker.open_channel(conn, 1);
        let mut call = |m: Method| broker.handle_method(conn, 1, m).expect("method");
        call(ExchangeDeclare { exchange: "t".into(), kind: "topic".into(), ..Default::default() }.into());
        for i in 0..n {
            let queue = format!("q{i}");
            call(QueueDeclare { queue: queue.clone(), no_wait: true, ..Default::default() }.into());
            let bind = QueueBind {
                queue,
                exchange: "t".into(),
                routing_key: key(i),
                no_wait: true,
                ..Default::default()
            };
            call(bind.into());
        }
        group.bench_function(format!("through the broker (route cache, 7 000 keys), {n} bindings"), |b| {
            b.iter(|| {
                k = k.wrapping_add(7919);
                let rk = format!("orders.{}.{}", k % 1000, k % 7);
                black_box(
                    broker.route(warren_core::broker::VHostId::DEFAULT, "t", &rk, &props, 0).map(|d| d.len()),
                )
            })
        });
    }
    group.finish();
}

criterion_group!(benches, topic);
criterion_main!(benches);
