//! Content assembly: a publish is a method, a header and body frames; the phases a channel
//! goes through while they arrive, and the body kept as it came.

use std::time::Instant;

use bytes::{Bytes, BytesMut};
use warren_codec::{BasicPublish, ContentHeader};

use super::*;
use crate::broker::Broker;
use crate::command::{Command, Publish};

/// Where a channel is in receiving a publish.
#[derive(Debug)]
pub(super) enum Phase {
    Idle,
    AwaitingHeader(BasicPublish),
    AwaitingBody(Assembly),
    Closing,
}

/// A publish whose header arrived and whose body frames are being collected.
#[derive(Debug)]
pub(super) struct Assembly {
    pub(super) publish: BasicPublish,
    pub(super) header: ContentHeader,
    pub(super) body: Body,
    pub(super) received: u64,
}

/// The body frames received so far. Most bodies fit one frame: that one is kept as it came,
/// with no list to allocate and nothing to copy.
#[derive(Debug, Default)]
pub(super) enum Body {
    #[default]
    Empty,
    One(Bytes),
    Many(Vec<Bytes>),
}

impl Body {
    pub(super) fn push(&mut self, part: Bytes) {
        *self = match std::mem::take(self) {
            Body::Empty => Body::One(part),
            Body::One(first) => Body::Many(vec![first, part]),
            Body::Many(mut parts) => {
                parts.push(part);
                Body::Many(parts)
            }
        };
    }

    pub(super) fn join(self) -> Bytes {
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

impl Connection {
    pub(super) fn complete_publish(
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
        let publish = Publish { method: publish, properties: header.properties, body };
        if let Err(e) = broker.apply(id, channel, Command::Publish(publish)) {
            self.channel_error(now, channel, e, broker);
        }
    }
}
