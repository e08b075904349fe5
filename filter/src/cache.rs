//! The resolve cache in Envoy's shared data: who may invoke what, remembered so that a warm invoke
//! needs no call at all. An entry is valid only while the management API's entity generation is
//! the one it was read at (every write bumps it; each worker long-polls it into
//! [`GENERATION_KEY`]), and never longer than a maximum age, which bounds how long a revoked key
//! written outside the API (the admin command) keeps working.
//!
//! ```text
//!  whisk/resolve/{bucket} = "<digest>\n<generation>\n<fetched ms>\n<ResolvedAction JSON>"
//!  whisk/generation       = "<generation>"
//! ```
//!
//! The digest is sha256(authorization, namespace, action), and the bucket a number it names below
//! [`SHARED_BUCKETS`]: Envoy's shared data cannot delete a key, so a key per digest would grow with
//! every user and action ever seen, while buckets bound the cache. Two entries that share a bucket
//! take turns (a lookup checks the digest), which costs a resolve call, never a wrong answer.
//!
//! Each worker also keeps its own copy of the entries it used ([`Local`]), under the same rules: a
//! warm invoke then reads only the generation from shared data, and parses and hashes nothing.

use std::collections::HashMap;
use std::rc::Rc;

use sha2::{Digest, Sha256};
use whisk_contract::ResolvedAction;

use crate::pool::SharedData;

/// Where each worker's root context publishes the current entity generation.
pub const GENERATION_KEY: &str = "whisk/generation";

/// How many entries the shared cache holds at most.
pub const SHARED_BUCKETS: u32 = 8_192;

/// Where an entry lives in shared data, and the digest that says it is this one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Key {
    bucket: String,
    digest: String,
}

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
pub fn key(resolver: Resolver<'_>, namespace: &str, action_path: &str) -> Key {
    let mut digest = Sha256::new();
    for part in parts(resolver, namespace, action_path) {
        digest.update(part.as_bytes());
        // A separator that cannot occur in a header value keeps ("ab","c") apart from ("a","bc").
        digest.update([0u8]);
    }
    let bytes = digest.finalize();
    let bucket = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) % SHARED_BUCKETS;
    let digest = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Key { bucket: format!("whisk/resolve/{bucket}"), digest }
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
    /// Shared with the requests that use it: a warm invoke copies no action.
    pub action: Rc<ResolvedAction>,
    pub fetched_ms: u64,
}

/// The shared entry of `key`, if its bucket holds it, it was read at `generation` and it is not
/// older than `max_age_ms`.
pub fn lookup(
    store: &impl SharedData,
    key: &Key,
    generation: &str,
    now_ms: u64,
    max_age_ms: u64,
) -> Option<Cached> {
    let (bytes, _) = store.get(&key.bucket)?;
    let text = std::str::from_utf8(&bytes).ok()?;
    let mut parts = text.splitn(4, '\n');
    let (digest, entry_generation, fetched, json) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if digest != key.digest {
        return None;
    }
    let fetched_ms: u64 = fetched.parse().ok()?;
    if !valid(entry_generation, fetched_ms, generation, now_ms, max_age_ms) {
        return None;
    }
    serde_json::from_str(json).ok().map(|action| Cached { action: Rc::new(action), fetched_ms })
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
    ) -> Option<Rc<ResolvedAction>> {
        let (entry_generation, cached) = self.entries.get(&local_key(resolver, namespace, action_path))?;
        valid(entry_generation, cached.fetched_ms, generation, now_ms, max_age_ms)
            .then(|| Rc::clone(&cached.action))
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

/// Remembers a resolution read at `generation`, in place of whatever its bucket held.
pub fn remember(store: &impl SharedData, key: &Key, generation: &str, now_ms: u64, action: &ResolvedAction) {
    if generation.is_empty() || generation.contains('\n') {
        return;
    }
    let Ok(json) = serde_json::to_string(action) else { return };
    // Last writer wins: every writer holds a valid resolution of its own key.
    let entry = format!("{}\n{generation}\n{now_ms}\n{json}", key.digest);
    let _ = store.set(&key.bucket, entry.as_bytes(), None);
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
        assert_eq!(found("g1", 1_500), Some(Rc::new(action())));
        assert_eq!(lookup(&store, &key, "g1", 1_500, 30_000).map(|c| c.fetched_ms), Some(1_000));
        assert_eq!(found("g1", 40_000), None, "too old");
        assert_eq!(found("g2", 1_500), None, "an entity was written since");
    }

    #[test]
    fn a_workers_copy_follows_the_same_rules() {
        let mut local = Local::default();
        let by_key = Resolver::Key("Basic abc");
        let cached = Cached { action: Rc::new(action()), fetched_ms: 1_000 };
        local.remember(by_key, "_", "hello", "g1", cached.clone());
        assert_eq!(local.lookup(by_key, "_", "hello", "g1", 1_500, 30_000), Some(Rc::new(action())));
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
        let cached = Cached { action: Rc::new(action()), fetched_ms: 0 };
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
        let secret = by_key("Basic secret");
        assert!(!secret.digest.contains("secret") && !secret.bucket.contains("secret"));
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
        let key = key(Resolver::Key("Basic abc"), "_", "hello");
        let write = |tail: &str| store.set(&key.bucket, format!("{}\n{tail}", key.digest).as_bytes(), None);
        write("g1\nnot a number\n{}").unwrap();
        assert_eq!(lookup(&store, &key, "g1", 0, 10), None);
        write("g1\n0\n{broken").unwrap();
        assert_eq!(lookup(&store, &key, "g1", 0, 10), None);
        write("g1\n0").unwrap();
        assert_eq!(lookup(&store, &key, "g1", 0, 10), None);
    }

    #[test]
    fn the_shared_cache_is_bounded_and_an_entry_found_is_always_its_own() {
        let store = MemoryData::default();
        let named = |name: &str| ResolvedAction { name: name.to_owned(), ..action() };
        let users = 3 * SHARED_BUCKETS as usize;
        for user in 0..users {
            let key = key(Resolver::Key(&format!("Basic {user}")), "_", "hello");
            remember(&store, &key, "g1", 0, &named(&user.to_string()));
        }
        assert!(store.key_count() <= SHARED_BUCKETS as usize, "{} keys", store.key_count());
        let mut hits = 0;
        for user in 0..users {
            let key = key(Resolver::Key(&format!("Basic {user}")), "_", "hello");
            if let Some(found) = lookup(&store, &key, "g1", 0, 10) {
                assert_eq!(found.action.name, user.to_string(), "another user's entry");
                hits += 1;
            }
        }
        // Each bucket holds its last writer's entry.
        assert_eq!(hits, store.key_count());
        // Two keys of one bucket take turns.
        let first = key(Resolver::Key("Basic 0"), "_", "hello");
        let second = (1..)
            .map(|n| key(Resolver::Key(&format!("Basic x{n}")), "_", "hello"))
            .find(|other| other.bucket == first.bucket)
            .unwrap();
        remember(&store, &first, "g1", 0, &named("first"));
        remember(&store, &second, "g1", 0, &named("second"));
        assert_eq!(lookup(&store, &first, "g1", 0, 10), None);
        assert_eq!(
            lookup(&store, &second, "g1", 0, 10).map(|c| c.action.name.clone()),
            Some("second".into())
        );
    }
}
