//! The resolve cache in Envoy's shared data: who may invoke what, remembered so that a warm invoke
//! needs no call at all. An entry is valid only while the management API's entity generation is
//! the one it was read at (every write bumps it; each worker long-polls it into
//! [`GENERATION_KEY`]), and never longer than a maximum age, which bounds how long a revoked key
//! written outside the API (the admin command) keeps working.
//!
//! ```text
//!  whisk/resolve/{sha256(authorization, namespace, action)} = "<generation>\n<fetched ms>\n<ResolvedAction JSON>"
//!  whisk/generation                                         = "<generation>"
//! ```

use sha2::{Digest, Sha256};
use whisk_contract::ResolvedAction;

use crate::pool::SharedData;

/// Where each worker's root context publishes the current entity generation.
pub const GENERATION_KEY: &str = "whisk/generation";

/// On whose behalf an action was resolved: each is a cache entry of its own.
#[derive(Debug, Clone, Copy)]
pub enum Resolver<'a> {
    /// An invoke with this `authorization` header.
    Key(&'a str),
    /// A web request, with the key and the `require-whisk-auth` secret it came with (if any).
    Web { authorization: &'a str, secret: &'a str },
    /// A web sequence's component, run as its owner's namespace without a key.
    Owner(&'a str),
}

/// The cache key: a digest, so that no key material sits in shared data in the clear and keys of
/// different users never share an entry. The kind of resolver is a part of its own: no header a
/// client sends can be mistaken for a web resolution or an owner's.
pub fn key(resolver: Resolver<'_>, namespace: &str, action_path: &str) -> String {
    let parts: [&str; 5] = match resolver {
        Resolver::Key(authorization) => ["key", authorization, "", namespace, action_path],
        Resolver::Web { authorization, secret } => ["web", authorization, secret, namespace, action_path],
        Resolver::Owner(owner) => ["owner", owner, "", namespace, action_path],
    };
    let mut digest = Sha256::new();
    for part in parts {
        digest.update(part.as_bytes());
        // A separator that cannot occur in a header value keeps ("ab","c") apart from ("a","bc").
        digest.update([0u8]);
    }
    let hex: String = digest.finalize().iter().map(|b| format!("{b:02x}")).collect();
    format!("whisk/resolve/{hex}")
}

/// The generation the root context last saw, if any.
pub fn current_generation(store: &impl SharedData) -> Option<String> {
    let (bytes, _) = store.get(GENERATION_KEY)?;
    let text = String::from_utf8(bytes).ok()?;
    (!text.is_empty()).then_some(text)
}

/// A cached resolution, if it is still valid.
pub fn lookup(store: &impl SharedData, key: &str, now_ms: u64, max_age_ms: u64) -> Option<ResolvedAction> {
    let generation = current_generation(store)?;
    let (bytes, _) = store.get(key)?;
    let text = std::str::from_utf8(&bytes).ok()?;
    let mut parts = text.splitn(3, '\n');
    let (entry_generation, fetched, json) = (parts.next()?, parts.next()?, parts.next()?);
    let fetched: u64 = fetched.parse().ok()?;
    if entry_generation != generation || now_ms.saturating_sub(fetched) > max_age_ms {
        return None;
    }
    serde_json::from_str(json).ok()
}

/// Remembers a resolution read at `generation`.
pub fn remember(store: &impl SharedData, key: &str, generation: &str, now_ms: u64, action: &ResolvedAction) {
    if generation.is_empty() || generation.contains('\n') {
        return;
    }
    let Ok(json) = serde_json::to_string(action) else { return };
    // Last writer wins: every writer holds a valid resolution of the same key.
    let _ = store.set(key, format!("{generation}\n{now_ms}\n{json}").as_bytes(), None);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::action;
    use crate::pool::memory::MemoryData;

    #[test]
    fn entries_live_exactly_as_long_as_their_generation_and_age_allow() {
        let store = MemoryData::default();
        let key = key(Resolver::Key("Basic abc"), "_", "hello");
        remember(&store, &key, "g1", 1_000, &action());
        assert_eq!(lookup(&store, &key, 1_000, 30_000), None, "no generation known yet: no cache");
        store.set(GENERATION_KEY, b"g1", None).unwrap();
        assert_eq!(lookup(&store, &key, 1_500, 30_000), Some(action()));
        assert_eq!(lookup(&store, &key, 40_000, 30_000), None, "too old");
        store.set(GENERATION_KEY, b"g2", None).unwrap();
        assert_eq!(lookup(&store, &key, 1_500, 30_000), None, "an entity was written since");
    }

    #[test]
    fn keys_separate_users_and_actions() {
        let by_key = |authorization| key(Resolver::Key(authorization), "_", "x");
        assert_ne!(by_key("Basic a"), by_key("Basic b"));
        assert_ne!(key(Resolver::Key("ab"), "c", "x"), key(Resolver::Key("a"), "bc", "x"));
        assert_eq!(by_key("Basic a"), by_key("Basic a"));
        assert!(!by_key("Basic secret").contains("secret"));
        // A client's header cannot pass for another kind of resolver.
        assert_ne!(by_key("guest"), key(Resolver::Owner("guest"), "_", "x"));
        assert_ne!(by_key("owner"), key(Resolver::Owner(""), "_", "x"));
        let web = key(Resolver::Web { authorization: "Basic a", secret: "s" }, "_", "x");
        assert_ne!(web, by_key("Basic a"));
        assert_ne!(web, key(Resolver::Web { authorization: "Basic as", secret: "" }, "_", "x"));
    }

    #[test]
    fn damaged_entries_are_misses() {
        let store = MemoryData::default();
        store.set(GENERATION_KEY, b"g1", None).unwrap();
        store.set("k", b"g1\nnot a number\n{}", None).unwrap();
        assert_eq!(lookup(&store, "k", 0, 10), None);
        store.set("k", b"g1\n0\n{broken", None).unwrap();
        assert_eq!(lookup(&store, "k", 0, 10), None);
    }
}
