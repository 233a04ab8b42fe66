//! What the brokers of one node share when each vhost has a broker (and a lock) of its own:
//! the ids that must not repeat across them (connections, queue incarnations, which the store
//! keys entries by) and the counts the node-wide limits are checked against.
//!
//! Atomics, not a lock: a broker reads and publishes its part without waiting on the others.
//! Ids are exact. Counts are published by each broker after the methods that can change them
//! (see [`super::Broker::publish_census`]), so a limit checked in one vhost sees the others
//! as of their last such method: two vhosts declaring at the same instant can each pass a
//! check the other's declaration would have failed, which overshoots a limit by at most one
//! per vhost racing, never without bound.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use super::{Broker, ConnId};

/// The node's shared ids and counts; one `Arc` of it is given to every broker of a node.
#[derive(Debug)]
pub struct Census {
    next_conn: AtomicU64,
    next_token: AtomicU64,
    next_queue_id: AtomicU64,
    connections: AtomicUsize,
    counts: [AtomicUsize; Count::ALL.len()],
    /// Connections and channels of each user with a user limit, across every vhost.
    users: std::sync::Mutex<crate::hash::Map<String, [usize; 2]>>,
}

/// What a user limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PerUser {
    /// Open connections.
    Connections = 0,
    /// Open channels.
    Channels = 1,
}

impl Default for Census {
    fn default() -> Self {
        Census {
            next_conn: AtomicU64::new(1),
            next_queue_id: AtomicU64::new(1),
            next_token: AtomicU64::new(1),
            connections: AtomicUsize::new(0),
            counts: Default::default(),
            users: Default::default(),
        }
    }
}

/// What the node counts for its limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Count {
    /// Exchanges clients declared.
    Exchanges,
    /// Bindings, of queues and exchanges.
    Bindings,
    /// Consumers.
    Consumers,
}

impl Count {
    pub(crate) const ALL: [Count; 3] = [Count::Exchanges, Count::Bindings, Count::Consumers];
}

impl Census {
    /// A fresh connection id.
    pub fn next_conn(&self) -> ConnId {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// A token for a change a cluster member proposes, unique on the node (a vhost's broker
    /// made again must not take an answer meant for its predecessor).
    pub fn next_token(&self) -> u64 {
        self.next_token.fetch_add(1, Ordering::Relaxed)
    }

    /// A fresh queue incarnation id.
    pub fn next_queue_id(&self) -> u64 {
        self.next_queue_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Ids below `id` are taken (by recovered queues): none is handed out again.
    pub fn reserve_queue_ids(&self, id: u64) {
        self.next_queue_id.fetch_max(id, Ordering::Relaxed);
    }

    /// Takes a connection slot unless `max` are open; whether it did.
    pub fn open_connection(&self, max: Option<usize>) -> bool {
        let limit = max.unwrap_or(usize::MAX);
        self.connections
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < limit).then_some(n + 1))
            .is_ok()
    }

    /// Gives a connection slot back.
    pub fn close_connection(&self) {
        let _ = self.connections.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    /// Open connections on the node.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Acquire)
    }

    /// Takes one of `user`'s `what` unless it holds `max` already; whether it did.
    pub(crate) fn user_take(&self, user: &str, what: PerUser, max: usize) -> bool {
        let mut users = self.users.lock().unwrap_or_else(|p| p.into_inner());
        let n = users.entry(user.to_string()).or_default();
        if n[what as usize] >= max {
            return false;
        }
        n[what as usize] += 1;
        true
    }

    /// Gives one of `user`'s `what` back.
    pub(crate) fn user_give(&self, user: &str, what: PerUser) {
        let mut users = self.users.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = users.get_mut(user) {
            n[what as usize] = n[what as usize].saturating_sub(1);
            if *n == [0, 0] {
                users.remove(user);
            }
        }
    }

    /// The node's count of `what`.
    pub(crate) fn count(&self, what: Count) -> usize {
        self.counts[what as usize].load(Ordering::Acquire)
    }

    /// A broker's count of `what` went from `was` to `now`.
    pub(crate) fn update(&self, what: Count, was: usize, now: usize) {
        let c = &self.counts[what as usize];
        if now >= was {
            c.fetch_add(now - was, Ordering::AcqRel);
        } else {
            let _ =
                c.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| Some(n.saturating_sub(was - now)));
        }
    }
}

impl Broker {
    /// This broker's own count of `what`, as it is now.
    fn own_count(&self, what: Count) -> usize {
        let vhosts = self.vhosts.iter().map(|(_, v)| v);
        match what {
            // The predeclared `amq.*` ones are not the clients'.
            Count::Exchanges => {
                vhosts.flat_map(|v| v.exchanges.keys()).filter(|n| !n.starts_with("amq.")).count()
            }
            Count::Bindings => vhosts.flat_map(|v| v.exchanges.values()).map(|x| x.binding_count()).sum(),
            Count::Consumers => self.vhosts.all_queues().map(|q| q.consumers.len()).sum(),
        }
    }

    /// The node's count of `what`: the other brokers' as they last published it, this one's
    /// as it is now.
    pub(super) fn node_count(&self, what: Count) -> usize {
        let others = self.census.count(what).saturating_sub(self.published[what as usize]);
        others + self.own_count(what)
    }

    fn limit_of(&self, what: Count) -> Option<usize> {
        match what {
            Count::Exchanges => self.limits.max_exchanges,
            Count::Bindings => self.limits.max_bindings,
            Count::Consumers => self.limits.max_consumers,
        }
    }

    /// Publishes this broker's counts for the limits the other brokers check; only the
    /// counts a limit is set for, since counting walks the topology.
    pub(super) fn publish_census(&mut self) {
        for what in Count::ALL {
            if self.limit_of(what).is_none() {
                continue;
            }
            let now = self.own_count(what);
            let was = std::mem::replace(&mut self.published[what as usize], now);
            if now != was {
                self.census.update(what, was, now);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_slots_stop_at_the_limit_and_come_back() {
        let c = Census::default();
        assert!(c.open_connection(Some(2)));
        assert!(c.open_connection(Some(2)));
        assert!(!c.open_connection(Some(2)), "a third is over the limit");
        c.close_connection();
        assert!(c.open_connection(Some(2)), "a closed one frees its slot");
        assert_eq!(c.connections(), 2);
    }

    #[test]
    fn queue_ids_never_repeat_and_skip_what_was_recovered() {
        let c = Census::default();
        assert_eq!(c.next_queue_id(), 1);
        c.reserve_queue_ids(10);
        assert_eq!(c.next_queue_id(), 10);
        c.reserve_queue_ids(5);
        assert_eq!(c.next_queue_id(), 11, "a lower reservation changes nothing");
    }

    #[test]
    fn counts_add_what_each_broker_published() {
        let c = Census::default();
        c.update(Count::Bindings, 0, 3);
        c.update(Count::Bindings, 0, 2);
        c.update(Count::Bindings, 3, 1);
        assert_eq!(c.count(Count::Bindings), 3);
        assert_eq!(c.count(Count::Exchanges), 0);
    }
}
