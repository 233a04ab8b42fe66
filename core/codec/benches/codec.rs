//! Encode and decode of one publish (method + content header + body), the frames every message
//! crosses twice: `cargo bench -p warren-codec --bench codec`.
#![allow(missing_docs)]

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use warren_codec::{BasicProperties, BasicPublish, decode_frame, encode_content};

fn publish(c: &mut Criterion) {
    let mut group = c.benchmark_group("publish");
    for size in [16usize, 1024, 64 * 1024] {
        let body = Bytes::from(vec![7u8; size]);
        let props = BasicProperties {
            content_type: Some("application/json".into()),
            delivery_mode: Some(2),
            message_id: Some("order-42".into()),
            ..Default::default()
        };
        let method =
            BasicPublish { exchange: "orders".into(), routing_key: "eu.new".into(), ..Default::default() };
        let mut wire = BytesMut::new();
        encode_content(&mut wire, 1, method.clone(), &props, &body, 131_072);
        group.throughput(Throughput::Elements(1));
        group.bench_function(format!("encode {size} B"), |b| {
            let mut out = BytesMut::with_capacity(size + 256);
            b.iter(|| {
                out.clear();
                encode_content(&mut out, 1, method.clone(), &props, &body, 131_072);
                black_box(&out);
            })
        });
        group.bench_function(format!("decode {size} B"), |b| {
            b.iter_batched(
                || wire.clone(),
                |mut input| {
                    while let Ok(Some(frame)) = decode_frame(&mut input, 131_072) {
                        black_box(frame);
                    }
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, publish);
criterion_main!(benches);
