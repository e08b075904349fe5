//! Garbage collection of idle containers, mark and sweep as a JVM does it, as pure functions of a
//! view of the pool and the time (`now`, in milliseconds): no I/O, no clock.
//!
//! ```text
//!        free, idle ≥ idle_timeout (mark), or             marked ≥ grace ago, unused since (sweep):
//!        idle ≥ compact_idle on a node to drain (compact)  out of xDS first, then deleted
//!  warm ─────────────────────────────────────────► marked ─────────────────────────────────► swept
//!   ▲                                                 │
//!   └──── an activation reaches it ◄──────────────────┘
//!         (unmark_on_use, to_unmark; a cold start may recycle it)
//!
//!  pool full ─► reclaim: free containers of other actions, marked first, on the emptiest node
//! ```
//!
//! Victims are chosen so that the pool stays compact, the way a compacting collector evacuates
//! sparse regions: [`mark`] lists candidates on the least-allocated nodes first, [`compact`] marks
//! idle containers of the nodes in excess of the packing lower bound well before the idle timeout,
//! [`recycle`] does not revive a container on such a node while a new one fits elsewhere, and
//! [`reclaim`] empties the least-used node that can make room; [`crate::placement::place`] fills the
//! most-allocated nodes, so the nodes GC empties stay empty. See
//! docs/decisions/0007-gc-and-placement.md.

use std::cmp::Reverse;
use std::collections::BTreeMap;

use crate::placement::{self, Node};
use crate::table::ActionKey;

/// The collector's timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcConfig {
    /// A free container unused for at least this long is marked.
    pub idle_timeout_ms: u64,
    /// A marked container unused for this long after its mark is swept. It must exceed the time
    /// every data-plane node takes to learn of the mark, so that no claim races the deletion.
    pub grace_ms: u64,
    /// While the pool is fragmented, a free container on the node being drained (see [`compact`])
    /// unused for at least this long is marked, well before the idle timeout.
    pub compact_idle_ms: u64,
}

impl Default for GcConfig {
    /// OpenWhisk's idle timeout (10 minutes), a grace of 30 s (far above an xDS round trip) and
    /// compaction of containers idle for 3 minutes.
    fn default() -> Self {
        Self { idle_timeout_ms: 600_000, grace_ms: 30_000, compact_idle_ms: 180_000 }
    }
}

/// What the collector remembers of one container; the control plane keeps one per container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GcState {
    /// When it was last released (or started): idleness counts from here.
    pub last_used_ms: u64,
    /// When it was marked, if it is.
    pub marked_at: Option<u64>,
}

impl GcState {
    /// A container started (or adopted) at `now`: unmarked, idle from `now`.
    pub fn new(now: u64) -> Self {
        Self { last_used_ms: now, marked_at: None }
    }
}

/// What the collector sees of one container. Borrowed, so that the control plane builds the view
/// from its table without copying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContainerView<'a> {
    pub id: &'a str,
    pub action: &'a ActionKey,
    /// The machine it runs on (a [`Node`]'s name), not the Envoy node that routes to it.
    pub node: &'a str,
    pub memory_mb: u64,
    pub last_used_ms: u64,
    pub marked_at: Option<u64>,
    /// Running an activation, or still starting: never a victim.
    pub busy: bool,
}

impl<'a> ContainerView<'a> {
    /// Idle time at `now`; zero while busy.
    pub fn idle_ms(&self, now: u64) -> u64 {
        if self.busy { 0 } else { now.saturating_sub(self.last_used_ms) }
    }

    /// Used after its mark: the mark no longer holds.
    fn used_since_mark(&self) -> bool {
        match self.marked_at {
            Some(marked_at) => self.busy || self.last_used_ms > marked_at,
            None => false,
        }
    }
}

/// Room made for a new container: the node it goes to and the containers to free there first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reclaim<'a> {
    pub node: String,
    /// Empty when the container already fits (then `node` is where [`placement::place`] puts it).
    pub victims: Vec<&'a str>,
    /// Memory the victims hold.
    pub freed_mb: u64,
}

/// Memory each node holds according to the view (the nodes' own figures are not needed to rank).
fn load_by_node<'a>(view: &[ContainerView<'a>]) -> BTreeMap<&'a str, u64> {
    let mut load = BTreeMap::new();
    for container in view {
        *load.entry(container.node).or_insert(0) += container.memory_mb;
    }
    load
}

/// The containers to mark at `now`: free, not yet marked and idle for at least the idle timeout.
/// Listed on the least-allocated nodes first, then the longest idle first, so that a caller that
/// marks only some of them per round drains whole nodes.
pub fn mark<'a>(view: &[ContainerView<'a>], now: u64, config: &GcConfig) -> Vec<&'a str> {
    let load = load_by_node(view);
    let mut chosen: Vec<&ContainerView<'a>> = view
        .iter()
        .filter(|c| !c.busy && c.marked_at.is_none() && c.idle_ms(now) >= config.idle_timeout_ms)
        .collect();
    chosen.sort_by_key(|c| (load.get(c.node).copied().unwrap_or(0), c.node, c.last_used_ms, c.id));
    chosen.into_iter().map(|c| c.id).collect()
}

/// The containers to sweep at `now`: marked at least the grace period ago, free and not used since
/// the mark. The caller removes them from xDS, waits for the acknowledgements, then deletes them.
pub fn sweep<'a>(view: &[ContainerView<'a>], now: u64, config: &GcConfig) -> Vec<&'a str> {
    let load = load_by_node(view);
    let mut chosen: Vec<&ContainerView<'a>> = view
        .iter()
        .filter(|c| match c.marked_at {
            Some(marked_at) => !c.used_since_mark() && now.saturating_sub(marked_at) >= config.grace_ms,
            None => false,
        })
        .collect();
    chosen.sort_by_key(|c| (load.get(c.node).copied().unwrap_or(0), c.node, c.marked_at, c.id));
    chosen.into_iter().map(|c| c.id).collect()
}

/// Marked containers that were used after their mark (an activation reached one before the data
/// plane learned of the mark, or the control plane recycled it): the caller unmarks them and
/// publishes the change.
pub fn to_unmark<'a>(view: &[ContainerView<'a>]) -> Vec<&'a str> {
    view.iter().filter(|c| c.used_since_mark()).map(|c| c.id).collect()
}

/// An activation reached the container at `now`: it is in use again, so any mark is cleared.
/// True when it was marked, i.e. the data plane must be told it is back.
pub fn unmark_on_use(state: &mut GcState, now: u64) -> bool {
    state.last_used_ms = state.last_used_ms.max(now);
    state.marked_at.take().is_some()
}

/// Marks `state` at `now` (after [`mark`] chose it).
pub fn set_marked(state: &mut GcState, now: u64) {
    state.marked_at = Some(now);
}

/// The nodes to drain while the pool is fragmented (more nodes in use than the packing lower
/// bound): as many of the least-allocated nodes in use as there are nodes in excess, each holding
/// only containers of the view, all of which fit together in the free memory of the nodes in use
/// that are kept. Empty when the pool is compact or no node can be emptied that way.
pub fn drain_targets<'n>(view: &[ContainerView<'_>], nodes: &'n [Node]) -> Vec<&'n Node> {
    let mut in_use: Vec<&Node> = nodes.iter().filter(|node| node.allocated_mb > 0).collect();
    let excess = in_use.len().saturating_sub(placement::lower_bound(nodes));
    in_use.sort_by_key(|node| (node.allocated_mb, &node.name));
    let mut targets: Vec<&Node> = Vec::new();
    let mut memory: Vec<u64> = Vec::new();
    for candidate in &in_use {
        if targets.len() == excess {
            break;
        }
        let held: Vec<u64> = view.iter().filter(|c| c.node == candidate.name).map(|c| c.memory_mb).collect();
        if held.iter().sum::<u64>() < candidate.allocated_mb {
            continue; // something else runs there: draining would not empty it
        }
        let mut trial = memory.clone();
        trial.extend(held);
        let kept: Vec<u64> = in_use
            .iter()
            .filter(|node| node.name != candidate.name && !targets.iter().any(|t| t.name == node.name))
            .map(|node| node.free_mb())
            .collect();
        if fits_in(&mut trial, kept) {
            targets.push(candidate);
            memory = trial;
        }
    }
    targets
}

/// First fit decreasing of `sizes` into `rooms`: a sufficient test that they all fit.
fn fits_in(sizes: &mut [u64], mut rooms: Vec<u64>) -> bool {
    sizes.sort_unstable_by(|a, b| b.cmp(a));
    sizes.iter().all(|&size| match rooms.iter_mut().find(|room| **room >= size) {
        Some(room) => {
            *room -= size;
            true
        }
        None => false,
    })
}

/// Compaction, the collector's answer to fragmentation: while the pool is fragmented, the free,
/// unmarked containers of the [`drain_target`] unused for at least `compact_idle_ms`, to mark now.
/// Their actions' next cold starts land on fuller nodes ([`placement::place`]), so the node
/// empties and stays empty. Busy ones are picked in a later round.
pub fn compact<'a>(view: &[ContainerView<'a>], nodes: &[Node], now: u64, config: &GcConfig) -> Vec<&'a str> {
    let targets = drain_targets(view, nodes);
    let mut chosen: Vec<&ContainerView<'a>> = view
        .iter()
        .filter(|c| targets.iter().any(|t| t.name == c.node) && !c.busy && c.marked_at.is_none())
        .filter(|c| c.idle_ms(now) >= config.compact_idle_ms)
        .collect();
    chosen.sort_by_key(|c| (c.last_used_ms, c.id));
    chosen.into_iter().map(|c| c.id).collect()
}

/// A cold start of `for_action` found no unmarked free container: the marked free container of
/// that action to unmark and hand out instead of starting one, if any. One on the node being
/// drained is not recycled while a new container fits elsewhere (the caller starts one, and
/// recycles only if that finds no room); among the others, the one on the most-allocated node.
pub fn recycle<'a>(
    view: &[ContainerView<'a>],
    nodes: &[Node],
    for_action: &ActionKey,
    memory_mb: u64,
) -> Option<&'a str> {
    let load = |name: &str| nodes.iter().find(|node| node.name == name).map_or(0, |node| node.allocated_mb);
    let draining = drain_targets(view, nodes);
    let drained = |name: &str| draining.iter().any(|node| node.name == name);
    let fits_elsewhere = placement::place(nodes, memory_mb).is_some_and(|node| !drained(&node.name));
    view.iter()
        .filter(|c| c.action == for_action && !c.busy && c.marked_at.is_some())
        .filter(|c| !(fits_elsewhere && drained(c.node)))
        .max_by_key(|c| (load(c.node), Reverse(c.id)))
        .map(|c| c.id)
}

/// The pool is full: which free containers of other actions than `for_action` to free so that a
/// container of `needed_mb` fits on some node. On each node, marked containers go first (earliest
/// marked first), then the longest idle; among the nodes that can make room, the one needing the
/// fewest unmarked victims wins, then the least-allocated (emptiest) one, then the fewest victims.
/// Busy containers (running or starting) are never victims. `None` when no node can make room.
///
/// Unmarked victims may still be claimed by the data plane: the caller marks them, waits for the
/// acknowledgements, and frees only those still unused (see the decision record).
pub fn reclaim<'a>(
    view: &[ContainerView<'a>],
    nodes: &[Node],
    for_action: &ActionKey,
    needed_mb: u64,
    now: u64,
) -> Option<Reclaim<'a>> {
    if let Some(node) = placement::place(nodes, needed_mb) {
        return Some(Reclaim { node: node.name.clone(), victims: Vec::new(), freed_mb: 0 });
    }
    // Rank: unmarked victims, the node's allocation, victims, the node's name; lowest wins.
    type Rank<'n> = (usize, u64, usize, &'n str);
    let mut best: Option<(Rank<'_>, Reclaim<'a>)> = None;
    for node in nodes.iter().filter(|node| node.capacity_mb >= needed_mb) {
        let mut candidates: Vec<&ContainerView<'a>> =
            view.iter().filter(|c| c.node == node.name && !c.busy && c.action != for_action).collect();
        candidates.sort_by_key(|c| (c.marked_at.is_none(), c.marked_at, Reverse(c.idle_ms(now)), c.id));
        let (mut freed_mb, mut unmarked, mut victims) = (0u64, 0usize, Vec::new());
        for candidate in candidates {
            if node.free_mb() + freed_mb >= needed_mb {
                break;
            }
            freed_mb += candidate.memory_mb;
            unmarked += usize::from(candidate.marked_at.is_none());
            victims.push(candidate.id);
        }
        if node.free_mb() + freed_mb < needed_mb {
            continue;
        }
        let rank = (unmarked, node.allocated_mb, victims.len(), node.name.as_str());
        if best.as_ref().is_none_or(|(best_rank, _)| rank < *best_rank) {
            best = Some((rank, Reclaim { node: node.name.clone(), victims, freed_mb }));
        }
    }
    best.map(|(_, plan)| plan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::action;
    use proptest::prelude::*;

    const CONFIG: GcConfig = GcConfig { idle_timeout_ms: 1_000, grace_ms: 100, compact_idle_ms: 200 };

    /// Owned fixture from which views are borrowed.
    #[derive(Debug, Clone)]
    struct Fixture {
        id: String,
        action: ActionKey,
        node: String,
        memory_mb: u64,
        state: GcState,
        busy: bool,
    }

    impl Fixture {
        fn new(id: &str, action_name: &str, node: &str, memory_mb: u64, last_used_ms: u64) -> Self {
            Self {
                id: id.into(),
                action: action(action_name),
                node: node.into(),
                memory_mb,
                state: GcState::new(last_used_ms),
                busy: false,
            }
        }

        fn marked(mut self, at: u64) -> Self {
            self.state.marked_at = Some(at);
            self
        }

        fn busy(mut self) -> Self {
            self.busy = true;
            self
        }

        fn view(&self) -> ContainerView<'_> {
            ContainerView {
                id: &self.id,
                action: &self.action,
                node: &self.node,
                memory_mb: self.memory_mb,
                last_used_ms: self.state.last_used_ms,
                marked_at: self.state.marked_at,
                busy: self.busy,
            }
        }
    }

    fn views(fixtures: &[Fixture]) -> Vec<ContainerView<'_>> {
        fixtures.iter().map(Fixture::view).collect()
    }

    fn node(name: &str, capacity_mb: u64, allocated_mb: u64) -> Node {
        Node { name: name.into(), capacity_mb, allocated_mb }
    }

    #[test]
    fn marks_idle_free_containers_on_the_least_allocated_node_first() {
        let pool = [
            Fixture::new("a", "x", "full", 1024, 0),
            Fixture::new("b", "x", "full", 1024, 500),
            Fixture::new("c", "y", "light", 256, 800),
            Fixture::new("d", "y", "light", 256, 1_500), // recently used
            Fixture::new("e", "z", "light", 256, 0).busy(),
            Fixture::new("f", "z", "light", 256, 0).marked(1_000), // already marked
        ];
        assert_eq!(mark(&views(&pool), 2_000, &CONFIG), ["c", "a", "b"]);
    }

    #[test]
    fn sweeps_marked_containers_after_the_grace_unless_used_since() {
        let mut pool = [
            Fixture::new("a", "x", "n", 256, 0).marked(1_000),
            Fixture::new("b", "x", "n", 256, 0).marked(1_050),
            Fixture::new("c", "x", "n", 256, 0).marked(1_000).busy(),
            Fixture::new("d", "x", "n", 256, 0),
        ];
        assert_eq!(sweep(&views(&pool), 1_100, &CONFIG), ["a"]);
        assert_eq!(to_unmark(&views(&pool)), ["c"]);
        // An activation reaches "a" after its mark: unmarked, so never swept on that mark.
        assert!(unmark_on_use(&mut pool[0].state, 1_090));
        assert!(!unmark_on_use(&mut pool[0].state, 1_095));
        assert_eq!(sweep(&views(&pool), 5_000, &CONFIG), ["b"]);
        assert_eq!(mark(&views(&pool), 2_095, &CONFIG), ["d", "a"]);
    }

    #[test]
    fn reclaim_takes_marked_containers_of_other_actions_on_the_emptiest_node() {
        let pool = [
            Fixture::new("a1", "a", "n1", 1024, 0),
            Fixture::new("a2", "a", "n1", 1024, 0).marked(10),
            Fixture::new("b1", "b", "n1", 1024, 0),
            Fixture::new("b2", "b", "n2", 512, 0).marked(10),
            Fixture::new("b3", "b", "n2", 512, 0),
            Fixture::new("c1", "c", "n2", 2048, 0).busy(),
            Fixture::new("x1", "x", "n2", 1024, 0).marked(10), // the asking action's own
        ];
        let nodes = [node("n1", 4096, 3072 + 768), node("n2", 4096, 4096)];
        // n1 needs 512 more: the marked a2 alone. n2 needs 1024: b2 (marked) and b3 (not).
        let plan = reclaim(&views(&pool), &nodes, &action("x"), 768, 50).unwrap();
        assert_eq!((plan.node.as_str(), plan.victims, plan.freed_mb), ("n1", vec!["a2"], 1024));
        // Without marked victims anywhere, the emptiest node that can make room wins.
        let unmarked: Vec<Fixture> = pool
            .iter()
            .cloned()
            .map(|mut f| {
                f.state.marked_at = None;
                f
            })
            .collect();
        let plan = reclaim(&views(&unmarked), &nodes, &action("x"), 512, 50).unwrap();
        assert_eq!((plan.node.as_str(), plan.victims), ("n1", vec!["a1"]));
        // Nothing of another action is free enough anywhere.
        assert_eq!(reclaim(&views(&pool), &nodes, &action("x"), 8192, 50), None);
        // It already fits: no victims, the best-fit node.
        let roomy = [node("n1", 4096, 1024), node("n2", 4096, 3072)];
        let plan = reclaim(&views(&pool), &roomy, &action("x"), 512, 50).unwrap();
        assert_eq!((plan.node.as_str(), plan.victims.len()), ("n2", 0));
    }

    #[test]
    fn compaction_drains_the_emptiest_nodes_in_excess() {
        let pool = [
            Fixture::new("a", "x", "n1", 2048, 0),
            Fixture::new("b", "y", "n2", 512, 0),
            Fixture::new("c", "z", "n3", 256, 0),
            Fixture::new("d", "z", "n3", 256, 900), // used 100 ms ago
            Fixture::new("e", "w", "n3", 256, 0).busy(),
        ];
        let nodes =
            [node("n1", 4096, 2048), node("n2", 4096, 512), node("n3", 4096, 768), node("n4", 4096, 0)];
        // 3328 MB on three nodes where one suffices: n2 and n3 are drained, into n1's free memory.
        let targets: Vec<&str> =
            drain_targets(&views(&pool), &nodes).iter().map(|n| n.name.as_str()).collect();
        assert_eq!(targets, ["n2", "n3"]);
        assert_eq!(compact(&views(&pool), &nodes, 1_000, &CONFIG), ["b", "c"]);
        // n2 also runs something else, so it cannot be emptied: n3 and n1 are drained into it.
        let shared = [node("n1", 4096, 2048), node("n2", 4096, 1024), node("n3", 4096, 768)];
        let targets: Vec<&str> =
            drain_targets(&views(&pool), &shared).iter().map(|n| n.name.as_str()).collect();
        assert_eq!(targets, ["n3", "n1"]);
        // Compact already: nothing to drain.
        let compact_pool = [node("n1", 4096, 3072), node("n2", 4096, 1280)];
        assert!(drain_targets(&views(&pool[..1]), &compact_pool).is_empty());
    }

    #[test]
    fn recycling_skips_a_draining_node_while_a_new_container_fits_elsewhere() {
        let pool = [
            Fixture::new("full", "x", "n1", 1024, 0).marked(10),
            Fixture::new("filler", "y", "n1", 2048, 0),
            Fixture::new("drained", "x", "n2", 1024, 0).marked(10),
        ];
        let nodes = [node("n1", 4096, 3072), node("n2", 4096, 1024)];
        // Both marked: the one on the fuller node is recycled.
        assert_eq!(recycle(&views(&pool), &nodes, &action("x"), 1024), Some("full"));
        // Only the one on the drained node: a new container fits on n1, so start one there.
        assert_eq!(recycle(&views(&pool[1..]), &nodes, &action("x"), 1024), None);
        // Nothing else fits: recycling it beats refusing.
        let tight = [node("n1", 4096, 4096), node("n2", 4096, 1024)];
        assert_eq!(recycle(&views(&pool[1..]), &tight, &action("x"), 1024), Some("drained"));
        assert_eq!(recycle(&views(&pool), &nodes, &action("other"), 1024), None);
    }

    fn arbitrary_pool() -> impl Strategy<Value = Vec<Fixture>> {
        proptest::collection::vec(
            (
                0u8..4,
                0u8..4,
                prop_oneof![Just(128u64), Just(256), Just(512), Just(1024)],
                0u64..5_000,
                proptest::option::of(0u64..5_000),
                any::<bool>(),
            ),
            0..40,
        )
        .prop_map(|rows| {
            rows.into_iter()
                .enumerate()
                .map(|(index, (action_index, node_index, memory_mb, last_used_ms, marked_at, busy))| {
                    let mut fixture = Fixture::new(
                        &format!("c{index}"),
                        &format!("a{action_index}"),
                        &format!("n{node_index}"),
                        memory_mb,
                        last_used_ms,
                    );
                    fixture.state.marked_at = marked_at;
                    fixture.busy = busy;
                    fixture
                })
                .collect()
        })
    }

    fn by_id<'f>(pool: &'f [Fixture], id: &str) -> &'f Fixture {
        pool.iter().find(|f| f.id == id).unwrap()
    }

    proptest! {
        /// Mark picks exactly the free, unmarked containers idle for the whole timeout: never a
        /// busy one, never one used within the timeout.
        #[test]
        fn mark_never_picks_a_busy_or_recently_used_container(pool in arbitrary_pool(), now in 0u64..8_000) {
            let marked = mark(&views(&pool), now, &CONFIG);
            for fixture in &pool {
                let eligible = !fixture.busy
                    && fixture.state.marked_at.is_none()
                    && now.saturating_sub(fixture.state.last_used_ms) >= CONFIG.idle_timeout_ms;
                prop_assert_eq!(marked.contains(&fixture.id.as_str()), eligible, "{:?}", fixture);
            }
        }

        /// Sweep picks exactly the marked containers whose grace passed with no use since the mark.
        #[test]
        fn sweep_only_picks_marked_containers_whose_grace_passed_unused(pool in arbitrary_pool(), now in 0u64..8_000) {
            let swept = sweep(&views(&pool), now, &CONFIG);
            for fixture in &pool {
                let eligible = match fixture.state.marked_at {
                    Some(at) => !fixture.busy && fixture.state.last_used_ms <= at && now >= at + CONFIG.grace_ms,
                    None => false,
                };
                prop_assert_eq!(swept.contains(&fixture.id.as_str()), eligible, "{:?}", fixture);
            }
        }

        /// A use after any mark means no sweep until the container is marked again.
        #[test]
        fn a_used_container_is_not_swept_until_marked_again(mut pool in arbitrary_pool(), used in any::<prop::sample::Index>(), at in 0u64..8_000) {
            prop_assume!(!pool.is_empty());
            let index = used.index(pool.len());
            let was_marked = pool[index].state.marked_at.is_some();
            prop_assert_eq!(unmark_on_use(&mut pool[index].state, at), was_marked);
            let id = pool[index].id.clone();
            for now in [at, at + CONFIG.grace_ms, at + CONFIG.idle_timeout_ms + CONFIG.grace_ms] {
                prop_assert!(!sweep(&views(&pool), now, &CONFIG).contains(&id.as_str()));
                prop_assert!(!to_unmark(&views(&pool)).contains(&id.as_str()));
            }
        }

        /// Reclaim frees enough room on one node whenever some node could be given enough room by
        /// freeing every free container of other actions on it, and never names a busy container
        /// or one of the asking action.
        #[test]
        fn reclaim_frees_enough_room_when_possible(
            pool in arbitrary_pool(),
            extra in proptest::collection::vec(0u64..1024, 4),
            needed in prop_oneof![Just(128u64), Just(512), Just(1024), Just(2048), Just(5000)],
            asking in 0u8..5,
        ) {
            let for_action = action(&format!("a{asking}"));
            let nodes: Vec<Node> = (0..4)
                .map(|i| {
                    let name = format!("n{i}");
                    let held: u64 = pool.iter().filter(|f| f.node == name).map(|f| f.memory_mb).sum();
                    node(&name, 4096, held + extra[i])
                })
                .collect();
            let possible = nodes.iter().any(|n| {
                let freeable: u64 = pool
                    .iter()
                    .filter(|f| f.node == n.name && !f.busy && f.action != for_action)
                    .map(|f| f.memory_mb)
                    .sum();
                n.capacity_mb >= needed && n.free_mb() + freeable >= needed
            });
            let plan = reclaim(&views(&pool), &nodes, &for_action, needed, 6_000);
            prop_assert_eq!(plan.is_some(), possible);
            if let Some(plan) = plan {
                let target = nodes.iter().find(|n| n.name == plan.node).unwrap();
                prop_assert!(target.free_mb() + plan.freed_mb >= needed);
                let mut freed = 0;
                for id in &plan.victims {
                    let victim = by_id(&pool, id);
                    prop_assert!(!victim.busy && victim.action != for_action && victim.node == plan.node);
                    freed += victim.memory_mb;
                }
                prop_assert_eq!(freed, plan.freed_mb);
                // Marked first: an unmarked victim only once every marked candidate there is taken.
                if plan.victims.iter().any(|id| by_id(&pool, id).state.marked_at.is_none()) {
                    for f in pool.iter().filter(|f| f.node == plan.node && !f.busy && f.action != for_action && f.state.marked_at.is_some()) {
                        prop_assert!(plan.victims.contains(&f.id.as_str()));
                    }
                }
            }
        }

        /// Compaction marks only free, unmarked containers idle long enough, on drain targets
        /// whose containers all fit together in the free memory of the nodes kept.
        #[test]
        fn compaction_only_marks_idle_containers_on_drainable_nodes(
            pool in arbitrary_pool(),
            extra in proptest::collection::vec(prop_oneof![Just(0u64), 0u64..1024], 4),
            now in 0u64..8_000,
        ) {
            let nodes: Vec<Node> = (0..4)
                .map(|i| {
                    let name = format!("n{i}");
                    let held: u64 = pool.iter().filter(|f| f.node == name).map(|f| f.memory_mb).sum();
                    node(&name, 8192, held + extra[i])
                })
                .collect();
            let targets = drain_targets(&views(&pool), &nodes);
            let in_use = nodes.iter().filter(|n| n.allocated_mb > 0).count();
            prop_assert!(targets.len() <= in_use.saturating_sub(placement::lower_bound(&nodes)));
            let moved: u64 = pool.iter().filter(|f| targets.iter().any(|t| t.name == f.node)).map(|f| f.memory_mb).sum();
            let room: u64 = nodes
                .iter()
                .filter(|n| n.allocated_mb > 0 && !targets.iter().any(|t| t.name == n.name))
                .map(Node::free_mb)
                .sum();
            prop_assert!(moved <= room);
            for target in &targets {
                let held: u64 = pool.iter().filter(|f| f.node == target.name).map(|f| f.memory_mb).sum();
                prop_assert_eq!(held, target.allocated_mb);
            }
            for id in compact(&views(&pool), &nodes, now, &CONFIG) {
                let f = by_id(&pool, id);
                prop_assert!(!f.busy && f.state.marked_at.is_none());
                prop_assert!(now.saturating_sub(f.state.last_used_ms) >= CONFIG.compact_idle_ms);
                prop_assert!(targets.iter().any(|t| t.name == f.node));
            }
        }

        /// The naive baseline obeys the same safety rules.
        #[test]
        fn naive_reclaim_never_frees_busy_or_same_action_containers(
            pool in arbitrary_pool(),
            needed in prop_oneof![Just(512u64), Just(2048)],
            asking in 0u8..5,
        ) {
            let for_action = action(&format!("a{asking}"));
            let nodes: Vec<Node> = (0..4)
                .map(|i| {
                    let name = format!("n{i}");
                    let held: u64 = pool.iter().filter(|f| f.node == name).map(|f| f.memory_mb).sum();
                    node(&name, 4096.max(held), 4096.max(held))
                })
                .collect();
            if let Some(plan) = placement::naive::reclaim_oldest_first(&views(&pool), &nodes, &for_action, needed) {
                let target = nodes.iter().find(|n| n.name == plan.node).unwrap();
                prop_assert!(target.free_mb() + plan.freed_mb >= needed);
                for id in &plan.victims {
                    let victim = by_id(&pool, id);
                    prop_assert!(!victim.busy && victim.action != for_action && victim.node == plan.node);
                }
            }
        }
    }
}
