//! `fanout`: a message goes to every binding; the key is ignored.

use warren_codec::FieldTable;

use super::{Binding, Destination, ExchangeFactory, ExchangeType, RouteFailed, RoutingInput, remove_one};
use crate::error::AmqpError;

/// Builds fanout exchanges.
#[derive(Debug, Default)]
pub struct Factory;

impl ExchangeFactory for Factory {
    fn create(&self, _arguments: &FieldTable) -> Result<Box<dyn ExchangeType>, AmqpError> {
        Ok(Box::<Fanout>::default())
    }
}

/// Every bound destination.
#[derive(Debug, Default)]
pub struct Fanout {
    all: Vec<Destination>,
}

impl ExchangeType for Fanout {
    fn add_binding(&mut self, b: &Binding) {
        self.all.push(b.destination.clone());
    }

    fn remove_binding(&mut self, b: &Binding) {
        remove_one(&mut self.all, &b.destination);
    }

    fn route(&self, _input: RoutingInput<'_>, out: &mut Vec<Destination>) -> Result<(), RouteFailed> {
        out.extend(self.all.iter().cloned());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;

    #[test]
    fn every_binding_whatever_the_key() {
        let mut f = Fanout::default();
        f.add_binding(&binding("a", "x"));
        f.add_binding(&binding("b", ""));
        assert_eq!(route_key(&f, "anything"), vec![q("a"), q("b")]);
        f.remove_binding(&binding("a", "x"));
        assert_eq!(route_key(&f, ""), vec![q("b")]);
    }
}
