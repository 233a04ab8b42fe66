//! A cluster member's part of the broker. Topology changes go to the cluster's catalog
//! ([`crate::catalog`]) instead of changing this broker at once: the command that asks for
//! one becomes a [`Proposal`], its connection reads nothing more until the answer comes back
//! ([`Broker::awaits_cluster`]), and every member makes the catalog's changes real as it
//! applies them ([`Broker::catalog_changed`]). A queue lives on its home node; the others
//! hold an entry for it that routes there: a publish that reaches it becomes a [`Forward`]
//! to its home, and the publisher's confirm waits for the home's answer.
//!
//! What the home alone knows (a queue's consumers, its `x-expires`, its exclusive owner's
//! connection) decides the home's own deletions, which it proposes like any other change.

use std::sync::Arc;

use warren_codec::reply_code::PRECONDITION_FAILED;
use warren_codec::{
    ExchangeBindOk, ExchangeDeclare, ExchangeDeclareOk, ExchangeDeleteOk, ExchangeUnbindOk, FieldTable,
    Method, QueueBindOk, QueueDeclareOk, QueueDeleteOk, QueueUnbindOk,
};

use super::{Broker, ConnId, VHostId};
use crate::catalog::{
    BindingEntry, CatalogChange, CatalogCommand, CatalogReply, ExchangeEntry, Owner, QueueEntry, Table,
    Target, VHostCatalog,
};
use crate::command::Command;
use crate::error::{AmqpError, no_queue, precondition};
use crate::exchange::Destination;
use crate::hash::{Map, Set};
use crate::message::Message;
use crate::queue::{Offer, Queue, QueueSpec};
use crate::stats::BrokerEvent;

/// The owner an exclusive queue has on a member that is not its home (or whose owning
/// connection is from before a restart): no connection here is it.
const ELSEWHERE: ConnId = ConnId::MAX;

/// Body octets of forwards one broker may have unanswered before its publishing connections
/// are read no more (RabbitMQ's credit flow does the same towards a slow queue).
pub const MAX_FORWARD_BACKLOG: u64 = 64 << 20;

/// A change for the cluster's metadata group.
#[derive(Debug, Clone, PartialEq)]
pub struct Proposal {
    /// What to answer with [`Broker::catalog_answered`]; `None` when nobody waits (the home's
    /// own deletions).
    pub token: Option<u64>,
    /// The change.
    pub command: CatalogCommand,
}

/// A message for a queue on another node.
#[derive(Debug, Clone)]
pub struct Forward {
    /// What to answer with [`Broker::forward_done`].
    pub id: u64,
    /// The node the queue lives on.
    pub home: Arc<str>,
    /// The queue's vhost.
    pub vhost: Arc<str>,
    /// The queue.
    pub queue: Arc<str>,
    /// Its incarnation: a queue of the same name declared since does not get the message.
    pub incarnation: u64,
    /// The message.
    pub message: Arc<Message>,
    /// A delayed-message exchange's hold, in milliseconds.
    pub hold_ms: Option<u64>,
}

/// A client command waiting for the catalog's answer.
#[derive(Debug)]
struct Waiting {
    conn: ConnId,
    channel: u16,
    channel_id: u64,
    /// The method's ids, for an error.
    ids: (u16, u16),
    answer: Answer,
}

/// What a waiting command answers once the catalog agreed.
#[derive(Debug)]
enum Answer {
    /// queue.declare-ok, with the counts as they are then.
    DeclareQueue { name: String, no_wait: bool },
    /// Any other -ok.
    Reply { method: Method, no_wait: bool },
}

/// What waits for forwards: a publish's confirm, or a transaction's commit-ok.
#[derive(Debug)]
enum Held {
    /// basic.ack (or nack) of this publish sequence number.
    Confirm(u64),
    /// tx.commit-ok; a message some queue did not take fails the channel instead.
    Commit,
}

/// A publish whose confirm (or a commit whose -ok) waits for forwards.
#[derive(Debug)]
struct HeldConfirm {
    conn: ConnId,
    channel: u16,
    channel_id: u64,
    held: Held,
    /// Forwards not answered yet.
    left: usize,
    /// A queue refused it (here or at a home): the confirm is a nack.
    refused: bool,
    /// It was stored here: the ack waits for the sync too.
    stored: bool,
}

/// A cluster member's state.
#[derive(Debug)]
pub(super) struct Member {
    /// This node's name.
    node: Arc<str>,
    /// This run of it ([`super::BrokerConfig::boot`]).
    boot: u64,
    proposals: Vec<Proposal>,
    waiting: Map<u64, Waiting>,
    /// Connections that read nothing until their command is answered, by token.
    paused: Map<ConnId, u64>,
    forwards: Vec<Forward>,
    /// Which held confirm each forward counts for.
    forwarded: Map<u64, u64>,
    confirms: Map<u64, HeldConfirm>,
    /// The forwards of the transaction being committed, while one is.
    collecting: Option<Vec<u64>>,
    /// Body octets of each forward not answered yet, by id.
    in_flight: Map<u64, u64>,
    /// Their sum: over [`MAX_FORWARD_BACKLOG`] the connections that publish are not read.
    in_flight_bytes: u64,
    /// Publishers were held for it, and are woken when it falls below.
    throttled: bool,
    /// Queues that live here whose record the store could not write, by incarnation: their
    /// declarer is told (541) rather than given an -ok.
    unstored: Set<u64>,
    /// Incarnations whose deletion this home proposed and that are not applied yet.
    deleting: Set<u64>,
}

impl Member {
    /// The member of node `node`.
    pub(super) fn new(node: &str, boot: u64) -> Self {
        Member {
            node: Arc::from(node),
            boot,
            proposals: Vec::new(),
            waiting: Map::default(),
            paused: Map::default(),
            forwards: Vec::new(),
            forwarded: Map::default(),
            confirms: Map::default(),
            collecting: None,
            in_flight: Map::default(),
            in_flight_bytes: 0,
            throttled: false,
            deleting: Set::default(),
            unstored: Set::default(),
        }
    }
}

/// 406 for what a member cannot do yet for a queue on another node.
fn elsewhere(q: &Queue, home: &str, what: &str) -> AmqpError {
    // A channel error: the connection's other channels go on.
    AmqpError::new(
        PRECONDITION_FAILED,
        format!(
            "queue '{}' in vhost '{}' lives on node '{home}'; {what} through another node is not supported yet: connect to '{home}'",
            q.name, q.vhost_name
        ),
    )
}

impl Broker {
    /// This node's name, when it is a cluster member.
    pub fn member_node(&self) -> Option<&str> {
        self.member.as_ref().map(|m| &*m.node)
    }

    /// Whether connection `conn` waits for the cluster to answer a change it asked for: it
    /// must read no more input until then (what it sends next may depend on the change).
    pub fn awaits_cluster(&self, conn: ConnId) -> bool {
        self.awaits_answer(conn)
            || self.member.as_ref().is_some_and(|m| {
                m.in_flight_bytes > MAX_FORWARD_BACKLOG
                    && self.sessions.get(&conn).is_some_and(|s| s.published)
            })
    }

    /// Whether session `conn` waits for the cluster's answer to a change it asked for (not
    /// for forwards to drain): what it applies next may depend on the change.
    pub fn awaits_answer(&self, conn: ConnId) -> bool {
        self.member.as_ref().is_some_and(|m| m.paused.contains_key(&conn))
    }

    /// Whether proposals or forwards wait to be taken.
    pub fn has_cluster_work(&self) -> bool {
        self.member.as_ref().is_some_and(|m| !m.proposals.is_empty() || !m.forwards.is_empty())
    }

    /// The changes to propose to the metadata group, in order.
    pub fn take_proposals(&mut self) -> Vec<Proposal> {
        self.member.as_mut().map(|m| std::mem::take(&mut m.proposals)).unwrap_or_default()
    }

    /// The messages to forward to other nodes.
    pub fn take_forwards(&mut self) -> Vec<Forward> {
        self.member.as_mut().map(|m| std::mem::take(&mut m.forwards)).unwrap_or_default()
    }

    /// The proposal of `token` was applied here and the catalog answered `reply`, or it could
    /// not be committed (`Err`, why: it may still take effect later). Its command's client
    /// gets the -ok or the error, and reads again.
    pub fn catalog_answered(&mut self, token: u64, reply: Result<CatalogReply, String>) {
        let Some(m) = self.member.as_mut() else {
            return;
        };
        let Some(w) = m.waiting.remove(&token) else {
            return;
        };
        if m.paused.get(&w.conn) == Some(&token) {
            m.paused.remove(&w.conn);
        }
        let unstored = match &reply {
            Ok(CatalogReply::Queue { incarnation, created: true, .. }) => m.unstored.remove(incarnation),
            _ => false,
        };
        self.wake(w.conn);
        if self.channel(w.conn, w.channel).is_none_or(|c| c.id != w.channel_id) {
            return;
        }
        let error = match reply {
            Err(why) => Some(AmqpError::new(
                warren_codec::reply_code::INTERNAL_ERROR,
                format!("the cluster did not take the change: {why}"),
            )),
            Ok(_) if unstored => Some(AmqpError::new(
                warren_codec::reply_code::INTERNAL_ERROR,
                "the queue was declared in the cluster but could not be stored on this node",
            )),
            Ok(r) => r.error(),
        };
        if let Some(e) = error {
            self.raise_error(w.conn, w.channel, e.at(w.ids));
            return;
        }
        match w.answer {
            Answer::DeclareQueue { name, no_wait } => {
                let vh = self.vh(w.conn);
                let (message_count, consumer_count) = self.vhosts[vh]
                    .queues
                    .get(&name)
                    .map_or((0, 0), |q| (q.len() as u32, q.consumers.len() as u32));
                if let Some(c) = self.channel(w.conn, w.channel) {
                    c.last_queue = Some(name.clone());
                }
                self.reply(
                    w.conn,
                    w.channel,
                    no_wait,
                    QueueDeclareOk { queue: name, message_count, consumer_count },
                );
            }
            Answer::Reply { method, no_wait } => self.reply(w.conn, w.channel, no_wait, method),
        }
    }

    /// A topology command of a member's client: `None` when this broker answers it on its
    /// own (it changes nothing: a passive declare, a redeclare, a delete of what is not
    /// there), else what proposing it gave (the client waits for the catalog's answer).
    pub(super) fn member_command(
        &mut self,
        conn: ConnId,
        ch: u16,
        cmd: &Command,
    ) -> Option<Result<(), AmqpError>> {
        let node = self.member.as_ref()?.node.clone();
        let vh = self.vh(conn);
        let vhost = self.vhosts[vh].name.to_string();
        let by = Owner { node: node.to_string(), conn };
        let ids = cmd.ids();
        let (command, answer) = match cmd {
            Command::DeclareQueue(m) if !m.passive => {
                if self.vhosts[vh].queues.contains_key(&m.queue) || self.is_reply_queue(vh, &m.queue) {
                    return None;
                }
                let name = if m.queue.is_empty() { self.names.name("amq.gen-") } else { m.queue.clone() };
                let spec = QueueSpec {
                    durable: m.durable,
                    auto_delete: m.auto_delete,
                    exclusive_owner: m.exclusive.then_some(conn),
                    arguments: m.arguments.clone(),
                };
                if let Err(e) = self.check_new_queue(conn, vh, &name, &spec) {
                    return Some(Err(e));
                }
                let command = CatalogCommand::DeclareQueue {
                    vhost,
                    name: name.clone(),
                    home: node.to_string(),
                    durable: m.durable,
                    auto_delete: m.auto_delete,
                    exclusive: m.exclusive,
                    arguments: Table::of(&m.arguments),
                    by,
                    boot: self.member.as_ref().map_or(0, |m| m.boot),
                };
                (command, Answer::DeclareQueue { name, no_wait: m.no_wait })
            }
            Command::DeleteQueue(m) => {
                let q = self.vhosts[vh].queues.get(&m.queue)?;
                if let Err(e) = q.check_access(conn) {
                    return Some(Err(e));
                }
                if let Some(home) = &q.home
                    && (m.if_empty || m.if_unused)
                {
                    return Some(Err(elsewhere(q, home, "a conditional delete")));
                }
                if let Err(e) = q.check_delete(m.if_unused, m.if_empty) {
                    return Some(Err(e));
                }
                let message_count = q.len() as u32;
                let command = CatalogCommand::DeleteQueue {
                    vhost,
                    name: m.queue.clone(),
                    incarnation: Some(q.id),
                    by: Some(by),
                };
                let method = QueueDeleteOk { message_count }.into();
                (command, Answer::Reply { method, no_wait: m.no_wait })
            }
            Command::PurgeQueue(_) | Command::Consume(_) | Command::Get(_) => {
                let (queue, what) = match cmd {
                    Command::PurgeQueue(m) => (&m.queue, "purging it"),
                    Command::Consume(m) => (&m.queue, "consuming from it"),
                    Command::Get(m) => (&m.queue, "basic.get from it"),
                    _ => return None,
                };
                let q = self.vhosts[vh].queues.get(queue)?;
                let home = q.home.as_ref()?;
                return Some(Err(elsewhere(q, home, what)));
            }
            Command::DeclareExchange(m) if !m.passive => {
                if self.vhosts[vh].exchanges.contains_key(&m.exchange)
                    || super::exchanges::is_default(&m.exchange)
                {
                    return None;
                }
                if let Err(e) = self.check_new_exchange(vh, m) {
                    return Some(Err(e));
                }
                let entry = ExchangeEntry {
                    kind: m.kind.clone(),
                    durable: m.durable,
                    auto_delete: m.auto_delete,
                    internal: m.internal,
                    arguments: Table::of(&m.arguments),
                };
                let command = CatalogCommand::DeclareExchange { vhost, name: m.exchange.clone(), entry };
                (command, Answer::Reply { method: ExchangeDeclareOk {}.into(), no_wait: m.no_wait })
            }
            Command::DeleteExchange(m) => {
                if !self.vhosts[vh].exchanges.contains_key(&m.exchange) || m.exchange.starts_with("amq.") {
                    return None;
                }
                let command = CatalogCommand::DeleteExchange {
                    vhost,
                    name: m.exchange.clone(),
                    if_unused: m.if_unused,
                };
                (command, Answer::Reply { method: ExchangeDeleteOk {}.into(), no_wait: m.no_wait })
            }
            Command::BindQueue(_)
            | Command::BindExchange(_)
            | Command::UnbindQueue(_)
            | Command::UnbindExchange(_) => {
                let (source, dest, key, arguments, adding, method, no_wait): (_, _, _, _, _, Method, _) =
                    match cmd {
                        Command::BindQueue(m) => {
                            let dest = Destination::Queue(Arc::from(m.queue.as_str()));
                            (
                                &m.exchange,
                                dest,
                                &m.routing_key,
                                &m.arguments,
                                true,
                                QueueBindOk {}.into(),
                                m.no_wait,
                            )
                        }
                        Command::BindExchange(m) => {
                            let dest = Destination::Exchange(Arc::from(m.destination.as_str()));
                            (
                                &m.source,
                                dest,
                                &m.routing_key,
                                &m.arguments,
                                true,
                                ExchangeBindOk {}.into(),
                                m.no_wait,
                            )
                        }
                        Command::UnbindQueue(m) => {
                            let dest = Destination::Queue(Arc::from(m.queue.as_str()));
                            // queue.unbind has no no-wait.
                            (
                                &m.exchange,
                                dest,
                                &m.routing_key,
                                &m.arguments,
                                false,
                                QueueUnbindOk {}.into(),
                                false,
                            )
                        }
                        Command::UnbindExchange(m) => {
                            let dest = Destination::Exchange(Arc::from(m.destination.as_str()));
                            (
                                &m.source,
                                dest,
                                &m.routing_key,
                                &m.arguments,
                                false,
                                ExchangeUnbindOk {}.into(),
                                m.no_wait,
                            )
                        }
                        _ => return None,
                    };
                let binding = match self.member_binding(conn, vh, source, dest, key, arguments, adding)? {
                    Ok(b) => b,
                    Err(e) => return Some(Err(e)),
                };
                let command = if adding {
                    CatalogCommand::Bind { vhost, binding, by }
                } else {
                    CatalogCommand::Unbind { vhost, binding, by }
                };
                (command, Answer::Reply { method, no_wait })
            }
            _ => return None,
        };
        let channel_id = self.channel(conn, ch).map_or(0, |c| c.id);
        let token = self.census.next_token();
        let m = self.member.as_mut()?;
        m.waiting.insert(token, Waiting { conn, channel: ch, channel_id, ids, answer });
        m.paused.insert(conn, token);
        m.proposals.push(Proposal { token: Some(token), command });
        Some(Ok(()))
    }

    /// A binding a member's client asks to add (`adding`) or remove: `None` when nothing
    /// would change (this broker answers), else the binding to propose or why it is refused.
    #[allow(clippy::too_many_arguments)]
    fn member_binding(
        &mut self,
        conn: ConnId,
        vh: VHostId,
        source: &str,
        dest: Destination,
        key: &str,
        arguments: &FieldTable,
        adding: bool,
    ) -> Option<Result<BindingEntry, AmqpError>> {
        let target = match &dest {
            Destination::Queue(q) => Target::Queue(q.to_string()),
            Destination::Exchange(x) => Target::Exchange(x.to_string()),
        };
        let bound = self.vhosts[vh].exchanges.get(source).is_some_and(|x| {
            x.bindings().any(|b| b.destination == dest && b.key == key && b.arguments == *arguments)
        });
        if bound == adding {
            return None;
        }
        if adding && let Err(e) = self.check_new_binding(conn, vh, source, &dest, key, arguments) {
            return Some(Err(e));
        }
        Some(Ok(BindingEntry {
            source: source.to_string(),
            target,
            key: key.to_string(),
            arguments: Table::of(arguments),
        }))
    }

    /// The home's own change `command` was given up (the node stops): a later cause may
    /// propose it again.
    pub fn proposal_failed(&mut self, command: &CatalogCommand) {
        if let Some(m) = self.member.as_mut()
            && let CatalogCommand::DeleteQueue { incarnation: Some(i), by: None, .. } = command
        {
            m.deleting.remove(i);
        }
    }

    /// The home's own deletion of queue `name` (auto-delete, `x-expires`): on a member it is
    /// proposed, and happens when the catalog applies it; otherwise at once.
    pub(super) fn drop_own_queue(&mut self, vh: VHostId, name: &str) {
        let Some(m) = self.member.as_mut() else {
            self.delete_queue(vh, name);
            return;
        };
        let Some(q) = self.vhosts[vh].queues.get(name).filter(|q| q.home.is_none()) else {
            return;
        };
        if m.deleting.insert(q.id) {
            let command = CatalogCommand::DeleteQueue {
                vhost: self.vhosts[vh].name.to_string(),
                name: name.to_string(),
                incarnation: Some(q.id),
                by: None,
            };
            m.proposals.push(Proposal { token: None, command });
        }
    }

    /// Connection `conn` is gone: its exclusive queues go. On a member the catalog is told
    /// (once); otherwise they are deleted at once.
    pub(super) fn drop_exclusive_queues(&mut self, vh: VHostId, conn: ConnId) {
        let exclusive: Vec<String> = self.vhosts[vh]
            .queues
            .values()
            .filter(|q| q.spec.exclusive_owner == Some(conn) && q.home.is_none())
            .map(|q| q.name.to_string())
            .collect();
        if exclusive.is_empty() {
            return;
        }
        let Some(m) = self.member.as_mut() else {
            for name in exclusive {
                self.delete_queue(vh, &name);
            }
            return;
        };
        // Once: a connection goes once, and its id is never used again.
        let owner = Owner { node: m.node.to_string(), conn };
        m.proposals.push(Proposal { token: None, command: CatalogCommand::OwnerGone { owner } });
    }

    /// A message routed to queue `q` on another node: forwarded there; returns the forward's id.
    pub(super) fn forward(
        &mut self,
        vh: VHostId,
        queue: &str,
        message: Arc<Message>,
        hold_ms: Option<u64>,
    ) -> Option<u64> {
        let q = self.vhosts[vh].queues.get(queue)?;
        let home = q.home.clone()?;
        let (queue, incarnation, vhost) = (q.name.clone(), q.id, q.vhost_name.clone());
        // Unique on the node, as tokens are: a vhost's broker made again takes no answer
        // meant for its predecessor.
        let id = self.census.next_token();
        let m = self.member.as_mut()?;
        // A message routed to several queues there is counted once (it travels once).
        let size = if m.forwards.last().is_some_and(|f| Arc::ptr_eq(&f.message, &message)) {
            0
        } else {
            message.body.len() as u64
        };
        m.in_flight.insert(id, size);
        m.in_flight_bytes += size;
        m.throttled |= m.in_flight_bytes > MAX_FORWARD_BACKLOG;
        m.forwards.push(Forward { id, home, vhost, queue, incarnation, message, hold_ms });
        Some(id)
    }

    /// Holds publish `tag`'s confirm until forwards `ids` are answered (and, when `stored`,
    /// the store has synced it here); a `refused` one is nacked then.
    pub(super) fn hold_confirm(
        &mut self,
        conn: ConnId,
        ch: u16,
        tag: u64,
        ids: &[u64],
        stored: bool,
        refused: bool,
    ) {
        self.hold_for_forwards(conn, ch, Held::Confirm(tag), ids, stored, refused);
    }

    /// A transaction's commit starts: the forwards its publishes make are collected (not
    /// those of dead letters its acks make, which are at most once).
    pub(super) fn collect_forwards(&mut self) {
        if let Some(m) = self.member.as_mut() {
            m.collecting = Some(Vec::new());
        }
    }

    /// Publish forwards `ids` count for the commit being made, if one is.
    pub(super) fn collected(&mut self, ids: &[u64]) {
        if let Some(c) = self.member.as_mut().and_then(|m| m.collecting.as_mut()) {
            c.extend_from_slice(ids);
        }
    }

    /// Ends a commit's collection (one that failed half-way holds nothing).
    pub(super) fn end_collecting(&mut self) {
        if let Some(m) = self.member.as_mut() {
            m.collecting = None;
        }
    }

    /// Holds `conn`'s tx.commit-ok until the forwards its publishes made are answered, and
    /// the store synced what it wrote (`stored`); whether there were any.
    pub(super) fn hold_commit(&mut self, conn: ConnId, ch: u16, stored: bool) -> bool {
        let ids = self.member.as_mut().and_then(|m| m.collecting.take()).unwrap_or_default();
        if ids.is_empty() {
            return false;
        }
        self.hold_for_forwards(conn, ch, Held::Commit, &ids, stored, false);
        true
    }

    fn hold_for_forwards(
        &mut self,
        conn: ConnId,
        ch: u16,
        held: Held,
        ids: &[u64],
        stored: bool,
        refused: bool,
    ) {
        let channel_id = self.channel(conn, ch).map_or(0, |c| c.id);
        let Some(m) = self.member.as_mut() else {
            return;
        };
        let Some(key) = ids.first().copied() else {
            return;
        };
        for id in ids {
            m.forwarded.insert(*id, key);
        }
        m.confirms.insert(
            key,
            HeldConfirm { conn, channel: ch, channel_id, held, left: ids.len(), refused, stored },
        );
    }

    /// Forward `id` was answered: taken by its queue (or its queue is gone), or refused (a
    /// full queue, a failed write, a home that could not be reached).
    pub fn forward_done(&mut self, id: u64, taken: bool) {
        let Some(m) = self.member.as_mut() else {
            return;
        };
        if let Some(size) = m.in_flight.remove(&id) {
            m.in_flight_bytes = m.in_flight_bytes.saturating_sub(size);
        }
        if m.throttled && m.in_flight_bytes <= MAX_FORWARD_BACKLOG {
            m.throttled = false;
            // The publishers held for it read again.
            let publishers: Vec<ConnId> =
                self.sessions.iter().filter(|(_, s)| s.published).map(|(id, _)| *id).collect();
            for conn in publishers {
                self.wake(conn);
            }
        }
        let Some(m) = self.member.as_mut() else {
            return;
        };
        let Some(key) = m.forwarded.remove(&id) else {
            return;
        };
        let Some(h) = m.confirms.get_mut(&key) else {
            return;
        };
        h.left = h.left.saturating_sub(1);
        h.refused |= !taken;
        if h.left > 0 {
            return;
        }
        let Some(h) = m.confirms.remove(&key) else {
            return;
        };
        if self.channel(h.conn, h.channel).is_none_or(|c| c.id != h.channel_id) {
            return;
        }
        match h.held {
            Held::Confirm(tag) if h.refused => self.send_confirm(h.conn, h.channel, tag, false, false),
            Held::Confirm(tag) => self.confirm(h.conn, h.channel, tag, h.stored),
            Held::Commit if h.refused => {
                let e = AmqpError::new(
                    warren_codec::reply_code::INTERNAL_ERROR,
                    "messages of the transaction were not taken by their queues on another node",
                );
                self.raise_error(h.conn, h.channel, e.at((90, 20)));
            }
            Held::Commit => self.reply_after_sync(h.conn, h.channel, h.stored, warren_codec::TxCommitOk {}),
        }
    }

    /// A message another node forwarded to queue `queue` of vhost `vhost` (incarnation
    /// `incarnation`), which lives here. `NoQueue` when it is gone.
    pub fn accept_forward(
        &mut self,
        vhost: &str,
        queue: &str,
        incarnation: u64,
        message: Arc<Message>,
        hold_ms: Option<u64>,
    ) -> Offer {
        let Some(vh) = self.vhosts.id(vhost) else {
            return Offer::NoQueue;
        };
        if !self.vhosts[vh].queues.get(queue).is_some_and(|q| q.id == incarnation && q.home.is_none()) {
            return Offer::NoQueue;
        }
        let own_ttl = super::deadletter::message_ttl(&message.properties).ok().flatten();
        let offer = self.offer_after(vh, queue, message, own_ttl, hold_ms);
        self.stats.received += 1;
        offer
    }

    /// Makes one change the catalog applied real in this broker (a vhost it does not serve
    /// is not its business).
    pub fn catalog_changed(&mut self, change: &CatalogChange, live: bool) {
        let Some(vh) = self.vhosts.id(change.vhost()) else {
            return;
        };
        match change {
            CatalogChange::ExchangeAdded { name, entry, .. } => self.add_catalog_exchange(vh, name, entry),
            CatalogChange::ExchangeRemoved { name, .. } => self.delete_exchange(vh, name),
            CatalogChange::QueueAdded { name, entry, .. } => self.add_catalog_queue(vh, name, entry, live),
            CatalogChange::QueueRemoved { name, incarnation, .. } => {
                if self.vhosts[vh].queues.get(name).is_some_and(|q| q.id == *incarnation) {
                    self.delete_queue(vh, name);
                }
                if let Some(m) = self.member.as_mut() {
                    m.deleting.remove(incarnation);
                }
            }
            CatalogChange::BindingAdded { binding, .. } => self.add_catalog_binding(vh, binding),
            CatalogChange::BindingRemoved { binding, .. } => {
                if let Ok(arguments) = binding.arguments.table() {
                    let _ = self.unbind(
                        vh,
                        &binding.source,
                        destination(&binding.target),
                        binding.key.clone(),
                        arguments,
                    );
                }
            }
        }
        self.publish_census();
    }

    /// Brings vhost `vhost` to what `catalog` holds for it (after a snapshot was installed, or
    /// a log is applied from its start). Queues this node holds whose incarnation is above
    /// `applied` are kept: the log after it may still declare them (they came back from this
    /// node's store), and what it deletes it names.
    pub fn catalog_reconcile(&mut self, vhost: &str, catalog: Option<&VHostCatalog>, applied: u64) {
        let Some(vh) = self.vhosts.id(vhost) else {
            return;
        };
        let empty = VHostCatalog::default();
        let catalog = catalog.unwrap_or(&empty);
        // Exchanges: what the catalog does not hold, or holds otherwise, goes.
        let exchanges: Vec<String> = self.vhosts[vh]
            .exchanges
            .iter()
            .filter(|(name, x)| {
                !name.is_empty()
                    && !super::exchanges::PREDECLARED.iter().any(|(n, _)| n == name)
                    && catalog.exchanges.get(*name).is_none_or(|e| !same_exchange(e, x))
            })
            .map(|(n, _)| n.clone())
            .collect();
        for name in exchanges {
            self.delete_exchange(vh, &name);
        }
        let queues: Vec<String> = self.vhosts[vh]
            .queues
            .values()
            .filter(|q| {
                // One that lives here and is later than what the catalog holds (or than the
                // catalog's last entry) came back from the store: the log after the
                // snapshot settles it.
                let later = q.home.is_none() && q.id > applied;
                match catalog.queues.get(&*q.name) {
                    Some(e) if e.incarnation == q.id => {
                        e.home.as_str() != q.home.as_deref().unwrap_or(self.member_node().unwrap_or(""))
                    }
                    Some(e) => !(later && q.id > e.incarnation),
                    None => !later,
                }
            })
            .map(|q| q.name.to_string())
            .collect();
        for name in queues {
            self.delete_queue(vh, &name);
        }
        for (name, entry) in &catalog.exchanges {
            self.add_catalog_exchange(vh, name, entry);
        }
        for (name, entry) in &catalog.queues {
            self.add_catalog_queue(vh, name, entry, false);
        }
        // Bindings: exactly the catalog's, between ends that exist here.
        let mut extra = Vec::new();
        for (source, x) in &self.vhosts[vh].exchanges {
            for b in x.bindings() {
                let entry = BindingEntry {
                    source: source.clone(),
                    target: match &b.destination {
                        Destination::Queue(q) => Target::Queue(q.to_string()),
                        Destination::Exchange(e) => Target::Exchange(e.to_string()),
                    },
                    key: b.key.clone(),
                    arguments: Table::of(&b.arguments),
                };
                if !catalog.bindings.contains(&entry) {
                    extra.push((source.clone(), b.destination.clone(), b.key.clone(), b.arguments.clone()));
                }
            }
        }
        for (source, dest, key, arguments) in extra {
            let _ = self.unbind(vh, &source, dest, key, arguments);
        }
        for b in &catalog.bindings {
            self.add_catalog_binding(vh, b);
        }
        self.publish_census();
    }

    fn add_catalog_exchange(&mut self, vh: VHostId, name: &str, entry: &ExchangeEntry) {
        if self.vhosts[vh].exchanges.contains_key(name) {
            return;
        }
        let decl = match entry.arguments.table() {
            Ok(arguments) => ExchangeDeclare {
                exchange: name.to_string(),
                kind: entry.kind.clone(),
                durable: entry.durable,
                auto_delete: entry.auto_delete,
                internal: entry.internal,
                arguments,
                ..Default::default()
            },
            Err(e) => return self.cluster_warning(format!("exchange '{name}': {e}")),
        };
        if let Err(e) = self.create_exchange(vh, &decl) {
            // A type this node lacks (a plugin it was not given): it cannot route through it.
            self.cluster_warning(format!("exchange '{name}' of the cluster cannot be served here: {e}"));
        }
    }

    /// Makes queue entry `name` real here. `live` is false for an entry applied again at a
    /// start (or a snapshot's): what it implies beyond the queue itself (an owner gone) was
    /// acted on when it was new.
    fn add_catalog_queue(&mut self, vh: VHostId, name: &str, entry: &QueueEntry, live: bool) {
        let me = self.member_node().unwrap_or_default().to_string();
        let here = entry.home == me;
        let boot = self.member.as_ref().map_or(0, |m| m.boot);
        // This node's queue of an earlier run that does not outlive a restart: its messages
        // and owner went with that run, and this run's restart proposal deletes it. Not made
        // again meanwhile (forwards to it are refused: the catalog holds it, this node not).
        if here && entry.boot != boot && (!entry.durable || entry.exclusive.is_some()) {
            return;
        }
        match self.vhosts[vh].queues.get(name) {
            Some(q) if q.id == entry.incarnation && q.home.is_none() == here => return,
            // A later incarnation, back from this node's store at a start: the log after this
            // entry deletes this one and declares that one again. Never deleted for an
            // earlier entry.
            Some(q) if q.id > entry.incarnation => return,
            // An earlier incarnation: the cluster deleted it since.
            Some(_) => {
                self.delete_queue(vh, name);
            }
            None => {}
        }
        let arguments = match entry.arguments.table() {
            Ok(a) => a,
            Err(e) => return self.cluster_warning(format!("queue '{name}': {e}")),
        };
        let owner = entry.exclusive.as_ref().map(|o| {
            // Its owner is a connection of this run only if the connection is still here.
            if here && o.node == me && self.sessions.contains_key(&o.conn) { o.conn } else { ELSEWHERE }
        });
        let spec = QueueSpec {
            durable: entry.durable,
            auto_delete: entry.auto_delete,
            exclusive_owner: owner,
            arguments,
        };
        if !here {
            let args =
                crate::queue_args::QueueArgs::parse(&spec.arguments, &self.retry_plugins).unwrap_or_default();
            let mut q = Queue::new(entry.incarnation, name.to_string(), spec, args, self.now);
            q.vhost = vh;
            q.vhost_name = self.vhosts[vh].name.clone();
            q.home = Some(Arc::from(entry.home.as_str()));
            self.census.reserve_queue_ids(entry.incarnation + 1);
            self.vhosts[vh].queues.insert(name.to_string(), q);
            return;
        }
        let vhost = self.vhosts[vh].name.to_string();
        let record = match self.create_queue(vh, entry.incarnation, name, spec, false) {
            Ok(q) => super::persist::queue_record(&vhost, q),
            Err(e) => return self.cluster_warning(format!("queue '{name}' cannot be served here: {e}")),
        };
        if let Some(op) = record
            && !self.store_meta(op)
        {
            self.cluster_warning(format!(
                "queue '{name}' is not durable here: its record could not be stored"
            ));
            // Its declarer, waiting on this node, is told (an entry applied again has none).
            if live && let Some(m) = self.member.as_mut() {
                m.unstored.insert(entry.incarnation);
            }
        }
        self.events.push(BrokerEvent::QueueDeclared { queue: name.to_string(), durable: entry.durable });
        if live
            && owner == Some(ELSEWHERE)
            && entry.exclusive.as_ref().is_some_and(|o| o.node == me)
            && let Some(o) = entry.exclusive.clone()
            && let Some(m) = self.member.as_mut()
        {
            // Declared by a connection of this node that is gone: it goes too.
            m.proposals.push(Proposal { token: None, command: CatalogCommand::OwnerGone { owner: o } });
        }
    }

    fn add_catalog_binding(&mut self, vh: VHostId, b: &BindingEntry) {
        let Ok(arguments) = b.arguments.table() else {
            return self.cluster_warning(format!("a binding from '{}' is unreadable", b.source));
        };
        let v = &self.vhosts[vh];
        let ends = v.exchanges.contains_key(&b.source)
            && match &b.target {
                Target::Queue(q) => v.queues.contains_key(q),
                Target::Exchange(x) => v.exchanges.contains_key(x),
            };
        if !ends {
            return;
        }
        if let Err(e) = self.bind(vh, &b.source, destination(&b.target), b.key.clone(), arguments) {
            self.cluster_warning(format!("a binding from '{}' cannot be served here: {e}", b.source));
        }
    }

    fn cluster_warning(&mut self, detail: String) {
        self.events.push(BrokerEvent::Cluster { detail });
    }

    /// A new queue's checks that need this node (its name, limits, arguments against its
    /// plugins and policies), before its declare is proposed.
    fn check_new_queue(
        &self,
        conn: ConnId,
        vh: VHostId,
        name: &str,
        spec: &QueueSpec,
    ) -> Result<(), AmqpError> {
        self.authorize_queue_declare(conn, name, &spec.arguments)?;
        self.check_new_queue_name(vh, name)?;
        self.queue_args(vh, name, spec, true).map(|_| ())
    }

    /// A new binding's checks that need this node: both ends here and usable by `conn`, the
    /// arguments its source's type takes, the binding limit.
    fn check_new_binding(
        &mut self,
        conn: ConnId,
        vh: VHostId,
        source: &str,
        dest: &Destination,
        key: &str,
        arguments: &FieldTable,
    ) -> Result<(), AmqpError> {
        match dest {
            Destination::Queue(q) => {
                let v = &self.vhosts[vh];
                v.queues.get(&**q).ok_or_else(|| no_queue(&v.name, q))?.check_access(conn)?;
            }
            Destination::Exchange(x) => {
                self.exchange_destination(vh, x)?;
            }
        }
        if let Some(max) = self.limits.max_bindings
            && self.node_count(super::census::Count::Bindings) >= max
        {
            return Err(precondition(format!(
                "cannot bind to '{source}' in vhost '{}': binding limit of {max} is reached",
                self.vhosts[vh].name
            )));
        }
        self.validate_binding(vh, source, key, arguments)
    }
}

fn destination(t: &Target) -> Destination {
    match t {
        Target::Queue(q) => Destination::Queue(Arc::from(q.as_str())),
        Target::Exchange(x) => Destination::Exchange(Arc::from(x.as_str())),
    }
}

fn same_exchange(e: &ExchangeEntry, x: &super::Exchange) -> bool {
    e.kind == x.kind
        && e.durable == x.durable
        && e.auto_delete == x.auto_delete
        && e.internal == x.internal
        && e.arguments == Table::of(&x.arguments)
}
