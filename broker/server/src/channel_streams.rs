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
//! A stream's writer that makes no progress for the write timeout resets its stream; writers
//! and readers end with the connection (this owner dropped), and an ended stream's writer
//! counts against the connection until it has written or failed.
//!
//! Input is paced too: the readers hand what they read to the connection's task through a
//! queue of [`EVENTS_MAX`] chunks and stop reading while it is full, which QUIC flow control
//! passes on to the client; under a resource alarm the connection's task stops taking from
//! that queue, so publishes on channel streams wait like those on the connection stream.
//! New streams arrive apart from that queue (QUIC bounds how many are open at once), so a
//! busy or blocked connection still takes them.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
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

/// A channel stream the client opened for an AMQP connection: its two halves.
pub type Opened = (quinn::RecvStream, quinn::SendStream);

/// What one stream's writer holds, shared by [`ChannelStreams`] and the writer task.
#[derive(Default)]
struct Backlog {
    octets: AtomicUsize,
    /// The stream failed (reset by the client, or no progress for the write timeout): what is
    /// sent to it is dropped.
    closed: AtomicBool,
    /// Its channels' deliveries are held back (see [`ChannelStreams::holds`]).
    held: AtomicBool,
    /// Told after every write, for the stream's reader.
    drained: tokio::sync::Notify,
}

impl Backlog {
    fn over(&self) -> bool {
        self.octets.load(Ordering::SeqCst) > STREAM_BACKLOG_MAX && !self.closed.load(Ordering::SeqCst)
    }

    fn low(&self) -> bool {
        self.octets.load(Ordering::SeqCst) <= STREAM_BACKLOG_MAX / 2 || self.closed.load(Ordering::SeqCst)
    }

    /// Nothing more will be written: nothing to wait for.
    fn done(&self) -> bool {
        self.octets.load(Ordering::SeqCst) == 0 || self.closed.load(Ordering::SeqCst)
    }
}

struct Writer {
    /// `None` once the stream ended: the task writes what it has, then stops.
    tx: Option<mpsc::UnboundedSender<Bytes>>,
    backlog: Arc<Backlog>,
}

/// Wakes the connection's task for its channel streams.
#[derive(Default)]
struct Signals {
    /// A held stream's backlog fell to half: its channels may have deliveries again.
    released: tokio::sync::Notify,
    /// Some writer wrote something.
    progress: tokio::sync::Notify,
}

/// See [`ChannelStreams::released`].
pub struct Released(Arc<Signals>);

impl Released {
    /// Completes at the next release.
    pub async fn wait(&self) {
        self.0.released.notified().await
    }
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

/// The channel streams of one AMQP connection. Dropping it ends their tasks.
pub struct ChannelStreams {
    opened: mpsc::UnboundedReceiver<Opened>,
    events: mpsc::Receiver<StreamEvent>,
    events_tx: mpsc::Sender<StreamEvent>,
    writers: HashMap<usize, Writer>,
    signals: Arc<Signals>,
    write_timeout: Duration,
    tasks: Vec<tokio::task::AbortHandle>,
    inputs: HashMap<usize, BytesMut>,
    bound: HashMap<u16, usize>,
    /// Channels whose deliveries the broker was told to hold back.
    held: HashSet<u16>,
    /// Channels whose stream ended: what is still sent for them is dropped (it must not land
    /// on the connection stream) until the number is opened again.
    orphaned: HashSet<u16>,
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

impl Drop for ChannelStreams {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl ChannelStreams {
    /// Channel streams arriving on `opened` (from the QUIC connection's task), their writers
    /// giving up after `write_timeout` without progress.
    pub fn new(opened: mpsc::UnboundedReceiver<Opened>, write_timeout: Duration) -> Self {
        let (events_tx, events) = mpsc::channel(EVENTS_MAX);
        ChannelStreams {
            opened,
            events,
            events_tx,
            writers: HashMap::new(),
            signals: Arc::default(),
            write_timeout,
            tasks: Vec::new(),
            inputs: HashMap::new(),
            bound: HashMap::new(),
            held: HashSet::new(),
            orphaned: HashSet::new(),
            next: 1,
        }
    }

    /// The next event.
    pub async fn recv(&mut self) -> Option<StreamEvent> {
        tokio::select! {
            biased;
            Some((recv, send)) = self.opened.recv() => Some(StreamEvent::Opened(recv, send)),
            e = self.events.recv() => e,
        }
    }

    /// Acts on an event; `frame_max` bounds frames as on the connection stream.
    pub fn handle(&mut self, event: StreamEvent, frame_max: u32) -> Input {
        match event {
            StreamEvent::Opened(recv, send) => {
                let n = self.next;
                self.next += 1;
                let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
                let backlog = Arc::new(Backlog::default());
                self.writers.insert(n, Writer { tx: Some(tx), backlog: backlog.clone() });
                self.inputs.insert(n, BytesMut::new());
                self.tasks.retain(|t| !t.is_finished());
                let reader = tokio::spawn(read_stream(n, recv, self.events_tx.clone(), backlog.clone()));
                let (signals, events) = (self.signals.clone(), self.events_tx.clone());
                let writer =
                    tokio::spawn(write_stream(n, send, rx, backlog, signals, events, self.write_timeout));
                self.tasks.extend([reader.abort_handle(), writer.abort_handle()]);
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
                                    self.orphaned.remove(&ch);
                                    // A new channel: held by the next `holds` if its stream is.
                                    self.held.remove(&ch);
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
                                self.held.remove(&ch);
                            }
                            frames.push(f);
                        }
                        Ok(None) => return Input::Frames(frames),
                        Err(e) => return Input::Error(e),
                    }
                }
            }
            StreamEvent::Ended(n) => {
                // The writer finishes what it holds (and still counts) before it stops.
                if let Some(w) = self.writers.get_mut(&n) {
                    w.tx = None;
                }
                self.inputs.remove(&n);
                let gone: Vec<u16> = self.bound.iter().filter(|(_, s)| **s == n).map(|(c, _)| *c).collect();
                for c in &gone {
                    self.bound.remove(c);
                    self.held.remove(c);
                    self.orphaned.insert(*c);
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
            if self.orphaned.contains(&channel) {
                // The channel's open-ok starts its next life (opened on the connection stream).
                if !is_method(&frame, 20, 11) {
                    continue;
                }
                self.orphaned.remove(&channel);
            }
            let writer = self.bound.get(&channel).and_then(|n| self.writers.get(n));
            match writer.and_then(|w| Some((w.tx.as_ref()?, &w.backlog))) {
                Some((tx, backlog)) if channel != 0 => {
                    if !backlog.closed.load(Ordering::SeqCst) {
                        let len = frame.len();
                        backlog.octets.fetch_add(len, Ordering::SeqCst);
                        if tx.send(frame).is_err() {
                            backlog.octets.fetch_sub(len, Ordering::SeqCst);
                        }
                    }
                }
                _ => main.extend_from_slice(&frame),
            }
            // Our close-ok ends the channel: its number is free again, on any stream.
            if closes {
                self.bound.remove(&channel);
                self.held.remove(&channel);
            }
        }
        main
    }

    /// Which channels' deliveries to hold back (`true`) or let go again (`false`), by how much
    /// their streams' writers hold; each change is reported once.
    pub fn holds(&mut self) -> Vec<(u16, bool)> {
        // Ended streams whose writers are done are forgotten.
        self.writers.retain(|_, w| w.tx.is_some() || !w.backlog.done());
        for w in self.writers.values() {
            let b = &w.backlog;
            if b.held.load(Ordering::SeqCst) {
                if b.low() {
                    b.held.store(false, Ordering::SeqCst);
                }
            } else if b.over() {
                b.held.store(true, Ordering::SeqCst);
                // The writer may have drained in between and seen nothing held: look again.
                if b.low() {
                    b.held.store(false, Ordering::SeqCst);
                }
            }
        }
        let mut changes = Vec::new();
        for (c, n) in &self.bound {
            let want = self.writers.get(n).is_some_and(|w| w.backlog.held.load(Ordering::SeqCst));
            if want != self.held.contains(c) {
                changes.push((*c, want));
            }
        }
        for (c, want) in &changes {
            if *want {
                self.held.insert(*c);
            } else {
                self.held.remove(c);
            }
        }
        changes
    }

    /// What tells the connection's task that a held stream's client has read enough that
    /// [`ChannelStreams::holds`] may let its channels go; it borrows nothing of this.
    pub fn released(&self) -> Released {
        Released(self.signals.clone())
    }

    /// Waits while the streams hold more than [`CONNECTION_BACKLOG_MAX`] octets in all; fails
    /// with `TimedOut` when none makes progress for `timeout`, as a socket write does.
    pub async fn wait_for_room(&self, timeout: Duration) -> std::io::Result<()> {
        loop {
            let progress = self.signals.progress.notified();
            let total: usize = self.writers.values().map(|w| w.backlog.octets.load(Ordering::SeqCst)).sum();
            if total <= CONNECTION_BACKLOG_MAX || self.writers.values().all(|w| w.backlog.done()) {
                return Ok(());
            }
            if tokio::time::timeout(timeout, progress).await.is_err() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("the client read nothing from its channel streams for {timeout:?}"),
                ));
            }
        }
    }
}

/// Reads one channel stream into the connection's queue, pausing while its writer holds more
/// than [`STREAM_BACKLOG_MAX`] for a client that does not read its answers.
async fn read_stream(
    n: usize,
    mut recv: quinn::RecvStream,
    events: mpsc::Sender<StreamEvent>,
    backlog: Arc<Backlog>,
) {
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        loop {
            let drained = backlog.drained.notified();
            if !backlog.over() {
                break;
            }
            drained.await;
        }
        match recv.read(&mut chunk).await {
            Ok(Some(k)) => {
                let data = Bytes::copy_from_slice(chunk.get(..k).unwrap_or_default());
                // Waits while the connection's task is behind: no more is read.
                if events.send(StreamEvent::Data(n, data)).await.is_err() {
                    return;
                }
            }
            _ => {
                let _ = events.send(StreamEvent::Ended(n)).await;
                return;
            }
        }
    }
}

/// Writes what the connection routes to channel stream `n`. A write that makes no progress for
/// `timeout` resets the stream and ends it for the connection (its channels are closed, their
/// unacked messages requeued, as when a TCP client stops reading); what is still queued is
/// dropped and uncounted.
async fn write_stream(
    n: usize,
    mut send: quinn::SendStream,
    mut rx: mpsc::UnboundedReceiver<Bytes>,
    backlog: Arc<Backlog>,
    signals: Arc<Signals>,
    events: mpsc::Sender<StreamEvent>,
    timeout: Duration,
) {
    while let Some(bytes) = rx.recv().await {
        let failed = !matches!(tokio::time::timeout(timeout, send.write_all(&bytes)).await, Ok(Ok(())));
        if failed {
            backlog.closed.store(true, Ordering::SeqCst);
            let _ = send.reset(0u32.into());
        }
        backlog.octets.fetch_sub(bytes.len(), Ordering::SeqCst);
        if failed {
            // Drain what is queued so the backlog reads zero.
            rx.close();
            while let Ok(b) = rx.try_recv() {
                backlog.octets.fetch_sub(b.len(), Ordering::SeqCst);
            }
        }
        backlog.drained.notify_waiters();
        signals.progress.notify_waiters();
        if backlog.held.load(Ordering::SeqCst) && backlog.low() {
            signals.released.notify_one();
        }
        if failed {
            let _ = events.send(StreamEvent::Ended(n)).await;
            return;
        }
    }
    let _ = send.finish();
}

/// Whether an encoded frame is channel.close-ok.
fn is_close_ok(frame: &[u8]) -> bool {
    is_method(frame, 20, 41)
}

/// Whether an encoded frame is the method `class`.`method`.
fn is_method(frame: &[u8], class: u16, method: u16) -> bool {
    let [c1, c2] = class.to_be_bytes();
    let [m1, m2] = method.to_be_bytes();
    frame.first() == Some(&1) && frame.get(7..11) == Some(&[c1, c2, m1, m2][..])
}
