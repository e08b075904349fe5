//! The container table: every container the control plane owns, the action revision it serves, its
//! slot, the Envoy node it is given to and its address. Pure data, no I/O: the control plane
//! mutates it and the snapshot builder derives endpoints from it.

use std::collections::BTreeSet;
use std::fmt;

use crate::gc::GcState;

/// One action revision: containers are never shared between revisions, so an update never runs
/// new parameters against old code.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ActionKey {
    pub namespace: String,
    pub package: Option<String>,
    pub name: String,
    pub revision: String,
}

impl fmt::Display for ActionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.package {
            Some(package) => write!(f, "{}/{}/{}@{}", self.namespace, package, self.name, self.revision),
            None => write!(f, "{}/{}@{}", self.namespace, self.name, self.revision),
        }
    }
}

/// Where a container is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerState {
    /// Reserved: the process is starting or `/init` is running; not routable.
    Starting,
    /// Initialised and published to its node's endpoints.
    Ready,
}

/// One container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    pub id: String,
    pub action: ActionKey,
    pub kind: String,
    /// Unique among the live containers of `action`; the filter's shared-data key.
    pub slot: u32,
    /// The Envoy node (`node.id`) that routes to this container, and only that one.
    pub node: String,
    /// `ip:port`, known once the cluster manager started it.
    pub address: Option<String>,
    pub state: ContainerState,
    /// The machine it runs on (a placement node), not the Envoy node that routes to it.
    pub host: String,
    /// Memory it holds on `host`.
    pub memory_mb: u64,
    /// What the collector knows of its use.
    pub usage: Usage,
    /// On its way to another Envoy node (see [`Handover`]).
    pub handover: Option<Handover>,
}

/// A warm container moving from one Envoy node to another, which only happens once its node let
/// go of it: each container is routed by exactly one node at a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handover {
    /// Marked due on its node; the node's sweep (a CAS that succeeds only while it is free) moves
    /// it to `to`.
    Draining { to: String },
    /// Published to its new node; the next cold start of its action there takes it.
    Moved,
}

/// The collector's view of one container's use, fed by the data plane's usage reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub gc: GcState,
    /// Running an activation at the last report.
    pub busy: bool,
    /// The use count of the last report: a higher one means it was used since.
    pub uses_seen: u64,
    /// The owning Envoy node reported the container marked: its next report may be told to sweep.
    pub mark_confirmed: bool,
    /// Marked to make room for another action's container: swept as soon as the mark is confirmed.
    pub reclaimed: bool,
    /// Adopted after a restart at this time and not reported by its Envoy node since: a container
    /// whose cold start never reached the filter, discarded if no report names it in time.
    pub unclaimed_since: Option<u64>,
    /// When its Envoy node last named it in a usage report, or when it became routable there.
    /// Every worker names the containers it started in each report, so a container no report
    /// names for the orphan timeout is held by no filter: its Envoy is gone, or restarted and
    /// forgot it. `None` for one never routable.
    pub last_named: Option<u64>,
    /// Of an action revision that was replaced: swept as soon as it is free, whatever its use.
    pub obsolete: bool,
}

/// The table, ordered by id so that snapshots built from it are deterministic.
#[derive(Debug, Default, Clone)]
pub struct Table {
    /// A persistent map: every table version is published to the xDS streams, and cloning it
    /// shares the unchanged nodes instead of copying 50,000 containers per publish.
    containers: imbl::OrdMap<String, Container>,
}

impl Table {
    /// Reserves a container id for `action` on `node` at the lowest free slot of that action on
    /// that node. Per node, because slots are keys in one Envoy's shared data: numbering them
    /// across nodes would leave each Envoy long runs of other nodes' slots, and the filter's scan
    /// stops at a gap of a few missing slots.
    pub fn reserve(&mut self, id: String, action: ActionKey, kind: String, node: String) -> u32 {
        let slot = self.free_slot(&action, &node);
        self.containers.insert(
            id.clone(),
            Container {
                id,
                action,
                kind,
                slot,
                node,
                address: None,
                state: ContainerState::Starting,
                host: String::new(),
                memory_mb: 0,
                usage: Usage::default(),
                handover: None,
            },
        );
        slot
    }

    /// The lowest slot no container of `action` on `node` holds.
    pub fn free_slot(&self, action: &ActionKey, node: &str) -> u32 {
        let taken: BTreeSet<u32> = self
            .containers
            .values()
            .filter(|c| &c.action == action && c.node == node)
            .map(|c| c.slot)
            .collect();
        (0..).find(|slot| !taken.contains(slot)).unwrap_or(0)
    }

    /// Marks a reserved container as initialised at `address`; false when the id is unknown.
    pub fn set_ready(&mut self, id: &str, address: String) -> bool {
        match self.containers.get_mut(id) {
            Some(container) => {
                container.address = Some(address);
                container.state = ContainerState::Ready;
                true
            }
            None => false,
        }
    }

    pub fn remove(&mut self, id: &str) -> Option<Container> {
        self.containers.remove(id)
    }

    pub fn get(&self, id: &str) -> Option<&Container> {
        self.containers.get(id)
    }

    /// Puts the running, initialised containers found at start-up back in the table, each at its
    /// slot, and returns the ids of those refused because their id or their slot on their node was
    /// taken (by the table or by an earlier one of them). The slots are indexed once, so adopting a
    /// pool of 50,000 containers costs O(n log n), not a scan of the table per container.
    pub fn insert_adopted(&mut self, found: Vec<Container>) -> Vec<String> {
        let mut slots: std::collections::HashSet<(ActionKey, String, u32)> =
            self.containers.values().map(|c| (c.action.clone(), c.node.clone(), c.slot)).collect();
        let mut refused = Vec::new();
        for container in found {
            let slot = (container.action.clone(), container.node.clone(), container.slot);
            if self.containers.contains_key(&container.id) || slots.contains(&slot) {
                refused.push(container.id);
                continue;
            }
            slots.insert(slot);
            self.containers.insert(container.id.clone(), container);
        }
        refused
    }

    pub fn get_mut(&mut self, id: &str) -> Option<&mut Container> {
        self.containers.get_mut(id)
    }

    pub fn len(&self) -> usize {
        self.containers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.containers.is_empty()
    }

    /// Routable containers given to `node`, in id order.
    pub fn ready_on<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a Container> + 'a {
        self.containers.values().filter(move |c| c.state == ContainerState::Ready && c.node == node)
    }

    /// Live containers (starting or ready) of one action revision given to `node`.
    pub fn count_of_on(&self, action: &ActionKey, node: &str) -> usize {
        self.containers.values().filter(|c| &c.action == action && c.node == node).count()
    }

    pub fn count_in(&self, state: ContainerState) -> usize {
        self.containers.values().filter(|c| c.state == state).count()
    }

    /// Every container, in id order.
    pub fn iter(&self) -> impl Iterator<Item = &Container> {
        self.containers.values()
    }

    /// What changed from this version to `newer`, container by container: `(before, after)`,
    /// `None` on the side where it does not exist. Versions that share most of their structure
    /// (one is a clone of the other, then changed) are compared in time proportional to the change.
    pub fn changes<'a>(
        &'a self,
        newer: &'a Table,
    ) -> impl Iterator<Item = (Option<&'a Container>, Option<&'a Container>)> + 'a {
        self.containers.diff(&newer.containers).map(|item| match item {
            imbl::ordmap::DiffItem::Add(_, after) => (None, Some(after)),
            imbl::ordmap::DiffItem::Update { old: (_, before), new: (_, after) } => {
                (Some(before), Some(after))
            }
            imbl::ordmap::DiffItem::Remove(_, before) => (Some(before), None),
        })
    }

    pub fn ids(&self) -> Vec<String> {
        self.containers.keys().cloned().collect()
    }
}

#[cfg(test)]
impl Table {
    /// Test fixture: a table with one ready container of `name` on `node`.
    pub fn test() -> Self {
        Self::default()
    }

    pub fn with_ready(mut self, id: &str, name: &str, node: &str, address: &str) -> Self {
        self.reserve(id.into(), action(name), "nodejs:20".into(), node.into());
        self.set_ready(id, address.into());
        self
    }
}

#[cfg(test)]
pub(crate) fn action(name: &str) -> ActionKey {
    ActionKey { namespace: "guest".into(), package: None, name: name.into(), revision: "r1".into() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn slots_start_at_zero_per_action_and_reuse_the_lowest_free() {
        let mut table = Table::default();
        assert_eq!(table.reserve("a".into(), action("x"), "k".into(), "n".into()), 0);
        assert_eq!(table.reserve("b".into(), action("x"), "k".into(), "n".into()), 1);
        assert_eq!(table.reserve("c".into(), action("y"), "k".into(), "n".into()), 0);
        table.remove("a");
        assert_eq!(table.reserve("d".into(), action("x"), "k".into(), "n".into()), 0);
        assert_eq!(table.reserve("e".into(), action("x"), "k".into(), "n".into()), 2);
    }

    #[test]
    fn slots_are_numbered_per_node_so_no_envoy_sees_another_nodes_gaps() {
        let mut table = Table::default();
        assert_eq!(table.reserve("a".into(), action("x"), "k".into(), "envoy-1".into()), 0);
        assert_eq!(table.reserve("b".into(), action("x"), "k".into(), "envoy-1".into()), 1);
        assert_eq!(table.reserve("c".into(), action("x"), "k".into(), "envoy-2".into()), 0);
        assert_eq!(table.reserve("d".into(), action("x"), "k".into(), "envoy-2".into()), 1);
    }

    #[test]
    fn only_ready_containers_of_the_node_are_routable() {
        let mut table = Table::test().with_ready("a", "x", "envoy-1", "127.0.0.1:1").with_ready(
            "b",
            "x",
            "envoy-2",
            "127.0.0.1:2",
        );
        table.reserve("c".into(), action("x"), "k".into(), "envoy-1".into());
        let ids: Vec<_> = table.ready_on("envoy-1").map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["a"]);
        assert_eq!(table.count_in(ContainerState::Starting), 1);
        assert_eq!(table.count_of_on(&action("x"), "envoy-1"), 2);
        assert_eq!(table.count_of_on(&action("x"), "envoy-2"), 1);
    }

    #[test]
    fn adoption_refuses_a_taken_id_or_slot_also_within_the_batch() {
        let mut table = Table::test().with_ready("a", "x", "envoy-1", "127.0.0.1:1");
        let found = |id: &str, name: &str, slot: u32| {
            let mut container = table.containers["a"].clone();
            (container.id, container.action, container.slot) = (id.into(), action(name), slot);
            container
        };
        let batch = vec![
            found("a", "y", 0), // the id is the table's
            found("b", "x", 0), // slot 0 of x on envoy-1 is a's
            found("c", "x", 1), // adopted
            found("d", "x", 1), // c took that slot a moment ago
            found("e", "y", 0), // adopted
        ];
        assert_eq!(table.insert_adopted(batch), ["a", "b", "d"]);
        let mut ids: Vec<_> = table.ready_on("envoy-1").map(|c| c.id.clone()).collect();
        ids.sort();
        assert_eq!(ids, ["a", "c", "e"]);
    }

    proptest! {
        /// Whatever the order of starts and removals, two live containers of one action on one node
        /// never share a slot: the filter's shared-data keys stay single-writer.
        #[test]
        fn live_slots_are_unique_per_action_and_node(ops in proptest::collection::vec((0u8..3, any::<bool>(), 0usize..8, 0u8..2), 1..200)) {
            let mut table = Table::default();
            let mut next = 0u32;
            for (action_index, add, victim, node) in ops {
                if add {
                    next += 1;
                    table.reserve(format!("c{next}"), action(&format!("a{action_index}")), "k".into(), format!("n{node}"));
                } else if let Some(id) = table.ids().get(victim % table.len().max(1)).cloned() {
                    table.remove(&id);
                }
                let mut seen = BTreeSet::new();
                for container in table.containers.values() {
                    prop_assert!(seen.insert((container.action.clone(), container.node.clone(), container.slot)));
                }
            }
        }
    }
}
