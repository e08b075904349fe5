//! Incremental (delta) xDS, the pure part: per stream and resource type, what Envoy subscribed to and
//! which version of each resource it holds, and from that and the current resources, what to send and
//! what to remove. No I/O; the ADS module's delta stream only translates requests and responses.
//!
//! ```text
//!  request(subscribe, unsubscribe, initial versions) ──► TypeState ──delta(current)──► {send, removed}
//! ```
//!
//! A resource's version is a hash of its encoding, so it is the same on every server instance: an Envoy
//! that reconnects (to a restarted server) and declares the versions it holds is not sent them again.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use envoy_types::pb::google::protobuf::Any;
use sha2::{Digest, Sha256};

/// The name that stands for "every resource of this type".
pub const WILDCARD: &str = "*";

/// The scheme of xDS transport names (`xdstp://authority/type/collection/id`); a subscription to
/// `xdstp://authority/type/collection/*` is to every resource of that glob collection (LEDS).
const XDSTP: &str = "xdstp://";

/// True when `name` is a glob collection (`xdstp://…/*`).
fn is_glob(name: &str) -> bool {
    name.starts_with(XDSTP) && name.ends_with("/*")
}

/// The glob collection an `xdstp://` resource name belongs to: its name with the last path segment
/// replaced by `*`. `None` for other names, and for a name that is itself a glob.
pub fn glob_of(name: &str) -> Option<String> {
    let path = name.strip_prefix(XDSTP)?;
    let (collection, id) = path.rsplit_once('/')?;
    (id != WILDCARD && collection.contains('/')).then(|| format!("{XDSTP}{collection}/{WILDCARD}"))
}

/// Bytes of the SHA-256 kept in a version: 64 bits make a collision between two versions of one
/// resource negligible, and keep versions short in logs and in Envoy's config dump.
const VERSION_BYTES: usize = 8;

/// One resource as the server has it now.
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned {
    pub version: String,
    pub body: Any,
}

/// The current resources of one type, by name.
pub type Resources = BTreeMap<String, Versioned>;

/// The version of a resource: a hash of its type and encoding. Our resources hold no protobuf maps,
/// whose encoding order prost does not fix, so equal resources encode (and hash) equally.
pub fn version_of(body: &Any) -> String {
    let mut hash = Sha256::new();
    hash.update(body.type_url.as_bytes());
    hash.update([0]);
    hash.update(&body.value);
    hash.finalize().iter().take(VERSION_BYTES).map(|byte| format!("{byte:02x}")).collect()
}

/// Versions the named bodies.
pub fn resources(named: impl IntoIterator<Item = (String, Any)>) -> Resources {
    named.into_iter().map(|(name, body)| (name, Versioned { version: version_of(&body), body })).collect()
}

/// What one response carries.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Delta {
    /// New or changed resources, with their names.
    pub send: Vec<(String, Versioned)>,
    /// Resources Envoy holds that no longer exist.
    pub removed: Vec<String>,
}

impl Delta {
    pub fn is_empty(&self) -> bool {
        self.send.is_empty() && self.removed.is_empty()
    }
}

/// One stream's state for one resource type.
#[derive(Debug, Clone)]
pub struct TypeState {
    /// Listeners and clusters may be asked for as a whole; endpoints only by cluster name.
    wildcard_capable: bool,
    started: bool,
    wildcard: bool,
    names: BTreeSet<String>,
    /// The version of each resource Envoy holds as far as this stream knows: what Envoy declared on
    /// connecting and what we sent since. A sent version counts as held whether Envoy accepted it or
    /// not, so a rejected version is not sent again; only a later change of that resource is.
    held: BTreeMap<String, String>,
    /// Names (and globs) Envoy subscribed to since the last delta: one that names nothing is
    /// answered with its removal, so that Envoy stops waiting for it (an empty LEDS collection
    /// would otherwise keep its cluster warming until the initial fetch timeout).
    asked: BTreeSet<String>,
    /// `held` still has the versions Envoy declared on connecting, unchecked against what exists.
    declared: bool,
}

impl TypeState {
    pub fn new(wildcard_capable: bool) -> Self {
        Self {
            wildcard_capable,
            started: false,
            wildcard: false,
            names: BTreeSet::new(),
            held: BTreeMap::new(),
            asked: BTreeSet::new(),
            declared: false,
        }
    }

    /// Applies one request's subscription changes. The first request of a type may declare the
    /// versions Envoy already holds (after a reconnect), and, for a wildcard-capable type, subscribes
    /// to everything when it names nothing. A name subscribed again later is sent again: Envoy asks
    /// again when it has lost or replaced the resource (e.g. a re-created cluster's endpoints).
    pub fn subscribe(
        &mut self,
        subscribe: &[String],
        unsubscribe: &[String],
        initial_versions: &HashMap<String, String>,
    ) {
        let first = !self.started;
        self.started = true;
        if first && self.wildcard_capable && subscribe.is_empty() {
            self.wildcard = true;
        }
        for name in subscribe {
            if name == WILDCARD {
                self.wildcard |= self.wildcard_capable;
            } else {
                let again = !self.names.insert(name.clone());
                self.asked.insert(name.clone());
                if !first {
                    // No version is empty: the resource is sent again, or removed if it is gone.
                    if let Some(version) = self.held.get_mut(name) {
                        version.clear();
                    }
                    // A glob asked for again is its every member asked for again. (One newly
                    // asked for has no member held: the scan costs every held resource.)
                    if again && is_glob(name) {
                        for (held_name, version) in &mut self.held {
                            if glob_of(held_name).is_some_and(|glob| glob == *name) {
                                version.clear();
                            }
                        }
                    }
                }
            }
        }
        for name in unsubscribe {
            if name == WILDCARD {
                self.wildcard = false;
            } else {
                self.names.remove(name);
                self.asked.remove(name);
            }
        }
        if first {
            self.held.extend(initial_versions.iter().map(|(name, version)| (name.clone(), version.clone())));
            self.declared = !initial_versions.is_empty();
        }
        // Envoy drops what it unsubscribed from by itself; if it subscribes again, it gets it again.
        // Only an unsubscription (or declared versions) can leave unwanted names held: a request
        // that only subscribes skips the scan, which costs every held resource.
        if first || !unsubscribe.is_empty() {
            let unwanted: Vec<String> = self.held.keys().filter(|name| !self.wants(name)).cloned().collect();
            for name in unwanted {
                self.held.remove(&name);
            }
        }
    }

    /// True when Envoy wants resource `name`: by its name, its glob collection, or the wildcard.
    pub fn wants(&self, name: &str) -> bool {
        self.wildcard
            || self.names.contains(name)
            || glob_of(name).is_some_and(|glob| self.names.contains(&glob))
    }

    /// True when Envoy wants anything of this type.
    pub fn is_subscribed(&self) -> bool {
        self.wildcard || !self.names.is_empty()
    }

    /// The names and globs subscribed to since the last delta, which a [`TypeState::delta_of`] must
    /// be given every current resource of.
    pub fn asked(&self) -> &BTreeSet<String> {
        &self.asked
    }

    /// What to send so that Envoy holds exactly the current resources it wants; records it as sent.
    /// One Envoy holds that no longer exists is removed, and so is a name (or a glob) it just
    /// subscribed to that names nothing: Envoy learns that it does not exist (or is empty).
    pub fn delta(&mut self, current: &Resources) -> Delta {
        let mut removed: Vec<String> =
            self.held.keys().filter(|name| !current.contains_key(*name)).cloned().collect();
        for name in &removed {
            self.held.remove(name);
        }
        self.declared = false;
        self.answer_asked(current, &mut removed);
        Delta { send: self.send(current), removed }
    }

    /// [`TypeState::delta`] when only `changed` may differ from the resources last given and only
    /// `gone` went away since, `changed` holding every current resource of what
    /// [`TypeState::asked`] lists: the cost is that of the changes and of what was asked for, not
    /// of every resource. Records it as sent.
    pub fn delta_of(&mut self, changed: &Resources, gone: &[String]) -> Delta {
        let mut removed: Vec<String> =
            gone.iter().filter(|name| self.held.remove(name.as_str()).is_some()).cloned().collect();
        if std::mem::take(&mut self.declared) {
            // What Envoy declared holding, of what it asks for now, that exists no more.
            let stale: Vec<String> = self
                .held
                .keys()
                .filter(|name| !changed.contains_key(*name) && self.is_asked(name))
                .cloned()
                .collect();
            for name in stale {
                self.held.remove(&name);
                removed.push(name);
            }
        }
        self.answer_asked(changed, &mut removed);
        Delta { send: self.send(changed), removed }
    }

    /// True when `name` was asked for since the last delta, by itself or by its glob.
    fn is_asked(&self, name: &str) -> bool {
        self.asked.contains(name) || glob_of(name).is_some_and(|glob| self.asked.contains(&glob))
    }

    /// Adds to `removed` every name and glob asked for since the last delta that names nothing in
    /// `candidates` (which hold every current resource of them); forgets what was asked.
    fn answer_asked(&mut self, candidates: &Resources, removed: &mut Vec<String>) {
        let asked = std::mem::take(&mut self.asked);
        // The globs that have members, found once: a request may ask for a thousand collections.
        let filled: BTreeSet<String> = if asked.iter().any(|name| is_glob(name)) {
            candidates.keys().filter_map(|name| glob_of(name)).collect()
        } else {
            BTreeSet::new()
        };
        for name in asked {
            let exists = if is_glob(&name) { filled.contains(&name) } else { candidates.contains_key(&name) };
            if !exists && !removed.contains(&name) {
                removed.push(name);
            }
        }
    }

    /// The resources among `candidates` that Envoy wants and does not hold in that version; records
    /// them as held.
    fn send(&mut self, candidates: &Resources) -> Vec<(String, Versioned)> {
        let send: Vec<(String, Versioned)> = candidates
            .iter()
            .filter(|(name, resource)| {
                self.wants(name) && self.held.get(*name).is_none_or(|held| *held != resource.version)
            })
            .map(|(name, resource)| (name.clone(), resource.clone()))
            .collect();
        for (name, resource) in &send {
            self.held.insert(name.clone(), resource.version.clone());
        }
        send
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn body(text: &str) -> Any {
        Any { type_url: "type.test/Thing".into(), value: text.as_bytes().to_vec() }
    }

    fn current(items: &[(&str, &str)]) -> Resources {
        resources(items.iter().map(|(name, text)| ((*name).to_owned(), body(text))))
    }

    fn names(delta: &Delta) -> Vec<&str> {
        delta.send.iter().map(|(name, _)| name.as_str()).collect()
    }

    fn none() -> HashMap<String, String> {
        HashMap::new()
    }

    #[test]
    fn versions_are_stable_short_hashes_of_the_encoding() {
        let version = version_of(&body("a"));
        assert_eq!(version, version_of(&body("a")));
        assert_ne!(version, version_of(&body("b")));
        assert_eq!(version.len(), 2 * VERSION_BYTES);
        assert!(version.chars().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn an_empty_first_request_is_a_wildcard_for_listeners_and_clusters_only() {
        let mut clusters = TypeState::new(true);
        clusters.subscribe(&[], &[], &none());
        let delta = clusters.delta(&current(&[("a", "1"), ("b", "1")]));
        assert_eq!(names(&delta), ["a", "b"]);

        let mut endpoints = TypeState::new(false);
        endpoints.subscribe(&[], &[], &none());
        assert!(!endpoints.is_subscribed());
        assert!(endpoints.delta(&current(&[("a", "1")])).is_empty());
        endpoints.subscribe(&["a".into()], &[], &none());
        assert_eq!(names(&endpoints.delta(&current(&[("a", "1"), ("b", "1")]))), ["a"]);
    }

    #[test]
    fn only_changes_are_sent_and_vanished_resources_are_removed() {
        let mut state = TypeState::new(true);
        state.subscribe(&[WILDCARD.into()], &[], &none());
        assert_eq!(names(&state.delta(&current(&[("a", "1"), ("b", "1")]))), ["a", "b"]);
        assert!(state.delta(&current(&[("a", "1"), ("b", "1")])).is_empty());
        let delta = state.delta(&current(&[("a", "2"), ("c", "1")]));
        assert_eq!(names(&delta), ["a", "c"]);
        assert_eq!(delta.removed, ["b"]);
        // An ACK (no subscription change) asks for nothing new.
        state.subscribe(&[], &[], &none());
        assert!(state.delta(&current(&[("a", "2"), ("c", "1")])).is_empty());
    }

    #[test]
    fn versions_envoy_declares_on_reconnect_are_not_sent_again() {
        let now = current(&[("a", "1"), ("b", "2")]);
        let held: HashMap<String, String> = [
            ("a".to_owned(), now["a"].version.clone()),
            ("b".to_owned(), "stale".to_owned()),
            ("gone".to_owned(), "old".to_owned()),
        ]
        .into();
        let mut state = TypeState::new(true);
        state.subscribe(&[], &[], &held);
        let delta = state.delta(&now);
        assert_eq!(names(&delta), ["b"]);
        assert_eq!(delta.removed, ["gone"]);
    }

    #[test]
    fn unsubscribed_names_are_forgotten_and_resubscribed_ones_sent_again() {
        let now = current(&[("a", "1"), ("b", "1")]);
        let mut state = TypeState::new(false);
        state.subscribe(&["a".into(), "b".into()], &[], &none());
        assert_eq!(names(&state.delta(&now)), ["a", "b"]);
        state.subscribe(&[], &["b".into()], &none());
        let delta = state.delta(&current(&[("a", "1")]));
        assert!(delta.is_empty(), "Envoy dropped b itself: {delta:?}");
        state.subscribe(&["a".into(), "b".into()], &[], &none());
        assert_eq!(names(&state.delta(&now)), ["a", "b"]);
    }

    #[test]
    fn glob_collections_take_their_members() {
        assert_eq!(glob_of("xdstp://whisk/T/c_1/abc").as_deref(), Some("xdstp://whisk/T/c_1/*"));
        assert_eq!(glob_of("xdstp://whisk/T/c_1/*"), None);
        assert_eq!(glob_of("whisk_containers"), None);
        assert_eq!(glob_of("xdstp://whisk"), None);

        let mut state = TypeState::new(false);
        state.subscribe(&["xdstp://w/T/one/*".into()], &[], &none());
        let now =
            current(&[("xdstp://w/T/one/a", "1"), ("xdstp://w/T/one/b", "1"), ("xdstp://w/T/two/c", "1")]);
        assert_eq!(names(&state.delta(&now)), ["xdstp://w/T/one/a", "xdstp://w/T/one/b"]);
        // A member gone is removed; asking for the glob again sends its members again.
        let fewer = current(&[("xdstp://w/T/one/b", "1"), ("xdstp://w/T/two/c", "1")]);
        assert_eq!(state.delta(&fewer).removed, ["xdstp://w/T/one/a"]);
        state.subscribe(&["xdstp://w/T/one/*".into()], &[], &none());
        assert_eq!(names(&state.delta(&fewer)), ["xdstp://w/T/one/b"]);
        state.subscribe(&[], &["xdstp://w/T/one/*".into()], &none());
        assert!(state.delta(&now).is_empty());
    }

    #[test]
    fn a_subscription_that_names_nothing_is_answered_with_its_removal() {
        let mut state = TypeState::new(false);
        state.subscribe(&["xdstp://w/T/empty/*".into(), "missing".into(), "a".into()], &[], &none());
        let delta = state.delta(&current(&[("a", "1")]));
        assert_eq!(names(&delta), ["a"]);
        assert_eq!(delta.removed, ["missing", "xdstp://w/T/empty/*"]);
        // Said once: later deltas do not repeat it.
        assert!(state.delta(&current(&[("a", "1")])).is_empty());
        // A collection that gets its first member sends it.
        let delta = state.delta(&current(&[("a", "1"), ("xdstp://w/T/empty/x", "1")]));
        assert_eq!(names(&delta), ["xdstp://w/T/empty/x"]);
    }

    /// One step of a stream: Envoy changes its subscription, or the server's resources change.
    #[derive(Debug, Clone)]
    enum Step {
        Request { subscribe: Vec<String>, unsubscribe: Vec<String> },
        Resources(BTreeMap<String, u8>),
    }

    const GLOB: &str = "xdstp://w/T/c/*";

    fn name() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("a"),
            Just("b"),
            Just("c"),
            Just(WILDCARD),
            Just("xdstp://w/T/c/d"),
            Just("xdstp://w/T/c/e"),
            Just(GLOB),
        ]
        .prop_map(String::from)
    }

    /// A name a resource can have: neither the wildcard nor a glob.
    fn is_resource(name: &str) -> bool {
        name != WILDCARD && name != GLOB
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (prop::collection::vec(name(), 0..3), prop::collection::vec(name(), 0..2))
                .prop_map(|(subscribe, unsubscribe)| Step::Request { subscribe, unsubscribe }),
            prop::collection::btree_map(name().prop_filter("a real name", |n| is_resource(n)), 0..3u8, 0..4)
                .prop_map(Step::Resources),
        ]
    }

    fn versioned(map: &BTreeMap<String, u8>) -> Resources {
        resources(map.iter().map(|(name, value)| (name.clone(), body(&value.to_string()))))
    }

    proptest! {
        /// When only some resources changed and some went away, the delta of those alone is the
        /// delta of everything, and leaves the same record of what Envoy holds.
        #[test]
        fn the_delta_of_the_changes_is_the_delta_of_everything(
            names in prop::collection::btree_set(name(), 1..8),
            before in prop::collection::vec(0..3u8, 8),
            after in prop::collection::vec(0..3u8, 8),
            changed in prop::collection::vec(any::<bool>(), 8),
            gone in prop::collection::vec(any::<bool>(), 8),
            held_back in prop::collection::vec(any::<bool>(), 8),
            later in prop::collection::vec(name(), 0..3),
        ) {
            let names: Vec<String> = names.into_iter().filter(|name| is_resource(name)).collect();
            let version = |values: &[u8]| -> BTreeMap<String, u8> {
                names.iter().zip(values).map(|(name, value)| (name.clone(), *value)).collect()
            };
            let old = version(&before);
            // Only the changed names take their new value; the gone ones are no more.
            let new: BTreeMap<String, u8> = names
                .iter()
                .zip(after.iter().zip(changed.iter().zip(&gone)))
                .filter(|(_, (_, (_, gone)))| !**gone)
                .map(|(name, (value, (changed, _)))| (name.clone(), if *changed { *value } else { old[name] }))
                .collect();
            let mut state = TypeState::new(false);
            let subscribed: Vec<String> =
                names.iter().zip(&held_back).filter(|(_, back)| !**back).map(|(name, _)| name.clone()).collect();
            state.subscribe(&subscribed, &[], &HashMap::new());
            state.delta(&versioned(&old));
            // Envoy may ask for more (names, a glob) before the next delta.
            state.subscribe(&later, &[], &HashMap::new());
            let mut everything = state.clone();
            let whole = everything.delta(&versioned(&new));
            // The changes, and every current resource of what was asked for since.
            let changes: BTreeMap<String, u8> = names
                .iter()
                .zip(&changed)
                .filter(|(name, changed)| new.contains_key(*name) && (**changed || state.is_asked(name)))
                .map(|(name, _)| (name.clone(), new[name]))
                .collect();
            let went: Vec<String> =
                names.iter().zip(&gone).filter(|(_, gone)| **gone).map(|(name, _)| name.clone()).collect();
            let partial = state.delta_of(&versioned(&changes), &went);
            prop_assert_eq!(partial, whole);
            prop_assert_eq!(state.held, everything.held);
        }

        /// Applying every computed delta to Envoy's view always yields exactly the current resources
        /// Envoy subscribed to, and a resource Envoy holds unchanged is never sent again unless it
        /// asked for it again.
        #[test]
        fn envoy_ends_up_with_exactly_what_it_wants_and_nothing_unchanged_is_resent(
            wildcard_capable in any::<bool>(),
            initial in prop::collection::btree_map(name(), 0..3u8, 0..3),
            steps in prop::collection::vec(step(), 1..12),
        ) {
            let mut state = TypeState::new(wildcard_capable);
            // Envoy's own model of its subscription, kept apart from the code under test.
            let mut wildcard = false;
            let mut subscribed = BTreeSet::<String>::new();
            let mut view: BTreeMap<String, String> = versioned(&initial)
                .into_iter()
                .filter(|(name, _)| is_resource(name))
                .map(|(name, resource)| (name, resource.version))
                .collect();
            let declared: HashMap<String, String> = view.clone().into_iter().collect();
            let mut current = Resources::new();
            let mut first = true;
            for step in steps {
                let mut asked_again = BTreeSet::new();
                match step {
                    Step::Request { subscribe, unsubscribe } => {
                        if first && wildcard_capable && subscribe.is_empty() {
                            wildcard = true;
                        }
                        for name in &subscribe {
                            if name == WILDCARD {
                                wildcard |= wildcard_capable;
                            } else {
                                subscribed.insert(name.clone());
                                if !first {
                                    asked_again.insert(name.clone());
                                }
                                if !first && name == GLOB {
                                    asked_again.extend(view.keys().filter(|held| held.starts_with("xdstp://")).cloned());
                                }
                            }
                        }
                        for name in &unsubscribe {
                            if name == WILDCARD { wildcard = false } else { subscribed.remove(name); }
                        }
                        let initial = if first { declared.clone() } else { HashMap::new() };
                        state.subscribe(&subscribe, &unsubscribe, &initial);
                        first = false;
                    }
                    Step::Resources(map) => current = versioned(&map),
                }
                if first {
                    continue;
                }
                let wants = |name: &str| {
                    wildcard || subscribed.contains(name) || (name.starts_with("xdstp://") && subscribed.contains(GLOB))
                };
                view.retain(|name, _| wants(name));
                let delta = state.delta(&current);
                for (name, resource) in &delta.send {
                    prop_assert!(
                        asked_again.contains(name) || view.get(name) != Some(&resource.version),
                        "{name} resent unchanged"
                    );
                    view.insert(name.clone(), resource.version.clone());
                }
                for name in &delta.removed {
                    view.remove(name);
                }
                let expected: BTreeMap<String, String> = current
                    .iter()
                    .filter(|(name, _)| wants(name))
                    .map(|(name, resource)| (name.clone(), resource.version.clone()))
                    .collect();
                prop_assert_eq!(&view, &expected);
            }
        }
    }
}
