//! The node's directory: its users, its vhosts (with their limits) and who may do what in
//! which ([`Access`]). Every broker of a node reads the same one; it changes only through
//! [`Directory::apply`], a deterministic step from one state to the next, so that the same
//! [`Change`]s replayed from a file (or, later, a replicated log) rebuild the same directory.
//!
//! [`SharedDirectory`] publishes each new state whole: a broker keeps the state it last read
//! and takes the next one at the start of its next command, when the version has moved, so
//! a revoked permission holds from the next operation on, as in RabbitMQ.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use crate::auth::{User, UserLimits};
use crate::broker::VHostLimits;
use crate::permissions::{Access, Permission, TopicPermission};
use crate::policy::Policy;

/// Users a directory holds at most.
pub const MAX_USERS: usize = 10_000;
/// Vhosts a directory holds at most: each is a broker with its own lock and timer task.
pub const MAX_VHOSTS: usize = 1_000;
/// Permission entries (plain and topic, each) a directory holds at most.
pub const MAX_PERMISSIONS: usize = 100_000;
/// Policies a directory holds at most.
pub const MAX_POLICIES: usize = 10_000;
/// Tags one user has at most.
pub const MAX_TAGS: usize = 32;

/// What a node knows of who may log in and where.
#[derive(Debug, Clone)]
pub struct Directory {
    /// Who may log in.
    pub users: Vec<User>,
    /// The vhosts that exist, with their limits.
    pub vhosts: BTreeMap<String, VHostLimits>,
    /// Who may do what in which vhost.
    pub access: Access,
    /// Queue policies, by vhost and name.
    pub policies: Vec<Policy>,
}

impl Default for Directory {
    /// RabbitMQ's fresh node: guest, `/`, and (Warren's default without rules) no restriction.
    fn default() -> Self {
        Directory {
            users: vec![User::guest()],
            vhosts: BTreeMap::from([("/".to_string(), VHostLimits::default())]),
            access: Access::Unrestricted,
            policies: Vec::new(),
        }
    }
}

/// One step of the directory, as the management API and a definitions import make them.
#[derive(Debug, Clone)]
pub enum Change {
    /// Adds a user, or replaces the one of that name.
    PutUser(User),
    /// Deletes a user and every permission it had.
    DeleteUser(String),
    /// Adds a vhost unless it exists.
    PutVHost(String),
    /// Sets a vhost's limits.
    SetVHostLimits(String, VHostLimits),
    /// Deletes a vhost and every permission on it.
    DeleteVHost(String),
    /// Sets (`Some`) or clears one of a user's limits, leaving the other as it is.
    SetUserLimit {
        /// The user.
        user: String,
        /// Which.
        limit: UserLimit,
        /// The new value; `None` for no limit.
        value: Option<usize>,
    },
    /// Sets or clears one of a vhost's limits, leaving the other as it is.
    SetVHostLimit {
        /// The vhost.
        vhost: String,
        /// Which.
        limit: VHostLimit,
        /// The new value; `None` for no limit.
        value: Option<usize>,
    },
    /// Adds a user, or changes the password and tags of the one of that name, keeping what
    /// the change does not name (its limits, whether it is loopback-only): the API's PUT.
    UpdateUser {
        /// Login name.
        name: String,
        /// The new password; `None` keeps the old one (required for a new user).
        password: Option<crate::password::Password>,
        /// The new tags; `None` keeps the old ones.
        tags: Option<Vec<String>>,
    },
    /// Sets a user's permissions on a vhost, replacing what it had there.
    SetPermission(Permission),
    /// Clears a user's permissions on a vhost.
    ClearPermission {
        /// The user.
        user: String,
        /// The vhost.
        vhost: String,
    },
    /// Sets a user's topic permissions on one exchange of a vhost.
    SetTopicPermission(TopicPermission),
    /// Clears a user's topic permissions on a vhost: on one exchange, or on every one.
    ClearTopicPermissions {
        /// The user.
        user: String,
        /// The vhost.
        vhost: String,
        /// The exchange; `None` for all of them.
        exchange: Option<String>,
    },
    /// Adds a policy, or replaces the one of its vhost and name.
    PutPolicy(Policy),
    /// Deletes a policy.
    DeletePolicy {
        /// Its vhost.
        vhost: String,
        /// Its name.
        name: String,
    },
}

/// One of a user's limits, by RabbitMQ's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserLimit {
    /// `max-connections`.
    MaxConnections,
    /// `max-channels`.
    MaxChannels,
}

/// One of a vhost's limits, by RabbitMQ's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VHostLimit {
    /// `max-connections`.
    MaxConnections,
    /// `max-queues`.
    MaxQueues,
}

impl UserLimit {
    /// The limit RabbitMQ names `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "max-connections" => Some(UserLimit::MaxConnections),
            "max-channels" => Some(UserLimit::MaxChannels),
            _ => None,
        }
    }

    /// RabbitMQ's name of it.
    pub fn name(self) -> &'static str {
        match self {
            UserLimit::MaxConnections => "max-connections",
            UserLimit::MaxChannels => "max-channels",
        }
    }
}

impl VHostLimit {
    /// The limit RabbitMQ names `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "max-connections" => Some(VHostLimit::MaxConnections),
            "max-queues" => Some(VHostLimit::MaxQueues),
            _ => None,
        }
    }

    /// RabbitMQ's name of it.
    pub fn name(self) -> &'static str {
        match self {
            VHostLimit::MaxConnections => "max-connections",
            VHostLimit::MaxQueues => "max-queues",
        }
    }
}

/// Why a change was refused; the directory is as it was.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DirectoryError {
    /// The user does not exist.
    #[error("no user '{0}'")]
    NoUser(String),
    /// The vhost does not exist.
    #[error("no vhost '{0}'")]
    NoVHost(String),
    /// No such policy.
    #[error("no policy '{name}' in vhost '{vhost}'")]
    NoPolicy {
        /// Its vhost.
        vhost: String,
        /// Its name.
        name: String,
    },
    /// No such permission entry.
    #[error("no permissions for user '{user}' on vhost '{vhost}'")]
    NoPermission {
        /// The user.
        user: String,
        /// The vhost.
        vhost: String,
    },
    /// A bound of the directory is reached.
    #[error("{what} limit ({max}) is reached")]
    Full {
        /// What is full.
        what: &'static str,
        /// Its bound.
        max: usize,
    },
    /// The change is not allowed as such.
    #[error("{0}")]
    Invalid(String),
}

impl Directory {
    /// The user named `name`.
    pub fn user(&self, name: &str) -> Option<&User> {
        self.users.iter().find(|u| u.name == name)
    }

    /// The limits of vhost `name` (none for one the directory does not know).
    pub fn vhost_limits(&self, name: &str) -> VHostLimits {
        self.vhosts.get(name).copied().unwrap_or_default()
    }

    /// Applies `change`, or refuses it and stays as it was.
    pub fn apply(&mut self, change: Change) -> Result<(), DirectoryError> {
        match change {
            Change::PutUser(user) => {
                if user.name.is_empty() || user.name.len() > 255 {
                    return Err(DirectoryError::Invalid("a user name must be 1 to 255 bytes long".into()));
                }
                if user.tags.len() > MAX_TAGS || user.tags.iter().any(|t| t.len() > 255) {
                    return Err(DirectoryError::Invalid(format!(
                        "a user has at most {MAX_TAGS} tags of 255 bytes"
                    )));
                }
                let full = self.users.len() >= MAX_USERS;
                match self.users.iter_mut().find(|u| u.name == user.name) {
                    Some(u) => *u = user,
                    None if full => return Err(DirectoryError::Full { what: "user", max: MAX_USERS }),
                    None => self.users.push(user),
                }
            }
            Change::DeleteUser(name) => {
                let before = self.users.len();
                self.users.retain(|u| u.name != name);
                if self.users.len() == before {
                    return Err(DirectoryError::NoUser(name));
                }
                self.access.retain(|user, _| user != name);
            }
            Change::PutVHost(name) => {
                if name.is_empty() || name.len() > 255 {
                    return Err(DirectoryError::Invalid("a vhost name must be 1 to 255 bytes long".into()));
                }
                if !self.vhosts.contains_key(&name) {
                    if self.vhosts.len() >= MAX_VHOSTS {
                        return Err(DirectoryError::Full { what: "vhost", max: MAX_VHOSTS });
                    }
                    self.vhosts.insert(name, VHostLimits::default());
                }
            }
            Change::SetVHostLimits(name, limits) => {
                *self.vhosts.get_mut(&name).ok_or(DirectoryError::NoVHost(name))? = limits;
            }
            Change::DeleteVHost(name) => {
                if name == "/" {
                    // Connections that name no vhost land there; RabbitMQ allows deleting it,
                    // Warren's brokers are built around it.
                    return Err(DirectoryError::Invalid("the default vhost '/' cannot be deleted".into()));
                }
                self.vhosts.remove(&name).ok_or_else(|| DirectoryError::NoVHost(name.clone()))?;
                self.access.retain(|_, vhost| vhost != name);
                self.policies.retain(|p| p.vhost != name);
            }
            Change::SetUserLimit { user, limit, value } => {
                let found = self.users.iter_mut().find(|u| u.name == user);
                let limits = &mut found.ok_or(DirectoryError::NoUser(user))?.limits;
                match limit {
                    UserLimit::MaxConnections => limits.max_connections = value,
                    UserLimit::MaxChannels => limits.max_channels = value,
                }
            }
            Change::SetVHostLimit { vhost, limit, value } => {
                let limits = self.vhosts.get_mut(&vhost).ok_or(DirectoryError::NoVHost(vhost))?;
                match limit {
                    VHostLimit::MaxConnections => limits.max_connections = value,
                    VHostLimit::MaxQueues => limits.max_queues = value,
                }
            }
            Change::UpdateUser { name, password, tags } => {
                let user = match self.user(&name) {
                    Some(u) => User {
                        password: password.unwrap_or_else(|| u.password.clone()),
                        tags: tags.unwrap_or_else(|| u.tags.clone()),
                        ..u.clone()
                    },
                    None => {
                        let password = password.ok_or_else(|| {
                            DirectoryError::Invalid("a new user needs a password or a password hash".into())
                        })?;
                        let loopback_only = name == "guest";
                        let tags = tags.unwrap_or_default();
                        User { name, password, loopback_only, tags, limits: UserLimits::default() }
                    }
                };
                return self.apply(Change::PutUser(user));
            }
            Change::SetPermission(p) => {
                self.known(&p.user, &p.vhost)?;
                let full = self.access.permission_count() >= MAX_PERMISSIONS;
                if !self.access.set_permission(p, !full) {
                    return Err(DirectoryError::Full { what: "permission", max: MAX_PERMISSIONS });
                }
            }
            Change::ClearPermission { user, vhost } => {
                if !self.access.clear_permission(&user, &vhost) {
                    return Err(DirectoryError::NoPermission { user, vhost });
                }
            }
            Change::SetTopicPermission(t) => {
                self.known(&t.user, &t.vhost)?;
                if t.exchange.len() > 255 {
                    return Err(DirectoryError::Invalid("an exchange name is at most 255 bytes".into()));
                }
                let full = self.access.topic_permission_count() >= MAX_PERMISSIONS;
                if !self.access.set_topic_permission(t, !full) {
                    return Err(DirectoryError::Full { what: "topic permission", max: MAX_PERMISSIONS });
                }
            }
            Change::ClearTopicPermissions { user, vhost, exchange } => {
                if !self.access.clear_topic_permissions(&user, &vhost, exchange.as_deref()) {
                    return Err(DirectoryError::NoPermission { user, vhost });
                }
            }
            Change::PutPolicy(policy) => {
                if policy.name.is_empty() || policy.name.len() > 255 {
                    return Err(DirectoryError::Invalid("a policy name must be 1 to 255 bytes long".into()));
                }
                if !self.vhosts.contains_key(&policy.vhost) {
                    return Err(DirectoryError::NoVHost(policy.vhost));
                }
                let full = self.policies.len() >= MAX_POLICIES;
                match self.policies.iter_mut().find(|p| p.vhost == policy.vhost && p.name == policy.name) {
                    Some(p) => *p = policy,
                    None if full => return Err(DirectoryError::Full { what: "policy", max: MAX_POLICIES }),
                    None => self.policies.push(policy),
                }
            }
            Change::DeletePolicy { vhost, name } => {
                let before = self.policies.len();
                self.policies.retain(|p| !(p.vhost == vhost && p.name == name));
                if self.policies.len() == before {
                    return Err(DirectoryError::NoPolicy { vhost, name });
                }
            }
        }
        Ok(())
    }

    fn known(&self, user: &str, vhost: &str) -> Result<(), DirectoryError> {
        if self.user(user).is_none() {
            return Err(DirectoryError::NoUser(user.into()));
        }
        if !self.vhosts.contains_key(vhost) {
            return Err(DirectoryError::NoVHost(vhost.into()));
        }
        Ok(())
    }
}

/// The directory every broker of a node reads, and the one door its changes go through.
#[derive(Debug, Clone, Default)]
pub struct SharedDirectory {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    current: RwLock<Arc<Directory>>,
    /// Moves after each published change: readers compare it before taking a new state.
    version: AtomicU64,
    /// Changes are made one at a time, so none is lost between a read and a publish.
    writer: Mutex<()>,
}

impl SharedDirectory {
    /// Shares `directory`.
    pub fn new(directory: Directory) -> Self {
        SharedDirectory {
            inner: Arc::new(Inner {
                current: RwLock::new(Arc::new(directory)),
                version: AtomicU64::new(0),
                writer: Mutex::new(()),
            }),
        }
    }

    /// The current state.
    pub fn load(&self) -> Arc<Directory> {
        self.inner.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// How many changes have been published.
    pub fn version(&self) -> u64 {
        self.inner.version.load(Ordering::Acquire)
    }

    /// Applies `changes` to a copy of the current state; if every one applies, `commit` sees
    /// the new state (to make it durable) and, if it agrees, the state is published. Either
    /// all of them take effect or none.
    pub fn change<E: From<DirectoryError>>(
        &self,
        changes: impl IntoIterator<Item = Change>,
        commit: impl FnOnce(&Directory) -> Result<(), E>,
    ) -> Result<(), E> {
        let _one_at_a_time = self.inner.writer.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = (*self.load()).clone();
        for c in changes {
            next.apply(c)?;
        }
        commit(&next)?;
        self.publish(next);
        Ok(())
    }

    /// Replaces the whole state (a replicated snapshot's).
    pub fn replace(&self, directory: Directory) {
        let _one_at_a_time = self.inner.writer.lock().unwrap_or_else(|p| p.into_inner());
        self.publish(directory);
    }

    fn publish(&self, next: Directory) {
        *self.inner.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(next);
        self.inner.version.fetch_add(1, Ordering::AcqRel);
    }
}

/// A broker's view of the directory: the state it last read, taken anew when it moved.
#[derive(Debug, Clone)]
pub struct DirectoryView {
    shared: SharedDirectory,
    current: Arc<Directory>,
    version: u64,
}

impl DirectoryView {
    /// A view of `shared`, at its current state.
    pub fn new(shared: SharedDirectory) -> Self {
        let version = shared.version();
        DirectoryView { current: shared.load(), shared, version }
    }

    /// Takes the newest state if there is one: one atomic read when there is not.
    pub fn refresh(&mut self) {
        let version = self.shared.version();
        if version != self.version {
            self.current = self.shared.load();
            self.version = version;
        }
    }

    /// The state last read.
    pub fn get(&self) -> &Arc<Directory> {
        &self.current
    }

    /// The directory this is a view of.
    pub fn shared(&self) -> &SharedDirectory {
        &self.shared
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::permissions::Pattern;

    fn permission(user: &str, vhost: &str) -> Permission {
        let all = || Pattern::new(".*").expect("pattern");
        Permission { user: user.into(), vhost: vhost.into(), configure: all(), write: all(), read: all() }
    }

    fn user(name: &str) -> User {
        User { name: name.into(), loopback_only: false, tags: Vec::new(), ..User::guest() }
    }

    #[test]
    fn deleting_a_user_or_vhost_takes_its_permissions_along() {
        let mut d = Directory { access: Access::rules(Vec::new(), Vec::new()), ..Directory::default() };
        d.apply(Change::PutUser(user("app"))).expect("user");
        d.apply(Change::PutVHost("orders".into())).expect("vhost");
        d.apply(Change::SetPermission(permission("app", "orders"))).expect("permission");
        d.apply(Change::SetPermission(permission("app", "/"))).expect("permission");
        assert!(d.access.may_open("app", "orders"));
        d.apply(Change::DeleteVHost("orders".into())).expect("delete vhost");
        assert!(!d.access.may_open("app", "orders") && d.access.may_open("app", "/"));
        d.apply(Change::DeleteUser("app".into())).expect("delete user");
        assert!(!d.access.may_open("app", "/"));
        assert_eq!(d.apply(Change::DeleteUser("app".into())), Err(DirectoryError::NoUser("app".into())));
    }

    #[test]
    fn an_update_keeps_what_it_does_not_name() {
        let mut d = Directory::default();
        d.apply(Change::SetUserLimit { user: "guest".into(), limit: UserLimit::MaxChannels, value: Some(3) })
            .expect("limit");
        // A PUT of tags alone, as the API makes it after a limit was set meanwhile.
        d.apply(Change::UpdateUser {
            name: "guest".into(),
            password: None,
            tags: Some(vec!["monitoring".into()]),
        })
        .expect("update");
        let g = d.user("guest").expect("guest");
        assert_eq!(g.limits.max_channels, Some(3));
        assert!(g.loopback_only && g.password.verify("guest") && g.has_tag("monitoring"));
        let e = d.apply(Change::UpdateUser { name: "new".into(), password: None, tags: None });
        assert!(e.is_err(), "a new user needs a password");
        d.apply(Change::SetVHostLimit { vhost: "/".into(), limit: VHostLimit::MaxQueues, value: Some(2) })
            .expect("vhost limit");
        d.apply(Change::SetVHostLimit {
            vhost: "/".into(),
            limit: VHostLimit::MaxConnections,
            value: Some(5),
        })
        .expect("vhost limit");
        assert_eq!((d.vhost_limits("/").max_queues, d.vhost_limits("/").max_connections), (Some(2), Some(5)));
    }

    #[test]
    fn permissions_need_their_user_and_vhost() {
        let mut d = Directory::default();
        let e = d.apply(Change::SetPermission(permission("nobody", "/"))).expect_err("no user");
        assert_eq!(e, DirectoryError::NoUser("nobody".into()));
        let e = d.apply(Change::SetPermission(permission("guest", "nowhere"))).expect_err("no vhost");
        assert_eq!(e, DirectoryError::NoVHost("nowhere".into()));
        assert!(d.apply(Change::DeleteVHost("/".into())).is_err(), "/ stays");
    }

    #[test]
    fn a_change_set_applies_whole_or_not_at_all_and_views_follow() {
        let shared = SharedDirectory::new(Directory::default());
        let mut view = DirectoryView::new(shared.clone());
        let refused: Result<(), DirectoryError> =
            shared.change([Change::PutUser(user("a")), Change::DeleteUser("ghost".into())], |_| Ok(()));
        assert!(refused.is_err());
        assert!(shared.load().user("a").is_none(), "nothing of a refused set");
        let vetoed: Result<(), DirectoryError> =
            shared.change([Change::PutUser(user("a"))], |_| Err(DirectoryError::Invalid("disk".into())));
        assert!(vetoed.is_err() && shared.load().user("a").is_none(), "nothing the commit refused");
        shared.change([Change::PutUser(user("a"))], |_| Ok::<(), DirectoryError>(())).expect("change");
        assert!(view.get().user("a").is_none());
        view.refresh();
        assert!(view.get().user("a").is_some());
    }
}
