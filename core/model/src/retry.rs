//! Broker-side retry with backoff: when a consumer rejects or nacks with requeue on a queue
//! with `x-retry-policy`, the broker holds the message out of the queue for the policy's
//! delay, counts the attempt in `x-retry-count`, then puts it back. After the last attempt
//! the message is dead-lettered instead (reason `rejected`).

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

    /// The decision for `message`, which has been retried `previous` times and failed again
    /// for `why`. A plugin that fails cannot be trusted to have meant a retry: the message
    /// then takes the dead-letter path, as when retries run out (the host logs and counts it).
    pub fn decide(&self, message: &Message, previous: u32, why: Reason) -> ExternalDecision {
        match self {
            Retry::Builtin(p) => match p.decide(previous) {
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
}

/// How delays grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryKind {
    /// The same delay every time.
    Fixed,
    /// `delay × multiplier^(attempt-1)`, capped at the max delay.
    Exponential,
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
        let int = |key: &str, default: u64| -> Result<u64, AmqpError> {
            match args.get(key) {
                None => Ok(default),
                Some(v) => v.as_i64().and_then(|n| u64::try_from(n).ok()).ok_or_else(|| {
                    precondition(format!("invalid arg '{key}': expected a non-negative integer"))
                }),
            }
        };
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
        };
        Ok(Some(policy))
    }

    /// The decision for a message that has been retried `previous` times already.
    pub fn decide(&self, previous: u32) -> RetryDecision {
        let attempt = previous.saturating_add(1);
        if attempt > self.max_attempts {
            return RetryDecision::DeadLetter;
        }
        let delay = match self.kind {
            RetryKind::Fixed => self.delay_ms as f64,
            RetryKind::Exponential => self.delay_ms as f64 * self.multiplier.powi(attempt as i32 - 1),
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
