//! The node: one broker model per vhost, each behind a lock of its own ([`crate::shared`]),
//! and the store they share. Connections to different vhosts never wait on each other's
//! lock; what the brokers must agree on (connection and queue ids, the node-wide limits) is
//! in their shared [`warren_core::broker::Census`], without a lock.
//!
//! Which broker a connection uses is settled by its handshake: connection.open names the
//! vhost (see [`Node::for_handshake`]). `/` is always first; vhosts that only stored data
//! names (the configuration dropped them) live, closed, in the `/` broker.

use std::sync::Arc;

use warren_core::storage::SharedStore;
use warren_core::{Broker, Connection};

use crate::shared::{Clock, Shared, SharedRef};

/// Every vhost's broker, `/` first.
pub struct Node {
    vhosts: Vec<(Arc<str>, SharedRef)>,
    store: Option<SharedStore>,
}

/// A handle on the node.
pub type NodeRef = Arc<Node>;

impl Node {
    /// The node of `default` (the broker of `/`) and `others` (one per other vhost), their
    /// time from `clock`, sharing `store` when they have one.
    pub fn new(
        default: Broker,
        others: Vec<Broker>,
        clock: Arc<dyn Clock>,
        store: Option<SharedStore>,
    ) -> NodeRef {
        let vhosts = std::iter::once(default)
            .chain(others)
            .map(|b| {
                let name = b.vhosts().iter().next().map_or_else(|| Arc::from("/"), |(_, v)| v.name.clone());
                (name, Shared::new(b, clock.clone()))
            })
            .collect();
        Arc::new(Node { vhosts, store })
    }

    /// The broker of `/`.
    pub fn default_broker(&self) -> &SharedRef {
        // `new` always puts it first.
        &self.vhosts[0].1
    }

    /// The broker serving vhost `name`, if one does.
    pub fn broker(&self, name: &str) -> Option<&SharedRef> {
        self.vhosts.iter().find(|(n, _)| &**n == name).map(|(_, s)| s)
    }

    /// Every broker with the vhost it serves, `/` first.
    pub fn brokers(&self) -> impl Iterator<Item = (&str, &SharedRef)> + Clone {
        self.vhosts.iter().map(|(n, s)| (&**n, s))
    }

    /// The broker that handles `conn`'s handshake: that of the vhost its connection.open
    /// names once the frame has been read, `/`'s until then and for a vhost no broker serves
    /// (which `/` refuses with 530, as it refuses one the configuration dropped).
    pub fn for_handshake(&self, conn: &Connection) -> &SharedRef {
        conn.opening_vhost().and_then(|v| self.broker(&v)).unwrap_or(self.default_broker())
    }

    /// The store the brokers share, when they have one.
    pub fn store(&self) -> Option<&SharedStore> {
        self.store.as_ref()
    }
}
