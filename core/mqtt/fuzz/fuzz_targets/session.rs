//! Drives one MQTT session with arbitrary client bytes and broker events, as an attacker
//! who controls the socket and a broker answering in any order would. Any panic is a bug;
//! every byte the session writes must decode, in the version it speaks, and CONNACK comes
//! first.
//!
//! Run with `cargo fuzz run session` from `core/mqtt` (needs a nightly toolchain).
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use warren_mqtt::session::{Config, Event, Failure, Message, Session};
use warren_mqtt::{Packet, Version, decode};

fuzz_target!(|data: &[u8]| {
    let mut s = Session::new(Config::default(), 0, "assigned".into());
    let mut now = 0u64;
    let mut rest = data;
    let mut first = true;
    let mut version = Version::V311;
    // Each step: one control byte, then for bytes a length and that many bytes.
    while let Some((&op, tail)) = rest.split_first() {
        rest = tail;
        match op % 8 {
            0..=2 => {
                let n = usize::from(rest.first().copied().unwrap_or(0)).min(rest.len().saturating_sub(1));
                let chunk = rest.get(1..1 + n).unwrap_or_default();
                s.receive(now, chunk);
                rest = rest.get(1 + n..).unwrap_or_default();
            }
            3 => {
                let id = u64::from(op >> 3);
                let result = if op & 0x80 == 0 {
                    Ok(op & 0x40 != 0)
                } else {
                    Err(Failure { code: 403, text: String::new() })
                };
                s.handle(now, Event::Done { id, result });
            }
            4 => s.handle(
                now,
                if op & 0x80 == 0 {
                    Event::Confirmed(u64::from(op >> 3))
                } else {
                    Event::Refused(u64::from(op >> 3))
                },
            ),
            5 => {
                let message = Message {
                    qos: op >> 7,
                    persistent: op & 0x40 != 0,
                    body: Bytes::from_static(b"m"),
                    ..Message::default()
                };
                let keys = ["a.b", "", "#", "a.*", "x", "$SYS.y"];
                let routing_key = keys[usize::from(op >> 3) % keys.len()].to_string();
                s.handle(
                    now,
                    Event::Delivery {
                        delivery_tag: u64::from(op),
                        redelivered: op & 1 != 0,
                        retained: false,
                        routing_key,
                        message,
                    },
                );
            }
            6 => {
                now += u64::from(op) * 1000;
                s.handle_timeout(now);
            }
            _ => {
                if op & 0x80 != 0 {
                    s.socket_closed();
                } else {
                    s.handle(now, Event::TakenOver);
                }
            }
        }
        while s.poll_command().is_some() {}
        let mut out = s.take_output();
        while let Ok(Some(p)) = decode(&mut out, version, u32::MAX) {
            if first {
                assert!(matches!(p, Packet::ConnAck(_)), "the first packet written is CONNACK");
                first = false;
            }
            if let Packet::ConnAck(_) = p {
                // Later packets are in the version the client asked for; a CONNACK alone is
                // read alike by both, so follow what the session chose.
                version = if s.closed().is_none() { guess(&s) } else { version };
            }
        }
        assert!(out.is_empty(), "the session wrote a packet that does not decode");
    }
});

/// The version the session speaks, from what it reports of itself.
fn guess(s: &Session) -> Version {
    s.version()
}
