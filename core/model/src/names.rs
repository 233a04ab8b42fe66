//! Server-generated names: `amq.gen-…` queues and `amq.ctag-…` consumer tags.
//!
//! The model has no access to an OS random source, so the driver passes a seed and names
//! come from a splitmix64 stream: unique per broker, unpredictable enough across restarts.

/// A generator of random-looking names.
#[derive(Debug, Clone)]
pub struct NameGen {
    state: u64,
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

impl NameGen {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        NameGen { state: seed }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// `prefix` followed by 22 URL-safe base64 characters, like RabbitMQ's names.
    pub fn name(&mut self, prefix: &str) -> String {
        let mut s = String::with_capacity(prefix.len() + 22);
        s.push_str(prefix);
        let (a, b) = (self.next_u64(), self.next_u64());
        for i in 0..22 {
            let bits = if i < 11 { a >> (i * 6) } else { b >> ((i - 11) * 6) };
            s.push(ALPHABET[(bits & 63) as usize] as char);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_have_prefix_and_differ() {
        let mut g = NameGen::new(1);
        let (a, b) = (g.name("amq.gen-"), g.name("amq.gen-"));
        assert!(a.starts_with("amq.gen-") && a.len() == 30);
        assert_ne!(a, b);
    }
}
