//! What an operator does to a running broker, beside what clients do: replaying a
//! dead-letter queue, and finding out which queues are dead-letter targets.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;

use warren_codec::FieldValue;

use super::Broker;
use crate::error::{AmqpError, no_queue};
use crate::exchange::Destination;
use crate::message::Message;
use crate::policy::Policy;

/// What a replay did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayReport {
    /// Messages moved back to the queue they died in.
    pub moved: usize,
    /// Messages left in the dead-letter queue because they carry no `x-death`, or the queue
    /// they died in no longer exists.
    pub skipped: usize,
}

impl Broker {
    /// Sets the policies queues get their arguments from at declare.
    pub fn set_policies(&mut self, policies: Vec<Policy>) {
        self.policies = policies;
    }

    /// Moves up to `count` (all when None) messages from the ready messages of `dlq` back to
    /// the queue each one last died in (the newest `x-death` entry), oldest first. The move
    /// happens in one step under the broker lock, so no message is in both queues or in
    /// neither; the `x-death` history stays on the message.
    pub fn replay_dead_letters(
        &mut self,
        dlq: &str,
        count: Option<usize>,
    ) -> Result<ReplayReport, AmqpError> {
        if !self.queues.contains_key(dlq) {
            return Err(no_queue(dlq));
        }
        let mut report = ReplayReport::default();
        let mut kept = Vec::new();
        let limit = count.unwrap_or(usize::MAX);
        while report.moved < limit {
            let Some(q) = self.queues.get_mut(dlq) else {
                break;
            };
            let Some(m) = q.pop() else {
                break;
            };
            let origin = died_in(&m.message).filter(|o| o != dlq && self.queues.contains_key(o));
            let Some(origin) = origin else {
                report.skipped += 1;
                kept.push(m);
                continue;
            };
            let mut message = (*m.message).clone();
            message.exchange = String::new();
            message.routing_key = origin.clone();
            let own_ttl = super::deadletter::message_ttl(&message.properties).ok().flatten();
            self.offer(&origin, Arc::new(message), own_ttl);
            if let Some(id) = self.queues.get(dlq).map(|q| q.id) {
                self.forget(id, &m);
            }
            report.moved += 1;
        }
        if let Some(q) = self.queues.get_mut(dlq) {
            for m in kept {
                q.requeue(m);
            }
        }
        Ok(report)
    }

    /// Queues that receive dead letters: every queue reachable through bindings from some
    /// queue's dead-letter exchange.
    pub fn dead_letter_targets(&self) -> BTreeSet<String> {
        let mut seen_x: HashSet<&str> = HashSet::new();
        let mut work: Vec<&str> =
            self.queues.values().filter_map(|q| q.args.dead_letter_exchange.as_deref()).collect();
        let mut targets = BTreeSet::new();
        for q in self.queues.values() {
            // The default exchange as DLX reaches exactly the queue named by the key.
            if q.args.dead_letter_exchange.as_deref() == Some("")
                && let Some(k) = &q.args.dead_letter_routing_key
            {
                targets.insert(k.clone());
            }
        }
        while let Some(x) = work.pop() {
            if !seen_x.insert(x) {
                continue;
            }
            let Some(ex) = self.exchanges.get(x) else {
                continue;
            };
            for d in ex.destinations() {
                match d {
                    Destination::Queue(q) => {
                        targets.insert(q.to_string());
                    }
                    Destination::Exchange(e) => {
                        if let Some((k, _)) = self.exchanges.get_key_value(&**e) {
                            work.push(k.as_str());
                        }
                    }
                }
            }
        }
        targets.retain(|t| self.queues.contains_key(t));
        targets
    }
}

/// The queue a dead letter last died in.
fn died_in(m: &Message) -> Option<String> {
    let Some(FieldValue::Array(deaths)) = m.properties.headers.as_ref()?.get("x-death") else {
        return None;
    };
    match deaths.first()? {
        FieldValue::Table(t) => t.get("queue").and_then(FieldValue::as_str).map(str::to_string),
        _ => None,
    }
}
