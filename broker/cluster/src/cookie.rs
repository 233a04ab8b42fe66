//! The cluster's cookie: a secret every member holds (RabbitMQ's Erlang cookie). Each
//! inter-node connection starts with a mutual challenge: the dialer sends a nonce, the
//! listener answers with HMAC-SHA256(cookie, "listener" ‖ dialer's nonce ‖ its nonce) and a
//! nonce of its own, the dialer answers with HMAC-SHA256(cookie, "dialer" ‖ listener's nonce
//! ‖ its nonce). Neither side sends the cookie, a proof cannot be replayed (fresh nonces), and
//! neither side acts on a request before the other has proven itself.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Octets a cookie has at least, and at most.
pub const COOKIE_LEN: (usize, usize) = (16, 1024);

/// The shared secret.
#[derive(Clone)]
pub struct Cookie(Vec<u8>);

impl std::fmt::Debug for Cookie {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cookie(..)")
    }
}

impl Cookie {
    /// A cookie of `secret`, which must have 16 to 1024 octets.
    pub fn new(secret: &[u8]) -> Result<Cookie, String> {
        if !(COOKIE_LEN.0..=COOKIE_LEN.1).contains(&secret.len()) {
            return Err(format!(
                "the cluster cookie has {} octets; it needs {} to {}",
                secret.len(),
                COOKIE_LEN.0,
                COOKIE_LEN.1
            ));
        }
        Ok(Cookie(secret.to_vec()))
    }

    /// HMAC-SHA256 of `role ‖ a ‖ b` under the cookie, hex.
    pub fn proof(&self, role: &str, a: &str, b: &str) -> String {
        let mut key = [0u8; 64];
        if self.0.len() > 64 {
            key[..32].copy_from_slice(&Sha256::digest(&self.0));
        } else {
            key[..self.0.len()].copy_from_slice(&self.0);
        }
        let pad = |byte: u8| key.iter().map(|k| k ^ byte).collect::<Vec<u8>>();
        let inner = Sha256::new()
            .chain_update(pad(0x36))
            .chain_update(role)
            .chain_update(a)
            .chain_update(b)
            .finalize();
        let outer = Sha256::new().chain_update(pad(0x5c)).chain_update(inner).finalize();
        hex(&outer)
    }

    /// Whether `got` is the proof of `role ‖ a ‖ b`, compared in constant time.
    pub fn verify(&self, got: &str, role: &str, a: &str, b: &str) -> bool {
        let want = self.proof(role, a, b);
        want.len() == got.len() && bool::from(want.as_bytes().ct_eq(got.as_bytes()))
    }
}

/// 16 random octets from the OS, hex.
pub fn nonce() -> std::io::Result<String> {
    let mut n = [0u8; 16];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut n)?;
    Ok(hex(&n))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_4231_case_2_and_proofs_differ_by_role_and_cookie() {
        // RFC 4231 test case 2, with a key under 16 octets padded by the test alone.
        let c = Cookie(b"Jefe".to_vec());
        assert_eq!(
            c.proof("", "what do ya want ", "for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let a = Cookie::new(b"0123456789abcdef").expect("cookie");
        let b = Cookie::new(b"0123456789abcdeX").expect("cookie");
        assert!(a.verify(&a.proof("listener", "x", "y"), "listener", "x", "y"));
        assert!(!a.verify(&a.proof("dialer", "x", "y"), "listener", "x", "y"));
        assert!(!a.verify(&b.proof("listener", "x", "y"), "listener", "x", "y"));
        assert!(Cookie::new(b"short").is_err());
    }
}
