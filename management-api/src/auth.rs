//! Keys (`uuid:secret`), their salted hashes, and a short-lived cache of verified keys.
//!
//! The secret is never stored: only a random salt and `SHA-256(salt ‖ secret)`, compared in constant
//! time. Verifying a key costs a database read, so [`AuthCache`] remembers a successful verification
//! for a few seconds, keyed by the whole `authorization` value: the resolve endpoint runs on every
//! invoke and must not pay that read each time.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use base64::Engine as _;
use rand::{Rng as _, RngCore as _};
use sha2::{Digest as _, Sha256};

/// Length of a generated secret, as in OpenWhisk.
pub const SECRET_LENGTH: usize = 64;
/// Length of the per-key salt, in bytes.
pub const SALT_LENGTH: usize = 16;

/// The key OpenWhisk's standalone server gives the `guest` namespace; clients ship with it.
pub const GUEST_KEY: &str =
    "23bc46b1-71f6-4ed5-8c54-816aa4f8c502:123zO3xZCLrMN6v2BKK1dXYFpXlPkccOFqm12CdAsMgRU4VrNZ9lyGVCGuMDGIwP";

/// An API key: the public `uuid` names it, the `secret` proves it.
#[derive(Clone, PartialEq, Eq)]
pub struct Key {
    pub uuid: String,
    pub secret: String,
}

impl std::fmt::Debug for Key {
    /// Never print the secret, even in a debug log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key").field("uuid", &self.uuid).finish_non_exhaustive()
    }
}

impl std::fmt::Display for Key {
    /// `uuid:secret`, the form `wsk property set --auth` takes.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.uuid, self.secret)
    }
}

impl Key {
    /// A fresh key: a v4 uuid and 64 random alphanumeric characters.
    pub fn generate() -> Self {
        let secret =
            rand::rng().sample_iter(rand::distr::Alphanumeric).take(SECRET_LENGTH).map(char::from).collect();
        Self { uuid: uuid::Uuid::new_v4().to_string(), secret }
    }

    /// Parses `uuid:secret`; both parts must be non-empty.
    pub fn parse(text: &str) -> Option<Self> {
        let (uuid, secret) = text.split_once(':')?;
        if uuid.is_empty() || secret.is_empty() {
            return None;
        }
        Some(Self { uuid: uuid.to_owned(), secret: secret.to_owned() })
    }

    /// Parses an `authorization: Basic base64(uuid:secret)` value.
    pub fn from_basic_authorization(value: &str) -> Option<Self> {
        let (scheme, encoded) = value.trim().split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("basic") {
            return None;
        }
        let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
        Self::parse(std::str::from_utf8(&decoded).ok()?)
    }

    /// The `authorization` header value a client sends for this key.
    pub fn basic_authorization(&self) -> String {
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(self.to_string()))
    }
}

/// What the store keeps for a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HashedSecret {
    pub salt: Vec<u8>,
    pub hash: Vec<u8>,
}

impl HashedSecret {
    /// Hashes `secret` with a fresh random salt.
    pub fn new(secret: &str) -> Self {
        let mut salt = vec![0; SALT_LENGTH];
        rand::rng().fill_bytes(&mut salt);
        let hash = hash_secret(&salt, secret);
        Self { salt, hash }
    }

    /// Whether `secret` is the one hashed, in time independent of where they differ.
    pub fn verify(&self, secret: &str) -> bool {
        constant_time_eq(&hash_secret(&self.salt, secret), &self.hash)
    }
}

fn hash_secret(salt: &[u8], secret: &str) -> Vec<u8> {
    let mut hasher = Sha256::new();
    hasher.update(salt);
    hasher.update(secret.as_bytes());
    hasher.finalize().to_vec()
}

/// Compares without an early exit, so timing does not reveal the length of a matching prefix.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let difference = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(difference) == 0
}

/// Beyond this many entries the cache drops everything rather than grow without bound under a
/// flood of distinct valid keys.
const MAX_CACHED: usize = 10_000;

/// Verified `authorization` values and the namespace they belong to, each for `ttl`.
///
/// Only successes are cached: a wrong key must not be remembered as right, and caching failures would
/// let a flood of garbage values fill memory. Deleting a key through this process calls
/// [`AuthCache::forget_namespace`]; a key deleted by another process (`management-api user delete`)
/// stops working within `ttl`.
#[derive(Debug)]
pub struct AuthCache {
    ttl: Duration,
    entries: Mutex<HashMap<String, (String, Instant)>>,
}

impl AuthCache {
    pub fn new(ttl: Duration) -> Self {
        Self { ttl, entries: Mutex::new(HashMap::new()) }
    }

    /// The namespace of a value verified less than `ttl` before `now`.
    pub fn get(&self, authorization: &str, now: Instant) -> Option<String> {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let (namespace, verified) = entries.get(authorization)?;
        (now.saturating_duration_since(*verified) < self.ttl).then(|| namespace.clone())
    }

    pub fn insert(&self, authorization: &str, namespace: &str, now: Instant) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= MAX_CACHED {
            entries.retain(|_, (_, verified)| now.saturating_duration_since(*verified) < self.ttl);
            if entries.len() >= MAX_CACHED {
                entries.clear();
            }
        }
        entries.insert(authorization.to_owned(), (namespace.to_owned(), now));
    }

    /// Drops every cached key of `namespace`, after its keys were deleted.
    pub fn forget_namespace(&self, namespace: &str) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.retain(|_, (cached, _)| cached != namespace);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guest_key_parses_and_round_trips_through_basic_auth() {
        let key = Key::parse(GUEST_KEY).unwrap();
        assert_eq!(key.uuid, "23bc46b1-71f6-4ed5-8c54-816aa4f8c502");
        assert_eq!(key.secret.len(), SECRET_LENGTH);
        assert_eq!(Key::from_basic_authorization(&key.basic_authorization()), Some(key.clone()));
        assert_eq!(key.to_string(), GUEST_KEY);
    }

    #[test]
    fn malformed_authorization_values_are_refused() {
        let encode = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        for value in [
            String::new(),
            "Basic".into(),
            "Bearer abc".into(),
            "Basic !!!".into(),
            format!("Basic {}", encode("no-colon")),
            format!("Basic {}", encode(":secret")),
            format!("Basic {}", encode("uuid:")),
        ] {
            assert_eq!(Key::from_basic_authorization(&value), None, "{value:?}");
        }
        assert!(Key::from_basic_authorization(&format!("basic {}", encode("u:s"))).is_some());
    }

    #[test]
    fn generated_keys_are_fresh_and_well_formed() {
        let (a, b) = (Key::generate(), Key::generate());
        assert_ne!(a, b);
        assert!(uuid::Uuid::parse_str(&a.uuid).is_ok());
        assert_eq!(a.secret.len(), SECRET_LENGTH);
        assert!(a.secret.chars().all(|c| c.is_ascii_alphanumeric()));
        assert!(!format!("{a:?}").contains(&a.secret));
    }

    #[test]
    fn hashes_verify_only_the_right_secret_and_are_salted() {
        let hashed = HashedSecret::new("s3cret");
        assert!(hashed.verify("s3cret"));
        assert!(!hashed.verify("s3creT"));
        assert!(!hashed.verify(""));
        assert_ne!(hashed.hash, b"s3cret".to_vec());
        assert_ne!(HashedSecret::new("s3cret").hash, hashed.hash, "the salt differs per key");
    }

    #[test]
    fn constant_time_eq_compares_whole_slices() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }

    #[test]
    fn cache_entries_expire_and_can_be_forgotten() {
        let cache = AuthCache::new(Duration::from_secs(5));
        let start = Instant::now();
        cache.insert("Basic a", "guest", start);
        cache.insert("Basic b", "alice", start);
        assert_eq!(cache.get("Basic a", start + Duration::from_secs(4)), Some("guest".into()));
        assert_eq!(cache.get("Basic a", start + Duration::from_secs(5)), None);
        assert_eq!(cache.get("Basic c", start), None);
        cache.forget_namespace("guest");
        assert_eq!(cache.get("Basic a", start), None);
        assert_eq!(cache.get("Basic b", start), Some("alice".into()));
    }
}
