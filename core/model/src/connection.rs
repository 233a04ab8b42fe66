//! The per-connection AMQP machine: bytes and `now` in, bytes out. No I/O, no clock.
//!
//! ```text
//!  ProtocolHeader ─► StartOk ─► TuneOk ─► Open ─► Open ─┬─► Closed   (client close, EOF)
//!        │              │          │        │           └─► Closing ─► Closed (server close)
//!        └── wrong header: our header back, Closed
//! ```
//!
//! The driver appends socket bytes to [`Connection::read_buf`], calls
//! [`Connection::handle_input`], writes [`Connection::take_output`] to the socket, sleeps until
//! [`Connection::poll_timeout`] and then calls [`Connection::handle_timeout`]. When another
//! connection's work produced frames for this one, the driver calls
//! [`Connection::pull_outbound`]. Once [`Connection::is_closed`], it flushes and drops the socket.
//!
//! Channel-level work goes to the [`Broker`]; this machine owns what is per connection:
//! handshake, frame validation, content assembly, heartbeats, and closing.

use std::collections::VecDeque;

use crate::hash::Map;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use warren_codec::reply_code::{
    self, ACCESS_REFUSED, CHANNEL_ERROR, COMMAND_INVALID, CONNECTION_FORCED, NOT_ALLOWED,
    PRECONDITION_FAILED, REPLY_SUCCESS, UNEXPECTED_FRAME,
};
use warren_codec::{
    BasicPublish, ConnectionClose, ConnectionCloseOk, ConnectionOpenOk, ConnectionStart, ConnectionTune,
    ConnectionUpdateSecretOk, ContentHeader, FieldTable, FieldValue, Frame, Method, PROTOCOL_HEADER,
    decode_frame, encode_content,
};

use crate::auth::{self, AuthError};
use crate::broker::{Broker, ConnId, ConnectionInfo};
use crate::error::AmqpError;
use crate::message::Outgoing;

/// RabbitMQ's default largest message: bigger content is refused before it is buffered.
pub const MAX_MESSAGE_SIZE: u64 = 128 * 1024 * 1024;

/// Octets of message bodies one connection may be assembling at once, over all its channels
/// (announced sizes): two of the largest messages.
pub const MAX_CONTENT_IN_FLIGHT: u64 = 2 * MAX_MESSAGE_SIZE;

/// Bodies up to this size are not summed against [`MAX_CONTENT_IN_FLIGHT`].
const SMALL_BODY: u64 = 64 * 1024;

/// Output encoded per [`Connection::take_output`].
pub const OUTPUT_CHUNK: usize = 1 << 20;

/// Largest frame accepted before tune-ok settles frame-max: RabbitMQ 4.1's pre-auth limit,
/// raised from the spec's 4096 so start-ok can carry a JWT. An unauthenticated peer cannot
/// make the broker buffer more than this.
pub const PRE_TUNE_FRAME_MAX: u32 = 8192;

/// Limits the server offers in connection.tune, and its handshake patience.
#[derive(Debug, Clone)]
pub struct ConnectionConfig {
    /// Largest frame, overhead included.
    pub frame_max: u32,
    /// Highest channel number.
    pub channel_max: u16,
    /// Heartbeat interval offered, in seconds; 0 disables.
    pub heartbeat: u16,
    /// Time allowed from socket open to connection.open.
    pub handshake_timeout: Duration,
    /// Time allowed for the client to answer our connection.close.
    pub close_timeout: Duration,
    /// Longest a socket write may make no progress before the connection is closed (a client
    /// that stops reading would otherwise pin its unacked messages forever). The driver
    /// enforces it: writes are I/O.
    pub write_timeout: Duration,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        // RabbitMQ's defaults.
        ConnectionConfig {
            frame_max: 131_072,
            channel_max: 2047,
            heartbeat: 60,
            handshake_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(3),
            // RabbitMQ's tcp_listen_options.send_timeout.
            write_timeout: Duration::from_secs(15),
        }
    }
}

/// Things worth logging that happened to the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The handshake completed.
    Opened {
        /// The authenticated user.
        user: String,
        /// The vhost opened.
        vhost: String,
    },
    /// A login was refused.
    AuthFailed {
        /// Why, for the log only.
        reason: String,
    },
    /// The connection is over.
    Closed {
        /// The reply code of the close, or 0 when the socket just went.
        code: u16,
        /// The reason.
        text: String,
        /// Whether the client started the close.
        by_peer: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    ProtocolHeader,
    StartOk,
    TuneOk,
    Open,
    Running,
    Closing { deadline: Instant },
    Closed,
}

#[derive(Debug)]
enum Phase {
    Idle,
    AwaitingHeader(BasicPublish),
    AwaitingBody(Assembly),
    Closing,
}

/// A publish whose header arrived and whose body frames are being collected.
#[derive(Debug)]
struct Assembly {
    publish: BasicPublish,
    header: ContentHeader,
    body: Body,
    received: u64,
}

/// The body frames received so far. Most bodies fit one frame: that one is kept as it came,
/// with no list to allocate and nothing to copy.
#[derive(Debug, Default)]
enum Body {
    #[default]
    Empty,
    One(Bytes),
    Many(Vec<Bytes>),
}

impl Body {
    fn push(&mut self, part: Bytes) {
        *self = match std::mem::take(self) {
            Body::Empty => Body::One(part),
            Body::One(first) => Body::Many(vec![first, part]),
            Body::Many(mut parts) => {
                parts.push(part);
                Body::Many(parts)
            }
        };
    }

    fn join(self) -> Bytes {
        match self {
            Body::Empty => Bytes::new(),
            Body::One(part) => part,
            Body::Many(parts) => {
                let mut all = BytesMut::with_capacity(parts.iter().map(Bytes::len).sum());
                for p in parts {
                    all.extend_from_slice(&p);
                }
                all.freeze()
            }
        }
    }
}

/// What a client sends to open a connection as guest (PLAIN) with `frame_max` and no
/// heartbeat, and channel 1: for in-memory harnesses (tests, benchmarks, fuzzing) that drive
/// a [`Connection`] without a socket.
pub fn guest_handshake(frame_max: u32) -> BytesMut {
    let mut out = BytesMut::from(&PROTOCOL_HEADER[..]);
    let start_ok = warren_codec::ConnectionStartOk {
        mechanism: "PLAIN".into(),
        response: Bytes::from_static(b"\0guest\0guest"),
        locale: "en_US".into(),
        ..Default::default()
    };
    Frame::method(0, start_ok).encode(&mut out);
    Frame::method(0, warren_codec::ConnectionTuneOk { channel_max: 0, frame_max, heartbeat: 0 })
        .encode(&mut out);
    Frame::method(0, warren_codec::ConnectionOpen { virtual_host: "/".into(), ..Default::default() })
        .encode(&mut out);
    Frame::method(1, warren_codec::ChannelOpen::default()).encode(&mut out);
    out
}

/// One client connection's protocol state.
#[derive(Debug)]
pub struct Connection {
    config: ConnectionConfig,
    peer_is_loopback: bool,
    state: State,
    input: BytesMut,
    output: BytesMut,
    frame_max: u32,
    channel_max: u16,
    heartbeat: Option<Duration>,
    handshake_deadline: Instant,
    last_recv: Instant,
    last_send: Instant,
    /// The latest `now` the driver passed in; frames sent are stamped with it.
    now: Instant,
    user: Option<String>,
    client_capabilities: FieldTable,
    external: Option<String>,
    id: Option<ConnId>,
    channels: Map<u16, Phase>,
    events: VecDeque<Event>,
    /// Frames [`Connection::decode_input`] decoded, not yet acted on.
    decoded: Vec<Frame>,
    /// The framing error that ended decoding, acted on after the frames before it.
    decode_error: Option<warren_codec::CodecError>,
    /// What the broker queued for this connection, taken under the broker lock and encoded
    /// after it (by [`Connection::take_output`]), so encoding does not hold up other connections.
    pending: Vec<Outgoing>,
    /// The broker holds more deliveries for this connection than one pull takes.
    backlog: bool,
}

impl Connection {
    /// A connection whose socket opened at `now`.
    pub fn new(config: ConnectionConfig, peer_is_loopback: bool, now: Instant) -> Self {
        Connection {
            frame_max: match config.frame_max {
                0 => PRE_TUNE_FRAME_MAX,
                max => PRE_TUNE_FRAME_MAX.min(max),
            },
            channel_max: config.channel_max,
            handshake_deadline: now + config.handshake_timeout,
            config,
            peer_is_loopback,
            state: State::ProtocolHeader,
            // Both grow on first use: the driver sizes its reads, and an idle connection (most
            // of them, in a big deployment) should not hold an output buffer it does not use.
            input: BytesMut::new(),
            output: BytesMut::new(),
            heartbeat: None,
            last_recv: now,
            last_send: now,
            now,
            user: None,
            client_capabilities: FieldTable::new(),
            external: None,
            id: None,
            channels: Map::default(),
            events: VecDeque::new(),
            decoded: Vec::new(),
            decode_error: None,
            pending: Vec::new(),
            backlog: false,
        }
    }

    /// The identity of a verified TLS client certificate: offers EXTERNAL login as that user.
    pub fn with_external_identity(mut self, identity: Option<String>) -> Self {
        self.external = identity;
        self
    }

    /// The buffer the driver reads socket bytes into.
    pub fn read_buf(&mut self) -> &mut BytesMut {
        &mut self.input
    }

    /// Bytes to write to the socket, taken out of the machine. Encodes what
    /// [`Connection::pull_outbound`] took from the broker: call it without the broker lock.
    /// At most about [`OUTPUT_CHUNK`] octets (or one message) per call: call again while
    /// [`Connection::has_output`], so a backlog of deliveries or pipelined `basic.get`s of a
    /// large message is copied into memory a chunk at a time, not all at once.
    pub fn take_output(&mut self) -> BytesMut {
        self.encode_pending_up_to(OUTPUT_CHUNK);
        self.output.split()
    }

    /// Whether the broker has more deliveries for this connection than the last pull took:
    /// the driver should pull again once the output is written.
    pub fn has_backlog(&self) -> bool {
        self.backlog
    }

    /// Whether there are bytes to write.
    pub fn has_output(&self) -> bool {
        !self.output.is_empty() || !self.pending.is_empty()
    }

    /// The socket should be closed once the output is written.
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// The broker's id for this connection once it is open.
    pub fn id(&self) -> Option<ConnId> {
        self.id
    }

    /// Next event to log.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Decodes the complete frames in the read buffer without the broker, so that a driver
    /// can decode before it takes the broker lock; [`Connection::handle_input`] acts on them.
    /// Optional: `handle_input` decodes whatever is left itself.
    pub fn decode_input(&mut self) {
        // Before tune-ok the frame size is not settled: those few frames decode in
        // handle_input, one at a time, each under the limits the one before it set.
        if !matches!(self.state, State::Running | State::Closing { .. }) || self.decode_error.is_some() {
            return;
        }
        loop {
            match decode_frame(&mut self.input, self.frame_max) {
                Ok(Some(frame)) => self.decoded.push(frame),
                Ok(None) => break,
                Err(e) => {
                    // Past a framing error the stream has no frame boundaries left to trust.
                    self.input.clear();
                    self.decode_error = Some(e);
                    break;
                }
            }
        }
    }

    /// Processes every complete frame in the read buffer (and those `decode_input` decoded).
    pub fn handle_input(&mut self, now: Instant, broker: &mut Broker) {
        self.now = now;
        self.last_recv = now;
        loop {
            match self.state {
                State::Closed => {
                    self.input.clear();
                    self.decoded.clear();
                    break;
                }
                State::ProtocolHeader => {
                    if self.input.len() < PROTOCOL_HEADER.len() {
                        break;
                    }
                    if &self.input[..PROTOCOL_HEADER.len()] != PROTOCOL_HEADER {
                        // The spec's answer to a header we do not speak: ours, then close.
                        self.output.extend_from_slice(PROTOCOL_HEADER);
                        self.finish(0, "bad protocol header".into(), true);
                        continue;
                    }
                    let _ = self.input.split_to(PROTOCOL_HEADER.len());
                    self.send_start();
                    self.state = State::StartOk;
                }
                State::Running | State::Closing { .. } => {
                    self.decode_input();
                    if self.decoded.is_empty() && self.decode_error.is_none() {
                        break;
                    }
                    let mut decoded = std::mem::take(&mut self.decoded);
                    for frame in decoded.drain(..) {
                        self.handle_frame(now, frame, broker);
                    }
                    self.decoded = decoded;
                    if let Some(e) = self.decode_error.take() {
                        self.fail(now, codec_error(e), broker);
                    }
                }
                // The handshake: one frame at a time, each under the limits the one before set.
                _ => match decode_frame(&mut self.input, self.frame_max) {
                    Ok(None) => break,
                    Ok(Some(frame)) => self.handle_frame(now, frame, broker),
                    Err(e) => {
                        self.input.clear();
                        self.fail(now, codec_error(e), broker);
                        break;
                    }
                },
            }
        }
        self.pull_outbound(now, broker);
    }

    /// Processes frames decoded elsewhere (a QUIC channel stream), as if they had arrived on
    /// the connection's own byte stream.
    pub fn handle_frames(
        &mut self,
        now: Instant,
        frames: impl IntoIterator<Item = Frame>,
        broker: &mut Broker,
    ) {
        self.now = now;
        self.last_recv = now;
        for frame in frames {
            if self.state == State::Closed {
                break;
            }
            self.handle_frame(now, frame, broker);
        }
        self.pull_outbound(now, broker);
    }

    /// Closes the connection for bytes that did not decode on another stream of it.
    pub fn handle_codec_error(&mut self, now: Instant, e: warren_codec::CodecError, broker: &mut Broker) {
        let err = codec_error(e);
        self.fail(now, err, broker);
    }

    /// Closes the channels a vanished QUIC channel stream carried, as channel.close would,
    /// without a reply (there is no stream left to send it on).
    pub fn drop_channels(&mut self, channels: &[u16], broker: &mut Broker) {
        let Some(id) = self.id else {
            return;
        };
        for ch in channels {
            if self.channels.remove(ch).is_some() {
                broker.drop_channel(id, *ch);
            }
        }
    }

    /// The negotiated frame-max, for decoding frames that arrive on other streams.
    pub fn frame_max(&self) -> u32 {
        self.frame_max
    }

    /// Takes what the broker queued for this connection; [`Connection::take_output`] encodes it.
    pub fn pull_outbound(&mut self, now: Instant, broker: &mut Broker) {
        self.now = now;
        let Some(id) = self.id else {
            return;
        };
        let before = self.pending.len();
        self.backlog = broker.take_outbound(id, &mut self.pending);
        if self.pending.len() > before {
            self.mark_sent();
        }
        for (channel, e) in broker.take_errors(id) {
            match channel {
                0 => self.fail(now, e, broker),
                ch if self.channels.get(&ch).is_some_and(|p| !matches!(p, Phase::Closing)) => {
                    self.channel_error(now, ch, e, broker)
                }
                _ => {}
            }
        }
    }

    /// Encodes the frames the broker queued, ahead of anything the connection sends next.
    fn encode_pending(&mut self) {
        self.encode_pending_up_to(usize::MAX);
    }

    /// Encodes queued frames until the output holds `limit` octets; the rest stay queued, in
    /// order. Whole items only, so a message's frames are never split.
    fn encode_pending_up_to(&mut self, limit: usize) {
        let mut items = std::mem::take(&mut self.pending);
        let mut rest = Vec::new();
        let mut drain = items.drain(..);
        while let Some(item) = drain.next() {
            self.encode_outgoing(item);
            if self.output.len() >= limit {
                rest.extend(drain.by_ref());
                break;
            }
        }
        drop(drain);
        self.pending = if rest.is_empty() { items } else { rest };
    }

    fn encode_outgoing(&mut self, item: Outgoing) {
        match item {
            Outgoing::Method { channel, method } => {
                Frame::Method { channel, method }.encode(&mut self.output)
            }
            Outgoing::Deliver { channel, consumer_tag, delivery_tag, redelivered, message } => {
                let m = &message;
                let deliver = warren_codec::frame::Deliver {
                    consumer_tag: &consumer_tag,
                    delivery_tag,
                    redelivered,
                    exchange: &m.exchange,
                    routing_key: &m.routing_key,
                };
                deliver.encode(&mut self.output, channel, &m.properties, &m.body, self.frame_max)
            }
            Outgoing::Content { channel, method, message } => encode_content(
                &mut self.output,
                channel,
                method,
                &message.properties,
                &message.body,
                self.frame_max,
            ),
        }
    }

    /// The socket reached end of file or failed: forget the connection.
    pub fn handle_eof(&mut self, broker: &mut Broker) {
        if self.state != State::Closed {
            self.finish(0, "client closed the socket".into(), true);
        }
        self.release(broker);
    }

    /// Closes the connection from the server side (shutdown, operator).
    pub fn close(&mut self, now: Instant, code: u16, detail: &str, broker: &mut Broker) {
        self.now = now;
        if matches!(self.state, State::Running) {
            self.fail(now, AmqpError::new(code, detail), broker);
        } else if !matches!(self.state, State::Closing { .. } | State::Closed) {
            self.finish(code, detail.into(), false);
        }
    }

    /// Closes the connection for broker shutdown, as RabbitMQ does (320 CONNECTION_FORCED).
    pub fn shutdown(&mut self, now: Instant, broker: &mut Broker) {
        self.close(now, CONNECTION_FORCED, "broker shutdown", broker);
    }

    /// When [`Connection::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Closed => None,
            State::Closing { deadline } => Some(deadline),
            State::Running => {
                let hb = self.heartbeat?;
                Some((self.last_send + hb / 2).min(self.last_recv + hb * 2))
            }
            _ => Some(self.handshake_deadline),
        }
    }

    /// Whether the driver should read from the socket now: not while a resource alarm blocks
    /// publishers and this connection has published (RabbitMQ's flow control by backpressure).
    pub fn may_read(&self, broker: &Broker) -> bool {
        !(self.state == State::Running && self.id.is_some_and(|id| broker.is_blocked(id)))
    }

    /// Acts on expired timers: handshake timeout, heartbeats, close timeout.
    pub fn handle_timeout(&mut self, now: Instant, broker: &mut Broker) {
        self.now = now;
        match self.state {
            State::Closed => {}
            State::Closing { deadline } if now >= deadline => {
                self.finish(0, "no connection.close-ok from client".into(), false);
                self.release(broker);
            }
            State::Closing { .. } => {}
            State::Running => {
                let Some(hb) = self.heartbeat else {
                    return;
                };
                // Not reading is the broker's doing, not a dead peer.
                if !self.may_read(broker) {
                    self.last_recv = now;
                }
                if now >= self.last_recv + hb * 2 {
                    // RabbitMQ closes the socket without a close frame here.
                    let text = format!("missed heartbeats from client, timeout: {}s", hb.as_secs());
                    self.finish(0, text, false);
                    self.release(broker);
                    return;
                }
                if now >= self.last_send + hb / 2 {
                    // Heartbeats need no order relative to other channels' frames.
                    self.encode_pending_up_to(OUTPUT_CHUNK);
                    Frame::Heartbeat { channel: 0 }.encode(&mut self.output);
                    self.mark_sent();
                }
            }
            _ if now >= self.handshake_deadline => {
                self.finish(0, "handshake timeout".into(), false);
            }
            _ => {}
        }
    }

    fn handle_frame(&mut self, now: Instant, frame: Frame, broker: &mut Broker) {
        match self.state {
            State::Closed | State::ProtocolHeader => {}
            State::Closing { .. } => self.closing_frame(frame, broker),
            State::StartOk | State::TuneOk | State::Open => self.handshake_frame(now, frame, broker),
            State::Running => self.running_frame(now, frame, broker),
        }
    }

    fn send_start(&mut self) {
        let start = ConnectionStart {
            version_major: 0,
            version_minor: 9,
            server_properties: server_properties(),
            mechanisms: Bytes::from_static(match self.external {
                Some(_) => auth::MECHANISMS_WITH_EXTERNAL.as_bytes(),
                None => auth::MECHANISMS.as_bytes(),
            }),
            locales: Bytes::from_static(b"en_US"),
        };
        self.send(0, start);
    }

    fn handshake_frame(&mut self, now: Instant, frame: Frame, broker: &mut Broker) {
        let method = match frame {
            Frame::Heartbeat { .. } => return,
            Frame::Method { channel: 0, method } => method,
            Frame::Method { .. } => {
                let e = AmqpError::new(CHANNEL_ERROR, "expected a method on channel 0 during the handshake");
                return self.fail(now, e, broker);
            }
            Frame::Header { .. } | Frame::Body { .. } => {
                let e = AmqpError::new(UNEXPECTED_FRAME, "expected a method frame during the handshake");
                return self.fail(now, e, broker);
            }
        };
        match (self.state, method) {
            (State::StartOk, Method::ConnectionStartOk(m)) => {
                let external = self.external.as_deref();
                match auth::authenticate(
                    broker.users(),
                    &m.mechanism,
                    &m.response,
                    self.peer_is_loopback,
                    external,
                ) {
                    Ok(user) => {
                        self.user = Some(user);
                        if let Some(FieldValue::Table(caps)) = m.client_properties.get("capabilities") {
                            self.client_capabilities = caps.clone();
                        }
                        let tune = ConnectionTune {
                            channel_max: self.config.channel_max,
                            frame_max: self.config.frame_max,
                            heartbeat: self.config.heartbeat,
                        };
                        self.send(0, tune);
                        self.state = State::TuneOk;
                    }
                    Err(AuthError::UnknownMechanism(mech)) => {
                        let e = AmqpError::new(
                            COMMAND_INVALID,
                            format!("unknown authentication mechanism '{mech}'"),
                        );
                        self.fail(now, e, broker);
                    }
                    Err(reason) => {
                        self.events.push_back(Event::AuthFailed { reason: reason.to_string() });
                        let e = AmqpError::new(
                            ACCESS_REFUSED,
                            format!(
                                "Login was refused using authentication mechanism {}. For details see the broker logfile.",
                                m.mechanism
                            ),
                        );
                        self.fail(now, e, broker);
                    }
                }
            }
            (State::TuneOk, Method::ConnectionTuneOk(m)) => {
                if let Err(e) = self.negotiate(m.channel_max, m.frame_max, m.heartbeat) {
                    return self.fail(now, e, broker);
                }
                self.state = State::Open;
            }
            (State::Open, Method::ConnectionOpen(m)) => {
                let user = self.user.clone().unwrap_or_default();
                let cancel_notify =
                    self.client_capabilities.get("consumer_cancel_notify").and_then(FieldValue::as_bool);
                let blocked_notify =
                    self.client_capabilities.get("connection.blocked").and_then(FieldValue::as_bool);
                let info = ConnectionInfo {
                    user: user.clone(),
                    vhost: m.virtual_host.clone(),
                    consumer_cancel_notify: cancel_notify == Some(true),
                    blocked_notify: blocked_notify == Some(true),
                };
                match broker.open_session(info) {
                    Ok(id) => self.id = Some(id),
                    Err(e) => return self.fail(now, e.on(&Method::ConnectionOpen(m)), broker),
                }
                self.send(0, ConnectionOpenOk::default());
                self.state = State::Running;
                self.events.push_back(Event::Opened { user, vhost: m.virtual_host });
            }
            (_, Method::ConnectionClose(_)) => {
                self.send(0, ConnectionCloseOk {});
                self.finish(REPLY_SUCCESS, "closed by client during handshake".into(), true);
            }
            (state, m) => {
                let expected = match state {
                    State::StartOk => "connection.start-ok",
                    State::TuneOk => "connection.tune-ok",
                    _ => "connection.open",
                };
                let e = AmqpError::new(COMMAND_INVALID, format!("expected '{expected}', got '{}'", m.name()));
                self.fail(now, e.on(&m), broker);
            }
        }
    }

    /// Applies tune-ok the way RabbitMQ does: 0 means "the server's limit", and a client may
    /// lower but not raise a limit.
    fn negotiate(&mut self, channel_max: u16, frame_max: u32, heartbeat: u16) -> Result<(), AmqpError> {
        let max = self.config.frame_max;
        if frame_max != 0 && frame_max < warren_codec::FRAME_MIN_SIZE {
            let text = format!("frame_max={frame_max} < {} min size", warren_codec::FRAME_MIN_SIZE);
            return Err(AmqpError::new(NOT_ALLOWED, text));
        }
        if frame_max > max {
            return Err(AmqpError::new(NOT_ALLOWED, format!("frame_max={frame_max} > {max} max size")));
        }
        let cmax = self.config.channel_max;
        if channel_max > cmax {
            let text = format!(
                "negotiated channel_max = {channel_max} is higher than the maximum allowed value ({cmax})"
            );
            return Err(AmqpError::new(NOT_ALLOWED, text));
        }
        self.frame_max = if frame_max == 0 { max } else { frame_max };
        self.channel_max = if channel_max == 0 { cmax } else { channel_max };
        self.heartbeat = (heartbeat > 0).then(|| Duration::from_secs(u64::from(heartbeat)));
        Ok(())
    }

    fn running_frame(&mut self, now: Instant, frame: Frame, broker: &mut Broker) {
        let Some(id) = self.id else {
            return;
        };
        let channel = frame.channel();
        if let Frame::Heartbeat { channel } = frame {
            if channel != 0 {
                // RabbitMQ answers this with unexpected_frame, not frame_error.
                let e = AmqpError::new(UNEXPECTED_FRAME, format!("heartbeat frame on channel {channel}"));
                self.fail(now, e, broker);
            }
            return;
        }
        if channel == 0 {
            return match frame {
                Frame::Method { method, .. } => self.connection_method(now, method, broker),
                _ => {
                    let e = AmqpError::new(UNEXPECTED_FRAME, "content frame on channel 0");
                    self.fail(now, e, broker)
                }
            };
        }
        let Some(phase) = self.channels.get_mut(&channel) else {
            return match frame {
                // As RabbitMQ: channel_max bounds how many channels are open, not their numbers.
                Frame::Method { method: Method::ChannelOpen(_), .. }
                    if self.channels.len() >= usize::from(self.channel_max) =>
                {
                    let text = format!(
                        "number of channels opened ({}) has reached the negotiated channel_max ({})",
                        self.channels.len(),
                        self.channel_max
                    );
                    let e = AmqpError::new(NOT_ALLOWED, text).on(&Method::ChannelOpen(Default::default()));
                    self.fail(now, e, broker)
                }
                Frame::Method { method: Method::ChannelOpen(_), .. } => {
                    self.channels.insert(channel, Phase::Idle);
                    broker.open_channel(id, channel);
                }
                other => {
                    let e = AmqpError::new(CHANNEL_ERROR, "expected 'channel.open'");
                    let e = match &other {
                        Frame::Method { method, .. } => e.on(method),
                        _ => e,
                    };
                    self.fail(now, e, broker)
                }
            };
        };
        // The phase changes in place: a publish is three frames, and each used to cost a map
        // insert or two on top of the lookup.
        match (&mut *phase, frame) {
            (Phase::Closing, Frame::Method { method: Method::ChannelCloseOk(_), .. }) => {
                self.channels.remove(&channel);
            }
            (Phase::Closing, Frame::Method { method: Method::ChannelClose(_), .. }) => {
                // Both sides closed at once: answer (after our close, already in the broker's
                // output), and wait for the close-ok the client owes for ours, which must not
                // look like a frame on a channel never opened.
                self.pull_outbound(now, broker);
                self.send(channel, warren_codec::ChannelCloseOk {});
            }
            (Phase::Closing, Frame::Method { method: Method::ChannelOpen(_), .. }) => {
                // A client that took our close for done and opens the number again.
                *phase = Phase::Idle;
                broker.open_channel(id, channel);
            }
            // After we sent channel.close, everything else on it is discarded (spec 4.2.3).
            (Phase::Closing, _) => {}
            (Phase::Idle, Frame::Method { method: Method::BasicPublish(p), .. }) => {
                *phase = Phase::AwaitingHeader(p);
            }
            (Phase::Idle, Frame::Method { method, .. }) => self.channel_method(now, channel, method, broker),
            (Phase::AwaitingHeader(publish), Frame::Header { header, .. }) => {
                let publish = std::mem::take(publish);
                if header.body_size > MAX_MESSAGE_SIZE {
                    let text = format!(
                        "message size {} is larger than configured max size {MAX_MESSAGE_SIZE}",
                        header.body_size
                    );
                    let e = AmqpError::new(PRECONDITION_FAILED, text).on(&Method::BasicPublish(publish));
                    return self.channel_error(now, channel, e, broker);
                }
                if header.body_size == 0 {
                    *phase = Phase::Idle;
                    return self.complete_publish(now, channel, publish, header, Bytes::new(), broker);
                }
                // Messages assembled at once on other channels count too: 2 047 channels of
                // 128 MiB each would be 256 GiB. Small bodies skip the sum (the hot path);
                // together they stay under 2 047 × SMALL_BODY.
                if header.body_size > SMALL_BODY {
                    let others: u64 = self
                        .channels
                        .values()
                        .map(|p| match p {
                            Phase::AwaitingBody(a) => a.header.body_size,
                            _ => 0,
                        })
                        .sum();
                    if others + header.body_size > MAX_CONTENT_IN_FLIGHT {
                        let text = format!(
                            "message size {} with {others} octets of other messages still arriving on this \
                             connection is over {MAX_CONTENT_IN_FLIGHT}",
                            header.body_size
                        );
                        let e = AmqpError::new(PRECONDITION_FAILED, text).on(&Method::BasicPublish(publish));
                        return self.channel_error(now, channel, e, broker);
                    }
                    if let Some(phase) = self.channels.get_mut(&channel) {
                        *phase =
                            Phase::AwaitingBody(Assembly { publish, header, body: Body::Empty, received: 0 });
                    }
                    return;
                }
                *phase = Phase::AwaitingBody(Assembly { publish, header, body: Body::Empty, received: 0 });
            }
            (Phase::AwaitingBody(a), Frame::Body { payload, .. }) => {
                a.received += payload.len() as u64;
                a.body.push(payload);
                if a.received > a.header.body_size {
                    let text = format!(
                        "received {} body octets, header announced {}",
                        a.received, a.header.body_size
                    );
                    return self.fail(now, AmqpError::new(UNEXPECTED_FRAME, text), broker);
                }
                if a.received < a.header.body_size {
                    return;
                }
                let Phase::AwaitingBody(a) = std::mem::replace(phase, Phase::Idle) else {
                    return;
                };
                self.complete_publish(now, channel, a.publish, a.header, a.body.join(), broker);
            }
            (Phase::AwaitingHeader(_), other) => {
                let text = format!(
                    "expected content header for class 60 on channel {channel}, got {}",
                    describe(&other)
                );
                // Attributed to basic.publish, as RabbitMQ does.
                let e = AmqpError { class_id: 60, method_id: 40, ..AmqpError::new(UNEXPECTED_FRAME, text) };
                self.fail(now, e, broker);
            }
            (Phase::AwaitingBody(a), other) => {
                let text = format!(
                    "expected a content body frame on channel {channel} ({} of {} octets received), got {}",
                    a.received,
                    a.header.body_size,
                    describe(&other)
                );
                let e = AmqpError::new(UNEXPECTED_FRAME, text);
                self.fail(now, e, broker);
            }
            (Phase::Idle, _) => {
                let e = AmqpError::new(
                    UNEXPECTED_FRAME,
                    format!("expected a method frame on channel {channel}, got a content frame"),
                );
                self.fail(now, e, broker);
            }
        }
    }

    fn channel_method(&mut self, now: Instant, channel: u16, method: Method, broker: &mut Broker) {
        let Some(id) = self.id else {
            return;
        };
        let r = match method {
            Method::ChannelOpen(_) => {
                let e = AmqpError::new(CHANNEL_ERROR, "second 'channel.open' seen");
                return self.fail(now, e.on(&method), broker);
            }
            Method::ChannelClose(_) => {
                self.channels.remove(&channel);
                broker.close_channel(id, channel);
                return;
            }
            // A close-ok for a close we never sent: nothing to do.
            Method::ChannelCloseOk(_) => return,
            m if m.ids().0 == 10 => {
                let e = AmqpError::new(COMMAND_INVALID, format!("{} on channel {channel}", m.name()));
                Err(e.on(&m))
            }
            m => broker.handle_method(id, channel, m),
        };
        if let Err(e) = r {
            self.channel_error(now, channel, e, broker);
        }
    }

    fn complete_publish(
        &mut self,
        now: Instant,
        channel: u16,
        publish: BasicPublish,
        header: ContentHeader,
        body: Bytes,
        broker: &mut Broker,
    ) {
        let Some(id) = self.id else {
            return;
        };
        if let Err(e) = broker.publish(id, channel, publish, header.properties, body) {
            self.channel_error(now, channel, e, broker);
        }
    }

    /// A soft error closes the channel, a hard one the connection.
    fn channel_error(&mut self, now: Instant, channel: u16, e: AmqpError, broker: &mut Broker) {
        if e.is_hard() {
            return self.fail(now, e, broker);
        }
        if let Some(id) = self.id {
            broker.channel_error(id, channel, &e);
        }
        self.channels.insert(channel, Phase::Closing);
    }

    fn connection_method(&mut self, now: Instant, method: Method, broker: &mut Broker) {
        match method {
            Method::ConnectionClose(m) => {
                self.pull_outbound(now, broker);
                self.send(0, ConnectionCloseOk {});
                self.finish(m.reply_code, m.reply_text, true);
                self.release(broker);
            }
            Method::ConnectionUpdateSecret(_) => self.send(0, ConnectionUpdateSecretOk {}),
            // Only meaningful from server to client; a client sending them changes nothing.
            Method::ConnectionBlocked(_) | Method::ConnectionUnblocked(_) | Method::ConnectionCloseOk(_) => {}
            m => {
                let e = AmqpError::new(COMMAND_INVALID, format!("unexpected {} on channel 0", m.name()));
                self.fail(now, e.on(&m), broker);
            }
        }
    }

    fn closing_frame(&mut self, frame: Frame, broker: &mut Broker) {
        match frame {
            Frame::Method { channel: 0, method: Method::ConnectionCloseOk(_) } => {
                self.state = State::Closed;
                self.release(broker);
            }
            Frame::Method { channel: 0, method: Method::ConnectionClose(_) } => {
                self.send(0, ConnectionCloseOk {});
                self.state = State::Closed;
                self.release(broker);
            }
            _ => {}
        }
    }

    /// Sends connection.close for a hard error and waits for close-ok. Channels are released
    /// at once, so unacked messages go back to their queues without waiting on the client.
    fn fail(&mut self, now: Instant, e: AmqpError, broker: &mut Broker) {
        if matches!(self.state, State::Closing { .. } | State::Closed) {
            return;
        }
        self.pull_outbound(now, broker);
        self.release(broker);
        let close = ConnectionClose {
            reply_code: e.code,
            reply_text: e.text.clone(),
            class_id: e.class_id,
            method_id: e.method_id,
        };
        self.send(0, close);
        self.events.push_back(Event::Closed { code: e.code, text: e.text, by_peer: false });
        self.state = State::Closing { deadline: now + self.config.close_timeout };
    }

    fn finish(&mut self, code: u16, text: String, by_peer: bool) {
        self.events.push_back(Event::Closed { code, text, by_peer });
        self.state = State::Closed;
    }

    fn release(&mut self, broker: &mut Broker) {
        if let Some(id) = self.id.take() {
            broker.disconnect(id);
        }
        self.channels.clear();
    }

    fn send(&mut self, channel: u16, method: impl Into<Method>) {
        self.encode_pending();
        Frame::method(channel, method).encode(&mut self.output);
        self.mark_sent();
    }

    fn mark_sent(&mut self) {
        self.last_send = self.now;
    }
}

/// The reply-code name for logs, e.g. `NOT_FOUND`.
pub fn code_name(code: u16) -> &'static str {
    reply_code::name(code)
}

/// The connection error for bytes that did not decode, naming the method when known.
fn codec_error(e: warren_codec::CodecError) -> AmqpError {
    let (class_id, method_id) = e.method_ids().unwrap_or((0, 0));
    AmqpError { class_id, method_id, ..AmqpError::new(e.reply_code(), e) }
}

/// A frame in a few words, for error texts.
fn describe(f: &Frame) -> String {
    match f {
        Frame::Method { method, .. } => method.name().to_string(),
        Frame::Header { header, .. } => format!("a content header ({} octets)", header.body_size),
        Frame::Body { payload, .. } => format!("a body frame ({} octets)", payload.len()),
        Frame::Heartbeat { .. } => "a heartbeat".into(),
    }
}

fn server_properties() -> FieldTable {
    let mut caps = FieldTable::new();
    for cap in [
        "publisher_confirms",
        "exchange_exchange_bindings",
        "basic.nack",
        "consumer_cancel_notify",
        "connection.blocked",
        "per_consumer_qos",
        "authentication_failure_close",
    ] {
        caps.insert(cap.into(), FieldValue::Bool(true));
    }
    let mut p = FieldTable::new();
    p.insert("capabilities".into(), FieldValue::Table(caps));
    p.insert("product".into(), FieldValue::str("Warren"));
    p.insert("version".into(), FieldValue::str(env!("CARGO_PKG_VERSION")));
    p.insert("platform".into(), FieldValue::str("Rust"));
    p.insert("cluster_name".into(), FieldValue::str("warren"));
    p.insert("information".into(), FieldValue::str("A message broker that speaks AMQP 0-9-1"));
    p
}

#[cfg(test)]
mod tests {
    #![allow(clippy::disallowed_methods)] // one real Instant to start the virtual clock from

    use warren_codec::{BasicGet, BasicNack, BasicProperties, ChannelOpen, QueueDeclare, decode_frame};

    use super::*;
    use crate::broker::BrokerConfig;

    /// A connection past connection.open, with channel 1 open.
    fn open(broker: &mut Broker, now: Instant) -> Connection {
        let mut conn = Connection::new(ConnectionConfig::default(), true, now);
        conn.read_buf().extend_from_slice(&guest_handshake(131_072));
        conn.handle_input(now, broker);
        let _ = conn.take_output();
        assert!(conn.id().is_some());
        conn
    }

    #[test]
    fn large_messages_assembled_at_once_are_bounded_per_connection() {
        let now = Instant::now();
        let mut broker = Broker::new(BrokerConfig::default(), now);
        let mut conn = open(&mut broker, now);
        let mut input = BytesMut::new();
        for ch in 2..=3 {
            Frame::method(ch, ChannelOpen::default()).encode(&mut input);
        }
        // Three 100 MiB messages announced, no body sent yet: the third goes over 256 MiB.
        for ch in 1..=3 {
            Frame::method(ch, BasicPublish { routing_key: "q".into(), ..Default::default() })
                .encode(&mut input);
            let header = ContentHeader { class_id: 60, body_size: 100 << 20, properties: Default::default() };
            Frame::Header { channel: ch, header }.encode(&mut input);
        }
        conn.read_buf().extend_from_slice(&input);
        conn.handle_input(now, &mut broker);
        let mut out = conn.take_output();
        let mut closes = Vec::new();
        while let Ok(Some(f)) = decode_frame(&mut out, 0) {
            if let Frame::Method { channel, method: Method::ChannelClose(c) } = f {
                closes.push((channel, c.reply_code));
            }
        }
        assert_eq!(closes, [(3, 406)], "only the channel that went over is closed");
        assert!(!conn.is_closed());
    }

    #[test]
    fn pipelined_gets_of_a_large_message_are_encoded_a_chunk_at_a_time() {
        let now = Instant::now();
        let mut broker = Broker::new(BrokerConfig::default(), now);
        let mut conn = open(&mut broker, now);
        let mut input = BytesMut::new();
        Frame::method(1, QueueDeclare { queue: "big".into(), ..Default::default() }).encode(&mut input);
        let body = Bytes::from(vec![7u8; 512 << 10]);
        let publish = BasicPublish { routing_key: "big".into(), ..Default::default() };
        encode_content(&mut input, 1, publish, &BasicProperties::default(), &body, 131_072);
        // get, then nack with requeue, 40 times: 40 copies of 512 KiB if encoded at once.
        for tag in 1..=40 {
            Frame::method(1, BasicGet { queue: "big".into(), ..Default::default() }).encode(&mut input);
            Frame::method(1, BasicNack { delivery_tag: tag, multiple: false, requeue: true })
                .encode(&mut input);
        }
        conn.read_buf().extend_from_slice(&input);
        conn.handle_input(now, &mut broker);
        let (mut gets, mut largest, mut all) = (0, 0, BytesMut::new());
        while conn.has_output() {
            let out = conn.take_output();
            largest = largest.max(out.len());
            all.extend_from_slice(&out);
        }
        while let Ok(Some(f)) = decode_frame(&mut all, 0) {
            gets += usize::from(matches!(f, Frame::Method { method: Method::BasicGetOk(_), .. }));
        }
        assert_eq!(gets, 40, "every get answered, in order");
        assert!(largest < OUTPUT_CHUNK + (600 << 10), "one take held {largest} octets");
    }
}
