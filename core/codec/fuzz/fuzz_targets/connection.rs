//! Arbitrary bytes into the sans-IO connection machine after a real handshake: frame
//! splitting, content assembly across channels, and every method handler. Whatever arrives,
//! the machine answers with frames or closes; it never panics.
//!
//! Run with `cargo fuzz run connection` from `core/codec` (needs a nightly toolchain).
#![no_main]

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use warren_codec::{ConnectionOpen, ConnectionStartOk, ConnectionTuneOk, Frame, PROTOCOL_HEADER};
use warren_core::{Broker, BrokerConfig, Connection, ConnectionConfig};

fuzz_target!(|data: &[u8]| {
    let now = Instant::now();
    let mut broker = Broker::new(BrokerConfig::default(), now);
    let mut conn = Connection::new(ConnectionConfig::default(), true, now);
    let mut hello = BytesMut::from(&PROTOCOL_HEADER[..]);
    let start_ok = ConnectionStartOk {
        mechanism: "PLAIN".into(),
        response: Bytes::from_static(b"\0guest\0guest"),
        locale: "en_US".into(),
        ..Default::default()
    };
    Frame::method(0, start_ok).encode(&mut hello);
    Frame::method(0, ConnectionTuneOk { channel_max: 0, frame_max: 4096, heartbeat: 0 }).encode(&mut hello);
    Frame::method(0, ConnectionOpen { virtual_host: "/".into(), ..Default::default() }).encode(&mut hello);
    conn.read_buf().extend_from_slice(&hello);
    conn.handle_input(now, &mut broker);
    // The input in a few reads, as a socket would hand it over.
    for (i, chunk) in data.chunks(97).enumerate() {
        let at = now + Duration::from_millis(i as u64);
        conn.read_buf().extend_from_slice(chunk);
        conn.decode_input();
        conn.handle_input(at, &mut broker);
        let _ = conn.take_output();
        if conn.is_closed() {
            break;
        }
    }
    conn.handle_eof(&mut broker);
    assert_eq!(broker.connection_count(), 0, "a closed connection leaves nothing behind");
});
