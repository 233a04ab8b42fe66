//! The one piece of state every task shares: the broker model behind a std mutex, the
//! wakers of the connection tasks, and the clock the model is given.
//!
//! The lock is never held across an await: what runs under it is pure computation in the
//! model. It imports nothing else of this crate, so every other module can depend on it
//! without a cycle.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;
use tracing::{info, warn};
use warren_core::stats::BrokerEvent;
use warren_core::{Broker, ConnId};

/// Where the model's time comes from: the driver reads it and hands it in, so the model
/// never reads a clock itself (and a test can hand in its own).
pub trait Clock: Send + Sync {
    /// Monotonic now, and wall-clock milliseconds since the epoch.
    fn now(&self) -> (Instant, u64);
}

/// The machine's clocks.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> (Instant, u64) {
        let unix_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        (Instant::now(), unix_ms)
    }
}

/// What a cluster member's broker gave for the cluster to carry: changes to propose and
/// messages for queues on other nodes, in the order the broker made them.
#[derive(Debug, Default)]
pub struct ClusterWork {
    /// Changes for the metadata group.
    pub proposals: Vec<warren_core::broker::Proposal>,
    /// Messages for other nodes.
    pub forwards: Vec<warren_core::broker::Forward>,
}

/// Where a cluster member's broker sends its [`ClusterWork`].
pub type ClusterOutbox = tokio::sync::mpsc::UnboundedSender<ClusterWork>;

/// State shared by all connection tasks.
pub struct Shared {
    /// The broker model.
    pub broker: Broker,
    clock: Arc<dyn Clock>,
    wakers: HashMap<ConnId, Arc<Notify>>,
    woken: Vec<ConnId>,
    timer: Arc<Notify>,
    events: Vec<BrokerEvent>,
    /// A cluster member's: where proposals and forwards go.
    outbox: Option<ClusterOutbox>,
}

impl Shared {
    /// Shares `broker`, whose time comes from `clock`.
    pub fn new(broker: Broker, clock: Arc<dyn Clock>) -> SharedRef {
        Arc::new(Mutex::new(Shared {
            broker,
            clock,
            wakers: HashMap::new(),
            woken: Vec::new(),
            timer: Arc::new(Notify::new()),
            events: Vec::new(),
            outbox: None,
        }))
    }

    /// Sends what the broker gives for the cluster to `outbox` from now on.
    pub fn set_outbox(&mut self, outbox: ClusterOutbox) {
        self.outbox = Some(outbox);
        self.send_cluster_work();
    }

    /// Hands the broker's proposals and forwards to the cluster, if it has any.
    fn send_cluster_work(&mut self) {
        if let Some(outbox) = &self.outbox
            && self.broker.has_cluster_work()
        {
            let work = ClusterWork {
                proposals: self.broker.take_proposals(),
                forwards: self.broker.take_forwards(),
            };
            // The receiver goes only when the node stops.
            let _ = outbox.send(work);
        }
    }

    /// Notified when the broker's earliest timer may have moved earlier.
    pub fn timer(&self) -> Arc<Notify> {
        self.timer.clone()
    }

    /// Registers the task of connection `id`, woken when the broker queues frames for it.
    pub fn register(&mut self, id: ConnId, notify: Arc<Notify>) {
        self.wakers.insert(id, notify);
    }

    /// Connection tasks registered for waking.
    pub fn registered(&self) -> usize {
        self.wakers.len()
    }

    /// Forgets the task of connection `id`.
    pub fn unregister(&mut self, id: ConnId) {
        self.wakers.remove(&id);
    }

    /// Wakes every connection the broker queued frames for (after work no connection did).
    pub fn wake_all(&mut self) {
        let _ = self.wake_others(None);
    }

    /// Wakes every connection the broker queued frames for, except `me`; returns whether it
    /// woke any.
    pub fn wake_others(&mut self, me: Option<ConnId>) -> bool {
        if self.broker.take_timer_changed() {
            self.timer.notify_one();
        }
        self.send_cluster_work();
        self.broker.take_events(&mut self.events);
        for e in self.events.drain(..) {
            match e {
                BrokerEvent::QueueDeclared { queue, durable } => info!(%queue, durable, "queue declared"),
                BrokerEvent::QueueDeleted { queue } => info!(%queue, "queue deleted"),
                BrokerEvent::StorageError { error } => tracing::error!(%error, "storage write failed"),
                BrokerEvent::Cluster { detail } => warn!(%detail, "the cluster's topology"),
                BrokerEvent::ConsumerTimedOut { consumer, detail } => {
                    warn!(%consumer, %detail, "consumer cancelled for its consumer timeout")
                }
            }
        }
        self.broker.take_wakeups(&mut self.woken);
        let mut woke = false;
        for id in self.woken.drain(..) {
            if Some(id) != me
                && let Some(n) = self.wakers.get(&id)
            {
                n.notify_one();
                woke = true;
            }
        }
        woke
    }
}

/// A handle on the shared state.
pub type SharedRef = Arc<Mutex<Shared>>;

/// Locks the shared state and hands the broker the time from its clock. A panic while the
/// lock was held (a bug) must not stop the other connections, hence the poison is ignored.
pub fn lock(shared: &SharedRef) -> MutexGuard<'_, Shared> {
    let mut guard = shared.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let (now, unix_ms) = guard.clock.now();
    guard.broker.set_time(now, unix_ms);
    guard
}
