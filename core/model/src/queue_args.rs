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

impl QueueArgs {
    /// Parses and checks the declare arguments; `retry_plugins` are the configured plugin
    /// retry policies a queue may name.
    pub fn parse(args: &FieldTable, retry_plugins: &RetryPlugins) -> Result<QueueArgs, AmqpError> {
        let mut q = QueueArgs::default();
        for (key, v) in args {
            match key.as_str() {
                "x-message-ttl" => q.message_ttl = Some(non_negative(key, v)?),
                "x-expires" => {
                    let ms = non_negative(key, v)?;
                    if ms == 0 {
                        return Err(precondition("invalid arg 'x-expires': must be positive"));
                    }
                    q.expires = Some(ms);
                }
                "x-dead-letter-exchange" => q.dead_letter_exchange = Some(text(key, v)?),
                "x-dead-letter-routing-key" => q.dead_letter_routing_key = Some(text(key, v)?),
                "x-max-length" => q.max_length = Some(non_negative(key, v)?),
                "x-max-length-bytes" => q.max_length_bytes = Some(non_negative(key, v)?),
                "x-max-priority" => {
                    let n = non_negative(key, v)?;
                    if n > MAX_PRIORITY {
                        return Err(precondition(format!(
                            "invalid arg 'x-max-priority': {n} is larger than {MAX_PRIORITY}"
                        )));
                    }
                    q.max_priority = usize::try_from(n).ok();
                }
                "x-overflow" => {
                    q.overflow = match text(key, v)?.as_str() {
                        "drop-head" => Overflow::DropHead,
                        "reject-publish" => Overflow::RejectPublish,
                        "reject-publish-dlx" => Overflow::RejectPublishDlx,
                        other => {
                            return Err(precondition(format!(
                                "invalid arg 'x-overflow': '{other}'; expected drop-head, reject-publish or reject-publish-dlx"
                            )));
                        }
                    }
                }
                "x-consumer-timeout" => match non_negative(key, v)? {
                    0 => q.consumer_timeout_off = true,
                    ms => q.consumer_timeout = Some(std::time::Duration::from_millis(ms)),
                },
                "x-delivery-limit" => {
                    let n = non_negative(key, v)?;
                    q.delivery_limit = Some(u32::try_from(n).unwrap_or(u32::MAX));
                }
                "x-single-active-consumer" => {
                    q.single_active_consumer = v.as_bool().ok_or_else(|| {
                        precondition(format!(
                            "invalid arg 'x-single-active-consumer': expected a boolean, got {v:?}"
                        ))
                    })?
                }
                "x-queue-type" => {
                    let t = text(key, v)?;
                    if t != "classic" {
                        return Err(precondition(format!(
                            "invalid arg 'x-queue-type': queue type '{t}' is not supported by Warren yet"
                        )));
                    }
                }
                _ => {}
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
