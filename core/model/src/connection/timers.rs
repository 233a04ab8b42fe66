//! Time: the handshake deadline, heartbeats sent and missed, the close deadline.

use std::time::Instant;

use warren_codec::Frame;

use super::*;
use crate::broker::Broker;

impl Connection {
    /// When [`Connection::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.state {
            State::Closed => None,
            State::Closing { deadline } => Some(*deadline),
            State::Running => {
                let hb = self.heartbeat?;
                Some((self.last_send + hb / 2).min(self.last_recv + hb * 2))
            }
            _ => Some(self.handshake_deadline),
        }
    }

    /// Acts on expired timers: handshake timeout, heartbeats, close timeout.
    pub fn handle_timeout(&mut self, now: Instant, broker: &mut Broker) {
        self.now = now;
        match &self.state {
            State::Closed => {}
            State::Closing { deadline } if now >= *deadline => {
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
}
