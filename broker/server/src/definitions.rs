//! RabbitMQ's definitions JSON, its access part: users (with their password hashes), vhosts
//! (with their limits, as `vhost-limits` parameters), permissions and topic permissions.
//! Read from a RabbitMQ export, a `POST /api/definitions` and Warren's own directory file;
//! written by `GET /api/definitions` and that file, so one shape serves all of them.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Value, json};
use warren_codec::FieldValue;
use warren_core::auth::{User, UserLimits};
use warren_core::broker::VHostLimits;
use warren_core::directory::{Change, Directory};
use warren_core::password::{HashAlgorithm, Password, SALT_LEN};
use warren_core::permissions::{Pattern, Permission, TopicPermission};
use warren_core::policy::Policy;
use warren_core::queue_args::QueueArgs;

/// A fresh salt from the OS, for a password hash.
pub fn fresh_salt() -> std::io::Result<[u8; SALT_LEN]> {
    use std::io::Read;
    let mut salt = [0u8; SALT_LEN];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut salt)?;
    Ok(salt)
}

/// The access part of a definitions document; other keys are left to their readers.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct AccessDefinitions {
    /// Who may log in.
    #[serde(default)]
    pub users: Vec<UserDef>,
    /// The vhosts.
    #[serde(default)]
    pub vhosts: Vec<VHostDef>,
    /// Per user and vhost.
    #[serde(default)]
    pub permissions: Vec<PermissionDef>,
    /// Per user, vhost and topic exchange.
    #[serde(default)]
    pub topic_permissions: Vec<TopicPermissionDef>,
    /// Per-vhost parameters; Warren reads `vhost-limits` and keeps no other.
    #[serde(default)]
    pub parameters: Vec<ParameterDef>,
    /// Queue policies.
    #[serde(default)]
    pub policies: Vec<PolicyDef>,
}

/// A policy as RabbitMQ exports it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PolicyDef {
    /// Its vhost.
    pub vhost: String,
    /// Its name.
    pub name: String,
    /// Queue names it applies to.
    pub pattern: String,
    /// What it applies to: Warren's policies apply to queues (`queues` or `all`).
    #[serde(rename = "apply-to", default = "queues")]
    pub apply_to: String,
    /// RabbitMQ's policy keys and their values.
    #[serde(default)]
    pub definition: serde_json::Map<String, Value>,
    /// Higher wins.
    #[serde(default)]
    pub priority: i64,
}

fn queues() -> String {
    "queues".into()
}

impl PolicyDef {
    /// The policy it describes; an error names a key Warren does not apply.
    pub fn policy(&self) -> Result<Policy, String> {
        let bad = |why: String| format!("policy '{}' in vhost '{}': {why}", self.name, self.vhost);
        if !["queues", "classic_queues", "all"].contains(&self.apply_to.as_str()) {
            return Err(bad(format!("applies to {}; Warren's policies apply to queues", self.apply_to)));
        }
        let pattern =
            warren_core::permissions::compile(&self.pattern).map_err(|e| bad(format!("bad pattern: {e}")))?;
        let mut def: Vec<(&str, FieldValue)> = Vec::new();
        for (k, v) in &self.definition {
            let value = match v {
                // Exchange names and routing keys: AMQP short strings.
                Value::String(s) if s.len() > 255 => return Err(bad(format!("{k} is over 255 bytes"))),
                Value::String(s) => FieldValue::str(s),
                Value::Bool(b) => FieldValue::Bool(*b),
                Value::Number(n) => {
                    FieldValue::I64(n.as_i64().ok_or_else(|| bad(format!("{k} must be an integer")))?)
                }
                other => return Err(bad(format!("{k} cannot be {other}"))),
            };
            def.push((k, value));
        }
        let arguments = warren_core::policy::arguments_from(&def).map_err(bad)?;
        QueueArgs::parse(&arguments, &Default::default()).map_err(|e| bad(e.text))?;
        Ok(Policy {
            name: self.name.clone(),
            vhost: self.vhost.clone(),
            pattern,
            priority: self.priority,
            arguments,
        })
    }

    /// How `p` is exported.
    pub fn of(p: &Policy) -> Self {
        let definition = p
            .arguments
            .iter()
            .filter_map(|(k, v)| {
                let value = match v {
                    FieldValue::LongString(b) => json!(String::from_utf8_lossy(b)),
                    FieldValue::Bool(b) => json!(b),
                    other => json!(other.as_i64()?),
                };
                Some((warren_core::queue_args::policy_key_of(k)?.to_string(), value))
            })
            .collect();
        PolicyDef {
            vhost: p.vhost.clone(),
            name: p.name.clone(),
            pattern: p.pattern.as_str().to_string(),
            apply_to: "queues".into(),
            definition,
            priority: p.priority,
        }
    }
}

/// A user as RabbitMQ exports it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserDef {
    /// Login name.
    pub name: String,
    /// Base64 of salt and digest; `""` for a user who cannot log in with a password.
    #[serde(default)]
    pub password_hash: String,
    /// RabbitMQ's module name of the hash.
    #[serde(default)]
    pub hashing_algorithm: Option<String>,
    /// Its tags.
    #[serde(default, deserialize_with = "tags")]
    pub tags: Vec<String>,
    /// `max-connections`, `max-channels`.
    #[serde(default)]
    pub limits: BTreeMap<String, Value>,
    /// Warren's: the user logs in from loopback addresses only (always so for guest).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub loopback_only: bool,
}

/// A vhost as RabbitMQ exports it (its metadata is not kept).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VHostDef {
    /// Its name.
    pub name: String,
}

/// A permission entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PermissionDef {
    /// The user.
    pub user: String,
    /// The vhost.
    pub vhost: String,
    /// Configure pattern.
    pub configure: String,
    /// Write pattern.
    pub write: String,
    /// Read pattern.
    pub read: String,
}

/// A topic permission entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TopicPermissionDef {
    /// The user.
    pub user: String,
    /// The vhost.
    pub vhost: String,
    /// The topic exchange.
    pub exchange: String,
    /// Routing keys it may publish with.
    pub write: String,
    /// Binding keys it may bind with.
    pub read: String,
}

/// A vhost parameter.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ParameterDef {
    /// The vhost.
    pub vhost: String,
    /// Its component (`vhost-limits` is the one Warren reads).
    pub component: String,
    /// Its name.
    pub name: String,
    /// Its value.
    pub value: Value,
}

/// RabbitMQ 3.10 exports tags as a list; older versions as one comma-separated string.
fn tags<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Tags {
        List(Vec<String>),
        Text(String),
    }
    Ok(match Tags::deserialize(d)? {
        Tags::List(l) => l,
        Tags::Text(t) => t.split(',').map(str::trim).filter(|t| !t.is_empty()).map(str::to_string).collect(),
    })
}

/// A limit's value: a count, or RabbitMQ's `-1` (or absent) for none.
fn limit(value: Option<&Value>, what: &str) -> Result<Option<usize>, String> {
    match value {
        None => Ok(None),
        Some(v) => match v.as_i64() {
            Some(n) if n < 0 => Ok(None),
            Some(n) => Ok(Some(n as usize)),
            None => Err(format!("{what} must be an integer, not {v}")),
        },
    }
}

impl UserDef {
    /// The definition of `u`; a password configured in clear is hashed under `salt`.
    pub fn of(u: &User, salt: [u8; SALT_LEN]) -> Self {
        let (algorithm, hash) = u.password.exported(salt);
        let mut limits = BTreeMap::new();
        if let Some(n) = u.limits.max_connections {
            limits.insert("max-connections".to_string(), json!(n));
        }
        if let Some(n) = u.limits.max_channels {
            limits.insert("max-channels".to_string(), json!(n));
        }
        UserDef {
            name: u.name.clone(),
            password_hash: hash,
            hashing_algorithm: Some(algorithm.name().to_string()),
            tags: u.tags.clone(),
            limits,
            loopback_only: u.loopback_only && u.name != "guest",
        }
    }

    /// The user it describes.
    pub fn user(&self) -> Result<User, String> {
        let bad = |why: String| format!("user '{}': {why}", self.name);
        let algorithm = match &self.hashing_algorithm {
            Some(a) => HashAlgorithm::from_name(a).map_err(|e| bad(e.to_string()))?,
            None => HashAlgorithm::default(),
        };
        let password = Password::from_hash(algorithm, &self.password_hash).map_err(|e| bad(e.to_string()))?;
        let limits = UserLimits {
            max_connections: limit(self.limits.get("max-connections"), "max-connections").map_err(bad)?,
            max_channels: limit(self.limits.get("max-channels"), "max-channels").map_err(bad)?,
        };
        // Loopback only is guest's rule, whoever's definitions it comes from.
        let loopback_only = self.loopback_only || self.name == "guest";
        Ok(User { name: self.name.clone(), password, loopback_only, tags: self.tags.clone(), limits })
    }
}

impl PermissionDef {
    /// The definition of `p`.
    pub fn of(p: &Permission) -> Self {
        PermissionDef {
            user: p.user.clone(),
            vhost: p.vhost.clone(),
            configure: p.configure.as_str().into(),
            write: p.write.as_str().into(),
            read: p.read.as_str().into(),
        }
    }

    /// The entry it describes; an error names a pattern that cannot be used.
    pub fn permission(&self) -> Result<Permission, String> {
        let pattern = |t: &str| {
            Pattern::new(t).map_err(|e| format!("permissions of '{}' on '{}': {e}", self.user, self.vhost))
        };
        Ok(Permission {
            user: self.user.clone(),
            vhost: self.vhost.clone(),
            configure: pattern(&self.configure)?,
            write: pattern(&self.write)?,
            read: pattern(&self.read)?,
        })
    }
}

impl TopicPermissionDef {
    /// The definition of `t`.
    pub fn of(t: &TopicPermission) -> Self {
        TopicPermissionDef {
            user: t.user.clone(),
            vhost: t.vhost.clone(),
            exchange: t.exchange.clone(),
            write: t.write_template.clone(),
            read: t.read_template.clone(),
        }
    }

    /// The entry it describes.
    pub fn permission(&self) -> Result<TopicPermission, String> {
        TopicPermission::new(&self.user, &self.vhost, &self.exchange, &self.write, &self.read).map_err(|e| {
            format!("topic permissions of '{}' on '{}' in '{}': {e}", self.user, self.exchange, self.vhost)
        })
    }
}

/// What a definitions document asks of the directory: the vhosts to create (each with a
/// broker of its own, so apart), then every other change, users first.
pub struct Planned {
    /// Vhosts, by name.
    pub vhosts: Vec<String>,
    /// Users, vhost limits, permissions, topic permissions, policies, in that order.
    pub changes: Vec<Change>,
}

impl AccessDefinitions {
    /// The changes that make a directory hold these definitions; an error names the entry
    /// that cannot be read, and then none is made.
    pub fn plan(&self) -> Result<Planned, String> {
        let mut changes = Vec::new();
        for u in &self.users {
            changes.push(Change::PutUser(u.user()?));
        }
        for p in self.parameters.iter().filter(|p| p.component == "vhost-limits") {
            let v =
                |k: &str| limit(p.value.get(k), k).map_err(|e| format!("limits of vhost '{}': {e}", p.vhost));
            let limits = VHostLimits { max_connections: v("max-connections")?, max_queues: v("max-queues")? };
            changes.push(Change::SetVHostLimits(p.vhost.clone(), limits));
        }
        for p in &self.permissions {
            changes.push(Change::SetPermission(p.permission()?));
        }
        for t in &self.topic_permissions {
            changes.push(Change::SetTopicPermission(t.permission()?));
        }
        for p in &self.policies {
            changes.push(Change::PutPolicy(p.policy()?));
        }
        Ok(Planned { vhosts: self.vhosts.iter().map(|v| v.name.clone()).collect(), changes })
    }

    /// The definitions of `dir`. A password configured in clear is written as RabbitMQ's
    /// hash of it under a fresh salt from `salt`.
    pub fn of(
        dir: &Directory,
        mut salt: impl FnMut() -> std::io::Result<[u8; SALT_LEN]>,
    ) -> std::io::Result<Self> {
        let users = dir.users.iter().map(|u| Ok(UserDef::of(u, salt()?))).collect::<std::io::Result<_>>()?;
        let mut parameters = Vec::new();
        for (name, l) in &dir.vhosts {
            let mut value = serde_json::Map::new();
            if let Some(n) = l.max_connections {
                value.insert("max-connections".into(), json!(n));
            }
            if let Some(n) = l.max_queues {
                value.insert("max-queues".into(), json!(n));
            }
            if !value.is_empty() {
                parameters.push(ParameterDef {
                    vhost: name.clone(),
                    component: "vhost-limits".into(),
                    name: "limits".into(),
                    value: Value::Object(value),
                });
            }
        }
        // Unrestricted access is every permission for everyone, exported as that.
        let everything: Vec<Permission>;
        let entries = if dir.access.is_unrestricted() {
            let all = || Pattern::new(".*").map_err(std::io::Error::other);
            everything = dir
                .users
                .iter()
                .flat_map(|u| dir.vhosts.keys().map(move |v| (u, v)))
                .map(|(u, v)| {
                    Ok(Permission {
                        user: u.name.clone(),
                        vhost: v.clone(),
                        configure: all()?,
                        write: all()?,
                        read: all()?,
                    })
                })
                .collect::<std::io::Result<_>>()?;
            &everything[..]
        } else {
            dir.access.permissions()
        };
        let permissions = entries.iter().map(PermissionDef::of).collect();
        let topic_permissions = dir.access.topic_permissions().iter().map(TopicPermissionDef::of).collect();
        let vhosts = dir.vhosts.keys().map(|name| VHostDef { name: name.clone() }).collect();
        let policies = dir.policies.iter().map(PolicyDef::of).collect();
        Ok(AccessDefinitions { users, vhosts, permissions, topic_permissions, parameters, policies })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rabbitmq_3_10_export_plans_and_round_trips() {
        let text = include_str!("../tests/fixtures/rabbitmq-3.10-definitions.json");
        let defs: AccessDefinitions = serde_json::from_str(text).expect("parse");
        let plan = defs.plan().expect("plan");
        let mut dir = Directory {
            access: warren_core::permissions::Access::rules(Vec::new(), Vec::new()),
            ..Default::default()
        };
        for v in &plan.vhosts {
            dir.apply(Change::PutVHost(v.clone())).expect("vhost");
        }
        for c in plan.changes {
            dir.apply(c).expect("change");
        }
        assert!(dir.user("alice").is_some_and(|u| u.password.verify("alice-secret")));
        assert!(dir.user("bob").is_some_and(|u| u.has_tag("impersonator")));
        assert!(dir.access.may_open("alice", "orders") && !dir.access.may_open("carol", "orders"));
        let again = AccessDefinitions::of(&dir, || Ok([1, 2, 3, 4])).expect("export");
        let text = serde_json::to_string(&again).expect("json");
        let back: AccessDefinitions = serde_json::from_str(&text).expect("parse back");
        assert_eq!(back.users.len(), 4);
        assert_eq!(back.permissions.len(), 4);
        assert_eq!(back.topic_permissions[0].write, "^orders\\.{username}\\..*");
    }

    #[test]
    fn old_comma_tags_and_bad_limits() {
        let u: UserDef =
            serde_json::from_str(r#"{"name":"a","password_hash":"","tags":"administrator, monitoring"}"#)
                .expect("user");
        assert_eq!(u.tags, ["administrator", "monitoring"]);
        let u: UserDef =
            serde_json::from_str(r#"{"name":"a","limits":{"max-connections":"lots"}}"#).expect("user");
        assert!(u.user().expect_err("bad limit").contains("max-connections"));
    }
}
