//! `x-consistent-hash`, with the semantics of RabbitMQ's plugin: a binding's key is its
//! weight, each unit of weight is one bucket, and a message goes to the bucket that jump
//! consistent hashing (Lamping & Veach) picks for its hash. Adding a binding moves only the
//! keys the new buckets take. The hash is of the routing key, or of the header named by the
//! `hash-header` argument, or of the property named by `hash-property` (`message_id`,
//! `correlation_id` or `timestamp`); a message lacking that header or property is not routed.

use warren_codec::{FieldTable, FieldValue};

use super::{Binding, Destination, ExchangeFactory, ExchangeType, RouteFailed, RoutingInput, stable_hash};
use crate::error::{AmqpError, precondition};

/// Builds consistent-hash exchanges.
#[derive(Debug, Default)]
pub struct Factory;

impl ExchangeFactory for Factory {
    fn create(&self, arguments: &FieldTable) -> Result<Box<dyn ExchangeType>, AmqpError> {
        let header = arguments.get("hash-header").map(arg_str).transpose()?;
        let property = arguments.get("hash-property").map(arg_str).transpose()?;
        let source = match (header, property) {
            (Some(_), Some(_)) => {
                return Err(precondition("hash-header and hash-property are mutually exclusive"));
            }
            (Some(h), None) => Source::Header(h),
            (None, Some(p)) => match p.as_str() {
                "message_id" => Source::MessageId,
                "correlation_id" => Source::CorrelationId,
                "timestamp" => Source::Timestamp,
                other => {
                    return Err(precondition(format!(
                        "unsupported hash-property '{other}': expected message_id, correlation_id or timestamp"
                    )));
                }
            },
            (None, None) => Source::RoutingKey,
        };
        Ok(Box::new(ConsistentHash { source, bindings: Vec::new(), ends: Vec::new() }))
    }
}

fn arg_str(v: &FieldValue) -> Result<String, AmqpError> {
    v.as_str()
        .map(str::to_string)
        .ok_or_else(|| precondition("hash-header and hash-property must be strings"))
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    RoutingKey,
    Header(String),
    MessageId,
    CorrelationId,
    Timestamp,
}

/// Weighted buckets over the bindings.
///
/// Bucket `i` belongs to the binding whose range of cumulative weight holds `i`, so the ring
/// costs one entry per binding whatever the weights: a binding key is the client's number,
/// and a vector of that many buckets let one bind ask for 96 GiB.
#[derive(Debug)]
pub struct ConsistentHash {
    source: Source,
    bindings: Vec<(Binding, u32)>,
    /// For each binding, the total weight of it and every binding before it.
    ends: Vec<u64>,
}

/// The weight a binding key stands for.
fn weight(key: &str) -> Option<u32> {
    key.trim().parse::<u32>().ok().filter(|w| *w > 0)
}

/// Jump consistent hash: a bucket in `0..n` for `key`, moving few keys when `n` grows.
pub fn jump(mut key: u64, n: usize) -> usize {
    let (mut b, mut j): (i64, i64) = (-1, 0);
    while j < n as i64 {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    b.max(0) as usize
}

impl ConsistentHash {
    fn rebuild(&mut self) {
        self.ends.clear();
        let mut total = 0u64;
        for (_, w) in &self.bindings {
            total += u64::from(*w);
            self.ends.push(total);
        }
    }

    /// The binding that owns bucket `bucket`.
    fn owner(&self, bucket: u64) -> Option<&Destination> {
        let i = self.ends.partition_point(|end| *end <= bucket);
        self.bindings.get(i).map(|(b, _)| &b.destination)
    }

    fn hash(&self, input: RoutingInput<'_>) -> Option<u64> {
        let p = input.properties;
        let value = match &self.source {
            Source::RoutingKey => return Some(stable_hash(input.routing_key.as_bytes())),
            Source::Header(h) => p.headers.as_ref()?.get(h)?.clone(),
            Source::MessageId => FieldValue::str(p.message_id.as_deref()?),
            Source::CorrelationId => FieldValue::str(p.correlation_id.as_deref()?),
            Source::Timestamp => FieldValue::Timestamp(p.timestamp?),
        };
        Some(match (&value, value.as_i64()) {
            (FieldValue::LongString(s), _) => stable_hash(s),
            (_, Some(n)) => stable_hash(n.to_string().as_bytes()),
            _ => stable_hash(format!("{value:?}").as_bytes()),
        })
    }
}

impl ExchangeType for ConsistentHash {
    fn routes_on_key_only(&self) -> bool {
        self.source == Source::RoutingKey
    }

    fn validate_binding(&self, key: &str, _arguments: &FieldTable) -> Result<(), AmqpError> {
        match weight(key) {
            Some(_) => Ok(()),
            None => Err(precondition(format!(
                "binding key '{key}' is not a weight: x-consistent-hash binding keys must be positive integers"
            ))),
        }
    }

    fn add_binding(&mut self, b: &Binding) {
        self.bindings.push((b.clone(), weight(&b.key).unwrap_or(1)));
        self.rebuild();
    }

    fn remove_binding(&mut self, b: &Binding) {
        if let Some(i) = self.bindings.iter().position(|(x, _)| x == b) {
            self.bindings.remove(i);
            self.rebuild();
        }
    }

    fn route(&self, input: RoutingInput<'_>, out: &mut Vec<Destination>) -> Result<(), RouteFailed> {
        let Some(&total) = self.ends.last() else {
            return Ok(());
        };
        if let Some(h) = self.hash(input) {
            let bucket = jump(h, usize::try_from(total).unwrap_or(usize::MAX));
            out.extend(self.owner(bucket as u64).cloned());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {

    use warren_codec::BasicProperties;

    use super::super::test_support::*;
    use super::*;

    fn exchange(args: FieldTable, weights: &[(&str, &str)]) -> Box<dyn ExchangeType> {
        let mut x = Factory.create(&args).expect("create");
        for (dest, w) in weights {
            x.validate_binding(w, &FieldTable::new()).expect("weight");
            x.add_binding(&binding(dest, w));
        }
        x
    }

    #[test]
    fn shares_follow_weights_and_keys_stick() {
        let x = exchange(FieldTable::new(), &[("a", "1"), ("b", "1"), ("c", "2"), ("d", "4")]);
        let mut counts: crate::hash::Map<Destination, u32> = Default::default();
        for i in 0..40_000 {
            let key = format!("key-{i}");
            let first = route_key(x.as_ref(), &key);
            assert_eq!(first.len(), 1);
            assert_eq!(route_key(x.as_ref(), &key), first);
            *counts.entry(first[0].clone()).or_default() += 1;
        }
        for (dest, share) in [("a", 1.0), ("b", 1.0), ("c", 2.0), ("d", 4.0)] {
            let got = f64::from(counts[&q(dest)]) / 40_000.0;
            let want = share / 8.0;
            assert!((got - want).abs() / want < 0.1, "{dest}: {got} vs {want}");
        }
    }

    #[test]
    fn adding_a_binding_moves_only_the_keys_it_takes() {
        let mut x = exchange(FieldTable::new(), &[("a", "1"), ("b", "1"), ("c", "1")]);
        let before: Vec<_> = (0..3000).map(|i| route_key(x.as_ref(), &i.to_string())).collect();
        x.add_binding(&binding("d", "1"));
        let moved = (0..3000).filter(|i| route_key(x.as_ref(), &i.to_string()) != before[*i]).count();
        // Ideally a quarter of the keys move, all of them to the new queue.
        assert!((600..900).contains(&moved), "{moved} keys moved");
    }

    #[test]
    fn huge_weights_cost_no_memory_and_keep_their_share() {
        // 4294967295 used to size a vector of ~96 GiB.
        let x = exchange(FieldTable::new(), &[("a", "4294967295"), ("b", "4294967295"), ("c", "1")]);
        let mut counts: crate::hash::Map<Destination, u32> = Default::default();
        for i in 0..4_000 {
            *counts.entry(route_key(x.as_ref(), &i.to_string())[0].clone()).or_default() += 1;
        }
        assert!(counts.get(&q("c")).is_none_or(|n| *n < 5), "{counts:?}");
        let (a, b) = (counts[&q("a")], counts[&q("b")]);
        assert!(a.abs_diff(b) < 400, "{a} vs {b}");
        // Past u32 the key is not a weight at all.
        assert_eq!(x.validate_binding("4294967296", &FieldTable::new()).map_err(|e| e.code), Err(406));
    }

    #[test]
    fn bucket_owners_follow_cumulative_weights() {
        let mut x = ConsistentHash { source: Source::RoutingKey, bindings: Vec::new(), ends: Vec::new() };
        for (d, w) in [("a", "2"), ("b", "1"), ("c", "3")] {
            x.add_binding(&binding(d, w));
        }
        let owners: Vec<_> = (0..7).map(|i| x.owner(i).cloned()).collect();
        let want = [Some(q("a")), Some(q("a")), Some(q("b")), Some(q("c")), Some(q("c")), Some(q("c")), None];
        assert_eq!(owners, want);
    }

    #[test]
    fn hash_header_and_property() {
        let mut args = FieldTable::new();
        args.insert("hash-header".into(), FieldValue::str("user"));
        let x = exchange(args, &[("a", "1"), ("b", "1")]);
        let with = |v: &str| BasicProperties {
            headers: Some([("user".to_string(), FieldValue::str(v))].into_iter().collect()),
            ..Default::default()
        };
        for v in ["alice", "bob", "carol"] {
            assert_eq!(route_props(x.as_ref(), "k1", &with(v)), route_props(x.as_ref(), "k2", &with(v)));
        }
        assert!(route_props(x.as_ref(), "k", &BasicProperties::default()).is_empty());

        let mut both = FieldTable::new();
        both.insert("hash-header".into(), FieldValue::str("a"));
        both.insert("hash-property".into(), FieldValue::str("message_id"));
        assert_eq!(Factory.create(&both).map(|_| ()).map_err(|e| e.code), Err(406));
        let x = Factory.create(&FieldTable::new()).expect("create");
        assert_eq!(x.validate_binding("heavy", &FieldTable::new()).map_err(|e| e.code), Err(406));
    }
}
