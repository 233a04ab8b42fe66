//! Exponential backoff: `base-ms × multiplier^(attempt-1)`, capped at `max-delay-ms`, for
//! `max-attempts` attempts, then dead-lettering. Config keys (all optional): `base-ms`
//! (1000), `multiplier` (2), `max-delay-ms` (60000), `max-attempts` (5).

use warren_core::retry::{RetryDecision, RetryKind, RetryOn, RetryPolicy};
use warren_plugin_sdk::retry::{Decision, Message, Reason, Retry, RetryAfter};

struct Exponential(RetryPolicy);

fn number<T: std::str::FromStr>(config: &[(String, String)], key: &str, default: T) -> Result<T, String> {
    match config.iter().find(|(k, _)| k == key) {
        None => Ok(default),
        Some((_, v)) => v.trim().parse().map_err(|_| format!("config '{key}' = '{v}' is not a number")),
    }
}

impl Retry for Exponential {
    fn create(config: Vec<(String, String)>) -> Result<Self, String> {
        if let Some((k, _)) = config
            .iter()
            .find(|(k, _)| !matches!(k.as_str(), "base-ms" | "multiplier" | "max-delay-ms" | "max-attempts"))
        {
            return Err(format!(
                "unknown config key '{k}': expected base-ms, multiplier, max-delay-ms, max-attempts"
            ));
        }
        let multiplier: f64 = number(&config, "multiplier", 2.0)?;
        if !(multiplier >= 1.0 && multiplier.is_finite()) {
            return Err("config 'multiplier' must be a number of at least 1".into());
        }
        Ok(Exponential(RetryPolicy {
            kind: RetryKind::Exponential,
            delay_ms: number(&config, "base-ms", 1000)?,
            max_delay_ms: number(&config, "max-delay-ms", 60_000)?,
            max_attempts: number(&config, "max-attempts", 5)?,
            multiplier,
            // The host asks a plugin only about nacks and rejects.
            on: RetryOn { failed: true, returned: false },
        }))
    }

    fn decide(&self, _message: &Message, attempt: u32, _why: Reason) -> Decision {
        match self.0.decide(attempt.saturating_sub(1)) {
            RetryDecision::Retry { delay_ms, .. } => {
                Decision::Retry(RetryAfter { delay_ms, set_headers: Vec::new(), remove_headers: Vec::new() })
            }
            RetryDecision::DeadLetter => Decision::DeadLetter,
        }
    }
}

warren_plugin_sdk::export_retry!(Exponential);
