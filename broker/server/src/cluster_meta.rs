//! The cluster's metadata on this node: how a directory change travels through the
//! metadata group (one JSON command per proposal, in the definitions vocabulary of
//! [`crate::definitions`]) and the machine that applies it ([`NodeMachine`]), which is
//! [`Node::apply_replicated`]: the same [`Directory::apply`] a single node runs, so each
//! change has one meaning whatever carries it.
//!
//! The configuration's users, vhosts, permissions and policies seed a new cluster's
//! directory once (the first seed committed wins; later ones change nothing); after that the
//! directory changes through the management API of any member, as RabbitMQ's definitions
//! are loaded at a cluster's first boot only.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};

use serde::{Deserialize, Serialize};
use warren_core::broker::VHostLimits;
use warren_core::catalog::{Catalog, CatalogCommand, CatalogReply};
use warren_core::directory::{Change, Directory, DirectoryError, SharedDirectory, UserLimit, VHostLimit};
use warren_core::password::{HashAlgorithm, Password};
use warren_core::permissions::Access;

use crate::config::Settings;
use crate::definitions::{
    AccessDefinitions, PermissionDef, PolicyDef, TopicPermissionDef, UserDef, fresh_salt,
};
use crate::node::{ChangeError, Node, NodeRef};
use crate::shared::lock;

/// One directory change as it is proposed and logged.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum ChangeDef {
    /// [`Change::PutUser`].
    PutUser {
        /// The user, its password hashed.
        user: UserDef,
    },
    /// [`Change::DeleteUser`].
    DeleteUser {
        /// Its name.
        name: String,
    },
    /// [`Change::PutVHost`].
    PutVhost {
        /// Its name.
        name: String,
    },
    /// [`Change::SetVHostLimits`].
    SetVhostLimits {
        /// The vhost.
        name: String,
        /// `max-connections`.
        max_connections: Option<usize>,
        /// `max-queues`.
        max_queues: Option<usize>,
    },
    /// [`Change::DeleteVHost`].
    DeleteVhost {
        /// Its name.
        name: String,
    },
    /// [`Change::SetUserLimit`].
    SetUserLimit {
        /// The user.
        user: String,
        /// RabbitMQ's name of the limit.
        limit: String,
        /// The value; `None` for none.
        value: Option<usize>,
    },
    /// [`Change::SetVHostLimit`].
    SetVhostLimit {
        /// The vhost.
        vhost: String,
        /// RabbitMQ's name of the limit.
        limit: String,
        /// The value; `None` for none.
        value: Option<usize>,
    },
    /// [`Change::UpdateUser`].
    UpdateUser {
        /// Its name.
        name: String,
        /// The new password's hash and algorithm (an empty hash: no password login).
        password: Option<(String, String)>,
        /// The new tags.
        tags: Option<Vec<String>>,
    },
    /// [`Change::SetPermission`].
    SetPermission {
        /// The entry.
        permission: PermissionDef,
    },
    /// [`Change::ClearPermission`].
    ClearPermission {
        /// The user.
        user: String,
        /// The vhost.
        vhost: String,
    },
    /// [`Change::SetTopicPermission`].
    SetTopicPermission {
        /// The entry.
        permission: TopicPermissionDef,
    },
    /// [`Change::ClearTopicPermissions`].
    ClearTopicPermissions {
        /// The user.
        user: String,
        /// The vhost.
        vhost: String,
        /// One exchange, or all.
        exchange: Option<String>,
    },
    /// [`Change::PutPolicy`].
    PutPolicy {
        /// The policy.
        policy: PolicyDef,
    },
    /// [`Change::DeletePolicy`].
    DeletePolicy {
        /// Its vhost.
        vhost: String,
        /// Its name.
        name: String,
    },
}

impl ChangeDef {
    /// The definition of `c`; a password in clear is hashed under a fresh salt first, so no
    /// clear password is ever logged or sent to a peer.
    pub fn of(c: &Change) -> std::io::Result<Self> {
        Ok(match c {
            Change::PutUser(u) => ChangeDef::PutUser { user: UserDef::of(u, fresh_salt()?) },
            Change::DeleteUser(n) => ChangeDef::DeleteUser { name: n.clone() },
            Change::PutVHost(n) => ChangeDef::PutVhost { name: n.clone() },
            Change::SetVHostLimits(n, l) => ChangeDef::SetVhostLimits {
                name: n.clone(),
                max_connections: l.max_connections,
                max_queues: l.max_queues,
            },
            Change::DeleteVHost(n) => ChangeDef::DeleteVhost { name: n.clone() },
            Change::SetUserLimit { user, limit, value } => {
                ChangeDef::SetUserLimit { user: user.clone(), limit: limit.name().into(), value: *value }
            }
            Change::SetVHostLimit { vhost, limit, value } => {
                ChangeDef::SetVhostLimit { vhost: vhost.clone(), limit: limit.name().into(), value: *value }
            }
            Change::UpdateUser { name, password, tags } => {
                let password = match password {
                    Some(p) => {
                        let (algorithm, hash) = p.exported(fresh_salt()?);
                        Some((algorithm.name().to_string(), hash))
                    }
                    None => None,
                };
                ChangeDef::UpdateUser { name: name.clone(), password, tags: tags.clone() }
            }
            Change::SetPermission(p) => ChangeDef::SetPermission { permission: PermissionDef::of(p) },
            Change::ClearPermission { user, vhost } => {
                ChangeDef::ClearPermission { user: user.clone(), vhost: vhost.clone() }
            }
            Change::SetTopicPermission(t) => {
                ChangeDef::SetTopicPermission { permission: TopicPermissionDef::of(t) }
            }
            Change::ClearTopicPermissions { user, vhost, exchange } => ChangeDef::ClearTopicPermissions {
                user: user.clone(),
                vhost: vhost.clone(),
                exchange: exchange.clone(),
            },
            Change::PutPolicy(p) => ChangeDef::PutPolicy { policy: PolicyDef::of(p) },
            Change::DeletePolicy { vhost, name } => {
                ChangeDef::DeletePolicy { vhost: vhost.clone(), name: name.clone() }
            }
        })
    }

    /// The change it describes; an error names what cannot be read.
    pub fn change(&self) -> Result<Change, String> {
        Ok(match self {
            ChangeDef::PutUser { user } => Change::PutUser(user.user()?),
            ChangeDef::DeleteUser { name } => Change::DeleteUser(name.clone()),
            ChangeDef::PutVhost { name } => Change::PutVHost(name.clone()),
            ChangeDef::SetVhostLimits { name, max_connections, max_queues } => Change::SetVHostLimits(
                name.clone(),
                VHostLimits { max_connections: *max_connections, max_queues: *max_queues },
            ),
            ChangeDef::DeleteVhost { name } => Change::DeleteVHost(name.clone()),
            ChangeDef::SetUserLimit { user, limit, value } => Change::SetUserLimit {
                user: user.clone(),
                limit: UserLimit::from_name(limit).ok_or_else(|| format!("no user limit '{limit}'"))?,
                value: *value,
            },
            ChangeDef::SetVhostLimit { vhost, limit, value } => Change::SetVHostLimit {
                vhost: vhost.clone(),
                limit: VHostLimit::from_name(limit).ok_or_else(|| format!("no vhost limit '{limit}'"))?,
                value: *value,
            },
            ChangeDef::UpdateUser { name, password, tags } => {
                let password = match password {
                    Some((algorithm, hash)) => {
                        let algorithm = HashAlgorithm::from_name(algorithm).map_err(|e| e.to_string())?;
                        Some(Password::from_hash(algorithm, hash).map_err(|e| e.to_string())?)
                    }
                    None => None,
                };
                Change::UpdateUser { name: name.clone(), password, tags: tags.clone() }
            }
            ChangeDef::SetPermission { permission } => Change::SetPermission(permission.permission()?),
            ChangeDef::ClearPermission { user, vhost } => {
                Change::ClearPermission { user: user.clone(), vhost: vhost.clone() }
            }
            ChangeDef::SetTopicPermission { permission } => {
                Change::SetTopicPermission(permission.permission()?)
            }
            ChangeDef::ClearTopicPermissions { user, vhost, exchange } => Change::ClearTopicPermissions {
                user: user.clone(),
                vhost: vhost.clone(),
                exchange: exchange.clone(),
            },
            ChangeDef::PutPolicy { policy } => Change::PutPolicy(policy.policy()?),
            ChangeDef::DeletePolicy { vhost, name } => {
                Change::DeletePolicy { vhost: vhost.clone(), name: name.clone() }
            }
        })
    }
}

/// What one proposal asks.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum MetaCommand {
    /// Directory changes, all or none.
    Directory(Vec<ChangeDef>),
    /// The configuration's directory, applied only if no seed was before.
    Seed(Vec<ChangeDef>),
    /// A change to the topology (exchanges, queues, bindings).
    Catalog(CatalogCommand),
}

/// The machine's whole state, as a snapshot carries it.
#[derive(Debug, Serialize, Deserialize)]
struct MetaSnapshot {
    seeded: bool,
    /// Warren's access without rules (every user may do everything); definitions cannot say it.
    unrestricted: bool,
    #[serde(flatten)]
    definitions: AccessDefinitions,
    /// The topology.
    #[serde(default)]
    catalog: Catalog,
}

impl MetaSnapshot {
    /// The snapshot of `dir`.
    fn of(dir: &Directory, seeded: bool, catalog: Catalog) -> Result<Self, String> {
        let definitions = AccessDefinitions::of(dir, fresh_salt).map_err(|e| e.to_string())?;
        Ok(MetaSnapshot { seeded, unrestricted: dir.access.is_unrestricted(), definitions, catalog })
    }

    /// The directory it holds.
    fn directory(&self) -> Result<Directory, String> {
        let mut dir = empty(self.unrestricted);
        let plan = self.definitions.plan()?;
        for change in plan.vhosts.into_iter().map(Change::PutVHost).chain(plan.changes) {
            // Unrestricted access is exported as every permission; it is not a rule to keep.
            if !(self.unrestricted && matches!(change, Change::SetPermission(_))) {
                dir.apply(change).map_err(|e| format!("the snapshot: {e}"))?;
            }
        }
        Ok(dir)
    }
}

/// The metadata machine of this node: its directory (and, through it, its vhosts' brokers)
/// and the cluster's topology, which it makes real in those brokers.
pub struct NodeMachine {
    node: Weak<Node>,
    seeded: AtomicBool,
    /// Shared with the node, which reads it to answer forwards ([`Node::catalog`]).
    catalog: Arc<std::sync::Mutex<Catalog>>,
}

impl NodeMachine {
    fn node(&self) -> Result<NodeRef, String> {
        self.node.upgrade().ok_or_else(|| "the node is stopping".to_string())
    }

    fn changes(defs: &[ChangeDef]) -> Result<Vec<Change>, String> {
        defs.iter().map(ChangeDef::change).collect()
    }

    fn catalog(&self) -> std::sync::MutexGuard<'_, Catalog> {
        self.catalog.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies `command` at `index` to the catalog and makes its changes real here.
    fn apply_catalog(&self, node: &Node, index: u64, command: CatalogCommand, live: bool) -> CatalogReply {
        // The catalog's lock is held while the brokers change, so a snapshot never sees a
        // catalog ahead of them.
        let mut catalog = self.catalog();
        let (reply, changes) = catalog.apply(index, command);
        node.materialize(&changes, live);
        reply
    }
}

impl warren_cluster::MetaMachine for NodeMachine {
    fn apply(&self, index: u64, body: &str, live: bool) -> Result<String, String> {
        let node = self.node()?;
        let command: MetaCommand =
            serde_json::from_str(body).map_err(|e| format!("an unreadable metadata command: {e}"))?;
        match command {
            MetaCommand::Directory(defs) => {
                let changes = Self::changes(&defs)?;
                let gone: Vec<String> = changes
                    .iter()
                    .filter_map(|c| match c {
                        Change::DeleteVHost(v) => Some(v.clone()),
                        _ => None,
                    })
                    .collect();
                node.apply_replicated(changes, live).map_err(|e| e.to_string())?;
                // A deleted vhost's topology goes with it, on every member alike.
                for vhost in gone {
                    self.apply_catalog(&node, index, CatalogCommand::DropVHost { vhost }, live);
                }
                Ok("ok".into())
            }
            MetaCommand::Catalog(command) => {
                let reply = self.apply_catalog(&node, index, command, live);
                serde_json::to_string(&reply).map_err(|e| e.to_string())
            }
            MetaCommand::Seed(defs) => {
                if self.seeded.load(Ordering::Acquire) {
                    return Ok("already seeded".into());
                }
                node.apply_replicated(Self::changes(&defs)?, live).map_err(|e| e.to_string())?;
                self.seeded.store(true, Ordering::Release);
                Ok("seeded".into())
            }
        }
    }

    fn snapshot(&self) -> Result<String, String> {
        let node = self.node()?;
        let catalog = self.catalog().clone();
        let snapshot =
            MetaSnapshot::of(&node.directory().load(), self.seeded.load(Ordering::Acquire), catalog)?;
        serde_json::to_string(&snapshot).map_err(|e| e.to_string())
    }

    fn restore(&self, data: &str) -> Result<(), String> {
        let node = self.node()?;
        let snapshot: MetaSnapshot =
            serde_json::from_str(data).map_err(|e| format!("an unreadable snapshot: {e}"))?;
        snapshot.catalog.check().map_err(|e| format!("the snapshot's topology: {e}"))?;
        node.restore_directory(snapshot.directory()?);
        self.seeded.store(snapshot.seeded, Ordering::Release);
        let mut catalog = self.catalog();
        *catalog = snapshot.catalog;
        node.reconcile(&catalog);
        Ok(())
    }

    fn reset(&self) {
        let mut catalog = self.catalog();
        *catalog = Catalog::new();
        if let Ok(node) = self.node() {
            node.restore_directory(empty(false));
            node.reconcile(&catalog);
        }
        self.seeded.store(false, Ordering::Release);
    }

    fn serve(
        &self,
        body: String,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<String, String>> + Send>> {
        let node = self.node.clone();
        Box::pin(async move {
            let node = node.upgrade().ok_or_else(|| "the node is stopping".to_string())?;
            crate::cluster_work::serve(&node, &body).await
        })
    }
}

/// A directory with nothing in it but `/`, before the cluster's seed or snapshot.
pub fn empty(unrestricted: bool) -> Directory {
    Directory {
        users: Vec::new(),
        access: if unrestricted { Access::Unrestricted } else { Access::rules(Vec::new(), Vec::new()) },
        ..Default::default()
    }
}

/// Proposes `changes` to the cluster; `Ok` once they are committed and applied here. They
/// are tried on this node's copy first, so a change the directory refuses is refused with
/// its own reason without a round trip.
pub async fn propose(
    cluster: &warren_cluster::Cluster,
    directory: &SharedDirectory,
    changes: Vec<Change>,
) -> Result<(), ChangeError> {
    let mut trial = (*directory.load()).clone();
    for c in &changes {
        trial.apply(c.clone())?;
    }
    let defs = changes
        .iter()
        .map(ChangeDef::of)
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(|e| ChangeError::Storage(format!("no salt for a password hash: {e}")))?;
    let body = serde_json::to_string(&MetaCommand::Directory(defs))
        .map_err(|e| ChangeError::Storage(e.to_string()))?;
    match cluster.propose(body).await {
        Ok(_) => Ok(()),
        // Another member's change came first and made this one fail everywhere.
        Err(warren_cluster::ProposeError::Refused(why)) => Err(DirectoryError::Invalid(why).into()),
        Err(e) => Err(ChangeError::Unavailable(e.to_string())),
    }
}

/// Tells the cluster this node started (again): the queues it held that do not outlive a
/// restart (transient, exclusive) go, everywhere. Tried until it is committed.
async fn restarted(cluster: Weak<warren_cluster::Cluster>, node: String, boot: u64) {
    let command = MetaCommand::Catalog(CatalogCommand::NodeRestarted { node, boot });
    let Ok(body) = serde_json::to_string(&command) else {
        return;
    };
    loop {
        let Some(cluster) = cluster.upgrade().filter(|c| !c.is_stopped() && c.failure().is_none()) else {
            return;
        };
        if cluster.has_leader() && cluster.is_member() {
            match cluster.propose(body.clone()).await {
                Ok(_) => return,
                Err(e) => tracing::debug!(error = %e, "this node's restart is not committed yet"),
            }
        }
        drop(cluster);
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

/// How long a member must have been down, as the metadata leader's failure detector sees
/// it, before the queues exclusive to its connections go.
pub const NODE_DOWN_CLEANUP: std::time::Duration = std::time::Duration::from_secs(10);

/// On the metadata leader: proposes that a member down past [`NODE_DOWN_CLEANUP`] lost its
/// exclusive queues (once each time it goes down).
async fn watch_down(node: Weak<Node>, cluster: Weak<warren_cluster::Cluster>) {
    let mut down_since: std::collections::HashMap<String, tokio::time::Instant> = Default::default();
    let mut done: std::collections::HashSet<String> = Default::default();
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let (Some(node), Some(cluster)) = (node.upgrade(), cluster.upgrade()) else {
            return;
        };
        if cluster.is_stopped() {
            return;
        }
        let status = cluster.status();
        let now = tokio::time::Instant::now();
        for m in status.members.iter().filter(|m| m.name != status.node) {
            if m.up {
                down_since.remove(&m.name);
                done.remove(&m.name);
                continue;
            }
            let since = *down_since.entry(m.name.clone()).or_insert(now);
            let leads = status.leader.as_deref() == Some(status.node.as_str());
            let owed = node.catalog().lock().unwrap_or_else(|p| p.into_inner()).has_exclusive_of(&m.name);
            if !leads || !owed || now - since < NODE_DOWN_CLEANUP || done.contains(&m.name) {
                continue;
            }
            let command = MetaCommand::Catalog(CatalogCommand::NodeDown { node: m.name.clone() });
            let Ok(body) = serde_json::to_string(&command) else {
                continue;
            };
            match cluster.propose(body).await {
                Ok(_) => {
                    tracing::warn!(node = %m.name, "a member down past the bound: the queues exclusive to its connections are gone");
                    done.insert(m.name.clone());
                }
                Err(e) => {
                    tracing::debug!(node = %m.name, error = %e, "a down member's exclusive queues are not dropped yet")
                }
            }
        }
    }
}

/// Starts this node's membership of the cluster `settings` describe and, in the
/// background, proposes the configuration's seed until one is committed.
pub async fn join(node: &NodeRef, settings: &Settings, boot: u64) -> anyhow::Result<()> {
    let Some(c) = &settings.cluster else {
        return Ok(());
    };
    let machine = Arc::new(NodeMachine {
        node: Arc::downgrade(node),
        seeded: AtomicBool::new(false),
        catalog: node.catalog().clone(),
    });
    let config = warren_cluster::ClusterConfig {
        node: c.node.clone(),
        listen: c.listen,
        peers: c
            .peers
            .iter()
            .map(|(name, addr)| warren_cluster::Member { name: name.clone(), addr: addr.to_string() })
            .collect(),
        dir: settings.data_dir.join("cluster"),
        propose_timeout: c.propose_timeout,
        tls: match &settings.amqps {
            Some((_, t)) => {
                let ca =
                    c.ca.as_ref()
                        .or(t.ca.as_ref())
                        .ok_or_else(|| anyhow::anyhow!("[cluster] with [tls] needs a CA"))?;
                Some(Arc::new(crate::tls::cluster_tls(t, ca)?))
            }
            None => None,
        },
        cookie: c.cookie().map_err(|e| anyhow::anyhow!(e))?,
    };
    // The cluster's topology is the catalog's: queues a node stored on its own before it was
    // ever a member (ids that are not log indexes) have no place in it. As RabbitMQ, a node
    // joins with none (its data dir emptied first), rather than lose them later.
    if !config.dir.join(warren_cluster::store::LOG_FILE).exists() {
        let stored: usize = node.brokers().iter().map(|(_, s)| lock(s).broker.queues().count()).sum();
        if stored > 0 {
            anyhow::bail!(
                "{}: this data dir holds {stored} queue(s) of a single node, but the node has never been a cluster member: a node starts in a cluster with no queues of its own (move their messages off, or give it a fresh data dir)",
                settings.data_dir.display()
            );
        }
    }
    let seed = crate::directory_file::config_changes(settings, &empty(true));
    if warren_cluster::Cluster::starts_new(&config) {
        // A new node waiting to be joined serves its configuration's directory, so its users
        // can ask it to join; the cluster's replaces it at the first entry it applies. Set
        // before the Raft node starts, so no entry can come first.
        let changes = seed.iter().map(|(c, _)| c.clone()).collect();
        if let Err(e) = node.apply_replicated(changes, true) {
            tracing::warn!(error = %e, "the configuration's directory does not apply");
        }
    }
    let cluster = warren_cluster::Cluster::start(config, machine.clone()).await?;
    node.set_cluster(cluster.clone());
    crate::cluster_work::start(node, &cluster);
    tokio::spawn(restarted(Arc::downgrade(&cluster), c.node.clone(), boot));
    tokio::spawn(watch_down(Arc::downgrade(node), Arc::downgrade(&cluster)));
    let defs = seed.iter().map(|(c, _)| ChangeDef::of(c)).collect::<std::io::Result<Vec<_>>>()?;
    let body = serde_json::to_string(&MetaCommand::Seed(defs))?;
    // Until a seed is committed (this one or another member's), the cluster stops, or the
    // seed is refused (then it never will be: the configuration is at fault, and said so).
    let cluster = Arc::downgrade(&cluster);
    tokio::spawn(async move {
        loop {
            let Some(cluster) = cluster.upgrade().filter(|c| !c.is_stopped() && c.failure().is_none()) else {
                return;
            };
            if machine.seeded.load(Ordering::Acquire) {
                return;
            }
            if cluster.has_leader() {
                match cluster.propose(body.clone()).await {
                    Ok(answer) => {
                        tracing::info!(
                            answer,
                            "the configuration's directory was proposed as the cluster's seed"
                        );
                        return;
                    }
                    Err(warren_cluster::ProposeError::Refused(why)) => {
                        tracing::error!(error = %why, "the cluster refuses the configuration's directory as its seed");
                        return;
                    }
                    Err(e) => tracing::debug!(error = %e, "the seed is not committed yet"),
                }
            }
            drop(cluster);
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use warren_core::auth::User;
    use warren_core::permissions::{Pattern, Permission, TopicPermission};

    #[test]
    fn every_change_round_trips_through_its_definition() {
        let all = || Pattern::new(".*").expect("pattern");
        let changes = vec![
            Change::PutUser(User { name: "a".into(), ..User::guest() }),
            Change::DeleteUser("a".into()),
            Change::PutVHost("v".into()),
            Change::SetVHostLimits("v".into(), VHostLimits { max_connections: Some(3), max_queues: None }),
            Change::DeleteVHost("v".into()),
            Change::SetUserLimit { user: "a".into(), limit: UserLimit::MaxChannels, value: Some(4) },
            Change::SetVHostLimit { vhost: "v".into(), limit: VHostLimit::MaxQueues, value: None },
            Change::UpdateUser { name: "a".into(), password: Some(Password::plain("pw")), tags: None },
            Change::SetPermission(Permission {
                user: "a".into(),
                vhost: "v".into(),
                configure: all(),
                write: all(),
                read: all(),
            }),
            Change::ClearPermission { user: "a".into(), vhost: "v".into() },
            Change::SetTopicPermission(
                TopicPermission::new("a", "v", "amq.topic", "^x", ".*").expect("topic"),
            ),
            Change::ClearTopicPermissions { user: "a".into(), vhost: "v".into(), exchange: None },
            Change::DeletePolicy { vhost: "v".into(), name: "p".into() },
        ];
        for c in changes {
            let def = ChangeDef::of(&c).expect("def");
            let text = serde_json::to_string(&def).expect("json");
            assert!(!text.contains("\"pw\""), "no clear password travels: {text}");
            let back: ChangeDef = serde_json::from_str(&text).expect("parse");
            let again = back.change().expect("change");
            // Compared by their definitions: a hashed password is not equal to the clear one.
            assert_eq!(
                serde_json::to_string(&ChangeDef::of(&again).expect("def")).expect("json").len(),
                text.len(),
                "{c:?}"
            );
        }
        let updated = ChangeDef::of(&Change::UpdateUser {
            name: "a".into(),
            password: Some(Password::plain("pw")),
            tags: None,
        })
        .expect("def")
        .change()
        .expect("back");
        let Change::UpdateUser { password: Some(p), .. } = updated else { panic!("an update") };
        assert!(p.verify("pw") && !p.verify("other"));
    }

    /// A change over a few names, so that changes meet: the same user, vhost or policy.
    fn change() -> impl Strategy<Value = Change> {
        let name = || prop::sample::select(vec!["a", "b", "c"]).prop_map(str::to_string);
        let vhost = || prop::sample::select(vec!["/", "v", "w"]).prop_map(str::to_string);
        let pattern = || prop::sample::select(vec!["", ".*", "^q", "x|y"]);
        prop_oneof![
            (name(), any::<bool>()).prop_map(|(n, lo)| Change::PutUser(User {
                name: n,
                loopback_only: lo,
                password: Password::plain("pw"),
                ..User::guest()
            })),
            name().prop_map(Change::DeleteUser),
            vhost().prop_map(Change::PutVHost),
            vhost().prop_map(Change::DeleteVHost),
            (vhost(), prop::option::of(0usize..5)).prop_map(|(v, n)| Change::SetVHostLimit {
                vhost: v,
                limit: VHostLimit::MaxQueues,
                value: n
            }),
            (name(), prop::option::of(0usize..5)).prop_map(|(u, n)| Change::SetUserLimit {
                user: u,
                limit: UserLimit::MaxConnections,
                value: n
            }),
            (name(), vhost(), pattern(), pattern()).prop_map(|(u, v, c, w)| Change::SetPermission(
                Permission {
                    user: u,
                    vhost: v,
                    configure: Pattern::new(c).expect("pattern"),
                    write: Pattern::new(w).expect("pattern"),
                    read: Pattern::new(".*").expect("pattern"),
                }
            )),
            (name(), vhost()).prop_map(|(u, v)| Change::ClearPermission { user: u, vhost: v }),
            (name(), vhost()).prop_map(|(u, v)| Change::SetTopicPermission(
                TopicPermission::new(&u, &v, "amq.topic", "^{username}", ".*").expect("topic")
            )),
            (name(), prop::option::of(prop::collection::vec("[a-z]{1,6}", 0..3)))
                .prop_map(|(n, tags)| { Change::UpdateUser { name: n, password: None, tags } }),
        ]
    }

    /// A directory's contents, compared through its definitions (passwords by whether they
    /// verify, since a hash is salted).
    fn contents(dir: &Directory) -> String {
        let mut defs =
            AccessDefinitions::of(dir, || Ok([7; warren_core::password::SALT_LEN])).expect("export");
        for u in &mut defs.users {
            let verifies = dir.user(&u.name).is_some_and(|x| x.password.verify("pw"));
            u.password_hash = verifies.to_string();
        }
        serde_json::to_string(&defs).expect("json")
    }

    proptest! {
        /// Two members that apply the same log, one from the changes as made and one from
        /// them as the log carries them, hold the same directory and refuse the same
        /// changes; a snapshot restores it exactly.
        #[test]
        fn members_applying_the_same_log_agree_and_a_snapshot_restores_it(
            changes in prop::collection::vec(change(), 0..40)
        ) {
            let mut made = empty(false);
            let mut logged = empty(false);
            for c in changes {
                let carried = ChangeDef::of(&c).expect("def");
                let text = serde_json::to_string(&carried).expect("json");
                let back: ChangeDef = serde_json::from_str(&text).expect("parse");
                let a = made.apply(c);
                let b = logged.apply(back.change().expect("change"));
                prop_assert_eq!(a.is_ok(), b.is_ok());
            }
            prop_assert_eq!(contents(&made), contents(&logged));
            let snapshot = MetaSnapshot::of(&made, true, Catalog::new()).expect("snapshot");
            let text = serde_json::to_string(&snapshot).expect("json");
            let back: MetaSnapshot = serde_json::from_str(&text).expect("parse");
            let restored = back.directory().expect("restore");
            prop_assert_eq!(contents(&restored), contents(&made));
        }
    }
}
