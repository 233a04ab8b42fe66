//! Maps with structured keys, serialized as a sequence of pairs: formats such as JSON take
//! only strings as map keys, and a snapshot must not depend on which format carries it.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Writes the map as `[(key, value), ...]` in key order.
pub fn serialize<K: Serialize, V: Serialize, S: Serializer>(
    map: &BTreeMap<K, V>,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_seq(map.iter())
}

/// Reads a map written by [`serialize`]; a repeated key is an error, not a silent overwrite.
pub fn deserialize<'de, K, V, D>(d: D) -> Result<BTreeMap<K, V>, D::Error>
where
    K: Deserialize<'de> + Ord,
    V: Deserialize<'de>,
    D: Deserializer<'de>,
{
    let pairs = Vec::<(K, V)>::deserialize(d)?;
    let n = pairs.len();
    let map: BTreeMap<K, V> = pairs.into_iter().collect();
    if map.len() != n {
        return Err(serde::de::Error::custom("a key appears twice"));
    }
    Ok(map)
}
