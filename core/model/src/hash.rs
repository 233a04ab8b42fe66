//! The model's hash maps. std's SipHash showed as 16% of the broker's time under load;
//! foldhash hashes the same keys several times faster. The seed is fixed, not drawn per
//! process: replicas of a queue apply the same commands and must iterate their maps in the
//! same order to reach the same state (and tests see one order run after run). foldhash
//! never promised resistance to crafted collisions; the counts a client can make the broker
//! hold are bounded by `[limits]` instead.

/// The hasher of every map in the model: foldhash's "quality" variant under a fixed seed.
pub type FixedState = foldhash::quality::FixedState;

/// A `HashMap` with foldhash under a fixed seed.
pub type Map<K, V> = std::collections::HashMap<K, V, FixedState>;

/// A `HashSet` with foldhash under a fixed seed.
pub type Set<K> = std::collections::HashSet<K, FixedState>;
