//! Feeds arbitrary bytes to the MQTT decoder, as either version and under a small or no
//! packet-size limit. Any panic is a bug: a client's bytes must only ever produce packets,
//! a wait for more, or a `DecodeError`. Whatever decodes must encode to bytes that decode
//! to the same packet.
//!
//! Run with `cargo fuzz run decode` from `core/mqtt` (needs a nightly toolchain).
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use warren_mqtt::{Packet, Version, decode, encode};

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else { return };
    let version = if first & 1 == 0 { Version::V311 } else { Version::V5 };
    let max = if first & 2 == 0 { 256 } else { u32::MAX };
    let mut buf = BytesMut::from(rest);
    while let Ok(Some(p)) = decode(&mut buf, version, max) {
        let v = match &p {
            Packet::Connect(c) => c.version,
            _ => version,
        };
        let mut out = BytesMut::new();
        if encode(&p, v, &mut out).is_ok() {
            let back = decode(&mut out, v, u32::MAX).ok().flatten();
            assert_eq!(back.as_ref(), Some(&p));
        }
    }
});
