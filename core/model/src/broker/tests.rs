//! The broker driven in memory with virtual time: no sockets, no sleeping, exact deadlines.
#![allow(clippy::disallowed_methods)] // one real Instant to start the virtual clock from

use std::time::{Duration, Instant};

use bytes::Bytes;
use warren_codec::{
    BasicAck, BasicConsume, BasicNack, BasicProperties, BasicPublish, BasicReject, ConfirmSelect,
    ConnectionBlocked, ConnectionUnblocked, ExchangeDeclare, FieldTable, FieldValue, Method, QueueBind,
    QueueDeclare, QueueDelete, TxCommit, TxSelect,
};

use super::{Broker, BrokerConfig, ConfirmPolicy, ConnId, ConnectionInfo, VHostId};
use crate::message::Outgoing;
use crate::storage::MemoryStore;

struct Harness {
    b: Broker,
    conn: ConnId,
    now: Instant,
    unix_ms: u64,
}

impl Harness {
    fn new() -> Self {
        Self::build(None)
    }

    /// A broker started from `store`, as after a restart when the store holds something.
    fn with_store(store: &MemoryStore, policy: ConfirmPolicy) -> Self {
        Self::build(Some((store.clone(), policy)))
    }

    fn build(store: Option<(MemoryStore, ConfirmPolicy)>) -> Self {
        let now = Instant::now();
        let mut b = Broker::new(BrokerConfig::default(), now);
        b.set_time(now, 1_700_000_000_000);
        if let Some((store, policy)) = store {
            b.attach_storage(Box::new(store), policy).expect("restore");
        }
        let conn = b.connect(ConnectionInfo::default());
        b.open_channel(conn, 1);
        let mut h = Harness { b, conn, now, unix_ms: 1_700_000_000_000 };
        h.sent();
        h
    }

    fn method(&mut self, m: impl Into<Method>) {
        self.b.handle_method(self.conn, 1, m.into()).expect("method");
    }

    fn declare(&mut self, queue: &str, args: &[(&str, FieldValue)]) {
        let arguments: FieldTable = args.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        self.method(QueueDeclare { queue: queue.into(), arguments, ..Default::default() });
    }

    fn publish(&mut self, queue: &str, body: &'static str, props: BasicProperties) {
        let m = BasicPublish { routing_key: queue.into(), ..Default::default() };
        self.b.publish(self.conn, 1, m, props, Bytes::from_static(body.as_bytes())).expect("publish");
    }

    /// Moves virtual time forward, the wall clock with it, and runs what is due.
    fn advance(&mut self, ms: u64) {
        self.now += Duration::from_millis(ms);
        self.unix_ms += ms;
        self.b.set_time(self.now, self.unix_ms);
        self.b.handle_timeout();
    }

    fn sent(&mut self) -> Vec<Outgoing> {
        let mut out = Vec::new();
        let _ = self.b.take_outbound(self.conn, &mut out);
        out
    }

    /// Delivery tags and `x-retry-count` of the deliveries sent since the last call.
    fn deliveries(&mut self) -> Vec<(u64, Option<FieldValue>)> {
        self.sent()
            .into_iter()
            .filter_map(|o| match o {
                Outgoing::Deliver { delivery_tag, message, .. } => {
                    let retry =
                        message.properties.headers.as_ref().and_then(|h| h.get("x-retry-count")).cloned();
                    Some((delivery_tag, retry))
                }
                _ => None,
            })
            .collect()
    }

    fn ready(&self, queue: &str) -> usize {
        self.b.queue_counts(queue).map_or(0, |c| c.0)
    }
}

#[test]
fn retry_backoff_delays_are_exact_and_the_last_attempt_dead_letters() {
    let mut h = Harness::new();
    h.declare("dlq", &[]);
    h.declare(
        "jobs",
        &[
            ("x-retry-policy", FieldValue::str("exponential")),
            ("x-retry-delay-ms", FieldValue::I32(100)),
            ("x-retry-max-attempts", FieldValue::I32(2)),
            ("x-dead-letter-exchange", FieldValue::str("")),
            ("x-dead-letter-routing-key", FieldValue::str("dlq")),
        ],
    );
    h.method(BasicConsume { queue: "jobs".into(), consumer_tag: "w".into(), ..Default::default() });
    h.publish("jobs", "job", BasicProperties::default());
    let first = h.deliveries();
    assert_eq!(first, vec![(1, None)]);

    h.method(BasicNack { delivery_tag: 1, multiple: false, requeue: true });
    assert_eq!(h.b.poll_timeout(), Some(h.now + Duration::from_millis(100)));
    h.advance(99);
    assert!(h.deliveries().is_empty(), "redelivered before its delay");
    h.advance(1);
    assert_eq!(h.deliveries(), vec![(2, Some(FieldValue::I64(1)))]);

    h.method(BasicNack { delivery_tag: 2, multiple: false, requeue: true });
    h.advance(199);
    assert!(h.deliveries().is_empty(), "second delay is 200 ms");
    h.advance(1);
    assert_eq!(h.deliveries(), vec![(3, Some(FieldValue::I64(2)))]);

    h.method(BasicNack { delivery_tag: 3, multiple: false, requeue: true });
    assert_eq!((h.ready("jobs"), h.ready("dlq")), (0, 1), "out of attempts: dead-lettered");
}

/// A plugin policy as the core sees it: retry once with header changes, then fail.
#[derive(Debug)]
struct Scripted(&'static str);

impl crate::retry::ExternalRetry for Scripted {
    fn name(&self) -> &str {
        self.0
    }

    fn decide(
        &self,
        _message: &crate::message::Message,
        attempt: u32,
        why: crate::deadletter::Reason,
    ) -> Result<crate::retry::ExternalDecision, String> {
        use crate::retry::ExternalDecision;
        assert_eq!(why, crate::deadletter::Reason::Rejected);
        match (self.0, attempt) {
            ("drop", _) => Ok(ExternalDecision::Drop),
            (_, 1) => Ok(ExternalDecision::Retry {
                delay_ms: 50,
                set_headers: [("x-note".to_string(), FieldValue::str("retried"))].into_iter().collect(),
                remove_headers: vec!["x-secret".into()],
            }),
            _ => Err("the plugin trapped".into()),
        }
    }
}

#[test]
fn plugin_retry_policies_retry_change_headers_drop_and_fail_to_the_dead_letter_path() {
    let mut h = Harness::new();
    h.b.register_retry_policy(std::sync::Arc::new(Scripted("scripted")));
    h.b.register_retry_policy(std::sync::Arc::new(Scripted("drop")));
    h.declare("dlq", &[]);
    let dl = [
        ("x-dead-letter-exchange", FieldValue::str("")),
        ("x-dead-letter-routing-key", FieldValue::str("dlq")),
    ];
    h.declare("jobs", &[&dl[..], &[("x-retry-policy", FieldValue::str("scripted"))]].concat());
    h.method(BasicConsume { queue: "jobs".into(), consumer_tag: "w".into(), ..Default::default() });
    let headers: FieldTable = [("x-secret".to_string(), FieldValue::str("s"))].into_iter().collect();
    h.publish("jobs", "job", BasicProperties { headers: Some(headers), ..Default::default() });
    assert_eq!(h.deliveries(), vec![(1, None)]);

    h.method(BasicReject { delivery_tag: 1, requeue: true });
    h.advance(49);
    assert!(h.deliveries().is_empty(), "held for the plugin's delay");
    h.advance(1);
    let redelivered = h.sent();
    let Some(Outgoing::Deliver { message, .. }) = redelivered.first() else {
        panic!("redelivered: {redelivered:?}")
    };
    let headers = message.properties.headers.clone().unwrap_or_default();
    assert_eq!(headers.get("x-note"), Some(&FieldValue::str("retried")));
    assert_eq!(headers.get("x-retry-count"), Some(&FieldValue::I64(1)));
    assert!(!headers.contains_key("x-secret"), "removed as the plugin asked");

    h.method(BasicReject { delivery_tag: 2, requeue: true });
    assert_eq!((h.ready("jobs"), h.ready("dlq")), (0, 1), "a failing policy dead-letters");

    h.declare("dropping", &[&dl[..], &[("x-retry-policy", FieldValue::str("drop"))]].concat());
    h.method(BasicConsume { queue: "dropping".into(), consumer_tag: "d".into(), ..Default::default() });
    h.publish("dropping", "gone", BasicProperties::default());
    assert_eq!(h.deliveries().len(), 1);
    h.method(BasicReject { delivery_tag: 3, requeue: true });
    assert_eq!((h.ready("dropping"), h.ready("dlq")), (0, 1), "dropped, not dead-lettered");

    let bad = QueueDeclare {
        queue: "mixed".into(),
        arguments: [
            ("x-retry-policy".to_string(), FieldValue::str("scripted")),
            ("x-retry-delay-ms".to_string(), FieldValue::I32(5)),
        ]
        .into_iter()
        .collect(),
        ..Default::default()
    };
    let err = h.b.handle_method(h.conn, 1, bad.into()).expect_err("refused");
    assert_eq!(err.code, 406);
    assert!(err.text.contains("x-retry-delay-ms"), "{}", err.text);
}

#[test]
fn ttl_expires_a_message_behind_the_head_at_its_own_deadline() {
    let mut h = Harness::new();
    h.declare("dlq", &[]);
    h.declare(
        "q",
        &[
            ("x-dead-letter-exchange", FieldValue::str("")),
            ("x-dead-letter-routing-key", FieldValue::str("dlq")),
        ],
    );
    let ttl = |ms: &str| BasicProperties { expiration: Some(ms.into()), ..Default::default() };
    h.publish("q", "long", ttl("10000"));
    h.publish("q", "short", ttl("500"));
    h.advance(499);
    assert_eq!((h.ready("q"), h.ready("dlq")), (2, 0));
    h.advance(1);
    assert_eq!((h.ready("q"), h.ready("dlq")), (1, 1));
    h.advance(9_500);
    assert_eq!((h.ready("q"), h.ready("dlq")), (0, 2));
    assert_eq!(h.b.poll_timeout(), None, "no timers left");
}

fn persistent() -> BasicProperties {
    BasicProperties { delivery_mode: Some(2), ..Default::default() }
}

fn durable(queue: &str) -> QueueDeclare {
    QueueDeclare { queue: queue.into(), durable: true, ..Default::default() }
}

fn bodies(out: Vec<Outgoing>) -> Vec<Bytes> {
    out.into_iter()
        .filter_map(|o| match o {
            Outgoing::Content { message, .. } | Outgoing::Deliver { message, .. } => {
                Some(message.body.clone())
            }
            _ => None,
        })
        .collect()
}

#[test]
fn a_restart_keeps_durable_topology_and_persistent_messages_only() {
    let store = MemoryStore::new();
    let mut h = Harness::with_store(&store, ConfirmPolicy::AfterWrite);
    h.method(durable("keep"));
    h.declare("transient", &[]);
    h.method(QueueDeclare {
        queue: "exclusive".into(),
        durable: true,
        exclusive: true,
        ..Default::default()
    });
    h.method(ExchangeDeclare {
        exchange: "x".into(),
        kind: "topic".into(),
        durable: true,
        ..Default::default()
    });
    h.method(QueueBind {
        queue: "keep".into(),
        exchange: "x".into(),
        routing_key: "a.*".into(),
        ..Default::default()
    });
    h.method(QueueBind {
        queue: "transient".into(),
        exchange: "x".into(),
        routing_key: "#".into(),
        ..Default::default()
    });
    h.publish("keep", "p1", persistent());
    h.publish("keep", "t1", BasicProperties::default());
    h.publish("keep", "p2", persistent());
    h.publish("transient", "p3", persistent());
    h.publish("exclusive", "p4", persistent());
    let mut h = Harness::with_store(&store, ConfirmPolicy::AfterWrite);
    assert!(h.b.queue("transient").is_none() && h.b.queue("exclusive").is_none());
    assert_eq!(h.ready("keep"), 2, "the transient message is dropped, as RabbitMQ does");
    let x = h.b.exchange("x").expect("durable exchange");
    assert_eq!(x.binding_count(), 1, "only the binding between durable ends");
    let m = BasicPublish { exchange: "x".into(), routing_key: "a.b".into(), ..Default::default() };
    h.b.publish(h.conn, 1, m, persistent(), Bytes::from_static(b"p5")).expect("publish");
    h.method(BasicConsume { queue: "keep".into(), no_ack: true, ..Default::default() });
    assert_eq!(bodies(h.sent()), ["p1", "p2", "p5"].map(|s| Bytes::from_static(s.as_bytes())));
    // Delivered with auto-ack: gone for good.
    let h = Harness::with_store(&store, ConfirmPolicy::AfterWrite);
    assert_eq!(h.ready("keep"), 0);
}

#[test]
fn acked_messages_stay_gone_and_returned_ones_keep_their_delivery_count() {
    let store = MemoryStore::new();
    let mut h = Harness::with_store(&store, ConfirmPolicy::AfterWrite);
    h.method(durable("q"));
    for body in ["a", "b", "c"] {
        h.publish("q", body, persistent());
    }
    h.method(BasicConsume { queue: "q".into(), ..Default::default() });
    let tags = h.deliveries();
    h.method(BasicAck { delivery_tag: tags[0].0, multiple: false });
    h.method(BasicNack { delivery_tag: tags[1].0, multiple: false, requeue: true });
    // "c" stays unacked when the broker "crashes".
    let mut h = Harness::with_store(&store, ConfirmPolicy::AfterWrite);
    assert_eq!(h.ready("q"), 2);
    h.method(BasicConsume { queue: "q".into(), no_ack: true, ..Default::default() });
    let got: Vec<_> = h
        .sent()
        .into_iter()
        .filter_map(|o| match o {
            Outgoing::Deliver { message, redelivered, .. } => {
                let count =
                    message.properties.headers.as_ref().and_then(|h| h.get("x-delivery-count")).cloned();
                Some((message.body.clone(), redelivered, count))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        got,
        [(Bytes::from_static(b"b"), true, Some(FieldValue::I64(1))), (Bytes::from_static(b"c"), false, None),]
    );
}

#[test]
fn confirms_for_stored_messages_wait_for_the_sync() {
    let store = MemoryStore::new();
    let mut h = Harness::with_store(&store, ConfirmPolicy::AfterSync);
    h.method(durable("q"));
    let declared = |out: &[Outgoing]| {
        out.iter().any(|o| matches!(o, Outgoing::Method { method: Method::QueueDeclareOk(_), .. }))
    };
    assert!(!declared(&h.sent()), "a durable declare-ok waits for its record's sync");
    let (waiting, written) = h.b.storage_backlog();
    assert_eq!(waiting, 1);
    h.b.storage_synced(written);
    assert!(declared(&h.sent()));
    h.declare("transient", &[]);
    h.method(ConfirmSelect { no_wait: false });
    h.sent();
    h.publish("q", "1", persistent());
    h.publish("q", "2", persistent());
    h.publish("transient", "3", persistent());
    let acks = |out: Vec<Outgoing>| -> Vec<(u64, bool)> {
        out.into_iter()
            .filter_map(|o| match o {
                Outgoing::Method { method: Method::BasicAck(a), .. } => Some((a.delivery_tag, a.multiple)),
                _ => None,
            })
            .collect()
    };
    assert_eq!(acks(h.sent()), [(3, false)], "only the transient queue's message is confirmed at once");
    let (waiting, written) = h.b.storage_backlog();
    assert_eq!(waiting, 2);
    h.b.storage_synced(written - 1);
    assert_eq!(acks(h.sent()), [(1, false)]);
    h.b.storage_synced(written);
    assert_eq!(acks(h.sent()), [(2, false)]);
    assert_eq!(h.b.storage_backlog().0, 0);
}

#[test]
fn a_failed_sync_nacks_the_confirms_that_waited_and_closes_a_waiting_commit() {
    let store = MemoryStore::new();
    let mut h = Harness::with_store(&store, ConfirmPolicy::AfterSync);
    h.method(durable("q"));
    let (_, written) = h.b.storage_backlog();
    h.b.storage_synced(written);
    h.method(ConfirmSelect { no_wait: false });
    h.sent();
    h.publish("q", "1", persistent());
    h.publish("q", "2", persistent());
    // A second connection's transaction waits for the same sync.
    let other = h.b.connect(ConnectionInfo::default());
    h.b.open_channel(other, 1);
    h.b.handle_method(other, 1, TxSelect {}.into()).expect("select");
    let m = BasicPublish { routing_key: "q".into(), ..Default::default() };
    h.b.publish(other, 1, m, persistent(), Bytes::from_static(b"3")).expect("publish");
    h.b.handle_method(other, 1, TxCommit {}.into()).expect("commit");
    assert_eq!(h.b.storage_backlog().0, 3);
    h.b.storage_failed("fsync of 0000000000000001.seg failed: EIO");
    let out = h.sent();
    let nacks: Vec<u64> = out
        .iter()
        .filter_map(|o| match o {
            Outgoing::Method { method: Method::BasicNack(n), .. } => Some(n.delivery_tag),
            _ => None,
        })
        .collect();
    assert_eq!(nacks, [1, 2]);
    assert!(!out.iter().any(|o| matches!(o, Outgoing::Method { method: Method::BasicAck(_), .. })));
    let errors = h.b.take_errors(other);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!((errors[0].0, errors[0].1.code), (0, 541));
    // A later sync report cannot confirm anything: nothing waits any more.
    h.b.storage_synced(u64::MAX);
    assert!(!h.sent().iter().any(|o| matches!(o, Outgoing::Method { method: Method::BasicAck(_), .. })));
    assert_eq!(h.b.storage_failure(), Some("fsync of 0000000000000001.seg failed: EIO"));
}

#[test]
fn dead_lettering_between_durable_queues_and_retries_survive_a_restart() {
    let store = MemoryStore::new();
    let mut h = Harness::with_store(&store, ConfirmPolicy::AfterWrite);
    h.method(durable("dlq"));
    let args: FieldTable = [
        ("x-dead-letter-exchange".to_string(), FieldValue::str("")),
        ("x-dead-letter-routing-key".to_string(), FieldValue::str("dlq")),
        ("x-retry-policy".to_string(), FieldValue::str("fixed")),
        ("x-retry-delay-ms".to_string(), FieldValue::I64(1_000)),
        ("x-retry-max-attempts".to_string(), FieldValue::I64(1)),
    ]
    .into_iter()
    .collect();
    h.method(QueueDeclare { queue: "work".into(), durable: true, arguments: args, ..Default::default() });
    h.publish("work", "retried", persistent());
    h.publish("work", "rejected", persistent());
    h.method(BasicConsume { queue: "work".into(), ..Default::default() });
    let tags = h.deliveries();
    h.method(BasicNack { delivery_tag: tags[0].0, multiple: false, requeue: true });
    h.method(BasicReject { delivery_tag: tags[1].0, requeue: false });
    let mut h = Harness::with_store(&store, ConfirmPolicy::AfterWrite);
    assert_eq!(h.ready("dlq"), 1, "the rejected message is in the dead-letter queue, once");
    assert_eq!(h.ready("work"), 0, "the retried one is still held back");
    h.advance(999);
    assert_eq!(h.ready("work"), 0);
    h.advance(1);
    assert_eq!(h.ready("work"), 1, "released on time after the restart");
    h.method(BasicConsume { queue: "work".into(), no_ack: true, ..Default::default() });
    assert_eq!(h.deliveries(), [(1, Some(FieldValue::I64(1)))]);
}

#[test]
fn a_deleted_durable_queue_does_not_come_back_and_its_id_is_not_reused() {
    let store = MemoryStore::new();
    let mut h = Harness::with_store(&store, ConfirmPolicy::AfterWrite);
    h.method(durable("old"));
    h.publish("old", "x", persistent());
    h.method(QueueDelete { queue: "old".into(), ..Default::default() });
    let mut h = Harness::with_store(&store, ConfirmPolicy::AfterWrite);
    assert!(h.b.queue("old").is_none());
    h.method(durable("new"));
    assert_eq!(h.ready("new"), 0, "the deleted queue's entries do not reappear under a reused id");
}

#[test]
fn an_alarm_blocks_publishers_only_and_tells_those_that_asked() {
    let mut h = Harness::new();
    let info = ConnectionInfo { blocked_notify: true, ..Default::default() };
    let publisher = h.b.connect(info.clone());
    let consumer = h.b.connect(info);
    h.b.open_channel(publisher, 1);
    h.declare("q", &[]);
    let told = |b: &mut Broker, conn: ConnId| -> Vec<Method> {
        let mut out = Vec::new();
        let _ = b.take_outbound(conn, &mut out);
        out.into_iter()
            .filter_map(|o| match o {
                Outgoing::Method { channel: 0, method, .. } => Some(method),
                _ => None,
            })
            .collect()
    };
    let m = BasicPublish { routing_key: "q".into(), ..Default::default() };
    h.b.publish(publisher, 1, m.clone(), BasicProperties::default(), Bytes::new()).expect("publish");
    told(&mut h.b, publisher);
    h.b.set_alarm(Some("low on disk".into()));
    assert!(h.b.is_blocked(publisher) && !h.b.is_blocked(consumer));
    assert_eq!(told(&mut h.b, publisher), [Method::from(ConnectionBlocked { reason: "low on disk".into() })]);
    assert!(told(&mut h.b, consumer).is_empty(), "a connection that never published is not blocked");
    assert_eq!(h.b.blocked_count(), 1);
    h.b.set_alarm(None);
    assert_eq!(told(&mut h.b, publisher), [Method::from(ConnectionUnblocked {})]);
    assert!(told(&mut h.b, consumer).is_empty());
    assert!(!h.b.is_blocked(publisher));
    // A first publish under an alarm blocks from then on.
    h.b.set_alarm(Some("low on disk".into()));
    h.b.open_channel(consumer, 1);
    h.b.publish(consumer, 1, m, BasicProperties::default(), Bytes::new()).expect("publish");
    assert!(h.b.is_blocked(consumer));
    assert!(
        told(&mut h.b, consumer).contains(&Method::from(ConnectionBlocked { reason: "low on disk".into() }))
    );
}

#[test]
fn tx_commit_ok_waits_for_the_sync_when_the_transaction_stored_messages() {
    let store = MemoryStore::new();
    let mut h = Harness::with_store(&store, ConfirmPolicy::AfterSync);
    h.method(durable("q"));
    h.method(TxSelect {});
    h.publish("q", "1", persistent());
    h.sent();
    h.method(TxCommit {});
    let commit_ok = |out: Vec<Outgoing>| {
        out.iter().any(|o| matches!(o, Outgoing::Method { method: Method::TxCommitOk(_), .. }))
    };
    assert!(!commit_ok(h.sent()), "not before the sync");
    let (_, written) = h.b.storage_backlog();
    h.b.storage_synced(written);
    assert!(commit_ok(h.sent()));
    // A transaction that stored nothing commits at once.
    h.method(TxCommit {});
    assert!(commit_ok(h.sent()));
}

#[test]
fn cached_topic_routes_follow_every_binding_change() {
    let mut h = Harness::new();
    h.method(ExchangeDeclare { exchange: "t".into(), kind: "topic".into(), ..Default::default() });
    for q in ["q1", "q2"] {
        h.declare(q, &[]);
    }
    let bind = |q: &str, key: &str| QueueBind {
        queue: q.into(),
        exchange: "t".into(),
        routing_key: key.into(),
        ..Default::default()
    };
    let routed = |h: &mut Harness| -> Vec<String> {
        let mut got: Vec<String> =
            h.b.route(VHostId::DEFAULT, "t", "a.b", &BasicProperties::default(), 0)
                .expect("route")
                .iter()
                .map(|q| q.to_string())
                .collect();
        got.sort();
        got
    };
    h.method(bind("q1", "a.*"));
    assert_eq!(routed(&mut h), ["q1"]);
    assert_eq!(routed(&mut h), ["q1"], "the same from the cache");
    h.method(bind("q2", "#.b"));
    assert_eq!(routed(&mut h), ["q1", "q2"], "a new binding is seen");
    h.method(warren_codec::QueueUnbind {
        queue: "q1".into(),
        exchange: "t".into(),
        routing_key: "a.*".into(),
        ..Default::default()
    });
    assert_eq!(routed(&mut h), ["q2"], "an unbind is seen");
    h.method(QueueDelete { queue: "q2".into(), ..Default::default() });
    assert!(routed(&mut h).is_empty(), "a deleted queue's bindings are gone from the cache too");
}

#[test]
fn a_consumer_that_does_not_keep_up_leaves_messages_in_the_queue_and_gets_them_all() {
    let mut h = Harness::new();
    h.declare("q", &[]);
    h.method(BasicConsume {
        queue: "q".into(),
        consumer_tag: "c".into(),
        no_ack: true,
        ..Default::default()
    });
    h.sent();
    let total = 3 * super::OUTBOUND_LIMIT + 10;
    for _ in 0..total {
        h.publish("q", "m", BasicProperties::default());
    }
    // The connection never pulled: all but a window's worth wait in the queue, where
    // max-length, TTL and the metrics see them.
    assert_eq!(h.ready("q"), total - super::OUTBOUND_LIMIT);
    let mut tags = Vec::new();
    while tags.len() < total {
        let got = h.deliveries();
        assert!(!got.is_empty(), "delivery stalled after {} of {total}", tags.len());
        tags.extend(got.into_iter().map(|(t, _)| t));
    }
    assert_eq!(tags, (1..=total as u64).collect::<Vec<_>>(), "in order, none lost or repeated");
    assert_eq!(h.ready("q"), 0);
    assert!(h.sent().is_empty());
}

#[test]
fn a_consumer_past_its_timeout_is_cancelled_and_its_messages_go_back() {
    let mut h = Harness::new();
    // A client that understands consumer_cancel_notify.
    h.conn = h.b.connect(ConnectionInfo { consumer_cancel_notify: true, ..Default::default() });
    h.b.open_channel(h.conn, 1);
    h.declare("slow", &[("x-consumer-timeout", FieldValue::I32(1000))]);
    h.publish("slow", "1", BasicProperties::default());
    h.publish("slow", "2", BasicProperties::default());
    h.method(BasicConsume { queue: "slow".into(), consumer_tag: "c".into(), ..Default::default() });
    assert_eq!(h.deliveries().len(), 2);
    assert_eq!(h.b.queue_counts("slow"), Some((0, 2, 1)));
    h.advance(999);
    assert!(h.sent().is_empty(), "not yet");
    h.advance(2);
    let cancelled = h.sent().into_iter().any(
        |o| matches!(o, Outgoing::Method { method: Method::BasicCancel(c), .. } if c.consumer_tag == "c"),
    );
    assert!(cancelled, "the client is told its consumer is gone");
    assert_eq!(h.b.queue_counts("slow"), Some((2, 0, 0)), "both deliveries are back in the queue");
    // A late ack settles nothing and is no error; a tag never given still is.
    h.method(BasicAck { delivery_tag: 1, multiple: false });
    assert!(h.b.handle_method(h.conn, 1, BasicAck { delivery_tag: 99, multiple: false }.into()).is_err());
}

#[test]
fn without_cancel_notify_the_stuck_consumers_channel_is_closed_and_zero_means_no_limit() {
    let mut h = Harness::new();
    h.declare("slow", &[("x-consumer-timeout", FieldValue::I32(500))]);
    h.declare("patient", &[]);
    h.publish("slow", "1", BasicProperties::default());
    h.publish("patient", "2", BasicProperties::default());
    let no_limit: FieldTable = [("x-consumer-timeout".to_string(), FieldValue::I32(0))].into_iter().collect();
    h.method(BasicConsume {
        queue: "patient".into(),
        consumer_tag: "p".into(),
        arguments: no_limit,
        ..Default::default()
    });
    h.method(BasicConsume { queue: "slow".into(), consumer_tag: "s".into(), ..Default::default() });
    assert_eq!(h.deliveries().len(), 2);
    h.advance(600);
    let errors = h.b.take_errors(h.conn);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!((errors[0].0, errors[0].1.code), (1, 406));
    assert!(errors[0].1.text.contains("consumer timeout"), "{:?}", errors[0].1);
    // The broker's default is 30 minutes; the patient consumer has none at all.
    h.advance(31 * 60 * 1000);
    assert!(h.b.take_errors(h.conn).is_empty());
}

#[test]
fn consumers_per_channel_are_limited() {
    let now = Instant::now();
    let limits = super::Limits { max_consumers_per_channel: Some(2), ..Default::default() };
    let mut b = Broker::new(BrokerConfig { limits, ..Default::default() }, now);
    let conn = b.connect(ConnectionInfo::default());
    b.open_channel(conn, 1);
    b.handle_method(conn, 1, QueueDeclare { queue: "q".into(), ..Default::default() }.into())
        .expect("declare");
    for tag in ["a", "b"] {
        let m = BasicConsume { queue: "q".into(), consumer_tag: tag.into(), ..Default::default() };
        b.handle_method(conn, 1, m.into()).expect("within the limit");
    }
    let m = BasicConsume { queue: "q".into(), consumer_tag: "c".into(), ..Default::default() };
    let e = b.handle_method(conn, 1, m.into()).expect_err("over the limit");
    assert_eq!(e.code, warren_codec::reply_code::NOT_ALLOWED);
}

#[test]
fn a_delayed_message_joins_its_queue_at_its_deadline_and_its_ttl_counts_from_then() {
    let mut h = Harness::new();
    let args: FieldTable = [("x-delayed-type".to_string(), FieldValue::str("direct"))].into_iter().collect();
    h.method(ExchangeDeclare {
        exchange: "later".into(),
        kind: "x-delayed-message".into(),
        arguments: args,
        ..Default::default()
    });
    h.declare("q", &[]);
    h.method(QueueBind {
        queue: "q".into(),
        exchange: "later".into(),
        routing_key: "k".into(),
        ..Default::default()
    });
    let headers: FieldTable = [("x-delay".to_string(), FieldValue::I64(300))].into_iter().collect();
    let props =
        BasicProperties { headers: Some(headers), expiration: Some("1000".into()), ..Default::default() };
    let m = BasicPublish { exchange: "later".into(), routing_key: "k".into(), ..Default::default() };
    h.b.publish(h.conn, 1, m, props, Bytes::from_static(b"held")).expect("publish");
    assert_eq!(h.b.queue_counts("q"), Some((0, 0, 0)), "held, not ready");
    assert_eq!(h.b.delayed_by_exchange(), [("/".to_string(), "later".to_string(), 1)]);
    h.advance(299);
    assert_eq!(h.b.queue_counts("q"), Some((0, 0, 0)));
    h.advance(2);
    assert_eq!(h.b.queue_counts("q"), Some((1, 0, 0)), "joined at its deadline");
    assert_eq!(h.b.delayed_by_exchange(), [("/".to_string(), "later".to_string(), 0)]);
    h.advance(990);
    assert_eq!(h.b.queue_counts("q"), Some((1, 0, 0)), "its TTL counts from the release");
    h.advance(20);
    assert_eq!(h.b.queue_counts("q"), Some((0, 0, 0)), "then it expires");
}

#[test]
fn x_delay_is_capped_at_the_plugins_maximum_and_ignored_when_not_positive() {
    use super::exchanges::{MAX_DELAY_MS, delay_of};
    let with = |v: FieldValue| BasicProperties {
        headers: Some([("x-delay".to_string(), v)].into_iter().collect()),
        ..Default::default()
    };
    assert_eq!(delay_of(&with(FieldValue::I64(i64::MAX))), Some(MAX_DELAY_MS));
    assert_eq!(delay_of(&with(FieldValue::I64(250))), Some(250));
    assert_eq!(delay_of(&with(FieldValue::I64(0))), None);
    assert_eq!(delay_of(&with(FieldValue::I64(-5))), None);
    assert_eq!(delay_of(&BasicProperties::default()), None);
}

/// What a protocol adapter does: a session and commands, no AMQP frame anywhere; replies
/// and deliveries come back as the session's outbound items.
#[test]
fn a_session_driven_by_commands_alone_declares_consumes_publishes_and_settles() {
    use crate::command::{Command, Publish};
    let now = Instant::now();
    let mut b = Broker::new(BrokerConfig::default(), now);
    let info = ConnectionInfo { user: "guest".into(), vhost: "/".into(), ..Default::default() };
    let conn = b.open_session(info).expect("session");
    let apply = |b: &mut Broker, cmd: Command| b.apply(conn, 7, cmd).expect("command");
    apply(&mut b, Command::OpenChannel);
    apply(&mut b, Command::DeclareQueue(QueueDeclare { queue: "sensors".into(), ..Default::default() }));
    let consume = BasicConsume { queue: "sensors".into(), consumer_tag: "c".into(), ..Default::default() };
    apply(&mut b, Command::Consume(consume));
    let publish = |body: &'static [u8]| {
        Command::Publish(Publish {
            method: BasicPublish { routing_key: "sensors".into(), ..Default::default() },
            properties: Box::default(),
            body: Bytes::from_static(body),
        })
    };
    apply(&mut b, publish(b"21.5"));
    let mut out = Vec::new();
    let _ = b.take_outbound(conn, &mut out);
    let names: Vec<&str> = out
        .iter()
        .map(|o| match o {
            Outgoing::Method { method, .. } => method.name(),
            Outgoing::Deliver { .. } => "deliver",
            _ => "other",
        })
        .collect();
    assert_eq!(names, ["channel.open-ok", "queue.declare-ok", "basic.consume-ok", "deliver"]);
    let Some(Outgoing::Deliver { delivery_tag, message, channel, .. }) = out.pop() else {
        panic!("no delivery");
    };
    assert_eq!((channel, &message.body[..]), (7, &b"21.5"[..]));
    assert_eq!(b.queue_counts("sensors"), Some((0, 1, 1)), "unacked until settled");
    apply(&mut b, Command::Ack { delivery_tag, multiple: false });
    assert_eq!(b.queue_counts("sensors"), Some((0, 0, 1)));
    // An error names the operation that failed, as channel.close carries it.
    let e = b
        .apply(
            conn,
            7,
            Command::PurgeQueue(warren_codec::QueuePurge { queue: "nope".into(), ..Default::default() }),
        )
        .expect_err("no such queue");
    assert_eq!((e.code, e.class_id, e.method_id), (404, 50, 30));
}

#[test]
fn a_deleted_vhost_takes_no_command_from_any_session_and_opens_again_emptied() {
    let mut h = Harness::new();
    h.b.add_vhost("shop");
    let info = ConnectionInfo { vhost: "shop".into(), ..Default::default() };
    let operator = h.b.open_operator_session(info).expect("an API session in shop");
    h.b.apply(operator, 1, crate::command::Command::OpenChannel).expect("channel");
    let declare = |q: &str| QueueDeclare { queue: q.into(), durable: true, ..Default::default() };
    h.b.handle_method(operator, 1, declare("orders").into()).expect("declare");
    h.b.delete_vhost("shop").expect("deleted");
    // The API's session was told to go, and whatever it sends now is refused.
    assert!(!h.b.take_errors(operator).is_empty(), "closed with 320");
    let e = h.b.handle_method(operator, 1, declare("late").into()).expect_err("refused");
    assert_eq!(e.code, warren_codec::reply_code::NOT_FOUND);
    let shop = h.b.vhosts().id("shop").expect("shop");
    assert!(h.b.vhosts()[shop].queue("orders").is_none() && h.b.vhosts()[shop].queue("late").is_none());
    // Made again, it is empty but complete: its predeclared exchanges are back.
    h.b.add_vhost("shop");
    assert!(h.b.vhosts()[shop].exchange("amq.direct").is_some() && h.b.vhosts()[shop].open);
}

#[test]
fn a_reply_behind_one_held_for_a_sync_waits_for_it() {
    let store = MemoryStore::new();
    let mut h = Harness::with_store(&store, ConfirmPolicy::AfterSync);
    // Pipelined on one channel: a durable declare (its -ok waits for the sync), then a
    // transient one (nothing to wait for, but its -ok must not overtake the first).
    h.method(durable("kept"));
    h.declare("passing", &[]);
    let names = |out: Vec<Outgoing>| -> Vec<String> {
        out.into_iter()
            .filter_map(|o| match o {
                Outgoing::Method { method: Method::QueueDeclareOk(ok), .. } => Some(ok.queue),
                _ => None,
            })
            .collect()
    };
    assert!(names(h.sent()).is_empty(), "the second waits behind the first");
    let (_, written) = h.b.storage_backlog();
    h.b.storage_synced(written);
    assert_eq!(names(h.sent()), ["kept", "passing"]);
    // With nothing held, a reply goes at once again.
    h.declare("later", &[]);
    assert_eq!(names(h.sent()), ["later"]);
    // basic.get-ok with its message waits behind a held reply too.
    h.method(durable("kept2"));
    h.publish("later", "m", BasicProperties::default());
    h.method(warren_codec::BasicGet { queue: "later".into(), no_ack: true, ..Default::default() });
    assert!(h.sent().is_empty(), "get-ok waits behind the held declare-ok");
    let (_, written) = h.b.storage_backlog();
    h.b.storage_synced(written);
    let order: Vec<&str> = h
        .sent()
        .iter()
        .filter_map(|o| match o {
            Outgoing::Method { method: Method::QueueDeclareOk(_), .. } => Some("declare-ok"),
            Outgoing::Content { method: Method::BasicGetOk(_), .. } => Some("get-ok"),
            _ => None,
        })
        .collect();
    assert_eq!(order, ["declare-ok", "get-ok"]);
}

/// What a quorum queue drops without a dead-letter exchange (drop-head, a reject, a TTL)
/// leaves the store too: a restart brings back only what it still held.
#[test]
fn a_quorum_queue_lets_go_of_what_dies_without_a_dead_letter_exchange() {
    let store = MemoryStore::new();
    let mut h = Harness::with_store(&store, ConfirmPolicy::AfterWrite);
    let quorum = QueueDeclare {
        queue: "qq".into(),
        durable: true,
        arguments: [
            ("x-queue-type".to_string(), FieldValue::str("quorum")),
            ("x-max-length".to_string(), FieldValue::I64(2)),
        ]
        .into_iter()
        .collect(),
        ..Default::default()
    };
    h.method(quorum.clone());
    for body in ["a", "b", "c"] {
        h.publish("qq", body, BasicProperties::default());
    }
    h.method(BasicConsume { queue: "qq".into(), consumer_tag: "w".into(), ..Default::default() });
    let tags: Vec<u64> = h.deliveries().into_iter().map(|(t, _)| t).collect();
    assert_eq!(tags.len(), 2, "drop-head kept two");
    h.method(BasicReject { delivery_tag: tags[0], requeue: false });
    let expiring = BasicProperties { expiration: Some("10".into()), ..Default::default() };
    h.method(warren_codec::BasicCancel { consumer_tag: "w".into(), no_wait: false });
    h.publish("qq", "d", expiring);
    h.advance(20);
    let mut h = Harness::with_store(&store, ConfirmPolicy::AfterWrite);
    h.method(BasicConsume { queue: "qq".into(), no_ack: true, ..Default::default() });
    let back = bodies(h.sent());
    let want = [Bytes::from_static(b"c")];
    assert_eq!(back, want, "only the unacked one: the dropped, rejected and expired are gone");
}

/// An auto-ack consumer of a quorum queue gets a window of deliveries at a time: the rest
/// wait in the queue until its connection takes what it was given (a client that does not
/// read holds no more than the window in front of it), and each pull settles what it took.
#[test]
fn an_auto_ack_consumer_of_a_quorum_queue_is_held_to_its_window_until_it_reads() {
    let mut h = Harness::new();
    let quorum = QueueDeclare {
        queue: "qq".into(),
        durable: true,
        arguments: [("x-queue-type".to_string(), FieldValue::str("quorum"))].into_iter().collect(),
        ..Default::default()
    };
    h.method(quorum);
    let window = super::quorum::AUTO_ACK_WINDOW as usize;
    for _ in 0..window + 500 {
        h.publish("qq", "m", BasicProperties::default());
    }
    h.method(BasicConsume { queue: "qq".into(), no_ack: true, ..Default::default() });
    assert_eq!(h.b.queue_counts("qq"), Some((500, 0, 1)), "a window's worth handed out, none read");
    assert_eq!(bodies(h.sent()).len(), window, "the connection takes the window");
    // Taking them settled them: the rest came out for the next pull.
    assert_eq!(h.b.queue_counts("qq"), Some((0, 0, 1)));
    assert_eq!(bodies(h.sent()).len(), 500);
}
