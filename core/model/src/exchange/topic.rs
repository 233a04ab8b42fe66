//! `topic`: dot-separated words; in a binding key `*` matches exactly one word and `#` zero or
//! more. Bindings live in a trie keyed by word, so routing walks the key's words once (plus
//! the `#` branches) instead of testing every binding.
//!
//! Words are split as RabbitMQ splits them: `""` has no words, `"a."` has two (`a` and the
//! empty word), so `*` never matches `""` while `#` does.

use warren_codec::FieldTable;

use super::{Binding, Destination, ExchangeFactory, ExchangeType, RouteFailed, RoutingInput, remove_one};
use crate::error::AmqpError;

/// Builds topic exchanges.
#[derive(Debug, Default)]
pub struct Factory;

impl ExchangeFactory for Factory {
    fn create(&self, _arguments: &FieldTable) -> Result<Box<dyn ExchangeType>, AmqpError> {
        Ok(Box::<Topic>::default())
    }
}

/// The binding trie.
#[derive(Debug, Default)]
pub struct Topic {
    root: Node,
}

#[derive(Debug, Default)]
struct Node {
    words: crate::hash::Map<String, Node>,
    star: Option<Box<Node>>,
    hash: Option<Box<Node>>,
    bound: Vec<Destination>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.bound.is_empty() && self.words.is_empty() && self.star.is_none() && self.hash.is_none()
    }

    fn child_mut(&mut self, word: &str) -> &mut Node {
        match word {
            "*" => self.star.get_or_insert_with(Box::default),
            "#" => self.hash.get_or_insert_with(Box::default),
            w => self.words.entry(w.to_string()).or_default(),
        }
    }

    /// Removes `dest` under the path `words`; prunes nodes left empty.
    fn remove(&mut self, words: &[&str], dest: &Destination) {
        let Some((first, rest)) = words.split_first() else {
            remove_one(&mut self.bound, dest);
            return;
        };
        let slot_empty = |n: &mut Node| {
            n.remove(rest, dest);
            n.is_empty()
        };
        match *first {
            "*" => {
                if self.star.as_deref_mut().is_some_and(slot_empty) {
                    self.star = None;
                }
            }
            "#" => {
                if self.hash.as_deref_mut().is_some_and(slot_empty) {
                    self.hash = None;
                }
            }
            w => {
                if self.words.get_mut(w).is_some_and(slot_empty) {
                    self.words.remove(w);
                }
            }
        }
    }

    fn collect(&self, words: &[&str], out: &mut Vec<Destination>) {
        match words.split_first() {
            None => out.extend(self.bound.iter().cloned()),
            Some((w, rest)) => {
                if let Some(n) = self.words.get(*w) {
                    n.collect(rest, out);
                }
                if let Some(n) = &self.star {
                    n.collect(rest, out);
                }
            }
        }
        if let Some(h) = &self.hash {
            // `#` swallows any number of words, none included.
            for skip in 0..=words.len() {
                h.collect(&words[skip..], out);
            }
        }
    }
}

/// Splits a key into words the way RabbitMQ does.
pub fn words(key: &str) -> Vec<&str> {
    if key.is_empty() { Vec::new() } else { key.split('.').collect() }
}

impl ExchangeType for Topic {
    fn routes_on_key_only(&self) -> bool {
        // The trie walk grows with the bindings; a cached key is one hash lookup.
        true
    }

    fn add_binding(&mut self, b: &Binding) {
        let mut node = &mut self.root;
        for w in words(&b.key) {
            node = node.child_mut(w);
        }
        node.bound.push(b.destination.clone());
    }

    fn remove_binding(&mut self, b: &Binding) {
        self.root.remove(&words(&b.key), &b.destination);
    }

    fn route(&self, input: RoutingInput<'_>, out: &mut Vec<Destination>) -> Result<(), RouteFailed> {
        self.root.collect(&words(input.routing_key), out);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::test_support::*;
    use super::*;

    fn topic(bindings: &[(&str, &str)]) -> Topic {
        let mut t = Topic::default();
        for (dest, key) in bindings {
            t.add_binding(&binding(dest, key));
        }
        t
    }

    #[test]
    fn star_and_hash() {
        let t = topic(&[("star", "a.*.c"), ("hash", "a.#"), ("all", "#"), ("exact", "a.b.c")]);
        assert_eq!(route_key(&t, "a.b.c"), vec![q("all"), q("exact"), q("hash"), q("star")]);
        assert_eq!(route_key(&t, "a"), vec![q("all"), q("hash")]);
        assert_eq!(route_key(&t, "a.b.b.c"), vec![q("all"), q("hash")]);
        assert_eq!(route_key(&t, "b"), vec![q("all")]);
    }

    #[test]
    fn rabbitmq_edge_cases() {
        let t = topic(&[("empty", ""), ("star", "*"), ("hh", "#.#"), ("trail", "a.#"), ("lead", "#.a")]);
        // "" has no words: only "" and the #-bindings match it.
        assert_eq!(route_key(&t, ""), vec![q("empty"), q("hh")]);
        // "a." is the words "a" and "": `*` needs exactly one word.
        assert_eq!(route_key(&t, "a."), vec![q("hh"), q("trail")]);
        assert_eq!(route_key(&t, "a"), vec![q("hh"), q("lead"), q("star"), q("trail")]);
        assert_eq!(route_key(&t, ".a"), vec![q("hh"), q("lead")]);
        assert_eq!(route_key(&t, "nodots"), vec![q("hh"), q("star")]);
    }

    #[test]
    fn removal_prunes_and_keeps_other_bindings() {
        let mut t = topic(&[("x", "a.*"), ("y", "a.*"), ("x", "a.#")]);
        t.remove_binding(&binding("x", "a.*"));
        assert_eq!(route_key(&t, "a.b"), vec![q("x"), q("y")]);
        t.remove_binding(&binding("y", "a.*"));
        t.remove_binding(&binding("x", "a.#"));
        assert!(t.root.is_empty());
    }

    /// The obvious recursive matcher, to check the trie against.
    fn reference(pattern: &[&str], key: &[&str]) -> bool {
        match (pattern.split_first(), key.split_first()) {
            (None, None) => true,
            (Some((&"#", prest)), _) => {
                reference(prest, key) || (!key.is_empty() && reference(pattern, &key[1..]))
            }
            (Some((&"*", prest)), Some((_, krest))) => reference(prest, krest),
            (Some((p, prest)), Some((k, krest))) if p == k => reference(prest, krest),
            _ => false,
        }
    }

    fn key(words: &'static [&'static str]) -> impl Strategy<Value = String> {
        proptest::collection::vec(proptest::sample::select(words), 0..5).prop_map(|w| w.join("."))
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

        #[test]
        fn trie_agrees_with_the_reference_matcher(
            patterns in proptest::collection::vec(key(&["a", "b", "", "*", "#"]), 1..12),
            keys in proptest::collection::vec(key(&["a", "b", "c", ""]), 1..12),
        ) {
            let mut t = Topic::default();
            for (i, p) in patterns.iter().enumerate() {
                t.add_binding(&binding(&i.to_string(), p));
            }
            for k in &keys {
                let got = route_key(&t, k);
                let mut want: Vec<Destination> = patterns
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| reference(&words(p), &words(k)))
                    .map(|(i, _)| q(&i.to_string()))
                    .collect();
                want.sort();
                prop_assert_eq!(got, want, "key {:?} patterns {:?}", k, patterns);
            }
        }
    }
}
