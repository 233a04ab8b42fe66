//! The node: one broker model per vhost, each behind a lock of its own ([`crate::shared`]),
//! the store they share and the directory (users, vhosts, permissions) they all read.
//! Connections to different vhosts never wait on each other's lock; what the brokers must
//! agree on (connection and queue ids, the node-wide limits) is in their shared
//! [`warren_core::broker::Census`], without a lock.
//!
//! Which broker a connection uses is settled by its handshake: connection.open names the
//! vhost (see [`Node::for_handshake`]). `/` is always there; vhosts that only stored data
//! names (the directory dropped them) live, closed, in the `/` broker. Vhosts come and go at
//! run time ([`Node::add_vhost`], [`Node::remove_vhost`]), each change made durable in the
//! directory file before it is published.

use std::sync::{Arc, RwLock};

use warren_core::directory::{Change, Directory, DirectoryError, SharedDirectory};
use warren_core::storage::SharedStore;
use warren_core::{Broker, Connection};

use crate::directory_file::DirectoryFile;
use tokio::time::Instant;

use crate::shared::{Clock, Shared, SharedRef, lock};

/// Builds the broker of a vhost created at run time, as start-up builds the others (same
/// settings, plugins and store).
pub type VHostMaker = Box<dyn Fn(&str) -> Broker + Send + Sync>;

/// Every vhost's broker, `/` first.
pub struct Node {
    default: (Arc<str>, SharedRef),
    others: RwLock<Vec<(Arc<str>, SharedRef)>>,
    store: Option<SharedStore>,
    clock: Arc<dyn Clock>,
    maker: Option<VHostMaker>,
    file: Option<DirectoryFile>,
    directory: SharedDirectory,
    /// One vhost change at a time: a vhost is in the directory exactly when it has a broker.
    vhost_changes: tokio::sync::Mutex<()>,
    /// The cluster, when the node is a member of one: directory changes are proposed to its
    /// metadata group and made by [`Node::apply_replicated`] on every member.
    cluster: std::sync::OnceLock<Arc<warren_cluster::Cluster>>,
    /// Where every broker of a cluster member sends its proposals and forwards.
    outbox: std::sync::OnceLock<crate::shared::ClusterOutbox>,
    /// Vhosts `/`'s broker serves besides `/` (their data was stored there when the directory
    /// had dropped them, and they opened there again).
    hosted: RwLock<Vec<Arc<str>>>,
    /// The cluster's topology as this member applied it (empty on a single node).
    catalog: Arc<std::sync::Mutex<warren_core::catalog::Catalog>>,
}

/// A handle on the node.
pub type NodeRef = Arc<Node>;

/// Why a directory change was not made.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// The directory refused it.
    #[error(transparent)]
    Refused(#[from] DirectoryError),
    /// It could not be made durable; nothing changed.
    #[error("the change could not be stored: {0}")]
    Storage(String),
    /// This node cannot do it (built without a way to make vhosts).
    #[error("{0}")]
    Unsupported(&'static str),
    /// The cluster could not commit it (no quorum), or cannot say whether it did.
    #[error("{0}")]
    Unavailable(String),
}

impl Node {
    /// The node of `default` (the broker of `/`) and `others` (one per other vhost), their
    /// time from `clock`, sharing `store` when they have one; `maker` builds the brokers of
    /// vhosts added at run time, and `file` keeps the directory (none: changes last as long
    /// as the process).
    pub fn new(
        default: Broker,
        others: Vec<Broker>,
        clock: Arc<dyn Clock>,
        store: Option<SharedStore>,
        maker: Option<VHostMaker>,
        file: Option<DirectoryFile>,
    ) -> NodeRef {
        let named = |b: Broker| {
            let name = b.vhosts().iter().next().map_or_else(|| Arc::from("/"), |(_, v)| v.name.clone());
            (name, Shared::new(b, clock.clone()))
        };
        let directory = default.shared_directory().clone();
        let default = named(default);
        let others = others.into_iter().map(named).collect();
        Arc::new(Node {
            default,
            others: RwLock::new(others),
            store,
            clock: clock.clone(),
            maker,
            file,
            directory,
            vhost_changes: tokio::sync::Mutex::new(()),
            cluster: std::sync::OnceLock::new(),
            outbox: std::sync::OnceLock::new(),
            catalog: Arc::default(),
            hosted: RwLock::default(),
        })
    }

    /// Makes the node a member of `cluster`: from now on its directory changes are replicated.
    pub fn set_cluster(&self, cluster: Arc<warren_cluster::Cluster>) {
        if self.cluster.set(cluster).is_err() {
            tracing::error!("the node joined a cluster twice; the first one stays");
        }
    }

    /// The cluster's topology as this member applied it; its lock is taken before any
    /// broker's, never after.
    pub fn catalog(&self) -> &Arc<std::sync::Mutex<warren_core::catalog::Catalog>> {
        &self.catalog
    }

    /// Whether the node is a member of a cluster.
    pub fn is_clustered(&self) -> bool {
        self.cluster.get().is_some()
    }

    /// Has every broker, and those made later, send its cluster work to `outbox`.
    pub fn set_outbox(&self, outbox: crate::shared::ClusterOutbox) {
        if self.outbox.set(outbox.clone()).is_err() {
            return;
        }
        for (_, shared) in self.brokers() {
            lock(&shared).set_outbox(outbox.clone());
        }
    }

    /// Makes catalog `changes` real in the brokers of their vhosts.
    /// `live` is false for changes of entries applied again at a start.
    pub fn materialize(&self, changes: &[warren_core::catalog::CatalogChange], live: bool) {
        for c in changes {
            let vhost = c.vhost();
            let shared = self.broker(vhost).unwrap_or_else(|| self.default.1.clone());
            let mut s = lock(&shared);
            s.broker.catalog_changed(c, live);
            s.wake_all();
        }
    }

    /// Brings every broker to what `catalog` holds.
    pub fn reconcile(&self, catalog: &warren_core::catalog::Catalog) {
        for (vhost, shared) in self.vhost_brokers() {
            let mut s = lock(&shared);
            s.broker.catalog_reconcile(&vhost, catalog.vhost(&vhost), catalog.applied());
            s.wake_all();
        }
    }

    /// The cluster the node is a member of, if any.
    pub fn cluster(&self) -> Option<&Arc<warren_cluster::Cluster>> {
        self.cluster.get()
    }

    /// The broker of `/`.
    pub fn default_broker(&self) -> &SharedRef {
        &self.default.1
    }

    /// The broker serving vhost `name`, if one does.
    pub fn broker(&self, name: &str) -> Option<SharedRef> {
        if *self.default.0 == *name {
            return Some(self.default.1.clone());
        }
        let others = self.others.read().unwrap_or_else(|p| p.into_inner());
        if let Some((_, s)) = others.iter().find(|(n, _)| &**n == name) {
            return Some(s.clone());
        }
        let hosted = self.hosted.read().unwrap_or_else(|p| p.into_inner());
        hosted.iter().any(|n| &**n == name).then(|| self.default.1.clone())
    }

    /// Every vhost with the broker serving it, those `/`'s broker hosts besides `/` too.
    pub fn vhost_brokers(&self) -> Vec<(Arc<str>, SharedRef)> {
        let mut all = self.brokers();
        let hosted = self.hosted.read().unwrap_or_else(|p| p.into_inner());
        all.extend(hosted.iter().map(|n| (n.clone(), self.default.1.clone())));
        all
    }

    /// Every broker with the vhost it serves, `/` first, as they are now.
    pub fn brokers(&self) -> Vec<(Arc<str>, SharedRef)> {
        let others = self.others.read().unwrap_or_else(|p| p.into_inner());
        std::iter::once(self.default.clone()).chain(others.iter().cloned()).collect()
    }

    /// The broker that handles `conn`'s handshake: that of the vhost its connection.open
    /// names once the frame has been read, `/`'s until then and for a vhost no broker serves
    /// (which `/` refuses with 530, as it refuses one the directory dropped).
    pub fn for_handshake(&self, conn: &Connection) -> SharedRef {
        conn.opening_vhost().and_then(|v| self.broker(&v)).unwrap_or_else(|| self.default.1.clone())
    }

    /// The store the brokers share, when they have one.
    pub fn store(&self) -> Option<&SharedStore> {
        self.store.as_ref()
    }

    /// The node's directory.
    pub fn directory(&self) -> &SharedDirectory {
        &self.directory
    }

    /// Applies `changes` to the directory, all or none, durably when the node has a file.
    /// Vhosts change through [`Node::add_vhost`] and [`Node::remove_vhost`] only.
    pub async fn change_directory(self: &Arc<Self>, changes: Vec<Change>) -> Result<(), ChangeError> {
        if changes.iter().any(|c| matches!(c, Change::PutVHost(_) | Change::DeleteVHost(_))) {
            return Err(ChangeError::Unsupported("vhosts are added and removed with their brokers"));
        }
        self.commit(changes).await
    }

    /// Applies and saves `changes` off the async workers: a save serializes the directory and
    /// waits for two fsyncs.
    async fn commit(self: &Arc<Self>, changes: Vec<Change>) -> Result<(), ChangeError> {
        if let Some(cluster) = self.cluster.get() {
            return crate::cluster_meta::propose(cluster, &self.directory, changes).await;
        }
        let node = self.clone();
        let saved = tokio::task::spawn_blocking(move || {
            node.directory.change(changes, |next: &Directory| match &node.file {
                Some(f) => f.save(next).map_err(|e| ChangeError::Storage(e.to_string())),
                None => Ok(()),
            })
        });
        saved.await.map_err(|e| ChangeError::Storage(format!("the save did not finish: {e}")))?
    }

    /// Creates vhost `name` with a broker of its own, then applies `then` (the creator's
    /// permissions, say) with it; nothing if it exists already but `then`.
    pub async fn add_vhost(self: &Arc<Self>, name: &str, then: Vec<Change>) -> Result<(), ChangeError> {
        let _one = self.vhost_changes.lock().await;
        if self.directory().load().vhosts.contains_key(name) {
            return self.commit(then).await;
        }
        if self.maker.is_none() {
            return Err(ChangeError::Unsupported("this node cannot add vhosts"));
        }
        let mut changes = vec![Change::PutVHost(name.to_string())];
        changes.extend(then);
        // In a cluster, every member (this one too) makes the broker as it applies the change.
        let replicated = self.cluster.get().is_some();
        self.commit(changes).await?;
        if !replicated {
            self.open_vhost(name);
        }
        Ok(())
    }

    /// Gives vhost `name` a broker: the one it had, when it was closed with its data kept (a
    /// replayed deletion), or `/`'s, when the directory once dropped it and its data is still
    /// there (it opens there again rather than in a new broker that would not see that data);
    /// else a new one.
    fn open_vhost(&self, name: &str) {
        if let Some(own) =
            self.others.read().unwrap_or_else(|p| p.into_inner()).iter().find(|(n, _)| &**n == name)
        {
            lock(&own.1).broker.add_vhost(name);
            return;
        }
        if lock(&self.default.1).broker.vhosts().id(name).is_some() {
            lock(&self.default.1).broker.add_vhost(name);
            let mut hosted = self.hosted.write().unwrap_or_else(|p| p.into_inner());
            if !hosted.iter().any(|n| &**n == name) {
                hosted.push(Arc::from(name));
            }
            return;
        }
        let Some(maker) = self.maker.as_ref() else {
            tracing::error!(vhost = name, "this node cannot make brokers for new vhosts");
            return;
        };
        let shared = Shared::new(maker(name), self.clock.clone());
        if let Some(outbox) = self.outbox.get() {
            lock(&shared).set_outbox(outbox.clone());
        }
        tokio::spawn(run_timers(Arc::downgrade(&shared)));
        self.others.write().unwrap_or_else(|p| p.into_inner()).push((Arc::from(name), shared));
    }

    /// Lets go of vhost `name`'s broker once its vhost is deleted.
    fn forget_vhost(&self, name: &str) {
        self.hosted.write().unwrap_or_else(|p| p.into_inner()).retain(|n| &**n != name);
        let gone = {
            let mut others = self.others.write().unwrap_or_else(|p| p.into_inner());
            others.iter().position(|(n, _)| &**n == name).map(|i| others.remove(i).1)
        };
        // Its timer task ends once it sees the broker gone.
        if let Some(gone) = gone {
            lock(&gone).timer().notify_one();
        }
    }

    /// Applies `changes` as the cluster's metadata group committed them, on every member
    /// alike: all or none, vhosts gaining or losing their brokers. Refused as on every member.
    /// `live` is false for entries applied again at a start (the log after the snapshot): a
    /// vhost they delete is closed with its data kept, since that data may belong to a later
    /// vhost of the same name the log goes on to make.
    pub fn apply_replicated(&self, changes: Vec<Change>, live: bool) -> Result<(), DirectoryError> {
        let before = self.directory.load();
        let mut next = (*before).clone();
        for c in changes {
            next.apply(c)?;
        }
        if !next.vhosts.contains_key("/") {
            return Err(DirectoryError::Invalid("the default vhost '/' cannot be deleted".into()));
        }
        self.converge(&before, next, live);
        Ok(())
    }

    /// Replaces the whole directory with `next` (a replicated snapshot's, or the empty one a
    /// log applied from its start begins with); a vhost it drops is closed with its data kept.
    pub fn restore_directory(&self, mut next: Directory) {
        next.vhosts.entry("/".to_string()).or_default();
        let before = self.directory.load();
        self.converge(&before, next, false);
    }

    /// Closes the vhosts `next` drops (their sessions with 320; their queues and exchanges
    /// deleted when `delete`, else kept, closed), opens those it adds, and publishes it.
    fn converge(&self, before: &Directory, next: Directory, delete: bool) {
        for gone in before.vhosts.keys().filter(|v| !next.vhosts.contains_key(*v)) {
            let shared = self.broker(gone).unwrap_or_else(|| self.default.1.clone());
            if !delete {
                let mut s = lock(&shared);
                s.broker.close_vhost(gone);
                s.wake_all();
                continue;
            }
            let deleted = {
                let mut s = lock(&shared);
                let r = s.broker.delete_vhost(gone);
                s.wake_all();
                r
            };
            if let Err(e) = deleted {
                tracing::error!(vhost = %gone, error = %e, "a deleted vhost's queues could not all be deleted here");
            }
            self.forget_vhost(gone);
        }
        for new in next.vhosts.keys().filter(|v| !before.vhosts.contains_key(*v)) {
            self.open_vhost(new);
        }
        self.directory.replace(next);
    }

    /// Deletes vhost `name`: its connections and sessions are closed (320), its queues (with
    /// their messages) and exchanges deleted and those deletions synced to disk, then it
    /// leaves the directory with every permission on it. A store that cannot record or sync a
    /// deletion stops it with an error: what was deleted stays deleted, and the vhost stays,
    /// open again.
    pub async fn remove_vhost(self: &Arc<Self>, name: &str) -> Result<(), ChangeError> {
        let _one = self.vhost_changes.lock().await;
        if !self.directory().load().vhosts.contains_key(name) {
            return Err(DirectoryError::NoVHost(name.to_string()).into());
        }
        if name == "/" {
            return Err(DirectoryError::Invalid("the default vhost '/' cannot be deleted".into()).into());
        }
        if self.cluster.get().is_some() {
            // Every member deletes its part as it applies the change.
            return self.commit(vec![Change::DeleteVHost(name.to_string())]).await;
        }
        let shared = self.broker(name).unwrap_or_else(|| self.default.1.clone());
        let written = {
            let mut s = lock(&shared);
            let r = s.broker.delete_vhost(name);
            s.wake_all();
            r.map_err(ChangeError::Storage)?;
            s.broker.unsynced_position()
        };
        let settled = match written {
            Some(position) => self.synced(&shared, position).await,
            None => Ok(()),
        };
        if let Err(e) = settled.and(self.commit(vec![Change::DeleteVHost(name.to_string())]).await) {
            lock(&shared).broker.add_vhost(name);
            return Err(e);
        }
        self.forget_vhost(name);
        Ok(())
    }

    /// Waits until `shared`'s store has synced past `position`.
    pub async fn synced(&self, shared: &SharedRef, position: u64) -> Result<(), ChangeError> {
        let deadline = tokio::time::Instant::now() + SYNC_WAIT;
        loop {
            {
                let s = lock(shared);
                if s.broker.is_durable_to(position) {
                    return Ok(());
                }
                if let Some(why) = s.broker.storage_failure() {
                    return Err(ChangeError::Storage(why.to_string()));
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ChangeError::Storage("the writes were not synced in time".into()));
            }
            // Forwarded messages' confirms wait on this: the syncer's rounds take about 1 ms.
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }
}

/// How long a vhost deletion waits for the store to sync what it deleted.
const SYNC_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Runs the broker's timed work (TTL expiry, retry delays, queue expiry) when it is due.
pub async fn run_timers(broker: std::sync::Weak<std::sync::Mutex<Shared>>) {
    let Some(notify) = broker.upgrade().map(|b| lock(&b).timer()) else {
        return;
    };
    loop {
        // A broker the node let go of (its vhost deleted) has no timers left to run.
        let Some(shared) = broker.upgrade() else {
            return;
        };
        let next = {
            let mut s = lock(&shared);
            s.broker.handle_timeout();
            s.wake_others(None);
            s.broker.poll_timeout()
        };
        drop(shared);
        match next {
            Some(at) => {
                tokio::select! {
                    () = tokio::time::sleep_until(Instant::from_std(at)) => {}
                    () = notify.notified() => {}
                }
            }
            // Woken now and then regardless, to notice a let-go broker whose last connections
            // outlived the notification.
            None => {
                tokio::select! {
                    () = tokio::time::sleep(std::time::Duration::from_secs(5)) => {}
                    () = notify.notified() => {}
                }
            }
        }
    }
}
