//! Tenant API keys: `maas_sk_` followed by 40 base62 characters.
//!
//! The first 8 random characters form the public lookup prefix (stored in the
//! clear, unique); the whole key is hashed with SHA-256 and only the hash is
//! stored. The key carries ~238 bits of randomness, so a fast hash is enough:
//! there is nothing to brute-force. Hashes are compared in constant time.

use rand::Rng;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub const KEY_PREFIX: &str = "maas_sk_";
const LOOKUP_LEN: usize = 8;
const SECRET_LEN: usize = 32;
const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A freshly generated key: the secret is shown to the admin once, then only
/// `prefix` and `hash` are kept.
pub struct NewKey {
    pub secret: String,
    pub prefix: String,
    pub hash: String,
}

/// A key as presented by a client, checked for shape but not yet verified.
#[derive(Debug)]
pub struct PresentedKey<'a> {
    raw: &'a str,
}

impl NewKey {
    pub fn generate() -> Self {
        let mut rng = rand::rng();
        let body: String = (0..LOOKUP_LEN + SECRET_LEN)
            .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
            .collect();
        let secret = format!("{KEY_PREFIX}{body}");
        let prefix = secret[..KEY_PREFIX.len() + LOOKUP_LEN].to_owned();
        let hash = hash_key(&secret);
        Self {
            secret,
            prefix,
            hash,
        }
    }
}

impl<'a> PresentedKey<'a> {
    /// Accepts only strings of the exact shape of our keys, so a malformed
    /// bearer token never reaches the database.
    pub fn parse(raw: &'a str) -> Option<Self> {
        let body = raw.strip_prefix(KEY_PREFIX)?;
        if body.len() != LOOKUP_LEN + SECRET_LEN || !body.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            return None;
        }
        Some(Self { raw })
    }

    /// The public lookup prefix of this key.
    pub fn prefix(&self) -> &'a str {
        &self.raw[..KEY_PREFIX.len() + LOOKUP_LEN]
    }

    /// Constant-time comparison with a stored hash.
    pub fn matches(&self, stored_hash: &str) -> bool {
        let ours = hash_key(self.raw);
        ours.as_bytes().ct_eq(stored_hash.as_bytes()).into()
    }
}

/// Hex SHA-256 of a whole key.
pub fn hash_key(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_verifies_against_its_own_hash_only() {
        let a = NewKey::generate();
        let b = NewKey::generate();
        assert_ne!(a.secret, b.secret);
        let pa = PresentedKey::parse(&a.secret).expect("well formed");
        assert_eq!(pa.prefix(), a.prefix);
        assert!(pa.matches(&a.hash));
        assert!(!pa.matches(&b.hash));
        assert!(!a.hash.contains(&a.secret[KEY_PREFIX.len()..]));
    }

    #[test]
    fn malformed_keys_are_rejected_before_lookup() {
        let k = NewKey::generate();
        assert!(PresentedKey::parse(&k.secret[..k.secret.len() - 1]).is_none());
        assert!(PresentedKey::parse(&format!("{}!", &k.secret[..k.secret.len() - 1])).is_none());
        assert!(PresentedKey::parse("Bearer xyz").is_none());
        assert!(PresentedKey::parse(&k.secret.replace("maas_sk_", "maas_pk_")).is_none());
    }
}
