//! PUBLISH from the client: topic aliases, QoS as RabbitMQ grants it, the retained copy,
//! and PUBACK once the broker has confirmed.

use super::connect::message_of;
use super::{Command, Session};
use crate::error::reason;
use crate::packet::*;

impl Session {
    pub(super) fn publish(&mut self, mut p: Publish) {
        let v5 = self.version == Version::V5;
        if p.qos == QoS::ExactlyOnce {
            if v5 {
                self.disconnect(reason::QOS_NOT_SUPPORTED);
                return self.end("a QoS 2 PUBLISH (maximum QoS is 1)", true);
            }
            // RabbitMQ takes a 3.1.1 QoS 2 publish as QoS 1.
            p.qos = QoS::AtLeastOnce;
        }
        if !p.properties.subscription_identifiers.is_empty() {
            // [MQTT-3.3.4-6]: only a server sends subscription identifiers.
            return self.protocol_error("a subscription identifier in a client's PUBLISH");
        }
        if let Some(alias) = p.properties.topic_alias {
            if alias > self.config.topic_alias_maximum {
                self.disconnect(reason::TOPIC_ALIAS_INVALID);
                return self.end("a topic alias over the maximum", true);
            }
            if p.topic.is_empty() {
                match self.aliases.get(&alias) {
                    Some(t) => p.topic = t.clone(),
                    None => return self.protocol_error("a topic alias never set"),
                }
            } else {
                self.aliases.insert(alias, p.topic.clone());
            }
        }
        let Some(routing_key) = Self::routing_key(&p.topic) else {
            if v5 {
                self.disconnect(reason::TOPIC_NAME_INVALID);
            }
            return self.end("a topic over 255 bytes as a routing key", true);
        };
        let message = message_of(&p.properties, p.qos, p.payload);
        if p.retain {
            self.command(Command::Retain { topic: p.topic.clone(), message: message.clone() });
        }
        let confirm = match (p.qos, p.packet_id) {
            (QoS::AtMostOnce, _) | (_, None) => None,
            (_, Some(packet_id)) => {
                // A 5 client told our receive maximum and went over it; a 3.1.1 client is
                // not read from while at it (`wants_input`), so cannot get here.
                if self.confirms.len() >= usize::from(self.config.receive_maximum) {
                    self.disconnect(reason::RECEIVE_MAXIMUM_EXCEEDED);
                    return self.end("more QoS 1 publishes in flight than the receive maximum", true);
                }
                let id = self.next_id();
                self.confirms.insert(id, (packet_id, None));
                Some(id)
            }
        };
        let exchange = self.config.exchange.clone();
        self.command(Command::Publish { confirm, exchange, routing_key, message });
    }

    /// The broker's answer to a QoS 1 publish: PUBACK, or in MQTT 5 a PUBACK with a failure
    /// code. MQTT 3.1.1 has no negative PUBACK: as in RabbitMQ, the client gets none and
    /// sends the message again when it reconnects. PUBACKs go out in the order the
    /// publishes came [MQTT-4.6.0-2], whatever order the broker answers in.
    pub(super) fn confirmed(&mut self, now_ms: u64, id: u64, ok: bool) {
        let Some((_, answer)) = self.confirms.get_mut(&id) else { return };
        *answer = Some(ok);
        while let Some(entry) = self.confirms.first_entry() {
            let (packet_id, answer) = *entry.get();
            let Some(ok) = answer else { break };
            entry.remove();
            match (ok, self.version) {
                (true, _) => {
                    self.send(&Packet::PubAck(Ack::ok(packet_id)));
                }
                (false, Version::V5) => {
                    let nack =
                        Ack { packet_id, code: reason::QUOTA_EXCEEDED, properties: Default::default() };
                    self.send(&Packet::PubAck(nack));
                }
                (false, Version::V311) => {}
            }
        }
        // Room again for a 3.1.1 client held at its quota.
        self.process(now_ms);
    }
}
