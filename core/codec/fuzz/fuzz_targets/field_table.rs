//! Arbitrary bytes as a field table: decoding returns a table or an error, never panics,
//! never recurses past the depth limit, and what decodes re-encodes to bytes that decode to
//! the same thing.
//!
//! Run with `cargo fuzz run field_table` from `core/codec` (needs a nightly toolchain).
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use warren_codec::field::{decode_table, encode_table};
use warren_codec::wire::{Reader, Writer};

fuzz_target!(|data: &[u8]| {
    let Ok(table) = decode_table(&mut Reader::new(Bytes::copy_from_slice(data))) else {
        return;
    };
    let mut once = BytesMut::new();
    encode_table(&mut Writer::new(&mut once), &table);
    let again = decode_table(&mut Reader::new(once.clone().freeze())).expect("what we encode decodes");
    let mut twice = BytesMut::new();
    encode_table(&mut Writer::new(&mut twice), &again);
    // Bytes, not values: a NaN is not equal to itself.
    assert_eq!(once, twice);
});
