//! The commands a protocol machine submits to a vhost's broker: [`crate::Broker::apply`] is
//! the door every channel-level operation goes through, whatever protocol it came from.
//!
//! A command is what a client asked for, already decoded and assembled (a publish carries
//! its whole body): the AMQP machine translates frames into commands ([`Command::from_method`]
//! and content assembly), and another protocol (an MQTT adapter) builds the same commands
//! from its own packets. Replies and deliveries come back as the session's outbound
//! [`crate::message::Outgoing`] items. The payloads are the codec's method records: they are
//! the data each operation needs (names, flags, arguments), RabbitMQ's model speaks in them,
//! and reusing them costs no copy on the AMQP path.
//!
//! The session's own doors stay beside `apply`: [`crate::Broker::open_session`] and
//! [`crate::Broker::disconnect`] for a connection's lifetime, and
//! [`crate::Broker::handle_timeout`] for time.

use bytes::Bytes;
use warren_codec::{
    BasicCancel, BasicConsume, BasicGet, BasicProperties, BasicPublish, BasicQos, ChannelFlow, ConfirmSelect,
    ExchangeBind, ExchangeDeclare, ExchangeDelete, ExchangeUnbind, Method, QueueBind, QueueDeclare,
    QueueDelete, QueuePurge, QueueUnbind,
};

use crate::error::AmqpError;

/// One operation on a channel of a session.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Opens the channel; answered by channel.open-ok.
    OpenChannel,
    /// Closes the channel at the client's request; answered by channel.close-ok.
    CloseChannel,
    /// Forgets a channel whose transport is gone: no reply.
    DropChannel,
    /// Closes the channel for an error the protocol machine found (a bad frame on it):
    /// released, and told with channel.close.
    FailChannel(AmqpError),
    /// Declares (or checks) an exchange.
    DeclareExchange(ExchangeDeclare),
    /// Deletes an exchange.
    DeleteExchange(ExchangeDelete),
    /// Binds an exchange to an exchange.
    BindExchange(ExchangeBind),
    /// Removes an exchange-to-exchange binding.
    UnbindExchange(ExchangeUnbind),
    /// Declares (or checks) a queue.
    DeclareQueue(QueueDeclare),
    /// Deletes a queue.
    DeleteQueue(QueueDelete),
    /// Drops a queue's ready messages.
    PurgeQueue(QueuePurge),
    /// Binds a queue to an exchange.
    BindQueue(QueueBind),
    /// Removes a queue's binding.
    UnbindQueue(QueueUnbind),
    /// Sets the prefetch limit.
    Qos(BasicQos),
    /// Starts a consumer.
    Consume(BasicConsume),
    /// Cancels a consumer.
    Cancel(BasicCancel),
    /// Takes one message, if there is one.
    Get(BasicGet),
    /// Publishes a message.
    Publish(Publish),
    /// Acknowledges deliveries.
    Ack {
        /// The delivery, or the last of them with `multiple`.
        delivery_tag: u64,
        /// Every unacknowledged delivery up to `delivery_tag` (0: all of them).
        multiple: bool,
    },
    /// Refuses deliveries (basic.nack).
    Nack {
        /// The delivery, or the last of them with `multiple`.
        delivery_tag: u64,
        /// Every unacknowledged delivery up to `delivery_tag`.
        multiple: bool,
        /// Back to the queue, or dead-lettered / dropped.
        requeue: bool,
    },
    /// Refuses one delivery (basic.reject).
    Reject {
        /// The delivery.
        delivery_tag: u64,
        /// Back to the queue, or dead-lettered / dropped.
        requeue: bool,
    },
    /// Redelivers (or requeues) the channel's unacknowledged deliveries.
    Recover {
        /// Requeue them rather than redeliver to the same consumer.
        requeue: bool,
        /// Answer with basic.recover-ok (basic.recover-async has none).
        reply: bool,
    },
    /// Turns publisher confirms on.
    SelectConfirms(ConfirmSelect),
    /// Pauses or resumes deliveries to the channel.
    Flow(ChannelFlow),
    /// Makes the channel transactional.
    SelectTx,
    /// Commits the channel's transaction.
    CommitTx,
    /// Rolls the channel's transaction back.
    RollbackTx,
}

/// A message to publish, whole.
#[derive(Debug, Clone, PartialEq)]
pub struct Publish {
    /// Where to, and how (exchange, routing key, mandatory).
    pub method: BasicPublish,
    /// Its properties.
    pub properties: Box<BasicProperties>,
    /// Its body.
    pub body: Bytes,
}

impl Command {
    /// The command an AMQP channel method asks for; the method back when it is not one the
    /// broker handles (connection and channel.open/close methods, server-to-client methods),
    /// which the connection machine deals with itself.
    pub fn from_method(method: Method) -> Result<Command, Method> {
        Ok(match method {
            Method::ExchangeDeclare(m) => Command::DeclareExchange(m),
            Method::ExchangeDelete(m) => Command::DeleteExchange(m),
            Method::ExchangeBind(m) => Command::BindExchange(m),
            Method::ExchangeUnbind(m) => Command::UnbindExchange(m),
            Method::QueueDeclare(m) => Command::DeclareQueue(m),
            Method::QueueDelete(m) => Command::DeleteQueue(m),
            Method::QueuePurge(m) => Command::PurgeQueue(m),
            Method::QueueBind(m) => Command::BindQueue(m),
            Method::QueueUnbind(m) => Command::UnbindQueue(m),
            Method::BasicQos(m) => Command::Qos(m),
            Method::BasicConsume(m) => Command::Consume(m),
            Method::BasicCancel(m) => Command::Cancel(m),
            Method::BasicGet(m) => Command::Get(m),
            Method::BasicAck(m) => Command::Ack { delivery_tag: m.delivery_tag, multiple: m.multiple },
            Method::BasicNack(m) => {
                Command::Nack { delivery_tag: m.delivery_tag, multiple: m.multiple, requeue: m.requeue }
            }
            Method::BasicReject(m) => Command::Reject { delivery_tag: m.delivery_tag, requeue: m.requeue },
            Method::BasicRecover(m) => Command::Recover { requeue: m.requeue, reply: true },
            Method::BasicRecoverAsync(m) => Command::Recover { requeue: m.requeue, reply: false },
            Method::ConfirmSelect(m) => Command::SelectConfirms(m),
            Method::ChannelFlow(m) => Command::Flow(m),
            Method::TxSelect(_) => Command::SelectTx,
            Method::TxCommit(_) => Command::CommitTx,
            Method::TxRollback(_) => Command::RollbackTx,
            other => return Err(other),
        })
    }

    /// The AMQP class and method ids of the operation, which an error about it carries (in
    /// channel.close and connection.close); (0, 0) for what no method asked for.
    pub fn ids(&self) -> (u16, u16) {
        match self {
            Command::OpenChannel => (20, 10),
            Command::CloseChannel => (20, 40),
            Command::DropChannel | Command::FailChannel(_) => (0, 0),
            Command::Flow(_) => (20, 20),
            Command::DeclareExchange(_) => (40, 10),
            Command::DeleteExchange(_) => (40, 20),
            Command::BindExchange(_) => (40, 30),
            Command::UnbindExchange(_) => (40, 40),
            Command::DeclareQueue(_) => (50, 10),
            Command::BindQueue(_) => (50, 20),
            Command::PurgeQueue(_) => (50, 30),
            Command::DeleteQueue(_) => (50, 40),
            Command::UnbindQueue(_) => (50, 50),
            Command::Qos(_) => (60, 10),
            Command::Consume(_) => (60, 20),
            Command::Cancel(_) => (60, 30),
            Command::Publish(_) => (60, 40),
            Command::Get(_) => (60, 70),
            Command::Ack { .. } => (60, 80),
            Command::Reject { .. } => (60, 90),
            Command::Recover { reply: false, .. } => (60, 100),
            Command::Recover { reply: true, .. } => (60, 110),
            Command::Nack { .. } => (60, 120),
            Command::SelectConfirms(_) => (85, 10),
            Command::SelectTx => (90, 10),
            Command::CommitTx => (90, 20),
            Command::RollbackTx => (90, 30),
        }
    }

    /// Whether it changes durable topology: its -ok waits for the record's sync, and a record
    /// that cannot be written fails it.
    pub(crate) fn is_topology(&self) -> bool {
        matches!(self.ids().0, 40 | 50)
    }

    /// Whether it can change what the node's census counts (exchanges, bindings, consumers);
    /// acks and the other per-message commands cannot, and must not pay for a count.
    pub(crate) fn may_change_counts(&self) -> bool {
        self.is_topology() || matches!(self, Command::Consume(_) | Command::Cancel(_))
    }

    /// The queue name a client may leave empty to mean the channel's last declared queue,
    /// and the routing key that then defaults to it too.
    pub(crate) fn queue_shortcut(&mut self) -> Option<(&mut String, Option<&mut String>)> {
        Some(match self {
            Command::BindQueue(m) => (&mut m.queue, Some(&mut m.routing_key)),
            Command::UnbindQueue(m) => (&mut m.queue, Some(&mut m.routing_key)),
            Command::PurgeQueue(m) => (&mut m.queue, None),
            Command::DeleteQueue(m) => (&mut m.queue, None),
            Command::Consume(m) => (&mut m.queue, None),
            Command::Get(m) => (&mut m.queue, None),
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use warren_codec::{BasicAck, BasicRecoverAsync, ChannelOpen, TxCommit};

    use super::*;

    #[test]
    fn a_command_carries_the_ids_of_the_method_it_came_from() {
        let methods: Vec<Method> = vec![
            QueueDeclare::default().into(),
            QueueBind::default().into(),
            QueuePurge::default().into(),
            QueueDelete::default().into(),
            QueueUnbind::default().into(),
            ExchangeDeclare::default().into(),
            ExchangeDelete::default().into(),
            ExchangeBind::default().into(),
            ExchangeUnbind::default().into(),
            BasicQos::default().into(),
            BasicConsume::default().into(),
            BasicCancel::default().into(),
            BasicGet::default().into(),
            BasicAck::default().into(),
            warren_codec::BasicNack::default().into(),
            warren_codec::BasicReject::default().into(),
            warren_codec::BasicRecover::default().into(),
            BasicRecoverAsync::default().into(),
            ConfirmSelect::default().into(),
            ChannelFlow::default().into(),
            warren_codec::TxSelect::default().into(),
            TxCommit::default().into(),
            warren_codec::TxRollback::default().into(),
        ];
        for m in methods {
            let ids = m.ids();
            let c = Command::from_method(m).expect("a broker command");
            assert_eq!(c.ids(), ids, "{c:?}");
        }
        let open: Method = ChannelOpen::default().into();
        assert!(Command::from_method(open).is_err(), "the connection machine's own");
    }
}
