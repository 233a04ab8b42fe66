//! The handshake: connection.start → start-ok (authentication) → tune → tune-ok
//! (negotiation, as RabbitMQ does it) → open (the vhost) → open-ok.

use std::time::Instant;

use bytes::{Bytes, BytesMut};
use warren_codec::reply_code::{
    ACCESS_REFUSED, CHANNEL_ERROR, COMMAND_INVALID, NOT_ALLOWED, REPLY_SUCCESS, UNEXPECTED_FRAME,
};
use warren_codec::{
    ConnectionCloseOk, ConnectionOpenOk, ConnectionStart, ConnectionTune, FieldTable, FieldValue, Frame,
    Method, PROTOCOL_HEADER,
};

use super::*;
use crate::auth::{self, AuthError};
use crate::broker::{Broker, ConnectionInfo};
use crate::error::AmqpError;

/// What a client sends to open a connection as guest (PLAIN) with `frame_max` and no
/// heartbeat, and channel 1: for in-memory harnesses (tests, benchmarks, fuzzing) that drive
/// a [`Connection`] without a socket.
pub fn guest_handshake(frame_max: u32) -> BytesMut {
    guest_handshake_to("/", frame_max)
}

/// [`guest_handshake`] to vhost `vhost`.
pub fn guest_handshake_to(vhost: &str, frame_max: u32) -> BytesMut {
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
    Frame::method(0, warren_codec::ConnectionOpen { virtual_host: vhost.into(), ..Default::default() })
        .encode(&mut out);
    Frame::method(1, warren_codec::ChannelOpen::default()).encode(&mut out);
    out
}

/// What connection.start says of the server, RabbitMQ's capabilities among it.
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

/// The handshake's steps, each holding what the ones before it learned; a step is consumed
/// to make the next (typestates, as rustls's handshake has them).
#[derive(Debug, PartialEq)]
pub(super) enum Handshake {
    /// connection.start sent; waiting for start-ok, which authenticates.
    Start,
    /// Authenticated, connection.tune sent; waiting for tune-ok.
    Tune(Authenticated),
    /// Tuned; waiting for connection.open, which names the vhost.
    Open(Authenticated),
}

/// Who the client proved to be, and what it said it can do.
#[derive(Debug, PartialEq)]
pub(super) struct Authenticated {
    user: String,
    capabilities: FieldTable,
    /// What the client said of itself in start-ok (shown by the management API).
    client_properties: FieldTable,
    mechanism: String,
}

impl Handshake {
    /// The method this step waits for, for the error when another comes.
    fn expects(&self) -> &'static str {
        match self {
            Handshake::Start => "connection.start-ok",
            Handshake::Tune(_) => "connection.tune-ok",
            Handshake::Open(_) => "connection.open",
        }
    }
}

impl Connection {
    /// Answers the protocol header: connection.start, and the handshake's first step.
    pub(super) fn send_start(&mut self) {
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
        self.state = State::Handshake(Handshake::Start);
    }

    /// The vhost the client's connection.open names, when that frame is among the bytes read
    /// and not yet acted on. A driver with a broker per vhost hands the handshake the broker
    /// of that vhost (the others would answer 530 for it). Only before the connection is
    /// open; the bytes are looked at, not consumed: `handle_input` acts on them as ever.
    pub fn opening_vhost(&self) -> Option<String> {
        if !matches!(self.state, State::ProtocolHeader | State::Handshake(_)) {
            return None;
        }
        // Frames are skipped by their announced lengths in place: a client trickling a large
        // frame in byte by byte costs a header read per read, not a copy of the buffer.
        let mut rest = &self.input[..];
        if self.state == State::ProtocolHeader {
            rest = rest.strip_prefix(PROTOCOL_HEADER)?;
        }
        loop {
            let header: [u8; 7] = rest.get(..7)?.try_into().ok()?;
            let size = u32::from_be_bytes([header[3], header[4], header[5], header[6]]) as usize;
            let frame = rest.get(..size.checked_add(8)?)?;
            // A method frame of class 10, method 40: connection.open. Only that one is decoded.
            if header[0] == 1 && frame.get(7..11) == Some(&[0, 10, 0, 40]) {
                return match decode_frame(&mut BytesMut::from(frame), 0) {
                    Ok(Some(Frame::Method { method: Method::ConnectionOpen(m), .. })) => Some(m.virtual_host),
                    // A malformed open: handle_input fails on it, with whichever broker.
                    _ => None,
                };
            }
            rest = &rest[frame.len()..];
        }
    }

    pub(super) fn handshake_frame(&mut self, now: Instant, frame: Frame, broker: &mut Broker) {
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
        // The step is taken out and the next one put back: what a step learned travels with
        // it, and a step cannot be taken twice. A refusal puts the step back first, as
        // `fail` closes only a connection not already closing.
        let State::Handshake(step) = std::mem::replace(&mut self.state, State::Closed) else {
            return;
        };
        let next = match (step, method) {
            (_, Method::ConnectionClose(_)) => {
                self.send(0, ConnectionCloseOk {});
                return self.finish(REPLY_SUCCESS, "closed by client during handshake".into(), true);
            }
            (Handshake::Start, Method::ConnectionStartOk(m)) => {
                match auth::authenticate(
                    &broker.shared_directory().load().users,
                    &m.mechanism,
                    &m.response,
                    self.peer_is_loopback,
                    self.external.as_deref(),
                ) {
                    Ok(user) => {
                        let capabilities = match m.client_properties.get("capabilities") {
                            Some(FieldValue::Table(caps)) => caps.clone(),
                            _ => FieldTable::new(),
                        };
                        let tune = ConnectionTune {
                            channel_max: self.config.channel_max,
                            frame_max: self.config.frame_max,
                            heartbeat: self.config.heartbeat,
                        };
                        self.send(0, tune);
                        Handshake::Tune(Authenticated {
                            user,
                            capabilities,
                            client_properties: m.client_properties,
                            mechanism: m.mechanism,
                        })
                    }
                    Err(AuthError::UnknownMechanism(mech)) => {
                        let e = AmqpError::new(
                            COMMAND_INVALID,
                            format!("unknown authentication mechanism '{mech}'"),
                        );
                        self.state = State::Handshake(Handshake::Start);
                        return self.fail(now, e, broker);
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
                        self.state = State::Handshake(Handshake::Start);
                        return self.fail(now, e, broker);
                    }
                }
            }
            (Handshake::Tune(who), Method::ConnectionTuneOk(m)) => {
                if let Err(e) = self.negotiate(m.channel_max, m.frame_max, m.heartbeat) {
                    self.state = State::Handshake(Handshake::Tune(who));
                    return self.fail(now, e, broker);
                }
                Handshake::Open(who)
            }
            (Handshake::Open(who), Method::ConnectionOpen(m)) => {
                let capable =
                    |name: &str| who.capabilities.get(name).and_then(FieldValue::as_bool) == Some(true);
                let info = ConnectionInfo {
                    user: who.user.clone(),
                    vhost: m.virtual_host.clone(),
                    consumer_cancel_notify: capable("consumer_cancel_notify"),
                    blocked_notify: capable("connection.blocked"),
                    name: self.name.clone(),
                    client_properties: who.client_properties.clone(),
                    auth_mechanism: who.mechanism.clone(),
                    frame_max: self.frame_max,
                    channel_max: self.channel_max,
                    heartbeat: self.heartbeat.map_or(0, |h| h.as_secs() as u16),
                    connected_at_ms: 0,
                };
                match broker.open_session(info) {
                    Ok(id) => self.id = Some(id),
                    Err(e) => {
                        self.state = State::Handshake(Handshake::Open(who));
                        return self.fail(now, e.on(&Method::ConnectionOpen(m)), broker);
                    }
                }
                self.send(0, ConnectionOpenOk::default());
                self.state = State::Running;
                self.events.push_back(Event::Opened { user: who.user, vhost: m.virtual_host });
                return;
            }
            (step, m) => {
                let e = AmqpError::new(
                    COMMAND_INVALID,
                    format!("expected '{}', got '{}'", step.expects(), m.name()),
                );
                self.state = State::Handshake(step);
                return self.fail(now, e.on(&m), broker);
            }
        };
        self.state = State::Handshake(next);
    }

    /// Applies tune-ok the way RabbitMQ does: 0 means "the server's limit", and a client may
    /// lower but not raise a limit.
    pub(super) fn negotiate(
        &mut self,
        channel_max: u16,
        frame_max: u32,
        heartbeat: u16,
    ) -> Result<(), AmqpError> {
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
}
