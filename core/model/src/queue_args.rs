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
        parse: Some(|q, k, v| {
            q.delivery_limit = Some(u32::try_from(non_negative(k, v)?).unwrap_or(u32::MAX));
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

fn queue_type(_: &mut QueueArgs, key: &str, v: &FieldValue) -> Result<(), AmqpError> {
    let t = text(key, v)?;
    if t != "classic" {
        return Err(precondition(format!(
            "invalid arg 'x-queue-type': queue type '{t}' is not supported by Warren yet"
        )));
    }
    Ok(())
}

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
