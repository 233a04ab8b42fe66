//! QUIC beyond v1: one stream per AMQP channel (see `QUIC.md`). A channel is bound to the
//! stream its channel.open arrived on; every frame for it, both ways, uses that stream. Each
//! stream has its own reader and writer task, so a client that stops reading one channel's
//! stream stalls that channel only: QUIC flow control applies per stream, and the writer task
//! holds what the broker sent meanwhile (bounded by the channel's prefetch in practice).

use std::collections::HashMap;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use warren_codec::reply_code::{CHANNEL_ERROR, UNEXPECTED_FRAME};
use warren_codec::{CodecError, Frame, Method, decode_frame, split_encoded};

/// The first 8 octets of a channel stream; the connection stream's id (u64) follows.
pub const PREAMBLE: &[u8; 8] = b"AMQPCH\x00\x01";

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
    events: mpsc::UnboundedReceiver<StreamEvent>,
    events_tx: mpsc::UnboundedSender<StreamEvent>,
    writers: HashMap<usize, mpsc::UnboundedSender<Bytes>>,
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
    pub fn new(
        events: mpsc::UnboundedReceiver<StreamEvent>,
        events_tx: mpsc::UnboundedSender<StreamEvent>,
    ) -> Self {
        ChannelStreams {
            events,
            events_tx,
            writers: HashMap::new(),
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
                self.writers.insert(n, tx);
                self.inputs.insert(n, BytesMut::new());
                let events = self.events_tx.clone();
                tokio::spawn(async move {
                    let mut chunk = vec![0u8; 16 * 1024];
                    loop {
                        match recv.read(&mut chunk).await {
                            Ok(Some(k)) => {
                                if events
                                    .send(StreamEvent::Data(n, Bytes::copy_from_slice(&chunk[..k])))
                                    .is_err()
                                {
                                    break;
                                }
                            }
                            _ => {
                                let _ = events.send(StreamEvent::Ended(n));
                                break;
                            }
                        }
                    }
                });
                tokio::spawn(async move {
                    while let Some(bytes) = rx.recv().await {
                        if send.write_all(&bytes).await.is_err() {
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
                    let _ = w.send(frame);
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

/// Whether an encoded frame is channel.close-ok (method frame, class 20, method 41).
fn is_close_ok(frame: &[u8]) -> bool {
    frame.len() >= 11 && frame[0] == 1 && frame[7..11] == [0, 20, 0, 41]
}
