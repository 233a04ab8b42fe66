//! The ready messages of one priority, in publish order, for every queue kind: new messages
//! at the back, returned ones back in their original place.

use std::collections::{BTreeMap, VecDeque};

/// What a lane orders by: the message's place in its queue's publish order (the classic
/// queue's `seq`, the quorum queue's log index), unique within the queue.
pub trait Ordered {
    /// The message's place in publish order.
    fn order(&self) -> u64;
}

/// The ready messages of one priority.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Lane<T> {
    /// In publish order.
    ready: VecDeque<T>,
    /// Messages that came back (requeued, or released by a retry delay) with an order below
    /// the back of `ready`: kept apart so a return costs O(log n), not a shift of the deque.
    /// The lane's order is the merge of the two.
    returned: BTreeMap<u64, T>,
}

impl<T> Default for Lane<T> {
    fn default() -> Self {
        Lane { ready: VecDeque::new(), returned: BTreeMap::new() }
    }
}

impl<T: Ordered> Lane<T> {
    /// Puts a message in its place: at the back when it is the newest, else among the returned.
    pub fn insert(&mut self, m: T) {
        if self.ready.back().is_none_or(|last| last.order() < m.order()) {
            self.ready.push_back(m);
        } else {
            self.returned.insert(m.order(), m);
        }
    }

    /// Whether the oldest message is in `returned` rather than at the front of `ready`.
    fn oldest_returned(&self) -> bool {
        match (self.returned.first_key_value(), self.ready.front()) {
            (Some((r, _)), Some(f)) => *r < f.order(),
            (r, _) => r.is_some(),
        }
    }

    /// Takes the oldest message.
    pub fn pop(&mut self) -> Option<T> {
        if self.oldest_returned() {
            self.returned.pop_first().map(|(_, m)| m)
        } else {
            self.ready.pop_front()
        }
    }

    /// Takes the message at `order`, wherever it is.
    pub fn take(&mut self, order: u64) -> Option<T> {
        if let Some(m) = self.returned.remove(&order) {
            return Some(m);
        }
        let at = self.ready.binary_search_by_key(&order, |m| m.order()).ok()?;
        self.ready.remove(at)
    }

    /// The oldest message.
    pub fn head(&self) -> Option<&T> {
        if self.oldest_returned() { self.returned.values().next() } else { self.ready.front() }
    }

    /// Whether it holds no message.
    pub fn is_empty(&self) -> bool {
        self.ready.is_empty() && self.returned.is_empty()
    }

    /// Its messages, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.ready.iter().chain(self.returned.values())
    }

    /// Its messages, in no particular order, to change what is kept of them (never their order).
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.ready.iter_mut().chain(self.returned.values_mut())
    }

    /// Takes every message out, in no particular order.
    pub fn drain(&mut self) -> impl Iterator<Item = T> + '_ {
        self.ready.drain(..).chain(std::mem::take(&mut self.returned).into_values())
    }

    /// Whether `ready` is in strictly rising order and the returned ones are unique by
    /// construction (a state read from a snapshot is checked with this).
    pub fn is_ordered(&self) -> bool {
        self.ready.iter().zip(self.ready.iter().skip(1)).all(|(a, b)| a.order() < b.order())
            && self.returned.iter().all(|(k, m)| *k == m.order())
    }

    /// The orders of up to `n` messages after `after` (from the oldest when `None`), oldest
    /// first: a cursor over the lane that costs the batch, not the lane.
    pub fn orders_after(&self, after: Option<u64>, n: usize) -> Vec<u64> {
        use std::ops::Bound;
        let start = after.map_or(0, |a| self.ready.partition_point(|m| m.order() <= a));
        let mut ready = self.ready.range(start..).map(Ordered::order).peekable();
        let low = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut returned = self.returned.range((low, Bound::Unbounded)).map(|(s, _)| *s).peekable();
        let mut out = Vec::with_capacity(n.min(1024));
        while out.len() < n {
            let next = match (ready.peek(), returned.peek()) {
                (Some(a), Some(b)) if a < b => ready.next(),
                (Some(_), Some(_)) | (None, Some(_)) => returned.next(),
                (Some(_), None) => ready.next(),
                (None, None) => break,
            };
            out.extend(next);
        }
        out
    }
}
