//! Which permission each command needs, on which resource: RabbitMQ's table (its
//! access-control guide), checked at the door ([`Broker::apply`]) before the command runs.
//!
//! | command | configure | write | read |
//! | --- | --- | --- | --- |
//! | exchange.declare (not passive) | exchange | alternate exchange, if any | exchange, if an alternate is named |
//! | exchange.delete | exchange | | |
//! | queue.declare (not passive) | queue (a server-named one once named) | dead-letter exchange, if any | queue, if a DLX is named |
//! | queue.delete | queue | | |
//! | queue.bind / unbind | | queue | exchange (and the binding key, for a topic exchange's topic permissions) |
//! | exchange.bind / unbind | | destination | source (topic permissions likewise) |
//! | basic.publish | | exchange (`amq.default` for `""`; the routing key, for topic permissions) | |
//! | basic.get, basic.consume, queue.purge | | | queue |
//!
//! Passive declares need nothing, nor does consuming from direct reply-to. A refusal is 403
//! ACCESS_REFUSED on the channel, in RabbitMQ 3.10's words (checked against it). Opening a vhost needs an entry there at all (530 at connection.open).

use warren_codec::reply_code::ACCESS_REFUSED;
use warren_codec::{BasicProperties, FieldTable, FieldValue};

use super::{Broker, ConnId, VHostId};
use crate::command::Command;
use crate::error::{AmqpError, precondition};
use crate::permissions::Perm;

/// What a permission is checked on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Exchange,
    Queue,
}

impl Broker {
    /// Checks what `cmd` needs of session `conn`'s user in its vhost (see the table above).
    pub(super) fn authorize(&self, conn: ConnId, cmd: &Command) -> Result<(), AmqpError> {
        if self.directory().access.is_unrestricted() || self.is_system(conn) {
            return Ok(());
        }
        let vh = self.vh(conn);
        let need = |perm: Perm, kind: Kind, name: &str| self.need(conn, vh, perm, kind, name);
        match cmd {
            Command::DeclareExchange(m) if !m.passive => {
                need(Perm::Configure, Kind::Exchange, &m.exchange)?;
                if let Some(ae) = string_arg(&m.arguments, "alternate-exchange") {
                    need(Perm::Read, Kind::Exchange, &m.exchange)?;
                    need(Perm::Write, Kind::Exchange, ae)?;
                }
                Ok(())
            }
            Command::DeleteExchange(m) => need(Perm::Configure, Kind::Exchange, &m.exchange),
            Command::DeleteQueue(m) => need(Perm::Configure, Kind::Queue, &m.queue),
            Command::BindQueue(m) => {
                need(Perm::Write, Kind::Queue, &m.queue)?;
                need(Perm::Read, Kind::Exchange, &m.exchange)?;
                self.need_topic(conn, vh, &m.exchange, Perm::Read, &m.routing_key)
            }
            Command::UnbindQueue(m) => {
                need(Perm::Write, Kind::Queue, &m.queue)?;
                need(Perm::Read, Kind::Exchange, &m.exchange)?;
                self.need_topic(conn, vh, &m.exchange, Perm::Read, &m.routing_key)
            }
            Command::BindExchange(m) => {
                need(Perm::Write, Kind::Exchange, &m.destination)?;
                need(Perm::Read, Kind::Exchange, &m.source)?;
                self.need_topic(conn, vh, &m.source, Perm::Read, &m.routing_key)
            }
            Command::UnbindExchange(m) => {
                need(Perm::Write, Kind::Exchange, &m.destination)?;
                need(Perm::Read, Kind::Exchange, &m.source)?;
                self.need_topic(conn, vh, &m.source, Perm::Read, &m.routing_key)
            }
            Command::Publish(p) => {
                need(Perm::Write, Kind::Exchange, &p.method.exchange)?;
                self.need_topic(conn, vh, &p.method.exchange, Perm::Write, &p.method.routing_key)
            }
            Command::Get(m) => need(Perm::Read, Kind::Queue, &m.queue),
            // Direct reply-to is no queue: RabbitMQ checks nothing for it.
            Command::Consume(m) if m.queue == super::reply_to::PSEUDO_QUEUE => Ok(()),
            Command::Consume(m) => need(Perm::Read, Kind::Queue, &m.queue),
            Command::PurgeQueue(m) => need(Perm::Read, Kind::Queue, &m.queue),
            // queue.declare is checked once a server-named queue has its name
            // (`authorize_queue_declare`); the rest needs nothing.
            _ => Ok(()),
        }
    }

    /// queue.declare's check, on the queue's final name.
    pub(super) fn authorize_queue_declare(
        &self,
        conn: ConnId,
        name: &str,
        args: &FieldTable,
    ) -> Result<(), AmqpError> {
        if self.directory().access.is_unrestricted() || self.is_system(conn) {
            return Ok(());
        }
        let vh = self.vh(conn);
        self.need(conn, vh, Perm::Configure, Kind::Queue, name)?;
        if let Some(dlx) = string_arg(args, "x-dead-letter-exchange") {
            self.need(conn, vh, Perm::Read, Kind::Queue, name)?;
            self.need(conn, vh, Perm::Write, Kind::Exchange, dlx)?;
        }
        Ok(())
    }

    fn is_system(&self, conn: ConnId) -> bool {
        self.sessions.get(&conn).is_some_and(|s| s.system)
    }

    /// Whether the user may open `vhost`; RabbitMQ's 530 when not.
    pub(super) fn authorize_vhost(&self, user: &str, vhost: &str) -> Result<(), AmqpError> {
        if self.directory().access.may_open(user, vhost) {
            return Ok(());
        }
        Err(AmqpError::new(
            warren_codec::reply_code::NOT_ALLOWED,
            format!("access to vhost '{vhost}' refused for user '{user}'"),
        ))
    }

    /// A publish's `user-id` must be its connection's user, unless that user is an
    /// `impersonator` (RabbitMQ's validated user id).
    pub(super) fn check_user_id(&self, conn: ConnId, properties: &BasicProperties) -> Result<(), AmqpError> {
        let (Some(claimed), Some(s)) = (properties.user_id.as_deref(), self.sessions.get(&conn)) else {
            return Ok(());
        };
        let user = &s.info.user;
        if claimed == user || self.directory().user(user).is_some_and(|u| u.has_tag("impersonator")) {
            return Ok(());
        }
        Err(precondition(format!("user_id property set to '{claimed}' but authenticated user was '{user}'")))
    }

    fn need(&self, conn: ConnId, vh: VHostId, perm: Perm, kind: Kind, name: &str) -> Result<(), AmqpError> {
        let user = self.sessions.get(&conn).map_or("", |s| s.info.user.as_str());
        let vhost = &self.vhosts[vh].name;
        // The default exchange is `amq.default` to permissions, as in RabbitMQ.
        let name = if kind == Kind::Exchange && name.is_empty() { "amq.default" } else { name };
        if self.directory().access.grants(user, vhost, perm, name) {
            return Ok(());
        }
        let kind = if kind == Kind::Exchange { "exchange" } else { "queue" };
        Err(AmqpError::new(
            ACCESS_REFUSED,
            format!("access to {kind} '{name}' in vhost '{vhost}' refused for user '{user}'"),
        ))
    }

    /// Topic permissions, for a topic exchange only.
    fn need_topic(
        &self,
        conn: ConnId,
        vh: VHostId,
        exchange: &str,
        perm: Perm,
        key: &str,
    ) -> Result<(), AmqpError> {
        let is_topic = self.vhosts[vh].exchanges.get(exchange).is_some_and(|x| x.kind == "topic");
        if !is_topic {
            return Ok(());
        }
        let user = self.sessions.get(&conn).map_or("", |s| s.info.user.as_str());
        let vhost = &self.vhosts[vh].name;
        if self.directory().access.grants_topic(user, vhost, exchange, perm, key) {
            return Ok(());
        }
        Err(AmqpError::new(
            ACCESS_REFUSED,
            // RabbitMQ 3.10's words, which do not say whether it was the write or the read.
            format!(
                "access to topic '{key}' in exchange '{exchange}' in vhost '{vhost}' refused for user '{user}'"
            ),
        ))
    }
}

/// A string (or bytes) argument, as clients send exchange names in arguments.
fn string_arg<'a>(args: &'a FieldTable, key: &str) -> Option<&'a str> {
    match args.get(key)? {
        FieldValue::LongString(b) => std::str::from_utf8(b).ok(),
        _ => None,
    }
}
