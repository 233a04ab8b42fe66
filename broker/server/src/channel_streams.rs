//! QUIC beyond v1: one stream per AMQP channel (see `QUIC.md`). A channel is bound to the
//! stream its channel.open arrived on; every frame for it, both ways, uses that stream. Each
//! stream has its own reader and writer task, so a client that stops reading one channel's
//! stream stalls that channel only: QUIC flow control applies per stream.
//!
//! What a client does not read is bounded. Once a stream's writer holds more than
//! [`STREAM_BACKLOG_MAX`] octets, deliveries to its channels are held back in their queues
//! (as under channel.flow) and nothing more is read from the stream, until the client has
//! read half of it; other channels go on. Replies already owed and deliveries already taken
//! can still push a connection's streams past [`CONNECTION_BACKLOG_MAX`] in all: then the
//! connection waits for them as it waits for its own socket, and is closed after the write
//! timeout without progress.
//!
//! Input is paced too: the readers hand what they read to the connection's task through a
//! queue of [`EVENTS_MAX`] chunks and stop reading while it is full, which QUIC flow control
//! passes on to the client; under a resource alarm the connection's task stops taking from
//! that queue, so publishes on channel streams wait like those on the connection stream.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use warren_codec::reply_code::{CHANNEL_ERROR, UNEXPECTED_FRAME};
use warren_codec::{CodecError, Frame, Method, decode_frame, split_encoded};

/// The first 8 octets of a channel stream; the connection stream's id (u64) follows.
pub const PREAMBLE: &[u8; 8] = b"AMQPCH\x00\x01";

/// Octets a channel stream's writer holds for its client before that stream's channels get
/// no more deliveries and the stream is not read from; both resume at half of it.
pub const STREAM_BACKLOG_MAX: usize = 4 << 20;

/// Octets all of a connection's channel streams may hold before the connection waits.
pub const CONNECTION_BACKLOG_MAX: usize = 64 << 20;

/// Read chunks (of up to 16 KiB) waiting for the connection's task, over all its streams.
pub const EVENTS_MAX: usize = 64;

/// What one stream's writer holds, shared by [`ChannelStreams::route`] and the writer task.
#[derive(Default)]
struct Backlog {
    octets: AtomicUsize,
    /// The stream failed (the client reset it): what is sent to it is dropped.
    closed: AtomicBool,
    /// Its channels' deliveries are held back (see [`ChannelStreams::holds`]).
    held: AtomicBool,
    /// Told after every write: for the stream's reader and [`ChannelStreams::wait_for_room`].
    drained: tokio::sync::Notify,
}

impl Backlog {
    fn over(&self) -> bool {
        self.octets.load(Ordering::Acquire) > STREAM_BACKLOG_MAX && !self.closed.load(Ordering::Acquire)
    }

    fn low(&self) -> bool {
        self.octets.load(Ordering::Acquire) <= STREAM_BACKLOG_MAX / 2 || self.closed.load(Ordering::Acquire)
    }
}

struct Writer {
    tx: mpsc::UnboundedSender<Bytes>,
    backlog: Arc<Backlog>,
}

/// What happens on the channel streams of one AMQP connection.
pub enum StreamEvent {
    /// The client opened a channel stream for this connection.
    Opened(quinn::RecvStream, quinn::SendStream),
    /// Bytes arrived on stream `n`.
    Data(usize, Bytes),
    /// Stream `n` ended or was reset.
    Ended(usize),
}

/// The channel streams of one AMQP connection.
pub struct ChannelStreams {
    events: mpsc::Receiver<StreamEvent>,
    events_tx: mpsc::Sender<StreamEvent>,
    writers: HashMap<usize, Writer>,
    /// Told when a held stream's backlog fell to half: its channels may have deliveries again.
    released: Arc<tokio::sync::Notify>,
    inputs: HashMap<usize, BytesMut>,
    bound: HashMap<u16, usize>,
    next: usize,
}

/// What a channel stream's input amounted to.
pub enum Input {
    /// Frames to hand to the connection machine.
    Frames(Vec<Frame>),
    /// A frame that does not decode: the connection must close.
    Error(CodecError),
    /// A frame this stream may not carry: the connection must close with this code.
    Violation(u16, String),
    /// The stream ended: these channels are gone.
    Ended(Vec<u16>),
    /// Nothing for the machine (a stream was registered).
    Nothing,
}

impl ChannelStreams {
    /// Channel streams fed by `events` (the QUIC connection's task sends `Opened` there).
    pub fn new(events: mpsc::Receiver<StreamEvent>, events_tx: mpsc::Sender<StreamEvent>) -> Self {
        ChannelStreams {
            events,
            events_tx,
            writers: HashMap::new(),
            released: Arc::new(tokio::sync::Notify::new()),
            inputs: HashMap::new(),
            bound: HashMap::new(),
            next: 1,
        }
    }

    /// The next event.
    pub async fn recv(&mut self) -> Option<StreamEvent> {
        self.events.recv().await
    }

    /// Acts on an event; `frame_max` bounds frames as on the connection stream.
    pub fn handle(&mut self, event: StreamEvent, frame_max: u32) -> Input {
        match event {
            StreamEvent::Opened(mut recv, mut send) => {
                let n = self.next;
                self.next += 1;
                let (tx, mut rx) = mpsc::unbounded_channel::<Bytes>();
                let backlog = Arc::new(Backlog::default());
                self.writers.insert(n, Writer { tx, backlog: backlog.clone() });
                self.inputs.insert(n, BytesMut::new());
                let events = self.events_tx.clone();
                let reading = backlog.clone();
                tokio::spawn(async move {
                    let mut chunk = vec![0u8; 16 * 1024];
                    loop {
                        // A client that does not read its answers gets no more read from it.
                        loop {
                            let drained = reading.drained.notified();
                            if !reading.over() {
                                break;
                            }
                            drained.await;
                        }
                        match recv.read(&mut chunk).await {
                            Ok(Some(k)) => {
                                let data = Bytes::copy_from_slice(chunk.get(..k).unwrap_or_default());
                                // Waits while the connection's task is behind: no more is read.
                                if events.send(StreamEvent::Data(n, data)).await.is_err() {
                                    break;
                                }
                            }
                            _ => {
                                let _ = events.send(StreamEvent::Ended(n)).await;
                                break;
                            }
                        }
                    }
                });
                let released = self.released.clone();
                tokio::spawn(async move {
                    while let Some(bytes) = rx.recv().await {
                        let failed = send.write_all(&bytes).await.is_err();
                        if failed {
                            backlog.closed.store(true, Ordering::Release);
                        }
                        backlog.octets.fetch_sub(bytes.len(), Ordering::AcqRel);
                        backlog.drained.notify_waiters();
                        if backlog.held.load(Ordering::Acquire) && backlog.low() {
                            released.notify_one();
                        }
                        if failed {
                            // Drain what is queued so the backlog reads zero.
                            while let Ok(b) = rx.try_recv() {
                                backlog.octets.fetch_sub(b.len(), Ordering::AcqRel);
                            }
                            backlog.drained.notify_waiters();
                            return;
                        }
                    }
                    let _ = send.shutdown().await;
                });
                Input::Nothing
            }
            StreamEvent::Data(n, bytes) => {
                let Some(buf) = self.inputs.get_mut(&n) else {
                    return Input::Nothing;
                };
                buf.extend_from_slice(&bytes);
                let mut frames = Vec::new();
                loop {
                    match decode_frame(buf, frame_max) {
                        Ok(Some(f)) => {
                            let ch = f.channel();
                            if ch == 0 {
                                let text = "connection frames belong on the connection stream".to_string();
                                return Input::Violation(UNEXPECTED_FRAME, text);
                            }
                            match (&f, self.bound.get(&ch)) {
                                (Frame::Method { method: Method::ChannelOpen(_), .. }, None) => {
                                    self.bound.insert(ch, n);
                                }
                                (_, Some(s)) if *s == n => {}
                                // A channel's frames travel on the stream that opened it only.
                                _ => {
                                    let text = format!("channel {ch} is not open on this stream");
                                    return Input::Violation(CHANNEL_ERROR, text);
                                }
                            }
                            // The client's close-ok ends the channel: its number is free again.
                            if let Frame::Method { method: Method::ChannelCloseOk(_), .. } = f {
                                self.bound.remove(&ch);
                            }
                            frames.push(f);
                        }
                        Ok(None) => return Input::Frames(frames),
                        Err(e) => return Input::Error(e),
                    }
                }
            }
            StreamEvent::Ended(n) => {
                self.writers.remove(&n);
                self.inputs.remove(&n);
                let gone: Vec<u16> = self.bound.iter().filter(|(_, s)| **s == n).map(|(c, _)| *c).collect();
                for c in &gone {
                    self.bound.remove(c);
                }
                Input::Ended(gone)
            }
        }
    }

    /// Sends each frame of `out` to the stream its channel is bound to; returns what belongs
    /// on the connection stream (channel 0 and channels opened there).
    pub fn route(&mut self, mut out: BytesMut) -> BytesMut {
        let mut main = BytesMut::new();
        while let Some((channel, frame)) = split_encoded(&mut out) {
            let closes = is_close_ok(&frame);
            match self.bound.get(&channel).and_then(|n| self.writers.get(n)) {
                Some(w) if channel != 0 => {
                    if !w.backlog.closed.load(Ordering::Acquire) {
                        let len = frame.len();
                        w.backlog.octets.fetch_add(len, Ordering::AcqRel);
                        if w.tx.send(frame).is_err() {
                            w.backlog.octets.fetch_sub(len, Ordering::AcqRel);
                        }
                    }
                }
                _ => main.extend_from_slice(&frame),
            }
            // Our close-ok ends the channel: its number is free again, on any stream.
            if closes {
                self.bound.remove(&channel);
            }
        }
        main
    }
}

impl ChannelStreams {
    /// Which channels' deliveries to hold back (`true`) or let go again (`false`), by how much
    /// their streams' writers hold; each change is reported once.
    pub fn holds(&self) -> Vec<(u16, bool)> {
        let mut changes = Vec::new();
        for (n, w) in &self.writers {
            let b = &w.backlog;
            let held = b.held.load(Ordering::Acquire);
            let now = if held { !b.low() } else { b.over() };
            if now != held {
                b.held.store(now, Ordering::Release);
                changes.extend(self.bound.iter().filter(|(_, s)| *s == n).map(|(c, _)| (*c, now)));
            }
        }
        changes
    }

    /// Told when a held stream's client has read enough that [`ChannelStreams::holds`] may let
    /// its channels go.
    pub fn released(&self) -> Arc<tokio::sync::Notify> {
        self.released.clone()
    }

    /// Waits while the streams hold more than [`CONNECTION_BACKLOG_MAX`] octets in all; fails
    /// with `TimedOut` when the fullest makes no progress for `timeout`, as a socket write does.
    pub async fn wait_for_room(&self, timeout: Duration) -> std::io::Result<()> {
        loop {
            let total: usize = self.writers.values().map(|w| w.backlog.octets.load(Ordering::Acquire)).sum();
            let fullest = self
                .writers
                .values()
                .filter(|w| !w.backlog.closed.load(Ordering::Acquire))
                .max_by_key(|w| w.backlog.octets.load(Ordering::Acquire));
            let Some(w) = fullest.filter(|_| total > CONNECTION_BACKLOG_MAX) else {
                return Ok(());
            };
            let drained = w.backlog.drained.notified();
            if w.backlog.octets.load(Ordering::Acquire) == 0 {
                continue;
            }
            if tokio::time::timeout(timeout, drained).await.is_err() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("the client read nothing from a channel stream for {timeout:?}"),
                ));
            }
        }
    }
}

/// Whether an encoded frame is channel.close-ok (method frame, class 20, method 41).
fn is_close_ok(frame: &[u8]) -> bool {
    frame.len() >= 11 && frame[0] == 1 && frame[7..11] == [0, 20, 0, 41]
}
