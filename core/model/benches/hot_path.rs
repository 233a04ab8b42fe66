//! The whole sans-IO path of scenario (a) of `compare.sh`, without sockets: publish frames in
//! on one connection, basic.deliver frames out of another (auto-ack consumer, 16-byte bodies).
//! `cargo bench -p warren-core --bench hot_path` prints the cost per message, split into the
//! part a driver runs without the broker lock (decode, encode) and the part under it.
#![allow(missing_docs, clippy::disallowed_methods)] // a benchmark reads the clock by design

use std::time::Instant;

use bytes::{Bytes, BytesMut};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use warren_codec::*;
use warren_core::{Broker, BrokerConfig, Connection, ConnectionConfig};

/// Messages per read, about what one 128 KiB socket read carries at 16 octets.
const BATCH: usize = 2000;

/// A client's handshake up to an open channel 1, plus `then`.
fn handshake(then: impl FnOnce(&mut BytesMut)) -> BytesMut {
    let mut out = warren_core::connection::guest_handshake(131_072);
    then(&mut out);
    out
}

/// A connection that has read `bytes` and answered them.
fn open(broker: &mut Broker, bytes: &[u8]) -> Connection {
    let mut c = Connection::new(ConnectionConfig::default(), true, Instant::now());
    c.read_buf().extend_from_slice(bytes);
    c.handle_input(Instant::now(), broker);
    let _ = c.take_output();
    assert!(c.id().is_some(), "handshake failed");
    c
}

/// One batch of publishes to queue "q" through the default exchange, as a client sends them.
fn publishes() -> Bytes {
    let mut out = BytesMut::new();
    let body = Bytes::from_static(&[7u8; 16]);
    for _ in 0..BATCH {
        let publish = BasicPublish { routing_key: "q".into(), ..Default::default() };
        encode_content(&mut out, 1, publish, &BasicProperties::default(), &body, 131_072);
    }
    out.freeze()
}

fn hot_path(c: &mut Criterion) {
    let mut broker = Broker::new(BrokerConfig::default(), Instant::now());
    let mut publisher = open(&mut broker, &handshake(|_| {}));
    let mut consumer = open(
        &mut broker,
        &handshake(|out| {
            Frame::method(1, QueueDeclare { queue: "q".into(), ..Default::default() }).encode(out);
            let consume = BasicConsume { queue: "q".into(), no_ack: true, ..Default::default() };
            Frame::method(1, consume).encode(out);
        }),
    );
    let batch = publishes();
    let mut group = c.benchmark_group("hot path, 16 B, auto-ack");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("publish frames in, deliver frames out", |b| {
        b.iter(|| {
            publisher.read_buf().extend_from_slice(&batch);
            publisher.decode_input();
            let now = Instant::now();
            publisher.handle_input(now, &mut broker);
            consumer.pull_outbound(now, &mut broker);
            let out = consumer.take_output();
            assert!(out.len() > BATCH * 16, "deliveries missing");
        })
    });
    group.bench_function("of which under the broker lock", |b| {
        b.iter_custom(|iters| {
            let mut locked = std::time::Duration::ZERO;
            for _ in 0..iters {
                publisher.read_buf().extend_from_slice(&batch);
                publisher.decode_input();
                let start = Instant::now();
                publisher.handle_input(start, &mut broker);
                consumer.pull_outbound(start, &mut broker);
                locked += start.elapsed();
                let _ = consumer.take_output();
            }
            locked
        })
    });
    group.finish();
}

criterion_group!(benches, hot_path);
criterion_main!(benches);
