//! A quorum queue's consumers: who may receive now, whose turn it is, and which messages
//! each holds. Replicated with the queue, so a new leader knows every consumer's unacked
//! messages and resumes their deliveries.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::MsgRef;

/// A client connection anywhere in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Owner {
    /// The node it is connected to.
    pub node: u64,
    /// The connection, unique on that node.
    pub conn: u64,
}

/// One consumer: the connection, channel and tag it registered under.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ConsumerId {
    /// Its connection.
    pub owner: Owner,
    /// Its channel.
    pub channel: u16,
    /// Its consumer tag; `basic.get` takes messages under the empty tag, which a consume
    /// never has (the broker generates one when the client leaves it empty).
    pub tag: String,
}

/// Where a consumer stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    /// Receives messages while it has room.
    Active,
    /// Registered behind the single active consumer; it takes over when that one goes.
    Waiting,
    /// Cancelled, still holding unacked messages it may settle.
    Cancelled,
    /// Holds messages taken by `basic.get`; never pushed to.
    Pull,
    /// On a node declared down: not pushed to; its messages stay its own until the node is
    /// back (`Active` or `Waiting` again) or removed.
    Suspected,
}

/// One consumer's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Consumer {
    /// Unacked messages it may hold; 0 is no limit.
    pub prefetch: u32,
    /// `x-priority`: higher priorities are served first while they have room.
    pub priority: i64,
    /// Its status.
    pub status: Status,
    /// Registration order: the single active consumer is the oldest.
    order: u64,
    /// When it was last given a message, in turns: the least recently served goes next.
    served: u64,
    /// Its unacked messages by delivery id.
    checked_out: BTreeMap<u64, MsgRef>,
    /// The id its next delivery gets.
    next_id: u64,
}

impl Consumer {
    fn has_room(&self) -> bool {
        self.prefetch == 0 || self.checked_out.len() < self.prefetch as usize
    }

    /// Takes `msg` as its next delivery in `turn`, returning the delivery id.
    fn hand(&mut self, msg: MsgRef, turn: u64) -> u64 {
        let delivery = self.next_id;
        self.next_id = self.next_id.saturating_add(1);
        self.served = turn;
        self.checked_out.insert(delivery, msg);
        delivery
    }

    /// Its unacked messages.
    pub fn checked_out(&self) -> impl Iterator<Item = (&u64, &MsgRef)> {
        self.checked_out.iter()
    }
}

/// Whose turn it is between two consumers with room: the higher priority, then the least
/// recently served, then the older.
fn turn(a: &Consumer, b: &Consumer) -> std::cmp::Ordering {
    a.priority.cmp(&b.priority).then(b.served.cmp(&a.served)).then(b.order.cmp(&a.order))
}

/// Every consumer of one queue.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Consumers {
    #[serde(with = "super::pairs")]
    map: BTreeMap<ConsumerId, Consumer>,
    next_order: u64,
    turn: u64,
}

impl Consumers {
    /// Registers a consumer, or changes an existing one's prefetch and priority (a cancelled
    /// one listens again).
    pub fn checkout(&mut self, id: ConsumerId, prefetch: u32, priority: i64, single_active: bool) {
        let fresh = if single_active && self.map.values().any(|c| c.status == Status::Active) {
            Status::Waiting
        } else {
            Status::Active
        };
        match self.map.get_mut(&id) {
            Some(c) => {
                c.prefetch = prefetch;
                c.priority = priority;
                if matches!(c.status, Status::Cancelled | Status::Pull) {
                    c.status = fresh;
                }
            }
            None => {
                let order = self.next_order;
                self.next_order = self.next_order.saturating_add(1);
                let c = Consumer {
                    prefetch,
                    priority,
                    status: fresh,
                    order,
                    served: 0,
                    checked_out: BTreeMap::new(),
                    next_id: 0,
                };
                self.map.insert(id, c);
            }
        }
    }

    /// Stops pushing to a consumer; it keeps its unacked messages until it settles them.
    /// Returns whether it was there.
    pub fn cancel(&mut self, id: &ConsumerId, single_active: bool) -> bool {
        let Some(c) = self.map.get_mut(id) else { return false };
        c.status = Status::Cancelled;
        if c.checked_out.is_empty() {
            self.map.remove(id);
        }
        self.promote(single_active);
        true
    }

    /// Removes a consumer whose connection is gone, with its unacked messages.
    pub fn remove(&mut self, id: &ConsumerId, single_active: bool) -> Option<Consumer> {
        let c = self.map.remove(id)?;
        self.promote(single_active);
        Some(c)
    }

    /// With a single active consumer, makes the oldest waiting one active when none is.
    fn promote(&mut self, single_active: bool) {
        if !single_active || self.map.values().any(|c| c.status == Status::Active) {
            return;
        }
        let oldest = self.map.values_mut().filter(|c| c.status == Status::Waiting).min_by_key(|c| c.order);
        if let Some(c) = oldest {
            c.status = Status::Active;
        }
    }

    /// The consumer the next ready message goes to: an active one with room, the highest
    /// priority first, then the least recently served, then the oldest.
    pub fn next(&self) -> Option<&ConsumerId> {
        self.map
            .iter()
            .filter(|(_, c)| c.status == Status::Active && c.has_room())
            .max_by(|(_, a), (_, b)| turn(a, b))
            .map(|(id, _)| id)
    }

    /// Hands `msg` to the consumer [`Consumers::next`] names, returning who and the delivery
    /// id, or the message back when no consumer has room.
    pub fn assign_next(&mut self, msg: MsgRef) -> Result<(&ConsumerId, u64), MsgRef> {
        let best = self
            .map
            .iter_mut()
            .filter(|(_, c)| c.status == Status::Active && c.has_room())
            .max_by(|(_, a), (_, b)| turn(a, b));
        let Some((id, c)) = best else { return Err(msg) };
        self.turn = self.turn.saturating_add(1);
        Ok((id, c.hand(msg, self.turn)))
    }

    /// Hands `msg` to the `basic.get` side of a channel, registering it if needed.
    pub fn assign_pulled(&mut self, id: ConsumerId, msg: MsgRef) -> Option<u64> {
        if !self.map.contains_key(&id) {
            let order = self.next_order;
            self.next_order = self.next_order.saturating_add(1);
            let c = Consumer {
                prefetch: 0,
                priority: 0,
                status: Status::Pull,
                order,
                served: 0,
                checked_out: BTreeMap::new(),
                next_id: 0,
            };
            self.map.insert(id.clone(), c);
        }
        self.turn = self.turn.saturating_add(1);
        let turn = self.turn;
        self.map.get_mut(&id).map(|c| c.hand(msg, turn))
    }

    /// Takes a message back from consumer `id` (settled, returned or discarded); a
    /// cancelled or pull-only consumer holding nothing more is forgotten.
    pub fn take(&mut self, id: &ConsumerId, delivery: u64) -> Option<MsgRef> {
        let c = self.map.get_mut(id)?;
        let m = c.checked_out.remove(&delivery)?;
        if c.checked_out.is_empty() && matches!(c.status, Status::Cancelled | Status::Pull) {
            self.map.remove(id);
        }
        Some(m)
    }

    /// Suspects the listening consumers of `node` (`down`), or lets the suspected ones
    /// listen again: active, or waiting behind a single active consumer that took over.
    pub fn suspect(&mut self, node: u64, down: bool, single_active: bool) {
        if down {
            for (id, c) in self.map.iter_mut() {
                if id.owner.node == node && matches!(c.status, Status::Active | Status::Waiting) {
                    c.status = Status::Suspected;
                }
            }
            self.promote(single_active);
            return;
        }
        let mut back: Vec<(u64, ConsumerId)> = self
            .map
            .iter()
            .filter(|(id, c)| id.owner.node == node && c.status == Status::Suspected)
            .map(|(id, c)| (c.order, id.clone()))
            .collect();
        back.sort();
        for (_, id) in back {
            let taken = single_active && self.map.values().any(|c| c.status == Status::Active);
            if let Some(c) = self.map.get_mut(&id) {
                c.status = if taken { Status::Waiting } else { Status::Active };
            }
        }
    }

    /// The active consumers of `node`.
    pub fn active_on(&self, node: u64) -> Vec<ConsumerId> {
        self.map
            .iter()
            .filter(|(id, c)| id.owner.node == node && c.status == Status::Active)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Takes every unacked message back from consumer `id`, in delivery order.
    pub fn take_all(&mut self, id: &ConsumerId) -> Vec<MsgRef> {
        self.map
            .get_mut(id)
            .map(|c| std::mem::take(&mut c.checked_out).into_values().collect())
            .unwrap_or_default()
    }

    /// The consumers of connections `gone` says are gone.
    pub fn matching(&self, gone: impl Fn(&ConsumerId) -> bool) -> Vec<ConsumerId> {
        self.map.keys().filter(|id| gone(id)).cloned().collect()
    }

    /// Whether any consumer listens (for `x-expires`, which counts a queue with consumers as
    /// used).
    pub fn any_listening(&self) -> bool {
        // A suspected consumer may be behind a partition, not gone: the queue is in use.
        self.map.values().any(|c| matches!(c.status, Status::Active | Status::Waiting | Status::Suspected))
    }

    /// One consumer.
    pub fn get(&self, id: &ConsumerId) -> Option<&Consumer> {
        self.map.get(id)
    }

    /// Every consumer.
    pub fn iter(&self) -> impl Iterator<Item = (&ConsumerId, &Consumer)> {
        self.map.iter()
    }

    /// Checks what a snapshot says of the consumers: delivery ids below each consumer's
    /// next one, turn counters that can still grow (the caller checks messages held twice
    /// and the single active consumer).
    pub fn check(&self) -> Result<(), String> {
        for (id, c) in &self.map {
            if c.checked_out.last_key_value().is_some_and(|(&d, _)| d >= c.next_id)
                || c.order >= self.next_order
                || c.served > self.turn
            {
                return Err(format!("consumer '{}' has counters ahead of the queue's", id.tag));
            }
        }
        Ok(())
    }

    /// The consumers holding a delivery made at or before `before` (all of them with
    /// deliveries when `any` is false: the limit is longer than time so far, so none).
    pub fn oldest_before(&self, before: u64, any: bool) -> Vec<ConsumerId> {
        if !any {
            return Vec::new();
        }
        self.map
            .iter()
            .filter(|(_, c)| c.checked_out.values().next().is_some_and(|m| m.delivered_ms <= before))
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// The earliest delivery time among each consumer's oldest unsettled delivery (its
    /// lowest id: deliveries are made in time order).
    pub fn oldest_delivery(&self) -> Option<u64> {
        self.map.values().filter_map(|c| c.checked_out.values().next().map(|m| m.delivered_ms)).min()
    }

    /// Every unacked message.
    pub fn checked_out(&self) -> impl Iterator<Item = &MsgRef> {
        self.map.values().flat_map(|c| c.checked_out.values())
    }
}
