//! `headers`: routes on message headers against binding arguments, with `x-match`:
//! `all` (every binding header must match, the default), `any` (one must), and the
//! `all-with-x` / `any-with-x` forms that also compare binding arguments starting with `x-`,
//! which the plain forms ignore. A binding value of type void matches any value (presence);
//! integers compare by value whatever their width. A binding with no match keys matches every
//! message under `all` and none under `any`, as in RabbitMQ.

use warren_codec::{FieldTable, FieldValue};

use super::{Binding, Destination, ExchangeFactory, ExchangeType, RouteFailed, RoutingInput};
use crate::error::{AmqpError, precondition};

/// Builds headers exchanges.
#[derive(Debug, Default)]
pub struct Factory;

impl ExchangeFactory for Factory {
    fn create(&self, _arguments: &FieldTable) -> Result<Box<dyn ExchangeType>, AmqpError> {
        Ok(Box::<Headers>::default())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Match {
    All,
    Any,
}

#[derive(Debug)]
struct Rule {
    binding: Binding,
    kind: Match,
    keys: Vec<(String, FieldValue)>,
}

/// Every binding with its parsed rule; headers routing has to look at each.
#[derive(Debug, Default)]
pub struct Headers {
    rules: Vec<Rule>,
}

fn parse(arguments: &FieldTable) -> Result<(Match, bool), AmqpError> {
    let Some(v) = arguments.get("x-match") else {
        return Ok((Match::All, false));
    };
    match v.as_str() {
        Some("all") => Ok((Match::All, false)),
        Some("any") => Ok((Match::Any, false)),
        Some("all-with-x") => Ok((Match::All, true)),
        Some("any-with-x") => Ok((Match::Any, true)),
        _ => Err(precondition(format!(
            "Invalid x-match field value {v:?}; expected all, any, all-with-x, or any-with-x"
        ))),
    }
}

fn same(a: &FieldValue, b: &FieldValue) -> bool {
    match (a.as_i64(), b.as_i64()) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

impl Rule {
    fn matches(&self, headers: Option<&FieldTable>) -> bool {
        let found = |(k, want): &(String, FieldValue)| {
            headers
                .and_then(|h| h.get(k))
                .is_some_and(|got| matches!(want, FieldValue::Void) || same(want, got))
        };
        match self.kind {
            Match::All => self.keys.iter().all(found),
            Match::Any => self.keys.iter().any(found),
        }
    }
}

impl ExchangeType for Headers {
    fn validate_binding(&self, _key: &str, arguments: &FieldTable) -> Result<(), AmqpError> {
        parse(arguments).map(|_| ())
    }

    fn add_binding(&mut self, b: &Binding) {
        let (kind, with_x) = parse(&b.arguments).unwrap_or((Match::All, false));
        let keys = b
            .arguments
            .iter()
            .filter(|(k, _)| k.as_str() != "x-match" && (with_x || !k.starts_with("x-")))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        self.rules.push(Rule { binding: b.clone(), kind, keys });
    }

    fn remove_binding(&mut self, b: &Binding) {
        if let Some(i) = self.rules.iter().position(|r| r.binding == *b) {
            self.rules.remove(i);
        }
    }

    fn route(&self, input: RoutingInput<'_>, out: &mut Vec<Destination>) -> Result<(), RouteFailed> {
        let headers = input.properties.headers.as_ref();
        out.extend(self.rules.iter().filter(|r| r.matches(headers)).map(|r| r.binding.destination.clone()));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use warren_codec::BasicProperties;

    use super::super::test_support::*;
    use super::*;

    fn table(pairs: &[(&str, FieldValue)]) -> FieldTable {
        pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
    }

    fn bind(h: &mut Headers, dest: &str, args: FieldTable) {
        h.validate_binding("", &args).expect("valid");
        h.add_binding(&Binding { destination: q(dest), key: String::new(), arguments: args });
    }

    fn route(h: &Headers, headers: FieldTable) -> Vec<Destination> {
        let props = BasicProperties { headers: Some(headers), ..Default::default() };
        route_props(h, "", &props)
    }

    #[test]
    fn all_any_and_with_x() {
        let mut h = Headers::default();
        let s = FieldValue::str;
        bind(&mut h, "all", table(&[("x-match", s("all")), ("a", s("1")), ("b", FieldValue::I32(2))]));
        bind(&mut h, "any", table(&[("x-match", s("any")), ("a", s("1")), ("c", s("3"))]));
        bind(&mut h, "x-ignored", table(&[("a", s("1")), ("x-tag", s("t"))]));
        bind(&mut h, "with-x", table(&[("x-match", s("all-with-x")), ("a", s("1")), ("x-tag", s("t"))]));
        bind(&mut h, "presence", table(&[("b", FieldValue::Void)]));
        bind(&mut h, "no-keys-all", table(&[]));
        bind(&mut h, "no-keys-any", table(&[("x-match", s("any"))]));

        let got = route(&h, table(&[("a", s("1")), ("b", FieldValue::I64(2))]));
        assert_eq!(got, vec![q("all"), q("any"), q("no-keys-all"), q("presence"), q("x-ignored")]);
        let got = route(&h, table(&[("a", s("1")), ("x-tag", s("t"))]));
        assert_eq!(got, vec![q("any"), q("no-keys-all"), q("with-x"), q("x-ignored")]);
        assert_eq!(route(&h, table(&[])), vec![q("no-keys-all")]);
    }

    #[test]
    fn bad_x_match_is_refused() {
        let h = Headers::default();
        let e = h.validate_binding("", &table(&[("x-match", FieldValue::str("most"))]));
        assert_eq!(e.map_err(|e| e.code), Err(406));
    }
}
