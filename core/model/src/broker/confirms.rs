//! Publisher confirms on the wire, as RabbitMQ sends them: confirms that become ready together
//! go out as one `basic.ack` with `multiple = true` for the run, never later than they would
//! have gone alone. A confirm merges into the channel's previous ack only while that ack is
//! still the last frame waiting for the socket and every sequence number up to the new one is
//! confirmed and no nack lies between the two, so the multiple ack covers nothing unconfirmed
//! and no nack.

use std::collections::BTreeSet;

use warren_codec::{BasicAck, BasicNack, Method};

use super::{Broker, ConnId};
use crate::message::Outgoing;

/// Which publish sequence numbers of a channel have been confirmed (acked or nacked).
#[derive(Debug, Default)]
pub struct Confirmed {
    /// Every number up to this one.
    through: u64,
    /// Numbers above `through` confirmed out of order (a persistent message's confirm waits for
    /// the sync while later transient ones go at once).
    above: BTreeSet<u64>,
    /// The highest number nacked: no multiple ack may cover it after the nack went out, or a
    /// client that holds an early nack aside (amqp091-go does) would take it as acked.
    last_nack: u64,
}

impl Confirmed {
    /// Records the confirm of `tag` (of every number up to it, with `multiple`); returns whether
    /// every number up to `tag` is now confirmed.
    pub fn record(&mut self, tag: u64, multiple: bool) -> bool {
        if multiple || tag == self.through + 1 {
            self.through = self.through.max(tag);
            if !self.above.is_empty() {
                self.above = self.above.split_off(&(self.through + 1));
            }
        } else if tag > self.through {
            self.above.insert(tag);
        }
        while self.above.first() == Some(&(self.through + 1)) {
            self.above.pop_first();
            self.through += 1;
        }
        tag <= self.through
    }
}

impl Broker {
    /// Sends the confirm of publish `tag` on channel `ch` (of every one up to it, with
    /// `multiple`): a `basic.ack`, or a `basic.nack` when `ack` is false.
    pub(super) fn send_confirm(&mut self, conn: ConnId, ch: u16, tag: u64, multiple: bool, ack: bool) {
        let Some(s) = self.sessions.get_mut(&conn) else {
            return;
        };
        let Some(c) = s.channels.get_mut(&ch) else {
            return;
        };
        let prefix = c.confirmed.record(tag, multiple);
        if !ack {
            c.confirmed.last_nack = c.confirmed.last_nack.max(tag);
        }
        let last_nack = c.confirmed.last_nack;
        if ack
            && prefix
            && let Some(Outgoing::Method { channel, method: Method::BasicAck(last) }) = s.outbound.last_mut()
            && *channel == ch
            && last.delivery_tag < tag
            && last_nack < last.delivery_tag
        {
            *last = BasicAck { delivery_tag: tag, multiple: true };
            return;
        }
        if ack {
            self.send(conn, ch, BasicAck { delivery_tag: tag, multiple });
        } else {
            self.send(conn, ch, BasicNack { delivery_tag: tag, multiple, requeue: false });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Confirmed;

    #[test]
    fn a_run_is_a_prefix_only_once_the_gaps_below_it_are_confirmed() {
        let mut c = Confirmed::default();
        assert!(c.record(1, false));
        // 2 waits for a sync; 3 and 4 are confirmed at once, out of order.
        assert!(!c.record(3, false));
        assert!(!c.record(4, false));
        assert!(c.record(2, false), "2 fills the gap: 1..=4 are confirmed");
        assert!(c.record(5, false));
        assert!(!c.record(7, false));
        assert!(c.record(6, true), "a multiple ack confirms everything below it");
        assert!(c.record(7, false));
        assert!(c.record(8, false));
    }
}
