//! Topic routing against a reference matcher: bindings and keys made of a few words, so the
//! exponential reference stays cheap, while the trie sees every shape of `#`, `*` and empty
//! words. Any difference, or a panic, is a bug.
//!
//! Run with `cargo fuzz run topic` from `core/codec` (needs a nightly toolchain).
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use warren_codec::{BasicProperties, FieldTable};
use warren_core::exchange::{Binding, Destination, ExchangeFactory, RoutingInput};

const WORDS: [&str; 6] = ["a", "b", "", "*", "#", "#"];

/// RabbitMQ's semantics, written the obvious way.
fn matches(pattern: &[&str], key: &[&str]) -> bool {
    match (pattern.split_first(), key.split_first()) {
        (None, None) => true,
        (Some((&"#", rest)), _) => matches(rest, key) || (!key.is_empty() && matches(pattern, &key[1..])),
        (Some((&"*", rest)), Some((_, krest))) => matches(rest, krest),
        (Some((p, rest)), Some((k, krest))) if p == k => matches(rest, krest),
        _ => false,
    }
}

fn words(key: &str) -> Vec<&str> {
    if key.is_empty() { Vec::new() } else { key.split('.').collect() }
}

/// A dotted key from up to 7 octets, each picking a word.
fn key(bytes: &[u8], alphabet: &[&str]) -> String {
    bytes.iter().take(7).map(|b| alphabet[*b as usize % alphabet.len()]).collect::<Vec<_>>().join(".")
}

fuzz_target!(|data: &[u8]| {
    // 0xff separates the pieces: bindings first, the last piece is the routing key.
    let pieces: Vec<&[u8]> = data.split(|b| *b == 0xff).take(12).collect();
    let Some((routing, bindings)) = pieces.split_last() else {
        return;
    };
    let mut topic = warren_core::exchange::topic::Factory.create(&FieldTable::new()).expect("topic");
    let patterns: Vec<String> = bindings.iter().map(|b| key(b, &WORDS)).collect();
    for (i, p) in patterns.iter().enumerate() {
        let destination = Destination::Queue(Arc::from(i.to_string()));
        topic.add_binding(&Binding { destination, key: p.clone(), arguments: FieldTable::new() });
    }
    let routing_key = key(routing, &["a", "b", "", "c"]);
    let props = BasicProperties::default();
    let mut got = Vec::new();
    let input = RoutingInput { routing_key: &routing_key, properties: &props, exchange: "x", body_size: 0 };
    topic.route(input, &mut got).expect("native types route");
    got.sort();
    got.dedup();
    let mut want: Vec<Destination> = patterns
        .iter()
        .enumerate()
        .filter(|(_, p)| matches(&words(p), &words(&routing_key)))
        .map(|(i, _)| Destination::Queue(Arc::from(i.to_string())))
        .collect();
    want.sort();
    assert_eq!(got, want, "key {routing_key:?} patterns {patterns:?}");
});
