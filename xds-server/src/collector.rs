//! The collector's bookkeeping on the container table: the data plane's usage reports in; marks,
//! unmarks and sweeps out; idle marking, compaction and reclaim on the policy of [`crate::gc`].
//! Pure: no I/O, no clock (`now` is milliseconds on the control plane's monotonic clock).
//!
//! ```text
//!  GC round ─► collect: mark idle containers (and compaction victims) in the table
//!  report   ─► apply_report: a use clears the mark; answer "mark" until the node reports the
//!              container marked (confirmed), then "sweep" once it stayed unused for the grace
//!  filter   ─► CAS marked → retired on its slot (never a busy one), then DELETE: out of xDS, stop
//! ```
//!
//! Only the owning Envoy node's word confirms a mark: each container is routed by exactly one node,
//! and the filter takes a swept container out of its pool by CAS before anything is deleted, so a
//! container an activation holds is never swept, whatever the timing.

use whisk_contract::{SlotUse, UsageAnswer, UsageReport};

use crate::gc::GcState;
use crate::gc::{self, ContainerView, GcConfig};
use crate::placement::{self, Node};
use crate::table::{ActionKey, Container, ContainerState, Handover, Table, Usage};

/// What the collector sees of a container.
pub fn view(container: &Container) -> ContainerView<'_> {
    ContainerView {
        id: &container.id,
        action: &container.action,
        node: &container.host,
        memory_mb: container.memory_mb,
        last_used_ms: container.usage.gc.last_used_ms,
        marked_at: container.usage.gc.marked_at,
        busy: container.usage.busy || container.state == ContainerState::Starting,
    }
}

/// The placement nodes with what the table holds on each (`capacities` give names and sizes).
pub fn nodes(table: &Table, capacities: &[Node]) -> Vec<Node> {
    let mut nodes: Vec<Node> =
        capacities.iter().map(|node| Node { allocated_mb: 0, ..node.clone() }).collect();
    // By name, since a cluster may have hundreds of nodes under tens of thousands of containers.
    let index: std::collections::HashMap<&str, usize> =
        capacities.iter().enumerate().map(|(at, node)| (node.name.as_str(), at)).collect();
    for container in table.iter() {
        if let Some(&at) = index.get(container.host.as_str()) {
            nodes[at].allocated_mb += container.memory_mb;
        }
    }
    nodes
}

/// The node a new container of `memory_mb` goes to (best fit), if it fits anywhere.
pub fn place(table: &Table, capacities: &[Node], memory_mb: u64) -> Option<String> {
    placement::place(&nodes(table, capacities), memory_mb).map(|node| node.name.clone())
}

/// Nodes in use over the packing lower bound (1.0 is compact); `None` with an empty pool.
pub fn fragmentation(table: &Table, capacities: &[Node]) -> Option<f64> {
    placement::fragmentation(&nodes(table, capacities))
}

/// What one report changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReportOutcome {
    pub answer: UsageAnswer,
    /// Marks cleared because the container was used after its mark.
    pub unmarked: usize,
}

/// Applies one usage report of `node_id`'s worker and answers it.
pub fn apply_report(table: &mut Table, report: &UsageReport, now: u64, config: &GcConfig) -> ReportOutcome {
    let mut outcome = ReportOutcome::default();
    let mut confirmed = Vec::new();
    for reported in &report.containers {
        let Some(container) = table.get_mut(&reported.id) else {
            outcome.answer.unknown.push(reported.id.clone());
            continue;
        };
        if container.node != report.node_id {
            // Another node routes to it; only the owner's word counts.
            continue;
        }
        let usage = &mut container.usage;
        usage.unclaimed_since = None;
        usage.last_named = Some(now);
        let used = reported.state == SlotUse::Busy || reported.uses > usage.uses_seen;
        usage.uses_seen = usage.uses_seen.max(reported.uses);
        usage.busy = reported.state == SlotUse::Busy;
        if used && gc::unmark_on_use(&mut usage.gc, now) {
            usage.mark_confirmed = false;
            usage.reclaimed = false;
            outcome.unmarked += 1;
        }
        if matches!(container.handover, Some(Handover::Draining { .. })) && reported.state != SlotUse::Busy {
            // Free when reported: its node lets go of it, by CAS, unless an activation claims it
            // first (then the next report tries again).
            outcome.answer.hand_over.push(reported.id.clone());
        }
        let usage = &mut container.usage;
        if usage.obsolete {
            // Of an old revision: no new activation will come, so a use does not revive it.
            usage.gc.marked_at.get_or_insert(now);
            usage.reclaimed = true;
        }
        match (usage.gc.marked_at.is_some(), reported.state) {
            (true, SlotUse::Free) => {
                usage.mark_confirmed = false;
                outcome.answer.mark.push(reported.id.clone());
            }
            (true, SlotUse::Marked) => {
                usage.mark_confirmed = true;
                confirmed.push(reported.id.clone());
            }
            (false, SlotUse::Marked) => outcome.answer.unmark.push(reported.id.clone()),
            _ => {}
        }
    }
    let confirmed: Vec<&Container> = confirmed.iter().filter_map(|id| table.get(id)).collect();
    let views: Vec<ContainerView<'_>> = confirmed.iter().map(|c| view(c)).collect();
    let mut sweep: Vec<String> = gc::sweep(&views, now, config).into_iter().map(str::to_owned).collect();
    for reclaimed in confirmed.iter().filter(|c| c.usage.reclaimed && !c.usage.busy) {
        if !sweep.contains(&reclaimed.id) {
            sweep.push(reclaimed.id.clone());
        }
    }
    outcome.answer.sweep = sweep;
    outcome
}

/// What one GC round marked.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Collected {
    /// Idle for the idle timeout.
    pub marked: Vec<String>,
    /// Marked early to drain a node in excess of the packing lower bound.
    pub compacted: Vec<String>,
    /// Named by no report of their Envoy node for `orphan_timeout_ms`: no filter holds them
    /// (adopted at a restart whose cold start died with the previous server; their Envoy is gone,
    /// or restarted and forgot them), so nothing routes to them; the caller removes and stops them.
    pub orphans: Vec<String>,
}

/// One GC round at `now`: marks idle containers, and compaction victims while the pool is
/// fragmented. Marks reach the data plane in the answers to its next reports.
pub fn collect(
    table: &mut Table,
    capacities: &[Node],
    now: u64,
    config: &GcConfig,
    orphan_timeout_ms: u64,
) -> Collected {
    // An adopted or moved container is named from the moment it becomes routable (with
    // `unclaimed_since`), so one time covers it too.
    let orphans: Vec<String> = table
        .iter()
        .filter(|c| c.state == ContainerState::Ready)
        .filter(|c| c.usage.last_named.is_some_and(|named| now.saturating_sub(named) >= orphan_timeout_ms))
        .map(|c| c.id.clone())
        .collect();
    let nodes = nodes(table, capacities);
    let (marked, compacted) = {
        let views: Vec<ContainerView<'_>> = table
            .iter()
            .filter(|c| c.state == ContainerState::Ready && c.usage.unclaimed_since.is_none())
            .map(view)
            .collect();
        let marked: Vec<String> = gc::mark(&views, now, config).into_iter().map(str::to_owned).collect();
        let compacted: Vec<String> = gc::compact(&views, &nodes, now, config)
            .into_iter()
            .filter(|id| !marked.iter().any(|m| m == id))
            .map(str::to_owned)
            .collect();
        (marked, compacted)
    };
    for id in marked.iter().chain(&compacted) {
        if let Some(container) = table.get_mut(id) {
            gc::set_marked(&mut container.usage.gc, now);
            container.usage.mark_confirmed = false;
        }
    }
    Collected { marked, compacted, orphans }
}

/// The pool has no room for a container of `memory_mb` for `for_action`: picks free containers of
/// other actions to free (marked ones first, on the emptiest node that can make room) and marks
/// them as due, so that the owning nodes' next reports sweep them. The victims' ids, or `None`
/// when no node can be given room.
pub fn reclaim(
    table: &mut Table,
    capacities: &[Node],
    for_action: &ActionKey,
    memory_mb: u64,
    now: u64,
) -> Option<Vec<String>> {
    let nodes = nodes(table, capacities);
    let victims: Vec<String> = {
        let views: Vec<ContainerView<'_>> = table.iter().map(view).collect();
        let plan = gc::reclaim(&views, &nodes, for_action, memory_mb, now)?;
        plan.victims.into_iter().map(str::to_owned).collect()
    };
    // Due at once: a victim is swept as soon as its node confirms the mark, not a grace later.
    for id in &victims {
        if let Some(container) = table.get_mut(id) {
            let usage = &mut container.usage;
            usage.gc.marked_at.get_or_insert(now);
            usage.reclaimed = true;
        }
    }
    Some(victims)
}

/// The pool is full and `node` needs a container of `action`: another node's idle container of the
/// same action can move instead of a new one starting (and instead of freeing other actions'
/// containers). Picks the one idle longest (ready, not busy, not moving, of the current revision)
/// and records where it goes; its node's next report is told to let go of it if it is free. A
/// handover to `node` already under way is answered again rather than doubled. Its id.
pub fn start_handover(table: &mut Table, action: &ActionKey, node: &str) -> Option<String> {
    let to_node = |c: &Container| matches!(&c.handover, Some(Handover::Draining { to }) if to == node);
    if let Some(under_way) = table.iter().find(|c| &c.action == action && to_node(c)) {
        return Some(under_way.id.clone());
    }
    let id = table
        .iter()
        .filter(|c| {
            &c.action == action
                && c.node != node
                && c.state == ContainerState::Ready
                && c.handover.is_none()
                && !c.usage.busy
                && !c.usage.obsolete
        })
        .min_by_key(|c| (c.usage.gc.last_used_ms, c.id.clone()))?
        .id
        .clone();
    table.get_mut(&id)?.handover = Some(Handover::Draining { to: node.to_owned() });
    Some(id)
}

/// Its node swept container `id` (it was free and will never be claimed there again): if it was
/// being handed over, it now belongs to the target node at that node's lowest free slot, unused
/// and unclaimed until the target's filter takes it. The new node and slot; `None` (nothing
/// changed) for a container not being handed over.
pub fn complete_handover(table: &mut Table, id: &str, now: u64) -> Option<(String, u32)> {
    let container = table.get(id)?;
    let Some(Handover::Draining { to }) = &container.handover else { return None };
    let (to, action) = (to.clone(), container.action.clone());
    let slot = table.free_slot(&action, &to);
    let container = table.get_mut(id)?;
    container.node = to.clone();
    container.slot = slot;
    container.usage = Usage {
        gc: GcState::new(now),
        unclaimed_since: Some(now),
        last_named: Some(now),
        ..Usage::default()
    };
    container.handover = Some(Handover::Moved);
    Some((to, slot))
}

/// A container of `action` moved to `node` and not yet given to that node's filter: given now.
/// Its id, address and slot.
pub fn take_moved(table: &mut Table, action: &ActionKey, node: &str) -> Option<(String, String, u32)> {
    let id = table
        .iter()
        .find(|c| {
            &c.action == action
                && c.node == node
                && c.state == ContainerState::Ready
                && c.handover == Some(Handover::Moved)
        })?
        .id
        .clone();
    let container = table.get_mut(&id)?;
    container.handover = None;
    Some((container.id.clone(), container.address.clone()?, container.slot))
}

/// A cold start of `current` means every container of an older revision of the same action on
/// that Envoy node will never be chosen again (the filter keys its pool by revision): marks them
/// as due, so the node's next report sweeps each one as soon as it is free. Their ids.
pub fn retire_old_revisions(table: &mut Table, current: &ActionKey, node: &str, now: u64) -> Vec<String> {
    let retired: Vec<String> = table
        .iter()
        .filter(|container| {
            let action = &container.action;
            action.namespace == current.namespace
                && action.package == current.package
                && action.name == current.name
                && action.revision != current.revision
                && container.node == node
                && !container.usage.obsolete
        })
        .map(|container| container.id.clone())
        .collect();
    for id in &retired {
        if let Some(container) = table.get_mut(id) {
            container.usage.gc.marked_at.get_or_insert(now);
            container.usage.reclaimed = true;
            container.usage.obsolete = true;
        }
    }
    retired
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::action;
    use proptest::prelude::*;
    use whisk_contract::ContainerUse;

    const CONFIG: GcConfig = GcConfig { idle_timeout_ms: 1_000, grace_ms: 500, compact_idle_ms: 1_000 };
    const NODE: &str = "envoy-1";
    const UNCLAIMED: u64 = 10_000;

    fn capacities(capacity_mb: u64) -> Vec<Node> {
        vec![Node::new("local", capacity_mb)]
    }

    fn start(table: &mut Table, id: &str, name: &str, now: u64) {
        table.reserve(id.into(), action(name), "nodejs:20".into(), NODE.into());
        table.set_ready(id, format!("127.0.0.1:{}", 4000 + table.len()));
        let container = table.get_mut(id).unwrap();
        container.host = "local".into();
        container.memory_mb = 256;
        container.usage.gc = gc::GcState::new(now);
    }

    #[test]
    fn a_handover_drains_the_idlest_container_of_the_action_then_moves_it_once_swept() {
        let mut table = Table::default();
        start(&mut table, "old", "hello", 100);
        start(&mut table, "recent", "hello", 900);
        start(&mut table, "other-action", "bye", 0);
        // Already on the asking node: nothing to hand over from there.
        table.reserve("mine".into(), action("hello"), "nodejs:20".into(), "envoy-2".into());
        table.set_ready("mine", "127.0.0.1:4999".into());

        let id = start_handover(&mut table, &action("hello"), "envoy-2");
        assert_eq!(id.as_deref(), Some("old"), "the one idle longest, of the same action, elsewhere");
        assert_eq!(table.get("old").unwrap().handover, Some(Handover::Draining { to: "envoy-2".into() }));
        // Its node's next report is told to let go of it, unless it is busy then.
        let busy = apply_report(&mut table, &report(&[("old", SlotUse::Busy, 1)]), 1_050, &CONFIG);
        assert!(busy.answer.hand_over.is_empty());
        let free = apply_report(&mut table, &report(&[("old", SlotUse::Free, 1)]), 1_060, &CONFIG);
        assert_eq!(free.answer.hand_over, ["old"]);
        assert_eq!(
            start_handover(&mut table, &action("hello"), "envoy-2").as_deref(),
            Some("old"),
            "asked again: the same handover, not a second one"
        );
        assert_eq!(take_moved(&mut table, &action("hello"), "envoy-2"), None, "not swept yet");

        // Its node sweeps it (free): it moves to the lowest free slot there ("mine" holds 0).
        assert_eq!(complete_handover(&mut table, "recent", 1_200), None, "not being handed over");
        assert_eq!(complete_handover(&mut table, "old", 1_200), Some(("envoy-2".into(), 1)));
        let moved = table.get("old").unwrap();
        assert_eq!((moved.node.as_str(), moved.slot, moved.usage.gc.marked_at), ("envoy-2", 1, None));
        assert_eq!(moved.usage.unclaimed_since, Some(1_200));
        let taken = take_moved(&mut table, &action("hello"), "envoy-2").unwrap();
        assert_eq!((taken.0.as_str(), taken.2), ("old", 1));
        assert_eq!(take_moved(&mut table, &action("hello"), "envoy-2"), None, "given once");
        assert_eq!(table.get("old").unwrap().handover, None);
    }

    #[test]
    fn busy_or_moving_containers_are_not_chosen() {
        let mut table = Table::default();
        start(&mut table, "a", "hello", 0);
        apply_report(&mut table, &report(&[("a", SlotUse::Busy, 1)]), 20, &CONFIG);
        assert_eq!(start_handover(&mut table, &action("hello"), "envoy-2"), None, "busy");
        apply_report(&mut table, &report(&[("a", SlotUse::Free, 1)]), 50, &CONFIG);
        assert_eq!(start_handover(&mut table, &action("hello"), "envoy-2").as_deref(), Some("a"));
        assert_eq!(start_handover(&mut table, &action("hello"), "envoy-3"), None, "already moving");
    }

    fn report(containers: &[(&str, SlotUse, u64)]) -> UsageReport {
        UsageReport {
            node_id: NODE.into(),
            containers: containers
                .iter()
                .map(|(id, state, uses)| ContainerUse { id: (*id).into(), state: *state, uses: *uses })
                .collect(),
        }
    }

    #[test]
    fn an_idle_container_is_marked_then_confirmed_then_swept_after_the_grace() {
        let mut table = Table::default();
        start(&mut table, "a", "x", 0);
        assert_eq!(collect(&mut table, &capacities(1024), 999, &CONFIG, UNCLAIMED), Collected::default());
        let collected = collect(&mut table, &capacities(1024), 1_000, &CONFIG, UNCLAIMED);
        assert_eq!(collected.marked, ["a"]);

        let outcome = apply_report(&mut table, &report(&[("a", SlotUse::Free, 0)]), 1_100, &CONFIG);
        assert_eq!(outcome.answer.mark, ["a"], "the node is told until it confirms");
        assert!(outcome.answer.sweep.is_empty());
        let outcome = apply_report(&mut table, &report(&[("a", SlotUse::Marked, 0)]), 1_200, &CONFIG);
        assert_eq!(outcome.answer, UsageAnswer::default(), "confirmed, within the grace");
        let outcome = apply_report(&mut table, &report(&[("a", SlotUse::Marked, 0)]), 1_500, &CONFIG);
        assert_eq!(outcome.answer.sweep, ["a"]);
    }

    #[test]
    fn a_use_after_the_mark_clears_it_and_restarts_the_idle_clock() {
        let mut table = Table::default();
        start(&mut table, "a", "x", 0);
        collect(&mut table, &capacities(1024), 1_000, &CONFIG, UNCLAIMED);
        apply_report(&mut table, &report(&[("a", SlotUse::Marked, 0)]), 1_100, &CONFIG);
        // The filter claimed the marked container (its only free one) and released it.
        let outcome = apply_report(&mut table, &report(&[("a", SlotUse::Free, 1)]), 1_600, &CONFIG);
        assert_eq!(outcome.unmarked, 1);
        assert_eq!(outcome.answer, UsageAnswer::default());
        assert_eq!(table.get("a").unwrap().usage.gc.marked_at, None);
        assert!(collect(&mut table, &capacities(1024), 2_599, &CONFIG, UNCLAIMED).marked.is_empty());
        assert_eq!(collect(&mut table, &capacities(1024), 2_600, &CONFIG, UNCLAIMED).marked, ["a"]);
    }

    #[test]
    fn a_busy_container_is_never_marked_nor_swept() {
        let mut table = Table::default();
        start(&mut table, "a", "x", 0);
        apply_report(&mut table, &report(&[("a", SlotUse::Busy, 1)]), 10, &CONFIG);
        assert!(collect(&mut table, &capacities(1024), 60_000, &CONFIG, UNCLAIMED).marked.is_empty());
        // A mark that raced a claim: the node reports it busy, so the mark is dropped.
        let outcome = apply_report(&mut table, &report(&[("a", SlotUse::Free, 1)]), 60_001, &CONFIG);
        assert!(outcome.answer.sweep.is_empty());
        assert_eq!(collect(&mut table, &capacities(1024), 61_001, &CONFIG, UNCLAIMED).marked, ["a"]);
        let outcome = apply_report(&mut table, &report(&[("a", SlotUse::Busy, 2)]), 70_000, &CONFIG);
        assert_eq!(outcome.unmarked, 1);
        assert!(outcome.answer.sweep.is_empty());
    }

    #[test]
    fn unknown_containers_and_other_nodes_reports() {
        let mut table = Table::default();
        start(&mut table, "a", "x", 0);
        collect(&mut table, &capacities(1024), 5_000, &CONFIG, UNCLAIMED);
        let stranger = UsageReport {
            node_id: "envoy-2".into(),
            containers: vec![ContainerUse { id: "a".into(), state: SlotUse::Marked, uses: 0 }],
        };
        assert_eq!(apply_report(&mut table, &stranger, 9_000, &CONFIG).answer, UsageAnswer::default());
        assert!(!table.get("a").unwrap().usage.mark_confirmed, "only the owner confirms");
        let outcome = apply_report(&mut table, &report(&[("gone", SlotUse::Free, 3)]), 9_000, &CONFIG);
        assert_eq!(outcome.answer.unknown, ["gone"]);
    }

    #[test]
    fn a_full_pool_reclaims_other_actions_idle_containers_and_sweeps_them_at_once() {
        let mut table = Table::default();
        start(&mut table, "a", "x", 0);
        start(&mut table, "b", "y", 100);
        assert_eq!(place(&table, &capacities(512), 256), None);
        let victims = reclaim(&mut table, &capacities(512), &action("z"), 256, 200).unwrap();
        assert_eq!(victims, ["a"], "the longest idle goes first");
        assert_eq!(
            reclaim(&mut table, &capacities(512), &action("z"), 256, 210).unwrap(),
            ["a"],
            "asking again picks the same, marked victim"
        );
        assert_eq!(reclaim(&mut table, &capacities(512), &action("x"), 512, 210), None, "own action");
        let outcome = apply_report(&mut table, &report(&[("a", SlotUse::Free, 0)]), 250, &CONFIG);
        assert_eq!(outcome.answer.mark, ["a"]);
        let outcome = apply_report(&mut table, &report(&[("a", SlotUse::Marked, 0)]), 300, &CONFIG);
        assert_eq!(outcome.answer.sweep, ["a"], "no grace for a reclaimed victim");
        table.remove("a");
        assert_eq!(place(&table, &capacities(512), 256).as_deref(), Some("local"));
        assert_eq!(fragmentation(&table, &capacities(512)), Some(1.0));
    }

    #[test]
    fn an_adopted_container_no_report_names_is_an_orphan_after_the_timeout() {
        let mut table = Table::default();
        start(&mut table, "claimed", "x", 0);
        start(&mut table, "orphan", "y", 0);
        for id in ["claimed", "orphan"] {
            // As adoption leaves them: unclaimed, and routable since then.
            let usage = &mut table.get_mut(id).unwrap().usage;
            (usage.unclaimed_since, usage.last_named) = (Some(0), Some(0));
        }
        apply_report(&mut table, &report(&[("claimed", SlotUse::Free, 4)]), 500, &CONFIG);
        let early = collect(&mut table, &capacities(1024), 9_999, &CONFIG, UNCLAIMED);
        assert!(early.orphans.is_empty());
        assert!(!early.marked.contains(&"orphan".to_owned()), "an unclaimed container is not marked");
        let late = collect(&mut table, &capacities(1024), 10_000, &CONFIG, UNCLAIMED);
        assert_eq!(late.orphans, ["orphan"]);
    }

    #[test]
    fn a_container_its_node_stops_naming_is_an_orphan_after_the_timeout() {
        let mut table = Table::default();
        start(&mut table, "kept", "x", 0);
        start(&mut table, "forgotten", "y", 0);
        for id in ["kept", "forgotten"] {
            table.get_mut(id).unwrap().usage.last_named = Some(0);
        }
        // Both named for a while; then the node names only one (its Envoy restarted and forgot the
        // other, or another node's Envoy went away for good).
        for now in (1_000..=5_000).step_by(1_000) {
            apply_report(
                &mut table,
                &report(&[("kept", SlotUse::Free, 1), ("forgotten", SlotUse::Free, 1)]),
                now,
                &CONFIG,
            );
        }
        for now in (6_000..15_000).step_by(1_000) {
            apply_report(&mut table, &report(&[("kept", SlotUse::Free, 1)]), now, &CONFIG);
            let collected = collect(&mut table, &capacities(1024), now, &CONFIG, UNCLAIMED);
            assert!(collected.orphans.is_empty(), "at {now}: {collected:?}");
        }
        // Ten seconds after it was last named.
        let collected = collect(&mut table, &capacities(1024), 15_000, &CONFIG, UNCLAIMED);
        assert_eq!(collected.orphans, ["forgotten"]);
    }

    #[test]
    fn a_new_revision_retires_the_old_revisions_containers_on_its_node() {
        let mut table = Table::default();
        start(&mut table, "old", "x", 0);
        start(&mut table, "other", "y", 0);
        let mut current = action("x");
        current.revision = "r2".into();
        assert_eq!(retire_old_revisions(&mut table, &current, NODE, 50), ["old"]);
        assert!(retire_old_revisions(&mut table, &current, NODE, 60).is_empty(), "once");
        assert!(retire_old_revisions(&mut table, &current, "envoy-2", 60).is_empty(), "per node");
        // Busy: swept only once its activation ended and the node reported it free and marked.
        let outcome = apply_report(&mut table, &report(&[("old", SlotUse::Busy, 1)]), 70, &CONFIG);
        assert!(outcome.answer.sweep.is_empty());
        let outcome = apply_report(&mut table, &report(&[("old", SlotUse::Free, 1)]), 80, &CONFIG);
        assert_eq!(outcome.answer.mark, ["old"], "a use does not revive an old revision");
        let outcome = apply_report(&mut table, &report(&[("old", SlotUse::Marked, 1)]), 90, &CONFIG);
        assert_eq!(outcome.answer.sweep, ["old"]);
    }

    fn slot_use() -> impl Strategy<Value = SlotUse> {
        prop_oneof![Just(SlotUse::Free), Just(SlotUse::Busy), Just(SlotUse::Marked), Just(SlotUse::Retired)]
    }

    proptest! {
        /// Whatever the reports and rounds, a sweep is only ever answered for a container the same
        /// report showed marked and not used since the last one: never for a busy one.
        #[test]
        fn sweeps_only_name_containers_reported_marked_and_unused(
            steps in proptest::collection::vec((0usize..3, slot_use(), 0u64..3, any::<bool>(), 0u64..700), 1..120)
        ) {
            let mut table = Table::default();
            for (index, id) in ["a", "b", "c"].iter().enumerate() {
                start(&mut table, id, &format!("action{index}"), 0);
            }
            let mut uses = [0u64; 3];
            let mut now = 0;
            for (index, state, extra_uses, round, pause) in steps {
                now += pause;
                if round {
                    collect(&mut table, &capacities(4096), now, &CONFIG, 10_000);
                }
                let id = ["a", "b", "c"][index];
                uses[index] += extra_uses;
                let outcome = apply_report(&mut table, &report(&[(id, state, uses[index])]), now, &CONFIG);
                if outcome.answer.sweep.iter().any(|swept| swept == id) {
                    prop_assert_eq!(state, SlotUse::Marked);
                    prop_assert_eq!(extra_uses, 0);
                }
            }
        }

        /// Containers of one action moving between three Envoy nodes: a node is only ever told to
        /// let go of a container it reported free, a container moves only to the node that asked
        /// for it, and slots stay unique per node.
        #[test]
        fn handovers_move_only_released_containers_and_keep_slots_unique(
            steps in proptest::collection::vec((0usize..4, 0usize..3, slot_use(), 0u8..4), 1..150)
        ) {
            const NODES: [&str; 3] = ["n0", "n1", "n2"];
            const IDS: [&str; 4] = ["a", "b", "c", "d"];
            let mut table = Table::default();
            for (index, id) in IDS.iter().enumerate() {
                table.reserve((*id).into(), action("x"), "nodejs:20".into(), NODES[index % 3].into());
                table.set_ready(id, format!("127.0.0.1:{}", 4000 + index));
            }
            let mut released: Vec<String> = Vec::new();
            for (now, (index, node, state, op)) in steps.into_iter().enumerate() {
                let now = now as u64;
                let id = IDS[index];
                let owner = table.get(id).map(|c| c.node.clone()).unwrap_or_default();
                match op {
                    0 => {
                        start_handover(&mut table, &action("x"), NODES[node]);
                    }
                    1 => {
                        let mut report = report(&[(id, state, 0)]);
                        report.node_id = owner.clone();
                        let answer = apply_report(&mut table, &report, now, &CONFIG).answer;
                        if answer.hand_over.iter().any(|named| named == id) {
                            prop_assert_ne!(state, SlotUse::Busy);
                            released.push(id.to_owned());
                        }
                    }
                    // The node's retire of a container it let go of (the only caller of
                    // `complete_handover` is a swept retire).
                    2 if released.iter().any(|r| r == id) => {
                        released.retain(|r| r != id);
                        let target = match &table.get(id).and_then(|c| c.handover.clone()) {
                            Some(Handover::Draining { to }) => Some(to.clone()),
                            _ => None,
                        };
                        let moved = complete_handover(&mut table, id, now);
                        prop_assert_eq!(moved.map(|(node, _)| node), target, "moves to where it was asked");
                    }
                    2 => {}
                    _ => {
                        take_moved(&mut table, &action("x"), NODES[node]);
                    }
                }
                let mut seen = std::collections::BTreeSet::new();
                for container in table.iter() {
                    prop_assert!(seen.insert((container.node.clone(), container.slot)), "slot taken twice");
                }
            }
        }
    }
}
