//! Durability: what the broker writes to its [`Storage`], how it starts from what was stored,
//! and publisher confirms that wait for the store's sync.
//!
//! Persistent messages (delivery-mode 2) in durable, non-exclusive queues are stored; so are
//! durable exchanges, durable queues and bindings whose both ends are durable, as in RabbitMQ.
//! A stored message is written before it enters its queue and removed after whatever took it
//! out (an ack, or a dead-letter copy written first), so a crash between two writes can leave
//! a duplicate but never lose a message.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use warren_codec::reply_code::INTERNAL_ERROR;
use warren_codec::{ExchangeDeclare, Method};

use super::VHostId;
use super::timers::{Delayed, Timer};
use super::{Broker, ConnId};
use crate::error::AmqpError;
use crate::exchange::{Binding, Destination};
use crate::message::Outgoing;
use crate::message::{Message, QueuedMessage};
use crate::queue::{Queue, QueueSpec};
use crate::stats::BrokerEvent;
use crate::storage::{
    BindingRecord, EntryState, ExchangeRecord, MetaOp, QueueRecord, Recovered, Storage, StorageError,
    StoreRef, StoredEntry,
};

/// When publisher confirms for stored messages are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConfirmPolicy {
    /// Once the driver reports a sync covering the message (`fsync = "before-confirm"`).
    #[default]
    AfterSync,
    /// As soon as the message is written (`fsync = "interval"` or `"never"`).
    AfterWrite,
}

/// A confirm (or tx.commit-ok) held until the store syncs past `position`.
#[derive(Debug, Clone)]
pub(super) struct PendingConfirm {
    position: u64,
    conn: ConnId,
    channel: u16,
    channel_id: u64,
    held: Held,
}

/// What a pending entry sends once synced.
#[derive(Debug, Clone)]
enum Held {
    /// basic.ack for this delivery tag (acks for one channel coalesce into one multiple-ack).
    Ack(u64),
    /// A reply such as tx.commit-ok.
    Reply(Method),
    /// A reply with content (basic.get-ok) behind a held reply on its channel.
    Content(Method, Arc<Message>),
}

/// What start-up found in the store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestoreReport {
    /// Durable queues restored.
    pub queues: usize,
    /// Durable exchanges restored.
    pub exchanges: usize,
    /// Bindings restored.
    pub bindings: usize,
    /// Messages put back in their queues (ready or held by a retry policy).
    pub messages: usize,
    /// Stored things that could not be restored, with why (an exchange type no longer
    /// available, a binding to something gone).
    pub skipped: Vec<String>,
    /// Vhosts that exist only because stored objects name them (the configuration does not).
    pub vhosts: Vec<String>,
}

impl RestoreReport {
    /// Adds what another broker of the node restored.
    pub fn add(&mut self, other: RestoreReport) {
        self.queues += other.queues;
        self.exchanges += other.exchanges;
        self.bindings += other.bindings;
        self.messages += other.messages;
        self.skipped.extend(other.skipped);
        self.vhosts.extend(other.vhosts);
    }
}

/// The durable writes of the topology method being handled.
#[derive(Debug, Default)]
pub(super) struct CommandWrites {
    /// A record was written: the -ok waits for its sync.
    pub wrote: bool,
    /// A record could not be written: no -ok, the method fails with 541.
    pub failed: Option<String>,
}

/// The durability state a broker carries.
#[derive(Debug, Default)]
pub(super) struct Durability {
    pub store: Option<Box<dyn Storage>>,
    pub policy: ConfirmPolicy,
    pub pending: VecDeque<PendingConfirm>,
    pub synced: u64,
    pub next_channel_id: u64,
    /// Set while a topology method is handled.
    pub command: Option<CommandWrites>,
    /// Why the store can make nothing durable any more, once it cannot.
    pub failed: Option<String>,
}

impl Broker {
    /// Gives the broker its store and rebuilds durable state from it. Call once, before any
    /// connection; without a store nothing is durable.
    pub fn attach_storage(
        &mut self,
        mut store: Box<dyn Storage>,
        policy: ConfirmPolicy,
    ) -> Result<RestoreReport, StorageError> {
        let recovered = store.recover()?;
        self.durability.synced = store.written();
        self.durability.policy = policy;
        self.durability.store = Some(store);
        Ok(self.restore(recovered))
    }

    /// Gives the broker a store that another broker of the node recovered, and restores the
    /// part of what was recovered that is this broker's (see [`Recovered::split_by_vhost`]).
    pub fn attach_recovered(
        &mut self,
        store: Box<dyn Storage>,
        policy: ConfirmPolicy,
        recovered: Recovered,
    ) -> RestoreReport {
        self.durability.synced = store.written();
        self.durability.policy = policy;
        self.durability.store = Some(store);
        self.restore(recovered)
    }

    /// The store reports that everything written up to `position` is durable: confirms
    /// waiting for it go out, one multiple-ack per channel.
    pub fn storage_synced(&mut self, position: u64) {
        let d = &mut self.durability;
        d.synced = d.synced.max(position);
        while self.durability.pending.front().is_some_and(|p| p.position <= position) {
            let Some(p) = self.durability.pending.pop_front() else {
                break;
            };
            if matches!(p.held, Held::Ack(_)) {
                self.stats.confirmed += 1;
            }
            // A channel closed and reopened under the same number must not get the old acks.
            match self.channel(p.conn, p.channel) {
                Some(c) if c.id == p.channel_id => {
                    if matches!(p.held, Held::Reply(_) | Held::Content(..)) {
                        c.held_replies = c.held_replies.saturating_sub(1);
                    }
                }
                _ => continue,
            }
            match p.held {
                // One by one, in order: a run of them merges into one multiple ack, and none
                // covers a nack sent in between (see `confirms`).
                Held::Ack(delivery_tag) => self.send_confirm(p.conn, p.channel, delivery_tag, false, true),
                Held::Reply(m) => self.send(p.conn, p.channel, m),
                Held::Content(method, message) => {
                    self.push(p.conn, Outgoing::Content { channel: p.channel, method, message })
                }
            }
        }
    }

    /// The store can no longer make writes durable (an fsync failed): every confirm and
    /// reply waiting for a sync is answered as failed, since what it waited for may never
    /// reach the disk. Publishers are told by basic.nack; a client waiting for tx.commit-ok
    /// or a durable declare-ok has its connection closed with 541. Writes the store refuses
    /// from now on are nacked (or fail with 541) as they come.
    pub fn storage_failed(&mut self, why: &str) {
        if self.durability.failed.is_some() {
            return;
        }
        self.durability.failed = Some(why.to_string());
        let pending = std::mem::take(&mut self.durability.pending);
        for p in pending {
            match self.channel(p.conn, p.channel) {
                Some(c) if c.id == p.channel_id => c.held_replies = 0,
                _ => continue,
            }
            match p.held {
                Held::Ack(delivery_tag) => self.send_confirm(p.conn, p.channel, delivery_tag, false, false),
                Held::Reply(m) | Held::Content(m, _) => {
                    let text = format!("{} could not be made durable: {why}", m.name());
                    self.raise_error(p.conn, 0, AmqpError::new(INTERNAL_ERROR, text));
                }
            }
        }
    }

    /// Why the store can make nothing durable any more, once that is so.
    pub fn storage_failure(&self) -> Option<&str> {
        self.durability.failed.as_deref()
    }

    /// Confirms waiting for a sync, and the position the store has written up to: the driver
    /// syncs while the first is non-zero.
    pub fn storage_backlog(&self) -> (usize, u64) {
        let written = self.durability.store.as_ref().map_or(0, |s| s.written());
        (self.durability.pending.len(), written)
    }

    /// Where the store has written to, when what is written there is not yet durable (confirms
    /// wait for syncs): a caller that must know its writes are on disk waits until
    /// [`Broker::is_durable_to`] says so. `None` when nothing needs waiting for.
    pub fn unsynced_position(&self) -> Option<u64> {
        let d = &self.durability;
        if d.policy != ConfirmPolicy::AfterSync {
            return None;
        }
        let position = d.store.as_ref().map_or(0, |s| s.written());
        (position > d.synced).then_some(position)
    }

    /// Whether everything written up to `position` is durable.
    pub fn is_durable_to(&self, position: u64) -> bool {
        self.durability.synced >= position
    }

    /// Acks a publish now, or once the store has synced what it wrote for it.
    pub(super) fn confirm(&mut self, conn: ConnId, ch: u16, delivery_tag: u64, stored: bool) {
        if !self.hold(conn, ch, stored, Held::Ack(delivery_tag)) {
            self.stats.confirmed += 1;
            self.send_confirm(conn, ch, delivery_tag, false, true);
        }
    }

    /// Sends basic.get-ok with its message now, or behind a reply of its channel held for a
    /// sync (replies go out in the order of their methods).
    pub(super) fn reply_content(&mut self, conn: ConnId, ch: u16, method: Method, message: Arc<Message>) {
        let behind = self.channel(conn, ch).is_some_and(|c| c.held_replies > 0);
        // Held only when a sync is pending, which a held reply on the channel means.
        if behind && self.will_hold() {
            self.hold(conn, ch, true, Held::Content(method, message));
        } else {
            self.push(conn, Outgoing::Content { channel: ch, method, message });
        }
    }

    /// Whether [`Broker::hold`] holds what was stored now.
    fn will_hold(&self) -> bool {
        let d = &self.durability;
        d.policy == ConfirmPolicy::AfterSync && d.store.as_ref().is_some_and(|s| s.written() > d.synced)
    }

    /// Sends `reply` now, or once the store has synced what was written for it (tx.commit-ok
    /// for a transaction that stored messages).
    pub(super) fn reply_after_sync(&mut self, conn: ConnId, ch: u16, stored: bool, reply: impl Into<Method>) {
        let reply = reply.into();
        if !self.hold(conn, ch, stored, Held::Reply(reply.clone())) {
            self.send(conn, ch, reply);
        }
    }

    /// Queues `held` until the next sync when something was stored and confirms wait for
    /// syncs; returns whether it did.
    fn hold(&mut self, conn: ConnId, ch: u16, stored: bool, held: Held) -> bool {
        let d = &self.durability;
        // Asked only when it matters: a shared store's position takes the store's lock.
        if !(stored && d.policy == ConfirmPolicy::AfterSync) {
            return false;
        }
        let position = d.store.as_ref().map_or(0, |s| s.written());
        if position <= d.synced {
            return false;
        }
        let is_reply = matches!(held, Held::Reply(_) | Held::Content(..));
        let channel_id = match self.channel(conn, ch) {
            Some(c) => {
                c.held_replies += usize::from(is_reply);
                c.id
            }
            None => 0,
        };
        self.durability.pending.push_back(PendingConfirm { position, conn, channel: ch, channel_id, held });
        true
    }

    /// A fresh id for a channel being opened.
    pub(super) fn next_channel_id(&mut self) -> u64 {
        self.durability.next_channel_id += 1;
        self.durability.next_channel_id
    }

    /// Whether the topology method being handled wrote a record (its -ok waits for the sync).
    pub(super) fn durability_wrote(&self) -> bool {
        self.durability.command.as_ref().is_some_and(|c| c.wrote)
    }

    /// Whether the broker has a store at all.
    pub(super) fn has_store(&self) -> bool {
        self.durability.store.is_some()
    }

    /// Writes a queue entry; `replaces` for a rewrite of an entry already stored. On success the
    /// entry's message is the store's (its body paged out) and it remembers where it is kept.
    pub(super) fn store_entry(
        &mut self,
        queue_id: u64,
        m: &mut QueuedMessage,
        ready_at_ms: Option<u64>,
    ) -> Result<(), StorageError> {
        let state = self.entry_state(m, ready_at_ms);
        match self.durability.store.as_mut() {
            Some(store) => put_entry(store.as_mut(), queue_id, m, &state),
            None => Ok(()),
        }
    }

    /// An entry's state as the store keeps it: deadlines in wall-clock milliseconds.
    fn entry_state(&self, m: &QueuedMessage, ready_at_ms: Option<u64>) -> EntryState {
        entry_state(self.now, self.unix_ms, m, ready_at_ms)
    }

    /// Moves stored entries the store asks to have moved (see [`Storage::plan_compaction`]),
    /// up to about `budget` body octets, so the store can delete the segments they pinned.
    /// Ready, unacked and delayed entries are all moved: each is written again where the log
    /// ends and keeps the new place and body view. Call it now and then (the driver does
    /// once a second); it costs nothing while the log is mostly live.
    pub fn compact_storage(&mut self, budget: u64) -> Compaction {
        let planned = self.durability.store.as_mut().is_some_and(|s| s.plan_compaction(budget));
        if planned { self.compact_planned(budget) } else { Compaction::default() }
    }

    /// Moves, up to about `budget` body octets, the stored entries the store's last
    /// [`Storage::plan_compaction`] asks to have moved: for brokers that share one store,
    /// which plan once and each move their own.
    pub fn compact_planned(&mut self, budget: u64) -> Compaction {
        let mut done = Compaction::default();
        let Some(mut store) = self.durability.store.take() else {
            return done;
        };
        {
            let (now, unix_ms) = (self.now, self.unix_ms);
            // Unacked and delayed entries of a deleted queue still say where they were kept,
            // but the store forgot them with their queue: they are not moved.
            let stored: crate::hash::Set<u64> =
                self.vhosts.all_queues().filter(|q| stores_messages(&q.spec)).map(|q| q.id).collect();
            let mut failed = None;
            let mut cost = 0u64;
            let mut step = |queue_id: u64, m: &mut QueuedMessage, ready_at: Option<u64>| {
                let over = cost >= budget || done.moved >= MAX_COMPACTION_MOVES;
                if failed.is_some() || over || !m.stored.is_some_and(|at| store.should_move(at)) {
                    return;
                }
                if !stored.contains(&queue_id) {
                    return;
                }
                let state = entry_state(now, unix_ms, m, ready_at);
                match put_entry(store.as_mut(), queue_id, m, &state) {
                    Ok(()) => {
                        done.moved += 1;
                        done.bytes += m.message.body.len() as u64;
                        // Headers and framing cost too: a round of empty bodies is bounded.
                        cost += m.message.body.len() as u64 + 128;
                    }
                    Err(e) => failed = Some(e),
                }
            };
            let queues = self.vhosts.iter_mut().flat_map(|v| v.queues.values_mut());
            for q in queues.filter(|q| stores_messages(&q.spec)) {
                let id = q.id;
                // A quorum queue's held-out messages keep their deadline.
                let holds = q.quorum.as_ref().map(|l| l.holds_by_seq()).unwrap_or_default();
                for m in q.iter_mut() {
                    let ready_at = holds.get(&m.seq).copied();
                    step(id, m, ready_at);
                }
            }
            let unacked = self
                .sessions
                .values_mut()
                .flat_map(|s| s.channels.values_mut())
                .flat_map(|c| c.unacked.values_mut());
            for u in unacked {
                step(u.queue_id, &mut u.message, None);
            }
            for d in self.delayed.values_mut() {
                step(d.queue_id, &mut d.message, Some(d.due_ms));
            }
            if let Some(e) = failed {
                self.storage_result(Err(e));
            }
        }
        self.durability.store = Some(store);
        done
    }

    /// Has the store write an index of every stored queue (ready, unacked and delayed
    /// entries) for a fast next start. Call at a clean stop, after the last client is gone.
    pub fn checkpoint_storage(&mut self) -> Result<usize, StorageError> {
        if self.durability.store.is_none() {
            return Ok(0);
        }
        let (queues, entries) = self.stored_index();
        let n = entries.len();
        match self.durability.store.as_mut() {
            Some(store) => store.checkpoint(&queues, &entries).map(|()| n),
            None => Ok(0),
        }
    }

    /// Every stored queue and its stored entries (ready, unacked and delayed), by queue then
    /// seq: what [`Storage::checkpoint`] indexes. Brokers sharing a store each give theirs and
    /// the store is checkpointed once with all of them.
    pub fn stored_index(&self) -> (Vec<crate::storage::QueueId>, Vec<StoredEntry>) {
        let mut queues = Vec::new();
        let mut entries = Vec::new();
        let entry = |b: &Broker, queue: u64, m: &QueuedMessage, ready_at: Option<u64>| {
            m.stored.map(|at| StoredEntry {
                queue,
                seq: m.seq,
                state: b.entry_state(m, ready_at),
                at,
                message: m.message.clone(),
            })
        };
        for q in self.vhosts.all_queues().filter(|q| stores_messages(&q.spec)) {
            queues.push(q.id);
            let holds = q.quorum.as_ref().map(|l| l.holds_by_seq()).unwrap_or_default();
            entries.extend(q.iter().filter_map(|m| entry(self, q.id, m, holds.get(&m.seq).copied())));
        }
        let unacked =
            self.sessions.values().flat_map(|s| s.channels.values()).flat_map(|c| c.unacked.values());
        entries.extend(unacked.filter_map(|u| entry(self, u.queue_id, &u.message, None)));
        entries.extend(
            self.delayed.values().filter_map(|d| entry(self, d.queue_id, &d.message, Some(d.due_ms))),
        );
        entries.sort_by_key(|e| (e.queue, e.seq));
        (queues, entries)
    }

    /// Forgets a stored entry that left its queue for good.
    pub(super) fn forget(&mut self, queue_id: u64, m: &QueuedMessage) {
        let (Some(at), Some(store)) = (m.stored, self.durability.store.as_mut()) else {
            return;
        };
        let r = store.remove(queue_id, m.seq, at);
        // Inside a topology method (queue.purge): its -ok waits for the removals' sync, and
        // one that could not be written fails it, as for any record it writes.
        if let Some(c) = self.durability.command.as_mut() {
            match &r {
                Ok(()) => c.wrote = true,
                Err(e) => {
                    c.failed.get_or_insert_with(|| e.to_string());
                }
            }
        }
        self.storage_result(r);
    }

    /// Records a stored entry's new delivery count.
    pub(super) fn store_delivery_count(&mut self, queue_id: u64, seq: u64, at: Option<StoreRef>, count: u32) {
        let (Some(at), Some(store)) = (at, self.durability.store.as_mut()) else {
            return;
        };
        let r = store.set_delivery_count(queue_id, seq, at, count);
        self.storage_result(r);
    }

    /// Records a durable topology change; returns whether it was written (or there is no
    /// store). Inside a topology method a failure fails the method (see [`CommandWrites`]).
    pub(super) fn store_meta(&mut self, op: MetaOp) -> bool {
        // A cluster member keeps exchanges and bindings in the cluster's catalog; its store
        // holds the queues that live here, for their messages.
        if self.member.is_some() && !matches!(op, MetaOp::PutQueue(_) | MetaOp::DeleteQueue(_)) {
            return true;
        }
        let Some(store) = self.durability.store.as_mut() else {
            return true;
        };
        let r = store.meta(&op);
        let ok = r.is_ok();
        if let Some(c) = self.durability.command.as_mut() {
            match &r {
                Ok(()) => c.wrote = true,
                Err(e) => {
                    c.failed.get_or_insert_with(|| e.to_string());
                }
            }
        }
        self.storage_result(r);
        ok
    }

    /// A write that failed where the client cannot be told (an ack, a topology change):
    /// counted and logged by the driver. At worst a message comes back after a restart.
    pub(super) fn storage_result(&mut self, r: Result<(), StorageError>) {
        if let Err(e) = r {
            self.stats.storage_errors += 1;
            self.events.push(BrokerEvent::StorageError { error: e.to_string() });
        }
    }

    /// The durable record of a declared exchange, if it is one.
    pub(super) fn exchange_record(vhost: &str, name: &str, m: &ExchangeDeclare) -> Option<ExchangeRecord> {
        (m.durable && !name.starts_with("amq.")).then(|| ExchangeRecord {
            vhost: vhost.to_string(),
            name: name.to_string(),
            kind: m.kind.clone(),
            auto_delete: m.auto_delete,
            internal: m.internal,
            arguments: m.arguments.clone(),
        })
    }

    /// The durable record of a binding, when both its ends are durable.
    pub(super) fn binding_record(&self, vh: VHostId, source: &str, b: &Binding) -> Option<BindingRecord> {
        // amq.* exchanges are durable: predeclared at every start, bindings from them kept.
        let source_durable = self.vhosts[vh].exchanges.get(source).is_some_and(|x| x.durable);
        let (destination, to_queue, durable) = match &b.destination {
            Destination::Queue(q) => {
                (q, true, self.vhosts[vh].queues.get(&**q).is_some_and(|q| stores_messages(&q.spec)))
            }
            Destination::Exchange(x) => {
                (x, false, self.vhosts[vh].exchanges.get(&**x).is_some_and(|x| x.durable))
            }
        };
        (source_durable && durable).then(|| BindingRecord {
            vhost: self.vhosts[vh].name.to_string(),
            source: source.to_string(),
            destination: destination.to_string(),
            to_queue,
            key: b.key.clone(),
            arguments: b.arguments.clone(),
        })
    }

    /// Rebuilds durable exchanges, queues, bindings and messages.
    fn restore(&mut self, r: Recovered) -> RestoreReport {
        let mut report = RestoreReport::default();
        self.census.reserve_queue_ids(r.next_queue_id);
        for x in r.exchanges {
            let vh = self.restored_vhost(&x.vhost, &mut report);
            let decl = ExchangeDeclare {
                exchange: x.name.clone(),
                kind: x.kind,
                durable: true,
                auto_delete: x.auto_delete,
                internal: x.internal,
                arguments: x.arguments,
                ..Default::default()
            };
            match self.create_exchange(vh, &decl) {
                Ok(()) => report.exchanges += 1,
                Err(e) => report.skipped.push(format!("exchange '{}': {}", x.name, e.text)),
            }
        }
        for q in r.queues {
            let vh = self.restored_vhost(&q.vhost, &mut report);
            let spec = QueueSpec {
                durable: true,
                auto_delete: q.auto_delete,
                exclusive_owner: None,
                arguments: q.arguments,
            };
            match self.create_queue(vh, q.id, &q.name, spec, false) {
                Ok(_) => report.queues += 1,
                Err(e) => report.skipped.push(format!("queue '{}': {}", q.name, e.text)),
            }
        }
        for b in r.bindings {
            let vh = self.restored_vhost(&b.vhost, &mut report);
            let destination = if b.to_queue {
                Destination::Queue(Arc::from(b.destination.as_str()))
            } else {
                Destination::Exchange(Arc::from(b.destination.as_str()))
            };
            let exists = if b.to_queue {
                self.vhosts[vh].queues.contains_key(&b.destination)
            } else {
                self.vhosts[vh].exchanges.contains_key(&b.destination)
            };
            let bound = if exists {
                self.bind(vh, &b.source, destination, b.key.clone(), b.arguments).map_err(|e| e.text)
            } else {
                Err("destination is gone".into())
            };
            match bound {
                Ok(()) => report.bindings += 1,
                Err(e) => report.skipped.push(format!("binding {} -> {}: {e}", b.source, b.destination)),
            }
        }
        let names: crate::hash::Map<u64, (VHostId, std::sync::Arc<str>)> =
            self.vhosts.all_queues().map(|q| (q.id, (q.vhost, q.name.clone()))).collect();
        let mut entries = r.entries;
        // In publish order per queue: a quorum queue's machine takes them in that order.
        entries.sort_by_key(|e| (e.queue, e.seq));
        // Every queue's seqs are taken before any entry goes back: one that dies as it comes
        // back (a TTL that ran out while the node was down) is dead-lettered at once, and its
        // copy must not get the seq of an entry of its target not restored yet.
        for e in &entries {
            if let Some((vh, name)) = names.get(&e.queue)
                && let Some(q) = self.vhosts[*vh].queues.get_mut(&**name)
            {
                q.reserve_seq(e.seq);
            }
        }
        self.quorum_restoring(true);
        for e in entries {
            if let Some((vh, name)) = names.get(&e.queue)
                && self.restore_entry(*vh, name, e, r.clean)
            {
                report.messages += 1;
            }
        }
        self.quorum_restoring(false);
        self.publish_census();
        report
    }

    /// The vhost a recovered record belongs to. One the configuration no longer names comes
    /// back with its durable objects (and is reported): a restart never drops data. It takes
    /// no connection until the configuration names it again.
    fn restored_vhost(&mut self, name: &str, report: &mut RestoreReport) -> VHostId {
        if let Some(id) = self.vhosts.id(name) {
            return id;
        }
        report.vhosts.push(name.to_string());
        let id = self.add_vhost(name);
        self.vhosts[id].open = false;
        id
    }

    /// Puts one recovered entry back: ready in its queue, or held until its retry delay ends.
    fn restore_entry(&mut self, vh: VHostId, queue: &str, e: StoredEntry, clean: bool) -> bool {
        let (now, unix_ms) = (self.now, self.unix_ms);
        let in_future = |ms: u64| now + Duration::from_millis(ms.saturating_sub(unix_ms));
        let Some(q) = self.vhosts[vh].queues.get_mut(queue).filter(|q| q.id == e.queue) else {
            return false;
        };
        let mut m =
            QueuedMessage::new(e.seq, e.message, e.state.expires_at_ms.map(in_future), e.state.enqueued_ms);
        m.delivery_count = e.state.delivery_count;
        // After a crash any entry may have been delivered: say so, as the spec allows.
        m.redelivered = !clean || m.delivery_count > 0;
        m.stored = Some(e.at);
        q.reserve_seq(m.seq);
        let queue_id = q.id;
        if q.quorum.is_some() {
            // Its machine takes it again, count and TTL left, in publish order; a retry
            // delay is not served for quorum queues, so it is ready at once.
            self.quorum_restore(vh, queue, queue_id, m, e.state.ready_at_ms);
            return true;
        }
        match e.state.ready_at_ms.filter(|&at| at > unix_ms) {
            Some(at) => {
                q.delayed += 1;
                let id = self.next_delayed;
                self.next_delayed += 1;
                self.hold_message(
                    id,
                    Delayed { vh, queue: Arc::from(queue), queue_id, message: m, due_ms: at },
                );
                self.arm(in_future(at), Timer::Retry { id });
            }
            None => {
                let expires = m.expires_at.map(|at| (at, m.seq));
                q.restore(m);
                if let Some((at, seq)) = expires {
                    self.arm(at, Timer::Expire { vh, queue: Arc::from(queue), queue_id, seq });
                }
            }
        }
        true
    }
}

/// Entries one compaction round moves at most, whatever their size.
const MAX_COMPACTION_MOVES: u64 = 100_000;

/// What one [`Broker::compact_storage`] round moved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Compaction {
    /// Entries written again.
    pub moved: u64,
    /// Their body octets.
    pub bytes: u64,
}

/// Writes entry `m` of queue `queue_id` (superseding where it was kept, if it was); on success
/// its message is the store's (its body paged out) and it remembers where it is kept.
fn put_entry(
    store: &mut dyn Storage,
    queue_id: u64,
    m: &mut QueuedMessage,
    state: &EntryState,
) -> Result<(), StorageError> {
    let (at, body) = store.put(queue_id, m.seq, &m.message, state, m.stored)?;
    m.stored = Some(at);
    if let Some(body) = body {
        m.message = Arc::new(Message { body, ..(*m.message).clone() });
    }
    Ok(())
}

/// An entry's state as the store keeps it: deadlines in wall-clock milliseconds.
fn entry_state(
    now: std::time::Instant,
    unix_ms: u64,
    m: &QueuedMessage,
    ready_at_ms: Option<u64>,
) -> EntryState {
    EntryState {
        delivery_count: m.delivery_count,
        enqueued_ms: m.enqueued_ms,
        expires_at_ms: m.expires_at.map(|t| {
            let left = t.saturating_duration_since(now).as_millis() as u64;
            unix_ms.saturating_add(left)
        }),
        ready_at_ms,
    }
}

/// Whether `message` entering a queue declared as `spec` must be stored: persistent
/// (delivery-mode 2) into a durable queue.
pub(super) fn must_store(spec: &QueueSpec, message: &Message) -> bool {
    stores_messages(spec) && message.properties.delivery_mode == Some(2)
}

/// Whether a queue's messages and declaration outlive the broker: durable, not exclusive.
pub(super) fn stores_messages(spec: &QueueSpec) -> bool {
    spec.durable && spec.exclusive_owner.is_none()
}

/// The durable record of a newly declared queue.
pub(super) fn queue_record(vhost: &str, q: &Queue) -> Option<MetaOp> {
    stores_messages(&q.spec).then(|| {
        MetaOp::PutQueue(QueueRecord {
            id: q.id,
            vhost: vhost.to_string(),
            name: q.name.to_string(),
            auto_delete: q.spec.auto_delete,
            arguments: q.spec.arguments.clone(),
        })
    })
}
