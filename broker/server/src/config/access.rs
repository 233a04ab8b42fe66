//! `[[users]]`, `[[permissions]]` and `[[topic-permissions]]`: who may log in, and what each
//! user may do in which vhost, as RabbitMQ's access control has it.
//!
//! Without any `[[permissions]]` every user may do everything in every vhost (how Warren
//! behaved before permissions existed); with one, only what the entries grant, as in
//! RabbitMQ, where a user with no entry on a vhost cannot open it.

use serde::Deserialize;
use warren_core::auth::{User, UserLimits};
use warren_core::password::{HashAlgorithm, Password};
use warren_core::permissions::{Access, Pattern, Permission, TopicPermission};

use super::ConfigError;

/// `[[users]]`: one login.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct UserConfig {
    /// Login name.
    pub name: String,
    /// Password in clear; or `password-hash` instead.
    pub password: Option<String>,
    /// RabbitMQ's password hash (base64 of salt and digest), as `warren hash-password` prints
    /// it or a RabbitMQ definitions export carries it.
    pub password_hash: Option<String>,
    /// The hash's algorithm, by RabbitMQ's name (`rabbit_password_hashing_sha256`, the
    /// default; `_sha512`; `_md5`).
    pub hashing_algorithm: Option<String>,
    /// Only from loopback addresses.
    #[serde(default)]
    pub loopback_only: bool,
    /// RabbitMQ's tags: `administrator` for management writes; `monitoring`, `policymaker` or
    /// `management` for reads; `impersonator` may publish with another `user-id`.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Connections it may hold open at once (RabbitMQ's user limit `max-connections`).
    pub max_connections: Option<usize>,
    /// Channels it may hold open at once over all its connections (`max-channels`).
    pub max_channels: Option<usize>,
}

impl std::fmt::Debug for UserConfig {
    // Neither the password nor its hash belongs in a log or an error.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserConfig")
            .field("name", &self.name)
            .field("hashing_algorithm", &self.hashing_algorithm)
            .field("loopback_only", &self.loopback_only)
            .field("tags", &self.tags)
            .finish_non_exhaustive()
    }
}

impl UserConfig {
    fn build(self) -> Result<User, ConfigError> {
        let bad = |why: String| ConfigError::Invalid(format!("user '{}': {why}", self.name));
        if self.name.is_empty() || self.name.len() > 255 {
            return Err(bad("a name must be 1 to 255 bytes long".into()));
        }
        let password = match (&self.password, &self.password_hash) {
            (Some(p), None) => {
                if self.hashing_algorithm.is_some() {
                    return Err(bad("hashing-algorithm goes with password-hash, not password".into()));
                }
                Password::plain(p.clone())
            }
            (None, Some(h)) => {
                let algorithm = match &self.hashing_algorithm {
                    Some(a) => HashAlgorithm::from_name(a).map_err(|e| bad(e.to_string()))?,
                    None => HashAlgorithm::default(),
                };
                Password::from_hash(algorithm, h).map_err(|e| bad(e.to_string()))?
            }
            (Some(_), Some(_)) => return Err(bad("give password or password-hash, not both".into())),
            (None, None) => return Err(bad("needs a password or a password-hash".into())),
        };
        let limits = UserLimits { max_connections: self.max_connections, max_channels: self.max_channels };
        Ok(User { name: self.name, password, loopback_only: self.loopback_only, tags: self.tags, limits })
    }
}

/// `[[permissions]]`: what one user may do in one vhost; each a regular expression over
/// exchange and queue names, `""` for nothing, `".*"` for everything.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PermissionConfig {
    /// The user.
    pub user: String,
    /// The vhost (`/` when not given).
    #[serde(default = "default_vhost")]
    pub vhost: String,
    /// Names the user may declare and delete.
    pub configure: String,
    /// Names the user may publish to, or bind a queue or exchange to.
    pub write: String,
    /// Names the user may consume from, get from, purge, or bind from.
    pub read: String,
}

/// `[[topic-permissions]]`: the routing keys one user may use with one topic exchange;
/// `{username}` and `{vhost}` stand for the user's name and the vhost's.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TopicPermissionConfig {
    /// The user.
    pub user: String,
    /// The vhost (`/` when not given).
    #[serde(default = "default_vhost")]
    pub vhost: String,
    /// The topic exchange.
    pub exchange: String,
    /// Routing keys the user may publish with.
    pub write: String,
    /// Binding keys the user may bind with.
    pub read: String,
}

fn default_vhost() -> String {
    "/".into()
}

/// The users (guest alone when none are configured) and the access rules, checked against
/// each other and against the vhosts (`/` and `vhosts`).
pub(super) fn build(
    users: Option<Vec<UserConfig>>,
    permissions: Vec<PermissionConfig>,
    topics: Vec<TopicPermissionConfig>,
    vhosts: &[String],
) -> Result<(Vec<User>, Access), ConfigError> {
    let users = match users {
        Some(list) => {
            let users: Vec<User> = list.into_iter().map(UserConfig::build).collect::<Result<_, _>>()?;
            for (i, u) in users.iter().enumerate() {
                if users[..i].iter().any(|v| v.name == u.name) {
                    return Err(ConfigError::Invalid(format!("user '{}' is declared twice", u.name)));
                }
            }
            users
        }
        None => vec![User::guest()],
    };
    if permissions.is_empty() && topics.is_empty() {
        return Ok((users, Access::Unrestricted));
    }
    let known = |user: &str, vhost: &str, what: &str| {
        if !users.iter().any(|u| u.name == user) {
            return Err(ConfigError::Invalid(format!("{what} for user '{user}', who is not in [[users]]")));
        }
        if vhost != "/" && !vhosts.iter().any(|v| v == vhost) {
            return Err(ConfigError::Invalid(format!(
                "{what} on vhost '{vhost}', which is not in [[vhosts]]"
            )));
        }
        Ok(())
    };
    let mut rules = Vec::new();
    for p in permissions {
        known(&p.user, &p.vhost, "permissions")?;
        if rules.iter().any(|r: &Permission| r.user == p.user && r.vhost == p.vhost) {
            return Err(ConfigError::Invalid(format!(
                "permissions for user '{}' on vhost '{}' are given twice",
                p.user, p.vhost
            )));
        }
        let pattern = |t: &str| {
            Pattern::new(t).map_err(|e| {
                ConfigError::Invalid(format!("permissions of '{}' on '{}': {e}", p.user, p.vhost))
            })
        };
        rules.push(Permission {
            configure: pattern(&p.configure)?,
            write: pattern(&p.write)?,
            read: pattern(&p.read)?,
            user: p.user,
            vhost: p.vhost,
        });
    }
    let mut topic_rules = Vec::new();
    for t in topics {
        known(&t.user, &t.vhost, "topic permissions")?;
        let rule = TopicPermission::new(&t.user, &t.vhost, &t.exchange, &t.write, &t.read).map_err(|e| {
            ConfigError::Invalid(format!(
                "topic permissions of '{}' on '{}' in '{}': {e}",
                t.user, t.exchange, t.vhost
            ))
        })?;
        topic_rules.push(rule);
    }
    Ok((users, Access::rules(rules, topic_rules)))
}
