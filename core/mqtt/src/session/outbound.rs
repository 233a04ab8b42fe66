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
        // The highest QoS among the subscriptions that match, as RabbitMQ grants it; a
        // message the client no longer subscribes to (an AMQP binding, a filter just
        // removed) goes at QoS 0.
        let granted = self
            .subscriptions
            .iter()
            .filter(|(f, _)| topic::matches(f, &topic))
            .map(|(_, q)| *q)
            .max()
            .unwrap_or(QoS::AtMostOnce);
        let qos = if m.qos >= 1 || m.persistent { granted.min(QoS::AtLeastOnce) } else { QoS::AtMostOnce };
        let mut properties = Properties::default();
        if self.version == Version::V5 {
            properties.content_type = m.content_type;
            properties.correlation_data = m.correlation_id;
            properties.response_topic = m.reply_to.as_deref().map(topic::from_routing_key);
            properties.user_properties = m.headers;
            properties.message_expiry_interval =
                m.expiration_ms.map(|ms| u32::try_from(ms / 1000).unwrap_or(u32::MAX));
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
            _ => self.command(Command::Ack { delivery_tag: tag }),
        }
    }

    pub(super) fn puback(&mut self, packet_id: u16) {
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
