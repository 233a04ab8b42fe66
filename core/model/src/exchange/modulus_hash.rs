//! `x-modulus-hash`, as in RabbitMQ's sharding plugin: the hash of the routing key modulo the
//! number of bindings picks one binding, in the order they were made. Binding keys are
//! ignored. Unlike consistent hashing, adding a binding moves most keys.

use warren_codec::FieldTable;

use super::{Binding, Destination, ExchangeFactory, ExchangeType, RouteFailed, RoutingInput, stable_hash};
use crate::error::AmqpError;

/// Builds modulus-hash exchanges.
#[derive(Debug, Default)]
pub struct Factory;

impl ExchangeFactory for Factory {
    fn create(&self, _arguments: &FieldTable) -> Result<Box<dyn ExchangeType>, AmqpError> {
        Ok(Box::<ModulusHash>::default())
    }
}

/// Bindings in the order they were made.
#[derive(Debug, Default)]
pub struct ModulusHash {
    bindings: Vec<Binding>,
}

impl ExchangeType for ModulusHash {
    fn routes_on_key_only(&self) -> bool {
        true
    }

    fn add_binding(&mut self, b: &Binding) {
        self.bindings.push(b.clone());
    }

    fn remove_binding(&mut self, b: &Binding) {
        if let Some(i) = self.bindings.iter().position(|x| x == b) {
            self.bindings.remove(i);
        }
    }

    fn route(&self, input: RoutingInput<'_>, out: &mut Vec<Destination>) -> Result<(), RouteFailed> {
        let n = self.bindings.len() as u64;
        if n > 0 {
            let i = stable_hash(input.routing_key.as_bytes()) % n;
            out.push(self.bindings[i as usize].destination.clone());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;

    #[test]
    fn one_binding_per_key_and_stable() {
        let mut m = ModulusHash::default();
        for d in ["a", "b", "c"] {
            m.add_binding(&binding(d, ""));
        }
        let mut seen = crate::hash::Set::default();
        for i in 0..300 {
            let key = format!("k{i}");
            let r = route_key(&m, &key);
            assert_eq!(r.len(), 1);
            assert_eq!(r, route_key(&m, &key));
            seen.insert(r[0].clone());
        }
        assert_eq!(seen.len(), 3);
    }
}
