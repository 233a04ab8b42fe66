//! Protocol adapters as plugins: the sans-IO half the server's adapter listener drives.
//!
//! Sessions share instances: an instance holds up to `sessions_per_instance` sessions (each
//! a resource of its `adapter`), so 10 000 connections are tens of instances, not 10 000. A
//! trap, a timeout or the memory cap ends the instance and with it every session in it:
//! their next call fails with [`SessionError::Failed`], their connections close, and new
//! sessions go to a fresh instance. After a reload, new sessions go to instances of the new
//! component while existing ones stay on theirs.
//!
//! The guest speaks WIT values; the server speaks the broker model's: [`Command`] carries
//! [`warren_core::adapter::Op`]s, and events are [`warren_core::adapter::Answer`]s, so the
//! translation happens once, here.

use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use warren_codec::BasicProperties;
use warren_core::adapter::{Answer, Op};
use warren_core::message::Message;
use wasmtime::component::ResourceAny;

use crate::bindings::adapter_world::exports::warren::plugin::adapter as wit;
use crate::bindings::adapter_world::{AdapterPlugin as Exports, AdapterPluginPre};
use crate::convert;
use crate::failure::Failure;
use crate::instance::{BuildError, Live, Plugin};
use crate::state::HostState;
use crate::{Limits, LoadError, PluginStats, Runtime};

type Pre = AdapterPluginPre<HostState>;

/// A login a session asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Login {
    /// Answered with [`Answer::Done`].
    pub id: u64,
    /// The user name.
    pub username: String,
    /// The password.
    pub password: Vec<u8>,
    /// The vhost; `None` for the listener's default.
    pub vhost: Option<String>,
    /// A name the session takes in its adapter's namespace (an MQTT client identifier).
    pub claim: Option<String>,
}

/// What a session asks the broker to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Log in; every other command waits for its `Done`.
    Login(Login),
    /// An operation on the broker, as AMQP's.
    Op(Op),
    /// Keep a retained message for the routing key (an empty body clears it).
    Retain {
        /// The exchange.
        exchange: String,
        /// The routing key.
        routing_key: String,
        /// Properties and headers.
        properties: Box<BasicProperties>,
        /// The body.
        body: Bytes,
    },
    /// Deliver the retained messages whose routing keys match `pattern` (a topic binding key).
    SendRetained {
        /// The exchange.
        exchange: String,
        /// The pattern.
        pattern: String,
    },
    /// Publish `publish` (an [`Op::Publish`]) `delay_ms` after the session ends, unless its
    /// name is claimed again first; `retain` keeps it as retained too.
    Will {
        /// The publish.
        publish: Op,
        /// Also retained.
        retain: bool,
        /// The delay, milliseconds.
        delay_ms: u64,
    },
    /// End the session once the bytes before it are written.
    Close(String),
}

/// What the broker tells a session.
#[derive(Debug, Clone)]
pub enum Event {
    /// An answer of the session's broker bridge.
    Answer(Answer),
    /// A retained message for `SendRetained`.
    Retained(Arc<Message>),
    /// Another session claimed this one's name.
    TakenOver,
    /// The broker is stopping.
    ShuttingDown,
}

/// What a session answers a call with.
#[derive(Debug, Default)]
pub struct Output {
    /// Commands, in order.
    pub commands: Vec<Command>,
    /// Bytes for the client.
    pub bytes: Vec<u8>,
    /// When to call [`AdapterSession::timeout`] next.
    pub timeout: Option<u64>,
    /// Whether to read from the client now.
    pub wants_input: bool,
}

/// Why a session cannot go on; its connection should be closed.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The instance trapped, timed out or hit its memory cap; every session in it is gone.
    #[error("adapter '{plugin}' {failure}")]
    Failed {
        /// The adapter's name.
        plugin: String,
        /// What happened.
        failure: Failure,
    },
    /// No session could be opened (the instance cap, or a failing instance).
    #[error("adapter '{plugin}' cannot open a session: {reason}")]
    Start {
        /// The adapter's name.
        plugin: String,
        /// Why.
        reason: String,
    },
    /// The adapter answered with something the broker cannot take (a bad field value).
    #[error("adapter '{plugin}' sent a bad command: {reason}")]
    BadCommand {
        /// The adapter's name.
        plugin: String,
        /// Why.
        reason: String,
    },
}

/// Where a connection comes from.
#[derive(Debug, Clone, Default)]
pub struct ConnectionInfo {
    /// The client's `ip:port`.
    pub peer: String,
    /// The listener's `ip:port`.
    pub listener: String,
    /// The TLS client certificate's subject.
    pub tls_identity: Option<String>,
}

/// Called when a session's instance fails, so its connection ends now rather than at its
/// next call (an idle connection might make none for a long time).
pub type Waker = Arc<dyn Fn() + Send + Sync>;

/// One instance and the sessions in it.
struct Shard {
    /// `None` once it failed: its sessions' state is gone.
    live: Option<Live<Exports>>,
    sessions: usize,
    /// Why it failed, for the sessions that call it next.
    failure: Option<Failure>,
    /// Each session's waker, by a number of the shard's own.
    wakers: std::collections::HashMap<u64, Waker>,
    next_waker: u64,
}

/// A loaded protocol-adapter component.
pub struct AdapterPlugin {
    plugin: Arc<Plugin<Pre>>,
    config: Vec<(String, String)>,
    sessions_per_instance: usize,
    shards: Mutex<Vec<Arc<Mutex<Shard>>>>,
}

impl fmt::Debug for AdapterPlugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdapterPlugin").field("name", &self.plugin.name).finish_non_exhaustive()
    }
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl AdapterPlugin {
    /// Compiles the component at `path` as adapter `name` and builds one instance from
    /// `config`; refuses a component that does not implement the `adapter-plugin` world or
    /// that refuses its config.
    pub fn load(
        runtime: &Runtime,
        name: &str,
        path: &Path,
        config: Vec<(String, String)>,
        limits: Limits,
        sessions_per_instance: usize,
    ) -> Result<Self, LoadError> {
        let plugin = Arc::new(Plugin::<Pre>::load(runtime, name, path, limits)?);
        let a = AdapterPlugin {
            plugin,
            config,
            sessions_per_instance: sessions_per_instance.max(1),
            shards: Mutex::new(Vec::new()),
        };
        let shard = a.shard().map_err(|e| LoadError::Config { path: path.to_path_buf(), reason: e })?;
        locked(&a.shards).push(shard);
        Ok(a)
    }

    /// The adapter's name.
    pub fn name(&self) -> &str {
        &self.plugin.name
    }

    /// What the plugin has done so far.
    pub fn stats(&self) -> Arc<PluginStats> {
        self.plugin.stats.clone()
    }

    /// Reads the component file again; new sessions use it, existing ones keep theirs.
    pub fn reload(&self) -> Result<(), LoadError> {
        self.plugin.reload()?;
        // The new component must take the config too, or new connections would all fail.
        let shard =
            self.shard().map_err(|e| LoadError::Config { path: self.plugin.path.clone(), reason: e })?;
        locked(&self.shards).push(shard);
        Ok(())
    }

    /// A new instance with its adapter built from the config.
    fn shard(&self) -> Result<Arc<Mutex<Shard>>, String> {
        let config = self.config.clone();
        let live = self
            .plugin
            .instantiate(|s, x| x.warren_plugin_adapter().adapter().call_create(s, &config))
            .map_err(|e: BuildError| e.to_string())?;
        Ok(Arc::new(Mutex::new(Shard {
            live: Some(live),
            sessions: 0,
            failure: None,
            wakers: Default::default(),
            next_waker: 0,
        })))
    }

    /// A session for a connection accepted at `now`; `waker` is called if its instance fails.
    pub fn open(
        &self,
        info: &ConnectionInfo,
        now: u64,
        waker: Waker,
    ) -> Result<AdapterSession, SessionError> {
        let start = |reason: String| SessionError::Start { plugin: self.plugin.name.clone(), reason };
        let wit_info = wit::ConnectionInfo {
            peer: info.peer.clone(),
            listener: info.listener.clone(),
            tls_identity: info.tls_identity.clone(),
        };
        // Instances that failed, or of an older component with no session left, go.
        let shard = {
            let mut shards = locked(&self.shards);
            shards.retain(|s| {
                let s = locked(s);
                s.live.is_some() && (s.sessions > 0 || self.plugin.is_current(&s.live))
            });
            let room = shards.iter().find(|s| {
                let s = locked(s);
                self.plugin.is_current(&s.live) && s.sessions < self.sessions_per_instance
            });
            match room {
                Some(s) => s.clone(),
                None => {
                    let s = self.shard().map_err(start)?;
                    shards.push(s.clone());
                    s
                }
            }
        };
        let mut s = locked(&shard);
        let limits = self.plugin.limits;
        let Some(live) = s.live.as_mut() else { return Err(start("its instance failed".into())) };
        let opened = live.call(&limits, |store, x, adapter| {
            x.warren_plugin_adapter().adapter().call_open(store, adapter, &wit_info, now)
        });
        match opened {
            Ok(resource) => {
                s.sessions += 1;
                s.next_waker += 1;
                let waker_id = s.next_waker;
                s.wakers.insert(waker_id, waker);
                drop(s);
                Ok(AdapterSession { plugin: self.plugin.clone(), shard, resource: Some(resource), waker_id })
            }
            Err(failure) => {
                fail(&mut s, &self.plugin.name, failure.clone());
                Err(start(failure.to_string()))
            }
        }
    }

    /// Sessions open, and instances serving them.
    pub fn census(&self) -> (usize, usize) {
        let shards = locked(&self.shards);
        let sessions = shards.iter().map(|s| locked(s).sessions).sum();
        (sessions, shards.len())
    }
}

/// Ends a shard's instance: every session in it is gone, and told.
fn fail(s: &mut Shard, plugin: &str, failure: Failure) {
    tracing::warn!(plugin = %plugin, sessions = s.sessions, "protocol adapter instance {failure}; its sessions end");
    s.live = None;
    s.failure = Some(failure);
    for w in s.wakers.values() {
        w();
    }
}

/// One client connection's adapter state.
pub struct AdapterSession {
    plugin: Arc<Plugin<Pre>>,
    shard: Arc<Mutex<Shard>>,
    /// The session resource; `None` once dropped.
    resource: Option<ResourceAny>,
    waker_id: u64,
}

impl fmt::Debug for AdapterSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdapterSession").field("plugin", &self.plugin.name).finish_non_exhaustive()
    }
}

impl AdapterSession {
    fn call(
        &mut self,
        f: impl FnOnce(&mut wasmtime::Store<HostState>, &Exports, ResourceAny) -> wasmtime::Result<wit::Output>,
    ) -> Result<Output, SessionError> {
        let plugin = self.plugin.name.clone();
        let failed = |failure| SessionError::Failed { plugin: plugin.clone(), failure };
        let Some(resource) = self.resource else {
            return Err(failed(Failure::Trap("the session is closed".into())));
        };
        let mut s = locked(&self.shard);
        let Some(live) = s.live.as_mut() else {
            let f = s.failure.clone().unwrap_or_else(|| Failure::Trap("the instance failed".into()));
            return Err(failed(f));
        };
        match live.call(&self.plugin.limits, |store, x, _| f(store, x, resource)) {
            Ok(out) => output(out).map_err(|reason| SessionError::BadCommand { plugin, reason }),
            Err(failure) => {
                fail(&mut s, &plugin, failure.clone());
                Err(failed(failure))
            }
        }
    }

    /// Bytes from the client.
    pub fn receive(&mut self, now: u64, bytes: &[u8]) -> Result<Output, SessionError> {
        self.call(|s, x, r| x.warren_plugin_adapter().session().call_receive(s, r, now, bytes))
    }

    /// Events from the broker.
    pub fn handle(&mut self, now: u64, events: Vec<Event>) -> Result<Output, SessionError> {
        let events: Vec<wit::Event> = events.into_iter().filter_map(event).collect();
        self.call(|s, x, r| x.warren_plugin_adapter().session().call_handle(s, r, now, &events))
    }

    /// The time the last output asked for came.
    pub fn timeout(&mut self, now: u64) -> Result<Output, SessionError> {
        self.call(|s, x, r| x.warren_plugin_adapter().session().call_timeout(s, r, now))
    }

    /// The socket closed under the session.
    pub fn socket_closed(&mut self, now: u64) -> Result<Output, SessionError> {
        self.call(|s, x, r| x.warren_plugin_adapter().session().call_socket_closed(s, r, now))
    }
}

impl Drop for AdapterSession {
    fn drop(&mut self) {
        let Some(resource) = self.resource.take() else { return };
        let mut s = locked(&self.shard);
        s.sessions = s.sessions.saturating_sub(1);
        s.wakers.remove(&self.waker_id);
        // The guest's destructor frees the session's memory; an instance that failed has none.
        if let Some(live) = s.live.as_mut()
            && let Err(failure) = live.call(&self.plugin.limits, |store, _, _| resource.resource_drop(store))
        {
            fail(&mut s, &self.plugin.name, failure);
        }
    }
}

/// A guest's output as the broker's.
fn output(o: wit::Output) -> Result<Output, String> {
    let commands = o.commands.into_iter().map(command).collect::<Result<_, _>>()?;
    Ok(Output { commands, bytes: o.bytes, timeout: o.timeout, wants_input: o.wants_input })
}

fn publish(p: wit::Publish) -> Result<Op, String> {
    let (properties, body) = message(p.message)?;
    Ok(Op::Publish { confirm: p.confirm, exchange: p.exchange, routing_key: p.routing_key, properties, body })
}

fn message(m: wit::Message) -> Result<(Box<BasicProperties>, Bytes), String> {
    let mut properties = convert::properties(m.properties)?;
    if !m.headers.is_empty() {
        properties.headers = Some(convert::table(m.headers)?);
    }
    Ok((Box::new(properties), Bytes::from(m.body)))
}

fn command(c: wit::Command) -> Result<Command, String> {
    use wit::Command as C;
    Ok(match c {
        C::Login(l) => Command::Login(Login {
            id: l.id,
            username: l.username,
            password: l.password,
            vhost: l.vhost,
            claim: l.claim,
        }),
        C::DeclareQueue(d) => Command::Op(Op::DeclareQueue {
            id: d.id,
            name: d.name,
            durable: d.durable,
            exclusive: d.exclusive,
            expires_ms: d.expires_ms,
        }),
        C::DeleteQueue(q) => Command::Op(Op::DeleteQueue { id: q.id, name: q.name }),
        C::Bind(b) => Command::Op(Op::Bind { id: b.id, queue: b.queue, exchange: b.exchange, key: b.key }),
        C::Unbind(b) => {
            Command::Op(Op::Unbind { id: b.id, queue: b.queue, exchange: b.exchange, key: b.key })
        }
        C::Consume(c) => Command::Op(Op::Consume { id: c.id, queue: c.queue, prefetch: c.prefetch }),
        C::Publish(p) => Command::Op(publish(p)?),
        C::Ack(delivery_tag) => Command::Op(Op::Ack { delivery_tag }),
        C::Retain(r) => {
            let (properties, body) = message(r.message)?;
            Command::Retain { exchange: r.exchange, routing_key: r.routing_key, properties, body }
        }
        C::SendRetained(r) => Command::SendRetained { exchange: r.exchange, pattern: r.pattern },
        C::Will(w) => Command::Will { publish: publish(w.publish)?, retain: w.retain, delay_ms: w.delay_ms },
        C::Close(why) => Command::Close(why),
    })
}

fn wit_message(m: &Message) -> wit::Message {
    let p = &m.properties;
    wit::Message {
        properties: convert::wit_properties(p),
        headers: p.headers.as_ref().map(convert::fields).unwrap_or_default(),
        body: m.body.to_vec(),
    }
}

fn delivery(tag: u64, redelivered: bool, retained: bool, m: &Message) -> wit::Event {
    wit::Event::Delivery(wit::Delivery {
        delivery_tag: tag,
        redelivered,
        retained,
        exchange: m.exchange.clone(),
        routing_key: m.routing_key.clone(),
        message: wit_message(m),
    })
}

/// An event as the guest's; `None` for none it needs.
fn event(e: Event) -> Option<wit::Event> {
    Some(match e {
        Event::Answer(a) => match a {
            Answer::Done { id, result } => wit::Event::Done(wit::Done {
                id,
                outcome: result.map_err(|e| wit::Failure { code: e.code, text: e.text }),
            }),
            Answer::Confirmed(id) => wit::Event::Confirmed(id),
            Answer::Refused(id) => wit::Event::Refused(id),
            Answer::Delivery { delivery_tag, redelivered, message } => {
                delivery(delivery_tag, redelivered, false, &message)
            }
            Answer::ConsumerLost(why) => wit::Event::ConsumerLost(why),
            Answer::Closed(why) => wit::Event::Closed(why),
        },
        Event::Retained(m) => delivery(0, false, true, &m),
        Event::TakenOver => wit::Event::TakenOver,
        Event::ShuttingDown => wit::Event::ShuttingDown,
    })
}
