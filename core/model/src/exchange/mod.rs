//! Exchange types: one per file behind one trait, as RabbitMQ's `rabbit_exchange_type`.
//!
//! A type decides four things (RabbitMQ's checklist): which declare arguments it accepts
//! ([`ExchangeFactory::create`]), which bindings it accepts ([`ExchangeType::validate_binding`]),
//! how it indexes bindings ([`ExchangeType::add_binding`] / [`ExchangeType::remove_binding`]),
//! and where a message goes ([`ExchangeType::route`]). The broker keeps the set of bindings
//! itself (for equality, unbind and cleanup); a type keeps only what it needs to route fast.
//! Plugin exchange types (wasm components) implement the same trait.

use std::fmt;
use std::sync::Arc;

use warren_codec::{BasicProperties, FieldTable};

use crate::error::AmqpError;

pub mod consistent_hash;
pub mod direct;
pub mod fanout;
pub mod headers;
pub mod modulus_hash;
pub mod topic;

/// Where a binding points: a queue or another exchange.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Destination {
    /// A queue, by name.
    Queue(Arc<str>),
    /// An exchange, by name (exchange-to-exchange binding).
    Exchange(Arc<str>),
}

/// One binding from an exchange.
#[derive(Debug, Clone, PartialEq)]
pub struct Binding {
    /// Where matching messages go.
    pub destination: Destination,
    /// The binding (routing) key.
    pub key: String,
    /// Binding arguments.
    pub arguments: FieldTable,
}

/// What a type may look at to route a message.
#[derive(Debug, Clone, Copy)]
pub struct RoutingInput<'a> {
    /// The routing key (or one of the CC/BCC keys).
    pub routing_key: &'a str,
    /// The message's properties, headers included.
    pub properties: &'a BasicProperties,
    /// The exchange being routed through (plugins may want it; native types do not).
    pub exchange: &'a str,
    /// The size of the message body in octets.
    pub body_size: u64,
}

/// A type could not route a message (a plugin trapped or timed out): the message counts as
/// unroutable, and the result must not be cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteFailed;

/// An exchange type's routing state for one exchange.
pub trait ExchangeType: fmt::Debug + Send {
    /// Refuses a binding this type cannot use.
    fn validate_binding(&self, _key: &str, _arguments: &FieldTable) -> Result<(), AmqpError> {
        Ok(())
    }

    /// Indexes a new binding (already validated, never a duplicate).
    fn add_binding(&mut self, binding: &Binding);

    /// Drops a binding previously added.
    fn remove_binding(&mut self, binding: &Binding);

    /// Appends the destinations of a message; duplicates are allowed, the broker removes them.
    fn route(&self, input: RoutingInput<'_>, out: &mut Vec<Destination>) -> Result<(), RouteFailed>;

    /// Whether destinations depend on the routing key alone (not headers or other
    /// properties): the broker then caches them per key until the bindings change, which
    /// makes a plugin type on hot keys cost about what a native one does.
    fn routes_on_key_only(&self) -> bool {
        false
    }
}

/// Makes an exchange type's state for a newly declared exchange.
pub trait ExchangeFactory: fmt::Debug + Send + Sync {
    /// Checks the declare arguments and builds the routing state.
    fn create(&self, arguments: &FieldTable) -> Result<Box<dyn ExchangeType>, AmqpError>;
}

/// The exchange types the broker knows, by the name clients pass to exchange.declare.
#[derive(Debug, Clone)]
pub struct TypeRegistry {
    types: crate::hash::Map<String, Arc<dyn ExchangeFactory>>,
}

impl TypeRegistry {
    /// The built-in types: direct, fanout, topic, headers, x-consistent-hash, x-modulus-hash.
    pub fn builtin() -> Self {
        let mut r = TypeRegistry { types: crate::hash::Map::default() };
        r.register("direct", Arc::new(direct::Factory));
        r.register("fanout", Arc::new(fanout::Factory));
        r.register("topic", Arc::new(topic::Factory));
        r.register("headers", Arc::new(headers::Factory));
        r.register("x-consistent-hash", Arc::new(consistent_hash::Factory));
        r.register("x-modulus-hash", Arc::new(modulus_hash::Factory));
        r
    }

    /// Adds or replaces a type.
    pub fn register(&mut self, name: &str, factory: Arc<dyn ExchangeFactory>) {
        self.types.insert(name.to_string(), factory);
    }

    /// The factory for a type name.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn ExchangeFactory>> {
        self.types.get(name)
    }
}

/// Removes one occurrence of `d` from `v`; bindings that differ only in arguments are
/// distinct bindings to the same destination, so types keep a multiset.
pub(crate) fn remove_one(v: &mut Vec<Destination>, d: &Destination) {
    if let Some(i) = v.iter().position(|x| x == d) {
        v.swap_remove(i);
    }
}

/// A hash that stays the same across runs, platforms and versions (FNV-1a 64 then a
/// splitmix64 finalizer to spread short keys): a key's queue must not move on restart.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::*;

    pub fn q(name: &str) -> Destination {
        Destination::Queue(name.into())
    }

    pub fn binding(dest: &str, key: &str) -> Binding {
        Binding { destination: q(dest), key: key.into(), arguments: FieldTable::new() }
    }

    pub fn route_key(t: &dyn ExchangeType, key: &str) -> Vec<Destination> {
        let props = BasicProperties::default();
        route_props(t, key, &props)
    }

    pub fn route_props(t: &dyn ExchangeType, key: &str, props: &BasicProperties) -> Vec<Destination> {
        let mut out = Vec::new();
        t.route(RoutingInput { routing_key: key, properties: props, exchange: "x", body_size: 0 }, &mut out)
            .expect("native types route");
        out.sort();
        out.dedup();
        out
    }
}
