//! Who may do what in which vhost: RabbitMQ's access control. A user needs a permission
//! entry on a vhost to open it; each entry has a configure, a write and a read pattern,
//! matched against the names of the exchanges and queues an operation touches (which
//! operation needs which is [`crate::Broker::apply`]'s table, in `broker/access.rs`). Topic
//! permissions further restrict the routing keys used with a topic exchange.
//!
//! Patterns are regular expressions matched anywhere in the name, as Erlang's `re:run`
//! does; an empty pattern grants nothing (RabbitMQ's rule, where `""` would otherwise match
//! everything). Patterns the `regex` crate cannot compile (look-around, backreferences) are
//! refused when the configuration is loaded, with the pattern named.

use regex::{Regex, RegexBuilder};

/// The longest pattern accepted, in bytes.
pub const MAX_PATTERN_LEN: usize = 4096;

/// Compiles a pattern from a configuration, an API request or a definitions file, within
/// bounds: its text, and the memory its compiled form and lazy DFA may take (a short pattern
/// like `a{1000}{1000}` would otherwise compile to a large program).
pub fn compile(text: &str) -> Result<Regex, String> {
    if text.len() > MAX_PATTERN_LEN {
        return Err(format!("a pattern may be {MAX_PATTERN_LEN} bytes long, not {}", text.len()));
    }
    RegexBuilder::new(text).size_limit(1 << 20).dfa_size_limit(1 << 20).build().map_err(|e| e.to_string())
}

/// The three kinds of access RabbitMQ grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Perm {
    /// Create and delete (declare, delete).
    Configure,
    /// Put into (publish to an exchange, bind to a queue or exchange as destination).
    Write,
    /// Take from (consume, get, purge; bind from an exchange as source).
    Read,
}

impl Perm {
    /// The word RabbitMQ's messages use.
    pub fn name(self) -> &'static str {
        match self {
            Perm::Configure => "configure",
            Perm::Write => "write",
            Perm::Read => "read",
        }
    }
}

/// A pattern as configured: its text (for exports and messages) and, unless it is empty,
/// its compiled form.
#[derive(Debug, Clone)]
pub struct Pattern {
    text: String,
    regex: Option<Regex>,
}

impl Pattern {
    /// Compiles `text`; an error names the pattern.
    pub fn new(text: &str) -> Result<Self, String> {
        let regex = if text.is_empty() {
            None
        } else {
            Some(compile(text).map_err(|e| format!("pattern '{text}' cannot be used: {e}"))?)
        };
        Ok(Pattern { text: text.to_string(), regex })
    }

    /// As configured.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether `name` is granted: matched anywhere; an empty pattern grants nothing.
    pub fn grants(&self, name: &str) -> bool {
        // The usual grant-all, without running the regex on every publish.
        if self.text == ".*" {
            return true;
        }
        self.regex.as_ref().is_some_and(|r| r.is_match(name))
    }
}

/// A user's permissions on one vhost.
#[derive(Debug, Clone)]
pub struct Permission {
    /// The user.
    pub user: String,
    /// The vhost.
    pub vhost: String,
    /// Names the user may declare and delete.
    pub configure: Pattern,
    /// Names the user may publish to or bind to.
    pub write: Pattern,
    /// Names the user may consume from, get from, purge, or bind from.
    pub read: Pattern,
}

impl Permission {
    /// The pattern for `perm`.
    pub fn pattern(&self, perm: Perm) -> &Pattern {
        match perm {
            Perm::Configure => &self.configure,
            Perm::Write => &self.write,
            Perm::Read => &self.read,
        }
    }
}

/// A user's routing-key permissions on one topic exchange of one vhost.
#[derive(Debug, Clone)]
pub struct TopicPermission {
    /// The user.
    pub user: String,
    /// The vhost.
    pub vhost: String,
    /// The topic exchange.
    pub exchange: String,
    /// Routing keys the user may publish with, as configured (`{username}` and `{vhost}`
    /// stand for the user's name and the vhost's).
    pub write_template: String,
    /// Binding keys the user may bind with, as configured.
    pub read_template: String,
    write: Pattern,
    read: Pattern,
}

impl TopicPermission {
    /// An entry whose patterns have `{username}` and `{vhost}` expanded and compiled once; an
    /// error names the pattern. The names are escaped (RabbitMQ puts them in raw), so a user
    /// called `a.*` matches itself only, not every key.
    pub fn new(user: &str, vhost: &str, exchange: &str, write: &str, read: &str) -> Result<Self, String> {
        // An empty topic pattern is `^$` in RabbitMQ: the empty routing key alone.
        let expand = |t: &str| {
            if t.is_empty() {
                return "^$".to_string();
            }
            t.replace("{username}", &regex::escape(user)).replace("{vhost}", &regex::escape(vhost))
        };
        Ok(TopicPermission {
            user: user.into(),
            vhost: vhost.into(),
            exchange: exchange.into(),
            write_template: write.into(),
            read_template: read.into(),
            write: Pattern::new(&expand(write)).map_err(|e| format!("{e} (from '{write}')"))?,
            read: Pattern::new(&expand(read)).map_err(|e| format!("{e} (from '{read}')"))?,
        })
    }

    fn grants(&self, perm: Perm, key: &str) -> bool {
        if perm == Perm::Write { self.write.grants(key) } else { self.read.grants(key) }
    }
}

/// The node's access rules.
#[derive(Debug, Clone, Default)]
pub enum Access {
    /// No permissions configured: every user may do everything in every vhost (Warren's
    /// behaviour before permissions existed, kept for configurations that name none).
    #[default]
    Unrestricted,
    /// RabbitMQ's model: only what an entry grants.
    Rules {
        /// Per user and vhost.
        permissions: Vec<Permission>,
        /// Per user, vhost and topic exchange.
        topics: Vec<TopicPermission>,
    },
}

impl Access {
    /// Rules from permission entries (which must compile: see [`Pattern::new`]).
    pub fn rules(permissions: Vec<Permission>, topics: Vec<TopicPermission>) -> Self {
        Access::Rules { permissions, topics }
    }

    /// Whether `user` may open `vhost`: it has an entry there, whatever it grants.
    pub fn may_open(&self, user: &str, vhost: &str) -> bool {
        match self {
            Access::Unrestricted => true,
            Access::Rules { permissions, .. } => {
                permissions.iter().any(|p| p.user == user && p.vhost == vhost)
            }
        }
    }

    /// Whether `user` has `perm` on the resource `name` in `vhost`.
    pub fn grants(&self, user: &str, vhost: &str, perm: Perm, name: &str) -> bool {
        match self {
            Access::Unrestricted => true,
            Access::Rules { permissions, .. } => permissions
                .iter()
                .find(|p| p.user == user && p.vhost == vhost)
                .is_some_and(|p| p.pattern(perm).grants(name)),
        }
    }

    /// Whether `user` may use routing key `key` with topic exchange `exchange` for `perm`:
    /// yes unless a topic permission for that exchange says otherwise (RabbitMQ's rule).
    pub fn grants_topic(&self, user: &str, vhost: &str, exchange: &str, perm: Perm, key: &str) -> bool {
        match self {
            Access::Unrestricted => true,
            Access::Rules { topics, .. } => {
                let mut entries = topics
                    .iter()
                    .filter(|t| t.user == user && t.vhost == vhost && t.exchange == exchange)
                    .peekable();
                entries.peek().is_none() || entries.any(|t| t.grants(perm, key))
            }
        }
    }

    /// Keeps the entries (plain and topic) whose user and vhost `keep` accepts.
    pub fn retain(&mut self, mut keep: impl FnMut(&str, &str) -> bool) {
        if let Access::Rules { permissions, topics } = self {
            permissions.retain(|p| keep(&p.user, &p.vhost));
            topics.retain(|t| keep(&t.user, &t.vhost));
        }
    }

    /// Plain entries held.
    pub fn permission_count(&self) -> usize {
        match self {
            Access::Unrestricted => 0,
            Access::Rules { permissions, .. } => permissions.len(),
        }
    }

    /// Topic entries held.
    pub fn topic_permission_count(&self) -> usize {
        match self {
            Access::Unrestricted => 0,
            Access::Rules { topics, .. } => topics.len(),
        }
    }

    /// The entries as a list, none when unrestricted.
    pub fn permissions(&self) -> &[Permission] {
        match self {
            Access::Unrestricted => &[],
            Access::Rules { permissions, .. } => permissions,
        }
    }

    /// The topic entries as a list.
    pub fn topic_permissions(&self) -> &[TopicPermission] {
        match self {
            Access::Unrestricted => &[],
            Access::Rules { topics, .. } => topics,
        }
    }

    /// Sets `p`, replacing the user's entry on its vhost; a new entry only if `may_grow`.
    /// The first entry ends unrestricted access: from then on only entries grant.
    pub fn set_permission(&mut self, p: Permission, may_grow: bool) -> bool {
        let permissions = self.rules_mut().0;
        match permissions.iter_mut().find(|e| e.user == p.user && e.vhost == p.vhost) {
            Some(e) => *e = p,
            None if may_grow => permissions.push(p),
            None => return false,
        }
        true
    }

    /// Clears the user's entry on `vhost`; whether there was one.
    pub fn clear_permission(&mut self, user: &str, vhost: &str) -> bool {
        let Access::Rules { permissions, .. } = self else {
            return false;
        };
        let before = permissions.len();
        permissions.retain(|p| !(p.user == user && p.vhost == vhost));
        permissions.len() != before
    }

    /// Sets `t`, replacing the user's entry for its exchange; a new one only if `may_grow`.
    pub fn set_topic_permission(&mut self, t: TopicPermission, may_grow: bool) -> bool {
        let topics = self.rules_mut().1;
        match topics.iter_mut().find(|e| e.user == t.user && e.vhost == t.vhost && e.exchange == t.exchange) {
            Some(e) => *e = t,
            None if may_grow => topics.push(t),
            None => return false,
        }
        true
    }

    /// Clears the user's topic entries on `vhost` (for `exchange` only, if named); whether
    /// there were any.
    pub fn clear_topic_permissions(&mut self, user: &str, vhost: &str, exchange: Option<&str>) -> bool {
        let Access::Rules { topics, .. } = self else {
            return false;
        };
        let before = topics.len();
        topics.retain(|t| !(t.user == user && t.vhost == vhost && exchange.is_none_or(|x| x == t.exchange)));
        topics.len() != before
    }

    fn rules_mut(&mut self) -> (&mut Vec<Permission>, &mut Vec<TopicPermission>) {
        if self.is_unrestricted() {
            *self = Access::rules(Vec::new(), Vec::new());
        }
        match self {
            Access::Rules { permissions, topics } => (permissions, topics),
            Access::Unrestricted => unreachable!("made rules above"),
        }
    }

    /// Whether any rule exists: without, nothing needs checking.
    pub fn is_unrestricted(&self) -> bool {
        matches!(self, Access::Unrestricted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> Access {
        let p = |c: &str, w: &str, r: &str, vhost: &str| Permission {
            user: "alice".into(),
            vhost: vhost.into(),
            configure: Pattern::new(c).expect("c"),
            write: Pattern::new(w).expect("w"),
            read: Pattern::new(r).expect("r"),
        };
        let topic = TopicPermission::new("alice", "orders", "amq.topic", "^orders\\.{username}\\.", ".*")
            .expect("topic");
        // The same entries RabbitMQ 3.10 exported for alice (the server tests' fixture).
        Access::rules(
            vec![
                p("^orders\\..*", "^(orders\\..*|amq\\.default)$", ".*", "orders"),
                p("", "", "^logs$", "/"),
            ],
            vec![topic],
        )
    }

    #[test]
    fn patterns_match_anywhere_and_an_empty_one_grants_nothing() {
        let a = alice();
        assert!(a.may_open("alice", "orders") && a.may_open("alice", "/"));
        assert!(!a.may_open("alice", "billing") && !a.may_open("bob", "orders"));
        assert!(a.grants("alice", "orders", Perm::Configure, "orders.new"));
        assert!(!a.grants("alice", "orders", Perm::Configure, "x.orders.new"), "anchored by the pattern");
        assert!(a.grants("alice", "orders", Perm::Write, "amq.default"));
        assert!(!a.grants("alice", "orders", Perm::Write, "amq.topic"));
        assert!(!a.grants("alice", "/", Perm::Configure, "anything"), "empty grants nothing");
        assert!(a.grants("alice", "/", Perm::Read, "logs") && !a.grants("alice", "/", Perm::Read, "logs2"));
        assert!(!a.grants("bob", "orders", Perm::Read, "orders.new"), "no entry, no access");
    }

    #[test]
    fn topic_permissions_expand_the_user_and_bind_only_their_exchange() {
        let a = alice();
        assert!(a.grants_topic("alice", "orders", "amq.topic", Perm::Write, "orders.alice.created"));
        assert!(!a.grants_topic("alice", "orders", "amq.topic", Perm::Write, "orders.bob.created"));
        assert!(a.grants_topic("alice", "orders", "other.topic", Perm::Write, "anything"), "no entry there");
        assert!(a.grants_topic("alice", "orders", "amq.topic", Perm::Read, "#"));
        let empty = TopicPermission::new("u", "/", "amq.topic", "", "").expect("empty");
        let a = Access::rules(Vec::new(), vec![empty]);
        assert!(a.grants_topic("u", "/", "amq.topic", Perm::Write, ""), "RabbitMQ's ^$");
        assert!(!a.grants_topic("u", "/", "amq.topic", Perm::Write, "k"));
    }

    #[test]
    fn look_around_is_refused_with_the_pattern_named() {
        let e = Pattern::new("^(?!amq\\.).*").expect_err("look-ahead");
        assert!(e.contains("pattern '^(?!amq\\.).*'"), "{e}");
    }
}
