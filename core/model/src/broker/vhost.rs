//! Virtual hosts: each one a namespace of its own exchanges, queues and bindings. A
//! connection names one in connection.open and sees nothing of the others; a queue in one
//! is a 404 in another. Messages never cross between them (dead-lettering, alternate
//! exchanges and exchange-to-exchange bindings stay inside the vhost too).

use crate::hash::Map;
use crate::queue::Queue;

use super::Exchange;

/// Identifies a vhost within the broker: an index, stable while the broker runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct VHostId(pub u32);

impl VHostId {
    /// The vhost a broker was made for (`/` unless [`super::BrokerConfig::vhost`] says
    /// otherwise).
    pub const DEFAULT: VHostId = VHostId(0);
}

/// One vhost's exchanges and queues.
#[derive(Debug)]
pub struct VHost {
    /// Its name, as connection.open and the management API spell it (shared with its queues,
    /// whose errors name it).
    pub name: std::sync::Arc<str>,
    pub(super) queues: Map<String, Queue>,
    pub(super) exchanges: Map<String, Exchange>,
    /// Messages held by delayed-message exchanges, by exchange name (for metrics).
    pub(super) held_by_exchange: Map<String, u64>,
    /// Clients may open it. One that exists only because stored objects name it (the
    /// configuration dropped it) keeps its data but takes no connection.
    pub open: bool,
    /// Client connections open to it (for its connection limit).
    pub(super) connections: usize,
}

impl VHost {
    pub(super) fn new(name: &str) -> Self {
        VHost {
            name: std::sync::Arc::from(name),
            queues: Map::default(),
            exchanges: Map::default(),
            held_by_exchange: Map::default(),
            open: true,
            connections: 0,
        }
    }

    /// Its queues.
    pub fn queues(&self) -> impl Iterator<Item = &Queue> {
        self.queues.values()
    }

    /// A queue by name.
    pub fn queue(&self, name: &str) -> Option<&Queue> {
        self.queues.get(name)
    }

    /// Its exchanges, by name (the default exchange, which has no entry, not among them).
    pub fn exchanges(&self) -> impl Iterator<Item = (&str, &Exchange)> {
        self.exchanges.iter().map(|(n, x)| (n.as_str(), x))
    }

    /// An exchange by name.
    pub fn exchange(&self, name: &str) -> Option<&Exchange> {
        self.exchanges.get(name)
    }
}

/// Every vhost, indexed by [`VHostId`]; none is removed while the broker runs (ids stay valid
/// in timers and deliveries).
#[derive(Debug)]
pub struct VHosts {
    list: Vec<VHost>,
    ids: Map<String, VHostId>,
}

impl VHosts {
    /// Only `first`, which gets [`VHostId::DEFAULT`].
    pub(super) fn new(first: &str) -> Self {
        let mut v = VHosts { list: Vec::new(), ids: Map::default() };
        v.add(first);
        v
    }

    /// Adds `name` unless it exists; its id either way, and whether it is new.
    pub(super) fn add(&mut self, name: &str) -> (VHostId, bool) {
        if let Some(id) = self.ids.get(name) {
            return (*id, false);
        }
        let id = VHostId(self.list.len() as u32);
        self.list.push(VHost::new(name));
        self.ids.insert(name.to_string(), id);
        (id, true)
    }

    /// The id of vhost `name`, if it exists.
    pub fn id(&self, name: &str) -> Option<VHostId> {
        self.ids.get(name).copied()
    }

    /// Every vhost with its id.
    pub fn iter(&self) -> impl Iterator<Item = (VHostId, &VHost)> {
        self.list.iter().enumerate().map(|(i, v)| (VHostId(i as u32), v))
    }

    pub(super) fn iter_mut(&mut self) -> impl Iterator<Item = &mut VHost> {
        self.list.iter_mut()
    }

    /// Every queue of every vhost.
    pub fn all_queues(&self) -> impl Iterator<Item = &Queue> {
        self.list.iter().flat_map(|v| v.queues.values())
    }
}

impl std::ops::Index<VHostId> for VHosts {
    type Output = VHost;
    fn index(&self, id: VHostId) -> &VHost {
        &self.list[id.0 as usize]
    }
}

impl std::ops::IndexMut<VHostId> for VHosts {
    fn index_mut(&mut self, id: VHostId) -> &mut VHost {
        &mut self.list[id.0 as usize]
    }
}
