//! The per-connection AMQP machine: bytes and `now` in, bytes out. No I/O, no clock.
//!
//! ```text
//!  ProtocolHeader ─► Handshake(Start ─► Tune ─► Open) ─► Running ─┬─► Closed   (client close, EOF)
//!        │                                                         └─► Closing ─► Closed (server close)
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
//!
//! One input door ([`Connection::handle_input`] and its siblings for frames, timeouts and
//! EOF), one output door ([`Connection::take_output`]); the parts each live in a file:
//! `handshake` (start → tune → open), `running` (an open connection's frames), `content`
//! (assembling publishes), `timers` (heartbeats, deadlines), `close`, and `output`.

mod close;
mod content;
mod handshake;
mod output;
mod running;
mod timers;

use content::Phase;
pub use handshake::{guest_handshake, guest_handshake_to};

use crate::hash::Map;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use warren_codec::reply_code::{self};
use warren_codec::{Frame, PROTOCOL_HEADER, decode_frame};

use crate::broker::{Broker, ConnId};
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

#[derive(Debug, PartialEq)]
enum State {
    ProtocolHeader,
    Handshake(handshake::Handshake),
    Running,
    Closing { deadline: Instant },
    Closed,
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
    external: Option<String>,
    /// How the management API and the logs name it (`peer -> local`, as RabbitMQ).
    name: String,
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
            external: None,
            name: String::new(),
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

    /// Names the connection as the management API shows it (`peer -> local`, RabbitMQ's
    /// form); the driver knows the addresses.
    pub fn with_name(mut self, name: String) -> Self {
        self.name = name;
        self
    }

    /// The buffer the driver reads socket bytes into.
    pub fn read_buf(&mut self) -> &mut BytesMut {
        &mut self.input
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
        self.last_recv = now;
        self.resume_input(now, broker);
    }

    /// Acts on frames read before and held while the cluster answered a change: the input
    /// of [`Connection::handle_input`] without new bytes (the peer is not heard from anew).
    pub fn resume_input(&mut self, now: Instant, broker: &mut Broker) {
        self.now = now;
        loop {
            match &self.state {
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
                }
                State::Running | State::Closing { .. } => {
                    if self.paused(broker) {
                        break;
                    }
                    self.decode_input();
                    if self.decoded.is_empty() && self.decode_error.is_none() {
                        break;
                    }
                    let mut decoded = std::mem::take(&mut self.decoded);
                    let mut frames = decoded.drain(..);
                    for frame in frames.by_ref() {
                        self.handle_frame(now, frame, broker);
                        if self.paused(broker) {
                            break;
                        }
                    }
                    // What a paused connection did not get to waits, in order, for its answer.
                    let rest: Vec<Frame> = frames.collect();
                    decoded.extend(rest);
                    self.decoded = decoded;
                    if self.paused(broker) {
                        break;
                    }
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
        let mut frames = frames.into_iter();
        if !self.paused(broker) && self.decoded.is_empty() {
            for frame in frames.by_ref() {
                if self.state == State::Closed {
                    break;
                }
                self.handle_frame(now, frame, broker);
                if self.paused(broker) {
                    break;
                }
            }
        }
        // Behind a change the cluster has not answered: kept, in order, for `handle_input`.
        if self.state != State::Closed {
            self.decoded.extend(frames);
        }
        self.pull_outbound(now, broker);
    }

    /// Whether this connection waits for the cluster to answer a change it asked for: until
    /// then it acts on no more frames (what follows may depend on the change), and reads none.
    fn paused(&self, broker: &Broker) -> bool {
        self.state == State::Running && self.id.is_some_and(|id| broker.awaits_cluster(id))
    }

    /// Whether decoded frames wait to be acted on: the driver calls
    /// [`Connection::resume_input`] once the connection is woken.
    pub fn has_pending_input(&self) -> bool {
        !self.decoded.is_empty()
    }

    /// Closes the connection for bytes that did not decode on another stream of it.
    pub fn handle_codec_error(&mut self, now: Instant, e: warren_codec::CodecError, broker: &mut Broker) {
        let err = codec_error(e);
        self.fail(now, err, broker);
    }

    /// The negotiated frame-max, for decoding frames that arrive on other streams.
    pub fn frame_max(&self) -> u32 {
        self.frame_max
    }

    /// Whether the driver should read from the socket now: not while a resource alarm blocks
    /// publishers and this connection has published (RabbitMQ's flow control by backpressure).
    pub fn may_read(&self, broker: &Broker) -> bool {
        let blocked = self.state == State::Running && self.id.is_some_and(|id| broker.is_blocked(id));
        !(blocked || self.paused(broker))
    }

    fn handle_frame(&mut self, now: Instant, frame: Frame, broker: &mut Broker) {
        match &self.state {
            State::Closed | State::ProtocolHeader => {}
            State::Closing { .. } => self.closing_frame(frame, broker),
            State::Handshake(_) => self.handshake_frame(now, frame, broker),
            State::Running => self.running_frame(now, frame, broker),
        }
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

#[cfg(test)]
mod tests {
    #![allow(clippy::disallowed_methods)] // one real Instant to start the virtual clock from

    use bytes::Bytes;
    use warren_codec::{
        BasicGet, BasicNack, BasicProperties, BasicPublish, ChannelOpen, ContentHeader, Method, QueueDeclare,
        decode_frame, encode_content,
    };

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
    fn the_vhost_a_handshake_opens_is_seen_before_the_broker_is_chosen() {
        let now = Instant::now();
        let whole = super::guest_handshake(131_072);
        let mut conn = Connection::new(ConnectionConfig::default(), true, now);
        // The protocol header and part of start-ok: no open yet.
        let cut = 8 + 10;
        conn.read_buf().extend_from_slice(&whole[..cut]);
        assert_eq!(conn.opening_vhost(), None);
        conn.read_buf().extend_from_slice(&whole[cut..]);
        assert_eq!(conn.opening_vhost().as_deref(), Some("/"), "pipelined up to connection.open");
        let mut broker = Broker::new(BrokerConfig { vhost: "a".into(), ..Default::default() }, now);
        conn.handle_input(now, &mut broker);
        assert_eq!(conn.id(), None, "a broker that does not serve / refuses it");
        let mut out = conn.take_output();
        let mut refused = None;
        while let Ok(Some(f)) = decode_frame(&mut out, 0) {
            if let Frame::Method { method: Method::ConnectionClose(c), .. } = f {
                refused = Some(c.reply_code);
            }
        }
        assert_eq!(refused, Some(530));
        let mut conn = Connection::new(ConnectionConfig::default(), true, now);
        conn.read_buf().extend_from_slice(&whole);
        conn.handle_input(now, &mut Broker::new(BrokerConfig::default(), now));
        assert!(conn.id().is_some());
        assert_eq!(conn.opening_vhost(), None, "an open connection opens nothing");
        // A frame announced larger than what arrived hides what is behind it; so does junk.
        let mut conn = Connection::new(ConnectionConfig::default(), true, now);
        let mut trickle = BytesMut::from(&warren_codec::PROTOCOL_HEADER[..]);
        trickle.extend_from_slice(&[1, 0, 0, 0, 1, 0, 0, 0, 10]);
        conn.read_buf().extend_from_slice(&trickle);
        assert_eq!(conn.opening_vhost(), None);
        let mut conn = Connection::new(ConnectionConfig::default(), true, now);
        conn.read_buf().extend_from_slice(&[0xff; 64]);
        assert_eq!(conn.opening_vhost(), None);
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
