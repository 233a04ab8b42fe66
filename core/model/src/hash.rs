//! The model's hash maps. std's SipHash showed as 16% of the broker's time under load;
//! foldhash hashes the same keys several times faster.
//!
//! The seed is not drawn at random by the model: replicas of a queue apply the same
//! commands and must iterate their maps in the same order to reach the same state, so the
//! seed is an input. Nor is it one fixed constant: many keys (queue, exchange and binding
//! names, routing keys, consumer tags) are chosen by clients, and collisions computed once
//! against a public seed would work against every broker. The driver sets the seed once,
//! before building the broker, from the OS (a cluster will share one among its replicas);
//! each map keeps the seed it was made with, so setting it later never splits a map.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};

/// The seed maps are made with until [`set_seed`] is called (tests, tools).
const DEFAULT_SEED: u64 = 0x5741_5252_454e_2031;

static SEED: AtomicU64 = AtomicU64::new(DEFAULT_SEED);

/// Sets the seed of every map made from now on.
pub fn set_seed(seed: u64) {
    SEED.store(seed, Ordering::Relaxed);
}

/// foldhash's "quality" hasher under the seed current when the map was made.
#[derive(Debug, Clone)]
pub struct Seeded(foldhash::quality::FixedState);

impl Default for Seeded {
    fn default() -> Self {
        Seeded(foldhash::quality::FixedState::with_seed(SEED.load(Ordering::Relaxed)))
    }
}

impl BuildHasher for Seeded {
    type Hasher = <foldhash::quality::FixedState as BuildHasher>::Hasher;
    fn build_hasher(&self) -> Self::Hasher {
        self.0.build_hasher()
    }
}

/// A `HashMap` with foldhash under the broker's seed.
pub type Map<K, V> = std::collections::HashMap<K, V, Seeded>;

/// A `HashSet` with foldhash under the broker's seed.
pub type Set<K> = std::collections::HashSet<K, Seeded>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_made_under_one_seed_iterate_alike_and_keep_their_seed() {
        let fill = || -> Vec<u32> {
            let m: Map<u32, ()> = (0..1000).map(|i| (i, ())).collect();
            m.keys().copied().collect()
        };
        // Same seed, same order: what replicas rely on.
        assert_eq!(fill(), fill());
        let before: Map<String, u32> = [("a".to_string(), 1)].into_iter().collect();
        set_seed(12345);
        set_seed(DEFAULT_SEED);
        assert_eq!(before.get("a"), Some(&1), "a map keeps the seed it was made with");
    }
}
