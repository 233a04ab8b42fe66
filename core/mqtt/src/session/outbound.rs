//! Deliveries to the client: the topic back from the routing key, the QoS the matching
//! subscriptions granted, packet identifiers for QoS 1 and the ack once PUBACK comes.

use super::{Command, Message, Session};
use crate::packet::*;
use crate::properties::Properties;
use crate::topic;

impl Session {
    pub(super) fn deliver(
        &mut self,
        tag: u64,
        redelivered: bool,
        retained: bool,
        routing_key: &str,
        m: Message,
    ) {
        let topic = topic::from_routing_key(routing_key);
        // A routing key from AMQP need not make a topic name (empty, `#`, `a.*`, U+0000):
        // such a message is settled, not sent, or the client would hang up on it.
        if topic::check_name(&topic).is_err() {
            return self.command(Command::Ack { delivery_tag: tag });
        }
        // The highest QoS among the subscriptions whose binding routed it (matched as the
        // broker matched, on the routing key). None known (a resumed session's, made on an
        // earlier connection): the session's queue is its QoS 1 queue, as RabbitMQ's.
        let granted = self
            .subscriptions
            .values()
            .filter(|(key, _)| amqp_topic_matches(key, routing_key))
            .map(|(_, q)| *q)
            .max()
            .unwrap_or(QoS::AtLeastOnce);
        let qos = if m.qos >= 1 || m.persistent { granted.min(QoS::AtLeastOnce) } else { QoS::AtMostOnce };
        let mut properties = Properties::default();
        if self.version == Version::V5 {
            properties.content_type = m.content_type;
            properties.correlation_data = m.correlation_id;
            // A reply-to from AMQP need not make a topic name; then it is left out.
            properties.response_topic =
                m.reply_to.as_deref().map(topic::from_routing_key).filter(|t| topic::check_name(t).is_ok());
            properties.user_properties = m.headers;
            // Whole seconds, rounded up: a message with 500 ms left is not "expires now".
            properties.message_expiry_interval =
                m.expiration_ms.map(|ms| u32::try_from(ms.div_ceil(1000)).unwrap_or(u32::MAX));
        }
        let packet_id = if qos == QoS::AtLeastOnce {
            match self.packet_id() {
                Some(id) => Some(id),
                None => return self.end("65 535 QoS 1 deliveries in flight", true),
            }
        } else {
            None
        };
        let p = Publish {
            dup: redelivered && qos != QoS::AtMostOnce,
            qos,
            retain: retained,
            topic,
            packet_id,
            properties,
            payload: m.body,
        };
        // A packet over the client's maximum is not sent (MQTT 5 §3.1.2.11.4): it is
        // settled as if delivered, so it does not come back for ever.
        let sent = self.send(&Packet::Publish(p));
        match packet_id {
            Some(id) if sent => {
                self.inflight.insert(id, tag);
            }
            // QoS 0: acked once the host took the bytes.
            None if sent => self.written.push(tag),
            _ => self.command(Command::Ack { delivery_tag: tag }),
        }
    }

    pub(super) fn puback(&mut self, packet_id: u16) {
        // An unknown packet id (a duplicate PUBACK) is let be.
        if let Some(tag) = self.inflight.remove(&packet_id) {
            self.command(Command::Ack { delivery_tag: tag });
        }
    }

    /// A packet identifier no QoS 1 delivery in flight holds; `None` when all 65 535 are
    /// (the broker's prefetch keeps deliveries in flight far below that).
    fn packet_id(&mut self) -> Option<u16> {
        for _ in 0..u16::MAX {
            self.next_packet_id = self.next_packet_id.checked_add(1).unwrap_or(1);
            if !self.inflight.contains_key(&self.next_packet_id) {
                return Some(self.next_packet_id);
            }
        }
        None
    }
}

/// AMQP topic matching, as the broker routed: words split on `.`, `*` one word, `#` any
/// number of words (none too). Walks the strings without collecting their words: it runs
/// for every subscription on every delivery. A binding key from an MQTT filter has at most
/// one `#`, its last word, so the walk is linear.
fn amqp_topic_matches(key: &str, routing_key: &str) -> bool {
    /// The first word and the rest (`None` once there are no more words).
    fn split(s: Option<&str>) -> (Option<&str>, Option<&str>) {
        match s.map(|s| s.split_once('.')) {
            None => (None, None),
            Some(Some((w, rest))) => (Some(w), Some(rest)),
            Some(None) => (s, None),
        }
    }
    fn go(k: Option<&str>, r: Option<&str>) -> bool {
        let ((kw, krest), (rw, rrest)) = (split(k), split(r));
        match (kw, rw) {
            (None, None) => true,
            (Some("#"), _) => go(krest, r) || (rw.is_some() && go(k, rrest)),
            (Some("*"), Some(_)) => go(krest, rrest),
            (Some(a), Some(b)) if a == b => go(krest, rrest),
            _ => false,
        }
    }
    go(Some(key), Some(routing_key))
}
