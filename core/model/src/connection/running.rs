//! An open connection's frames: channel 0's methods, channel open and close, and each
//! channel's methods and content frames, by the channel's phase.

use std::time::Instant;

use bytes::Bytes;
use warren_codec::reply_code::{
    CHANNEL_ERROR, COMMAND_INVALID, NOT_ALLOWED, PRECONDITION_FAILED, UNEXPECTED_FRAME,
};
use warren_codec::{ConnectionCloseOk, ConnectionUpdateSecretOk, Frame, Method};

use super::content::{Assembly, Body};
use super::*;
use crate::broker::Broker;
use crate::command::Command;
use crate::error::AmqpError;

impl Connection {
    pub(super) fn running_frame(&mut self, now: Instant, frame: Frame, broker: &mut Broker) {
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
                    if let Err(e) = broker.apply(id, channel, Command::OpenChannel) {
                        return self.channel_error(now, channel, e, broker);
                    }
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
                if let Err(e) = broker.apply(id, channel, Command::OpenChannel) {
                    self.channel_error(now, channel, e, broker);
                }
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

    pub(super) fn channel_method(&mut self, now: Instant, channel: u16, method: Method, broker: &mut Broker) {
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
                let _ = broker.apply(id, channel, Command::CloseChannel);
                return;
            }
            // A close-ok for a close we never sent: nothing to do.
            Method::ChannelCloseOk(_) => return,
            m if m.ids().0 == 10 => {
                let e = AmqpError::new(COMMAND_INVALID, format!("{} on channel {channel}", m.name()));
                Err(e.on(&m))
            }
            // The frame becomes the command it asks for; the broker never sees AMQP frames.
            m => match Command::from_method(m) {
                Ok(cmd) => broker.apply(id, channel, cmd),
                // Server-to-client methods.
                Err(m) => Err(AmqpError::new(COMMAND_INVALID, "unimplemented method").on(&m)),
            },
        };
        if let Err(e) = r {
            self.channel_error(now, channel, e, broker);
        }
    }

    pub(super) fn connection_method(&mut self, now: Instant, method: Method, broker: &mut Broker) {
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
}
