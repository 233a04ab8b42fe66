//! Routing cost per message for each exchange type with 1, 1 000 and 100 000 bindings.
//! `cargo bench -p warren-core --bench routing` prints one line per case.
#![allow(clippy::disallowed_methods, missing_docs)] // a benchmark reads the clock by design

use std::hint::black_box;
use std::time::{Duration, Instant};

use warren_codec::{BasicProperties, FieldTable, FieldValue};
use warren_core::exchange::{Binding, Destination, ExchangeType, RoutingInput, TypeRegistry};

struct Case {
    kind: &'static str,
    binding: fn(usize) -> (String, FieldTable),
    message: fn(usize) -> (String, BasicProperties),
}

fn no_args(key: String) -> (String, FieldTable) {
    (key, FieldTable::new())
}

fn plain(key: String) -> (String, BasicProperties) {
    (key, BasicProperties::default())
}

const CASES: &[Case] = &[
    Case { kind: "direct", binding: |i| no_args(format!("key.{i}")), message: |i| plain(format!("key.{i}")) },
    Case { kind: "fanout", binding: |_| no_args(String::new()), message: |_| plain(String::new()) },
    Case {
        kind: "topic",
        // A mix of exact, `*` and `#` patterns over a spread of first words.
        binding: |i| {
            no_args(match i % 3 {
                0 => format!("s{}.{}.nyse", i % 1000, i),
                1 => format!("s{}.*.x{}", i % 1000, i),
                _ => format!("s{}.#.y{}", i % 1000, i),
            })
        },
        // Keys of the exact-pattern bindings (every third), so each message matches.
        message: |i| {
            let j = i - i % 3;
            plain(format!("s{}.{}.nyse", j % 1000, j))
        },
    },
    Case {
        kind: "headers",
        binding: |i| {
            let mut t = FieldTable::new();
            t.insert("x-match".into(), FieldValue::str("all"));
            t.insert("tenant".into(), FieldValue::I64(i as i64));
            (String::new(), t)
        },
        message: |i| {
            let headers = [("tenant".to_string(), FieldValue::I64(i as i64))].into_iter().collect();
            (String::new(), BasicProperties { headers: Some(headers), ..Default::default() })
        },
    },
    Case {
        kind: "x-consistent-hash",
        binding: |_| no_args("1".into()),
        message: |i| plain(format!("order-{i}")),
    },
    Case {
        kind: "x-modulus-hash",
        binding: |_| no_args(String::new()),
        message: |i| plain(format!("order-{i}")),
    },
];

fn build(case: &Case, n: usize) -> Box<dyn ExchangeType> {
    let registry = TypeRegistry::builtin();
    let factory = registry.get(case.kind).expect("built-in type");
    let mut x = factory.create(&FieldTable::new()).expect("create");
    for i in 0..n {
        let (key, arguments) = (case.binding)(i);
        let destination = Destination::Queue(format!("q{i}").into());
        x.add_binding(&Binding { destination, key, arguments });
    }
    x
}

fn measure(case: &Case, x: &dyn ExchangeType, n: usize) -> (f64, usize) {
    let messages: Vec<(String, BasicProperties)> =
        (0..1024).map(|i| (case.message)(i * 7919 % n.max(1))).collect();
    let mut out = Vec::new();
    let mut routes = 0usize;
    let mut matched = 0usize;
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(400) {
        for (key, props) in &messages {
            out.clear();
            x.route(
                RoutingInput { routing_key: key, properties: props, exchange: "bench", body_size: 0 },
                &mut out,
            )
            .expect("routes");
            matched += out.len();
            black_box(&out);
        }
        routes += messages.len();
    }
    (started.elapsed().as_nanos() as f64 / routes as f64, matched / routes)
}

fn main() {
    println!("{:<18} {:>9} {:>14} {:>12}", "type", "bindings", "ns/route", "dests/route");
    for case in CASES {
        for n in [1usize, 1_000, 100_000] {
            let x = build(case, n);
            let (ns, dests) = measure(case, x.as_ref(), n);
            println!("{:<18} {:>9} {:>14.1} {:>12}", case.kind, n, ns, dests);
        }
    }
}
