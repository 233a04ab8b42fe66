//! Feeds arbitrary bytes to the frame splitter and decoders. Any panic is a bug: peer input
//! must only ever produce frames or a `CodecError`.
//!
//! Run with `cargo fuzz run frame` from `core/codec` (needs a nightly toolchain).
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use warren_codec::{Frame, decode_frame};

fn encode(f: &Frame) -> BytesMut {
    let mut out = BytesMut::new();
    f.encode(&mut out);
    out
}

fuzz_target!(|data: &[u8]| {
    // The first octet picks a frame-max so both the limit checks and unlimited mode are hit.
    let (max, rest) = match data.split_first() {
        Some((m, rest)) => (u32::from(*m) * 64, rest),
        None => return,
    };
    let mut buf = BytesMut::from(rest);
    while let Ok(Some(frame)) = decode_frame(&mut buf, max) {
        // Whatever decodes must re-encode to bytes that decode and re-encode identically
        // (bytes, not values: a NaN in a field table is not equal to itself).
        let once = encode(&frame);
        let back: Option<Frame> = decode_frame(&mut once.clone(), 0).ok().flatten();
        assert_eq!(back.as_ref().map(encode), Some(once));
    }
});
