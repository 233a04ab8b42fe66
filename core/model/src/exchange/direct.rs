//! `direct`: a message goes to the bindings whose key equals its routing key.

use warren_codec::FieldTable;

use super::{Binding, Destination, ExchangeFactory, ExchangeType, RouteFailed, RoutingInput, remove_one};
use crate::error::AmqpError;

/// Builds direct exchanges.
#[derive(Debug, Default)]
pub struct Factory;

impl ExchangeFactory for Factory {
    fn create(&self, _arguments: &FieldTable) -> Result<Box<dyn ExchangeType>, AmqpError> {
        Ok(Box::<Direct>::default())
    }
}

/// Bindings by key.
#[derive(Debug, Default)]
pub struct Direct {
    by_key: crate::hash::Map<String, Vec<Destination>>,
}

impl ExchangeType for Direct {
    fn routes_on_key_only(&self) -> bool {
        true
    }

    fn add_binding(&mut self, b: &Binding) {
        self.by_key.entry(b.key.clone()).or_default().push(b.destination.clone());
    }

    fn remove_binding(&mut self, b: &Binding) {
        if let Some(v) = self.by_key.get_mut(&b.key) {
            remove_one(v, &b.destination);
            if v.is_empty() {
                self.by_key.remove(&b.key);
            }
        }
    }

    fn route(&self, input: RoutingInput<'_>, out: &mut Vec<Destination>) -> Result<(), RouteFailed> {
        if let Some(v) = self.by_key.get(input.routing_key) {
            out.extend(v.iter().cloned());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;

    #[test]
    fn exact_key_only() {
        let mut d = Direct::default();
        d.add_binding(&binding("a", "k"));
        d.add_binding(&binding("b", "k"));
        d.add_binding(&binding("c", "other"));
        assert_eq!(route_key(&d, "k"), vec![q("a"), q("b")]);
        assert_eq!(route_key(&d, "K"), vec![]);
        d.remove_binding(&binding("a", "k"));
        assert_eq!(route_key(&d, "k"), vec![q("b")]);
    }
}
