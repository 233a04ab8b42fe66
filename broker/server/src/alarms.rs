//! Resource alarms: the disk, memory and storage conditions that block publishers.
//!
//! Each alarm is raised and cleared by its own monitor; the broker sees one reason at a time
//! (the first raised, in the order of [`Alarm`]), as RabbitMQ's connection.blocked carries one.
//! Connection tasks read whether any is raised without taking the broker lock.

use std::sync::atomic::{AtomicU8, Ordering};

use warren_core::Broker;

use crate::node::Node;
use crate::shared::lock;

/// One resource alarm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alarm {
    /// Free disk space below `disk-free-limit`.
    Disk,
    /// Resident memory above the high watermark.
    Memory,
    /// The store can no longer make writes durable (a failed fsync).
    Storage,
}

impl Alarm {
    const ALL: [Alarm; 3] = [Alarm::Disk, Alarm::Memory, Alarm::Storage];

    fn bit(self) -> u8 {
        1 << self as u8
    }

    /// The reason connection.blocked gives: RabbitMQ's words for disk and memory.
    pub fn reason(self) -> &'static str {
        match self {
            Alarm::Disk => "low on disk",
            Alarm::Memory => "low on memory",
            Alarm::Storage => "storage failed",
        }
    }
}

/// The raised alarms.
#[derive(Debug, Default)]
pub struct Alarms {
    raised: AtomicU8,
}

impl Alarms {
    /// Whether any alarm is raised; cheap enough for every read loop.
    pub fn any(&self) -> bool {
        self.raised.load(Ordering::Acquire) != 0
    }

    /// Whether `alarm` is raised.
    pub fn is_raised(&self, alarm: Alarm) -> bool {
        self.raised.load(Ordering::Acquire) & alarm.bit() != 0
    }

    /// Raises or clears `alarm` and tells every broker of `node` the reason now in force,
    /// waking their connections.
    pub fn set(&self, alarm: Alarm, raised: bool, node: &Node) {
        if raised {
            self.raised.fetch_or(alarm.bit(), Ordering::AcqRel);
        } else {
            self.raised.fetch_and(!alarm.bit(), Ordering::AcqRel);
        }
        for (_, shared) in &node.brokers() {
            let mut s = lock(shared);
            self.tell(&mut s.broker);
            s.wake_all();
        }
    }

    /// Tells `broker` the reason in force now. The alarms are read under the broker's lock,
    /// so when two monitors change them at once, whichever tells a broker last tells it
    /// what both did.
    pub fn tell(&self, broker: &mut Broker) {
        let bits = self.raised.load(Ordering::Acquire);
        let reason = Alarm::ALL.into_iter().find(|a| bits & a.bit() != 0).map(|a| a.reason().to_string());
        broker.set_alarm(reason);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::shared::SystemClock;

    #[test]
    fn the_first_raised_alarm_is_the_reason_and_clearing_one_keeps_the_other() {
        let alarms = Alarms::default();
        let node = Node::new(
            Broker::new(Default::default(), std::time::Instant::now()),
            Vec::new(),
            Arc::new(SystemClock),
            None,
            None,
            None,
        );
        let reason = || lock(node.default_broker()).broker.alarm().map(str::to_string);
        alarms.set(Alarm::Memory, true, &node);
        assert_eq!(reason().as_deref(), Some("low on memory"));
        alarms.set(Alarm::Disk, true, &node);
        assert_eq!(reason().as_deref(), Some("low on disk"));
        alarms.set(Alarm::Disk, false, &node);
        assert_eq!(reason().as_deref(), Some("low on memory"));
        assert!(alarms.any() && alarms.is_raised(Alarm::Memory) && !alarms.is_raised(Alarm::Disk));
        alarms.set(Alarm::Memory, false, &node);
        assert_eq!(reason(), None);
        assert!(!alarms.any());
    }
}
