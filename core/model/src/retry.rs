//! Broker-side retry with backoff: when a consumer rejects or nacks with requeue on a queue
//! with `x-retry-policy`, the broker holds the message out of the queue for the policy's
//! delay, counts the attempt in `x-retry-count`, then puts it back. After the last attempt
//! the message is dead-lettered instead (reason `rejected`).
//!
//! RabbitMQ 4.3's spelling of the same is accepted too: `x-delayed-retry-type` (`disabled`,
//! `failed`: nacked or rejected with requeue, `returned`: given back by a closed channel or a
//! recover, `all`), `x-delayed-retry-min` and `x-delayed-retry-max`, the delay being
//! min(min × delivery count, max); there `x-delivery-limit` alone ends the retries.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use warren_codec::{FieldTable, FieldValue};

use crate::deadletter::Reason;
use crate::error::{AmqpError, precondition};
use crate::message::Message;

/// A queue's retry policy: a built-in one with its queue arguments, or a plugin's.
#[derive(Debug, Clone)]
pub enum Retry {
    /// `fixed` or `exponential`, parameterised by `x-retry-*` queue arguments.
    Builtin(RetryPolicy),
    /// A policy from the broker's config file (a plugin component).
    Plugin(Arc<dyn ExternalRetry>),
}

impl PartialEq for Retry {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Retry::Builtin(a), Retry::Builtin(b)) => a == b,
            (Retry::Plugin(a), Retry::Plugin(b)) => a.name() == b.name(),
            _ => false,
        }
    }
}

/// A retry policy provided from outside the core: a plugin component, called by the driver's
/// host. The core stays free of wasm; it only sees this trait.
pub trait ExternalRetry: fmt::Debug + Send + Sync {
    /// The name queues give in `x-retry-policy`.
    fn name(&self) -> &str;

    /// Decides for `message` after its `attempt`-th failure (1 on the first); `Err` with a
    /// reason when the policy itself failed (the broker then dead-letters the message).
    fn decide(&self, message: &Message, attempt: u32, why: Reason) -> Result<ExternalDecision, String>;
}

/// What an external policy decided.
#[derive(Debug, Clone, PartialEq)]
pub enum ExternalDecision {
    /// Hold the message back, then requeue it with these header changes.
    Retry {
        /// Delay in milliseconds.
        delay_ms: u64,
        /// Headers to add or replace.
        set_headers: FieldTable,
        /// Headers to remove.
        remove_headers: Vec<String>,
    },
    /// Dead-letter it (or drop it if the queue has no dead-letter exchange).
    DeadLetter,
    /// Drop it whatever the queue's dead-letter settings.
    Drop,
}

/// External policies by name.
pub type RetryPlugins = HashMap<String, Arc<dyn ExternalRetry>>;

impl Retry {
    /// Reads `x-retry-policy`: a policy configured as a plugin (whose parameters come from the
    /// config file, so `x-retry-*` arguments are refused), else a built-in one.
    pub fn parse(args: &FieldTable, plugins: &RetryPlugins) -> Result<Option<Retry>, AmqpError> {
        if args.keys().any(|k| k.starts_with("x-delayed-retry-")) {
            if args.contains_key("x-retry-policy") {
                return Err(precondition(
                    "invalid arg 'x-delayed-retry-type': x-retry-policy and x-delayed-retry-* are two \
                     spellings of one retry; give one",
                ));
            }
            return RetryPolicy::parse_delayed(args).map(|p| p.map(Retry::Builtin));
        }
        let named = args.get("x-retry-policy").and_then(FieldValue::as_str);
        let Some((name, plugin)) = named.and_then(|n| plugins.get_key_value(n)) else {
            return RetryPolicy::parse(args).map(|p| p.map(Retry::Builtin));
        };
        if let Some(k) = args.keys().find(|k| k.starts_with("x-retry-") && *k != "x-retry-policy") {
            return Err(precondition(format!(
                "invalid arg '{k}': retry policy '{name}' is a plugin, configured in the broker's config file"
            )));
        }
        Ok(Some(Retry::Plugin(plugin.clone())))
    }

    /// Whether a message coming back `refused` (a nack or reject with requeue, as opposed to a
    /// closed channel or a recover) is this policy's to delay.
    pub fn applies(&self, refused: bool) -> bool {
        match self {
            Retry::Builtin(p) => {
                if refused {
                    p.on.failed
                } else {
                    p.on.returned
                }
            }
            Retry::Plugin(_) => refused,
        }
    }

    /// The decision for `message`, which has been retried `previous` times, delivered
    /// `delivery_count` times, and failed again for `why`. A plugin that fails cannot be
    /// trusted to have meant a retry: the message then takes the dead-letter path, as when
    /// retries run out (the host logs and counts it).
    pub fn decide(
        &self,
        message: &Message,
        previous: u32,
        delivery_count: u32,
        why: Reason,
    ) -> ExternalDecision {
        match self {
            Retry::Builtin(p) => match p.decide_with(previous, delivery_count) {
                RetryDecision::DeadLetter => ExternalDecision::DeadLetter,
                RetryDecision::Retry { delay_ms, .. } => ExternalDecision::Retry {
                    delay_ms,
                    set_headers: FieldTable::new(),
                    remove_headers: Vec::new(),
                },
            },
            Retry::Plugin(p) => {
                p.decide(message, previous.saturating_add(1), why).unwrap_or(ExternalDecision::DeadLetter)
            }
        }
    }
}

/// A built-in retry policy and its parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Fixed or exponential.
    pub kind: RetryKind,
    /// `x-retry-delay-ms`: the first delay (default 1000).
    pub delay_ms: u64,
    /// `x-retry-max-delay-ms`: the longest delay (default 60 000).
    pub max_delay_ms: u64,
    /// `x-retry-max-attempts`: retries before dead-lettering (default 5).
    pub max_attempts: u32,
    /// `x-retry-multiplier`: growth per attempt for exponential (default 2).
    pub multiplier: f64,
    /// Which returns it delays.
    pub on: RetryOn,
}

/// Which returns of a message to its queue a retry policy delays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryOn {
    /// A consumer's nack or reject with requeue.
    pub failed: bool,
    /// A closed channel or a recover.
    pub returned: bool,
}

/// How delays grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryKind {
    /// The same delay every time.
    Fixed,
    /// `delay × multiplier^(attempt-1)`, capped at the max delay.
    Exponential,
    /// `delay × delivery count`, capped at the max delay (RabbitMQ 4.3's delayed retry).
    Linear,
}

/// What to do with a message a consumer gave back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryDecision {
    /// Hold it this many milliseconds, then requeue it as attempt `attempt`.
    Retry {
        /// Delay in milliseconds.
        delay_ms: u64,
        /// The attempt number it will carry in `x-retry-count`.
        attempt: u32,
    },
    /// Out of attempts: dead-letter it.
    DeadLetter,
}

/// Queue argument `key` as a non-negative integer, `default` when absent.
fn non_negative_arg(args: &FieldTable, key: &str, default: u64) -> Result<u64, AmqpError> {
    match args.get(key) {
        None => Ok(default),
        Some(v) => v
            .as_i64()
            .and_then(|n| u64::try_from(n).ok())
            .ok_or_else(|| precondition(format!("invalid arg '{key}': expected a non-negative integer"))),
    }
}

impl RetryPolicy {
    /// Reads `x-retry-policy` and its parameters; `None` when the queue has no policy.
    pub fn parse(args: &FieldTable) -> Result<Option<RetryPolicy>, AmqpError> {
        let Some(name) = args.get("x-retry-policy") else {
            return Ok(None);
        };
        let kind = match name.as_str() {
            Some("fixed") => RetryKind::Fixed,
            Some("exponential") => RetryKind::Exponential,
            _ => {
                return Err(precondition(format!(
                    "invalid arg 'x-retry-policy': {name:?}; expected fixed, exponential or a configured plugin policy"
                )));
            }
        };
        let int = |key: &str, default: u64| non_negative_arg(args, key, default);
        let multiplier = match args.get("x-retry-multiplier") {
            None => 2.0,
            Some(FieldValue::F64(f)) => *f,
            Some(FieldValue::F32(f)) => f64::from(*f),
            Some(v) => v.as_i64().map(|n| n as f64).unwrap_or(f64::NAN),
        };
        if !(multiplier >= 1.0 && multiplier.is_finite()) {
            return Err(precondition("invalid arg 'x-retry-multiplier': expected a number of at least 1"));
        }
        let policy = RetryPolicy {
            kind,
            delay_ms: int("x-retry-delay-ms", 1000)?,
            max_delay_ms: int("x-retry-max-delay-ms", 60_000)?,
            max_attempts: u32::try_from(int("x-retry-max-attempts", 5)?).unwrap_or(u32::MAX),
            multiplier,
            on: RetryOn { failed: true, returned: false },
        };
        Ok(Some(policy))
    }

    /// Reads RabbitMQ 4.3's `x-delayed-retry-*`; `None` for `disabled`. The type defaults to
    /// `failed` when only the delays are given; the minimum to 1 000 ms, the maximum to 60 000.
    pub fn parse_delayed(args: &FieldTable) -> Result<Option<RetryPolicy>, AmqpError> {
        let on = match args.get("x-delayed-retry-type").map(|v| v.as_str()) {
            None | Some(Some("failed")) => RetryOn { failed: true, returned: false },
            Some(Some("returned")) => RetryOn { failed: false, returned: true },
            Some(Some("all")) => RetryOn { failed: true, returned: true },
            Some(Some("disabled")) => RetryOn { failed: false, returned: false },
            Some(v) => {
                return Err(precondition(format!(
                    "invalid arg 'x-delayed-retry-type': {v:?}; expected disabled, all, failed or returned"
                )));
            }
        };
        let int = |key: &str, default: u64| non_negative_arg(args, key, default);
        let (min, max) = (int("x-delayed-retry-min", 1000)?, int("x-delayed-retry-max", 60_000)?);
        if max > u64::from(u32::MAX) {
            return Err(precondition(format!(
                "invalid arg 'x-delayed-retry-max': {max} is over {} ms",
                u32::MAX
            )));
        }
        if max < min {
            return Err(precondition(format!(
                "invalid arg 'x-delayed-retry-max': {max} is below x-delayed-retry-min {min}"
            )));
        }
        if !on.failed && !on.returned {
            return Ok(None);
        }
        let policy = RetryPolicy {
            kind: RetryKind::Linear,
            delay_ms: min,
            max_delay_ms: max,
            max_attempts: u32::MAX,
            multiplier: 1.0,
            on,
        };
        Ok(Some(policy))
    }

    /// The decision for a message that has been retried `previous` times already.
    pub fn decide(&self, previous: u32) -> RetryDecision {
        self.decide_with(previous, previous.saturating_add(1))
    }

    /// [`RetryPolicy::decide`] for a message delivered `delivery_count` times.
    pub fn decide_with(&self, previous: u32, delivery_count: u32) -> RetryDecision {
        let attempt = previous.saturating_add(1);
        if attempt > self.max_attempts {
            return RetryDecision::DeadLetter;
        }
        let delay = match self.kind {
            RetryKind::Fixed => self.delay_ms as f64,
            RetryKind::Exponential => self.delay_ms as f64 * self.multiplier.powi(attempt as i32 - 1),
            RetryKind::Linear => self.delay_ms as f64 * f64::from(delivery_count.max(1)),
        };
        let delay_ms = (delay.min(self.max_delay_ms as f64)) as u64;
        RetryDecision::Retry { delay_ms, attempt }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(pairs: &[(&str, FieldValue)]) -> RetryPolicy {
        let t: FieldTable = pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        RetryPolicy::parse(&t).expect("valid").expect("a policy")
    }

    #[test]
    fn exponential_doubles_up_to_the_cap_then_dead_letters() {
        let p = policy(&[
            ("x-retry-policy", FieldValue::str("exponential")),
            ("x-retry-delay-ms", FieldValue::I32(100)),
            ("x-retry-max-delay-ms", FieldValue::I32(500)),
            ("x-retry-max-attempts", FieldValue::I32(4)),
        ]);
        let delays: Vec<_> = (0..5).map(|n| p.decide(n)).collect();
        assert_eq!(
            delays,
            vec![
                RetryDecision::Retry { delay_ms: 100, attempt: 1 },
                RetryDecision::Retry { delay_ms: 200, attempt: 2 },
                RetryDecision::Retry { delay_ms: 400, attempt: 3 },
                RetryDecision::Retry { delay_ms: 500, attempt: 4 },
                RetryDecision::DeadLetter,
            ]
        );
    }

    #[test]
    fn rabbitmq_4_3_delayed_retry_grows_with_the_delivery_count_up_to_the_max() {
        let t: FieldTable = [
            ("x-delayed-retry-type".to_string(), FieldValue::str("all")),
            ("x-delayed-retry-min".to_string(), FieldValue::I32(100)),
            ("x-delayed-retry-max".to_string(), FieldValue::I32(250)),
        ]
        .into_iter()
        .collect();
        let p = RetryPolicy::parse_delayed(&t).expect("valid").expect("a policy");
        assert_eq!(p.on, RetryOn { failed: true, returned: true });
        let delays: Vec<_> = (1..=4).map(|n| p.decide_with(n - 1, n)).collect();
        let want = [100, 200, 250, 250];
        for (d, (w, attempt)) in delays.iter().zip(want.iter().zip(1..)) {
            assert_eq!(*d, RetryDecision::Retry { delay_ms: *w, attempt });
        }
        let too_long: FieldTable =
            [("x-delayed-retry-max".to_string(), FieldValue::I64(i64::from(u32::MAX) + 1))]
                .into_iter()
                .collect();
        assert_eq!(RetryPolicy::parse_delayed(&too_long).map_err(|e| e.code), Err(406));
        let off: FieldTable =
            [("x-delayed-retry-type".to_string(), FieldValue::str("disabled"))].into_iter().collect();
        assert_eq!(RetryPolicy::parse_delayed(&off).expect("valid"), None);
        let bad: FieldTable =
            [("x-delayed-retry-type".to_string(), FieldValue::str("sometimes"))].into_iter().collect();
        assert_eq!(RetryPolicy::parse_delayed(&bad).map_err(|e| e.code), Err(406));
        let both: FieldTable = [
            ("x-delayed-retry-min".to_string(), FieldValue::I32(1)),
            ("x-retry-policy".to_string(), FieldValue::str("fixed")),
        ]
        .into_iter()
        .collect();
        assert_eq!(Retry::parse(&both, &RetryPlugins::default()).map_err(|e| e.code).err(), Some(406));
    }

    #[test]
    fn fixed_keeps_its_delay_and_unknown_policies_are_refused() {
        let p = policy(&[
            ("x-retry-policy", FieldValue::str("fixed")),
            ("x-retry-delay-ms", FieldValue::I32(50)),
        ]);
        assert_eq!(p.decide(3), RetryDecision::Retry { delay_ms: 50, attempt: 4 });
        let t: FieldTable = [("x-retry-policy".to_string(), FieldValue::str("random"))].into_iter().collect();
        assert_eq!(RetryPolicy::parse(&t).map_err(|e| e.code), Err(406));
    }
}
