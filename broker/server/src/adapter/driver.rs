//! One adapter connection's task: reads the socket into the session in the adapter's
//! instance, carries out its commands (logins through the directory, operations through a
//! broker [`Bridge`], retained messages and wills through the [`Hub`]), hands it the
//! broker's answers, and writes the bytes it returns.
//!
//! A round goes on while answers come back, but stops polling the broker once a batch of
//! bytes waits to be written: deliveries then wait until the client has read (the broker's
//! prefetch bounds what is in flight).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Notify, watch};
use tracing::{debug, info, warn};
use warren_codec::reply_code;
use warren_core::AmqpError;
use warren_core::adapter::{Answer, Bridge, Op};
use warren_core::broker::ConnectionInfo;
use warren_core::message::Message;
use warren_core::permissions::Perm;
use warren_plugin_host::adapter::{AdapterSession, Command, Event, Login, Output, SessionError};

use super::Context;
use super::hub::ClaimKey;
use crate::driver::write_out;
use crate::shared::{SharedRef, lock};

/// How long a login waits for the connection that held its name to end.
const TAKEOVER_WAIT: Duration = Duration::from_secs(5);
/// Bytes gathered for the client before the broker is polled no more this round.
const WRITE_BATCH: usize = 256 << 10;
/// Retained messages handed to the session in one call; the rest wait for the next round.
const RETAINED_BATCH: usize = 64;
/// Broker operations applied under one turn of the lock.
const OPS_PER_LOCK: usize = 256;
/// Rounds of answers in one step before the task yields (deliveries a session settles
/// without writing a byte must not hold a worker).
const MAX_ROUNDS: usize = 64;

/// A session's broker side once it logged in.
struct LoggedIn {
    shared: SharedRef,
    bridge: Bridge,
    user: String,
    vhost: String,
}

/// A will to publish after the connection ends.
struct Will {
    publish: Op,
    retain: bool,
    delay_ms: u64,
}

struct Conn {
    ctx: Arc<Context>,
    session: AdapterSession,
    peer: SocketAddr,
    name: String,
    id: u64,
    login: Option<LoggedIn>,
    claim: Option<ClaimKey>,
    notify: Arc<Notify>,
    taken: Arc<Notify>,
    /// Dropped when the connection has ended: a session waiting to take its name goes on.
    gone: Option<watch::Sender<()>>,
    gone_rx: watch::Receiver<()>,
    bytes: Vec<u8>,
    wants_input: bool,
    timeout: Option<u64>,
    closing: Option<String>,
    wills: Vec<Will>,
    /// Retained messages waiting to be handed to the session.
    retained: std::collections::VecDeque<Arc<Message>>,
    /// Set once the connection's broker side was released.
    finished: bool,
    /// An output not carried out yet: a step ran its most rounds.
    pending: Option<Output>,
    /// Other connections' tasks were woken since the last turn.
    woke: bool,
}

/// Serves one connection until the session or the socket ends.
pub(crate) async fn drive(
    mut stream: Transport,
    peer: SocketAddr,
    local: SocketAddr,
    ctx: Arc<Context>,
    mut stop: watch::Receiver<bool>,
    tls_identity: Option<String>,
) {
    let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
    let local = SocketAddr::new(local.ip().to_canonical(), local.port());
    let info = warren_plugin_host::adapter::ConnectionInfo {
        peer: peer.to_string(),
        listener: local.to_string(),
        tls_identity,
    };
    let notify = Arc::new(Notify::new());
    let waker = {
        let notify = notify.clone();
        Arc::new(move || notify.notify_one())
    };
    let session = match ctx.plugin.open(&info, ctx.now_ms(), waker) {
        Ok(s) => s,
        Err(e) => {
            ctx.stats.refused_one();
            warn!(%peer, protocol = %ctx.protocol, error = %e, "adapter connection refused");
            return;
        }
    };
    let (gone, gone_rx) = watch::channel(());
    let mut c = Conn {
        id: ctx.hub.next_id(),
        ctx,
        session,
        peer,
        name: format!("{peer} -> {local}"),
        login: None,
        claim: None,
        notify,
        taken: Arc::new(Notify::new()),
        gone: Some(gone),
        gone_rx,
        bytes: Vec::new(),
        wants_input: true,
        timeout: None,
        closing: None,
        wills: Vec::new(),
        retained: Default::default(),
        finished: false,
        pending: None,
        woke: false,
    };
    debug!(%peer, protocol = %c.ctx.protocol, "adapter connection accepted");
    let first = c.session.handle(c.ctx.now_ms(), Vec::new());
    let mut result = match first {
        Ok(o) => c.step(o).await,
        Err(e) => Err(e),
    };
    while result.is_ok() && c.closing.is_none() {
        if !c.bytes.is_empty() {
            let out = std::mem::take(&mut c.bytes);
            c.ctx.stats.add_sent(out.len());
            if let Err(e) = stream.write_all(&out, c.ctx.write_timeout).await {
                debug!(%peer, error = %e, "adapter connection write failed");
                let now = c.ctx.now_ms();
                result = match c.session.socket_closed(now) {
                    Ok(o) => c.step(o).await,
                    Err(e) => Err(e),
                };
                break;
            }
            continue;
        }
        // What a step left for later goes first, in order; a shutdown still ends it.
        if let Some(out) = c.pending.take() {
            result = if *stop.borrow() { c.shut_down().await } else { c.step(out).await };
            continue;
        }
        // A timeout too far to be an Instant is none.
        let deadline = c.timeout.and_then(|t| c.ctx.epoch.checked_add(Duration::from_millis(t)));
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        let ctx = c.ctx.clone();
        let now = || ctx.now_ms();
        // On a cluster member, a client whose publishes wait for other nodes past the
        // broker's bound is not read from (TCP backpressure); it is woken when they drain.
        let held = ctx.node.is_clustered()
            && c.login.as_ref().is_some_and(|l| lock(&l.shared).broker.awaits_cluster(l.bridge.conn()));
        let out = tokio::select! {
            // Readiness first, then a buffer for this read only: an idle connection holds no
            // read buffer (thousands of idle MQTT clients are the common case).
            read = stream.read_chunk(), if c.wants_input && !held => match read {
                Ok(buf) => {
                    ctx.stats.add_received(buf.len());
                    c.session.receive(now(), &buf)
                }
                Err(_) => {
                    let r = c.session.socket_closed(now());
                    c.closing.get_or_insert_with(|| "the client closed the connection".into());
                    r
                }
            },
            () = c.notify.notified() => c.session.handle(now(), Vec::new()),
            () = c.taken.notified() => c.session.handle(now(), vec![Event::TakenOver]),
            () = sleep => c.session.timeout(now()),
            Ok(()) = stop.changed() => {
                result = c.shut_down().await;
                continue;
            }
        };
        result = match out {
            Ok(o) => c.step(o).await,
            Err(e) => Err(e),
        };
        // A task woken from this one runs next on this worker, but only once this one
        // yields: a publisher whose socket always has more would hold its subscribers off.
        if std::mem::take(&mut c.woke) {
            tokio::task::yield_now().await;
        }
    }
    // What the session said last (a DISCONNECT, a CONNACK refusal) goes out before the close.
    if !c.bytes.is_empty() {
        let out = std::mem::take(&mut c.bytes);
        let _ = stream.write_all(&out, c.ctx.write_timeout).await;
    }
    match &result {
        Err(e) => {
            warn!(%peer, protocol = %c.ctx.protocol, error = %e, "adapter connection ended by its adapter")
        }
        Ok(()) => debug!(%peer, reason = c.closing.as_deref().unwrap_or(""), "adapter connection closed"),
    }
    c.finish();
    stream.shutdown().await;
}

/// The most one read takes.
const READ_MAX: usize = 64 << 10;
/// A TLS connection's read buffer (rustls hands out at most a record's plaintext at a time).
const TLS_READ: usize = 16 << 10;

/// What an adapter connection runs over.
pub(crate) enum Transport {
    /// Plain TCP: read on readiness, so an idle connection holds no read buffer.
    Tcp(TcpStream),
    /// TLS (rustls keeps its own buffers per connection anyway).
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl Transport {
    /// The next bytes from the client; `UnexpectedEof` at the end of the stream. Safe to
    /// cancel: nothing is consumed until it completes.
    async fn read_chunk(&mut self) -> std::io::Result<Vec<u8>> {
        match self {
            Transport::Tcp(s) => loop {
                s.readable().await?;
                // The buffer exists only once there is something to read.
                let mut buf = vec![0u8; READ_MAX];
                match s.try_read(&mut buf) {
                    Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                    Ok(n) => {
                        buf.truncate(n);
                        return Ok(buf);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(e),
                }
            },
            Transport::Tls(s) => {
                let mut buf = vec![0u8; TLS_READ];
                match s.read(&mut buf).await? {
                    0 => Err(std::io::ErrorKind::UnexpectedEof.into()),
                    n => {
                        buf.truncate(n);
                        Ok(buf)
                    }
                }
            }
        }
    }

    async fn write_all(&mut self, buf: &[u8], timeout: Duration) -> std::io::Result<()> {
        match self {
            Transport::Tcp(s) => write_out(s, buf, timeout).await,
            Transport::Tls(s) => write_out(s, buf, timeout).await,
        }
    }

    async fn shutdown(&mut self) {
        let _ = match self {
            Transport::Tcp(s) => s.shutdown().await,
            Transport::Tls(s) => s.shutdown().await,
        };
    }
}

impl Drop for Conn {
    /// A task aborted at shutdown, or unwinding from a panic, still releases its broker
    /// session, its name and its waker.
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        if !std::thread::panicking() {
            return self.finish();
        }
        tracing::error!(peer = %self.peer, "an adapter connection's handling panicked: its session is released");
        // Not during the unwind: a second panic would abort the process.
        let (login, claim, id, ctx) = (self.login.take(), self.claim.take(), self.id, self.ctx.clone());
        self.finished = true;
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Some(l) = login {
                    end_session(l);
                }
                if let Some(k) = &claim {
                    ctx.hub.release(k, id);
                }
            });
        }
    }
}

impl Conn {
    /// The broker is stopping: the session is told (and says goodbye to its client if its
    /// protocol can), what it answers is carried out, and the connection ends after writing
    /// what it said.
    async fn shut_down(&mut self) -> Result<(), SessionError> {
        self.closing = Some("the broker is shutting down".into());
        let now = self.ctx.now_ms();
        let out = self.session.handle(now, vec![Event::ShuttingDown])?;
        self.step(out).await
    }

    /// Carries out an output and every answer it leads to.
    async fn step(&mut self, mut out: Output) -> Result<(), SessionError> {
        for _ in 0..MAX_ROUNDS {
            self.bytes.extend_from_slice(&out.bytes);
            self.wants_input = out.wants_input;
            self.timeout = out.timeout;
            let mut events = Vec::new();
            self.carry_out(std::mem::take(&mut out.commands), &mut events).await;
            if self.bytes.len() < WRITE_BATCH {
                let n = self.retained.len().min(RETAINED_BATCH);
                events.extend(self.retained.drain(..n).map(Event::Retained));
                self.poll(&mut events);
            }
            if self.bytes.len() >= WRITE_BATCH || !self.retained.is_empty() {
                // Polled again once these bytes are written.
                self.notify.notify_one();
            }
            if events.is_empty() {
                return Ok(());
            }
            out = self.session.handle(self.ctx.now_ms(), events)?;
        }
        // Still busy: the rest waits for the next turn, after the other tasks had theirs.
        self.pending = Some(out);
        self.notify.notify_one();
        tokio::task::yield_now().await;
        Ok(())
    }

    /// The bridge's answers since the last poll.
    fn poll(&mut self, events: &mut Vec<Event>) {
        let Some(l) = self.login.as_mut() else { return };
        let mut s = lock(&l.shared);
        events.extend(l.bridge.poll(&mut s.broker).into_iter().map(Event::Answer));
        if l.bridge.more() {
            self.notify.notify_one();
        }
        self.woke |= s.wake_others(Some(l.bridge.conn()));
    }

    /// Carries out commands in order; a run of broker operations is applied under one turn
    /// of the broker lock (a batch of acks is one lock, not one each).
    async fn carry_out(&mut self, commands: Vec<Command>, events: &mut Vec<Event>) {
        let mut commands = commands.into_iter().peekable();
        while let Some(c) = commands.next() {
            let op = match c {
                Command::Op(op) if self.login.is_some() => op,
                c => {
                    self.execute(c, events).await;
                    continue;
                }
            };
            let Some(l) = self.login.as_mut() else { continue };
            let applied = {
                let mut s = lock(&l.shared);
                let mut next = Some(op);
                let mut applied = 0;
                while let Some(op) = next.take() {
                    // A retained message's tag: nothing in the broker to settle.
                    if !matches!(op, Op::Ack { delivery_tag: 0 }) {
                        l.bridge.submit(&mut s.broker, op);
                    }
                    applied += 1;
                    if applied == OPS_PER_LOCK {
                        break;
                    }
                    if let Some(Command::Op(_)) = commands.peek()
                        && let Some(Command::Op(op)) = commands.next()
                    {
                        next = Some(op);
                    }
                }
                self.woke |= s.wake_others(Some(l.bridge.conn()));
                applied
            };
            if applied == OPS_PER_LOCK {
                // A publisher's read can hold thousands of publishes, each routed to many
                // queues: the lock and the worker are let go between batches, so the tasks
                // that deliver are not starved by the one that publishes.
                tokio::task::yield_now().await;
            }
        }
    }

    async fn execute(&mut self, c: Command, events: &mut Vec<Event>) {
        match c {
            Command::Login(l) => {
                let id = l.id;
                let result = self.log_in(l).await.map(|()| false);
                events.push(Event::Answer(Answer::Done { id, result }));
            }
            Command::Op(op) => {
                let Some(l) = self.login.as_mut() else {
                    return refuse(op, events);
                };
                // A retained message's tag: nothing in the broker to settle.
                if matches!(op, Op::Ack { delivery_tag: 0 }) {
                    return;
                }
                let mut s = lock(&l.shared);
                l.bridge.submit(&mut s.broker, op);
                self.woke |= s.wake_others(Some(l.bridge.conn()));
            }
            Command::Retain { exchange, routing_key, properties, body } => {
                let m = Message { exchange, routing_key, properties, body };
                self.retain(m);
            }
            Command::SendRetained { exchange, pattern } => {
                let Some(l) = &self.login else { return };
                let dir = self.ctx.node.directory().load();
                if !dir.access.grants(&l.user, &l.vhost, Perm::Read, &exchange) {
                    return;
                }
                let kept = self.ctx.hub.retained(&l.vhost, &exchange, &pattern);
                // Topic permissions apply to what a subscriber reads, retained messages too.
                let readable = |m: &Arc<Message>| {
                    dir.access.grants_topic(&l.user, &l.vhost, &exchange, Perm::Read, &m.routing_key)
                };
                self.retained.extend(kept.into_iter().filter(readable));
            }
            Command::Will { publish, retain, delay_ms } => {
                if self.login.is_none() {
                    return;
                }
                if delay_ms == 0 {
                    self.publish_will(publish, retain);
                } else {
                    self.wills.push(Will { publish, retain, delay_ms });
                }
            }
            Command::Close(why) => {
                self.closing.get_or_insert(why);
            }
        }
    }

    /// Checks the credentials and the vhost, takes the session's name, opens its bridge.
    async fn log_in(&mut self, l: Login) -> Result<(), AmqpError> {
        let refused = |text: &str| AmqpError::new(reply_code::ACCESS_REFUSED, text);
        if self.login.is_some() {
            return Err(refused("already logged in"));
        }
        let password = std::str::from_utf8(&l.password).map_err(|_| refused("the password is not UTF-8"))?;
        let dir = self.ctx.node.directory().load();
        let user = warren_core::auth::check_password(&dir.users, &l.username, password, self.peer.ip().is_loopback())
            .map_err(|e| {
                warn!(peer = %self.peer, protocol = %self.ctx.protocol, user = %l.username, reason = %e, "adapter login refused");
                refused(&e.to_string())
            })?
            .name
            .clone();
        let vhost = l.vhost.unwrap_or_else(|| "/".into());
        let shared =
            self.ctx.node.broker(&vhost).ok_or_else(|| {
                AmqpError::new(reply_code::NOT_ALLOWED, format!("vhost '{vhost}' not found"))
            })?;
        let info = ConnectionInfo {
            user: user.clone(),
            vhost: vhost.clone(),
            name: self.name.clone(),
            auth_mechanism: self.ctx.protocol.to_string(),
            ..Default::default()
        };
        // The vhost and the user's access to it are checked here, before the name is
        // claimed: a login that fails takes nobody's session over.
        let bridge = {
            let mut s = lock(&shared);
            let bridge = Bridge::open(&mut s.broker, info)?;
            s.register(bridge.conn(), self.notify.clone());
            bridge
        };
        self.login = Some(LoggedIn { shared, bridge, user: user.clone(), vhost: vhost.clone() });
        if let Some(name) = l.claim {
            let key = ClaimKey { protocol: self.ctx.protocol.to_string(), vhost: vhost.clone(), name };
            let held = self.ctx.hub.claim(&key, self.id, self.taken.clone(), self.gone_rx.clone());
            self.claim = Some(key);
            if let Some(mut gone) = held {
                // The holder ends its session (its exclusive queue goes) before this one
                // declares the same queue.
                let _ = tokio::time::timeout(TAKEOVER_WAIT, gone.changed()).await;
            }
        }
        info!(peer = %self.peer, protocol = %self.ctx.protocol, %user, %vhost, "adapter connection logged in");
        Ok(())
    }

    /// Keeps a retained message, if the user may publish it.
    fn retain(&self, m: Message) {
        let Some(l) = &self.login else { return };
        retain_as(&self.ctx, &l.user, &l.vhost, m);
    }

    fn publish_will(&mut self, publish: Op, retain: bool) {
        if retain && let Some(m) = published_message(&publish) {
            self.retain(m);
        }
        if let Some(l) = self.login.as_mut() {
            let mut s = lock(&l.shared);
            l.bridge.submit(&mut s.broker, publish);
            self.woke |= s.wake_others(Some(l.bridge.conn()));
        }
    }

    /// The connection is over: its broker session ends (unacked deliveries go back, an
    /// exclusive queue goes), its name is free, its delayed wills are scheduled.
    fn finish(&mut self) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        let identity = self.login.take().map(end_session);
        // The session that takes the name over may go on now.
        self.gone.take();
        let wills = std::mem::take(&mut self.wills);
        if let (Some((user, vhost, shared)), Some(key)) = (identity, &self.claim) {
            for w in wills {
                let bytes = published_message(&w.publish).map_or(0, |m| super::hub::footprint(&m));
                let (ctx, k, shared) = (self.ctx.clone(), key.clone(), shared.clone());
                let (user, vhost, name) = (user.clone(), vhost.clone(), self.name.clone());
                let scheduled = self.ctx.hub.schedule_will(key, self.id, bytes, |generation| {
                    let task = tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_millis(w.delay_ms)).await;
                        if ctx.hub.take_will(&k, generation) {
                            publish_later(&ctx, &shared, user, vhost, name, w);
                        }
                    });
                    task.abort_handle()
                });
                if let Err(e) = scheduled {
                    debug!(peer = %self.peer, reason = %e, "a delayed will is dropped");
                }
            }
        }
        if let Some(key) = &self.claim {
            self.ctx.hub.release(key, self.id);
        }
    }
}

/// The message a publish carries (its body shared, not copied).
fn published_message(publish: &Op) -> Option<Message> {
    match publish {
        Op::Publish { exchange, routing_key, properties, body, .. } => Some(Message {
            exchange: exchange.clone(),
            routing_key: routing_key.clone(),
            properties: properties.clone(),
            body: body.clone(),
        }),
        _ => None,
    }
}

/// Ends a logged-in connection's broker session under one turn of its lock: its waker
/// unregistered, unacked deliveries back in their queues, its exclusive queue gone.
fn end_session(l: LoggedIn) -> (String, String, SharedRef) {
    let LoggedIn { shared, bridge, user, vhost } = l;
    {
        let mut s = lock(&shared);
        s.unregister(bridge.conn());
        bridge.close_session(&mut s.broker);
        s.wake_others(None);
    }
    (user, vhost, shared)
}

/// Keeps a retained message for `user` in `vhost`, if the user may publish it there.
fn retain_as(ctx: &Context, user: &str, vhost: &str, m: Message) {
    let dir = ctx.node.directory().load();
    let may = dir.access.grants(user, vhost, Perm::Write, &m.exchange)
        && dir.access.grants_topic(user, vhost, &m.exchange, Perm::Write, &m.routing_key);
    if !may {
        return;
    }
    if let Err(e) = ctx.hub.retain(vhost, Arc::new(m)) {
        warn!(%vhost, error = %e, "retained message not kept");
    }
}

/// Publishes a delayed will on a broker session of its own, as the user who left it (its
/// permissions as they are now), and keeps it as retained if asked and allowed.
fn publish_later(ctx: &Context, shared: &SharedRef, user: String, vhost: String, name: String, w: Will) {
    let info = ConnectionInfo {
        user: user.clone(),
        vhost: vhost.clone(),
        name: format!("{name} (will)"),
        auth_mechanism: ctx.protocol.to_string(),
        ..Default::default()
    };
    let retained = if w.retain { published_message(&w.publish) } else { None };
    let mut s = lock(shared);
    match Bridge::open(&mut s.broker, info) {
        Ok(mut b) => {
            b.submit(&mut s.broker, w.publish);
            b.poll(&mut s.broker);
            b.close_session(&mut s.broker);
        }
        Err(e) => {
            warn!(error = %e.text, "a delayed will could not be published");
            return;
        }
    }
    s.wake_all();
    drop(s);
    if let Some(m) = retained {
        retain_as(ctx, &user, &vhost, m);
    }
}

/// The answer to an operation before login.
fn refuse(op: Op, events: &mut Vec<Event>) {
    let e = AmqpError::new(reply_code::ACCESS_REFUSED, "not logged in");
    let answer = match op {
        Op::DeclareQueue { id, .. }
        | Op::DeleteQueue { id, .. }
        | Op::Bind { id, .. }
        | Op::Unbind { id, .. }
        | Op::Consume { id, .. } => Answer::Done { id, result: Err(e) },
        Op::Publish { confirm: Some(id), .. } => Answer::Refused(id),
        Op::Publish { confirm: None, .. } | Op::Ack { .. } => return,
    };
    events.push(Event::Answer(answer));
}
