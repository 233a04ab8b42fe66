//! Loads the real guest components from `plugins/` and routes through them: every standard
//! type against its native twin on random bindings and messages, the hash types, and every
//! fixture contained.

use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use proptest::prelude::*;
use warren_codec::{BasicProperties, FieldTable, FieldValue};
use warren_core::exchange::{self, Binding, Destination, ExchangeFactory, ExchangeType, RoutingInput};
use warren_plugin_host::{ExchangePlugin, Limits, LoadError, Runtime, guests};

fn runtime() -> &'static Runtime {
    static RT: OnceLock<(Runtime, tempfile::TempDir)> = OnceLock::new();
    &RT.get_or_init(|| {
        let cache = tempfile::tempdir().expect("tempdir");
        (Runtime::new(Some(cache.path())).expect("engine"), cache)
    })
    .0
}

fn load(name: &str, type_name: &str, limits: Limits) -> ExchangePlugin {
    ExchangePlugin::load(runtime(), type_name, &guests::component(name), limits).expect("loads")
}

/// One plugin per guest, loaded once for the whole test binary.
fn plugin(name: &str) -> ExchangePlugin {
    static LOADED: OnceLock<std::sync::Mutex<Vec<(String, ExchangePlugin)>>> = OnceLock::new();
    let all = LOADED.get_or_init(Default::default);
    let mut all = all.lock().expect("lock");
    if let Some((_, p)) = all.iter().find(|(n, _)| n == name) {
        return p.clone();
    }
    let p = load(name, name, Limits::default());
    all.push((name.to_string(), p.clone()));
    p
}

fn q(name: &str) -> Destination {
    Destination::Queue(name.into())
}

fn bind(x: &mut dyn ExchangeType, dest: &str, key: &str, arguments: FieldTable) {
    let b = Binding { destination: q(dest), key: key.into(), arguments };
    x.validate_binding(&b.key, &b.arguments).expect("binding accepted");
    x.add_binding(&b);
}

fn route(x: &dyn ExchangeType, key: &str, props: &BasicProperties) -> Result<Vec<Destination>, ()> {
    let mut out = Vec::new();
    let input = RoutingInput { routing_key: key, properties: props, exchange: "x", body_size: 3 };
    x.route(input, &mut out).map_err(|_| ())?;
    out.sort();
    out.dedup();
    Ok(out)
}

fn no_props() -> BasicProperties {
    BasicProperties::default()
}

fn table(pairs: &[(&str, FieldValue)]) -> FieldTable {
    pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
}

#[test]
fn each_standard_type_routes_through_its_component() {
    let mut direct = plugin("exchange-direct").create(&FieldTable::new()).expect("declare");
    bind(&mut *direct, "a", "k", FieldTable::new());
    bind(&mut *direct, "b", "other", FieldTable::new());
    assert_eq!(route(&*direct, "k", &no_props()), Ok(vec![q("a")]));

    let mut topic = plugin("exchange-topic").create(&FieldTable::new()).expect("declare");
    bind(&mut *topic, "all", "#", FieldTable::new());
    bind(&mut *topic, "eu", "*.eu.#", FieldTable::new());
    assert_eq!(route(&*topic, "order.eu.paris", &no_props()), Ok(vec![q("all"), q("eu")]));
    assert_eq!(route(&*topic, "order.us", &no_props()), Ok(vec![q("all")]));
    assert!(topic.routes_on_key_only(), "the component answers for the type it wraps");

    let mut headers = plugin("exchange-headers").create(&FieldTable::new()).expect("declare");
    let all =
        table(&[("x-match", FieldValue::str("all")), ("a", FieldValue::I32(1)), ("b", FieldValue::str("x"))]);
    bind(&mut *headers, "both", "", all);
    let mut props = no_props();
    props.headers = Some(table(&[("a", FieldValue::I32(1)), ("b", FieldValue::str("x"))]));
    assert_eq!(route(&*headers, "", &props), Ok(vec![q("both")]));
    props.headers = Some(table(&[("a", FieldValue::I32(1))]));
    assert_eq!(route(&*headers, "", &props), Ok(vec![]));
    assert!(!headers.routes_on_key_only());

    // A binding the native type refuses is refused by the component with the same reason.
    let bad = table(&[("x-match", FieldValue::str("sometimes"))]);
    let err = headers.validate_binding("", &bad).expect_err("refused");
    assert_eq!(err.code, 406);
    assert!(err.text.contains("refused the binding") && err.text.contains("x-match"), "{}", err.text);
}

#[test]
fn consistent_hash_keeps_keys_in_place_and_follows_weights() {
    let mut x = plugin("exchange-consistent-hash").create(&FieldTable::new()).expect("declare");
    for (q, w) in [("q1", "1"), ("q2", "1"), ("q3", "2"), ("q4", "4")] {
        bind(&mut *x, q, w, FieldTable::new());
    }
    assert!(x.validate_binding("heavy", &FieldTable::new()).is_err(), "a weight must be a number");
    let native = {
        let mut n = exchange::consistent_hash::Factory.create(&FieldTable::new()).expect("native");
        for (q, w) in [("q1", "1"), ("q2", "1"), ("q3", "2"), ("q4", "4")] {
            bind(&mut *n, q, w, FieldTable::new());
        }
        n
    };
    let mut counts = std::collections::BTreeMap::new();
    for i in 0..2000 {
        let key = format!("key-{i}");
        let got = route(&*x, &key, &no_props()).expect("routes");
        assert_eq!(got.len(), 1);
        assert_eq!(route(&*native, &key, &no_props()), Ok(got.clone()), "same bucket as native");
        *counts.entry(got[0].clone()).or_insert(0u32) += 1;
    }
    assert!(counts[&q("q4")] > counts[&q("q1")] * 3, "{counts:?}");
}

#[test]
fn modulus_hash_routes_each_key_to_one_queue() {
    let mut x = plugin("exchange-modulus-hash").create(&FieldTable::new()).expect("declare");
    for name in ["a", "b", "c"] {
        bind(&mut *x, name, "", FieldTable::new());
    }
    let first = route(&*x, "customer-7", &no_props()).expect("routes");
    assert_eq!(first.len(), 1);
    assert_eq!(route(&*x, "customer-7", &no_props()), Ok(first));
}

/// Destinations, keys and header values drawn from small sets so that matches happen.
fn binding_strategy() -> impl Strategy<Value = (String, String, Vec<(String, i32)>, bool)> {
    let word = prop::sample::select(vec!["a", "b", "c", "*", "#"]);
    let key = prop::collection::vec(word, 0..4).prop_map(|w| w.join("."));
    let headers = prop::collection::vec(("h[0-2]", 0..3i32), 0..3);
    (prop::sample::select(vec!["q0", "q1", "q2", "q3"]).prop_map(String::from), key, headers, any::<bool>())
}

fn message_strategy() -> impl Strategy<Value = (String, Vec<(String, i32)>)> {
    let word = prop::sample::select(vec!["a", "b", "c", "d"]);
    let key = prop::collection::vec(word, 0..5).prop_map(|w| w.join("."));
    (key, prop::collection::vec(("h[0-2]", 0..3i32), 0..3))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// The components run warren-core's own routing code, so for any bindings and any
    /// messages they must pick exactly the destinations the native types pick.
    #[test]
    fn components_route_like_native_types(
        bindings in prop::collection::vec(binding_strategy(), 0..12),
        messages in prop::collection::vec(message_strategy(), 1..16),
        removals in prop::collection::vec(any::<prop::sample::Index>(), 0..4),
    ) {
        let natives: [(&str, Box<dyn ExchangeFactory>); 4] = [
            ("exchange-direct", Box::new(exchange::direct::Factory)),
            ("exchange-fanout", Box::new(exchange::fanout::Factory)),
            ("exchange-topic", Box::new(exchange::topic::Factory)),
            ("exchange-headers", Box::new(exchange::headers::Factory)),
        ];
        for (name, factory) in natives {
            let mut wasm = plugin(name).create(&FieldTable::new()).expect("declare");
            let mut native = factory.create(&FieldTable::new()).expect("declare");
            let mut added = Vec::new();
            for (dest, key, headers, any) in &bindings {
                let mut args: FieldTable = headers.iter().map(|(k, v)| (k.clone(), FieldValue::I32(*v))).collect();
                args.insert("x-match".into(), FieldValue::str(if *any { "any" } else { "all" }));
                let b = Binding { destination: q(dest), key: key.clone(), arguments: args };
                let ok = native.validate_binding(&b.key, &b.arguments).is_ok();
                prop_assert_eq!(wasm.validate_binding(&b.key, &b.arguments).is_ok(), ok, "{} validate {:?}", name, b);
                if ok && !added.contains(&b) {
                    native.add_binding(&b);
                    wasm.add_binding(&b);
                    added.push(b);
                }
            }
            for r in &removals {
                if !added.is_empty() {
                    let b = added.remove(r.index(added.len()));
                    native.remove_binding(&b);
                    wasm.remove_binding(&b);
                }
            }
            for (key, headers) in &messages {
                let mut props = no_props();
                props.headers = Some(headers.iter().map(|(k, v)| (k.clone(), FieldValue::I32(*v))).collect());
                prop_assert_eq!(route(&*wasm, key, &props), route(&*native, key, &props), "{} key {}", name, key);
            }
        }
    }
}

/// A fanout exchange of a fixture type with queues a and b bound.
fn fixture_exchange(p: &ExchangePlugin) -> Box<dyn ExchangeType> {
    let mut x = p.create(&FieldTable::new()).expect("declare");
    bind(&mut *x, "a", "", FieldTable::new());
    bind(&mut *x, "b", "", FieldTable::new());
    x
}

/// The fixture fails on `bad_key`, which costs that one route; the instance is rebuilt
/// with both bindings and routes again.
fn contained(p: &ExchangePlugin, bad_key: &str, kind: &str) {
    let x = fixture_exchange(p);
    assert_eq!(route(&*x, "fine", &no_props()), Ok(vec![q("a"), q("b")]));
    let before = p.stats().rebuilds();
    assert_eq!(route(&*x, bad_key, &no_props()), Err(()), "the failing route counts as unroutable");
    assert_eq!(p.stats().failures(kind), 1, "counted as {kind}");
    assert_eq!(route(&*x, "fine", &no_props()), Ok(vec![q("a"), q("b")]), "rebuilt with its bindings");
    assert_eq!(p.stats().rebuilds(), before + 1);
    let err =
        p.create(&table(&[(&format!("{bad_key}-on-create"), FieldValue::Bool(true))])).expect_err("refused");
    assert_eq!(err.code, 406);
    assert!(err.text.contains(&p.path().display().to_string()), "names the plugin file: {}", err.text);
    assert_eq!(p.stats().failures(kind), 2);
}

#[test]
fn a_binding_the_plugin_traps_on_costs_its_exchange_not_the_broker() {
    let p = load("fixture-trap", "x-trap-bind", Limits::default());
    let mut x = fixture_exchange(&p);
    let poison = Binding { destination: q("poison"), key: "trap".into(), arguments: FieldTable::new() };
    x.add_binding(&poison);
    assert_eq!(p.stats().failures("trap"), 1, "the add trapped and the instance went");
    assert_eq!(route(&*x, "fine", &no_props()), Err(()), "the rebuild replays the binding and traps");
    assert_eq!(p.stats().failures("trap"), 2);
    assert_eq!(route(&*x, "fine", &no_props()), Err(()));
    assert_eq!(p.stats().failures("trap"), 2, "no rebuild attempt per publish while it keeps failing");
    x.remove_binding(&poison);
    assert_eq!(route(&*x, "fine", &no_props()), Ok(vec![q("a"), q("b")]), "unbinding it heals at once");
}

#[test]
fn a_trapping_plugin_costs_one_route() {
    contained(&load("fixture-trap", "x-trap", Limits::default()), "trap", "trap");
}

#[test]
fn a_looping_plugin_is_stopped_by_its_deadline() {
    let limits = Limits { timeout: Duration::from_millis(20), ..Limits::default() };
    contained(&load("fixture-loop", "x-loop", limits), "loop", "timeout");
}

#[test]
fn a_plugin_growing_past_its_memory_cap_is_stopped() {
    let limits = Limits { memory_bytes: 8 << 20, ..Limits::default() };
    contained(&load("fixture-grow-memory", "x-grow", limits), "grow", "memory");
}

#[test]
fn components_that_cannot_serve_are_refused_at_load_naming_the_file() {
    let wrong = guests::component("fixture-wrong-world");
    let err = ExchangePlugin::load(runtime(), "x-wrong", &wrong, Limits::default()).expect_err("wrong world");
    assert!(matches!(err, LoadError::WrongWorld { .. }), "{err}");
    assert!(err.to_string().contains("fixture_wrong_world.wasm"), "{err}");
    assert!(err.to_string().contains("exchange-plugin"), "{err}");

    let missing = Path::new("/nonexistent/plugin.wasm");
    let err = ExchangePlugin::load(runtime(), "x-missing", missing, Limits::default()).expect_err("missing");
    assert!(
        matches!(err, LoadError::Read { .. }) && err.to_string().contains("/nonexistent/plugin.wasm"),
        "{err}"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let junk = dir.path().join("junk.wasm");
    std::fs::write(&junk, b"\0asm not really").expect("write");
    let err = ExchangePlugin::load(runtime(), "x-junk", &junk, Limits::default()).expect_err("junk");
    assert!(matches!(err, LoadError::Compile { .. }) && err.to_string().contains("junk.wasm"), "{err}");
}

#[test]
fn the_instance_cap_refuses_further_declares() {
    let p = load("exchange-fanout", "x-capped", Limits { max_instances: 2, ..Limits::default() });
    let one = p.create(&FieldTable::new()).expect("first");
    let _two = p.create(&FieldTable::new()).expect("second");
    let err = p.create(&FieldTable::new()).expect_err("third");
    assert!(err.text.contains("cap of 2 instances"), "{}", err.text);
    drop(one);
    assert_eq!(p.stats().instances(), 1);
    p.create(&FieldTable::new()).expect("room again after a delete");
}

#[test]
fn a_reload_swaps_the_component_and_replays_the_bindings() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("swap.wasm");
    std::fs::copy(guests::component("exchange-fanout"), &path).expect("copy");
    let p = ExchangePlugin::load(runtime(), "x-swap", &path, Limits::default()).expect("loads");
    let mut x = p.create(&FieldTable::new()).expect("declare");
    bind(&mut *x, "a", "k", FieldTable::new());
    bind(&mut *x, "b", "other", FieldTable::new());
    assert_eq!(route(&*x, "k", &no_props()), Ok(vec![q("a"), q("b")]), "fanout");

    std::fs::copy(guests::component("exchange-direct"), &path).expect("replace");
    p.reload().expect("reloads");
    assert_eq!(route(&*x, "k", &no_props()), Ok(vec![q("a")]), "direct, with the same bindings");
    assert_eq!(p.stats().reloads(), 1);

    std::fs::write(&path, b"broken").expect("break it");
    assert!(p.reload().is_err(), "a broken replacement is refused");
    assert_eq!(route(&*x, "other", &no_props()), Ok(vec![q("b")]), "and the old component stays");
}

#[test]
fn compiled_components_are_cached_by_content() {
    let cache = tempfile::tempdir().expect("tempdir");
    let rt = Runtime::new(Some(cache.path())).expect("engine");
    let path = guests::component("exchange-direct");
    ExchangePlugin::load(&rt, "direct", &path, Limits::default()).expect("compiles");
    let mut files: Vec<_> =
        std::fs::read_dir(cache.path()).expect("dir").map(|e| e.expect("entry").path()).collect();
    files.sort();
    let names: Vec<_> = files.iter().filter_map(|p| p.extension()).collect();
    assert_eq!(names, ["cwasm", "sha256"], "one compiled component and its digest");
    let again = ExchangePlugin::load(&rt, "direct", &path, Limits::default()).expect("from cache");
    assert_eq!(std::fs::read_dir(cache.path()).expect("dir").count(), 2);
    let mut x = again.create(&FieldTable::new()).expect("declare");
    bind(&mut *x, "a", "k", FieldTable::new());
    assert_eq!(route(&*x, "k", &no_props()), Ok(vec![q("a")]));

    // A flipped bit in the cached native code: it is not loaded, but compiled again.
    let mut code = std::fs::read(&files[0]).expect("cached code");
    let middle = code.len() / 2;
    code[middle] ^= 0x40;
    std::fs::write(&files[0], &code).expect("damage it");
    let rebuilt = ExchangePlugin::load(&rt, "direct", &path, Limits::default()).expect("recompiled");
    assert_ne!(std::fs::read(&files[0]).expect("cached code"), code, "the damaged file was replaced");
    let mut x = rebuilt.create(&FieldTable::new()).expect("declare");
    bind(&mut *x, "a", "k", FieldTable::new());
    assert_eq!(route(&*x, "k", &no_props()), Ok(vec![q("a")]));
}
