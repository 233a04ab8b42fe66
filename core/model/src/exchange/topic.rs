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
}

/// Where the walk stands: a trie node, how many words of the key are consumed, and whether
/// the node hangs off a `#` edge (so it may swallow the next word and stay put).
#[derive(Clone, Copy)]
struct Step<'t> {
    node: &'t Node,
    at: usize,
    under_hash: bool,
}

/// Every destination bound to a pattern that matches `words`.
///
/// A naive walk tries every split of the key between the `#`s of a binding, which is
/// exponential in the number of `#`s (`#.#.#.#.#.#.#.#.z` against a 40-word key took seconds
/// under the broker lock). The trie is a tree, so a node off a word or `*` edge is reached at
/// most once per position its parent is reached at; only `#` nodes can be reached twice (from
/// the parent, and from themselves after swallowing a word). Remembering the `#` states seen
/// makes every state unique: at most nodes × (words + 1) steps, whatever the bindings.
/// Returns the number of steps taken.
fn collect(root: &Node, words: &[&str], out: &mut Vec<Destination>) -> usize {
    let mut steps = 0;
    let mut stack = vec![Step { node: root, at: 0, under_hash: false }];
    let mut seen_hash: crate::hash::Set<(*const Node, usize)> = crate::hash::Set::default();
    while let Some(Step { node, at, under_hash }) = stack.pop() {
        if under_hash && !seen_hash.insert((std::ptr::from_ref(node), at)) {
            continue;
        }
        steps += 1;
        match words.get(at) {
            None => out.extend(node.bound.iter().cloned()),
            Some(w) => {
                if let Some(n) = node.words.get(*w) {
                    stack.push(Step { node: n, at: at + 1, under_hash: false });
                }
                if let Some(n) = &node.star {
                    stack.push(Step { node: n, at: at + 1, under_hash: false });
                }
                if under_hash {
                    // `#` swallows one more word.
                    stack.push(Step { node, at: at + 1, under_hash: true });
                }
            }
        }
        if let Some(h) = &node.hash {
            // `#` matching no words at all.
            stack.push(Step { node: h, at, under_hash: true });
        }
    }
    steps
}

/// Whether one binding key matches a routing key, as the exchange routes (for a store kept
/// beside the exchange, such as retained messages). Dynamic programming over word
/// positions: polynomial whatever number of `#`s the pattern holds.
pub fn matches(pattern: &str, routing_key: &str) -> bool {
    let (p, k) = (words(pattern), words(routing_key));
    // reach[j]: the pattern's words so far can match the key's first j words.
    let mut reach = vec![false; k.len() + 1];
    reach[0] = true;
    for w in &p {
        let mut next = vec![false; k.len() + 1];
        for j in 0..=k.len() {
            next[j] = match *w {
                "#" => reach[j] || (j > 0 && next[j - 1]),
                "*" => j > 0 && reach[j - 1],
                w => j > 0 && reach[j - 1] && k[j - 1] == w,
            };
        }
        reach = next;
    }
    reach[k.len()]
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
        collect(&self.root, &words(input.routing_key), out);
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

    #[test]
    fn many_hashes_against_a_long_key_route_in_polynomial_time() {
        // 24 `#`s and a 100-word key: the backtracking walk would not finish in a lifetime.
        let pattern = vec!["#"; 24].join(".") + ".z";
        let t = topic(&[("q", &pattern), ("h", "#.#.#.#.#.#.#.#.z")]);
        let miss = vec!["a"; 100].join(".");
        let hit = miss.clone() + ".z";
        assert_eq!(route_key(&t, &miss), Vec::<Destination>::new());
        assert_eq!(route_key(&t, &hit), vec![q("h"), q("q")]);
        // The bound the walk promises: each of the trie's 27 nodes (the root, 24 `#`s that
        // both patterns share the first 8 of, two `z`s) at most once per position.
        let mut out = Vec::new();
        let steps = collect(&t.root, &words(&hit), &mut out);
        assert!(steps <= 27 * 102, "{steps} steps");
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
        fn matches_agrees_with_the_reference(
            pattern in key(&["a", "b", "*", "#"]),
            routing_key in key(&["a", "b", "c"]),
        ) {
            prop_assert_eq!(
                matches(&pattern, &routing_key),
                reference(&words(&pattern), &words(&routing_key)),
                "{} against {}", pattern, routing_key
            );
        }

        #[test]
        fn trie_agrees_with_the_reference_matcher(
            patterns in proptest::collection::vec(key(&["a", "b", "", "*", "#", "#", "#"]), 1..12),
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
