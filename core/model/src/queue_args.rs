//! Queue arguments, parsed and checked once at declare. A bad value is 406 PRECONDITION_FAILED
//! naming the argument, as RabbitMQ answers it.

use warren_codec::{FieldTable, FieldValue};

use crate::error::{AmqpError, precondition};
use crate::retry::{Retry, RetryPlugins};

/// RabbitMQ's highest `x-max-priority`.
pub const MAX_PRIORITY: u64 = 255;

/// What to do when a queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overflow {
    /// Drop (dead-letter) the oldest message.
    #[default]
    DropHead,
    /// Refuse the new message (nack under confirms).
    RejectPublish,
    /// Refuse the new message and dead-letter it.
    RejectPublishDlx,
}

/// `x-queue-type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QueueType {
    /// A queue on one node, its messages in the node's store.
    #[default]
    Classic,
    /// A queue replicated by Raft ([`crate::queue::quorum`]).
    Quorum,
}

/// `x-queue-leader-locator`: where a quorum queue's first leader goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LeaderLocator {
    /// The node the declaring client is connected to.
    #[default]
    ClientLocal,
    /// The node leading the fewest queues.
    Balanced,
}

/// A queue's behaviour-changing arguments.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueueArgs {
    /// `x-message-ttl`, milliseconds.
    pub message_ttl: Option<u64>,
    /// `x-expires`, milliseconds unused before the queue is deleted.
    pub expires: Option<u64>,
    /// `x-dead-letter-exchange`.
    pub dead_letter_exchange: Option<String>,
    /// `x-dead-letter-routing-key`.
    pub dead_letter_routing_key: Option<String>,
    /// `x-max-length`, ready messages.
    pub max_length: Option<u64>,
    /// `x-max-length-bytes`, body octets of ready messages.
    pub max_length_bytes: Option<u64>,
    /// `x-overflow`.
    pub overflow: Overflow,
    /// `x-delivery-limit`: deliveries that may end in a requeue before the message is
    /// dead-lettered.
    pub delivery_limit: Option<u32>,
    /// `x-delivery-limit` below 0: no limit, not even a quorum queue's default.
    pub delivery_limit_off: bool,
    /// `x-queue-type`.
    pub queue_type: QueueType,
    /// `x-quorum-initial-group-size`: replicas of a quorum queue.
    pub initial_group_size: Option<u32>,
    /// `x-queue-leader-locator`.
    pub leader_locator: LeaderLocator,
    /// `x-dead-letter-strategy: at-least-once` (else at-most-once).
    pub dead_letter_at_least_once: bool,
    /// `x-single-active-consumer`.
    pub single_active_consumer: bool,
    /// `x-max-priority`: priorities 0 to this one, higher delivered first.
    pub max_priority: Option<usize>,
    /// `x-retry-policy` and its parameters.
    pub retry: Option<Retry>,
    /// `x-consumer-timeout`: how long its consumers' deliveries may wait for an ack; 0 turns
    /// the broker's default off for this queue.
    pub consumer_timeout: Option<std::time::Duration>,
    /// `x-consumer-timeout = 0`: no limit, whatever the broker's default.
    pub consumer_timeout_off: bool,
}

fn non_negative(key: &str, v: &FieldValue) -> Result<u64, AmqpError> {
    v.as_i64().and_then(|n| u64::try_from(n).ok()).ok_or_else(|| {
        precondition(format!("invalid arg '{key}': expected a non-negative integer, got {v:?}"))
    })
}

fn text(key: &str, v: &FieldValue) -> Result<String, AmqpError> {
    v.as_str()
        .map(str::to_string)
        .ok_or_else(|| precondition(format!("invalid arg '{key}': expected a string, got {v:?}")))
}

/// One queue argument: how it is parsed, whether a redeclare must repeat it (RabbitMQ's
/// equivalence check), and the policy key that may supply it. This table is the one list of
/// queue arguments: parsing, the equivalence check and the policy keys all read it.
pub struct ArgSpec {
    /// The `x-` argument.
    pub name: &'static str,
    /// The RabbitMQ policy key that sets it, if a policy may.
    pub policy_key: Option<&'static str>,
    /// Whether a redeclare with another value is 406 PRECONDITION_FAILED.
    pub equivalence: bool,
    /// Checks the value into [`QueueArgs`]; `None` for one Warren compares but does not
    /// interpret (`x-queue-mode`: every classic queue pages bodies out as lazy ones did).
    parse: Option<Parse>,
}

/// Checks one argument's value into [`QueueArgs`].
type Parse = fn(&mut QueueArgs, &str, &FieldValue) -> Result<(), AmqpError>;

/// Every queue argument Warren knows, beside the retry ones ([`Retry::parse`]).
pub const ARGS: &[ArgSpec] = &[
    ArgSpec {
        name: "x-message-ttl",
        policy_key: Some("message-ttl"),
        equivalence: true,
        parse: Some(|q, k, v| {
            q.message_ttl = Some(non_negative(k, v)?);
            Ok(())
        }),
    },
    ArgSpec { name: "x-expires", policy_key: Some("expires"), equivalence: true, parse: Some(expires) },
    ArgSpec {
        name: "x-dead-letter-exchange",
        policy_key: Some("dead-letter-exchange"),
        equivalence: true,
        parse: Some(|q, k, v| {
            q.dead_letter_exchange = Some(text(k, v)?);
            Ok(())
        }),
    },
    ArgSpec {
        name: "x-dead-letter-routing-key",
        policy_key: Some("dead-letter-routing-key"),
        equivalence: true,
        parse: Some(|q, k, v| {
            q.dead_letter_routing_key = Some(text(k, v)?);
            Ok(())
        }),
    },
    ArgSpec {
        name: "x-max-length",
        policy_key: Some("max-length"),
        equivalence: true,
        parse: Some(|q, k, v| {
            q.max_length = Some(non_negative(k, v)?);
            Ok(())
        }),
    },
    ArgSpec {
        name: "x-max-length-bytes",
        policy_key: Some("max-length-bytes"),
        equivalence: true,
        parse: Some(|q, k, v| {
            q.max_length_bytes = Some(non_negative(k, v)?);
            Ok(())
        }),
    },
    ArgSpec { name: "x-max-priority", policy_key: None, equivalence: true, parse: Some(max_priority) },
    ArgSpec { name: "x-overflow", policy_key: Some("overflow"), equivalence: true, parse: Some(overflow) },
    ArgSpec { name: "x-queue-mode", policy_key: None, equivalence: true, parse: None },
    ArgSpec { name: "x-queue-type", policy_key: None, equivalence: true, parse: Some(queue_type) },
    ArgSpec {
        name: "x-single-active-consumer",
        policy_key: None,
        equivalence: true,
        parse: Some(single_active_consumer),
    },
    ArgSpec {
        name: "x-delivery-limit",
        policy_key: Some("delivery-limit"),
        equivalence: true,
        parse: Some(delivery_limit),
    },
    ArgSpec {
        name: "x-quorum-initial-group-size",
        policy_key: None,
        equivalence: true,
        parse: Some(|q, k, v| {
            let n = non_negative(k, v)?;
            if n == 0 {
                return Err(precondition(format!("invalid arg '{k}': must be positive")));
            }
            q.initial_group_size = Some(u32::try_from(n).unwrap_or(u32::MAX));
            Ok(())
        }),
    },
    ArgSpec {
        name: "x-queue-leader-locator",
        policy_key: Some("queue-leader-locator"),
        equivalence: true,
        parse: Some(|q, k, v| {
            q.leader_locator = match text(k, v)?.as_str() {
                "client-local" => LeaderLocator::ClientLocal,
                "balanced" => LeaderLocator::Balanced,
                other => {
                    return Err(precondition(format!(
                        "invalid arg '{k}': '{other}'; expected client-local or balanced"
                    )));
                }
            };
            Ok(())
        }),
    },
    ArgSpec {
        name: "x-dead-letter-strategy",
        policy_key: Some("dead-letter-strategy"),
        equivalence: true,
        parse: Some(|q, k, v| {
            q.dead_letter_at_least_once = match text(k, v)?.as_str() {
                "at-most-once" => false,
                "at-least-once" => true,
                other => {
                    return Err(precondition(format!(
                        "invalid arg '{k}': '{other}'; expected at-most-once or at-least-once"
                    )));
                }
            };
            Ok(())
        }),
    },
    ArgSpec {
        name: "x-consumer-timeout",
        policy_key: None,
        equivalence: false,
        parse: Some(consumer_timeout),
    },
];

/// The queue argument a RabbitMQ policy key stands for.
pub fn for_policy_key(key: &str) -> Option<&'static str> {
    ARGS.iter().find(|a| a.policy_key == Some(key)).map(|a| a.name)
}

/// The RabbitMQ policy key for `x-` argument `name`, if a policy may set it.
pub fn policy_key_of(name: &str) -> Option<&'static str> {
    ARGS.iter().find(|a| a.name == name).and_then(|a| a.policy_key)
}

/// The arguments a redeclare must repeat.
pub fn equivalence_args() -> impl Iterator<Item = &'static str> {
    ARGS.iter().filter(|a| a.equivalence).map(|a| a.name)
}

fn expires(q: &mut QueueArgs, key: &str, v: &FieldValue) -> Result<(), AmqpError> {
    let ms = non_negative(key, v)?;
    if ms == 0 {
        return Err(precondition("invalid arg 'x-expires': must be positive"));
    }
    q.expires = Some(ms);
    Ok(())
}

fn max_priority(q: &mut QueueArgs, key: &str, v: &FieldValue) -> Result<(), AmqpError> {
    let n = non_negative(key, v)?;
    if n > MAX_PRIORITY {
        return Err(precondition(format!("invalid arg 'x-max-priority': {n} is larger than {MAX_PRIORITY}")));
    }
    q.max_priority = usize::try_from(n).ok();
    Ok(())
}

fn overflow(q: &mut QueueArgs, key: &str, v: &FieldValue) -> Result<(), AmqpError> {
    q.overflow = match text(key, v)?.as_str() {
        "drop-head" => Overflow::DropHead,
        "reject-publish" => Overflow::RejectPublish,
        "reject-publish-dlx" => Overflow::RejectPublishDlx,
        other => {
            return Err(precondition(format!(
                "invalid arg 'x-overflow': '{other}'; expected drop-head, reject-publish or reject-publish-dlx"
            )));
        }
    };
    Ok(())
}

fn queue_type(q: &mut QueueArgs, key: &str, v: &FieldValue) -> Result<(), AmqpError> {
    q.queue_type = match text(key, v)?.as_str() {
        "classic" => QueueType::Classic,
        "quorum" => QueueType::Quorum,
        t => return Err(precondition(format!("invalid arg 'x-queue-type': unsupported queue type '{t}'"))),
    };
    Ok(())
}

fn delivery_limit(q: &mut QueueArgs, key: &str, v: &FieldValue) -> Result<(), AmqpError> {
    let n = v
        .as_i64()
        .ok_or_else(|| precondition(format!("invalid arg '{key}': expected an integer, got {v:?}")))?;
    // RabbitMQ 4: -1 (any negative) turns the limit off.
    match u32::try_from(n) {
        Ok(limit) => q.delivery_limit = Some(limit),
        Err(_) if n < 0 => q.delivery_limit_off = true,
        Err(_) => q.delivery_limit = Some(u32::MAX),
    }
    Ok(())
}

/// Arguments a quorum queue refuses, as RabbitMQ does.
const NOT_FOR_QUORUM: &[&str] = &["x-max-priority", "x-queue-mode"];

fn single_active_consumer(q: &mut QueueArgs, _: &str, v: &FieldValue) -> Result<(), AmqpError> {
    q.single_active_consumer = v.as_bool().ok_or_else(|| {
        precondition(format!("invalid arg 'x-single-active-consumer': expected a boolean, got {v:?}"))
    })?;
    Ok(())
}

fn consumer_timeout(q: &mut QueueArgs, key: &str, v: &FieldValue) -> Result<(), AmqpError> {
    match non_negative(key, v)? {
        0 => q.consumer_timeout_off = true,
        ms => q.consumer_timeout = Some(std::time::Duration::from_millis(ms)),
    }
    Ok(())
}

impl QueueArgs {
    /// Parses and checks the declare arguments; `retry_plugins` are the configured plugin
    /// retry policies a queue may name.
    pub fn parse(args: &FieldTable, retry_plugins: &RetryPlugins) -> Result<QueueArgs, AmqpError> {
        let mut q = QueueArgs::default();
        for (key, v) in args {
            // Arguments Warren does not know are kept and ignored, as RabbitMQ does.
            if let Some(parse) = ARGS.iter().find(|a| a.name == key).and_then(|a| a.parse) {
                parse(&mut q, key, v)?;
            }
        }
        if q.dead_letter_routing_key.is_some() && q.dead_letter_exchange.is_none() {
            return Err(precondition(
                "invalid arg 'x-dead-letter-routing-key': x-dead-letter-exchange must be set as well",
            ));
        }
        q.retry = Retry::parse(args, retry_plugins)?;
        Ok(q)
    }

    /// Checks what a queue's type requires of its declaration, with RabbitMQ's words: a
    /// quorum queue is durable, never auto-delete or exclusive, and refuses the arguments
    /// that make no sense for it.
    pub fn check_type(
        &self,
        queue: &str,
        vhost: &str,
        spec: &crate::queue::QueueSpec,
    ) -> Result<(), AmqpError> {
        if self.queue_type != QueueType::Quorum {
            return Ok(());
        }
        let property = if !spec.durable {
            Some("non-durable")
        } else if spec.auto_delete {
            Some("auto-delete")
        } else if spec.exclusive_owner.is_some() {
            Some("exclusive-owner")
        } else {
            None
        };
        if let Some(p) = property {
            return Err(precondition(format!(
                "invalid property '{p}' for queue '{queue}' in vhost '{vhost}'"
            )));
        }
        if let Some(arg) = NOT_FOR_QUORUM.iter().find(|a| spec.arguments.contains_key(**a)) {
            return Err(precondition(format!(
                "invalid arg '{arg}' for queue '{queue}' in vhost '{vhost}' of queue type quorum"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(pairs: &[(&str, FieldValue)]) -> FieldTable {
        pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
    }

    #[test]
    fn parses_what_rabbitmq_accepts() {
        let a = QueueArgs::parse(
            &args(&[
                ("x-message-ttl", FieldValue::I32(1000)),
                ("x-dead-letter-exchange", FieldValue::str("dlx")),
                ("x-overflow", FieldValue::str("reject-publish")),
                ("x-max-length", FieldValue::I64(10)),
            ]),
            &RetryPlugins::default(),
        );
        let a = a.expect("valid");
        assert_eq!(a.message_ttl, Some(1000));
        assert_eq!(a.overflow, Overflow::RejectPublish);
    }

    #[test]
    fn one_table_serves_parsing_equivalence_and_policies() {
        let mut names: Vec<_> = ARGS.iter().map(|a| a.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), ARGS.len(), "an argument is listed twice");
        // RabbitMQ's queue policy keys that Warren applies.
        for (key, arg) in [
            ("dead-letter-exchange", "x-dead-letter-exchange"),
            ("dead-letter-routing-key", "x-dead-letter-routing-key"),
            ("message-ttl", "x-message-ttl"),
            ("expires", "x-expires"),
            ("max-length", "x-max-length"),
            ("max-length-bytes", "x-max-length-bytes"),
            ("overflow", "x-overflow"),
            ("delivery-limit", "x-delivery-limit"),
        ] {
            assert_eq!(for_policy_key(key), Some(arg));
        }
        assert_eq!(for_policy_key("x-message-ttl"), None);
        let equivalence: Vec<_> = equivalence_args().collect();
        assert!(equivalence.contains(&"x-queue-mode") && !equivalence.contains(&"x-consumer-timeout"));
        // Compared, never interpreted: any value is accepted.
        assert!(
            QueueArgs::parse(&args(&[("x-queue-mode", FieldValue::str("lazy"))]), &RetryPlugins::default())
                .is_ok()
        );
    }

    fn spec(
        durable: bool,
        auto_delete: bool,
        exclusive: bool,
        arguments: FieldTable,
    ) -> crate::queue::QueueSpec {
        crate::queue::QueueSpec { durable, auto_delete, exclusive_owner: exclusive.then_some(7), arguments }
    }

    /// RabbitMQ 3.10's answers to the same declares, taken from a real broker.
    #[test]
    fn a_quorum_queue_is_checked_as_rabbitmq_checks_it() {
        let quorum = |extra: &[(&str, FieldValue)]| {
            let mut a = args(&[("x-queue-type", FieldValue::str("quorum"))]);
            a.extend(args(extra));
            a
        };
        let check = |durable, auto_delete, exclusive, a: FieldTable| {
            let parsed = QueueArgs::parse(&a, &RetryPlugins::default())?;
            parsed.check_type("q", "/", &spec(durable, auto_delete, exclusive, a))?;
            Ok::<_, AmqpError>(parsed)
        };
        let text = |r: Result<QueueArgs, AmqpError>| r.map(|_| ()).map_err(|e| (e.code, e.text));
        let refused = |what: &str| {
            Err((406, format!("PRECONDITION_FAILED - invalid property '{what}' for queue 'q' in vhost '/'")))
        };
        assert_eq!(text(check(false, false, false, quorum(&[]))), refused("non-durable"));
        assert_eq!(text(check(true, true, false, quorum(&[]))), refused("auto-delete"));
        assert_eq!(text(check(true, false, true, quorum(&[]))), refused("exclusive-owner"));
        for arg in ["x-max-priority", "x-queue-mode"] {
            let value = if arg == "x-max-priority" { FieldValue::I32(5) } else { FieldValue::str("lazy") };
            let e = check(true, false, false, quorum(&[(arg, value)])).expect_err(arg);
            assert_eq!(
                e.text,
                format!(
                    "PRECONDITION_FAILED - invalid arg '{arg}' for queue 'q' in vhost '/' of queue type quorum"
                )
            );
        }
        for bad in [
            ("x-quorum-initial-group-size", FieldValue::I32(0)),
            ("x-quorum-initial-group-size", FieldValue::str("3")),
            ("x-dead-letter-strategy", FieldValue::str("x")),
            ("x-queue-leader-locator", FieldValue::str("random")),
        ] {
            let e = check(true, false, false, quorum(std::slice::from_ref(&bad))).expect_err(bad.0);
            assert!(e.code == 406 && e.text.contains(bad.0), "{}", e.text);
        }
        let e =
            QueueArgs::parse(&args(&[("x-queue-type", FieldValue::str("bogus"))]), &RetryPlugins::default());
        assert_eq!(
            e.map(|_| ()).map_err(|e| e.text),
            Err("PRECONDITION_FAILED - invalid arg 'x-queue-type': unsupported queue type 'bogus'".into())
        );

        let a = check(
            true,
            false,
            false,
            quorum(&[
                ("x-quorum-initial-group-size", FieldValue::I32(5)),
                ("x-queue-leader-locator", FieldValue::str("balanced")),
                ("x-dead-letter-strategy", FieldValue::str("at-least-once")),
                ("x-overflow", FieldValue::str("reject-publish-dlx")),
                ("x-single-active-consumer", FieldValue::Bool(true)),
            ]),
        )
        .expect("accepted by RabbitMQ");
        assert_eq!(
            (a.queue_type, a.initial_group_size, a.leader_locator, a.dead_letter_at_least_once),
            (QueueType::Quorum, Some(5), LeaderLocator::Balanced, true)
        );
        let config = crate::queue::quorum::Config::from_args(&a);
        // RabbitMQ falls back to drop-head for reject-publish-dlx on a quorum queue.
        assert!(!config.reject_publish && config.single_active_consumer);
        assert_eq!(
            config.delivery_limit,
            Some(crate::queue::quorum::DEFAULT_DELIVERY_LIMIT),
            "RabbitMQ 4's default"
        );
        let off =
            check(true, false, false, quorum(&[("x-delivery-limit", FieldValue::I32(-1))])).expect("-1");
        assert_eq!(crate::queue::quorum::Config::from_args(&off).delivery_limit, None);
        // A classic queue is not held to a quorum queue's rules.
        assert!(check(false, true, true, args(&[("x-max-priority", FieldValue::I32(5))])).is_ok());
    }

    #[test]
    fn bad_values_name_the_argument() {
        for bad in [
            args(&[("x-message-ttl", FieldValue::I32(-1))]),
            args(&[("x-overflow", FieldValue::str("drop-tail"))]),
            args(&[("x-max-priority", FieldValue::I32(256))]),
            args(&[("x-max-priority", FieldValue::I32(-1))]),
            args(&[("x-dead-letter-routing-key", FieldValue::str("k"))]),
        ] {
            let e = QueueArgs::parse(&bad, &RetryPlugins::default()).expect_err("refused");
            assert_eq!(e.code, 406);
            assert!(e.text.contains("'x-"), "{}", e.text);
        }
    }
}
