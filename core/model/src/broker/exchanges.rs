//! exchange.* methods, queue.bind / queue.unbind, and routing through exchanges.

use std::collections::HashSet;
use std::sync::Arc;

use bytes::BytesMut;
use warren_codec::field::encode_table;
use warren_codec::reply_code::{ACCESS_REFUSED, COMMAND_INVALID};
use warren_codec::wire::Writer;
use warren_codec::{
    BasicProperties, ExchangeBind, ExchangeBindOk, ExchangeDeclare, ExchangeDeclareOk, ExchangeDelete,
    ExchangeDeleteOk, ExchangeUnbind, ExchangeUnbindOk, FieldTable, FieldValue, QueueBind, QueueBindOk,
    QueueUnbind, QueueUnbindOk,
};

use super::VHostId;
use super::{Broker, ConnId};
use crate::error::{AmqpError, no_exchange, no_queue, precondition};
use crate::exchange::{Binding, Destination, ExchangeType, RoutingInput};
use crate::storage::MetaOp;

pub(super) use crate::catalog::PREDECLARED;

/// A declared exchange: its declaration, its bindings, and its type's routing state.
#[derive(Debug)]
pub struct Exchange {
    /// Type name.
    pub kind: String,
    /// Survives a restart (once storage lands).
    pub durable: bool,
    /// Deleted when its last binding goes.
    pub auto_delete: bool,
    /// Refuses direct publishes; reachable only through exchange-to-exchange bindings.
    pub internal: bool,
    /// Declare arguments.
    pub arguments: FieldTable,
    /// `x-delayed-message`: messages with an `x-delay` header wait that long in each queue
    /// they route to before they are delivered.
    pub delays: bool,
    /// Bindings by identity: destination, key and arguments, RabbitMQ's binding equality.
    bindings: crate::hash::Map<BindingId, Binding>,
    router: Box<dyn ExchangeType>,
    /// Destinations per routing key, for types that route on the key alone; emptied whenever
    /// the bindings change. The broker runs on one thread at a time, so a `RefCell` serves.
    cache: std::cell::RefCell<crate::hash::Map<String, Arc<[Destination]>>>,
}

/// Routing keys cached per exchange before the cache starts over.
const ROUTE_CACHE_MAX: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct BindingId(Destination, String, Vec<u8>);

impl BindingId {
    fn of(b: &Binding) -> Self {
        // Field tables hold floats and so are not `Hash`; their wire form is canonical
        // (sorted keys), so it serves as the identity.
        let mut buf = BytesMut::new();
        encode_table(&mut Writer::new(&mut buf), &b.arguments);
        BindingId(b.destination.clone(), b.key.clone(), buf.to_vec())
    }
}

impl Exchange {
    /// Number of bindings with this exchange as source.
    pub fn binding_count(&self) -> usize {
        self.bindings.len()
    }

    /// Its bindings.
    pub fn bindings(&self) -> impl Iterator<Item = &Binding> {
        self.bindings.values()
    }

    /// Where its bindings point.
    pub fn destinations(&self) -> impl Iterator<Item = &Destination> {
        self.bindings.values().map(|b| &b.destination)
    }

    /// Appends the destinations for one routing key, from the cache when the type allows.
    /// A type that fails to route adds nothing, and its failure is not cached.
    fn route(&self, input: RoutingInput<'_>, out: &mut Vec<Destination>) {
        let start = out.len();
        if !self.router.routes_on_key_only() {
            if self.router.route(input, out).is_err() {
                out.truncate(start);
            }
            return;
        }
        if let Some(hit) = self.cache.borrow().get(input.routing_key) {
            out.extend(hit.iter().cloned());
            return;
        }
        if self.router.route(input, out).is_err() {
            out.truncate(start);
            return;
        }
        let mut cache = self.cache.borrow_mut();
        if cache.len() >= ROUTE_CACHE_MAX {
            cache.clear();
        }
        cache.insert(input.routing_key.to_string(), out[start..].into());
    }

    /// Adds a binding unless an equal one exists; returns whether it was added. Every change
    /// to the bindings goes through here or the two methods below, which keep the type's
    /// index, the binding set and the route cache in step.
    fn add_binding(&mut self, b: Binding) -> bool {
        let id = BindingId::of(&b);
        if self.bindings.contains_key(&id) {
            return false;
        }
        self.router.add_binding(&b);
        self.bindings.insert(id, b);
        self.cache.get_mut().clear();
        true
    }

    /// Empties the route cache.
    pub(super) fn forget_routes(&mut self) {
        self.cache.get_mut().clear();
    }

    /// Removes the binding equal to `b`, if there is one, and returns it.
    fn remove_binding(&mut self, b: &Binding) -> Option<Binding> {
        let removed = self.bindings.remove(&BindingId::of(b))?;
        self.router.remove_binding(&removed);
        self.cache.get_mut().clear();
        Some(removed)
    }

    /// Removes every binding to `dest`; returns whether there were any.
    fn remove_bindings_to(&mut self, dest: &Destination) -> bool {
        let before = self.bindings.len();
        let router = &mut self.router;
        self.bindings.retain(|_, b| {
            let keep = b.destination != *dest;
            if !keep {
                router.remove_binding(b);
            }
            keep
        });
        let changed = self.bindings.len() != before;
        if changed {
            self.cache.get_mut().clear();
        }
        changed
    }

    fn alternate(&self) -> Option<&str> {
        self.arguments.get("alternate-exchange").and_then(FieldValue::as_str)
    }
}

/// Whether `name` is the default exchange.
pub(super) fn is_default(name: &str) -> bool {
    name.is_empty() || name == "amq.default"
}

/// The delayed-message exchange type, as RabbitMQ's (archived) plugin named it.
pub(super) const DELAYED_MESSAGE: &str = "x-delayed-message";

/// The type a delayed-message exchange routes as: its `x-delayed-type` argument.
fn delayed_type(arguments: &FieldTable) -> Result<String, AmqpError> {
    arguments
        .get("x-delayed-type")
        .and_then(FieldValue::as_str)
        .filter(|t| *t != DELAYED_MESSAGE)
        .map(str::to_string)
        .ok_or_else(|| precondition("Invalid argument, 'x-delayed-type' must be an existing exchange type"))
}

/// A message's `x-delay` header in milliseconds, when it asks for a delay (RabbitMQ's plugin
/// reads any integer; zero, negative or absent means none), at most [`MAX_DELAY_MS`].
pub(super) fn delay_of(properties: &BasicProperties) -> Option<u64> {
    let v = properties.headers.as_ref()?.get("x-delay")?;
    v.as_i64().and_then(|ms| u64::try_from(ms).ok()).filter(|ms| *ms > 0).map(|ms| ms.min(MAX_DELAY_MS))
}

/// The longest `x-delay`, as RabbitMQ's plugin: 2^32 - 1 ms, about 49 days.
pub(super) const MAX_DELAY_MS: u64 = u32::MAX as u64;

fn default_refused() -> AmqpError {
    AmqpError::new(ACCESS_REFUSED, "operation not permitted on the default exchange")
}

impl Broker {
    pub(super) fn declare_predefined_exchanges(&mut self, vh: VHostId) {
        for (name, kind) in PREDECLARED {
            let decl = ExchangeDeclare {
                exchange: (*name).into(),
                kind: (*kind).into(),
                durable: true,
                ..Default::default()
            };
            let _ = self.create_exchange(vh, &decl);
        }
    }

    /// The routing state of a new exchange of `m`'s type and arguments, and whether it is a
    /// delayed-message exchange; an error for a type or arguments it cannot have.
    fn new_router(&self, m: &ExchangeDeclare) -> Result<(bool, Box<dyn ExchangeType>), AmqpError> {
        let delays = m.kind == DELAYED_MESSAGE;
        // A delayed-message exchange routes as the type `x-delayed-type` names.
        let kind = if delays { delayed_type(&m.arguments)? } else { m.kind.clone() };
        let factory = self.types.get(&kind).ok_or_else(|| {
            if delays {
                precondition("Invalid argument, 'x-delayed-type' must be an existing exchange type")
            } else {
                AmqpError::new(COMMAND_INVALID, format!("unknown exchange type '{}'", m.kind))
            }
        })?;
        Ok((delays, factory.create(&m.arguments)?))
    }

    /// A new exchange's checks, before a cluster member proposes its declare: what
    /// exchange.declare checks of one that does not exist yet, and what its type says of its
    /// arguments.
    pub(super) fn check_new_exchange(&self, vh: VHostId, m: &ExchangeDeclare) -> Result<(), AmqpError> {
        if is_default(&m.exchange) {
            return Err(default_refused());
        }
        if m.kind != DELAYED_MESSAGE && self.types.get(&m.kind).is_none() {
            return Err(AmqpError::new(COMMAND_INVALID, format!("unknown exchange type '{}'", m.kind)));
        }
        if m.exchange.starts_with("amq.") {
            return Err(AmqpError::new(
                ACCESS_REFUSED,
                format!("exchange name '{}' contains reserved prefix 'amq.*'", m.exchange),
            ));
        }
        if let Some(max) = self.limits.max_exchanges
            && self.node_count(super::census::Count::Exchanges) >= max
        {
            // RabbitMQ 4's words for cluster_exchange_limit.
            return Err(precondition(format!(
                "cannot declare exchange '{}' in vhost '{}': exchange limit of {max} is reached",
                m.exchange, self.vhosts[vh].name
            )));
        }
        self.new_router(m).map(|_| ())
    }

    /// Whether exchange `source` may be bound from with `key` and `arguments` (it exists, is
    /// not the default exchange, and its type takes them).
    pub(super) fn validate_binding(
        &mut self,
        vh: VHostId,
        source: &str,
        key: &str,
        arguments: &FieldTable,
    ) -> Result<(), AmqpError> {
        self.source_exchange(vh, source)?.router.validate_binding(key, arguments)
    }

    pub(super) fn create_exchange(&mut self, vh: VHostId, m: &ExchangeDeclare) -> Result<(), AmqpError> {
        let (delays, router) = self.new_router(m)?;
        let x = Exchange {
            kind: m.kind.clone(),
            durable: m.durable,
            auto_delete: m.auto_delete,
            internal: m.internal,
            arguments: m.arguments.clone(),
            delays,
            bindings: Default::default(),
            router,
            cache: Default::default(),
        };
        self.vhosts[vh].exchanges.insert(m.exchange.clone(), x);
        Ok(())
    }

    pub(super) fn exchange_declare(
        &mut self,
        conn: ConnId,
        ch: u16,
        m: ExchangeDeclare,
    ) -> Result<(), AmqpError> {
        let vh = self.vh(conn);
        if m.passive {
            // RabbitMQ refuses even a passive declare of the default exchange.
            if is_default(&m.exchange) {
                return Err(default_refused());
            }
            if !self.vhosts[vh].exchanges.contains_key(&m.exchange) {
                return Err(no_exchange(&self.vhosts[vh].name, &m.exchange));
            }
        } else {
            if is_default(&m.exchange) {
                return Err(default_refused());
            }
            // Like RabbitMQ: an unknown type is a connection error, checked first.
            if m.kind != DELAYED_MESSAGE && self.types.get(&m.kind).is_none() {
                return Err(AmqpError::new(COMMAND_INVALID, format!("unknown exchange type '{}'", m.kind)));
            }
            match self.vhosts[vh].exchanges.get(&m.exchange) {
                Some(x) => check_equivalent(&self.vhosts[vh].name, &m, x)?,
                None => {
                    self.check_new_exchange(vh, &m)?;
                    self.create_exchange(vh, &m)?;
                    if let Some(r) = Self::exchange_record(&self.vhosts[vh].name, &m.exchange, &m)
                        && !self.store_meta(MetaOp::PutExchange(r))
                    {
                        // Not on disk, so not declared: the method fails with 541.
                        self.vhosts[vh].exchanges.remove(&m.exchange);
                        return Ok(());
                    }
                }
            }
        }
        self.reply(conn, ch, m.no_wait, ExchangeDeclareOk {});
        Ok(())
    }

    pub(super) fn exchange_delete(
        &mut self,
        conn: ConnId,
        ch: u16,
        m: ExchangeDelete,
    ) -> Result<(), AmqpError> {
        let vh = self.vh(conn);
        if is_default(&m.exchange) {
            return Err(default_refused());
        }
        if m.exchange.starts_with("amq.") {
            return Err(AmqpError::new(
                ACCESS_REFUSED,
                format!(
                    "deletion of system exchange '{}' in vhost '{}' not allowed",
                    m.exchange, self.vhosts[vh].name
                ),
            ));
        }
        // Deleting an exchange that is not there succeeds, as in RabbitMQ.
        if let Some(x) = self.vhosts[vh].exchanges.get(&m.exchange) {
            if m.if_unused && x.binding_count() > 0 {
                let vhost = &self.vhosts[vh].name;
                return Err(precondition(format!("exchange '{}' in vhost '{vhost}' in use", m.exchange)));
            }
            self.delete_exchange(vh, &m.exchange);
        }
        self.reply(conn, ch, m.no_wait, ExchangeDeleteOk {});
        Ok(())
    }

    pub(super) fn queue_bind(&mut self, conn: ConnId, ch: u16, m: QueueBind) -> Result<(), AmqpError> {
        let vh = self.vh(conn);
        let dest = self.queue_destination(vh, conn, &m.queue)?;
        self.bind_durably(vh, &m.exchange, dest, m.routing_key, m.arguments)?;
        self.reply(conn, ch, m.no_wait, QueueBindOk {});
        Ok(())
    }

    pub(super) fn queue_unbind(&mut self, conn: ConnId, ch: u16, m: QueueUnbind) -> Result<(), AmqpError> {
        let vh = self.vh(conn);
        // Unbinding from or to what does not exist succeeds, as in RabbitMQ.
        if self.vhosts[vh].queues.contains_key(&m.queue) {
            let dest = self.queue_destination(vh, conn, &m.queue)?;
            self.unbind(vh, &m.exchange, dest, m.routing_key, m.arguments)?;
        } else if is_default(&m.exchange) {
            return Err(default_refused());
        }
        // queue.unbind has no no-wait.
        self.reply(conn, ch, false, QueueUnbindOk {});
        Ok(())
    }

    pub(super) fn exchange_bind(&mut self, conn: ConnId, ch: u16, m: ExchangeBind) -> Result<(), AmqpError> {
        let vh = self.vh(conn);
        let dest = self.exchange_destination(vh, &m.destination)?;
        self.bind_durably(vh, &m.source, dest, m.routing_key, m.arguments)?;
        self.reply(conn, ch, m.no_wait, ExchangeBindOk {});
        Ok(())
    }

    /// Binds, and records the binding when both its ends are durable.
    fn bind_durably(
        &mut self,
        vh: VHostId,
        source: &str,
        destination: Destination,
        key: String,
        arguments: FieldTable,
    ) -> Result<(), AmqpError> {
        let b = Binding { destination, key, arguments };
        let record = self.binding_record(vh, source, &b);
        let existed = self.vhosts[vh]
            .exchanges
            .get(source)
            .is_some_and(|x| x.bindings.contains_key(&BindingId::of(&b)));
        if let Some(max) = self.limits.max_bindings
            && !existed
            && self.node_count(super::census::Count::Bindings) >= max
        {
            return Err(precondition(format!(
                "cannot bind to '{source}' in vhost '{}': binding limit of {max} is reached",
                self.vhosts[vh].name
            )));
        }
        self.bind(vh, source, b.destination.clone(), b.key.clone(), b.arguments.clone())?;
        if let Some(r) = record
            && !self.store_meta(MetaOp::Bind(r))
            && !existed
            && let Some(x) = self.vhosts[vh].exchanges.get_mut(source)
        {
            // Not on disk, so not bound: the method fails with 541.
            x.remove_binding(&b);
        }
        Ok(())
    }

    pub(super) fn exchange_unbind(
        &mut self,
        conn: ConnId,
        ch: u16,
        m: ExchangeUnbind,
    ) -> Result<(), AmqpError> {
        let vh = self.vh(conn);
        if is_default(&m.destination) || is_default(&m.source) {
            return Err(default_refused());
        }
        if self.vhosts[vh].exchanges.contains_key(&m.destination) {
            let dest = self.exchange_destination(vh, &m.destination)?;
            self.unbind(vh, &m.source, dest, m.routing_key, m.arguments)?;
        }
        self.reply(conn, ch, m.no_wait, ExchangeUnbindOk {});
        Ok(())
    }

    /// A queue as a binding's destination: it must exist and be accessible to `conn`.
    fn queue_destination(&self, vh: VHostId, conn: ConnId, name: &str) -> Result<Destination, AmqpError> {
        let Some(q) = self.vhosts[vh].queues.get(name) else {
            return Err(no_queue(&self.vhosts[vh].name, name));
        };
        q.check_access(conn)?;
        Ok(Destination::Queue(Arc::from(name)))
    }

    /// An exchange as a binding's destination: it must exist and not be the default exchange.
    pub(super) fn exchange_destination(&self, vh: VHostId, name: &str) -> Result<Destination, AmqpError> {
        if is_default(name) {
            return Err(default_refused());
        }
        if !self.vhosts[vh].exchanges.contains_key(name) {
            return Err(no_exchange(&self.vhosts[vh].name, name));
        }
        Ok(Destination::Exchange(Arc::from(name)))
    }

    /// An exchange as a binding's source: it must exist and not be the default exchange.
    fn source_exchange(&mut self, vh: VHostId, name: &str) -> Result<&mut Exchange, AmqpError> {
        if is_default(name) {
            return Err(default_refused());
        }
        let v = &mut self.vhosts[vh];
        v.exchanges.get_mut(name).ok_or_else(|| no_exchange(&v.name, name))
    }

    pub(super) fn bind(
        &mut self,
        vh: VHostId,
        source: &str,
        destination: Destination,
        key: String,
        arguments: FieldTable,
    ) -> Result<(), AmqpError> {
        let x = self.source_exchange(vh, source)?;
        x.router.validate_binding(&key, &arguments)?;
        x.add_binding(Binding { destination, key, arguments });
        Ok(())
    }

    pub(super) fn unbind(
        &mut self,
        vh: VHostId,
        source: &str,
        destination: Destination,
        key: String,
        arguments: FieldTable,
    ) -> Result<(), AmqpError> {
        if is_default(source) {
            return Err(default_refused());
        }
        // Unbinding what is not bound, or from a source that does not exist, succeeds, as in
        // RabbitMQ.
        let Some(x) = self.vhosts[vh].exchanges.get_mut(source) else {
            return Ok(());
        };
        let Some(b) = x.bindings.get(&BindingId::of(&Binding { destination, key, arguments })).cloned()
        else {
            return Ok(());
        };
        // The store first: an unbind it cannot record does not happen (the method fails).
        if let Some(r) = self.binding_record(vh, source, &b)
            && !self.store_meta(MetaOp::Unbind(r))
        {
            return Ok(());
        }
        if let Some(x) = self.vhosts[vh].exchanges.get_mut(source) {
            x.remove_binding(&b);
        }
        self.auto_delete_exchange(vh, source);
        Ok(())
    }

    /// Drops every binding to `dest` (a deleted queue or exchange), cascading auto-delete.
    pub(super) fn unbind_destination(&mut self, vh: VHostId, dest: &Destination) {
        let mut emptied = Vec::new();
        for (name, x) in &mut self.vhosts[vh].exchanges {
            if x.remove_bindings_to(dest) {
                emptied.push(name.clone());
            }
        }
        for name in emptied {
            self.auto_delete_exchange(vh, &name);
        }
    }

    fn auto_delete_exchange(&mut self, vh: VHostId, name: &str) {
        if self.vhosts[vh].exchanges.get(name).is_some_and(|x| x.auto_delete && x.bindings.is_empty()) {
            self.delete_exchange(vh, name);
        }
    }

    pub(super) fn delete_exchange(&mut self, vh: VHostId, name: &str) {
        let Some(durable) = self.vhosts[vh].exchanges.get(name).map(|x| x.durable) else {
            return;
        };
        // The store first, as for queues.
        let op = MetaOp::DeleteExchange { vhost: self.vhosts[vh].name.to_string(), name: name.to_string() };
        if durable && !self.store_meta(op) {
            return;
        }
        if self.vhosts[vh].exchanges.remove(name).is_some() {
            self.unbind_destination(vh, &Destination::Exchange(Arc::from(name)));
        }
    }

    /// Refuses a publish to an exchange that does not exist or is internal.
    pub(super) fn check_publish_target(&self, vh: VHostId, exchange: &str) -> Result<(), AmqpError> {
        if is_default(exchange) {
            return Ok(());
        }
        let Some(x) = self.vhosts[vh].exchanges.get(exchange) else {
            return Err(no_exchange(&self.vhosts[vh].name, exchange));
        };
        if x.internal {
            return Err(AmqpError::new(
                ACCESS_REFUSED,
                format!(
                    "cannot publish to internal exchange '{exchange}' in vhost '{}'",
                    self.vhosts[vh].name
                ),
            ));
        }
        Ok(())
    }

    /// The queues a message published to `exchange` reaches, without publishing it (the
    /// publish path, dead letters, operators, tests and benchmarks use it). Follows
    /// exchange-to-exchange bindings and alternate exchanges, visiting each exchange at most
    /// once so cycles end, and routes on the routing key plus any `CC` and `BCC` header keys.
    /// Publish permission (internal exchanges) is checked by the caller; dead letters may pass
    /// internal exchanges.
    pub fn route(
        &self,
        vh: VHostId,
        exchange: &str,
        routing_key: &str,
        properties: &BasicProperties,
        body_size: u64,
    ) -> Result<Vec<Arc<str>>, AmqpError> {
        let mut keys = vec![routing_key];
        if let Some(h) = &properties.headers {
            for name in ["CC", "BCC"] {
                if let Some(FieldValue::Array(items)) = h.get(name) {
                    keys.extend(items.iter().filter_map(FieldValue::as_str));
                }
            }
        }
        let mut queues: Vec<Arc<str>> = Vec::new();
        if is_default(exchange) {
            queues.extend(
                keys.iter()
                    .filter_map(|k| self.vhosts[vh].queues.get_key_value(*k))
                    .map(|(k, _)| Arc::from(k.as_str())),
            );
        } else {
            if !self.vhosts[vh].exchanges.contains_key(exchange) {
                return Err(no_exchange(&self.vhosts[vh].name, exchange));
            }
            let mut seen: HashSet<&str> = HashSet::from([exchange]);
            let mut work: Vec<&str> = vec![exchange];
            let mut dests = Vec::new();
            while let Some(name) = work.pop() {
                let Some(x) = self.vhosts[vh].exchanges.get(name) else {
                    continue;
                };
                dests.clear();
                for key in &keys {
                    x.route(
                        RoutingInput { routing_key: key, properties, exchange: name, body_size },
                        &mut dests,
                    );
                }
                if dests.is_empty()
                    && let Some(ae) = x.alternate()
                    && seen.insert(ae)
                {
                    work.push(ae);
                }
                for d in dests.drain(..) {
                    match d {
                        Destination::Queue(q) => queues.push(q),
                        Destination::Exchange(e) => {
                            if let Some((k, _)) = self.vhosts[vh].exchanges.get_key_value(&*e)
                                && seen.insert(k.as_str())
                            {
                                work.push(k.as_str());
                            }
                        }
                    }
                }
            }
        }
        queues.sort();
        queues.dedup();
        queues.retain(|q| self.vhosts[vh].queues.contains_key(&**q));
        Ok(queues)
    }
}

fn check_equivalent(vhost: &str, m: &ExchangeDeclare, x: &Exchange) -> Result<(), AmqpError> {
    check_exchange_equivalent(
        vhost,
        &m.exchange,
        (&m.kind, m.durable, m.auto_delete, m.internal, &m.arguments),
        (&x.kind, x.durable, x.auto_delete, x.internal, &x.arguments),
    )
}

/// An exchange's declaration as the equivalence check reads it: type, durable, auto-delete,
/// internal, arguments.
pub(crate) type ExchangeShape<'a> = (&'a str, bool, bool, bool, &'a FieldTable);

/// RabbitMQ's equivalence check of an exchange redeclare, received against current. Shared by
/// the broker and the cluster's catalog, so both refuse with the same words.
pub(crate) fn check_exchange_equivalent(
    vhost: &str,
    name: &str,
    received: ExchangeShape<'_>,
    current: ExchangeShape<'_>,
) -> Result<(), AmqpError> {
    let differ = |what: &str, received: &dyn std::fmt::Display, current: &dyn std::fmt::Display| {
        precondition(format!(
            "inequivalent arg '{what}' for exchange '{name}' in vhost '{vhost}': received '{received}' but current is '{current}'"
        ))
    };
    if received.0 != current.0 {
        return Err(differ("type", &received.0, &current.0));
    }
    if received.1 != current.1 {
        return Err(differ("durable", &received.1, &current.1));
    }
    if received.2 != current.2 {
        return Err(differ("auto_delete", &received.2, &current.2));
    }
    if received.3 != current.3 {
        return Err(differ("internal", &received.3, &current.3));
    }
    let ae = |t: &FieldTable| t.get("alternate-exchange").and_then(FieldValue::as_str).map(str::to_string);
    let (new, old) = (ae(received.4), ae(current.4));
    if new != old {
        let show = |v: Option<String>| v.unwrap_or_else(|| "none".into());
        return Err(differ("alternate-exchange", &show(new), &show(old)));
    }
    Ok(())
}
