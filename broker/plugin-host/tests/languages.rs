//! Exchange types written in Python (componentize-py) and JavaScript (componentize-js),
//! loaded and contained like the Rust ones.

use std::time::Instant;

use warren_codec::{BasicProperties, FieldTable, FieldValue};
use warren_core::exchange::{Binding, Destination, ExchangeFactory, ExchangeType, RoutingInput};
use warren_plugin_host::{ExchangePlugin, Limits, Runtime, guests};

/// Interpreted guests carry their runtime: they need far more memory than a Rust guest.
fn limits() -> Limits {
    Limits { memory_bytes: 128 << 20, ..Limits::default() }
}

fn load(file_stem: &str, type_name: &str) -> ExchangePlugin {
    let path = guests::language_component(file_stem);
    let runtime = Runtime::new(Some(&guests::cache_dir())).expect("engine");
    let started = Instant::now();
    let p = ExchangePlugin::load(&runtime, type_name, &path, limits()).expect("loads");
    eprintln!("{file_stem}: loaded in {:?} (compiled once, then from the cache)", started.elapsed());
    p
}

fn q(name: &str) -> Destination {
    Destination::Queue(name.into())
}

fn bind(x: &mut dyn ExchangeType, dest: &str, key: &str) {
    x.validate_binding(key, &FieldTable::new()).expect("accepted");
    x.add_binding(&Binding { destination: q(dest), key: key.into(), arguments: FieldTable::new() });
}

fn route(x: &dyn ExchangeType, key: &str, props: &BasicProperties) -> Result<Vec<Destination>, ()> {
    let mut out = Vec::new();
    x.route(RoutingInput { routing_key: key, properties: props, exchange: "x", body_size: 0 }, &mut out)
        .map_err(|_| ())?;
    out.sort();
    Ok(out)
}

#[test]
fn python_prefix_exchange_routes_refuses_and_recovers() {
    let p = load("exchange_prefix_py", "x-prefix");
    let mut x = p.create(&FieldTable::new()).expect("declare");
    assert!(x.routes_on_key_only());
    bind(&mut *x, "eu", "eu.");
    bind(&mut *x, "fr", "eu.fr.");
    bind(&mut *x, "all", "");
    let none = BasicProperties::default();
    assert_eq!(route(&*x, "eu.fr.paris", &none), Ok(vec![q("all"), q("eu"), q("fr")]));
    assert_eq!(route(&*x, "us.ny", &none), Ok(vec![q("all")]));
    x.remove_binding(&Binding { destination: q("all"), key: String::new(), arguments: FieldTable::new() });
    assert_eq!(route(&*x, "us.ny", &none), Ok(vec![]));

    assert_eq!(route(&*x, "raise", &none), Err(()), "an exception is a contained trap");
    assert_eq!(p.stats().failures("trap"), 1);
    assert_eq!(route(&*x, "eu.de", &none), Ok(vec![q("eu")]), "rebuilt with its bindings");

    let args: FieldTable = [("bogus".to_string(), FieldValue::Bool(true))].into_iter().collect();
    let err = p.create(&args).expect_err("refused");
    assert!(err.text.contains("takes no arguments") && err.text.contains("bogus"), "{}", err.text);
}

#[test]
fn javascript_header_exists_exchange_routes_and_refuses() {
    let p = load("exchange_header_exists_js", "x-header-exists");
    let mut x = p.create(&FieldTable::new()).expect("declare");
    assert!(!x.routes_on_key_only());
    bind(&mut *x, "traced", "trace-id");
    bind(&mut *x, "tenant", "tenant");
    let headers = [("trace-id".to_string(), FieldValue::str("abc"))].into_iter().collect();
    let props = BasicProperties { headers: Some(headers), ..BasicProperties::default() };
    assert_eq!(route(&*x, "any", &props), Ok(vec![q("traced")]));
    assert_eq!(route(&*x, "any", &BasicProperties::default()), Ok(vec![]));
    let err = x.validate_binding("", &FieldTable::new()).expect_err("refused");
    assert!(err.text.contains("must name a header"), "{}", err.text);
}
