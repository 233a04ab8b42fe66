//! What an operator does to a running broker, beside what clients do: replaying a
//! dead-letter queue, and finding out which queues are dead-letter targets.

use std::collections::BTreeSet;
use std::sync::Arc;

use warren_codec::FieldValue;

use super::Broker;
use super::VHostId;
use crate::directory::{Change, DirectoryError};
use crate::error::{AmqpError, no_queue};
use crate::exchange::Destination;
use crate::message::Message;
use crate::policy::Policy;
use crate::queue::Offer;
use crate::queue_args::Overflow;

/// What one batch of a replay did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayReport {
    /// Messages moved back to the queue they died in.
    pub moved: usize,
    /// Messages left in the dead-letter queue because they carry no `x-death`, the queue
    /// they died in no longer exists, or its dead letters cannot reach this queue (a forged
    /// `x-death`).
    pub skipped: usize,
    /// Messages left in the dead-letter queue because the queue they died in refused them
    /// (full with `reject-publish`, or its store write failed).
    pub refused: usize,
    /// Where the next batch goes on from, when messages may follow this batch.
    pub next: Option<u64>,
    /// The newest message the replay looks at: what was in the queue when it started. Later
    /// arrivals (a replayed message that died again) wait for the next replay, so one never
    /// moves messages back and forth without end.
    pub end: Option<u64>,
}

impl Broker {
    /// Replaces the node's policies (in its directory, so every broker of the node takes
    /// them); an error names a policy whose vhost does not exist.
    pub fn set_policies(&mut self, policies: Vec<Policy>) -> Result<(), DirectoryError> {
        let dir = self.directory.shared().clone();
        let old = dir
            .load()
            .policies
            .iter()
            .map(|p| Change::DeletePolicy { vhost: p.vhost.clone(), name: p.name.clone() })
            .collect::<Vec<_>>();
        dir.change(old.into_iter().chain(policies.into_iter().map(Change::PutPolicy)), |_| {
            Ok::<(), DirectoryError>(())
        })?;
        self.refresh_directory();
        Ok(())
    }

    /// The policies queues get their arguments from at declare.
    pub fn policies(&self) -> &[Policy] {
        &self.directory().policies
    }

    /// Empties vhost `name` for its deletion: its connections are closed with 320, its queues
    /// (with their messages) and exchanges deleted, and it takes no connection or command any
    /// more. A store that cannot record a deletion stops it there, with why: what was deleted
    /// stays deleted, the rest stays, and the vhost is open again (with its predeclared
    /// exchanges).
    pub fn delete_vhost(&mut self, name: &str) -> Result<(), String> {
        let Some(vh) = self.vhosts.id(name) else {
            return Ok(());
        };
        self.vhosts[vh].open = false;
        // Every session, the management API's too: none may declare into what is going.
        let sessions: Vec<super::ConnId> =
            self.sessions.iter().filter(|(_, s)| s.vhost == vh).map(|(id, _)| *id).collect();
        for conn in sessions {
            self.close_connection(conn, &format!("vhost '{name}' is deleted"));
        }
        let queues: Vec<String> = self.vhosts[vh].queues.keys().cloned().collect();
        for q in queues {
            self.delete_queue(vh, &q);
            if self.vhosts[vh].queues.contains_key(&q) {
                return Err(self.reopen_after(vh, &format!("queue '{q}'")));
            }
        }
        let exchanges: Vec<String> = self.vhosts[vh].exchanges.keys().cloned().collect();
        for x in exchanges {
            self.delete_exchange(vh, &x);
            if self.vhosts[vh].exchanges.contains_key(&x) {
                return Err(self.reopen_after(vh, &format!("exchange '{x}'")));
            }
        }
        self.publish_census();
        Ok(())
    }

    /// Closes vhost `name` and keeps what it holds: its connections are closed with 320 and
    /// it takes none until [`Broker::add_vhost`] opens it again. For a deletion replayed from a
    /// log, whose data may be a later incarnation's: nothing stored is deleted.
    pub fn close_vhost(&mut self, name: &str) {
        let Some(vh) = self.vhosts.id(name) else {
            return;
        };
        self.vhosts[vh].open = false;
        let sessions: Vec<super::ConnId> =
            self.sessions.iter().filter(|(_, s)| s.vhost == vh).map(|(id, _)| *id).collect();
        for conn in sessions {
            self.close_connection(conn, &format!("vhost '{name}' is deleted"));
        }
        self.publish_census();
    }

    /// Closes every connection of `user` with 320 (its user was deleted); how many.
    pub fn close_connections_of(&mut self, user: &str, reason: &str) -> usize {
        let conns: Vec<super::ConnId> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.counted && s.info.user == user)
            .map(|(id, _)| *id)
            .collect();
        for conn in &conns {
            self.close_connection(*conn, reason);
        }
        conns.len()
    }

    /// A deletion that stopped at `what`: the vhost opens again; why, for the operator.
    fn reopen_after(&mut self, vh: VHostId, what: &str) -> String {
        let name = self.vhosts[vh].name.to_string();
        self.add_vhost(&name);
        let why = self.storage_failure().unwrap_or("the store refused the write");
        format!("the deletion of {what} could not be stored: {why}")
    }

    /// One batch of a replay: looks at up to `batch` ready messages of `dlq` after `after`
    /// (from the oldest when `None`) and up to `end` (the newest message now, when `None`),
    /// oldest first, and moves up to `max_moves` of them back
    /// to the queue each one last died in (the newest `x-death` entry). Each move is one step
    /// under the broker lock, so no message is in both queues or in neither; the `x-death`
    /// history stays on the message. A message its queue would refuse stays where it is: a
    /// replay never loses one. Call again from `next` until it is `None`, releasing the lock
    /// between batches, so a million-message queue does not stop the broker.
    pub fn replay_dead_letters(
        &mut self,
        vh: VHostId,
        dlq: &str,
        batch: usize,
        max_moves: usize,
        after: Option<u64>,
        end: Option<u64>,
    ) -> Result<ReplayReport, AmqpError> {
        let Some(q) = self.vhosts[vh].queues.get(dlq) else {
            return Err(no_queue(&self.vhosts[vh].name, dlq));
        };
        if q.quorum.is_some() {
            // Its messages are the machine's, which has no cursor for a replay yet.
            return Err(crate::error::precondition(format!(
                "queue '{dlq}' is a quorum queue: replaying its dead letters is not served yet"
            )));
        }
        let end = end.unwrap_or_else(|| q.last_seq());
        let mut seqs = q.seqs_after(after, batch);
        let whole_batch = seqs.len() == batch;
        seqs.retain(|s| *s <= end);
        let mut report = ReplayReport { end: Some(end), ..Default::default() };
        let mut last = after;
        // Whether each origin's dead letters reach `dlq`, asked once per batch.
        let mut reaches: crate::hash::Map<String, bool> = crate::hash::Map::default();
        for seq in &seqs {
            if report.moved >= max_moves {
                report.next = last;
                return Ok(report);
            }
            last = Some(*seq);
            let Some(m) = self.vhosts[vh].queues.get_mut(dlq).and_then(|q| q.take(*seq)) else {
                continue;
            };
            // `x-death` is a header any publisher can write: a message only goes back to a
            // queue whose dead letters can reach this one, never to any queue it names.
            let origin = died_in(&m.message).filter(|o| {
                o != dlq && *reaches.entry(o.clone()).or_insert_with(|| self.dead_letters_reach(vh, o, dlq))
            });
            let target = origin.as_ref().and_then(|o| self.vhosts[vh].queues.get(o));
            let Some(target) = target else {
                report.skipped += 1;
                self.put_back(vh, dlq, m);
                continue;
            };
            // A queue on another node of a cluster: a forward is not known taken when the
            // replay moves on, so the message stays here.
            if target.home.is_some()
                || target.would_overflow(m.message.body.len() as u64)
                    && target.args.overflow != Overflow::DropHead
            {
                report.refused += 1;
                self.put_back(vh, dlq, m);
                continue;
            }
            let origin = origin.unwrap_or_default();
            let mut message = (*m.message).clone();
            message.exchange = String::new();
            message.routing_key = origin.clone();
            let own_ttl = super::deadletter::message_ttl(&message.properties).ok().flatten();
            match self.offer(vh, &origin, Arc::new(message), own_ttl) {
                Offer::Accepted { .. } => {
                    if let Some(id) = self.vhosts[vh].queues.get(dlq).map(|q| q.id) {
                        self.forget(id, &m);
                    }
                    report.moved += 1;
                }
                Offer::Refused | Offer::NoQueue | Offer::Forwarded(_) => {
                    report.refused += 1;
                    self.put_back(vh, dlq, m);
                }
            }
        }
        report.next = (whole_batch && seqs.len() == batch).then(|| seqs.last().copied()).flatten();
        Ok(report)
    }

    /// Returns a message a replay did not move to its place in the dead-letter queue.
    fn put_back(&mut self, vh: VHostId, dlq: &str, m: crate::message::QueuedMessage) {
        if let Some(q) = self.vhosts[vh].queues.get_mut(dlq) {
            q.restore(m);
        }
    }

    /// Queues that receive dead letters, by vhost: every queue reachable through bindings
    /// from some queue's dead-letter exchange.
    pub fn dead_letter_targets(&self) -> BTreeSet<(VHostId, String)> {
        let mut all = BTreeSet::new();
        for (vh, _) in self.vhosts.iter() {
            all.extend(self.dead_letter_targets_in(vh).into_iter().map(|q| (vh, q)));
        }
        all
    }

    fn dead_letter_targets_in(&self, vh: VHostId) -> BTreeSet<String> {
        self.dead_letter_targets_of(vh, self.vhosts[vh].queues.values().collect())
    }

    /// Whether queue `origin`'s dead letters can reach queue `dlq`, through any binding.
    /// Looked up directly: a replay asks this for each message it moves.
    fn dead_letters_reach(&self, vh: VHostId, origin: &str, dlq: &str) -> bool {
        self.dead_letter_targets_of(vh, self.vhosts[vh].queues.get(origin).into_iter().collect())
            .contains(dlq)
    }

    /// The queues the dead letters of the queues `from` picks can reach.
    fn dead_letter_targets_of(&self, vh: VHostId, sources: Vec<&crate::queue::Queue>) -> BTreeSet<String> {
        let mut seen_x: crate::hash::Set<&str> = crate::hash::Set::default();
        let mut work: Vec<&str> =
            sources.iter().filter_map(|q| q.args.dead_letter_exchange.as_deref()).collect();
        let mut targets = BTreeSet::new();
        for q in &sources {
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
            let Some(ex) = self.vhosts[vh].exchanges.get(x) else {
                continue;
            };
            for d in ex.destinations() {
                match d {
                    Destination::Queue(q) => {
                        targets.insert(q.to_string());
                    }
                    Destination::Exchange(e) => {
                        if let Some((k, _)) = self.vhosts[vh].exchanges.get_key_value(&**e) {
                            work.push(k.as_str());
                        }
                    }
                }
            }
        }
        targets.retain(|t| self.vhosts[vh].queues.contains_key(t));
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
