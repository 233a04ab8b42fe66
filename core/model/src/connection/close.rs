//! Closing: by the client, by an error (connection.close and the wait for close-ok), by the
//! socket going, by a shutdown; releasing the session in the broker.

use std::time::Instant;

use warren_codec::reply_code::CONNECTION_FORCED;
use warren_codec::{ConnectionClose, ConnectionCloseOk, Frame, Method};

use super::*;
use crate::broker::Broker;
use crate::command::Command;
use crate::error::AmqpError;

impl Connection {
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

    /// Closes the channels a vanished QUIC channel stream carried, as channel.close would,
    /// without a reply (there is no stream left to send it on).
    pub fn drop_channels(&mut self, channels: &[u16], broker: &mut Broker) {
        let Some(id) = self.id else {
            return;
        };
        for ch in channels {
            if self.channels.remove(ch).is_some() {
                let _ = broker.apply(id, *ch, Command::DropChannel);
            }
        }
    }

    /// A soft error closes the channel, a hard one the connection.
    pub(super) fn channel_error(&mut self, now: Instant, channel: u16, e: AmqpError, broker: &mut Broker) {
        if e.is_hard() {
            return self.fail(now, e, broker);
        }
        if let Some(id) = self.id {
            let _ = broker.apply(id, channel, Command::FailChannel(e));
        }
        self.channels.insert(channel, Phase::Closing);
    }

    pub(super) fn closing_frame(&mut self, frame: Frame, broker: &mut Broker) {
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
    pub(super) fn fail(&mut self, now: Instant, e: AmqpError, broker: &mut Broker) {
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

    pub(super) fn finish(&mut self, code: u16, text: String, by_peer: bool) {
        self.events.push_back(Event::Closed { code, text, by_peer });
        self.state = State::Closed;
    }

    pub(super) fn release(&mut self, broker: &mut Broker) {
        if let Some(id) = self.id.take() {
            broker.disconnect(id);
        }
        self.channels.clear();
    }
}
