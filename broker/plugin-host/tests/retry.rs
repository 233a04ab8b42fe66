//! The retry-exponential component loaded and asked for decisions, and what load refuses.

use warren_core::deadletter::Reason;
use warren_core::message::Message;
use warren_core::retry::{ExternalDecision, ExternalRetry};
use warren_plugin_host::{Limits, LoadError, RetryPlugin, Runtime, guests};

fn config(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn message() -> Message {
    Message {
        exchange: String::new(),
        routing_key: "jobs".into(),
        properties: Box::default(),
        body: bytes::Bytes::from_static(b"job"),
    }
}

#[test]
fn exponential_backs_off_then_dead_letters() {
    let rt = Runtime::new(None).expect("engine");
    let path = guests::component("retry-exponential");
    let cfg = config(&[("base-ms", "100"), ("max-attempts", "3"), ("max-delay-ms", "350")]);
    let p = RetryPlugin::load(&rt, "exponential", &path, cfg, Limits::default()).expect("loads");
    assert_eq!(p.name(), "exponential");
    let delays: Vec<ExternalDecision> =
        (1..=4).map(|attempt| p.decide(&message(), attempt, Reason::Rejected).expect("decides")).collect();
    let retry = |delay_ms| ExternalDecision::Retry {
        delay_ms,
        set_headers: Default::default(),
        remove_headers: vec![],
    };
    assert_eq!(delays, vec![retry(100), retry(200), retry(350), ExternalDecision::DeadLetter]);
    assert_eq!(p.stats().calls(), 2 + 4, "instantiate and create, then one call per decision");
}

#[test]
fn a_policy_that_refuses_its_config_or_is_not_a_policy_is_refused_at_load() {
    let rt = Runtime::new(None).expect("engine");
    let path = guests::component("retry-exponential");
    let err = RetryPlugin::load(&rt, "exponential", &path, config(&[("base-ms", "soon")]), Limits::default())
        .expect_err("bad config");
    assert!(matches!(err, LoadError::Config { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("retry_exponential.wasm") && text.contains("base-ms"), "{text}");

    let exchange = guests::component("exchange-direct");
    let err =
        RetryPlugin::load(&rt, "direct", &exchange, vec![], Limits::default()).expect_err("wrong world");
    assert!(matches!(err, LoadError::WrongWorld { .. }) && err.to_string().contains("retry-plugin"), "{err}");
}
