//! Arbitrary bytes into the sans-IO connection machine after a real handshake: frame
//! splitting, content assembly across channels, and every method handler. Whatever arrives,
//! the machine answers with frames or closes; it never panics.
//!
//! Run with `cargo fuzz run connection` from `core/codec` (needs a nightly toolchain).
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use warren_core::{Broker, BrokerConfig, Connection, ConnectionConfig};

fuzz_target!(|data: &[u8]| {
    let now = Instant::now();
    let mut broker = Broker::new(BrokerConfig::default(), now);
    let mut conn = Connection::new(ConnectionConfig::default(), true, now);
    // frame_max 4096: small frames, so content splits across many.
    let hello = warren_core::connection::guest_handshake(4096);
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
