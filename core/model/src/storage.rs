//! What the broker asks of durable storage, and [`MemoryStore`], which keeps it in memory.
//!
//! The broker calls a [`Storage`] while it changes state: a persistent message entering a
//! durable queue is [`Storage::put`], a message leaving it is [`Storage::remove`]d, and
//! durable topology goes through [`Storage::meta`]. Writes are cheap appends; making them
//! durable (fsync) is the driver's job, off the broker's path: the driver reports the
//! position it has synced with [`crate::Broker::storage_synced`], and publisher confirms wait
//! for it. The store is given to the broker by the driver, so this crate stays free of I/O.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use warren_codec::FieldTable;

use crate::message::Message;

/// A queue's incarnation id: never reused, even after the queue is deleted.
pub type QueueId = u64;

/// Where the store keeps an entry, opaque to the broker; handed back on removal so the store
/// can reclaim space without an index of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct StoreRef(pub u64);

/// The state of a stored queue entry besides the message itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EntryState {
    /// Times it went back to the queue after a delivery (`x-delivery-count`).
    pub delivery_count: u32,
    /// Wall-clock milliseconds when it entered the queue.
    pub enqueued_ms: u64,
    /// Wall-clock milliseconds when its TTL runs out.
    pub expires_at_ms: Option<u64>,
    /// Wall-clock milliseconds until which a retry policy holds it out of the queue.
    pub ready_at_ms: Option<u64>,
}

/// A queue entry as recovered from the store.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEntry {
    /// The queue it is in.
    pub queue: QueueId,
    /// Its position in the queue's publish order.
    pub seq: u64,
    /// Its state.
    pub state: EntryState,
    /// Where the store keeps it.
    pub at: StoreRef,
    /// The message; its body may be a view of the store's files.
    pub message: Arc<Message>,
}

/// A durable queue's declaration.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueRecord {
    /// Incarnation id.
    pub id: QueueId,
    /// Its vhost.
    pub vhost: String,
    /// Name.
    pub name: String,
    /// Deleted when its last consumer goes.
    pub auto_delete: bool,
    /// Declare arguments.
    pub arguments: FieldTable,
}

/// A durable exchange's declaration.
#[derive(Debug, Clone, PartialEq)]
pub struct ExchangeRecord {
    /// Its vhost.
    pub vhost: String,
    /// Name.
    pub name: String,
    /// Type name.
    pub kind: String,
    /// Deleted when its last binding goes.
    pub auto_delete: bool,
    /// Refuses direct publishes.
    pub internal: bool,
    /// Declare arguments.
    pub arguments: FieldTable,
}

/// A binding between durable ends.
#[derive(Debug, Clone, PartialEq)]
pub struct BindingRecord {
    /// The vhost of both ends.
    pub vhost: String,
    /// Source exchange.
    pub source: String,
    /// Destination name.
    pub destination: String,
    /// Whether the destination is a queue (else an exchange).
    pub to_queue: bool,
    /// Binding key.
    pub key: String,
    /// Binding arguments.
    pub arguments: FieldTable,
}

/// A change to durable topology.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaOp {
    /// A durable queue was declared.
    PutQueue(QueueRecord),
    /// A durable queue was deleted, with every entry in it.
    DeleteQueue(QueueId),
    /// A durable exchange was declared.
    PutExchange(ExchangeRecord),
    /// A durable exchange was deleted.
    DeleteExchange {
        /// Its vhost.
        vhost: String,
        /// Its name.
        name: String,
    },
    /// A binding between durable ends was added.
    Bind(BindingRecord),
    /// It was removed.
    Unbind(BindingRecord),
}

/// Everything durable, as found at start-up.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Recovered {
    /// Durable queues.
    pub queues: Vec<QueueRecord>,
    /// Durable exchanges.
    pub exchanges: Vec<ExchangeRecord>,
    /// Bindings between durable ends.
    pub bindings: Vec<BindingRecord>,
    /// Entries of those queues, by queue then seq.
    pub entries: Vec<StoredEntry>,
    /// The lowest queue id never used: new queues must not reuse a deleted queue's id.
    pub next_queue_id: QueueId,
    /// Whether the last run stopped cleanly; after a crash, any entry may have been delivered.
    pub clean: bool,
}

/// Why the store could not do something.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StorageError {
    /// A read or write failed.
    #[error("storage I/O error: {0}")]
    Io(String),
    /// The disk has no room for the write.
    #[error("storage full: {0}")]
    Full(String),
    /// Files are damaged beyond what recovery repairs.
    #[error("storage corrupt: {0}")]
    Corrupt(String),
}

/// Durable storage for queue entries and topology.
pub trait Storage: Send + std::fmt::Debug {
    /// Everything stored, for start-up. Called once, before any write.
    fn recover(&mut self) -> Result<Recovered, StorageError>;

    /// Stores `message` as entry `seq` of `queue`, superseding the entry at `replaces` (a retry
    /// rewrites a message with new headers). Returns where it is kept, and the body as the store
    /// holds it, which the broker keeps in place of its own copy so the body can be paged out.
    fn put(
        &mut self,
        queue: QueueId,
        seq: u64,
        message: &Message,
        state: &EntryState,
        replaces: Option<StoreRef>,
    ) -> Result<(StoreRef, Option<Bytes>), StorageError>;

    /// Records that entry `seq` of `queue` went back to the queue after `delivery_count`
    /// deliveries.
    fn set_delivery_count(
        &mut self,
        queue: QueueId,
        seq: u64,
        at: StoreRef,
        delivery_count: u32,
    ) -> Result<(), StorageError>;

    /// Forgets entry `seq` of `queue`: acknowledged, dead-lettered, expired or dropped.
    fn remove(&mut self, queue: QueueId, seq: u64, at: StoreRef) -> Result<(), StorageError>;

    /// Records a topology change.
    fn meta(&mut self, op: &MetaOp) -> Result<(), StorageError>;

    /// Writes an index of every stored queue (`queues`) and its entries (by queue, then seq),
    /// which the next start may load instead of replaying everything. Called at a clean stop,
    /// after the last write; a store with nothing to gain keeps this default.
    fn checkpoint(&mut self, queues: &[QueueId], entries: &[StoredEntry]) -> Result<(), StorageError> {
        let _ = (queues, entries);
        Ok(())
    }

    /// The position after the last write. Writes are durable once the driver's sync has
    /// reached it; the in-memory store is always there.
    fn written(&self) -> u64;

    /// Decides whether some stored entries should be written again so the space of what died
    /// around them can be reclaimed, up to about `budget` octets of them; the broker then
    /// rewrites (with [`Storage::put`] and `replaces`) each entry for which
    /// [`Storage::should_move`] says so. Returns whether there is anything to move. A store
    /// without such space to reclaim keeps this default.
    fn plan_compaction(&mut self, budget: u64) -> bool {
        let _ = budget;
        false
    }

    /// Whether the entry stored at `at` is one the last [`Storage::plan_compaction`] moves.
    fn should_move(&self, at: StoreRef) -> bool {
        let _ = at;
        false
    }
}

impl Recovered {
    /// Splits what was recovered between the brokers of a node, one per vhost: `broker_of`
    /// names the broker a vhost's records go to. Each part holds its vhosts' queues,
    /// exchanges and bindings and the entries of those queues, and `clean` and
    /// `next_queue_id` as recovered. Entries of no recovered queue go nowhere: a restore
    /// drops them too.
    pub fn split_by_vhost<K: Ord + Clone>(self, broker_of: impl Fn(&str) -> K) -> BTreeMap<K, Recovered> {
        let (clean, next_queue_id) = (self.clean, self.next_queue_id);
        let mut parts: BTreeMap<K, Recovered> = BTreeMap::new();
        let mut queue_home = BTreeMap::new();
        let blank = || Recovered { clean, next_queue_id, ..Default::default() };
        for q in self.queues {
            let k = broker_of(&q.vhost);
            queue_home.insert(q.id, k.clone());
            parts.entry(k).or_insert_with(blank).queues.push(q);
        }
        for x in self.exchanges {
            parts.entry(broker_of(&x.vhost)).or_insert_with(blank).exchanges.push(x);
        }
        for b in self.bindings {
            parts.entry(broker_of(&b.vhost)).or_insert_with(blank).bindings.push(b);
        }
        for e in self.entries {
            if let Some(p) = queue_home.get(&e.queue).and_then(|k| parts.get_mut(k)) {
                p.entries.push(e);
            }
        }
        parts
    }
}

/// One store shared by the brokers of a node (one per vhost): each holds a clone, and every
/// call takes the store's own lock, so records are appended in the order the brokers make
/// them and no broker's lock is held by another's write.
#[derive(Debug, Clone)]
pub struct SharedStore(Arc<Mutex<Box<dyn Storage>>>);

impl SharedStore {
    /// Shares `store`.
    pub fn new(store: Box<dyn Storage>) -> Self {
        SharedStore(Arc::new(Mutex::new(store)))
    }

    /// Calls `f` with the store locked. A panic under this lock left a half-made write at
    /// worst, which the store's framing and recovery already handle: the poison is ignored.
    fn with<T>(&self, f: impl FnOnce(&mut dyn Storage) -> T) -> T {
        let mut guard = self.0.lock().unwrap_or_else(|p| p.into_inner());
        f(guard.as_mut())
    }
}

impl Storage for SharedStore {
    fn recover(&mut self) -> Result<Recovered, StorageError> {
        self.with(|s| s.recover())
    }

    fn put(
        &mut self,
        queue: QueueId,
        seq: u64,
        message: &Message,
        state: &EntryState,
        replaces: Option<StoreRef>,
    ) -> Result<(StoreRef, Option<Bytes>), StorageError> {
        self.with(|s| s.put(queue, seq, message, state, replaces))
    }

    fn set_delivery_count(
        &mut self,
        queue: QueueId,
        seq: u64,
        at: StoreRef,
        delivery_count: u32,
    ) -> Result<(), StorageError> {
        self.with(|s| s.set_delivery_count(queue, seq, at, delivery_count))
    }

    fn remove(&mut self, queue: QueueId, seq: u64, at: StoreRef) -> Result<(), StorageError> {
        self.with(|s| s.remove(queue, seq, at))
    }

    fn meta(&mut self, op: &MetaOp) -> Result<(), StorageError> {
        self.with(|s| s.meta(op))
    }

    fn checkpoint(&mut self, queues: &[QueueId], entries: &[StoredEntry]) -> Result<(), StorageError> {
        self.with(|s| s.checkpoint(queues, entries))
    }

    fn written(&self) -> u64 {
        self.with(|s| s.written())
    }

    fn plan_compaction(&mut self, budget: u64) -> bool {
        self.with(|s| s.plan_compaction(budget))
    }

    fn should_move(&self, at: StoreRef) -> bool {
        self.with(|s| s.should_move(at))
    }
}

/// What a [`MemoryStore`] holds; shared by its clones, so a clone is the same store "after a
/// restart" in tests.
#[derive(Debug, Default)]
struct MemoryState {
    queues: BTreeMap<QueueId, QueueRecord>,
    exchanges: BTreeMap<(String, String), ExchangeRecord>,
    bindings: Vec<BindingRecord>,
    entries: BTreeMap<(QueueId, u64), (EntryState, Arc<Message>)>,
    next_queue_id: QueueId,
    writes: u64,
}

/// A store that keeps everything in memory: the reference the file store is tested against,
/// and a broker's storage in tests.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    state: Arc<Mutex<MemoryState>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        MemoryStore::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut MemoryState) -> T) -> T {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.writes += 1;
        f(&mut s)
    }
}

impl Storage for MemoryStore {
    fn recover(&mut self) -> Result<Recovered, StorageError> {
        Ok(self.with(|s| Recovered {
            queues: s.queues.values().cloned().collect(),
            exchanges: s.exchanges.values().cloned().collect(),
            bindings: s.bindings.clone(),
            entries: s
                .entries
                .iter()
                .map(|(&(queue, seq), (state, message))| StoredEntry {
                    queue,
                    seq,
                    state: *state,
                    at: StoreRef::default(),
                    message: message.clone(),
                })
                .collect(),
            // Queue ids start at 1.
            next_queue_id: s.next_queue_id.max(1),
            clean: true,
        }))
    }

    fn put(
        &mut self,
        queue: QueueId,
        seq: u64,
        message: &Message,
        state: &EntryState,
        _replaces: Option<StoreRef>,
    ) -> Result<(StoreRef, Option<Bytes>), StorageError> {
        self.with(|s| {
            s.next_queue_id = s.next_queue_id.max(queue + 1);
            s.entries.insert((queue, seq), (*state, Arc::new(message.clone())));
        });
        Ok((StoreRef::default(), None))
    }

    fn set_delivery_count(
        &mut self,
        queue: QueueId,
        seq: u64,
        _at: StoreRef,
        delivery_count: u32,
    ) -> Result<(), StorageError> {
        self.with(|s| {
            if let Some((state, _)) = s.entries.get_mut(&(queue, seq)) {
                state.delivery_count = delivery_count;
            }
        });
        Ok(())
    }

    fn remove(&mut self, queue: QueueId, seq: u64, _at: StoreRef) -> Result<(), StorageError> {
        self.with(|s| s.entries.remove(&(queue, seq)));
        Ok(())
    }

    fn meta(&mut self, op: &MetaOp) -> Result<(), StorageError> {
        self.with(|s| apply_meta(&mut s.queues, &mut s.exchanges, &mut s.bindings, op, &mut s.next_queue_id));
        if let MetaOp::DeleteQueue(id) = op {
            self.with(|s| s.entries.retain(|(q, _), _| q != id));
        }
        Ok(())
    }

    fn written(&self) -> u64 {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).writes
    }
}

/// Applies a topology change to a store's view of durable topology; shared by every store so
/// they agree on what a change means.
pub fn apply_meta(
    queues: &mut BTreeMap<QueueId, QueueRecord>,
    exchanges: &mut BTreeMap<(String, String), ExchangeRecord>,
    bindings: &mut Vec<BindingRecord>,
    op: &MetaOp,
    next_queue_id: &mut QueueId,
) {
    match op {
        MetaOp::PutQueue(q) => {
            *next_queue_id = (*next_queue_id).max(q.id + 1);
            queues.insert(q.id, q.clone());
        }
        MetaOp::DeleteQueue(id) => {
            if let Some(q) = queues.remove(id) {
                bindings.retain(|b| !(b.to_queue && b.destination == q.name && b.vhost == q.vhost));
            }
        }
        MetaOp::PutExchange(x) => {
            exchanges.insert((x.vhost.clone(), x.name.clone()), x.clone());
        }
        MetaOp::DeleteExchange { vhost, name } => {
            exchanges.remove(&(vhost.clone(), name.clone()));
            bindings.retain(|b| {
                b.vhost != *vhost || (b.source != *name && (b.to_queue || b.destination != *name))
            });
        }
        MetaOp::Bind(b) => {
            if !bindings.contains(b) {
                bindings.push(b.clone());
            }
        }
        MetaOp::Unbind(b) => bindings.retain(|x| x != b),
    }
}

/// Drops recovered entries whose queue is not (or no longer) declared, and orders them.
pub fn tidy_entries(entries: &mut Vec<StoredEntry>, queues: &BTreeMap<QueueId, QueueRecord>) {
    entries.retain(|e| queues.contains_key(&e.queue));
    entries.sort_by_key(|e| (e.queue, e.seq));
}
