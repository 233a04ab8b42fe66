//! A cluster's topology as one replicated state machine: every vhost's exchanges, queues
//! (with the node each lives on) and bindings. The metadata group's log carries
//! [`CatalogCommand`]s; every member applies them in the same order with
//! [`Catalog::apply`] and so holds the same catalog, and what each apply changed comes back
//! as [`CatalogChange`]s for the member to make real in its brokers (a queue lives on its
//! home node; other members route to it by its entry here).
//!
//! Decisions that need only the topology (equivalence, exclusivity, what a delete takes with
//! it, auto-deleted exchanges) are taken here, so every member takes the same one; checks
//! that need a node's own state (argument parsing against its plugins, binding arguments for
//! its exchange types, permissions, limits) are made by the member that proposes.
//!
//! A queue's incarnation is the log index of the entry that created it: a delete names the
//! incarnation it deletes, so a delete applied again after a restart, or one that raced a
//! new declaration of the same name, never takes a later queue.
//!
//! `apply` reads no clock and no random source; every map is ordered.

use std::collections::{BTreeMap, BTreeSet};

use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use warren_codec::FieldTable;
use warren_codec::field::{decode_table, encode_table};
use warren_codec::reply_code::{ACCESS_REFUSED, RESOURCE_LOCKED};
use warren_codec::wire::{Reader, Writer};

use crate::error::{AmqpError, no_exchange, no_queue, precondition};

/// The predeclared exchanges every vhost has, as RabbitMQ has them.
pub const PREDECLARED: &[(&str, &str)] = &[
    ("amq.direct", "direct"),
    ("amq.fanout", "fanout"),
    ("amq.topic", "topic"),
    ("amq.headers", "headers"),
    ("amq.match", "headers"),
];

/// A field table as the catalog keeps it: its AMQP wire form, which is canonical (sorted
/// keys), so equal tables are equal octets. Hex in a snapshot (an array of numbers would
/// take twice the room).
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Table(Vec<u8>);

impl Serialize for Table {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut hex = String::with_capacity(self.0.len() * 2);
        for b in &self.0 {
            hex.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
            hex.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
        }
        s.serialize_str(&hex)
    }
}

impl<'de> Deserialize<'de> for Table {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let hex = String::deserialize(d)?;
        let digit = |c: u8| match c {
            b'0'..=b'9' => Ok(c - b'0'),
            b'a'..=b'f' => Ok(c - b'a' + 10),
            _ => Err(serde::de::Error::custom("a table that is not hex")),
        };
        if hex.len() % 2 != 0 {
            return Err(serde::de::Error::custom("a table of odd length"));
        }
        hex.as_bytes()
            .chunks(2)
            .map(|p| Ok(digit(p[0])? << 4 | digit(p[1])?))
            .collect::<Result<_, _>>()
            .map(Table)
    }
}

impl Table {
    /// The wire form of `t`.
    pub fn of(t: &FieldTable) -> Self {
        let mut buf = BytesMut::new();
        encode_table(&mut Writer::new(&mut buf), t);
        Table(buf.to_vec())
    }

    /// The table again; an error for octets that are not one (a corrupt entry).
    pub fn table(&self) -> Result<FieldTable, String> {
        let mut r = Reader::new(Bytes::copy_from_slice(&self.0));
        decode_table(&mut r).map_err(|e| format!("an unreadable argument table: {e}"))
    }
}

/// The connection an exclusive queue belongs to: a node's connection id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Owner {
    /// The node the connection is on.
    pub node: String,
    /// Its id there.
    pub conn: u64,
}

/// An exchange's declaration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExchangeEntry {
    /// Its type's name.
    pub kind: String,
    /// Survives a restart.
    pub durable: bool,
    /// Deleted when its last binding goes.
    pub auto_delete: bool,
    /// Refuses direct publishes.
    pub internal: bool,
    /// Declare arguments.
    pub arguments: Table,
}

/// A queue's declaration and where it lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueEntry {
    /// The log index of the entry that created it.
    pub incarnation: u64,
    /// The node that holds its messages and serves its consumers.
    pub home: String,
    /// Survives a restart of its home.
    pub durable: bool,
    /// Deleted when its last consumer goes.
    pub auto_delete: bool,
    /// The connection it is exclusive to, if it is.
    pub exclusive: Option<Owner>,
    /// Declare arguments.
    pub arguments: Table,
    /// The run of its home that declared it (see [`CatalogCommand::NodeRestarted`]).
    #[serde(default)]
    pub boot: u64,
}

/// Where a binding leads.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Target {
    /// A queue, by name.
    Queue(String),
    /// An exchange, by name.
    Exchange(String),
}

/// One binding, RabbitMQ's binding identity: source, destination, key and arguments.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BindingEntry {
    /// The exchange it routes from.
    pub source: String,
    /// Where it routes to.
    pub target: Target,
    /// Its routing key.
    pub key: String,
    /// Its arguments.
    pub arguments: Table,
}

/// One vhost's topology.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VHostCatalog {
    /// Declared exchanges (the predeclared ones are implied, not listed).
    pub exchanges: BTreeMap<String, ExchangeEntry>,
    /// Queues.
    pub queues: BTreeMap<String, QueueEntry>,
    /// Bindings.
    pub bindings: BTreeSet<BindingEntry>,
}

impl VHostCatalog {
    /// Whether exchange `name` exists (declared or predeclared).
    pub fn has_exchange(&self, name: &str) -> bool {
        self.exchanges.contains_key(name) || PREDECLARED.iter().any(|(n, _)| *n == name)
    }
}

/// A change to the topology, as the metadata group's log carries it. `vhost` names the
/// vhost; `by` is the connection that asked (exclusive queues are checked against it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CatalogCommand {
    /// exchange.declare (not passive).
    DeclareExchange {
        /// Its vhost.
        vhost: String,
        /// Its name.
        name: String,
        /// The declaration.
        entry: ExchangeEntry,
    },
    /// exchange.delete.
    DeleteExchange {
        /// Its vhost.
        vhost: String,
        /// Its name.
        name: String,
        /// Only if it is the source of no binding.
        if_unused: bool,
    },
    /// queue.declare (not passive): the queue is created on `home` unless it exists.
    DeclareQueue {
        /// Its vhost.
        vhost: String,
        /// Its name.
        name: String,
        /// Where it lives if this creates it.
        home: String,
        /// Survives a restart.
        durable: bool,
        /// Deleted with its last consumer.
        auto_delete: bool,
        /// Exclusive to the asking connection.
        exclusive: bool,
        /// Declare arguments.
        arguments: Table,
        /// The asking connection.
        by: Owner,
        /// The run of the asking node (its home, if this creates it).
        boot: u64,
    },
    /// A queue's deletion: queue.delete (checked by its home first), or its home's own
    /// (auto-delete, `x-expires`). `incarnation` names the one meant; `None` for whatever
    /// queue has the name.
    DeleteQueue {
        /// Its vhost.
        vhost: String,
        /// Its name.
        name: String,
        /// The incarnation meant.
        incarnation: Option<u64>,
        /// The asking connection, checked against an exclusive queue's owner; `None` for the
        /// home's own deletion.
        by: Option<Owner>,
    },
    /// queue.bind or exchange.bind.
    Bind {
        /// Its vhost.
        vhost: String,
        /// The binding.
        binding: BindingEntry,
        /// The asking connection.
        by: Owner,
    },
    /// queue.unbind or exchange.unbind.
    Unbind {
        /// Its vhost.
        vhost: String,
        /// The binding.
        binding: BindingEntry,
        /// The asking connection.
        by: Owner,
    },
    /// A connection closed: the queues exclusive to it go.
    OwnerGone {
        /// The connection.
        owner: Owner,
    },
    /// A node started again: the queues it held that do not survive a restart (not durable,
    /// or exclusive) go, since their messages and owners went with it; those its new run
    /// declared already stay.
    NodeRestarted {
        /// The node.
        node: String,
        /// Its new run.
        boot: u64,
    },
    /// A node has been down past the cluster's bound: the queues exclusive to its
    /// connections go (their owners went with it), as RabbitMQ drops them.
    NodeDown {
        /// The node.
        node: String,
    },
    /// A vhost was deleted: its topology goes with it.
    DropVHost {
        /// Its name.
        vhost: String,
    },
}

impl CatalogCommand {
    /// The vhost it is about, when it is about one.
    pub fn vhost(&self) -> Option<&str> {
        match self {
            CatalogCommand::DeclareExchange { vhost, .. }
            | CatalogCommand::DeleteExchange { vhost, .. }
            | CatalogCommand::DeclareQueue { vhost, .. }
            | CatalogCommand::DeleteQueue { vhost, .. }
            | CatalogCommand::Bind { vhost, .. }
            | CatalogCommand::Unbind { vhost, .. }
            | CatalogCommand::DropVHost { vhost } => Some(vhost),
            CatalogCommand::OwnerGone { .. }
            | CatalogCommand::NodeRestarted { .. }
            | CatalogCommand::NodeDown { .. } => None,
        }
    }
}

/// What an apply did that a member must make real.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CatalogChange {
    /// An exchange was created.
    ExchangeAdded {
        /// Its vhost.
        vhost: String,
        /// Its name.
        name: String,
        /// Its declaration.
        entry: ExchangeEntry,
    },
    /// An exchange was deleted.
    ExchangeRemoved {
        /// Its vhost.
        vhost: String,
        /// Its name.
        name: String,
    },
    /// A queue was created.
    QueueAdded {
        /// Its vhost.
        vhost: String,
        /// Its name.
        name: String,
        /// Its declaration and home.
        entry: QueueEntry,
    },
    /// A queue was deleted.
    QueueRemoved {
        /// Its vhost.
        vhost: String,
        /// Its name.
        name: String,
        /// The incarnation deleted.
        incarnation: u64,
        /// Its home.
        home: String,
    },
    /// A binding was added.
    BindingAdded {
        /// Its vhost.
        vhost: String,
        /// The binding.
        binding: BindingEntry,
    },
    /// A binding was removed (on its own, not with an end that was deleted).
    BindingRemoved {
        /// Its vhost.
        vhost: String,
        /// The binding.
        binding: BindingEntry,
    },
}

impl CatalogChange {
    /// The vhost it is in.
    pub fn vhost(&self) -> &str {
        match self {
            CatalogChange::ExchangeAdded { vhost, .. }
            | CatalogChange::ExchangeRemoved { vhost, .. }
            | CatalogChange::QueueAdded { vhost, .. }
            | CatalogChange::QueueRemoved { vhost, .. }
            | CatalogChange::BindingAdded { vhost, .. }
            | CatalogChange::BindingRemoved { vhost, .. } => vhost,
        }
    }
}

/// What an apply answers the asking client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CatalogReply {
    /// Done (or nothing to do).
    Done,
    /// A queue declared or found: where it lives and which incarnation it is.
    Queue {
        /// Its incarnation.
        incarnation: u64,
        /// Its home.
        home: String,
        /// Whether this declare created it.
        created: bool,
    },
    /// A refusal, as the client is told it.
    Refused {
        /// The reply code.
        code: u16,
        /// The reply text.
        text: String,
    },
}

impl CatalogReply {
    fn refused(e: AmqpError) -> Self {
        CatalogReply::Refused { code: e.code, text: e.text }
    }

    /// The refusal as an error for the client; `None` when it is not one.
    pub fn error(&self) -> Option<AmqpError> {
        match self {
            CatalogReply::Refused { code, text } => {
                Some(AmqpError { code: *code, text: text.clone(), class_id: 0, method_id: 0 })
            }
            _ => None,
        }
    }
}

/// The most exchanges, queues and bindings one cluster's catalog holds (each, over every
/// vhost), so that its snapshot, which travels in one inter-node frame, stays well within it.
pub const MAX_ENTRIES: usize = 30_000;
/// The most octets of arguments one entry has.
pub const MAX_ENTRY_ARGUMENTS: usize = 16 << 10;
/// The most octets of arguments the whole catalog holds.
pub const MAX_ARGUMENTS: usize = 8 << 20;

/// The cluster's topology.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Catalog {
    vhosts: BTreeMap<String, VHostCatalog>,
    /// The log index of the last command applied.
    #[serde(default)]
    applied: u64,
}

impl Catalog {
    /// An empty catalog.
    pub fn new() -> Self {
        Self::default()
    }

    /// Vhost `name`'s topology, if it has any.
    pub fn vhost(&self, name: &str) -> Option<&VHostCatalog> {
        self.vhosts.get(name)
    }

    /// Whether queues exclusive to connections of `node` are in it.
    pub fn has_exclusive_of(&self, node: &str) -> bool {
        self.vhosts.values().any(|v| v.queues.values().any(|q| q.home == node && q.exclusive.is_some()))
    }

    /// Whether an entry with `arguments` is more than the catalog takes (alone, or with what
    /// it holds).
    fn too_large(&self, arguments: &Table) -> bool {
        let held: usize = self
            .vhosts
            .values()
            .map(|v| {
                v.exchanges.values().map(|x| x.arguments.0.len()).sum::<usize>()
                    + v.queues.values().map(|q| q.arguments.0.len()).sum::<usize>()
                    + v.bindings.iter().map(|b| b.arguments.0.len()).sum::<usize>()
            })
            .sum();
        arguments.0.len() > MAX_ENTRY_ARGUMENTS || held + arguments.0.len() > MAX_ARGUMENTS
    }

    /// How many of something every vhost holds together.
    fn count(&self, of: impl Fn(&VHostCatalog) -> usize) -> usize {
        self.vhosts.values().map(of).sum()
    }

    /// The log index of the last command applied (0 before any).
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// Every vhost with topology.
    pub fn vhosts(&self) -> impl Iterator<Item = (&String, &VHostCatalog)> {
        self.vhosts.iter()
    }

    /// Applies `command`, logged at `index`: the client's answer and what changed. A refused
    /// command changes nothing.
    pub fn apply(&mut self, index: u64, command: CatalogCommand) -> (CatalogReply, Vec<CatalogChange>) {
        let mut changes = Vec::new();
        let vhost = command.vhost().map(str::to_string);
        self.applied = self.applied.max(index);
        let reply = match self.step(index, command, &mut changes) {
            Ok(r) => r,
            Err(e) => {
                debug_assert!(changes.is_empty(), "a refused command changed nothing");
                CatalogReply::refused(e)
            }
        };
        // One form for one state: a vhost with nothing in it is not kept.
        let empty = |c: &VHostCatalog| c.exchanges.is_empty() && c.queues.is_empty() && c.bindings.is_empty();
        match vhost {
            Some(v) => {
                if self.vhosts.get(&v).is_some_and(empty) {
                    self.vhosts.remove(&v);
                }
            }
            None => self.vhosts.retain(|_, c| !empty(c)),
        }
        (reply, changes)
    }

    fn step(
        &mut self,
        index: u64,
        command: CatalogCommand,
        changes: &mut Vec<CatalogChange>,
    ) -> Result<CatalogReply, AmqpError> {
        match command {
            CatalogCommand::DeclareExchange { vhost, name, entry } => {
                let full =
                    self.count(|v| v.exchanges.len()) >= MAX_ENTRIES || self.too_large(&entry.arguments);
                let v = self.vhosts.entry(vhost.clone()).or_default();
                if let Some(x) = v.exchanges.get(&name) {
                    check_exchange_equivalent(&vhost, &name, &entry, x)?;
                    return Ok(CatalogReply::Done);
                }
                if PREDECLARED.iter().any(|(n, _)| *n == name) || name.starts_with("amq.") {
                    return Err(AmqpError::new(
                        ACCESS_REFUSED,
                        format!("exchange name '{name}' contains reserved prefix 'amq.*'"),
                    ));
                }
                if full {
                    return Err(precondition(format!(
                        "cannot declare exchange '{name}': the catalog is full"
                    )));
                }
                v.exchanges.insert(name.clone(), entry.clone());
                changes.push(CatalogChange::ExchangeAdded { vhost, name, entry });
                Ok(CatalogReply::Done)
            }
            CatalogCommand::DeleteExchange { vhost, name, if_unused } => {
                if name.starts_with("amq.") {
                    return Err(AmqpError::new(
                        ACCESS_REFUSED,
                        format!("deletion of system exchange '{name}' in vhost '{vhost}' not allowed"),
                    ));
                }
                let Some(v) = self.vhosts.get_mut(&vhost) else {
                    return Ok(CatalogReply::Done);
                };
                if !v.exchanges.contains_key(&name) {
                    return Ok(CatalogReply::Done);
                }
                if if_unused && v.bindings.iter().any(|b| b.source == name) {
                    return Err(precondition(format!("exchange '{name}' in vhost '{vhost}' in use")));
                }
                remove_exchange(&vhost, v, &name, changes);
                Ok(CatalogReply::Done)
            }
            CatalogCommand::DeclareQueue {
                vhost,
                name,
                home,
                durable,
                auto_delete,
                exclusive,
                arguments,
                by,
                boot,
            } => {
                let full = self.count(|v| v.queues.len()) >= MAX_ENTRIES || self.too_large(&arguments);
                let v = self.vhosts.entry(vhost.clone()).or_default();
                if let Some(q) = v.queues.get(&name) {
                    // As a broker checks a redeclare: another connection's exclusive queue
                    // first (405), then equivalence (406), then the exclusive flag.
                    if q.exclusive.as_ref().is_some_and(|o| *o != by) {
                        return Err(locked(&vhost, &name));
                    }
                    check_queue_equivalent(&vhost, &name, q, durable, auto_delete, &arguments)?;
                    // RabbitMQ's check_exclusivity: the owner, saying exclusive as it did.
                    let asked = exclusive.then_some(&by);
                    if q.exclusive.as_ref() != asked {
                        return Err(locked(&vhost, &name));
                    }
                    return Ok(CatalogReply::Queue {
                        incarnation: q.incarnation,
                        home: q.home.clone(),
                        created: false,
                    });
                }
                if full {
                    return Err(precondition(format!("cannot declare queue '{name}': the catalog is full")));
                }
                let entry = QueueEntry {
                    incarnation: index,
                    home: home.clone(),
                    durable,
                    auto_delete,
                    exclusive: exclusive.then_some(by),
                    arguments,
                    boot,
                };
                v.queues.insert(name.clone(), entry.clone());
                changes.push(CatalogChange::QueueAdded { vhost, name, entry });
                Ok(CatalogReply::Queue { incarnation: index, home, created: true })
            }
            CatalogCommand::DeleteQueue { vhost, name, incarnation, by } => {
                let Some(v) = self.vhosts.get_mut(&vhost) else {
                    return Ok(CatalogReply::Done);
                };
                let Some(q) = v.queues.get(&name) else {
                    return Ok(CatalogReply::Done);
                };
                if incarnation.is_some_and(|i| i != q.incarnation) {
                    return Ok(CatalogReply::Done);
                }
                if let Some(by) = &by
                    && q.exclusive.as_ref().is_some_and(|o| o != by)
                {
                    return Err(locked(&vhost, &name));
                }
                remove_queue(&vhost, v, &name, changes);
                Ok(CatalogReply::Done)
            }
            CatalogCommand::Bind { vhost, binding, by } => {
                let full =
                    self.count(|v| v.bindings.len()) >= MAX_ENTRIES || self.too_large(&binding.arguments);
                let v = self.vhosts.entry(vhost.clone()).or_default();
                check_binding_ends(&vhost, v, &binding, &by)?;
                if full {
                    return Err(precondition(format!(
                        "cannot bind to '{}' in vhost '{vhost}': the catalog is full",
                        binding.source
                    )));
                }
                if v.bindings.insert(binding.clone()) {
                    changes.push(CatalogChange::BindingAdded { vhost, binding });
                }
                Ok(CatalogReply::Done)
            }
            CatalogCommand::Unbind { vhost, binding, by } => {
                let Some(v) = self.vhosts.get_mut(&vhost) else {
                    return Ok(CatalogReply::Done);
                };
                // Unbinding what is not bound, or to or from what does not exist, succeeds,
                // as in RabbitMQ; an exclusive queue still refuses other connections.
                if let Target::Queue(name) = &binding.target
                    && v.queues.get(name).is_some_and(|q| q.exclusive.as_ref().is_some_and(|o| *o != by))
                {
                    return Err(locked(&vhost, name));
                }
                if v.bindings.remove(&binding) {
                    let source = binding.source.clone();
                    changes.push(CatalogChange::BindingRemoved { vhost: vhost.clone(), binding });
                    auto_delete_exchange(&vhost, v, &source, changes);
                }
                Ok(CatalogReply::Done)
            }
            CatalogCommand::OwnerGone { owner } => {
                self.remove_queues_where(|q| q.exclusive.as_ref() == Some(&owner), changes);
                Ok(CatalogReply::Done)
            }
            CatalogCommand::NodeRestarted { node, boot } => {
                self.remove_queues_where(
                    |q| q.home == node && q.boot != boot && (!q.durable || q.exclusive.is_some()),
                    changes,
                );
                Ok(CatalogReply::Done)
            }
            CatalogCommand::NodeDown { node } => {
                self.remove_queues_where(|q| q.home == node && q.exclusive.is_some(), changes);
                Ok(CatalogReply::Done)
            }
            CatalogCommand::DropVHost { vhost } => {
                if let Some(v) = self.vhosts.remove(&vhost) {
                    for (name, q) in v.queues {
                        changes.push(CatalogChange::QueueRemoved {
                            vhost: vhost.clone(),
                            name,
                            incarnation: q.incarnation,
                            home: q.home,
                        });
                    }
                    for name in v.exchanges.into_keys() {
                        changes.push(CatalogChange::ExchangeRemoved { vhost: vhost.clone(), name });
                    }
                }
                Ok(CatalogReply::Done)
            }
        }
    }

    /// Removes, in every vhost, the queues `gone` picks (and their bindings).
    fn remove_queues_where(&mut self, gone: impl Fn(&QueueEntry) -> bool, changes: &mut Vec<CatalogChange>) {
        for (vhost, v) in &mut self.vhosts {
            let names: Vec<String> =
                v.queues.iter().filter(|(_, q)| gone(q)).map(|(n, _)| n.clone()).collect();
            for name in names {
                remove_queue(vhost, v, &name, changes);
            }
        }
    }

    /// Refuses a catalog that breaks its own rules (a snapshot from a faulty or hostile
    /// peer): a binding whose ends do not exist, an exchange under a reserved name.
    pub fn check(&self) -> Result<(), String> {
        for (vhost, v) in &self.vhosts {
            if let Some(name) = v.exchanges.keys().find(|n| n.starts_with("amq.") || n.is_empty()) {
                return Err(format!("exchange '{name}' in vhost '{vhost}' has a reserved name"));
            }
            for b in &v.bindings {
                let ends = v.has_exchange(&b.source)
                    && match &b.target {
                        Target::Queue(q) => v.queues.contains_key(q),
                        Target::Exchange(x) => v.has_exchange(x),
                    };
                if !ends {
                    return Err(format!(
                        "a binding from '{}' in vhost '{vhost}' has an end missing",
                        b.source
                    ));
                }
            }
        }
        Ok(())
    }
}

/// A binding's source and destination must exist, neither may be the default exchange, and
/// an exclusive queue must be the asker's.
fn check_binding_ends(vhost: &str, v: &VHostCatalog, b: &BindingEntry, by: &Owner) -> Result<(), AmqpError> {
    let default = |n: &str| n.is_empty() || n == "amq.default";
    let refused = || AmqpError::new(ACCESS_REFUSED, "operation not permitted on the default exchange");
    match &b.target {
        Target::Queue(name) => {
            let q = v.queues.get(name).ok_or_else(|| no_queue(vhost, name))?;
            if q.exclusive.as_ref().is_some_and(|o| o != by) {
                return Err(locked(vhost, name));
            }
        }
        Target::Exchange(name) => {
            if default(name) {
                return Err(refused());
            }
            if !v.has_exchange(name) {
                return Err(no_exchange(vhost, name));
            }
        }
    }
    if default(&b.source) {
        return Err(refused());
    }
    if !v.has_exchange(&b.source) {
        return Err(no_exchange(vhost, &b.source));
    }
    Ok(())
}

/// Removes queue `name` and every binding to it, cascading auto-delete.
fn remove_queue(vhost: &str, v: &mut VHostCatalog, name: &str, changes: &mut Vec<CatalogChange>) {
    let Some(q) = v.queues.remove(name) else {
        return;
    };
    changes.push(CatalogChange::QueueRemoved {
        vhost: vhost.to_string(),
        name: name.to_string(),
        incarnation: q.incarnation,
        home: q.home,
    });
    unbind_target(vhost, v, &Target::Queue(name.to_string()), changes);
}

/// Removes exchange `name`, the bindings from it and those to it, cascading auto-delete.
fn remove_exchange(vhost: &str, v: &mut VHostCatalog, name: &str, changes: &mut Vec<CatalogChange>) {
    if v.exchanges.remove(name).is_none() {
        return;
    }
    changes.push(CatalogChange::ExchangeRemoved { vhost: vhost.to_string(), name: name.to_string() });
    v.bindings.retain(|b| b.source != name);
    unbind_target(vhost, v, &Target::Exchange(name.to_string()), changes);
}

/// Drops the bindings to `target` (which went with it) and auto-deletes the exchanges that
/// were left without bindings.
fn unbind_target(vhost: &str, v: &mut VHostCatalog, target: &Target, changes: &mut Vec<CatalogChange>) {
    let mut sources = BTreeSet::new();
    v.bindings.retain(|b| {
        let keep = b.target != *target;
        if !keep {
            sources.insert(b.source.clone());
        }
        keep
    });
    for source in sources {
        auto_delete_exchange(vhost, v, &source, changes);
    }
}

fn auto_delete_exchange(vhost: &str, v: &mut VHostCatalog, name: &str, changes: &mut Vec<CatalogChange>) {
    let unused = !v.bindings.iter().any(|b| b.source == name);
    if unused && v.exchanges.get(name).is_some_and(|x| x.auto_delete) {
        remove_exchange(vhost, v, name, changes);
    }
}

/// RabbitMQ's 405 for a queue another connection holds exclusively.
fn locked(vhost: &str, name: &str) -> AmqpError {
    AmqpError::new(
        RESOURCE_LOCKED,
        format!(
            "cannot obtain exclusive access to locked queue '{name}' in vhost '{vhost}'. It could be \
             originally declared on another connection or the exclusive property value does \
             not match that of the original declaration."
        ),
    )
}

fn check_exchange_equivalent(
    vhost: &str,
    name: &str,
    new: &ExchangeEntry,
    old: &ExchangeEntry,
) -> Result<(), AmqpError> {
    let (new_args, old_args) =
        (new.arguments.table().unwrap_or_default(), old.arguments.table().unwrap_or_default());
    crate::broker::check_exchange_equivalent(
        vhost,
        name,
        (&new.kind, new.durable, new.auto_delete, new.internal, &new_args),
        (&old.kind, old.durable, old.auto_delete, old.internal, &old_args),
    )
}

fn check_queue_equivalent(
    vhost: &str,
    name: &str,
    q: &QueueEntry,
    durable: bool,
    auto_delete: bool,
    arguments: &Table,
) -> Result<(), AmqpError> {
    let (new_args, old_args) =
        (arguments.table().unwrap_or_default(), q.arguments.table().unwrap_or_default());
    crate::queue::check_equivalent(
        vhost,
        name,
        (q.durable, q.auto_delete, &old_args),
        (durable, auto_delete, &new_args),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use warren_codec::FieldValue;

    fn owner(conn: u64) -> Owner {
        Owner { node: "n1".into(), conn }
    }

    fn declare_queue(name: &str, home: &str, exclusive: bool, by: u64) -> CatalogCommand {
        CatalogCommand::DeclareQueue {
            vhost: "/".into(),
            name: name.into(),
            home: home.into(),
            durable: !exclusive,
            auto_delete: false,
            exclusive,
            arguments: Table::default(),
            by: owner(by),
            boot: 1,
        }
    }

    fn exchange(auto_delete: bool) -> ExchangeEntry {
        ExchangeEntry {
            kind: "direct".into(),
            durable: true,
            auto_delete,
            internal: false,
            arguments: Table::default(),
        }
    }

    fn bind(source: &str, target: Target, key: &str) -> CatalogCommand {
        CatalogCommand::Bind {
            vhost: "/".into(),
            binding: BindingEntry {
                source: source.into(),
                target,
                key: key.into(),
                arguments: Table::default(),
            },
            by: owner(1),
        }
    }

    #[test]
    fn a_queue_is_created_once_at_the_index_that_declared_it_and_found_after() {
        let mut c = Catalog::new();
        let (r, changes) = c.apply(7, declare_queue("q", "n2", false, 1));
        assert_eq!(r, CatalogReply::Queue { incarnation: 7, home: "n2".into(), created: true });
        assert_eq!(changes.len(), 1);
        let (r, changes) = c.apply(9, declare_queue("q", "n3", false, 2));
        assert_eq!(r, CatalogReply::Queue { incarnation: 7, home: "n2".into(), created: false });
        assert!(changes.is_empty());
        // Inequivalent: RabbitMQ's 406 and words.
        let mut args = FieldTable::new();
        args.insert("x-max-length".into(), FieldValue::I32(5));
        let (r, changes) = c.apply(
            10,
            CatalogCommand::DeclareQueue {
                vhost: "/".into(),
                name: "q".into(),
                home: "n1".into(),
                durable: true,
                auto_delete: false,
                exclusive: false,
                arguments: Table::of(&args),
                by: owner(1),
                boot: 1,
            },
        );
        let e = r.error().expect("refused");
        let table = Table::of(&args);
        let json = serde_json::to_string(&table).expect("json");
        assert!(json.trim_matches('"').bytes().all(|b| b.is_ascii_hexdigit()), "{json}");
        assert_eq!(serde_json::from_str::<Table>(&json).expect("parse"), table);
        assert!(
            serde_json::from_str::<Table>("\"0g\"").is_err()
                && serde_json::from_str::<Table>("\"abc\"").is_err()
        );
        assert_eq!(e.code, 406);
        assert!(e.text.contains("inequivalent arg 'x-max-length'"), "{}", e.text);
        assert!(changes.is_empty());
    }

    #[test]
    fn an_exclusive_queue_refuses_other_connections_and_goes_with_its_owner() {
        let mut c = Catalog::new();
        c.apply(1, declare_queue("x", "n1", true, 5));
        assert_eq!(c.apply(2, declare_queue("x", "n1", true, 6)).0.error().map(|e| e.code), Some(405));
        assert_eq!(
            c.apply(3, bind("amq.direct", Target::Queue("x".into()), "k")).0.error().map(|e| e.code),
            Some(405)
        );
        let del = CatalogCommand::DeleteQueue {
            vhost: "/".into(),
            name: "x".into(),
            incarnation: None,
            by: Some(owner(6)),
        };
        assert_eq!(c.apply(4, del).0.error().map(|e| e.code), Some(405));
        let (_, changes) = c.apply(5, CatalogCommand::OwnerGone { owner: owner(5) });
        assert!(
            matches!(&changes[..], [CatalogChange::QueueRemoved { name, incarnation: 1, .. }] if name == "x")
        );
        assert!(c.vhost("/").is_none());
    }

    #[test]
    fn a_delete_takes_only_the_incarnation_it_names() {
        let mut c = Catalog::new();
        c.apply(1, declare_queue("q", "n1", false, 1));
        let delete = |i| CatalogCommand::DeleteQueue {
            vhost: "/".into(),
            name: "q".into(),
            incarnation: Some(i),
            by: None,
        };
        c.apply(2, delete(1));
        c.apply(3, declare_queue("q", "n1", false, 1));
        // The first delete applied again (a replay) leaves the new queue.
        let (_, changes) = c.apply(4, delete(1));
        assert!(changes.is_empty());
        assert_eq!(c.vhost("/").and_then(|v| v.queues.get("q")).map(|q| q.incarnation), Some(3));
    }

    #[test]
    fn deleting_a_queue_drops_its_bindings_and_auto_deletes_their_exchange() {
        let mut c = Catalog::new();
        c.apply(
            1,
            CatalogCommand::DeclareExchange { vhost: "/".into(), name: "ad".into(), entry: exchange(true) },
        );
        c.apply(2, declare_queue("q", "n1", false, 1));
        c.apply(3, bind("ad", Target::Queue("q".into()), "k"));
        let (_, changes) = c.apply(
            4,
            CatalogCommand::DeleteQueue { vhost: "/".into(), name: "q".into(), incarnation: None, by: None },
        );
        assert_eq!(changes.len(), 2, "{changes:?}");
        assert!(matches!(&changes[1], CatalogChange::ExchangeRemoved { name, .. } if name == "ad"));
        assert!(c.vhost("/").is_none(), "nothing is left");
    }

    #[test]
    fn bindings_need_both_ends_and_never_the_default_exchange() {
        let mut c = Catalog::new();
        assert_eq!(
            c.apply(1, bind("amq.direct", Target::Queue("nope".into()), "k")).0.error().map(|e| e.code),
            Some(404)
        );
        c.apply(2, declare_queue("q", "n1", false, 1));
        assert_eq!(
            c.apply(3, bind("nope", Target::Queue("q".into()), "k")).0.error().map(|e| e.code),
            Some(404)
        );
        assert_eq!(c.apply(4, bind("", Target::Queue("q".into()), "k")).0.error().map(|e| e.code), Some(403));
        assert_eq!(c.apply(5, bind("amq.direct", Target::Queue("q".into()), "k")).1.len(), 1);
        // The same binding again is no change.
        assert!(c.apply(6, bind("amq.direct", Target::Queue("q".into()), "k")).1.is_empty());
        let in_use =
            CatalogCommand::DeleteExchange { vhost: "/".into(), name: "amq.direct".into(), if_unused: false };
        assert_eq!(c.apply(7, in_use).0.error().map(|e| e.code), Some(403));
    }

    #[test]
    fn arguments_too_large_for_a_snapshot_are_refused() {
        let mut c = Catalog::new();
        let mut args = FieldTable::new();
        args.insert("x-big".into(), FieldValue::str(&"a".repeat(MAX_ENTRY_ARGUMENTS)));
        let mut big = declare_queue("big", "n1", false, 1);
        if let CatalogCommand::DeclareQueue { arguments, .. } = &mut big {
            *arguments = Table::of(&args);
        }
        let (r, changes) = c.apply(1, big);
        assert_eq!(r.error().map(|e| e.code), Some(406));
        assert!(changes.is_empty() && c.vhost("/").is_none());
    }

    #[test]
    fn a_restarted_node_loses_its_transient_and_exclusive_queues_only() {
        let mut c = Catalog::new();
        c.apply(1, declare_queue("durable", "n1", false, 1));
        c.apply(2, declare_queue("excl", "n1", true, 1));
        c.apply(3, declare_queue("elsewhere", "n2", true, 1));
        // Declared by n1's new run (boot 2) before its restart was committed: it stays.
        let mut fresh = declare_queue("fresh", "n1", true, 9);
        if let CatalogCommand::DeclareQueue { boot, .. } = &mut fresh {
            *boot = 2;
        }
        c.apply(4, fresh);
        c.apply(5, CatalogCommand::NodeRestarted { node: "n1".into(), boot: 2 });
        let v = c.vhost("/").expect("vhost");
        assert_eq!(v.queues.keys().collect::<Vec<_>>(), ["durable", "elsewhere", "fresh"]);
    }

    /// A member's image of the topology, built from the changes alone, with the rules a
    /// broker follows when it makes them real: a deleted end takes its bindings with it.
    #[derive(Default, Debug, PartialEq)]
    struct Image {
        exchanges: BTreeMap<(String, String), ExchangeEntry>,
        queues: BTreeMap<(String, String), QueueEntry>,
        bindings: BTreeSet<(String, BindingEntry)>,
    }

    impl Image {
        fn take(&mut self, change: CatalogChange) {
            match change {
                CatalogChange::ExchangeAdded { vhost, name, entry } => {
                    self.exchanges.insert((vhost, name), entry);
                }
                CatalogChange::ExchangeRemoved { vhost, name } => {
                    self.exchanges.remove(&(vhost.clone(), name.clone()));
                    self.bindings.retain(|(v, b)| {
                        *v != vhost || (b.source != name && b.target != Target::Exchange(name.clone()))
                    });
                }
                CatalogChange::QueueAdded { vhost, name, entry } => {
                    self.queues.insert((vhost, name), entry);
                }
                CatalogChange::QueueRemoved { vhost, name, incarnation, .. } => {
                    let q = self.queues.remove(&(vhost.clone(), name.clone()));
                    assert_eq!(q.map(|q| q.incarnation), Some(incarnation));
                    self.bindings.retain(|(v, b)| *v != vhost || b.target != Target::Queue(name.clone()));
                }
                CatalogChange::BindingAdded { vhost, binding } => {
                    assert!(self.bindings.insert((vhost, binding)));
                }
                CatalogChange::BindingRemoved { vhost, binding } => {
                    assert!(self.bindings.remove(&(vhost, binding)));
                }
            }
        }

        fn of(c: &Catalog) -> Image {
            let mut image = Image::default();
            for (vhost, v) in c.vhosts() {
                for (n, x) in &v.exchanges {
                    image.exchanges.insert((vhost.clone(), n.clone()), x.clone());
                }
                for (n, q) in &v.queues {
                    image.queues.insert((vhost.clone(), n.clone()), q.clone());
                }
                for b in &v.bindings {
                    image.bindings.insert((vhost.clone(), b.clone()));
                }
            }
            image
        }
    }

    fn command() -> impl Strategy<Value = CatalogCommand> {
        let vhost = || prop::sample::select(vec!["/", "v"]).prop_map(str::to_string);
        let name = || prop::sample::select(vec!["a", "b", "c"]).prop_map(str::to_string);
        let node = || prop::sample::select(vec!["n1", "n2"]).prop_map(str::to_string);
        let by = || (node(), 0u64..3).prop_map(|(node, conn)| Owner { node, conn });
        let target = || prop_oneof![name().prop_map(Target::Queue), name().prop_map(Target::Exchange)];
        let binding = move || {
            (
                prop::sample::select(vec!["a", "b", "amq.direct", ""]),
                target(),
                prop::sample::select(vec!["k", "j"]),
            )
                .prop_map(|(s, t, k)| BindingEntry {
                    source: s.to_string(),
                    target: t,
                    key: k.to_string(),
                    arguments: Table::default(),
                })
        };
        prop_oneof![
            (vhost(), name(), any::<bool>(), any::<bool>()).prop_map(
                |(vhost, name, auto_delete, durable)| {
                    CatalogCommand::DeclareExchange {
                        vhost,
                        name,
                        entry: ExchangeEntry { durable, ..exchange(auto_delete) },
                    }
                }
            ),
            (vhost(), name(), any::<bool>()).prop_map(|(vhost, name, if_unused)| {
                CatalogCommand::DeleteExchange { vhost, name, if_unused }
            }),
            (vhost(), name(), node(), any::<bool>(), any::<bool>(), by(), 0u64..2).prop_map(
                |(vhost, name, home, durable, exclusive, by, boot)| CatalogCommand::DeclareQueue {
                    vhost,
                    name,
                    home,
                    durable,
                    auto_delete: false,
                    exclusive,
                    arguments: Table::default(),
                    by,
                    boot,
                }
            ),
            (vhost(), name(), prop::option::of(0u64..40), prop::option::of(by())).prop_map(
                |(vhost, name, incarnation, by)| CatalogCommand::DeleteQueue { vhost, name, incarnation, by }
            ),
            (vhost(), binding(), by()).prop_map(|(vhost, binding, by)| CatalogCommand::Bind {
                vhost,
                binding,
                by
            }),
            (vhost(), binding(), by()).prop_map(|(vhost, binding, by)| CatalogCommand::Unbind {
                vhost,
                binding,
                by
            }),
            by().prop_map(|owner| CatalogCommand::OwnerGone { owner }),
            (node(), 0u64..2).prop_map(|(node, boot)| CatalogCommand::NodeRestarted { node, boot }),
            node().prop_map(|node| CatalogCommand::NodeDown { node }),
            vhost().prop_map(|vhost| CatalogCommand::DropVHost { vhost }),
        ]
    }

    proptest! {
        /// Whatever the log: the catalog keeps its own rules; a member that makes only the
        /// changes real holds what the catalog holds; a snapshot taken anywhere, restored
        /// and fed the rest of the log, ends where the catalog does; a refused command
        /// changes nothing.
        #[test]
        fn members_that_apply_the_same_log_agree(
            log in prop::collection::vec(command(), 0..60),
            cut in 0usize..60,
        ) {
            let mut catalog = Catalog::new();
            let mut image = Image::default();
            let mut restored: Option<Catalog> = None;
            for (i, cmd) in log.iter().enumerate() {
                if i == cut.min(log.len()) {
                    let json = serde_json::to_string(&catalog).expect("json");
                    let back: Catalog = serde_json::from_str(&json).expect("parse");
                    prop_assert!(back.check().is_ok());
                    restored = Some(back);
                }
                let before = catalog.clone();
                let (reply, changes) = catalog.apply(i as u64 + 1, cmd.clone());
                if reply.error().is_some() {
                    prop_assert_eq!(&before.vhosts, &catalog.vhosts);
                }
                prop_assert_eq!(catalog.applied(), i as u64 + 1);
                for change in changes {
                    image.take(change);
                }
                if let Some(r) = restored.as_mut() {
                    r.apply(i as u64 + 1, cmd.clone());
                }
                prop_assert!(catalog.check().is_ok(), "{:?}", catalog.check());
            }
            prop_assert_eq!(Image::of(&catalog), image);
            if let Some(r) = restored {
                prop_assert_eq!(r, catalog);
            }
        }
    }
}
