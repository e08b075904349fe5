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
//!
//! Each worker also keeps its own copy of the entries it used ([`Local`]), under the same rules: a
//! warm invoke then reads only the generation from shared data, and parses and hashes nothing.

use std::collections::HashMap;

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
    let mut digest = Sha256::new();
    for part in parts(resolver, namespace, action_path) {
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

/// A cached resolution and when the management API answered it.
#[derive(Debug, Clone, PartialEq)]
pub struct Cached {
    pub action: ResolvedAction,
    pub fetched_ms: u64,
}

/// The shared entry under `key`, if it was read at `generation` and is not older than `max_age_ms`.
pub fn lookup(
    store: &impl SharedData,
    key: &str,
    generation: &str,
    now_ms: u64,
    max_age_ms: u64,
) -> Option<Cached> {
    let (bytes, _) = store.get(key)?;
    let text = std::str::from_utf8(&bytes).ok()?;
    let mut parts = text.splitn(3, '\n');
    let (entry_generation, fetched, json) = (parts.next()?, parts.next()?, parts.next()?);
    let fetched_ms: u64 = fetched.parse().ok()?;
    if !valid(entry_generation, fetched_ms, generation, now_ms, max_age_ms) {
        return None;
    }
    serde_json::from_str(json).ok().map(|action| Cached { action, fetched_ms })
}

fn valid(entry_generation: &str, fetched_ms: u64, generation: &str, now_ms: u64, max_age_ms: u64) -> bool {
    !generation.is_empty()
        && entry_generation == generation
        && now_ms.saturating_sub(fetched_ms) <= max_age_ms
}

/// The most entries a worker keeps; a full copy drops what is stale, or else starts over.
pub const LOCAL_CAPACITY: usize = 1024;

/// One worker's copy of the resolutions it used, under the shared entries' rules. Keyed by the
/// resolver's parts themselves: the copy never leaves the worker's memory, where the request's
/// headers already are, so it needs no digest.
#[derive(Debug, Default)]
pub struct Local {
    entries: HashMap<String, (String, Cached)>,
}

impl Local {
    pub fn lookup(
        &self,
        resolver: Resolver<'_>,
        namespace: &str,
        action_path: &str,
        generation: &str,
        now_ms: u64,
        max_age_ms: u64,
    ) -> Option<ResolvedAction> {
        let (entry_generation, cached) = self.entries.get(&local_key(resolver, namespace, action_path))?;
        valid(entry_generation, cached.fetched_ms, generation, now_ms, max_age_ms)
            .then(|| cached.action.clone())
    }

    pub fn remember(
        &mut self,
        resolver: Resolver<'_>,
        namespace: &str,
        action_path: &str,
        generation: &str,
        cached: Cached,
    ) {
        if generation.is_empty() {
            return;
        }
        if self.entries.len() >= LOCAL_CAPACITY {
            self.entries.retain(|_, (entry_generation, _)| entry_generation == generation);
            if self.entries.len() >= LOCAL_CAPACITY {
                self.entries.clear();
            }
        }
        self.entries.insert(local_key(resolver, namespace, action_path), (generation.to_owned(), cached));
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

fn local_key(resolver: Resolver<'_>, namespace: &str, action_path: &str) -> String {
    parts(resolver, namespace, action_path).join("\0")
}

fn parts<'a>(resolver: Resolver<'a>, namespace: &'a str, action_path: &'a str) -> [&'a str; 5] {
    match resolver {
        Resolver::Key(authorization) => ["key", authorization, "", namespace, action_path],
        Resolver::Web { authorization, secret } => ["web", authorization, secret, namespace, action_path],
        Resolver::Owner(owner) => ["owner", owner, "", namespace, action_path],
    }
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
        let found = |generation, now| lookup(&store, &key, generation, now, 30_000).map(|c| c.action);
        assert_eq!(found("", 1_000), None, "no generation known yet: no cache");
        assert_eq!(found("g1", 1_500), Some(action()));
        assert_eq!(lookup(&store, &key, "g1", 1_500, 30_000).map(|c| c.fetched_ms), Some(1_000));
        assert_eq!(found("g1", 40_000), None, "too old");
        assert_eq!(found("g2", 1_500), None, "an entity was written since");
    }

    #[test]
    fn a_workers_copy_follows_the_same_rules() {
        let mut local = Local::default();
        let by_key = Resolver::Key("Basic abc");
        let cached = Cached { action: action(), fetched_ms: 1_000 };
        local.remember(by_key, "_", "hello", "g1", cached.clone());
        assert_eq!(local.lookup(by_key, "_", "hello", "g1", 1_500, 30_000), Some(action()));
        assert_eq!(local.lookup(by_key, "_", "hello", "g1", 40_000, 30_000), None, "too old");
        assert_eq!(local.lookup(by_key, "_", "hello", "g2", 1_500, 30_000), None, "written since");
        assert_eq!(local.lookup(by_key, "_", "hello", "", 1_500, 30_000), None, "generation unknown");
        assert_eq!(local.lookup(Resolver::Key("Basic abd"), "_", "hello", "g1", 1_500, 30_000), None);
        assert_eq!(local.lookup(Resolver::Owner("Basic abc"), "_", "hello", "g1", 1_500, 30_000), None);
        assert_eq!(local.lookup(by_key, "_", "hell", "g1", 1_500, 30_000), None);
        local.remember(by_key, "_", "other", "", cached);
        assert_eq!(local.len(), 1, "nothing is kept under an unknown generation");
    }

    #[test]
    fn a_workers_copy_stays_bounded() {
        let mut local = Local::default();
        let cached = Cached { action: action(), fetched_ms: 0 };
        for n in 0..LOCAL_CAPACITY {
            local.remember(Resolver::Key("k"), "_", &n.to_string(), "g1", cached.clone());
        }
        assert_eq!(local.len(), LOCAL_CAPACITY);
        // A new generation makes every older entry stale: they go first.
        local.remember(Resolver::Key("k"), "_", "new", "g2", cached.clone());
        assert_eq!(local.len(), 1);
        for n in 0..=LOCAL_CAPACITY {
            local.remember(Resolver::Key("k"), "_", &n.to_string(), "g2", cached.clone());
        }
        assert!(local.len() <= LOCAL_CAPACITY);
        assert!(local.lookup(Resolver::Key("k"), "_", &LOCAL_CAPACITY.to_string(), "g2", 0, 10).is_some());
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
        store.set("k", b"g1\nnot a number\n{}", None).unwrap();
        assert_eq!(lookup(&store, "k", "g1", 0, 10), None);
        store.set("k", b"g1\n0\n{broken", None).unwrap();
        assert_eq!(lookup(&store, "k", "g1", 0, 10), None);
    }
}
