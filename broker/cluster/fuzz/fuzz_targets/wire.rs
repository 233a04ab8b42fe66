//! The inter-node frames a peer (or anyone who can reach the listener) sends: every message
//! type decoded from arbitrary octets, frame after frame. Errors are fine; a panic, or a
//! frame over its limit that is not refused, is a bug.
//!
//! Run with `cargo fuzz run wire` from `broker/cluster` (needs a nightly toolchain).
#![no_main]

use libfuzzer_sys::fuzz_target;
use warren_cluster::wire::{self, Challenge, Hello, MAX_FRAME, MAX_HANDSHAKE_FRAME, Proof, Request, Response};

fuzz_target!(|data: &[u8]| {
    let _ = wire::decode::<Hello>(data, MAX_HANDSHAKE_FRAME);
    let _ = wire::decode::<Challenge>(data, MAX_HANDSHAKE_FRAME);
    let _ = wire::decode::<Proof>(data, MAX_HANDSHAKE_FRAME);
    let _ = wire::decode::<Response>(data, MAX_FRAME);
    let mut rest = data;
    while let Ok(Some((_, used))) = wire::decode::<Request>(rest, MAX_FRAME) {
        assert!(used >= 4 && used <= rest.len(), "a frame took {used} of {} octets", rest.len());
        rest = &rest[used..];
    }
    if let Some(h) = data.get(..4) {
        let len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize;
        if len > MAX_HANDSHAKE_FRAME {
            assert!(wire::decode::<Hello>(data, MAX_HANDSHAKE_FRAME).is_err(), "an oversized hello is refused");
        }
    }
});
