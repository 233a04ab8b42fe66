//! SUBSCRIBE and UNSUBSCRIBE: each filter a binding of the session's queue to the MQTT
//! exchange (RabbitMQ's mapping), answered once the broker has done them.

use super::{Command, Failure, Session};
use crate::error::reason;
use crate::packet::*;
use crate::topic;

/// SUBSCRIBE and UNSUBSCRIBE packets waiting for the broker at once, at most: a client
/// that sends more before the broker answers is over its quota.
pub const MAX_PENDING: usize = 16;

/// Filters waiting for the broker at once, over all those packets: each is a binding, and a
/// 16 MiB packet of one-character filters would be millions.
pub const MAX_FILTERS: usize = 1024;

/// Subscriptions one session may hold; a filter past it is refused (quota exceeded).
pub const MAX_SUBSCRIPTIONS: usize = 4096;

/// A SUBSCRIBE or UNSUBSCRIBE waiting for the broker's answers.
#[derive(Debug)]
pub(super) struct Pending {
    packet_id: u16,
    unsubscribe: bool,
    /// One code per filter, final once its command is answered.
    codes: Vec<u8>,
    /// Outstanding commands: id, and the filter it is for (`None`: the queue, for all).
    waiting: Vec<(u64, Option<usize>)>,
    /// The filters with their binding key, QoS and retain handling, to record on success.
    filters: Vec<(String, String, QoS, u8)>,
}

impl Session {
    pub(super) fn subscribe(&mut self, s: Subscribe) {
        let v5 = self.version == Version::V5;
        if !s.properties.subscription_identifiers.is_empty() {
            self.disconnect(reason::SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED);
            return self.end("a subscription identifier (not available)", true);
        }
        if self.over_quota(s.filters.len()) {
            return;
        }
        let invalid = if v5 { reason::TOPIC_FILTER_INVALID } else { reason::V311_SUBSCRIBE_FAILURE };
        let quota = if v5 { reason::QUOTA_EXCEEDED } else { reason::V311_SUBSCRIBE_FAILURE };
        let mut pending = self.pending_for(s.packet_id, false);
        for (i, f) in s.filters.into_iter().enumerate() {
            let granted = f.qos.min(QoS::AtLeastOnce);
            // 3.1.1 has no shared subscriptions: "$share/..." is an ordinary filter there.
            let checked = if v5 {
                topic::parse_filter(&f.filter).and_then(|p| match p.share {
                    Some(_) => Err(topic::TopicError::Shared),
                    None => Ok(()),
                })
            } else {
                topic::check_filter(&f.filter)
            };
            let key = topic::to_binding_key(&f.filter);
            let new = !self.subscriptions.contains_key(&f.filter);
            let code = match (checked, &key) {
                (Err(topic::TopicError::Shared), _) if v5 => reason::SHARED_SUBSCRIPTIONS_NOT_SUPPORTED,
                (Err(_), _) | (_, Err(_)) => invalid,
                // Not offered yet: refused rather than ignored.
                _ if f.no_local || f.retain_as_published => reason::IMPLEMENTATION_SPECIFIC,
                _ if new && self.subscriptions.len() + i >= MAX_SUBSCRIPTIONS => quota,
                _ => granted as u8,
            };
            let key = key.unwrap_or_default();
            pending.codes.push(code);
            pending.filters.push((f.filter, key.clone(), granted, f.retain_handling));
            if code >= 0x80 {
                continue;
            }
            if !self.consuming {
                self.consuming = true;
                let id = self.next_id();
                let declare = self.declare(id, self.session_expiry());
                self.command(declare);
                pending.waiting.push((id, None));
                let id = self.next_id();
                let (queue, prefetch) = (self.queue.clone(), self.config.prefetch);
                self.command(Command::Consume { id, queue, prefetch });
                pending.waiting.push((id, None));
            }
            let id = self.next_id();
            let (queue, exchange) = (self.queue.clone(), self.config.exchange.clone());
            self.command(Command::Bind { id, queue, exchange, key });
            pending.waiting.push((id, Some(i)));
        }
        self.pending.push(pending);
        self.answer_ready();
    }

    pub(super) fn unsubscribe(&mut self, u: Unsubscribe) {
        if self.over_quota(u.filters.len()) {
            return;
        }
        let mut pending = self.pending_for(u.packet_id, true);
        for (i, filter) in u.filters.into_iter().enumerate() {
            // Unbound whether this connection knows the filter or not: a resumed session's
            // subscriptions were made on an earlier one, and unbinding what is not bound is
            // no failure.
            match topic::to_binding_key(&filter) {
                Ok(key) => {
                    let id = self.next_id();
                    let (queue, exchange) = (self.queue.clone(), self.config.exchange.clone());
                    self.command(Command::Unbind { id, queue, exchange, key: key.clone() });
                    pending.waiting.push((id, Some(i)));
                    pending.codes.push(0);
                    pending.filters.push((filter, key, QoS::AtMostOnce, 0));
                }
                Err(_) => {
                    pending.codes.push(reason::NO_SUBSCRIPTION_EXISTED);
                    pending.filters.push((filter, String::new(), QoS::AtMostOnce, 0));
                }
            }
        }
        self.pending.push(pending);
        self.answer_ready();
    }

    fn pending_for(&self, packet_id: u16, unsubscribe: bool) -> Pending {
        Pending { packet_id, unsubscribe, codes: Vec::new(), waiting: Vec::new(), filters: Vec::new() }
    }

    fn over_quota(&mut self, filters: usize) -> bool {
        let waiting: usize = self.pending.iter().map(|p| p.filters.len()).sum();
        if self.pending.len() < MAX_PENDING && waiting + filters <= MAX_FILTERS {
            return false;
        }
        if self.version == Version::V5 {
            self.disconnect(reason::QUOTA_EXCEEDED);
        }
        self.end("too many SUBSCRIBE and UNSUBSCRIBE filters waiting", true);
        true
    }

    /// The broker's answer to a command made for a SUBSCRIBE or UNSUBSCRIBE.
    pub(super) fn done(&mut self, id: u64, result: Result<bool, Failure>) {
        let v5 = self.version == Version::V5;
        let Some(p) = self.pending.iter_mut().find(|p| p.waiting.iter().any(|(w, _)| *w == id)) else {
            return;
        };
        let Some(at) = p.waiting.iter().position(|(w, _)| *w == id) else { return };
        let (_, filter) = p.waiting.remove(at);
        if let Err(f) = result {
            let code = match (v5, f.code) {
                (false, _) => reason::V311_SUBSCRIBE_FAILURE,
                (true, 403) => reason::NOT_AUTHORIZED,
                (true, _) => reason::UNSPECIFIED,
            };
            match filter {
                Some(i) => {
                    if let Some(c) = p.codes.get_mut(i) {
                        *c = code;
                    }
                }
                // Without the queue, no filter of this packet holds; the next SUBSCRIBE
                // declares it again.
                None => {
                    p.codes.iter_mut().filter(|c| **c < 0x80).for_each(|c| *c = code);
                    self.consuming = false;
                }
            }
        }
        self.answer_ready();
    }

    /// Sends SUBACK and UNSUBACK for the packets whose commands are all answered, in the
    /// order the packets came.
    fn answer_ready(&mut self) {
        while self.pending.first().is_some_and(|p| p.waiting.is_empty()) {
            let p = self.pending.remove(0);
            if p.unsubscribe {
                for ((filter, _, _, _), code) in p.filters.iter().zip(&p.codes) {
                    if *code == 0 {
                        self.subscriptions.remove(filter);
                    }
                }
                let codes = if self.version == Version::V5 { p.codes } else { Vec::new() };
                let ack = UnsubAck { packet_id: p.packet_id, properties: Default::default(), codes };
                self.send(&Packet::UnsubAck(ack));
                continue;
            }
            let mut retained = Vec::new();
            for ((filter, key, qos, retain_handling), code) in p.filters.into_iter().zip(&p.codes) {
                if *code >= 0x80 {
                    continue;
                }
                let new = self.subscriptions.insert(filter.clone(), (key, qos)).is_none();
                // Retain handling: 0 always sends the retained messages, 1 only for a new
                // subscription, 2 never.
                if retain_handling == 0 || (retain_handling == 1 && new) {
                    retained.push((filter, qos as u8));
                }
            }
            let ack = SubAck { packet_id: p.packet_id, properties: Default::default(), codes: p.codes };
            self.send(&Packet::SubAck(ack));
            for (filter, qos) in retained {
                self.command(Command::SendRetained { filter, qos });
            }
        }
    }
}
