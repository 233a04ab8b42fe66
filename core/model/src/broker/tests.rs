//! The broker driven in memory with virtual time: no sockets, no sleeping, exact deadlines.
#![allow(clippy::disallowed_methods)] // one real Instant to start the virtual clock from

use std::time::{Duration, Instant};

use bytes::Bytes;
use warren_codec::{
    BasicConsume, BasicNack, BasicProperties, BasicPublish, FieldTable, FieldValue, Method, QueueDeclare,
};

use super::{Broker, BrokerConfig, ConnId, ConnectionInfo};
use crate::message::Outgoing;

struct Harness {
    b: Broker,
    conn: ConnId,
    now: Instant,
}

impl Harness {
    fn new() -> Self {
        let now = Instant::now();
        let mut b = Broker::new(BrokerConfig::default(), now);
        b.set_time(now, 1_700_000_000_000);
        let conn = b.connect(ConnectionInfo::default());
        b.open_channel(conn, 1);
        let mut h = Harness { b, conn, now };
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

    /// Moves virtual time forward and runs what is due.
    fn advance(&mut self, ms: u64) {
        self.now += Duration::from_millis(ms);
        self.b.set_time(self.now, 1_700_000_000_000);
        self.b.handle_timeout();
    }

    fn sent(&mut self) -> Vec<Outgoing> {
        let mut out = Vec::new();
        self.b.take_outbound(self.conn, &mut out);
        out
    }

    /// Delivery tags and `x-retry-count` of the deliveries sent since the last call.
    fn deliveries(&mut self) -> Vec<(u64, Option<FieldValue>)> {
        self.sent()
            .into_iter()
            .filter_map(|o| match o {
                Outgoing::Content { method: Method::BasicDeliver(d), message, .. } => {
                    let retry =
                        message.properties.headers.as_ref().and_then(|h| h.get("x-retry-count")).cloned();
                    Some((d.delivery_tag, retry))
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
