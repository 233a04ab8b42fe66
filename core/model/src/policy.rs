//! Policies: queue arguments applied by name pattern, as RabbitMQ's policies apply
//! `dead-letter-exchange`, `message-ttl` and friends to every queue whose name matches.
//! A queue's own `x-` arguments win over a policy's; among matching policies the highest
//! priority wins, and the first listed among equals.

use regex::Regex;
use warren_codec::{FieldTable, FieldValue};

/// One policy: a name pattern and the queue arguments it supplies.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Its name, for logs.
    pub name: String,
    /// The vhost whose queues it applies to.
    pub vhost: String,
    /// Queue names it applies to (a regular expression, unanchored as in RabbitMQ).
    pub pattern: Regex,
    /// Higher wins when several match.
    pub priority: i64,
    /// The `x-` arguments it supplies.
    pub arguments: FieldTable,
}

/// The arguments a queue named `name` declared with `declared` ends up with.
pub fn effective_arguments(
    policies: &[Policy],
    vhost: &str,
    name: &str,
    declared: &FieldTable,
) -> FieldTable {
    let matching = policies.iter().filter(|p| p.vhost == vhost && p.pattern.is_match(name));
    let best = matching.fold(None::<&Policy>, |best, p| match best {
        Some(b) if b.priority >= p.priority => Some(b),
        _ => Some(p),
    });
    let Some(p) = best else {
        return declared.clone();
    };
    let mut args = p.arguments.clone();
    args.extend(declared.iter().map(|(k, v)| (k.clone(), v.clone())));
    args
}

/// Builds a policy's argument table from RabbitMQ policy keys.
pub fn arguments_from(definition: &[(&str, FieldValue)]) -> Result<FieldTable, String> {
    let mut t = FieldTable::new();
    for (key, value) in definition {
        let Some(arg) = crate::queue_args::for_policy_key(key) else {
            return Err(format!("unknown policy key '{key}'"));
        };
        t.insert(arg.to_string(), value.clone());
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(name: &str, pattern: &str, priority: i64, dlx: &str) -> Policy {
        let arguments = arguments_from(&[("dead-letter-exchange", FieldValue::str(dlx))]).expect("keys");
        let pattern = Regex::new(pattern).expect("regex");
        Policy { name: name.into(), vhost: "/".into(), pattern, priority, arguments }
    }

    #[test]
    fn a_policy_applies_in_its_own_vhost_only() {
        let mut p = policy("elsewhere", ".*", 0, "dlx");
        p.vhost = "a".into();
        let ps = [p];
        let applied = |vhost: &str| effective_arguments(&ps, vhost, "q", &FieldTable::new()).len();
        assert_eq!((applied("a"), applied("/")), (1, 0));
    }

    #[test]
    fn highest_priority_match_applies_and_queue_arguments_win() {
        let ps = [policy("all", ".*", 0, "general"), policy("orders", "^orders\\.", 5, "orders-dlx")];
        let dlx = |name: &str, declared: &FieldTable| {
            effective_arguments(&ps, "/", name, declared)
                .get("x-dead-letter-exchange")
                .and_then(FieldValue::as_str)
                .map(str::to_string)
        };
        assert_eq!(dlx("orders.eu", &FieldTable::new()).as_deref(), Some("orders-dlx"));
        assert_eq!(dlx("audit", &FieldTable::new()).as_deref(), Some("general"));
        let own: FieldTable =
            [("x-dead-letter-exchange".to_string(), FieldValue::str("mine"))].into_iter().collect();
        assert_eq!(dlx("orders.eu", &own).as_deref(), Some("mine"));
        assert!(arguments_from(&[("dead-letter-exchanges", FieldValue::Void)]).is_err());
    }
}
