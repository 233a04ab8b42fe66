//! Passwords as RabbitMQ stores them: base64 of a 4-octet salt followed by the hash of
//! salt ‖ password (`rabbit_password_hashing_sha256`, its default; `sha512`; legacy `md5`),
//! so a user's `password_hash` from a RabbitMQ definitions export logs in here unchanged.
//! Comparisons take the same time whatever the guess.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use md5::Md5;
use sha2::{Digest, Sha256, Sha512};
use subtle::ConstantTimeEq;

/// A hashing algorithm, by RabbitMQ's module name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HashAlgorithm {
    /// `rabbit_password_hashing_sha256`, RabbitMQ's default.
    #[default]
    Sha256,
    /// `rabbit_password_hashing_sha512`.
    Sha512,
    /// `rabbit_password_hashing_md5`, for users imported from old RabbitMQ versions.
    Md5,
}

impl HashAlgorithm {
    /// RabbitMQ's name for it, as definitions exports carry it.
    pub fn name(self) -> &'static str {
        match self {
            HashAlgorithm::Sha256 => "rabbit_password_hashing_sha256",
            HashAlgorithm::Sha512 => "rabbit_password_hashing_sha512",
            HashAlgorithm::Md5 => "rabbit_password_hashing_md5",
        }
    }

    /// The algorithm RabbitMQ names `name`.
    pub fn from_name(name: &str) -> Result<Self, PasswordError> {
        [HashAlgorithm::Sha256, HashAlgorithm::Sha512, HashAlgorithm::Md5]
            .into_iter()
            .find(|a| a.name() == name)
            .ok_or_else(|| PasswordError::UnknownAlgorithm(name.to_string()))
    }

    fn digest(self, salt: &[u8], password: &[u8]) -> Vec<u8> {
        match self {
            HashAlgorithm::Sha256 => {
                Sha256::new().chain_update(salt).chain_update(password).finalize().to_vec()
            }
            HashAlgorithm::Sha512 => {
                Sha512::new().chain_update(salt).chain_update(password).finalize().to_vec()
            }
            HashAlgorithm::Md5 => Md5::new().chain_update(salt).chain_update(password).finalize().to_vec(),
        }
    }

    fn digest_len(self) -> usize {
        match self {
            HashAlgorithm::Sha256 => 32,
            HashAlgorithm::Sha512 => 64,
            HashAlgorithm::Md5 => 16,
        }
    }
}

/// Octets of salt RabbitMQ puts before the hash.
pub const SALT_LEN: usize = 4;

/// A user's password, as the configuration (or a definitions import) gives it.
#[derive(Clone, PartialEq, Eq)]
pub enum Password {
    /// Given in clear (`password = "..."`), compared in constant time all the same.
    Plain(String),
    /// No password: the user logs in by EXTERNAL (a client certificate) only. RabbitMQ
    /// exports such users with an empty `password_hash`.
    Disabled,
    /// A RabbitMQ password hash: the salt, then the digest of salt ‖ password.
    Hashed {
        /// How it was hashed.
        algorithm: HashAlgorithm,
        /// The salt and the digest, as decoded from base64.
        salted: Vec<u8>,
    },
}

impl std::fmt::Debug for Password {
    // Never printed: neither the password nor its hash belongs in a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Password::Plain(_) => f.write_str("Password::Plain(..)"),
            Password::Disabled => f.write_str("Password::Disabled"),
            Password::Hashed { algorithm, .. } => write!(f, "Password::Hashed({})", algorithm.name()),
        }
    }
}

/// Why a password hash was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasswordError {
    /// Not one of RabbitMQ's hashing modules.
    #[error("unknown hashing algorithm '{0}' (rabbit_password_hashing_sha256, _sha512 or _md5)")]
    UnknownAlgorithm(String),
    /// Not base64, or not a salt and a digest of the algorithm's length.
    #[error("malformed password hash: {0}")]
    Malformed(String),
}

impl Password {
    /// A password given in clear.
    pub fn plain(p: impl Into<String>) -> Self {
        Password::Plain(p.into())
    }

    /// A RabbitMQ password hash (`password_hash` with its `hashing_algorithm`).
    pub fn from_hash(algorithm: HashAlgorithm, base64: &str) -> Result<Self, PasswordError> {
        if base64.trim().is_empty() {
            return Ok(Password::Disabled);
        }
        let salted = STANDARD.decode(base64.trim()).map_err(|e| PasswordError::Malformed(e.to_string()))?;
        if salted.len() != SALT_LEN + algorithm.digest_len() {
            return Err(PasswordError::Malformed(format!(
                "{} octets where {} takes {}",
                salted.len(),
                algorithm.name(),
                SALT_LEN + algorithm.digest_len()
            )));
        }
        Ok(Password::Hashed { algorithm, salted })
    }

    /// Whether `candidate` is this password; the time taken does not depend on how much of
    /// it matched.
    pub fn verify(&self, candidate: &str) -> bool {
        match self {
            // Compared as digests: equal lengths, so the time says nothing of the secret's length.
            Password::Plain(p) => bool::from(Sha256::digest(p).ct_eq(&Sha256::digest(candidate))),
            Password::Disabled => {
                // As long as a check that fails, for a user who cannot log in with one.
                let _ = HashAlgorithm::Sha256.digest(&[0; SALT_LEN], candidate.as_bytes());
                false
            }
            Password::Hashed { algorithm, salted } => {
                let (salt, digest) = salted.split_at(SALT_LEN.min(salted.len()));
                bool::from(algorithm.digest(salt, candidate.as_bytes()).ct_eq(digest))
            }
        }
    }
}

impl Password {
    /// The algorithm and hash a definitions export carries: a hash as it was given; a clear
    /// password hashed with `salt` under RabbitMQ's default; `""` for a passwordless user.
    pub fn exported(&self, salt: [u8; SALT_LEN]) -> (HashAlgorithm, String) {
        match self {
            Password::Plain(p) => (HashAlgorithm::Sha256, hash(HashAlgorithm::Sha256, salt, p)),
            Password::Hashed { algorithm, salted } => (*algorithm, STANDARD.encode(salted)),
            Password::Disabled => (HashAlgorithm::Sha256, String::new()),
        }
    }
}

/// RabbitMQ's hash of `password` with `salt` under `algorithm`, base64 encoded: what
/// `warren hash-password` prints and a definitions export carries.
pub fn hash(algorithm: HashAlgorithm, salt: [u8; SALT_LEN], password: &str) -> String {
    let mut salted = salt.to_vec();
    salted.extend(algorithm.digest(&salt, password.as_bytes()));
    STANDARD.encode(salted)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Exported by RabbitMQ 3.10.8 (`rabbitmqctl export_definitions`) for users added with
    /// `rabbitmqctl add_user` under each hashing module; the same file is the definitions
    /// fixture of the server's tests.
    const RABBITMQ: &[(&str, &str, &str)] = &[
        (
            "rabbit_password_hashing_sha256",
            "RXyMFdXQg+/XCr6rtodH1ZxFjQxyPnEfTl78t2bWrrS35tFm",
            "alice-secret",
        ),
        (
            "rabbit_password_hashing_sha512",
            "2T5xoJjcQ9OD9TvVGs9hbJwhStPSHN5KR6zGJfm08eZJwfXurpxnzUvg+hBP48w5VAZxXIjMSvq9GeXQvnJeMo0har0=",
            "b0b pass, with spaces ü",
        ),
        ("rabbit_password_hashing_md5", "BSLKO8ckyPEfKvJE7uUk5QJXo2M=", "carol"),
        ("rabbit_password_hashing_sha256", "j7O91fFnPpMc7NNE8DY2Bsl2hSXPobWwE9Pyjc7WMtXwcsvG", "guest"),
    ];

    #[test]
    fn rabbitmqs_own_hashes_verify_and_nothing_else_does() {
        for (algorithm, hashed, password) in RABBITMQ {
            let a = HashAlgorithm::from_name(algorithm).expect("algorithm");
            let p = Password::from_hash(a, hashed).expect("hash");
            assert!(p.verify(password), "{algorithm}");
            assert!(!p.verify(&format!("{password}x")), "{algorithm}");
            assert!(!p.verify(""), "{algorithm}");
            // Hashing again with the same salt gives RabbitMQ's string back.
            let Password::Hashed { salted, .. } = &p else { panic!("hashed") };
            let salt: [u8; SALT_LEN] = salted[..SALT_LEN].try_into().expect("salt");
            assert_eq!(hash(a, salt, password), *hashed);
        }
    }

    #[test]
    fn malformed_hashes_and_unknown_algorithms_are_refused() {
        assert!(matches!(HashAlgorithm::from_name("bcrypt"), Err(PasswordError::UnknownAlgorithm(_))));
        assert!(matches!(
            Password::from_hash(HashAlgorithm::Sha256, "not base64!"),
            Err(PasswordError::Malformed(_))
        ));
        // An md5-sized hash under sha256.
        let short = Password::from_hash(HashAlgorithm::Sha256, "BSLKO8ckyPEfKvJE7uUk5QJXo2M=");
        assert!(matches!(short, Err(PasswordError::Malformed(_))));
    }

    #[test]
    fn an_empty_hash_is_a_user_without_a_password() {
        let p = Password::from_hash(HashAlgorithm::Sha256, "").expect("RabbitMQ exports these");
        assert!(!p.verify("") && !p.verify("anything"));
    }

    #[test]
    fn plain_passwords_compare_whole() {
        let p = Password::plain("guest");
        assert!(p.verify("guest"));
        assert!(!p.verify("gues") && !p.verify("guest ") && !p.verify("Guest"));
        assert_eq!(format!("{p:?}"), "Password::Plain(..)", "never printed");
    }
}
