//! Dead-lettering as RabbitMQ does it: the `x-death` header, the first/last-death headers,
//! the routing keys a dead letter is republished with, and cycle detection.
//!
//! `x-death` is an array, newest first, with one table per (queue, reason): `count`, `queue`,
//! `reason`, `time`, `exchange`, `routing-keys`, and `original-expiration` when the message had
//! a per-message TTL. Dying again in the same queue for the same reason increments that
//! entry's count and moves it to the front.

use warren_codec::{BasicProperties, FieldTable, FieldValue};

use crate::message::Message;

/// Why a message was dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub enum Reason {
    /// basic.reject or basic.nack with requeue=false (or retries exhausted).
    Rejected,
    /// Its TTL passed.
    Expired,
    /// The queue's length limit pushed it out.
    MaxLen,
    /// It was returned more often than `x-delivery-limit` allows.
    DeliveryLimit,
}

impl Reason {
    /// The name used in `x-death` and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Rejected => "rejected",
            Reason::Expired => "expired",
            Reason::MaxLen => "maxlen",
            Reason::DeliveryLimit => "delivery_limit",
        }
    }

    /// Every reason, for metrics.
    pub const ALL: [Reason; 4] = [Reason::Rejected, Reason::Expired, Reason::MaxLen, Reason::DeliveryLimit];
}

/// The routing keys a message was published with: its key and any `CC` keys.
pub fn routing_keys(m: &Message) -> Vec<String> {
    let mut keys = vec![m.routing_key.clone()];
    if let Some(FieldValue::Array(cc)) = m.properties.headers.as_ref().and_then(|h| h.get("CC")) {
        keys.extend(cc.iter().filter_map(FieldValue::as_str).map(str::to_string));
    }
    keys
}

/// The message as it is republished to the dead-letter exchange, and its routing key.
///
/// `now_secs` is wall-clock seconds for the `time` field.
pub fn dead_letter(
    m: &Message,
    queue: &str,
    reason: Reason,
    dlx: &str,
    dl_routing_key: Option<&str>,
    now_secs: u64,
) -> Message {
    let mut properties = m.properties.clone();
    let original_expiration = properties.expiration.take();
    let mut entry = FieldTable::new();
    entry.insert("queue".into(), FieldValue::str(queue));
    entry.insert("reason".into(), FieldValue::str(reason.as_str()));
    entry.insert("time".into(), FieldValue::Timestamp(now_secs));
    entry.insert("exchange".into(), FieldValue::str(&m.exchange));
    let keys = routing_keys(m).iter().map(|k| FieldValue::str(k)).collect();
    entry.insert("routing-keys".into(), FieldValue::Array(keys));
    if let Some(exp) = original_expiration {
        entry.insert("original-expiration".into(), FieldValue::str(&exp));
    }
    let headers = properties.headers.get_or_insert_with(FieldTable::new);
    record_death(headers, entry, queue, reason, &m.exchange);
    // A dead-letter routing key replaces the keys, CC included; BCC never survives routing.
    if dl_routing_key.is_some() {
        headers.remove("CC");
    }
    headers.remove("BCC");
    Message {
        exchange: dlx.to_string(),
        routing_key: dl_routing_key.unwrap_or(&m.routing_key).to_string(),
        properties,
        body: m.body.clone(),
    }
}

fn record_death(headers: &mut FieldTable, entry: FieldTable, queue: &str, reason: Reason, exchange: &str) {
    let mut deaths = match headers.remove("x-death") {
        Some(FieldValue::Array(items)) => items,
        _ => Vec::new(),
    };
    let same = |t: &FieldTable| {
        t.get("queue").and_then(FieldValue::as_str) == Some(queue)
            && t.get("reason").and_then(FieldValue::as_str) == Some(reason.as_str())
    };
    let existing = deaths.iter().position(|d| matches!(d, FieldValue::Table(t) if same(t)));
    let first = match existing.map(|i| deaths.remove(i)) {
        Some(FieldValue::Table(mut t)) => {
            let count = t.get("count").and_then(FieldValue::as_i64).unwrap_or(0);
            t.insert("count".into(), FieldValue::I64(count + 1));
            t
        }
        _ => {
            let mut t = entry;
            t.insert("count".into(), FieldValue::I64(1));
            t
        }
    };
    deaths.insert(0, FieldValue::Table(first));
    headers.insert("x-death".into(), FieldValue::Array(deaths));
    for (k, v) in [("queue", queue), ("reason", reason.as_str()), ("exchange", exchange)] {
        headers.entry(format!("x-first-death-{k}")).or_insert_with(|| FieldValue::str(v));
        headers.insert(format!("x-last-death-{k}"), FieldValue::str(v));
    }
}

/// Whether dead-lettering into `target` would loop: `target` appears in the `x-death` list
/// and no death from the front of the list up to and including it was a rejection (a
/// consumer in the loop means it is not automatic, so not a cycle). Rejections never cycle.
pub fn is_cycle(properties: &BasicProperties, reason: Reason, target: &str) -> bool {
    if reason == Reason::Rejected {
        return false;
    }
    let Some(FieldValue::Array(deaths)) = properties.headers.as_ref().and_then(|h| h.get("x-death")) else {
        return false;
    };
    for d in deaths {
        let FieldValue::Table(t) = d else {
            return false;
        };
        if t.get("reason").and_then(FieldValue::as_str) == Some("rejected") {
            return false;
        }
        if t.get("queue").and_then(FieldValue::as_str) == Some(target) {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn msg(expiration: Option<&str>) -> Message {
        Message {
            exchange: "orders".into(),
            routing_key: "new".into(),
            properties: Box::new(BasicProperties {
                expiration: expiration.map(str::to_string),
                ..Default::default()
            }),
            body: Bytes::from_static(b"x"),
        }
    }

    fn deaths(m: &Message) -> Vec<FieldTable> {
        match m.properties.headers.as_ref().and_then(|h| h.get("x-death")) {
            Some(FieldValue::Array(a)) => a
                .iter()
                .filter_map(|v| match v {
                    FieldValue::Table(t) => Some(t.clone()),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        }
    }

    #[test]
    fn first_death_has_rabbitmqs_fields() {
        let d = dead_letter(&msg(Some("5000")), "work", Reason::Expired, "dlx", None, 1_700_000_000);
        assert_eq!((d.exchange.as_str(), d.routing_key.as_str()), ("dlx", "new"));
        assert_eq!(d.properties.expiration, None);
        let x = deaths(&d);
        assert_eq!(x.len(), 1);
        let e = &x[0];
        assert_eq!(e.get("count"), Some(&FieldValue::I64(1)));
        assert_eq!(e.get("queue").and_then(FieldValue::as_str), Some("work"));
        assert_eq!(e.get("reason").and_then(FieldValue::as_str), Some("expired"));
        assert_eq!(e.get("exchange").and_then(FieldValue::as_str), Some("orders"));
        assert_eq!(e.get("time"), Some(&FieldValue::Timestamp(1_700_000_000)));
        assert_eq!(e.get("original-expiration").and_then(FieldValue::as_str), Some("5000"));
        assert_eq!(e.get("routing-keys"), Some(&FieldValue::Array(vec![FieldValue::str("new")])));
        let h = d.properties.headers.as_ref().expect("headers");
        assert_eq!(h.get("x-first-death-queue").and_then(FieldValue::as_str), Some("work"));
        assert_eq!(h.get("x-last-death-reason").and_then(FieldValue::as_str), Some("expired"));
    }

    #[test]
    fn dying_twice_in_two_queues_then_again_in_the_first() {
        let a = dead_letter(&msg(None), "q1", Reason::Rejected, "dlx", Some("to-q2"), 1);
        let b = dead_letter(&a, "q2", Reason::Expired, "dlx2", None, 2);
        let order: Vec<_> = deaths(&b)
            .iter()
            .map(|t| t.get("queue").and_then(FieldValue::as_str).map(str::to_string))
            .collect();
        assert_eq!(order, vec![Some("q2".to_string()), Some("q1".to_string())]);
        let c = dead_letter(&b, "q1", Reason::Rejected, "dlx", None, 3);
        let x = deaths(&c);
        assert_eq!(x.len(), 2);
        assert_eq!(x[0].get("queue").and_then(FieldValue::as_str), Some("q1"));
        assert_eq!(x[0].get("count"), Some(&FieldValue::I64(2)));
        assert_eq!(x[0].get("time"), Some(&FieldValue::Timestamp(1)), "the entry keeps its first time");
        let h = c.properties.headers.as_ref().expect("headers");
        assert_eq!(h.get("x-first-death-queue").and_then(FieldValue::as_str), Some("q1"));
        assert_eq!(h.get("x-first-death-reason").and_then(FieldValue::as_str), Some("rejected"));
        assert_eq!(h.get("x-last-death-queue").and_then(FieldValue::as_str), Some("q1"));
    }

    #[test]
    fn automatic_loops_are_cycles_and_rejections_break_them() {
        let expired = dead_letter(&msg(None), "a", Reason::Expired, "dlx", None, 1);
        assert!(is_cycle(&expired.properties, Reason::Expired, "a"));
        assert!(!is_cycle(&expired.properties, Reason::Expired, "b"));
        assert!(!is_cycle(&expired.properties, Reason::Rejected, "a"));
        let rejected = dead_letter(&expired, "b", Reason::Rejected, "dlx", None, 2);
        assert!(!is_cycle(&rejected.properties, Reason::Expired, "a"));
    }
}
