//! A queue: its declaration, its ready messages in publish order, and its consumers.

use std::collections::VecDeque;

use warren_codec::{FieldTable, FieldValue};

use crate::broker::ConnId;
use crate::error::{AmqpError, precondition};
use crate::message::QueuedMessage;

/// Queue arguments RabbitMQ checks on redeclare; a difference is 406 PRECONDITION_FAILED.
const EQUIVALENCE_ARGS: &[&str] = &[
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-expires",
    "x-max-length",
    "x-max-length-bytes",
    "x-max-priority",
    "x-message-ttl",
    "x-overflow",
    "x-queue-mode",
    "x-queue-type",
    "x-single-active-consumer",
    "x-delivery-limit",
];

/// Arguments RabbitMQ gives meaning to that Warren does not implement yet. Accepting them
/// silently would pretend to a behaviour the queue does not have, so declare refuses them.
const NOT_YET_SUPPORTED_ARGS: &[&str] = &[
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-expires",
    "x-max-length",
    "x-max-length-bytes",
    "x-max-priority",
    "x-message-ttl",
    "x-overflow",
    "x-delivery-limit",
];

/// Identifies one consumer: the connection, channel and tag it was registered under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerKey {
    /// The owning connection.
    pub conn: ConnId,
    /// The owning channel.
    pub channel: u16,
    /// The consumer tag.
    pub tag: String,
    /// `x-priority`: higher-priority consumers get messages first while they have room.
    pub priority: i64,
}

/// The flags a queue was declared with.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueSpec {
    /// Survives a restart (once storage lands).
    pub durable: bool,
    /// Deleted when its last consumer goes.
    pub auto_delete: bool,
    /// Owned by one connection and deleted with it.
    pub exclusive_owner: Option<ConnId>,
    /// Declare arguments.
    pub arguments: FieldTable,
}

/// A queue in a vhost.
#[derive(Debug)]
pub struct Queue {
    /// Unique per incarnation: a queue deleted and declared again under the same name is a
    /// different queue, and unacked messages of the old one must not land in the new one.
    pub id: u64,
    /// Its name.
    pub name: String,
    /// How it was declared.
    pub spec: QueueSpec,
    /// Messages ready for delivery, ordered by `seq`.
    pub ready: VecDeque<QueuedMessage>,
    /// Consumers in round-robin order.
    pub consumers: Vec<ConsumerKey>,
    /// Where the next round-robin search starts.
    pub next_consumer: usize,
    /// Whether one consumer holds exclusive access.
    pub exclusive_consumer: bool,
    /// Whether it ever had a consumer; auto-delete applies only after the first.
    pub had_consumer: bool,
    /// `x-single-active-consumer`: only the earliest registered consumer receives.
    pub single_active: bool,
    next_seq: u64,
}

impl Queue {
    /// A new, empty queue.
    pub fn new(id: u64, name: String, spec: QueueSpec) -> Self {
        let single_active = spec
            .arguments
            .get("x-single-active-consumer")
            .and_then(FieldValue::as_bool)
            == Some(true);
        Queue {
            single_active,
            id,
            name,
            spec,
            ready: VecDeque::new(),
            consumers: Vec::new(),
            next_consumer: 0,
            exclusive_consumer: false,
            had_consumer: false,
            next_seq: 0,
        }
    }

    /// Refuses arguments Warren cannot honour yet; the error names the argument.
    pub fn check_arguments(arguments: &FieldTable) -> Result<(), AmqpError> {
        if let Some(t) = arguments.get("x-queue-type").and_then(FieldValue::as_str)
            && t != "classic"
        {
            return Err(precondition(format!(
                "invalid arg 'x-queue-type': queue type '{t}' is not supported by Warren yet"
            )));
        }
        if let Some(v) = arguments.get("x-single-active-consumer")
            && v.as_bool().is_none()
        {
            return Err(precondition(format!(
                "invalid arg 'x-single-active-consumer' for queue: expected a boolean, got {v:?}"
            )));
        }
        for key in NOT_YET_SUPPORTED_ARGS {
            if arguments.contains_key(*key) {
                return Err(precondition(format!(
                    "invalid arg '{key}': not supported by Warren yet"
                )));
            }
        }
        Ok(())
    }

    /// Checks a redeclare against the existing declaration, as RabbitMQ does.
    pub fn check_equivalent(
        &self,
        durable: bool,
        auto_delete: bool,
        args: &FieldTable,
    ) -> Result<(), AmqpError> {
        let name = &self.name;
        let flag = |what: &str, received: bool, current: bool| {
            precondition(format!(
                "inequivalent arg '{what}' for queue '{name}' in vhost '/': received '{received}' but current is '{current}'"
            ))
        };
        if durable != self.spec.durable {
            return Err(flag("durable", durable, self.spec.durable));
        }
        if auto_delete != self.spec.auto_delete {
            return Err(flag("auto_delete", auto_delete, self.spec.auto_delete));
        }
        for key in EQUIVALENCE_ARGS {
            let (new, old) = (args.get(*key), self.spec.arguments.get(*key));
            if new != old {
                return Err(precondition(format!(
                    "inequivalent arg '{key}' for queue '{name}' in vhost '/': received {} but current is {}",
                    describe(new),
                    describe(old)
                )));
            }
        }
        Ok(())
    }

    /// Refuses access from any connection but the owner of an exclusive queue.
    pub fn check_access(&self, conn: ConnId) -> Result<(), AmqpError> {
        match self.spec.exclusive_owner {
            Some(owner) if owner != conn => Err(AmqpError::new(
                warren_codec::reply_code::RESOURCE_LOCKED,
                format!(
                    "cannot obtain exclusive access to locked queue '{}' in vhost '/'. It could be \
                     originally declared on another connection or the exclusive property value does \
                     not match that of the original declaration.",
                    self.name
                ),
            )),
            _ => Ok(()),
        }
    }

    /// Appends a newly routed message.
    pub fn push(&mut self, message: std::sync::Arc<crate::message::Message>) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.ready.push_back(QueuedMessage {
            seq,
            message,
            redelivered: false,
        });
    }

    /// Puts a message back at its original position, marked redelivered.
    pub fn requeue(&mut self, mut m: QueuedMessage) {
        m.redelivered = true;
        let at = self.ready.partition_point(|x| x.seq < m.seq);
        self.ready.insert(at, m);
    }

    /// Removes one consumer; returns whether it was there.
    pub fn remove_consumer(&mut self, conn: ConnId, channel: u16, tag: &str) -> bool {
        let before = self.consumers.len();
        self.consumers
            .retain(|c| !(c.conn == conn && c.channel == channel && c.tag == tag));
        let removed = self.consumers.len() != before;
        if removed {
            self.exclusive_consumer = false;
            if self.next_consumer >= self.consumers.len() {
                self.next_consumer = 0;
            }
        }
        removed
    }

    /// Whether an auto-delete queue has lost its last consumer.
    pub fn should_auto_delete(&self) -> bool {
        self.spec.auto_delete && self.had_consumer && self.consumers.is_empty()
    }
}

fn describe(v: Option<&FieldValue>) -> String {
    match v {
        None => "none".into(),
        Some(FieldValue::LongString(s)) => format!("'{}'", String::from_utf8_lossy(s)),
        Some(v) => match v.as_i64() {
            Some(n) => format!("'{n}'"),
            None => format!("{v:?}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;

    use super::*;
    use crate::message::Message;

    fn queue() -> Queue {
        let spec = QueueSpec {
            durable: false,
            auto_delete: false,
            exclusive_owner: None,
            arguments: FieldTable::new(),
        };
        Queue::new(1, "q".into(), spec)
    }

    fn msg(body: &'static str) -> Arc<Message> {
        Arc::new(Message {
            exchange: String::new(),
            routing_key: "q".into(),
            properties: Default::default(),
            body: Bytes::from_static(body.as_bytes()),
        })
    }

    #[test]
    fn requeued_messages_return_to_their_original_position() {
        let mut q = queue();
        for b in ["a", "b", "c", "d"] {
            q.push(msg(b));
        }
        let a = q.ready.pop_front();
        let b = q.ready.pop_front();
        for m in [b, a].into_iter().flatten() {
            q.requeue(m);
        }
        let order: Vec<_> = q.ready.iter().map(|m| m.message.body.clone()).collect();
        assert_eq!(
            order,
            ["a", "b", "c", "d"].map(|s| Bytes::from_static(s.as_bytes()))
        );
        assert!(q.ready[0].redelivered && !q.ready[2].redelivered);
    }

    #[test]
    fn redeclare_with_other_durability_is_refused() {
        let q = queue();
        let e = q.check_equivalent(true, false, &FieldTable::new());
        assert_eq!(e.map_err(|e| e.code), Err(406));
        assert!(q.check_equivalent(false, false, &FieldTable::new()).is_ok());
    }
}
