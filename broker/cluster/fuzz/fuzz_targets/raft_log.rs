//! A Raft log file as a start reads it, from arbitrary octets: sound records are replayed, a
//! torn tail is cut, damage is refused. A panic, or a cut past the end, is a bug.
//!
//! Run with `cargo fuzz run raft_log` from `broker/cluster` (needs a nightly toolchain).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((good, records)) = warren_cluster::store::scan(data) {
        assert!(good <= data.len());
        assert!(records * 9 <= good, "{records} records in {good} octets");
    }
});
