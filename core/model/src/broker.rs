//! The broker: one vhost (`/`) with its queues, and the sessions of open connections.
//!
//! Connections call in with decoded methods; the broker changes state and queues what each
//! connection must send in that connection's outbound list. A method on one connection can
//! produce frames for another (a publish delivers to a consumer elsewhere): those
//! connections are listed in [`Broker::take_wakeups`] for the driver to wake.
//!
//! Method handlers live in submodules by AMQP class: `queues` (queue.declare/purge/delete),
//! `exchanges` (exchange.*, bindings, routing), `basic` (basic.*, confirm.*, channel.flow),
//! `tx` (tx.*) and `deliver` (dispatch to consumers, settling). Beside them: `consumer_timeout`
//! (stuck consumers), `deadletter` (offering and dead-lettering), `persist` (the store and
//! confirms), `timers`, `operator` (replay) and `tests`.

use std::collections::BTreeSet;
use std::time::Instant;

use bytes::Bytes;
use warren_codec::reply_code::COMMAND_INVALID;
use warren_codec::{
    BasicProperties, BasicPublish, ChannelCloseOk, ChannelOpenOk, ConnectionBlocked, ConnectionUnblocked,
    Method,
};

use crate::channel::ChannelState;
use crate::command::Command;
use crate::error::AmqpError;
use crate::exchange::{ExchangeFactory, TypeRegistry};
use crate::hash::Map;
use crate::message::Outgoing;
use crate::names::NameGen;
use crate::queue::Queue;

mod access;
mod basic;
mod census;
mod confirms;
mod consumer_timeout;
mod deadletter;
mod deliver;
mod exchanges;
mod member;
mod operator;
mod persist;
mod queues;
mod quorum;
mod reply_to;
#[cfg(test)]
mod tests;
mod timers;
mod tx;
mod vhost;

pub use census::Census;
pub use confirms::Confirmed;
pub use exchanges::Exchange;
pub(crate) use exchanges::check_exchange_equivalent;
pub use member::{Forward, Proposal};
pub use operator::ReplayReport;
pub use persist::{Compaction, ConfirmPolicy, RestoreReport};
pub use reply_to::ReplyConsumer;
pub use vhost::{VHost, VHostId, VHosts};

/// Identifies an open connection within the broker.
pub type ConnId = u64;

/// What the broker is built from.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// Who may log in, the vhosts, their limits and the permissions: the node's directory,
    /// shared by every broker of the node.
    pub directory: crate::directory::SharedDirectory,
    /// Seed for generated names; the driver passes something random.
    pub seed: u64,
    /// Key for the direct reply-to tokens, which must not be guessable from anything a client
    /// sees; the driver draws it from the OS.
    pub secret: [u64; 2],
    /// How long a consumer's delivery may wait for its acknowledgement unless its queue or
    /// the consumer says otherwise (RabbitMQ's `consumer_timeout`); `None` for no limit.
    pub consumer_timeout: Option<std::time::Duration>,
    /// Counts a client can make the broker hold.
    pub limits: Limits,
    /// The vhost the broker serves from the start; [`Broker::add_vhost`] adds others.
    pub vhost: String,
    /// What the brokers of one node share (ids, counts for the limits): the same `Arc` for
    /// each when every vhost has a broker of its own.
    pub census: std::sync::Arc<Census>,
    /// Why quorum queues are refused, when they are: a node of a cluster cannot serve them
    /// as one-member groups (their replication is not built yet). `None` serves them.
    pub quorum_refused: Option<String>,
    /// This node's name when it is a member of a cluster: topology changes then go through
    /// the cluster's catalog (see `broker/member.rs`). `None` on a single node.
    pub cluster_node: Option<String>,
    /// This run of the node, drawn at its start: a cluster member's queues that do not
    /// outlive a restart carry it, so its next run tells them apart from its own.
    pub boot: u64,
}

/// One vhost's limits (RabbitMQ's `rabbitmqctl set_vhost_limits`); `None` is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VHostLimits {
    /// Open connections to it.
    pub max_connections: Option<usize>,
    /// Queues in it (over [`Limits::max_queues`], which applies to every vhost).
    pub max_queues: Option<usize>,
}

/// Counts a client can make the broker hold; `None` is unlimited, RabbitMQ's default for
/// each (its `connection_max` and vhost `max-connections` / `max-queues`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Open AMQP connections.
    pub max_connections: Option<usize>,
    /// Queues.
    pub max_queues: Option<usize>,
    /// Exchanges declared by clients (the predeclared `amq.*` ones not counted), as
    /// RabbitMQ 4's `cluster_exchange_limit`.
    pub max_exchanges: Option<usize>,
    /// Bindings, of queues and of exchanges.
    pub max_bindings: Option<usize>,
    /// Consumers on one channel, as RabbitMQ's `consumer_max_per_channel`.
    pub max_consumers_per_channel: Option<usize>,
    /// Consumers in all (in the vhost: Warren has one).
    pub max_consumers: Option<usize>,
    /// Publishes and settlements one transaction holds until tx.commit
    /// ([`DEFAULT_MAX_TX_OPERATIONS`] when not set).
    pub max_tx_operations: Option<usize>,
    /// Body octets one transaction holds until tx.commit ([`DEFAULT_MAX_TX_BYTES`] when not set).
    pub max_tx_bytes: Option<u64>,
}

/// Publishes and settlements a transaction may hold, unless configured otherwise. RabbitMQ
/// has no such limit; without one, a channel that never commits holds every body it was sent.
pub const DEFAULT_MAX_TX_OPERATIONS: usize = 65_536;

/// Body octets a transaction may hold, unless configured otherwise.
pub const DEFAULT_MAX_TX_BYTES: u64 = 256 << 20;

/// RabbitMQ's default `consumer_timeout`: 30 minutes.
pub const DEFAULT_CONSUMER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30 * 60);

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            directory: Default::default(),
            seed: 0,
            secret: [0; 2],
            consumer_timeout: Some(DEFAULT_CONSUMER_TIMEOUT),
            limits: Limits::default(),
            vhost: "/".into(),
            census: Default::default(),
            quorum_refused: None,
            cluster_node: None,
            boot: 0,
        }
    }
}

/// What the broker knows of a connection once it is open.
#[derive(Debug, Clone, Default)]
pub struct ConnectionInfo {
    /// The authenticated user.
    pub user: String,
    /// The vhost connection.open named.
    pub vhost: String,
    /// The client advertised `consumer_cancel_notify`: tell it when its consumer's queue goes.
    pub consumer_cancel_notify: bool,
    /// The client advertised `connection.blocked`: tell it when publishing is blocked.
    pub blocked_notify: bool,
    /// How the management API names it (`peer -> local`); empty for sessions no socket
    /// carries (the API's own).
    pub name: String,
    /// What the client said of itself in connection.start-ok.
    pub client_properties: warren_codec::FieldTable,
    /// The SASL mechanism it logged in with.
    pub auth_mechanism: String,
    /// Negotiated frame size.
    pub frame_max: u32,
    /// Negotiated channel limit.
    pub channel_max: u16,
    /// Negotiated heartbeat, in seconds (0: none).
    pub heartbeat: u16,
    /// When it opened, in milliseconds since the epoch (stamped by the broker).
    pub connected_at_ms: u64,
}

/// A channel as the management API shows it.
#[derive(Debug, Clone, Default)]
pub struct ChannelSummary {
    /// Its number on the connection.
    pub number: u16,
    /// The prefetch new consumers get.
    pub prefetch_count: u16,
    /// The channel-wide prefetch.
    pub global_prefetch_count: u16,
    /// In confirm mode.
    pub confirm: bool,
    /// Transactional.
    pub transactional: bool,
    /// Deliveries waiting for their acknowledgement.
    pub unacknowledged: usize,
    /// Its consumers.
    pub consumers: usize,
}

/// A consumer as the management API shows it.
#[derive(Debug, Clone, Default)]
pub struct ConsumerSummary {
    /// Its tag.
    pub tag: String,
    /// The queue it consumes from.
    pub queue: String,
    /// Its connection.
    pub conn: ConnId,
    /// Its channel.
    pub channel: u16,
    /// Deliveries need acknowledgement.
    pub ack_required: bool,
    /// Its prefetch (0: unlimited).
    pub prefetch_count: u16,
}

#[derive(Debug)]
struct Session {
    /// A client's connection (not an operator's session): it holds a connection slot.
    counted: bool,
    /// The node's own session (a definitions import): no permission is checked for it.
    system: bool,
    info: ConnectionInfo,
    /// Its vhost: every name it uses is looked up there.
    vhost: VHostId,
    channels: Map<u16, ChannelState>,
    outbound: Vec<Outgoing>,
    woken: bool,
    /// A delivery was held back because `outbound` was full: its driver's next pull
    /// dispatches again.
    throttled: bool,
    /// It has published: a resource alarm blocks it.
    published: bool,
    /// It was sent connection.blocked and is owed connection.unblocked.
    told_blocked: bool,
    /// Errors the broker raised on its own (not in answer to a method): channel 0 for the
    /// connection. Its connection machine closes them on its next pull.
    errors: Vec<(u16, AmqpError)>,
    /// Auto-ack deliveries from quorum queues in `outbound`, by channel: settled when the
    /// connection takes them (`take_outbound`).
    autoacked: Vec<(u16, crate::channel::Unacked)>,
}

/// Deliveries a connection may have waiting to be encoded before its consumers get no more:
/// beyond this the messages wait in their queue (where TTL, max-length and the metrics see
/// them) instead of piling up in front of a consumer that does not keep up. RabbitMQ's
/// credit flow between queue and channel does the same.
const OUTBOUND_LIMIT: usize = 4096;

impl Session {
    /// Whether a direct reply may be added to `outbound` (not counted as held back: a reply
    /// that does not fit is dropped or returned, not kept).
    fn has_room_for_reply(&self) -> bool {
        self.outbound.len() < OUTBOUND_LIMIT
    }

    /// Whether a delivery may be added to `outbound`; when not, the next pull dispatches again.
    fn has_room(&mut self) -> bool {
        if self.outbound.len() < OUTBOUND_LIMIT {
            return true;
        }
        self.throttled = true;
        false
    }
}

/// The broker model: queues, sessions, and everything they do to each other. No I/O.
#[derive(Debug)]
pub struct Broker {
    directory: crate::directory::DirectoryView,
    names: NameGen,
    vhosts: VHosts,
    types: TypeRegistry,
    retry_plugins: crate::retry::RetryPlugins,
    sessions: Map<ConnId, Session>,
    census: std::sync::Arc<Census>,
    /// This broker's part of the census counts, as last published.
    published: [usize; census::Count::ALL.len()],
    wakeups: Vec<ConnId>,
    /// The driver's monotonic clock, as of the last `set_time`.
    now: Instant,
    /// Wall-clock milliseconds since the epoch, as of the last `set_time`.
    unix_ms: u64,
    timers: BTreeSet<(Instant, u64, timers::Timer)>,
    timer_seq: u64,
    timer_changed: bool,
    delayed: Map<u64, timers::Delayed>,
    /// Direct reply-to tokens: the channel incarnation each one names.
    replies: Map<String, (ConnId, u16, u64)>,
    /// The secret reply tokens are drawn with, and a counter to vary them.
    reply_secret: [u64; 2],
    reply_nonce: u64,
    next_delayed: u64,
    stats: crate::stats::GlobalStats,
    events: Vec<crate::stats::BrokerEvent>,
    durability: persist::Durability,
    /// The default consumer timeout.
    consumer_timeout: Option<std::time::Duration>,
    limits: Limits,
    /// When the next consumer-timeout sweep is armed for, if one is.
    consumer_sweep: Option<Instant>,
    /// Why publishers are blocked (a resource alarm), when they are.
    alarm: Option<String>,
    /// Why quorum queues are refused, when they are ([`BrokerConfig::quorum_refused`]).
    quorum_refused: Option<String>,
    /// A cluster member's part ([`BrokerConfig::cluster_node`]); `None` on a single node.
    member: Option<member::Member>,
}

impl Broker {
    /// An empty broker, its clock starting at `now`.
    pub fn new(config: BrokerConfig, now: Instant) -> Self {
        let mut b = Broker {
            directory: crate::directory::DirectoryView::new(config.directory),
            consumer_timeout: config.consumer_timeout,
            limits: config.limits,
            consumer_sweep: None,
            names: NameGen::new(config.seed),
            vhosts: VHosts::new(&config.vhost),
            types: TypeRegistry::builtin(),
            retry_plugins: Default::default(),
            sessions: Map::default(),
            census: config.census,
            published: Default::default(),
            wakeups: Vec::new(),
            now,
            unix_ms: 0,
            timers: BTreeSet::new(),
            timer_seq: 0,
            timer_changed: false,
            delayed: Map::default(),
            replies: Map::default(),
            reply_secret: config.secret,
            reply_nonce: 0,
            next_delayed: 0,
            stats: Default::default(),
            events: Vec::new(),
            durability: Default::default(),
            alarm: None,
            quorum_refused: config.quorum_refused,
            member: config.cluster_node.as_deref().map(|n| member::Member::new(n, config.boot)),
        };
        b.declare_predefined_exchanges(VHostId::DEFAULT);
        b
    }

    /// Makes an exchange type available to exchange.declare under `name`.
    pub fn register_exchange_type(&mut self, name: &str, factory: std::sync::Arc<dyn ExchangeFactory>) {
        self.types.register(name, factory);
    }

    /// Makes a plugin retry policy available to queues as `x-retry-policy: <its name>`.
    /// Register before `attach_storage`, so recovered queues find it.
    pub fn register_retry_policy(&mut self, policy: std::sync::Arc<dyn crate::retry::ExternalRetry>) {
        self.retry_plugins.insert(policy.name().to_string(), policy);
    }

    /// Forgets cached routes of every exchange of type `kind`: its implementation changed
    /// (a plugin reload), so results computed by the old one may no longer hold.
    pub fn exchange_type_reloaded(&mut self, kind: &str) {
        for x in self.vhosts.iter_mut().flat_map(|v| v.exchanges.values_mut()).filter(|x| x.kind == kind) {
            x.forget_routes();
        }
    }

    /// Broker-wide counters.
    pub fn stats(&self) -> &crate::stats::GlobalStats {
        &self.stats
    }

    /// Unacked deliveries per queue incarnation id, in one pass over every channel.
    pub fn unacked_by_queue(&self) -> Map<u64, usize> {
        let mut counts = Map::default();
        for u in self.sessions.values().flat_map(|s| s.channels.values()).flat_map(|c| c.unacked.values()) {
            *counts.entry(u.queue_id).or_insert(0) += 1;
        }
        counts
    }

    /// Open connections and their open channels: (connections, channels).
    pub fn open_counts(&self) -> (usize, usize) {
        let clients = || self.sessions.values().filter(|s| s.counted);
        (clients().count(), clients().map(|s| s.channels.len()).sum())
    }

    /// Moves out the events that happened since the last call.
    pub fn take_events(&mut self, out: &mut Vec<crate::stats::BrokerEvent>) {
        out.append(&mut self.events);
    }

    /// A declared queue of `/`, for tests and operators.
    pub fn queue(&self, name: &str) -> Option<&Queue> {
        self.vhosts[VHostId::DEFAULT].queues.get(name)
    }

    /// Every declared queue, of every vhost ([`Queue::vhost`] says which).
    pub fn queues(&self) -> impl Iterator<Item = &Queue> {
        self.vhosts.all_queues()
    }

    /// A declared exchange of `/`, for tests.
    pub fn exchange(&self, name: &str) -> Option<&Exchange> {
        self.vhosts[VHostId::DEFAULT].exchanges.get(name)
    }

    /// The vhosts.
    pub fn vhosts(&self) -> &VHosts {
        &self.vhosts
    }

    /// Creates vhost `name` unless it exists, with its predeclared exchanges (`amq.direct`
    /// and the others); its id.
    pub fn add_vhost(&mut self, name: &str) -> VHostId {
        let (id, new) = self.vhosts.add(name);
        // A vhost emptied by a deletion gets its predeclared exchanges back too.
        if new || !self.vhosts[id].exchanges.contains_key("amq.direct") {
            self.declare_predefined_exchanges(id);
        }
        self.vhosts[id].open = true;
        id
    }

    /// The limits of vhost `vh` (a broker may hold more than its own: `/`'s keeps reopened ones).
    pub(crate) fn limits_of(&self, vh: VHostId) -> VHostLimits {
        self.directory.get().vhost_limits(&self.vhosts[vh].name)
    }

    /// The node's directory as this broker last read it (users, vhosts, permissions).
    pub fn directory(&self) -> &std::sync::Arc<crate::directory::Directory> {
        self.directory.get()
    }

    /// The node's directory, to read its newest state or change it.
    pub fn shared_directory(&self) -> &crate::directory::SharedDirectory {
        self.directory.shared()
    }

    /// Takes the directory's newest state, if it moved.
    pub fn refresh_directory(&mut self) {
        self.directory.refresh();
    }

    /// The id of vhost `name` if it takes sessions; RabbitMQ's 530 when it does not exist or
    /// is closed.
    fn open_vhost(&self, name: &str) -> Result<VHostId, AmqpError> {
        self.vhosts.id(name).filter(|id| self.vhosts[*id].open).ok_or_else(|| {
            AmqpError::new(warren_codec::reply_code::NOT_ALLOWED, format!("vhost {name} not found"))
        })
    }

    /// Registers a connection that completed its handshake, or refuses it with 530 as RabbitMQ
    /// does when its vhost does not exist or the connection limit is reached.
    pub fn open_session(&mut self, info: ConnectionInfo) -> Result<ConnId, AmqpError> {
        let vh = self.open_vhost(&info.vhost)?;
        self.refresh_directory();
        self.authorize_vhost(&info.user, &info.vhost)?;
        if let Some(max) = self.limits_of(vh).max_connections
            && self.vhosts[vh].connections >= max
        {
            // RabbitMQ's words.
            return Err(AmqpError::new(
                warren_codec::reply_code::NOT_ALLOWED,
                format!(
                    "access to vhost '{}' refused for user '{}': connection limit ({max}) is reached",
                    info.vhost, info.user
                ),
            ));
        }
        // Every connection is counted for its user, limited or not: a limit set later holds
        // against those already open, as in RabbitMQ.
        let max = self.directory().user(&info.user).and_then(|u| u.limits.max_connections);
        if !self.census.user_take(&info.user, census::PerUser::Connections, max.unwrap_or(usize::MAX)) {
            let max = max.unwrap_or_default();
            return Err(AmqpError::new(
                warren_codec::reply_code::NOT_ALLOWED,
                format!(
                    "connection refused for user '{}': user connection limit ({max}) is reached",
                    info.user
                ),
            ));
        }
        if !self.census.open_connection(self.limits.max_connections) {
            self.census.user_give(&info.user, census::PerUser::Connections);
            let max = self.limits.max_connections.unwrap_or_default();
            return Err(AmqpError::new(
                warren_codec::reply_code::NOT_ALLOWED,
                format!("connection refused: node connection limit ({max}) is reached"),
            ));
        }
        Ok(self.register_session(info, true))
    }

    /// Registers a session an operator's request runs as (the management API's): its vhost
    /// must exist and the user have permissions there, as for a client, but it is no
    /// connection: it takes no slot of the connection limit and is not counted as opened or
    /// closed.
    pub fn open_operator_session(&mut self, info: ConnectionInfo) -> Result<ConnId, AmqpError> {
        self.open_vhost(&info.vhost)?;
        self.refresh_directory();
        self.authorize_vhost(&info.user, &info.vhost)?;
        Ok(self.register_session(info, false))
    }

    /// Registers a session the node itself acts through (a definitions import, which an
    /// administrator asked for): its vhost must exist; no permission is checked for it, and
    /// it takes no connection slot.
    pub fn open_system_session(&mut self, info: ConnectionInfo) -> Result<ConnId, AmqpError> {
        self.open_vhost(&info.vhost)?;
        let id = self.register_session(info, false);
        if let Some(s) = self.sessions.get_mut(&id) {
            s.system = true;
        }
        Ok(id)
    }

    /// Registers a connection that completed its handshake, whatever the limit; one naming a
    /// vhost that does not exist gets the broker's first ([`VHostId::DEFAULT`]).
    pub fn connect(&mut self, info: ConnectionInfo) -> ConnId {
        self.census.open_connection(None);
        self.census.user_take(&info.user, census::PerUser::Connections, usize::MAX);
        self.register_session(info, true)
    }

    /// Adds a session; `counted` for a connection, whose slot in the census is taken.
    fn register_session(&mut self, mut info: ConnectionInfo, counted: bool) -> ConnId {
        info.connected_at_ms = self.unix_ms;
        let vhost = self.vhosts.id(&info.vhost).unwrap_or_default();
        let id = self.census.next_conn();
        if counted {
            self.stats.connections_opened += 1;
            self.vhosts[vhost].connections += 1;
        }
        let session = Session {
            counted,
            system: false,
            info,
            vhost,
            channels: Map::default(),
            outbound: Vec::new(),
            woken: false,
            throttled: false,
            published: false,
            told_blocked: false,
            errors: Vec::new(),
            autoacked: Vec::new(),
        };
        self.sessions.insert(id, session);
        id
    }

    /// Raises (`Some(reason)`) or clears a resource alarm. As in RabbitMQ, while it is raised
    /// a connection that publishes is blocked: not read from (see
    /// [`crate::Connection::may_read`]) and, when the client asked for it, sent
    /// connection.blocked, then connection.unblocked when the alarm clears. Connections that
    /// only consume go on, so queues can drain.
    pub fn set_alarm(&mut self, reason: Option<String>) {
        if self.alarm == reason {
            return;
        }
        self.alarm = reason;
        let ids: Vec<ConnId> = self.sessions.keys().copied().collect();
        for id in ids {
            self.tell_blocked(id);
            // Woken anyway, so a driver that stopped reading looks again.
            self.wake(id);
        }
    }

    /// Sends connection.blocked or connection.unblocked to `conn` if its state changed.
    fn tell_blocked(&mut self, conn: ConnId) {
        let alarm = self.alarm.clone();
        let Some(s) = self.sessions.get_mut(&conn) else {
            return;
        };
        if !s.info.blocked_notify {
            return;
        }
        match alarm {
            Some(reason) if s.published && !s.told_blocked => {
                s.told_blocked = true;
                self.send(conn, 0, ConnectionBlocked { reason });
            }
            None if s.told_blocked => {
                s.told_blocked = false;
                self.send(conn, 0, ConnectionUnblocked {});
            }
            _ => {}
        }
    }

    /// The resource alarm, when one is raised.
    pub fn alarm(&self) -> Option<&str> {
        self.alarm.as_deref()
    }

    /// Whether connection `conn` is blocked: an alarm is raised and it publishes.
    pub fn is_blocked(&self, conn: ConnId) -> bool {
        self.alarm.is_some() && self.sessions.get(&conn).is_some_and(|s| s.published)
    }

    /// Connections blocked now.
    pub fn blocked_count(&self) -> usize {
        if self.alarm.is_none() {
            return 0;
        }
        self.sessions.values().filter(|s| s.published).count()
    }

    /// Forgets a connection: its channels close (unacked messages requeued, consumers
    /// cancelled) and its exclusive queues are deleted.
    pub fn disconnect(&mut self, conn: ConnId) {
        let Some(session) = self.sessions.get(&conn) else {
            return;
        };
        let vh = session.vhost;
        let channels: Vec<u16> = session.channels.keys().copied().collect();
        self.quorum_disconnect(vh, conn);
        for ch in channels {
            self.release_channel(conn, ch);
        }
        self.drop_exclusive_queues(vh, conn);
        if let Some(s) = self.sessions.remove(&conn).filter(|s| s.counted) {
            self.census.close_connection();
            self.vhosts[s.vhost].connections = self.vhosts[s.vhost].connections.saturating_sub(1);
            self.stats.connections_closed += 1;
            self.census.user_give(&s.info.user, census::PerUser::Connections);
        }
        self.publish_census();
    }

    /// Applies `cmd` to channel `ch` of session `conn`: the door of every channel
    /// operation, whichever protocol asked for it. An error closes the channel (or, for a
    /// hard error, the connection) and names the operation that failed.
    ///
    /// A topology command whose durable record cannot be written fails with 541 and gets no
    /// -ok; one that wrote a record gets its -ok once the record is synced.
    pub fn apply(&mut self, conn: ConnId, ch: u16, mut cmd: Command) -> Result<(), AmqpError> {
        let ids = cmd.ids();
        // A changed permission holds from the next operation on.
        self.refresh_directory();
        // A session left in a vhost being deleted may do nothing more there.
        if let Some(s) = self.sessions.get(&conn)
            && !self.vhosts[s.vhost].open
        {
            let vhost = &self.vhosts[s.vhost].name;
            return Err(AmqpError::new(
                warren_codec::reply_code::NOT_FOUND,
                format!("vhost '{vhost}' is deleted"),
            )
            .at(ids));
        }
        if let Command::Publish(_) = &cmd {
            self.authorize(conn, &cmd).map_err(|e| e.at(ids))?;
        }
        match cmd {
            Command::OpenChannel => return self.open_channel_state(conn, ch).map_err(|e| e.at(ids)),
            Command::CloseChannel => {
                self.release_channel(conn, ch);
                self.send(conn, ch, ChannelCloseOk {});
                return Ok(());
            }
            Command::DropChannel => {
                self.release_channel(conn, ch);
                return Ok(());
            }
            Command::FailChannel(err) => {
                self.fail_channel(conn, ch, &err);
                return Ok(());
            }
            Command::Publish(p) => return self.publish_message(conn, ch, p.method, p.properties, p.body),
            _ => {}
        }
        self.expand_queue_shortcut(conn, ch, &mut cmd).map_err(|e| e.at(ids))?;
        self.authorize(conn, &cmd).map_err(|e| e.at(ids))?;
        // A cluster member proposes what would change the topology, and answers once the
        // cluster's catalog applied it.
        if self.member.is_some()
            && let Some(r) = self.member_command(conn, ch, &cmd)
        {
            if cmd.may_change_counts() {
                self.publish_census();
            }
            return r.map_err(|e| e.at(ids));
        }
        let topology = cmd.is_topology();
        let counts = cmd.may_change_counts();
        // Set afresh for every command: one that panicked half-way must not leave its state
        // to the next.
        self.durability.command = topology.then(persist::CommandWrites::default);
        let r = match cmd {
            Command::DeclareQueue(m) => self.queue_declare(conn, ch, m),
            Command::PurgeQueue(m) => self.queue_purge(conn, ch, m),
            Command::DeleteQueue(m) => self.queue_delete(conn, ch, m),
            Command::BindQueue(m) => self.queue_bind(conn, ch, m),
            Command::UnbindQueue(m) => self.queue_unbind(conn, ch, m),
            Command::Qos(m) => self.basic_qos(conn, ch, m),
            Command::Consume(m) => self.basic_consume(conn, ch, m),
            Command::Cancel(m) => self.basic_cancel(conn, ch, m),
            Command::Get(m) => self.basic_get(conn, ch, m),
            Command::Ack { delivery_tag, multiple } => {
                self.settle(conn, ch, delivery_tag, multiple, None, deliver::Return::Refused)
            }
            Command::Reject { delivery_tag, requeue } => {
                self.settle(conn, ch, delivery_tag, false, Some(requeue), deliver::Return::Rejected)
            }
            Command::Nack { delivery_tag, multiple, requeue } => {
                self.settle(conn, ch, delivery_tag, multiple, Some(requeue), deliver::Return::Refused)
            }
            Command::Recover { requeue, reply } => self.basic_recover(conn, ch, requeue, reply),
            Command::SelectConfirms(m) => self.confirm_select(conn, ch, m),
            Command::Flow(m) => self.channel_flow(conn, ch, m),
            Command::DeclareExchange(m) => self.exchange_declare(conn, ch, m),
            Command::DeleteExchange(m) => self.exchange_delete(conn, ch, m),
            Command::BindExchange(m) => self.exchange_bind(conn, ch, m),
            Command::UnbindExchange(m) => self.exchange_unbind(conn, ch, m),
            Command::SelectTx => self.tx_select(conn, ch),
            Command::CommitTx => self.tx_commit(conn, ch),
            Command::RollbackTx => self.tx_rollback(conn, ch),
            // Handled above.
            Command::OpenChannel
            | Command::CloseChannel
            | Command::DropChannel
            | Command::FailChannel(_)
            | Command::Publish(_) => Ok(()),
        };
        let failed = if topology { self.durability.command.take().and_then(|c| c.failed) } else { None };
        let r = match failed {
            Some(why) if r.is_ok() => Err(AmqpError::new(
                warren_codec::reply_code::INTERNAL_ERROR,
                format!("the change could not be stored: {why}"),
            )),
            _ => r,
        };
        if counts {
            self.publish_census();
        }
        r.map_err(|e| e.at(ids))
    }

    /// Opens channel `ch` and answers channel.open-ok ([`Command::OpenChannel`]).
    pub fn open_channel(&mut self, conn: ConnId, ch: u16) {
        let _ = self.apply(conn, ch, Command::OpenChannel);
    }

    /// Closes channel `ch` at the client's request and answers channel.close-ok
    /// ([`Command::CloseChannel`]).
    pub fn close_channel(&mut self, conn: ConnId, ch: u16) {
        let _ = self.apply(conn, ch, Command::CloseChannel);
    }

    /// Forgets channel `ch` without a reply (its transport is gone): consumers cancelled,
    /// unacked messages requeued ([`Command::DropChannel`]).
    pub fn drop_channel(&mut self, conn: ConnId, ch: u16) {
        let _ = self.apply(conn, ch, Command::DropChannel);
    }

    /// Closes channel `ch` for a channel error: releases it and sends channel.close
    /// ([`Command::FailChannel`]).
    pub fn channel_error(&mut self, conn: ConnId, ch: u16, err: &AmqpError) {
        let _ = self.apply(conn, ch, Command::FailChannel(err.clone()));
    }

    /// Publishes a message whose content is complete ([`Command::Publish`]).
    pub fn publish(
        &mut self,
        conn: ConnId,
        ch: u16,
        method: BasicPublish,
        properties: impl Into<Box<BasicProperties>>,
        body: Bytes,
    ) -> Result<(), AmqpError> {
        let publish = crate::command::Publish { method, properties: properties.into(), body };
        self.apply(conn, ch, Command::Publish(publish))
    }

    /// Handles an AMQP channel method as the command it asks for (see
    /// [`Command::from_method`]); a method the broker does not handle is 503.
    pub fn handle_method(&mut self, conn: ConnId, ch: u16, method: Method) -> Result<(), AmqpError> {
        match Command::from_method(method) {
            Ok(cmd) => self.apply(conn, ch, cmd),
            // Server-to-client methods, or ones the connection handles itself.
            Err(m) => Err(AmqpError::new(COMMAND_INVALID, "unimplemented method").on(&m)),
        }
    }

    fn open_channel_state(&mut self, conn: ConnId, ch: u16) -> Result<(), AmqpError> {
        // A user's channel limit counts over all its connections (530, as RabbitMQ).
        let counted = self.sessions.get(&conn).filter(|s| s.counted).map(|s| s.info.user.clone());
        if let Some(user) = counted {
            let max = self.directory().user(&user).and_then(|u| u.limits.max_channels);
            if !self.census.user_take(&user, census::PerUser::Channels, max.unwrap_or(usize::MAX)) {
                let max = max.unwrap_or_default();
                return Err(AmqpError::new(
                    warren_codec::reply_code::NOT_ALLOWED,
                    format!(
                        "number of channels opened for user '{user}' has reached the maximum allowed user limit of ({max})"
                    ),
                ));
            }
        }
        let id = self.next_channel_id();
        if let Some(s) = self.sessions.get_mut(&conn) {
            let mut state = ChannelState::default();
            state.id = id;
            s.channels.insert(ch, state);
            self.stats.channels_opened += 1;
        }
        self.send(conn, ch, ChannelOpenOk::default());
        Ok(())
    }

    fn fail_channel(&mut self, conn: ConnId, ch: u16, err: &AmqpError) {
        self.release_channel(conn, ch);
        self.send(
            conn,
            ch,
            warren_codec::ChannelClose {
                reply_code: err.code,
                reply_text: err.text.clone(),
                class_id: err.class_id,
                method_id: err.method_id,
            },
        );
    }

    /// Messages a delayed-message exchange holds, by vhost and exchange (for metrics).
    pub fn delayed_by_exchange(&self) -> Vec<(String, String, u64)> {
        let mut out = Vec::new();
        for (_, v) in self.vhosts.iter() {
            for (n, _) in v.exchanges.iter().filter(|(_, x)| x.delays) {
                out.push((v.name.to_string(), n.clone(), v.held_by_exchange.get(n).copied().unwrap_or(0)));
            }
        }
        out
    }

    /// The 0-9-1 shortcut RabbitMQ keeps: an empty queue name in queue.bind, queue.unbind,
    /// queue.purge, queue.delete, basic.consume and basic.get means the channel's last
    /// declared queue (404 if it declared none), and so does an empty routing key in a bind
    /// whose queue name was empty.
    fn expand_queue_shortcut(&mut self, conn: ConnId, ch: u16, cmd: &mut Command) -> Result<(), AmqpError> {
        let Some((queue, key)) = cmd.queue_shortcut() else {
            return Ok(());
        };
        if !queue.is_empty() {
            return Ok(());
        }
        let last = self.channel(conn, ch).and_then(|c| c.last_queue.clone());
        let last = last.ok_or_else(|| {
            AmqpError::new(warren_codec::reply_code::NOT_FOUND, "no previously declared queue")
        })?;
        if let Some(key) = key.filter(|k| k.is_empty()) {
            key.clone_from(&last);
        }
        *queue = last;
        Ok(())
    }

    /// Whether queue `name` exists in the vhost of session `conn`.
    pub fn queue_exists_for(&self, conn: ConnId, name: &str) -> bool {
        self.vhosts[self.vh(conn)].queues.contains_key(name)
    }

    /// Moves what connection `conn` has to send into `out`. True when deliveries still wait
    /// for room (at most `OUTBOUND_LIMIT` go out per pull): pull again once these are written.
    #[must_use = "when true, more deliveries wait for room: pull again once these are written"]
    pub fn take_outbound(&mut self, conn: ConnId, out: &mut Vec<Outgoing>) -> bool {
        let more = self.take_outbound_of(conn, out);
        self.settle_taken(conn);
        more
    }

    fn take_outbound_of(&mut self, conn: ConnId, out: &mut Vec<Outgoing>) -> bool {
        let vh = self.vh(conn);
        let Some(s) = self.sessions.get_mut(&conn) else {
            return false;
        };
        // A swap, not a copy of every item, in the common case.
        if out.is_empty() {
            std::mem::swap(out, &mut s.outbound);
        } else {
            out.append(&mut s.outbound);
        }
        s.woken = false;
        if !std::mem::take(&mut s.throttled) {
            return false;
        }
        // Deliveries were held back for want of room: there is room now. What this dispatches
        // to this connection goes out with this pull.
        let mut queues: Vec<std::sync::Arc<str>> =
            s.channels.values().flat_map(ChannelState::consumer_queues).collect();
        queues.sort();
        queues.dedup();
        for q in queues {
            self.dispatch(vh, &q);
        }
        let Some(s) = self.sessions.get_mut(&conn) else {
            return false;
        };
        out.append(&mut s.outbound);
        s.woken = false;
        s.throttled
    }

    /// Moves the connections that have new frames to send into `out`.
    pub fn take_wakeups(&mut self, out: &mut Vec<ConnId>) {
        out.append(&mut self.wakeups);
    }

    /// (ready, unacked, consumers) of a queue of `/`, for tests.
    pub fn queue_counts(&self, name: &str) -> Option<(usize, usize, usize)> {
        self.queue_counts_in(VHostId::DEFAULT, name)
    }

    /// (ready, unacked, consumers) of a queue of vhost `vh`, for tests and operators.
    pub fn queue_counts_in(&self, vh: VHostId, name: &str) -> Option<(usize, usize, usize)> {
        let q = self.vhosts[vh].queues.get(name)?;
        let unacked = self
            .sessions
            .values()
            .flat_map(|s| s.channels.values())
            .flat_map(|c| c.unacked.values())
            .filter(|u| u.queue_id == q.id)
            .count();
        Some((q.len(), unacked, q.consumers.len()))
    }

    /// Number of open connections.
    pub fn connection_count(&self) -> usize {
        self.sessions.len()
    }

    /// Sends a method's -ok reply unless the client asked for no-wait. A durable change the
    /// method made is on disk first: the reply waits for the sync, and a failed write sends
    /// none (the method fails with 541 instead, see [`Broker::handle_method`]).
    fn reply(&mut self, conn: ConnId, channel: u16, no_wait: bool, method: impl Into<Method>) {
        let behind_held = self
            .sessions
            .get(&conn)
            .and_then(|s| s.channels.get(&channel))
            .is_some_and(|c| c.held_replies > 0);
        match self.durability.command.as_ref() {
            Some(c) if c.failed.is_some() => {}
            Some(c) if c.wrote && !no_wait => self.reply_after_sync(conn, channel, true, method),
            // Behind a reply held for a sync, this one waits too: replies on a channel go out
            // in the order of their methods, whatever each waited for.
            _ if !no_wait && behind_held => self.reply_after_sync(conn, channel, true, method),
            _ if !no_wait => self.send(conn, channel, method),
            _ => {}
        }
    }

    /// Closes channel `ch` of `conn` (or, for channel 0, the connection) for an error the
    /// broker found on its own; the connection machine acts on it at its next pull.
    pub(crate) fn raise_error(&mut self, conn: ConnId, ch: u16, err: AmqpError) {
        if let Some(s) = self.sessions.get_mut(&conn) {
            s.errors.push((ch, err));
            self.wake(conn);
        }
    }

    /// Every open connection's details and channels, for the management API (operators'
    /// sessions are no connections).
    pub fn connection_summaries(&self) -> Vec<(ConnId, ConnectionInfo, Vec<ChannelSummary>)> {
        self.sessions
            .iter()
            .filter(|(_, s)| s.counted)
            .map(|(id, s)| {
                let mut channels: Vec<ChannelSummary> = s
                    .channels
                    .iter()
                    .map(|(n, c)| ChannelSummary {
                        number: *n,
                        prefetch_count: c.consumer_prefetch,
                        global_prefetch_count: c.channel_prefetch,
                        confirm: c.confirm_seq.is_some(),
                        transactional: c.tx.is_some(),
                        unacknowledged: c.unacked.len(),
                        consumers: c.consumers.len(),
                    })
                    .collect();
                channels.sort_by_key(|c| c.number);
                (*id, s.info.clone(), channels)
            })
            .collect()
    }

    /// Every consumer, for the management API.
    pub fn consumer_summaries(&self) -> Vec<ConsumerSummary> {
        let mut out = Vec::new();
        for (conn, s) in &self.sessions {
            for (channel, c) in &s.channels {
                for (tag, k) in &c.consumers {
                    out.push(ConsumerSummary {
                        tag: tag.clone(),
                        queue: k.queue.to_string(),
                        conn: *conn,
                        channel: *channel,
                        ack_required: !k.no_ack,
                        prefetch_count: k.prefetch,
                    });
                }
            }
        }
        out
    }

    /// Closes connection `conn` with 320 CONNECTION_FORCED and `reason`, as an operator does
    /// (its machine sends connection.close on its next pull).
    pub fn close_connection(&mut self, conn: ConnId, reason: &str) {
        self.raise_error(conn, 0, AmqpError::new(warren_codec::reply_code::CONNECTION_FORCED, reason));
    }

    /// The errors [`Broker::raise_error`] queued for `conn`.
    pub fn take_errors(&mut self, conn: ConnId) -> Vec<(u16, AmqpError)> {
        match self.sessions.get_mut(&conn) {
            Some(s) if !s.errors.is_empty() => std::mem::take(&mut s.errors),
            _ => Vec::new(),
        }
    }

    fn send(&mut self, conn: ConnId, channel: u16, method: impl Into<Method>) {
        self.push(conn, Outgoing::Method { channel, method: method.into() });
    }

    fn push(&mut self, conn: ConnId, out: Outgoing) {
        let Some(s) = self.sessions.get_mut(&conn) else {
            return;
        };
        s.outbound.push(out);
        self.wake(conn);
    }

    /// Lists a connection for its driver to wake.
    fn wake(&mut self, conn: ConnId) {
        if let Some(s) = self.sessions.get_mut(&conn)
            && !s.woken
        {
            s.woken = true;
            self.wakeups.push(conn);
        }
    }

    /// The vhost of connection `conn` (`/` for one that is gone: nothing it names exists).
    fn vh(&self, conn: ConnId) -> VHostId {
        self.sessions.get(&conn).map_or(VHostId::DEFAULT, |s| s.vhost)
    }

    fn channel(&mut self, conn: ConnId, ch: u16) -> Option<&mut ChannelState> {
        self.sessions.get_mut(&conn)?.channels.get_mut(&ch)
    }

    /// Drops a channel's state: consumers cancelled, unacked messages requeued.
    fn release_channel(&mut self, conn: ConnId, ch: u16) {
        let vh = self.vh(conn);
        let Some(session) = self.sessions.get_mut(&conn) else {
            return;
        };
        let Some(state) = session.channels.remove(&ch) else {
            return;
        };
        if session.counted {
            self.census.user_give(&session.info.user, census::PerUser::Channels);
        }
        self.stats.channels_closed += 1;
        self.forget_replies(state.reply.clone());
        let mut touched: Vec<std::sync::Arc<str>> = Vec::new();
        for (tag, c) in state.consumers {
            if let Some(q) = self.vhosts[vh].queues.get_mut(&*c.queue) {
                q.remove_consumer(conn, ch, &tag);
            }
            touched.push(c.queue);
        }
        // A quorum queue takes its deliveries back and drops the channel's consumers in one
        // step (`quorum_lost`); a classic queue one message at a time. Auto-ack deliveries
        // the socket never took go back too.
        let (mut held, classic): (Vec<_>, Vec<_>) =
            state.unacked.into_values().partition(|u| u.quorum.is_some());
        if let Some(s) = self.sessions.get_mut(&conn) {
            let (mine, rest) = std::mem::take(&mut s.autoacked).into_iter().partition(|(c, _)| *c == ch);
            s.autoacked = rest;
            held.extend(mine.into_iter().map(|(_, u): (u16, crate::channel::Unacked)| u));
        }
        for u in classic {
            touched.push(u.queue.clone());
            self.give_back(vh, (conn, ch), u, deliver::Return::Lost);
        }
        touched.extend(held.iter().map(|u| u.queue.clone()));
        let lost = Self::lost_command(conn, Some(ch), None);
        let held = held.into_iter().map(|u| (ch, u)).collect();
        self.quorum_lost(vh, conn, held, touched.clone(), &lost);
        touched.sort();
        touched.dedup();
        for name in touched {
            if self.vhosts[vh].queues.get(&*name).is_some_and(Queue::should_auto_delete) {
                self.drop_own_queue(vh, &name);
            } else {
                self.dispatch(vh, &name);
            }
        }
        self.publish_census();
    }
}
