//! ns per route call, native exchange types against the same types as wasm components,
//! with and without the broker's route cache: `cargo bench -p warren-plugin-host --bench route`.
//! Prints a table; no timing is asserted.
#![allow(missing_docs)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use warren_codec::{
    BasicProperties, ExchangeDeclare, FieldTable, FieldValue, Method, QueueBind, QueueDeclare,
};
use warren_core::broker::ConnectionInfo;
use warren_core::exchange::{self, Binding, Destination, ExchangeFactory, ExchangeType, RoutingInput};
use warren_core::{Broker, BrokerConfig};
use warren_plugin_host::{ExchangePlugin, Limits, Runtime, guests};

const BINDINGS: usize = 100;
const KEYS: usize = 1000;

/// Binding key and arguments for binding `i` of a type.
fn binding(kind: &str, i: usize) -> (String, FieldTable) {
    match kind {
        "topic" => (
            if i.is_multiple_of(10) { format!("k.*.{}", i % 7) } else { format!("k.{i}.{}", i % 7) },
            FieldTable::new(),
        ),
        "headers" => {
            let args = [
                ("x-match".to_string(), FieldValue::str("all")),
                ("n".to_string(), FieldValue::I32(i as i32)),
            ];
            (String::new(), args.into_iter().collect())
        }
        "x-consistent-hash" => ((1 + i % 3).to_string(), FieldTable::new()),
        _ => (format!("k.{i}.{}", i % 7), FieldTable::new()),
    }
}

fn message(kind: &str, i: usize) -> (String, BasicProperties) {
    let i = i % KEYS;
    let mut props = BasicProperties::default();
    if kind == "headers" {
        props.headers =
            Some([("n".to_string(), FieldValue::I32((i % BINDINGS) as i32))].into_iter().collect());
    }
    (format!("k.{}.{}", i % BINDINGS, i % 7), props)
}

/// Calls `f` for about a second and returns ns per call.
fn time(mut f: impl FnMut(usize)) -> f64 {
    for i in 0..1000 {
        f(i);
    }
    let (started, mut n) = (Instant::now(), 0usize);
    while started.elapsed() < Duration::from_secs(1) {
        for _ in 0..1000 {
            f(n);
            n += 1;
        }
    }
    started.elapsed().as_nanos() as f64 / n as f64
}

fn type_alone(kind: &str, factory: &dyn ExchangeFactory) -> f64 {
    let mut x: Box<dyn ExchangeType> = factory.create(&FieldTable::new()).expect("create");
    for i in 0..BINDINGS {
        let (key, arguments) = binding(kind, i);
        x.add_binding(&Binding { destination: Destination::Queue(format!("q{i}").into()), key, arguments });
    }
    let messages: Vec<_> = (0..KEYS).map(|i| message(kind, i)).collect();
    let mut out = Vec::new();
    time(|i| {
        let (key, props) = &messages[i % KEYS];
        out.clear();
        let input = RoutingInput { routing_key: key, properties: props, exchange: "x", body_size: 10 };
        let _ = x.route(input, &mut out);
        black_box(out.len());
    })
}

fn through_broker(kind: &str, registered_as: &str, factory: Arc<dyn ExchangeFactory>) -> f64 {
    let mut broker = Broker::new(BrokerConfig::default(), Instant::now());
    broker.register_exchange_type(registered_as, factory);
    let conn = broker.connect(ConnectionInfo::default());
    broker.open_channel(conn, 1);
    let mut call = |m: Method| broker.handle_method(conn, 1, m).expect("method");
    call(ExchangeDeclare { exchange: "x".into(), kind: registered_as.into(), ..Default::default() }.into());
    for i in 0..BINDINGS {
        let (routing_key, arguments) = binding(kind, i);
        let queue = format!("q{i}");
        call(QueueDeclare { queue: queue.clone(), no_wait: true, ..Default::default() }.into());
        call(
            QueueBind {
                queue,
                exchange: "x".into(),
                routing_key,
                arguments,
                no_wait: true,
                ..Default::default()
            }
            .into(),
        );
    }
    let messages: Vec<_> = (0..KEYS).map(|i| message(kind, i)).collect();
    time(|i| {
        let (key, props) = &messages[i % KEYS];
        black_box(
            broker.route(warren_core::broker::VHostId::DEFAULT, "x", key, props, 10).map(|d| d.len()).ok(),
        );
    })
}

fn main() {
    let cache = std::env::temp_dir().join("warren-route-bench-cache");
    let runtime = Runtime::new(Some(&cache)).expect("engine");
    let natives: [(&str, &str, Arc<dyn ExchangeFactory>); 4] = [
        ("direct", "exchange-direct", Arc::new(exchange::direct::Factory)),
        ("topic", "exchange-topic", Arc::new(exchange::topic::Factory)),
        ("headers", "exchange-headers", Arc::new(exchange::headers::Factory)),
        ("x-consistent-hash", "exchange-consistent-hash", Arc::new(exchange::consistent_hash::Factory)),
    ];
    println!("{BINDINGS} bindings, {KEYS} distinct messages, ns per route call (lower is better)\n");
    println!(
        "| type | native, type alone | wasm, type alone | native, via broker | wasm, via broker | broker route cache |"
    );
    println!("|---|---:|---:|---:|---:|---|");
    for (kind, guest, native) in natives {
        let wasm = ExchangePlugin::load(
            &runtime,
            &format!("wasm-{kind}"),
            &guests::component(guest),
            Limits::default(),
        )
        .expect("component loads");
        let cached = native.create(&FieldTable::new()).map(|x| x.routes_on_key_only()).unwrap_or(false);
        println!(
            "| {kind} | {:.0} | {:.0} | {:.0} | {:.0} | {} |",
            type_alone(kind, &*native),
            type_alone(kind, &wasm),
            through_broker(kind, kind, native.clone()),
            through_broker(kind, &format!("wasm-{kind}"), Arc::new(wasm.clone())),
            if cached { "used (routes on the key alone)" } else { "not used" },
        );
    }
}
