//! The hash maps on the message path. std's SipHash showed as 16% of the broker's time
//! under load; foldhash (seeded per process, "quality" variant) hashes the same keys several
//! times faster.

/// A `HashMap` with foldhash.
pub type Map<K, V> = std::collections::HashMap<K, V, foldhash::quality::RandomState>;

/// A `HashSet` with foldhash.
pub type Set<K> = std::collections::HashSet<K, foldhash::quality::RandomState>;
