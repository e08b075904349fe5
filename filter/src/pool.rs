//! The warm pool in Envoy's shared data: one key per container slot of an action revision, holding
//! the container's state, id, address and use count. Claims and releases are compare-and-swap on
//! that key, so two workers (two Wasm VMs) can never both own one container; the collector's marks
//! and sweeps are CAS on the same key, so a sweep can never take a container an activation holds.
//!
//! ```text
//!  whisk/pool/{namespace}/{pkg/}{name}@{revision}/{slot}  =  "N <id> <ip:port> <uses> <init ms>"  new, never used
//!                                                            "F <id> <ip:port> <uses>"   free
//!                                                            "M <id> <ip:port> <uses>"   free, marked by the GC
//!                                                            "B <id> <ip:port> <uses>"   busy (claimed)
//!                                                            "H <id> <ip:port> <uses>"   busy, handed to a run
//!                                                                                        not yet adopted
//!                                                            "X <id> <ip:port> <uses>"   retired, never reused
//! ```
//!
//! A slot the cold start of this Envoy filled also ends in `j<ms>@<worker>`: when it joined the pool,
//! and which worker's cold start brought it. Envoy's workers apply an endpoint update each on its
//! own event loop, some milliseconds after the node acknowledged it; the worker that asked for the
//! cold start read the answer after that acknowledgement, but another worker may not know the new
//! endpoint yet, and its request would go to whatever container override_host's fallback picks. So
//! for a short while only the worker that brought a container claims it ([`Claimant`]).
//!
//! Envoy's shared data has no atomic create (a write to a missing key ignores `cas`), so a key is
//! only ever created by the one request that the control plane gave that slot to; everything else
//! is a CAS on an existing key. Slots are handed out lowest-free, so a scan from slot 0 finds them;
//! it tolerates short gaps (cold starts finishing out of order).

use std::fmt;

/// Consecutive missing slots after which a scan stops.
const GAP_TOLERANCE: u32 = 8;
/// Hard bound on slots scanned per claim.
const MAX_SLOTS: u32 = 4096;
/// Bound on CAS retries of one release or GC transition.
const RELEASE_ATTEMPTS: usize = 64;

/// The subset of Envoy's shared-data API the pool needs.
pub trait SharedData {
    /// The value and its CAS token, or `None` when the key does not exist.
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)>;
    /// Writes `value` if `cas` matches the key's current token (`None`: unconditionally).
    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), CasMismatch>;
}

/// Another writer changed the key since it was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CasMismatch;

/// A slot's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotState {
    /// Just cold-started and free: its first activation carries the `/init` time.
    New,
    Free,
    /// Free, marked idle by the collector: claimed only when no unmarked container is free.
    Marked,
    Busy,
    /// Claimed by a client's stream and handed to its detached run, which adopts it (`H → B`); if
    /// the run never reaches the filter, the root context takes it back (`H → F`).
    Handed,
    Retired,
}

impl SlotState {
    fn tag(self) -> u8 {
        match self {
            Self::New => b'N',
            Self::Free => b'F',
            Self::Marked => b'M',
            Self::Busy => b'B',
            Self::Handed => b'H',
            Self::Retired => b'X',
        }
    }

    fn from_tag(tag: &str) -> Option<Self> {
        Some(match tag {
            "N" => Self::New,
            "F" => Self::Free,
            "M" => Self::Marked,
            "B" => Self::Busy,
            "H" => Self::Handed,
            "X" => Self::Retired,
            _ => return None,
        })
    }

    /// Free, whether marked or not.
    pub fn is_free(self) -> bool {
        matches!(self, Self::New | Self::Free | Self::Marked)
    }
}

/// One slot's value, borrowed from the bytes it was read from: reading a slot allocates nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot<'a> {
    pub state: SlotState,
    pub container_id: &'a str,
    pub address: &'a str,
    /// Activations claimed in this container so far.
    pub uses: u64,
    /// `/init` milliseconds, only on a [`SlotState::New`] slot (and not on one handed over warm).
    pub init_ms: Option<u64>,
    /// When the container joined this Envoy's pool, and through which worker.
    pub joined: Option<Joined<'a>>,
}

/// When a container joined an Envoy's pool, and which worker's cold start brought it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Joined<'a> {
    pub at_ms: u64,
    pub worker: &'a str,
}

/// Who claims, and when: a container that joined less than `exclusive_ms` ago is claimed only by
/// the worker that brought it, since the others may not route to it yet (see the module's doc).
#[derive(Debug, Clone, Copy)]
pub struct Claimant<'a> {
    pub worker: &'a str,
    pub now_ms: u64,
    pub exclusive_ms: u64,
    /// Claim only a container this worker brought and still has to itself: another worker's
    /// request has waited longer for any other container.
    pub own_new_only: bool,
}

impl Claimant<'_> {
    /// True when `slot`'s container is this worker's alone for now.
    fn has_to_itself(&self, slot: &Slot<'_>) -> bool {
        slot.joined.as_ref().is_some_and(|joined| {
            joined.worker == self.worker && self.now_ms < joined.at_ms.saturating_add(self.exclusive_ms)
        })
    }

    /// True when this claimant may take `slot`'s container (whatever its state).
    fn may_take(&self, slot: &Slot<'_>) -> bool {
        if self.has_to_itself(slot) {
            return true;
        }
        !self.own_new_only
            && slot
                .joined
                .as_ref()
                .is_none_or(|joined| self.now_ms >= joined.at_ms.saturating_add(self.exclusive_ms))
    }
}

impl<'a> Slot<'a> {
    /// The value as stored. Written by hand rather than with `format!`: a slot is written twice per
    /// invoke, and in the VM a formatter's first use within a callback costs microseconds.
    fn encode(&self) -> Vec<u8> {
        let mut numbers = itoa::Buffer::new();
        let mut text = Vec::with_capacity(self.container_id.len() + self.address.len() + 48);
        text.push(self.state.tag());
        text.push(b' ');
        text.extend_from_slice(self.container_id.as_bytes());
        text.push(b' ');
        text.extend_from_slice(self.address.as_bytes());
        text.push(b' ');
        text.extend_from_slice(numbers.format(self.uses).as_bytes());
        if let Some(init_ms) = self.init_ms {
            text.push(b' ');
            text.extend_from_slice(numbers.format(init_ms).as_bytes());
        }
        if let Some(joined) = &self.joined {
            text.extend_from_slice(b" j");
            text.extend_from_slice(numbers.format(joined.at_ms).as_bytes());
            text.push(b'@');
            text.extend_from_slice(joined.worker.as_bytes());
        }
        text
    }

    fn decode(bytes: &'a [u8]) -> Option<Self> {
        let text = std::str::from_utf8(bytes).ok()?;
        let mut parts = text.split(' ');
        let state = SlotState::from_tag(parts.next()?)?;
        let container_id = parts.next()?;
        let address = parts.next()?;
        let uses = parts.next()?.parse().ok()?;
        let mut next = parts.next();
        let init_ms = match (state, next) {
            (SlotState::New, Some(ms)) if !ms.starts_with('j') => {
                next = parts.next();
                Some(ms.parse().ok()?)
            }
            // A new slot without `/init` time: a warm container handed over from another Envoy.
            _ => None,
        };
        let joined = match next {
            Some(token) => {
                let (at_ms, worker) = token.strip_prefix('j')?.split_once('@')?;
                Some(Joined { at_ms: at_ms.parse().ok()?, worker })
            }
            None => None,
        };
        if parts.next().is_some() {
            return None;
        }
        Some(Self { state, container_id, address, uses, init_ms, joined })
    }
}

/// A container this request owns until it releases it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub key: String,
    pub container_id: String,
    pub address: String,
    /// Set when this claim is the container's first activation: its cold start's `/init` time.
    pub init_ms: Option<u64>,
}

impl fmt::Display for Claim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.container_id, self.address)
    }
}

impl Claim {
    /// The claim as one header value, for a stream that hands its claim to another: the key goes
    /// last because entity names may contain spaces, and ids and addresses never do.
    pub fn to_header(&self) -> String {
        let init_ms = self.init_ms.map_or_else(|| "-".to_owned(), |ms| ms.to_string());
        format!("{} {} {init_ms} {}", self.container_id, self.address, self.key)
    }

    /// The claim [`Claim::to_header`] wrote, or `None` for anything else.
    pub fn from_header(value: &str) -> Option<Self> {
        let mut parts = value.splitn(4, ' ');
        let container_id = parts.next().filter(|id| !id.is_empty())?.to_owned();
        let address = parts.next().filter(|address| !address.is_empty())?.to_owned();
        let init_ms = match parts.next()? {
            "-" => None,
            ms => Some(ms.parse().ok()?),
        };
        let key = parts.next().filter(|key| !key.is_empty())?.to_owned();
        Some(Self { key, container_id, address, init_ms })
    }

    /// True when the claim is one of `prefix`'s slots (the action revision a request resolved to).
    pub fn belongs_to(&self, prefix: &str) -> bool {
        self.key
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_prefix('/'))
            .is_some_and(|slot| !slot.is_empty() && slot.bytes().all(|byte| byte.is_ascii_digit()))
    }
}

/// Hands the claim over to another stream (`B → H`): until that stream adopts it, the claim is
/// nobody's, and the one who started the hand-over may take it back. False when the claim was not
/// held.
pub fn hand_over(store: &impl SharedData, claim: &Claim) -> bool {
    transition(store, &claim.key, &claim.container_id, |state| state == SlotState::Busy, SlotState::Handed)
}

/// Adopts a claim handed over (`H → B`): from now on this stream holds it. False when it was not
/// handed (taken back already, or never handed).
pub fn adopt(store: &impl SharedData, claim: &Claim) -> bool {
    transition(store, &claim.key, &claim.container_id, |state| state == SlotState::Handed, SlotState::Busy)
}

/// True when the slot under `key` holds `container_id` and `claimant` may take it now: a stream
/// that adopted a claim another worker made checks that its worker routes to the container yet.
pub fn may_take(store: &impl SharedData, key: &str, container_id: &str, claimant: &Claimant) -> bool {
    store.get(key).is_some_and(|(bytes, _)| {
        Slot::decode(&bytes).is_some_and(|slot| slot.container_id == container_id && claimant.may_take(&slot))
    })
}

/// Takes back a claim handed over that nobody adopted (`H → F`): the run never reached its
/// container. False when it was adopted (or is gone).
pub fn take_back(store: &impl SharedData, claim: &Claim) -> bool {
    transition(store, &claim.key, &claim.container_id, |state| state == SlotState::Handed, SlotState::Free)
}

/// The key prefix of one action revision's slots.
pub fn action_prefix(namespace: &str, action_path: &str, revision: &str) -> String {
    ["whisk/pool/", namespace, "/", action_path, "@", revision].concat()
}

/// The key of one slot of an action revision.
pub fn slot_key(prefix: &str, slot: u32) -> String {
    format!("{prefix}/{slot}")
}

/// Claims the lowest free unmarked container of the action revision that `claimant` may take, or
/// else the lowest marked one (reviving it beats a cold start; the collector sees the use and
/// unmarks it). Preferring low slots keeps traffic on few containers, so the others go idle and can
/// be collected.
pub fn claim(store: &impl SharedData, prefix: &str, claimant: &Claimant) -> Option<Claim> {
    let mut marked: Vec<String> = Vec::new();
    for (key, bytes, cas) in scan(store, prefix) {
        let Some(current) = Slot::decode(&bytes) else { continue };
        if !claimant.may_take(&current) {
            continue;
        }
        match current.state {
            SlotState::New | SlotState::Free => {
                if let Some(claim) = try_claim(store, key, current, cas) {
                    return Some(claim);
                }
            }
            SlotState::Marked => marked.push(key),
            SlotState::Busy | SlotState::Handed | SlotState::Retired => {}
        }
    }
    marked.into_iter().find_map(|key| {
        let (bytes, cas) = store.get(&key)?;
        let current = Slot::decode(&bytes)?;
        let free = current.state.is_free() && claimant.may_take(&current);
        if free { try_claim(store, key, current, cas) } else { None }
    })
}

/// Claims the slot under `key` if it is free and unmarked: the shortcut to a slot the caller has
/// just freed, which spares a scan from slot 0 (one shared-data read per slot) when most of the
/// pool is busy. Marked slots are left to [`claim`], which takes them only when nothing else is free.
pub fn claim_at(store: &impl SharedData, key: &str, claimant: &Claimant) -> Option<Claim> {
    let (bytes, cas) = store.get(key)?;
    let current = Slot::decode(&bytes)?;
    if !matches!(current.state, SlotState::New | SlotState::Free) || !claimant.may_take(&current) {
        return None;
    }
    try_claim(store, key.to_owned(), current, cas)
}

fn try_claim(store: &impl SharedData, key: String, current: Slot<'_>, cas: u32) -> Option<Claim> {
    let init_ms = current.init_ms;
    let busy = Slot { state: SlotState::Busy, init_ms: None, uses: current.uses + 1, ..current };
    store.set(&key, &busy.encode(), Some(cas)).ok()?;
    Some(Claim { key, container_id: busy.container_id.to_owned(), address: busy.address.to_owned(), init_ms })
}

/// Writes a freshly cold-started container into the slot the control plane gave it; `joined` says
/// when, and which worker's cold start brought it.
pub fn insert_new(
    store: &impl SharedData,
    prefix: &str,
    slot: u32,
    container_id: &str,
    address: &str,
    init_ms: Option<u64>,
    joined: Joined<'_>,
) {
    let new = Slot { state: SlotState::New, container_id, address, uses: 0, init_ms, joined: Some(joined) };
    let _ = store.set(&slot_key(prefix, slot), &new.encode(), None);
}

#[cfg(test)]
pub fn insert_claimed(
    store: &impl SharedData,
    prefix: &str,
    slot: u32,
    container_id: &str,
    address: &str,
) -> Claim {
    let key = slot_key(prefix, slot);
    let busy = Slot { state: SlotState::Busy, container_id, address, uses: 1, init_ms: None, joined: None };
    let _ = store.set(&key, &busy.encode(), None);
    Claim { key, container_id: container_id.to_owned(), address: address.to_owned(), init_ms: None }
}

/// Ends a claim: the slot becomes `next` (free again, or retired). False when the slot no longer
/// holds this claim's container as busy.
pub fn release(store: &impl SharedData, claim: &Claim, next: SlotState) -> bool {
    transition(store, &claim.key, &claim.container_id, |state| state == SlotState::Busy, next)
}

/// Free containers of the action revision that `claimant` may not take yet but will within the
/// while (other workers' new ones): a waiter gets one sooner than a cold start would bring one.
pub fn free_soon(store: &impl SharedData, prefix: &str, claimant: &Claimant) -> usize {
    scan(store, prefix)
        .filter(|(_, bytes, _)| {
            Slot::decode(bytes).is_some_and(|found| found.state.is_free() && !claimant.may_take(&found))
        })
        .count()
}

/// True when the action revision has a container that is not retired: a waiter will get it when
/// it frees up, even if no new container can be started now.
pub fn holds_live(store: &impl SharedData, prefix: &str) -> bool {
    scan(store, prefix)
        .any(|(_, bytes, _)| Slot::decode(&bytes).is_some_and(|found| found.state != SlotState::Retired))
}

/// The slots of an action revision that hold a value, lowest first, as `(key, value, cas)`: the
/// scan crosses short gaps (cold starts finishing out of order) and stops after
/// [`GAP_TOLERANCE`] missing slots in a row, or at [`MAX_SLOTS`].
fn scan<'a, S: SharedData>(
    store: &'a S,
    prefix: &'a str,
) -> impl Iterator<Item = (String, Vec<u8>, u32)> + 'a {
    let mut missing_run = 0;
    (0..MAX_SLOTS)
        .map_while(move |slot| {
            if missing_run >= GAP_TOLERANCE {
                return None;
            }
            let key = slot_key(prefix, slot);
            match store.get(&key) {
                Some((bytes, cas)) => {
                    missing_run = 0;
                    Some(Some((key, bytes, cas)))
                }
                None => {
                    missing_run += 1;
                    Some(None)
                }
            }
        })
        .flatten()
}

/// What a slot holds now, when it still holds `container_id`: its state and use count.
pub fn inspect(store: &impl SharedData, key: &str, container_id: &str) -> Option<(SlotState, u64)> {
    let (bytes, _) = store.get(key)?;
    let slot = Slot::decode(&bytes)?;
    (slot.container_id == container_id).then_some((slot.state, slot.uses))
}

/// The collector marked the container: it is no longer chosen while an unmarked one is free.
/// False when it is not free (an activation claimed it: the next report says so).
pub fn mark(store: &impl SharedData, key: &str, container_id: &str) -> bool {
    transition(
        store,
        key,
        container_id,
        |state| matches!(state, SlotState::New | SlotState::Free),
        SlotState::Marked,
    )
}

/// The collector unmarked the container.
pub fn unmark(store: &impl SharedData, key: &str, container_id: &str) -> bool {
    transition(store, key, container_id, |state| state == SlotState::Marked, SlotState::Free)
}

/// Retires a free container for good (a sweep, or the control plane no longer knows it). Only a
/// free slot is taken, by CAS, so a container an activation holds is never retired this way.
pub fn retire_free(store: &impl SharedData, key: &str, container_id: &str, only_marked: bool) -> bool {
    let allowed = |state: SlotState| if only_marked { state == SlotState::Marked } else { state.is_free() };
    transition(store, key, container_id, allowed, SlotState::Retired)
}

/// CAS of the slot at `key` from a state `from` accepts to `to`, while it holds `container_id`.
fn transition(
    store: &impl SharedData,
    key: &str,
    container_id: &str,
    from: impl Fn(SlotState) -> bool,
    to: SlotState,
) -> bool {
    for _ in 0..RELEASE_ATTEMPTS {
        let Some((mut bytes, cas)) = store.get(key) else { return false };
        let Some(current) = Slot::decode(&bytes) else { return false };
        if current.container_id != container_id || !from(current.state) {
            return false;
        }
        let updated = if current.init_ms.is_none() {
            // Only the state changes, and it is the first byte: no writing the value again.
            bytes[0] = to.tag();
            bytes
        } else {
            Slot { state: to, init_ms: None, ..current }.encode()
        };
        if store.set(key, &updated, Some(cas)).is_ok() {
            return true;
        }
    }
    false
}

#[cfg(test)]
pub(crate) mod memory {
    //! An in-memory [`SharedData`] with Envoy's semantics, for tests.
    use super::*;
    use std::cell::RefCell;
    use std::collections::HashMap;

    #[derive(Debug, Default)]
    pub struct MemoryData {
        entries: RefCell<HashMap<String, (Vec<u8>, u32)>>,
        next_cas: RefCell<u32>,
    }

    impl MemoryData {
        /// How many keys were ever written (Envoy's shared data never deletes one).
        pub fn key_count(&self) -> usize {
            self.entries.borrow().len()
        }
    }

    impl SharedData for MemoryData {
        fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
            self.entries.borrow().get(key).cloned()
        }

        fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), CasMismatch> {
            let mut entries = self.entries.borrow_mut();
            // As in Envoy: a stale cas fails, but a missing key is written whatever the cas.
            if let (Some(expected), Some((_, current))) = (cas, entries.get(key))
                && expected != 0
                && expected != *current
            {
                return Err(CasMismatch);
            }
            let mut next = self.next_cas.borrow_mut();
            *next += 1;
            entries.insert(key.to_owned(), (value.to_vec(), *next));
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::memory::MemoryData;
    use super::*;
    use proptest::prelude::*;

    const PREFIX: &str = "whisk/pool/guest/hello@r1";

    /// A worker claiming long after every container joined.
    const ANYONE: Claimant<'static> =
        Claimant { worker: "w0", now_ms: 1_000_000, exclusive_ms: 50, own_new_only: false };

    /// Joined long before [`ANYONE`] claims.
    fn joined() -> Joined<'static> {
        Joined { at_ms: 1, worker: "w9" }
    }

    #[test]
    fn a_cold_started_container_is_busy_then_free_then_claimable() {
        let store = MemoryData::default();
        let claim = insert_claimed(&store, PREFIX, 0, "c0", "127.0.0.1:4000");
        assert_eq!(super::claim(&store, PREFIX, &ANYONE), None, "busy containers are not claimable");
        assert!(release(&store, &claim, SlotState::Free));
        let again = super::claim(&store, PREFIX, &ANYONE).unwrap();
        assert_eq!((again.container_id.as_str(), again.address.as_str()), ("c0", "127.0.0.1:4000"));
    }

    #[test]
    fn a_new_container_hands_its_init_time_to_its_first_claim_only() {
        let store = MemoryData::default();
        insert_new(&store, PREFIX, 0, "c0", "127.0.0.1:4000", Some(120), joined());
        let first = super::claim(&store, PREFIX, &ANYONE).unwrap();
        assert_eq!(first.init_ms, Some(120));
        assert!(release(&store, &first, SlotState::Free));
        assert_eq!(super::claim(&store, PREFIX, &ANYONE).unwrap().init_ms, None);
        // A warm container handed over from another Envoy is new here, with no init time.
        insert_new(&store, PREFIX, 1, "c1", "127.0.0.1:4001", None, joined());
        let moved = Slot::decode(b"N c1 127.0.0.1:4001 0").unwrap();
        assert_eq!((moved.state, moved.init_ms), (SlotState::New, None));
        assert_eq!(Slot::decode(b"F c0 127.0.0.1:1 0 5"), None);
        assert_eq!(Slot::decode(b"F c0 127.0.0.1:1"), None, "a slot without use count is damaged");
    }

    #[test]
    fn a_new_container_is_claimed_only_by_the_worker_that_brought_it_for_a_while() {
        let store = MemoryData::default();
        let at = |worker: &'static str, now_ms: u64, own_new_only: bool| Claimant {
            worker,
            now_ms,
            exclusive_ms: 50,
            own_new_only,
        };
        insert_new(&store, PREFIX, 0, "c0", "127.0.0.1:1", Some(9), Joined { at_ms: 1_000, worker: "a" });
        let key = slot_key(PREFIX, 0);
        assert_eq!(claim(&store, PREFIX, &at("b", 1_010, false)), None, "b may not route to it yet");
        assert_eq!(free_soon(&store, PREFIX, &at("b", 1_010, false)), 1, "but b's waiter gets it soon");
        assert_eq!(free_soon(&store, PREFIX, &at("a", 1_010, false)), 0, "a may take it now");
        assert_eq!(free_soon(&store, PREFIX, &at("b", 1_050, false)), 0, "so may b, later");
        assert_eq!(claim_at(&store, &key, &at("b", 1_049, false)), None);
        let first = claim(&store, PREFIX, &at("a", 1_010, true)).unwrap();
        assert_eq!((first.container_id.as_str(), first.init_ms), ("c0", Some(9)));
        assert_eq!(free_soon(&store, PREFIX, &at("b", 1_010, false)), 0, "busy: not free soon");
        assert!(release(&store, &first, SlotState::Free));
        let by_b = claim_at(&store, &key, &at("b", 1_050, false)).unwrap();
        assert_eq!(by_b.container_id, "c0", "the while is over: anyone's");
        assert!(release(&store, &by_b, SlotState::Free));
        assert_eq!(claim(&store, PREFIX, &at("a", 1_051, true)), None, "no longer a's alone");
        assert!(claim(&store, PREFIX, &at("a", 1_051, false)).is_some());
        // A container older than anyone's cold start is never a worker's own.
        let old = insert_claimed(&store, PREFIX, 1, "c1", "127.0.0.1:2");
        assert!(release(&store, &old, SlotState::Free));
        assert_eq!(claim(&store, PREFIX, &at("a", 1_010, true)), None);
    }

    #[test]
    fn a_claim_handed_to_another_worker_is_its_to_use_only_once_that_worker_may_route_to_it() {
        let store = MemoryData::default();
        insert_new(&store, PREFIX, 0, "c0", "127.0.0.1:1", None, Joined { at_ms: 1_000, worker: "a" });
        let at = |worker: &'static str, now_ms: u64| Claimant {
            worker,
            now_ms,
            exclusive_ms: 50,
            own_new_only: false,
        };
        let claim = claim(&store, PREFIX, &at("a", 1_001)).unwrap();
        assert!(hand_over(&store, &claim) && adopt(&store, &claim));
        assert!(may_take(&store, &claim.key, "c0", &at("a", 1_002)));
        assert!(!may_take(&store, &claim.key, "c0", &at("b", 1_002)));
        assert!(may_take(&store, &claim.key, "c0", &at("b", 1_050)));
        assert!(!may_take(&store, &claim.key, "c1", &at("a", 1_002)), "another container");
        assert!(!may_take(&store, &slot_key(PREFIX, 1), "c0", &at("a", 1_002)), "missing");
    }

    #[test]
    fn when_and_by_whom_a_container_joined_survives_every_transition() {
        let joined = Joined { at_ms: 1_000, worker: "a" };
        for text in
            ["N c0 127.0.0.1:1 0 120 j1000@a", "N c0 127.0.0.1:1 0 j1000@a", "F c0 127.0.0.1:1 3 j1000@a"]
        {
            let slot = Slot::decode(text.as_bytes()).unwrap();
            assert_eq!(slot.joined.as_ref(), Some(&joined), "{text}");
            assert_eq!(slot.encode(), text.as_bytes());
        }
        for damaged in ["F c0 127.0.0.1:1 3 j1000", "F c0 127.0.0.1:1 3 jx@a", "F c0 127.0.0.1:1 3 j1@a 5"] {
            assert_eq!(Slot::decode(damaged.as_bytes()), None, "{damaged}");
        }
        let store = MemoryData::default();
        insert_new(&store, PREFIX, 0, "c0", "127.0.0.1:1", Some(5), joined);
        let key = slot_key(PREFIX, 0);
        let claim = claim(&store, PREFIX, &ANYONE).unwrap();
        assert!(release(&store, &claim, SlotState::Free) && mark(&store, &key, "c0"));
        let bytes = store.get(&key).unwrap().0;
        let slot = Slot::decode(&bytes).unwrap();
        assert_eq!((slot.state, slot.init_ms, slot.joined), (SlotState::Marked, None, Some(joined)));
    }

    #[test]
    fn retired_containers_are_never_claimed_and_their_slot_can_be_reused() {
        let store = MemoryData::default();
        let claim = insert_claimed(&store, PREFIX, 0, "c0", "127.0.0.1:4000");
        assert!(release(&store, &claim, SlotState::Retired));
        assert_eq!(super::claim(&store, PREFIX, &ANYONE), None);
        let successor = insert_claimed(&store, PREFIX, 0, "c1", "127.0.0.1:4001");
        assert!(!release(&store, &claim, SlotState::Free), "a stale claim cannot free the successor");
        assert!(release(&store, &successor, SlotState::Free));
        assert_eq!(super::claim(&store, PREFIX, &ANYONE).unwrap().container_id, "c1");
    }

    #[test]
    fn the_lowest_free_slot_wins_and_short_gaps_are_crossed() {
        let store = MemoryData::default();
        for (slot, id) in [(0, "a"), (3, "d")] {
            let claim = insert_claimed(&store, PREFIX, slot, id, "127.0.0.1:1");
            release(&store, &claim, SlotState::Free);
        }
        assert_eq!(super::claim(&store, PREFIX, &ANYONE).unwrap().container_id, "a");
        assert_eq!(super::claim(&store, PREFIX, &ANYONE).unwrap().container_id, "d");
        assert_eq!(super::claim(&store, PREFIX, &ANYONE), None);
    }

    #[test]
    fn a_slot_claimed_directly_must_be_free_and_unmarked() {
        let store = MemoryData::default();
        let claim = insert_claimed(&store, PREFIX, 2, "c2", "127.0.0.1:4002");
        let key = slot_key(PREFIX, 2);
        assert_eq!(claim_at(&store, &key, &ANYONE), None, "busy");
        assert!(release(&store, &claim, SlotState::Free));
        assert!(mark(&store, &key, "c2"));
        assert_eq!(
            claim_at(&store, &key, &ANYONE),
            None,
            "marked: only a scan that finds nothing else takes it"
        );
        assert!(unmark(&store, &key, "c2"));
        assert_eq!(claim_at(&store, &key, &ANYONE).map(|claim| claim.container_id), Some("c2".into()));
        assert_eq!(claim_at(&store, &slot_key(PREFIX, 3), &ANYONE), None, "missing");
    }

    #[test]
    fn a_stale_cas_loses() {
        let store = MemoryData::default();
        let claim = insert_claimed(&store, PREFIX, 0, "c0", "127.0.0.1:4000");
        release(&store, &claim, SlotState::Free);
        let (bytes, cas) = store.get(&claim.key).unwrap();
        // Someone else claims between our read and our write.
        assert!(super::claim(&store, PREFIX, &ANYONE).is_some());
        assert_eq!(store.set(&claim.key, &bytes, Some(cas)), Err(CasMismatch));
    }

    #[test]
    fn garbage_values_are_skipped_not_trusted() {
        let store = MemoryData::default();
        store.set(&format!("{PREFIX}/0"), b"nonsense", None).unwrap();
        assert_eq!(super::claim(&store, PREFIX, &ANYONE), None);
        assert_eq!(Slot::decode(b"F id"), None);
    }

    #[test]
    fn a_marked_container_is_chosen_only_when_no_unmarked_one_is_free() {
        let store = MemoryData::default();
        for (slot, id) in [(0, "a"), (1, "b")] {
            let claim = insert_claimed(&store, PREFIX, slot, id, "127.0.0.1:1");
            release(&store, &claim, SlotState::Free);
        }
        let a_key = slot_key(PREFIX, 0);
        assert!(mark(&store, &a_key, "a"));
        assert!(!mark(&store, &a_key, "b"), "a mark names its container");
        assert_eq!(inspect(&store, &a_key, "a"), Some((SlotState::Marked, 1)));
        let first = claim(&store, PREFIX, &ANYONE).unwrap();
        assert_eq!(first.container_id, "b", "the unmarked container is preferred");
        let revived = claim(&store, PREFIX, &ANYONE).unwrap();
        assert_eq!(revived.container_id, "a", "a marked container beats a cold start");
        assert_eq!(inspect(&store, &a_key, "a"), Some((SlotState::Busy, 2)), "its use is counted");
        assert!(!retire_free(&store, &a_key, "a", true), "a sweep never takes a busy container");
        assert!(!mark(&store, &a_key, "a"));
        assert!(release(&store, &revived, SlotState::Free));
        assert_eq!(inspect(&store, &a_key, "a"), Some((SlotState::Free, 2)));
    }

    #[test]
    fn a_handed_over_claim_reads_back_from_its_header_and_names_its_revision() {
        let store = MemoryData::default();
        let prefix = "whisk/pool/guest/my pkg/say hi@r2";
        insert_new(&store, prefix, 3, "c3", "127.0.0.1:4003", Some(87), joined());
        let claim = super::claim(&store, prefix, &ANYONE).unwrap();
        assert_eq!(Claim::from_header(&claim.to_header()), Some(claim.clone()), "spaces in the key survive");
        assert!(claim.belongs_to(prefix));
        assert!(!claim.belongs_to("whisk/pool/guest/my pkg/say hi@r"), "another revision");
        assert!(!claim.belongs_to("whisk/pool/guest/my pkg/say hi@r2/3"));
        assert!(!adopt(&store, &claim) && !take_back(&store, &claim), "not handed yet");
        assert!(hand_over(&store, &claim));
        assert_eq!(super::claim(&store, prefix, &ANYONE), None, "handed: nobody else gets it");
        assert!(!release(&store, &claim, SlotState::Free), "the hand-over gave it up");
        assert!(adopt(&store, &claim));
        assert!(!take_back(&store, &claim), "adopted: not taken back");
        assert!(hand_over(&store, &claim) && take_back(&store, &claim), "a run that never came");
        assert!(!adopt(&store, &claim), "taken back: too late to adopt");
        assert_eq!(super::claim(&store, prefix, &ANYONE).map(|claim| claim.container_id), Some("c3".into()));
        let warm = Claim { init_ms: None, ..claim };
        assert_eq!(Claim::from_header(&warm.to_header()), Some(warm));
        for damaged in ["", "c3", "c3 127.0.0.1:1", "c3 127.0.0.1:1 x whisk/pool/a@r/0", "c3 127.0.0.1:1 -"] {
            assert_eq!(Claim::from_header(damaged), None, "{damaged:?}");
        }
    }

    #[test]
    fn a_pool_holds_live_containers_until_all_are_retired() {
        let store = MemoryData::default();
        assert!(!holds_live(&store, PREFIX));
        let first = insert_claimed(&store, PREFIX, 0, "a", "127.0.0.1:1");
        assert!(holds_live(&store, PREFIX), "a busy container frees up eventually");
        release(&store, &first, SlotState::Retired);
        assert!(!holds_live(&store, PREFIX));
        let second = insert_claimed(&store, PREFIX, 2, "b", "127.0.0.1:2");
        release(&store, &second, SlotState::Free);
        assert!(holds_live(&store, PREFIX), "found across a gap");
    }

    #[test]
    fn a_sweep_takes_only_a_still_marked_container_and_unmark_restores_it() {
        let store = MemoryData::default();
        insert_new(&store, PREFIX, 0, "c0", "127.0.0.1:1", Some(50), joined());
        let key = slot_key(PREFIX, 0);
        assert!(mark(&store, &key, "c0"), "a never-used container can be marked");
        assert!(unmark(&store, &key, "c0"));
        assert!(!retire_free(&store, &key, "c0", true), "unmarked: the sweep is stale");
        assert!(mark(&store, &key, "c0"));
        assert!(retire_free(&store, &key, "c0", true));
        assert_eq!(inspect(&store, &key, "c0"), Some((SlotState::Retired, 0)));
        assert_eq!(claim(&store, PREFIX, &ANYONE), None);
        assert!(!unmark(&store, &key, "c0"), "retired is final");
    }

    /// A step of an interleaving: a worker reads a slot, later writes it with what it read.
    #[derive(Debug, Clone)]
    enum Step {
        Claim(usize),
        /// The worker claims one slot directly (the slot it freed last).
        ClaimAt(usize, u32),
        Release(usize),
        Read(usize, u32),
        WriteBusy(usize),
        /// The collector's transitions on a slot: 0 mark, 1 unmark, 2 sweep.
        Gc(u32, u8),
        /// The first worker hands its claim over (a detached run), through its header; the second
        /// adopts it, or, when the run never reaches the filter, the first takes it back.
        HandOver(usize, usize, bool),
        /// The worker's activation timed out or lost its client: its container is retired.
        Retire(usize),
        /// A cold start lands in the slot: a new slot, or a successor in a retired one.
        ColdStart(u32),
    }

    /// A step of the new-container rule's property: workers claim (all of the pool or only what
    /// they brought), release and bring containers while the clock moves on.
    #[derive(Debug, Clone)]
    enum Joining {
        Claim(usize, bool),
        ClaimAt(usize, u32),
        Release(usize),
        Bring(usize, u32),
        Mark(u32),
        Wait(u64),
    }

    proptest! {
        /// Whatever the interleaving, a container that joined less than the while ago is claimed by
        /// the worker that brought it or by nobody, a claim of only one's own new containers gets
        /// nothing else, and no container is held twice.
        #[test]
        fn nobody_claims_another_worker_s_new_container_within_the_while(steps in proptest::collection::vec(
            prop_oneof![
                (0usize..3, any::<bool>()).prop_map(|(w, own)| Joining::Claim(w, own)),
                (0usize..3, 0u32..4).prop_map(|(w, s)| Joining::ClaimAt(w, s)),
                (0usize..3).prop_map(Joining::Release),
                (0usize..3, 0u32..4).prop_map(|(w, s)| Joining::Bring(w, s)),
                (0u32..4).prop_map(Joining::Mark),
                (0u64..40).prop_map(Joining::Wait),
            ],
            1..200,
        )) {
            const WHILE: u64 = 50;
            let workers = ["a", "b", "c"];
            let store = MemoryData::default();
            let mut now = 1_000;
            let mut held: Vec<Option<Claim>> = vec![None; 3];
            let mut joined: std::collections::HashMap<String, (usize, u64)> = Default::default();
            let mut brought = 0;
            for step in steps {
                let claimant = |worker: usize, own_new_only: bool| Claimant {
                    worker: workers[worker],
                    now_ms: now,
                    exclusive_ms: WHILE,
                    own_new_only,
                };
                let (claimer, own_only, got) = match step {
                    Joining::Claim(worker, own) if held[worker].is_none() => {
                        (worker, own, claim(&store, PREFIX, &claimant(worker, own)))
                    }
                    Joining::ClaimAt(worker, slot) if held[worker].is_none() => {
                        (worker, false, claim_at(&store, &slot_key(PREFIX, slot), &claimant(worker, false)))
                    }
                    Joining::Release(worker) => {
                        if let Some(claim) = held[worker].take() {
                            prop_assert!(release(&store, &claim, SlotState::Free));
                        }
                        continue;
                    }
                    Joining::Bring(worker, slot) => {
                        let key = slot_key(PREFIX, slot);
                        let state = store.get(&key).and_then(|(bytes, _)| Slot::decode(&bytes).map(|s| s.state));
                        if matches!(state, None | Some(SlotState::Retired)) {
                            brought += 1;
                            let id = format!("n{brought}");
                            let by = Joined { at_ms: now, worker: workers[worker] };
                            insert_new(&store, PREFIX, slot, &id, "127.0.0.1:1", Some(1), by);
                            joined.insert(id, (worker, now));
                        }
                        continue;
                    }
                    Joining::Mark(slot) => {
                        let key = slot_key(PREFIX, slot);
                        if let Some((bytes, _)) = store.get(&key)
                            && let Some(slot) = Slot::decode(&bytes)
                        {
                            mark(&store, &key, slot.container_id);
                        }
                        continue;
                    }
                    Joining::Wait(ms) => {
                        now += ms;
                        continue;
                    }
                    _ => continue,
                };
                let Some(got) = got else { continue };
                let (by, at) = joined[&got.container_id];
                let still_new = now < at + WHILE;
                prop_assert!(!still_new || by == claimer, "{} took {}'s new container", workers[claimer], workers[by]);
                prop_assert!(!own_only || (still_new && by == claimer), "own-only got another container");
                prop_assert!(held.iter().flatten().all(|other| other.container_id != got.container_id));
                held[claimer] = Some(got);
            }
        }

        /// Workers whose reads and writes interleave arbitrarily (as Envoy worker threads do) never
        /// hold one container at the same time: a write based on a stale read fails its CAS; and
        /// the collector's marks and sweeps, interleaved with them, never sweep a held container;
        /// neither do retirements (timeouts), cold starts into missing or retired slots, nor claims
        /// handed from one worker to another change that.
        #[test]
        fn no_container_is_ever_claimed_twice(steps in proptest::collection::vec(
            prop_oneof![
                (0usize..4).prop_map(Step::Claim),
                (0usize..4, 0u32..3).prop_map(|(w, s)| Step::ClaimAt(w, s)),
                (0usize..4).prop_map(Step::Release),
                (0usize..4, 0u32..3).prop_map(|(w, s)| Step::Read(w, s)),
                (0usize..4).prop_map(Step::WriteBusy),
                (0u32..3, 0u8..3).prop_map(|(s, op)| Step::Gc(s, op)),
                (0usize..4, 0usize..4, any::<bool>()).prop_map(|(from, to, arrives)| Step::HandOver(from, to, arrives)),
                (0usize..4).prop_map(Step::Retire),
                (0u32..5).prop_map(Step::ColdStart),
            ],
            1..300,
        )) {
            let store = MemoryData::default();
            for slot in 0..3 {
                let claim = insert_claimed(&store, PREFIX, slot, &format!("c{slot}"), "127.0.0.1:1");
                release(&store, &claim, SlotState::Free);
            }
            let mut held: Vec<Option<Claim>> = vec![None; 4];
            let mut reads: Vec<Option<(String, Vec<u8>, u32)>> = vec![None; 4];
            let mut swept: Vec<String> = Vec::new();
            let mut starts = 0;
            for step in steps {
                match step {
                    Step::Claim(worker) if held[worker].is_none() => held[worker] = claim(&store, PREFIX, &ANYONE),
                    Step::ClaimAt(worker, slot) if held[worker].is_none() => {
                        held[worker] = claim_at(&store, &slot_key(PREFIX, slot), &ANYONE);
                    }
                    Step::Release(worker) => {
                        if let Some(claim) = held[worker].take() {
                            prop_assert!(release(&store, &claim, SlotState::Free));
                        }
                    }
                    Step::Read(worker, slot) => {
                        let key = slot_key(PREFIX, slot);
                        reads[worker] = store.get(&key).map(|(bytes, cas)| (key, bytes, cas));
                    }
                    Step::WriteBusy(worker) if held[worker].is_none() => {
                        // The claim protocol split in two: CAS from what this worker read earlier.
                        if let Some((key, bytes, cas)) = reads[worker].take()
                            && let Some(slot) = Slot::decode(&bytes)
                            && slot.state.is_free()
                        {
                            let busy = Slot { state: SlotState::Busy, uses: slot.uses + 1, init_ms: None, ..slot };
                            if store.set(&key, &busy.encode(), Some(cas)).is_ok() {
                                held[worker] = Some(Claim { key, container_id: busy.container_id.to_owned(), address: busy.address.to_owned(), init_ms: None });
                            }
                        }
                    }
                    Step::HandOver(from, to, arrives) if from != to && held[to].is_none() => {
                        if let Some(claim) = held[from].take() {
                            prop_assert!(hand_over(&store, &claim));
                            let handed = Claim::from_header(&claim.to_header());
                            prop_assert_eq!(handed.as_ref(), Some(&claim));
                            if arrives {
                                prop_assert!(handed.as_ref().is_some_and(|handed| adopt(&store, handed)));
                                held[to] = handed;
                            } else {
                                prop_assert!(take_back(&store, &claim));
                            }
                        }
                    }
                    Step::Retire(worker) => {
                        if let Some(claim) = held[worker].take() {
                            prop_assert!(release(&store, &claim, SlotState::Retired));
                        }
                    }
                    Step::ColdStart(slot) => {
                        // The control plane gives a slot only when it is missing or retired.
                        let key = slot_key(PREFIX, slot);
                        let state = store.get(&key).and_then(|(bytes, _)| Slot::decode(&bytes).map(|s| s.state));
                        if matches!(state, None | Some(SlotState::Retired)) {
                            starts += 1;
                            insert_new(&store, PREFIX, slot, &format!("n{starts}"), "127.0.0.1:2", Some(1), joined());
                        }
                    }
                    Step::Gc(slot, op) => {
                        let (key, id) = (slot_key(PREFIX, slot), format!("c{slot}"));
                        match op {
                            0 => { mark(&store, &key, &id); }
                            1 => { unmark(&store, &key, &id); }
                            _ => if retire_free(&store, &key, &id, true) { swept.push(id) },
                        }
                    }
                    _ => {}
                }
                for claim in held.iter().flatten() {
                    prop_assert!(!swept.contains(&claim.container_id), "a held container was swept");
                }
                let mut owned: Vec<&str> = held.iter().flatten().map(|c| c.container_id.as_str()).collect();
                let before = owned.len();
                owned.sort_unstable();
                owned.dedup();
                prop_assert_eq!(before, owned.len(), "a container is held twice");
            }
        }
    }
}
