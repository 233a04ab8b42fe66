//! A quorum queue as one node serves it: the machine, the index its next command gets, and
//! the bodies of the messages it holds.
//!
//! On a single node the queue is a one-member group: a command is committed once it is in
//! the node's log, so the broker applies it at once, in the order it made them. The message
//! itself is the node's stored entry (written before the enqueue is applied, synced before
//! the publisher's confirm), which is what a restart replays. Each body is in exactly one
//! place: here while the machine holds the message ready (or delayed, or as a dead letter
//! not yet let go), in the channel's unacked entry while a consumer holds it; a return puts
//! it back here before the machine hears of it.

use std::collections::BTreeMap;

use super::{Command, Effect, Meta, QuorumQueue, Reply};
use crate::message::QueuedMessage;

/// One quorum queue served on this node.
#[derive(Debug)]
pub struct Local {
    machine: QuorumQueue,
    /// The index the next applied command gets: a message's index is its entry's.
    next_index: u64,
    /// The bodies of the messages the machine holds and no consumer does, by index.
    bodies: BTreeMap<u64, QueuedMessage>,
    /// The deadline of the tick last armed, in `Meta::time_ms`.
    pub armed: Option<u64>,
    /// A retry of its kept (at-least-once) dead letters is armed.
    pub retrying_dead: bool,
    /// The queues that took a copy of each kept dead letter, by index: a retry goes to the
    /// others only.
    pub dead_taken: BTreeMap<u64, Vec<std::sync::Arc<str>>>,
}

impl Local {
    /// A new, empty queue with `machine`'s arguments.
    pub fn new(machine: QuorumQueue) -> Self {
        Local {
            machine,
            next_index: 1,
            bodies: BTreeMap::new(),
            armed: None,
            retrying_dead: false,
            dead_taken: BTreeMap::new(),
        }
    }

    /// The machine, to read.
    pub fn machine(&self) -> &QuorumQueue {
        &self.machine
    }

    /// The index the next command gets (an enqueue's message is known by it).
    pub fn next_index(&self) -> u64 {
        self.next_index
    }

    /// Applies `command` as the next entry of the log at `time_ms`.
    pub fn apply(&mut self, time_ms: u64, command: Command) -> (Reply, Vec<Effect>) {
        let index = self.next_index;
        self.next_index = index.saturating_add(1);
        self.machine.apply(Meta { index, time_ms }, command)
    }

    /// Keeps the body of message `index` (the machine holds it, no consumer does).
    pub fn keep(&mut self, index: u64, m: QueuedMessage) {
        self.bodies.insert(index, m);
    }

    /// The body of message `index`, kept here.
    pub fn body(&self, index: u64) -> Option<&QueuedMessage> {
        self.bodies.get(&index)
    }

    /// Takes the body of message `index` out (to a consumer, a dead-letter exchange, or away).
    pub fn take(&mut self, index: u64) -> Option<QueuedMessage> {
        self.bodies.remove(&index)
    }

    /// Takes out every body whose message the machine no longer holds (after a purge).
    pub fn take_dropped(&mut self) -> Vec<QueuedMessage> {
        let live = self.machine.live_indexes();
        let gone: Vec<u64> = self.bodies.keys().filter(|i| !live.contains(i)).copied().collect();
        gone.into_iter().filter_map(|i| self.bodies.remove(&i)).collect()
    }

    /// When each held-out message joins the queue, by its stored entry's seq (what the store
    /// keeps as its `ready_at`).
    pub fn holds_by_seq(&self) -> BTreeMap<u64, u64> {
        self.machine.holds().filter_map(|(index, at)| self.bodies.get(&index).map(|m| (m.seq, at))).collect()
    }

    /// The bodies kept here, to read.
    pub fn bodies(&self) -> impl Iterator<Item = &QueuedMessage> {
        self.bodies.values()
    }

    /// The bodies kept here, to change what the store keeps of them (never their index).
    pub fn bodies_mut(&mut self) -> impl Iterator<Item = &mut QueuedMessage> {
        self.bodies.values_mut()
    }
}
