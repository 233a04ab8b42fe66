//! queue.* methods.

use std::sync::Arc;
use warren_codec::reply_code::ACCESS_REFUSED;

use warren_codec::{QueueDeclare, QueueDeclareOk, QueueDelete, QueueDeleteOk, QueuePurge, QueuePurgeOk};

use super::VHostId;
use super::{Broker, ConnId};
use crate::error::{AmqpError, no_queue, precondition};
use crate::exchange::Destination;
use crate::policy::effective_arguments;
use crate::queue::{Queue, QueueSpec};
use crate::queue_args::QueueArgs;
use crate::stats::BrokerEvent;
use crate::storage::MetaOp;

impl Broker {
    pub(super) fn queue_declare(&mut self, conn: ConnId, ch: u16, m: QueueDeclare) -> Result<(), AmqpError> {
        let name = if m.queue.is_empty() && !m.passive { self.names.name("amq.gen-") } else { m.queue };
        if !m.passive {
            self.authorize_queue_declare(conn, &name, &m.arguments)?;
        }
        if m.passive && self.is_reply_queue(self.vh(conn), &name) {
            self.reply(
                conn,
                ch,
                m.no_wait,
                QueueDeclareOk { queue: name, message_count: 0, consumer_count: 0 },
            );
            return Ok(());
        }
        let now = self.now;
        let vh = self.vh(conn);
        if let Some(q) = self.vhosts[vh].queues.get_mut(&name) {
            q.check_access(conn)?;
            q.last_used = now;
            if !m.passive {
                q.check_equivalent(m.durable, m.auto_delete, &m.arguments)?;
                q.check_exclusivity(conn, m.exclusive)?;
            }
            // A declare is a use (x-expires), for a quorum queue's machine too.
            self.quorum_used(vh, &name);
        } else if m.passive {
            return Err(no_queue(&self.vhosts[vh].name, &name));
        } else {
            self.check_new_queue_name(vh, &name)?;
            let spec = QueueSpec {
                durable: m.durable,
                auto_delete: m.auto_delete,
                exclusive_owner: m.exclusive.then_some(conn),
                arguments: m.arguments,
            };
            let vhost = self.vhosts[vh].name.clone();
            let op = super::persist::queue_record(
                &vhost,
                self.create_queue(vh, self.census.next_queue_id(), &name, spec, true)?,
            );
            if let Some(op) = op
                && !self.store_meta(op)
            {
                // Not on disk, so not declared: the method fails with 541 (handle_method).
                self.vhosts[vh].queues.remove(&name);
                return Ok(());
            }
            self.events.push(BrokerEvent::QueueDeclared { queue: name.clone(), durable: m.durable });
        }
        let (message_count, consumer_count) =
            self.vhosts[vh].queues.get(&name).map_or((0, 0), |q| (q.len() as u32, q.consumers.len() as u32));
        if let Some(c) = self.channel(conn, ch) {
            c.last_queue = Some(name.clone());
        }
        self.reply(conn, ch, m.no_wait, QueueDeclareOk { queue: name, message_count, consumer_count });
        Ok(())
    }

    /// Creates queue `name` as incarnation `id`: its arguments parsed with policies applied,
    /// its `x-expires` armed. Shared by queue.declare and the restore at start-up.
    pub(super) fn create_queue(
        &mut self,
        vh: VHostId,
        id: u64,
        name: &str,
        spec: QueueSpec,
        fresh: bool,
    ) -> Result<&Queue, AmqpError> {
        let args = self.queue_args(vh, name, &spec, fresh)?;
        let quorum = args.queue_type == crate::queue_args::QueueType::Quorum;
        self.census.reserve_queue_ids(id + 1);
        let machine = quorum.then(|| {
            let config = super::quorum::machine_config(&args, false);
            let machine = crate::queue::quorum::QuorumQueue::new(config, self.unix_ms);
            Box::new(crate::queue::quorum::Local::new(machine))
        });
        let mut q = Queue::new(id, name.to_string(), spec, args, self.now);
        q.vhost = vh;
        q.vhost_name = self.vhosts[vh].name.clone();
        q.quorum = machine;
        self.vhosts[vh].queues.insert(name.to_string(), q);
        if quorum {
            // Arms its x-expires: the machine keeps the time the queue was last used.
            self.quorum_start(vh, name, id);
        } else {
            self.arm_queue_expiry(vh, name);
        }
        let v = &self.vhosts[vh];
        v.queues.get(name).ok_or_else(|| no_queue(&v.name, name))
    }

    /// A new queue's name and the queue limits: RabbitMQ's reserved prefix, the vhost's and
    /// the node's `max-queues`.
    pub(super) fn check_new_queue_name(&self, vh: VHostId, name: &str) -> Result<(), AmqpError> {
        if name.starts_with("amq.") && !name.starts_with("amq.gen-") {
            return Err(AmqpError::new(
                ACCESS_REFUSED,
                format!("queue name '{name}' contains reserved prefix 'amq.*'"),
            ));
        }
        if let Some(max) = self.limits_of(vh).max_queues.or(self.limits.max_queues)
            && self.vhosts[vh].queues.len() >= max
        {
            return Err(precondition(format!(
                "cannot declare queue '{name}': queue limit in vhost '{}' ({max}) is reached",
                self.vhosts[vh].name
            )));
        }
        Ok(())
    }

    /// Queue `name`'s arguments, parsed with the policies that apply and checked against its
    /// declaration; a `fresh` quorum queue is refused where this node cannot serve one (a
    /// stored one comes back whatever the node may serve now: a restart never drops data).
    pub(super) fn queue_args(
        &self,
        vh: VHostId,
        name: &str,
        spec: &QueueSpec,
        fresh: bool,
    ) -> Result<QueueArgs, AmqpError> {
        let args = QueueArgs::parse(
            &effective_arguments(&self.directory().policies, &self.vhosts[vh].name, name, &spec.arguments),
            &self.retry_plugins,
        )?;
        let vhost = &self.vhosts[vh].name;
        args.check_type(name, vhost, spec)?;
        // Refused after the checks above, so a declare RabbitMQ would refuse gets RabbitMQ's
        // answer.
        if fresh
            && args.queue_type == crate::queue_args::QueueType::Quorum
            && let Some(why) = &self.quorum_refused
        {
            return Err(precondition(format!("queue '{name}' in vhost '{vhost}': {why}")));
        }
        Ok(args)
    }

    pub(super) fn queue_purge(&mut self, conn: ConnId, ch: u16, m: QueuePurge) -> Result<(), AmqpError> {
        let vh = self.vh(conn);
        let Some(q) = self.vhosts[vh].queues.get_mut(&m.queue) else {
            return Err(no_queue(&self.vhosts[vh].name, &m.queue));
        };
        q.check_access(conn)?;
        if q.quorum.is_some() {
            let message_count = self.quorum_purge(vh, &m.queue);
            self.reply(conn, ch, m.no_wait, QueuePurgeOk { message_count });
            return Ok(());
        }
        let (id, purged) = (q.id, q.purge());
        for m in &purged {
            self.forget(id, m);
        }
        let message_count = purged.len() as u32;
        self.reply(conn, ch, m.no_wait, QueuePurgeOk { message_count });
        Ok(())
    }

    pub(super) fn queue_delete(&mut self, conn: ConnId, ch: u16, m: QueueDelete) -> Result<(), AmqpError> {
        // RabbitMQ answers delete-ok for a queue that does not exist: delete is idempotent.
        let mut message_count = 0;
        let vh = self.vh(conn);
        if let Some(q) = self.vhosts[vh].queues.get(&m.queue) {
            q.check_access(conn)?;
            q.check_delete(m.if_unused, m.if_empty)?;
            let (count, own) = self.delete_queue_for(vh, &m.queue, Some((conn, ch)));
            message_count = count;
            // RabbitMQ's order: delete-ok, then the cancels of this channel's own consumers;
            // a durable delete's -ok waits for the sync, and the cancels behind it.
            let held = self.durability_wrote();
            self.reply(conn, ch, m.no_wait, QueueDeleteOk { message_count });
            for consumer_tag in own {
                let cancel = warren_codec::BasicCancel { consumer_tag, no_wait: true };
                self.reply_after_sync(conn, ch, held, cancel);
            }
            return Ok(());
        }
        self.reply(conn, ch, m.no_wait, QueueDeleteOk { message_count });
        Ok(())
    }

    /// Removes a queue; its consumers are dropped and, where the client asked for it, told
    /// with basic.cancel. Returns how many ready messages went with it.
    pub(super) fn delete_queue(&mut self, vh: VHostId, name: &str) -> u32 {
        self.delete_queue_for(vh, name, None).0
    }

    /// [`Broker::delete_queue`] for channel `asker`, whose own consumers' cancels are returned
    /// (the tags of those owed one) instead of sent, to follow its delete-ok.
    fn delete_queue_for(
        &mut self,
        vh: VHostId,
        name: &str,
        asker: Option<(ConnId, u16)>,
    ) -> (u32, Vec<String>) {
        let mut own = Vec::new();
        let Some((stored, id)) =
            self.vhosts[vh].queues.get(name).map(|q| (super::persist::stores_messages(&q.spec), q.id))
        else {
            return (0, own);
        };
        // The store first: a delete it cannot record does not happen, or the queue would be
        // back after a restart (inside a method, the method fails with 541).
        if stored && !self.store_meta(MetaOp::DeleteQueue(id)) {
            return (0, own);
        }
        let Some(q) = self.vhosts[vh].queues.remove(name) else {
            return (0, own);
        };
        // What it held back (retries, x-delay) goes with it; the store forgot it already.
        let held: Vec<u64> = self.delayed.iter().filter(|(_, d)| d.queue_id == id).map(|(k, _)| *k).collect();
        for k in held {
            self.unhold_message(k);
        }
        self.unbind_destination(vh, &Destination::Queue(Arc::from(name)));
        self.events.push(BrokerEvent::QueueDeleted { queue: name.to_string() });
        let count = q.len() as u32;
        for key in q.consumers {
            let Some(session) = self.sessions.get_mut(&key.conn) else {
                continue;
            };
            let notify = session.info.consumer_cancel_notify;
            if let Some(c) = session.channels.get_mut(&key.channel) {
                c.consumers.remove(&*key.tag);
            }
            if notify && asker == Some((key.conn, key.channel)) {
                own.push(key.tag.to_string());
            } else if notify {
                let cancel = warren_codec::BasicCancel { consumer_tag: key.tag.to_string(), no_wait: true };
                self.send(key.conn, key.channel, cancel);
            }
        }
        (count, own)
    }
}
