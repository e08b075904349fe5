//! Placement of new containers on nodes, and how compact the pool is. Pure: the control plane
//! gives each node's capacity and allocation, gets a node name back.
//!
//! ```text
//!  cold start (memory m) ─► place(nodes, m) ─► the most-allocated node that still fits m (best fit)
//!                              └─ none fits ─► gc::reclaim frees idle containers of other actions
//! ```
//!
//! Best fit keeps new containers on nodes that are already busy, so that the nodes garbage
//! collection drains (it prefers victims on the least-used nodes, see [`crate::gc`]) stay empty and
//! can be given back. [`fragmentation`] measures the result; [`naive`] is the policy we compare
//! against (round-robin placement and oldest-first victims, as OpenWhisk's scheduler spreads).
//! See docs/decisions/0007-gc-and-placement.md.

/// A machine containers run on (a Kubernetes node, or the one host of the local cluster
/// manager), not the Envoy node that routes to them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    /// Memory the node gives to action containers.
    pub capacity_mb: u64,
    /// Memory already taken on it (our containers, marked ones included, and anything else).
    pub allocated_mb: u64,
}

/// `capacities` less the memory something outside the container table holds (prewarmed
/// containers): each `(node, memory)` is taken from the node it names, or from the first node when
/// its node is unknown (the one machine of the local cluster manager). What placement may still
/// give away.
pub fn less_held<'a>(
    capacities: &[Node],
    held: impl IntoIterator<Item = (Option<&'a str>, u64)>,
) -> Vec<Node> {
    let mut nodes = capacities.to_vec();
    for (name, memory_mb) in held {
        let index = name.and_then(|name| nodes.iter().position(|node| node.name == name)).unwrap_or(0);
        if let Some(node) = nodes.get_mut(index) {
            node.capacity_mb = node.capacity_mb.saturating_sub(memory_mb);
        }
    }
    nodes
}

impl Node {
    pub fn new(name: impl Into<String>, capacity_mb: u64) -> Self {
        Self { name: name.into(), capacity_mb, allocated_mb: 0 }
    }

    /// Memory still free; never negative, even when something else over-committed the node.
    pub fn free_mb(&self) -> u64 {
        self.capacity_mb.saturating_sub(self.allocated_mb)
    }

    pub fn fits(&self, memory_mb: u64) -> bool {
        self.free_mb() >= memory_mb
    }
}

/// The node a new container of `memory_mb` goes to: among the nodes it fits on, the one left with
/// the least free memory (best fit; with equal capacities, the most-allocated node), ties broken by
/// name so that the choice is deterministic. `None` when it fits nowhere.
pub fn place(nodes: &[Node], memory_mb: u64) -> Option<&Node> {
    nodes.iter().filter(|node| node.fits(memory_mb)).min_by(|a, b| {
        (a.free_mb(), std::cmp::Reverse(a.allocated_mb), &a.name).cmp(&(
            b.free_mb(),
            std::cmp::Reverse(b.allocated_mb),
            &b.name,
        ))
    })
}

/// The fewest nodes that could hold everything allocated: the smallest `k` such that the `k`
/// largest capacities add up to the total allocation. With equal capacities `c` this is
/// `ceil(total / c)`, the bin-packing lower bound.
pub fn lower_bound(nodes: &[Node]) -> usize {
    let total: u64 = nodes.iter().map(|node| node.allocated_mb).sum();
    if total == 0 {
        return 0;
    }
    let mut capacities: Vec<u64> = nodes.iter().map(|node| node.capacity_mb).collect();
    capacities.sort_unstable_by(|a, b| b.cmp(a));
    let mut held = 0u64;
    for (index, capacity) in capacities.iter().enumerate() {
        held = held.saturating_add(*capacity);
        if held >= total {
            return index + 1;
        }
    }
    // Over-committed: even every node together is not enough; every node is needed.
    nodes.len()
}

/// Nodes in use divided by [`lower_bound`]: 1.0 is perfectly compact, 2.0 means twice as many
/// nodes hold containers as the allocation needs. `None` when nothing is allocated.
pub fn fragmentation(nodes: &[Node]) -> Option<f64> {
    let bound = lower_bound(nodes);
    if bound == 0 {
        return None;
    }
    let in_use = nodes.iter().filter(|node| node.allocated_mb > 0).count();
    Some(in_use as f64 / bound as f64)
}

/// The baseline our policy is measured against: OpenWhisk-like spreading. Not used by the control
/// plane; kept public so that the simulation (`tests/gc_simulation.rs`) and benchmarks can run it.
pub mod naive {
    use super::Node;
    use crate::gc::{ContainerView, Reclaim};
    use crate::table::ActionKey;

    /// Round-robin placement: the next node (after the last one used) that fits.
    #[derive(Debug, Default, Clone)]
    pub struct RoundRobin {
        next: usize,
    }

    impl RoundRobin {
        pub fn place<'n>(&mut self, nodes: &'n [Node], memory_mb: u64) -> Option<&'n Node> {
            let count = nodes.len();
            (0..count).map(|step| (self.next + step) % count).find(|&index| nodes[index].fits(memory_mb)).map(
                |index| {
                    self.next = (index + 1) % count;
                    &nodes[index]
                },
            )
        }
    }

    /// Oldest-first victims, blind to nodes: free containers of other actions are taken from the
    /// least recently used on, wherever they run, until some node has room for `needed_mb`; only the
    /// victims on that node are returned. `None` when no node can be given enough room.
    pub fn reclaim_oldest_first<'a>(
        view: &[ContainerView<'a>],
        nodes: &[Node],
        for_action: &ActionKey,
        needed_mb: u64,
    ) -> Option<Reclaim<'a>> {
        if let Some(node) = nodes.iter().find(|node| node.fits(needed_mb)) {
            return Some(Reclaim { node: node.name.clone(), victims: Vec::new(), freed_mb: 0 });
        }
        let mut candidates: Vec<&ContainerView<'a>> =
            view.iter().filter(|c| !c.busy && c.action != for_action).collect();
        candidates.sort_by_key(|c| (c.last_used_ms, c.id));
        let mut freed = vec![0u64; nodes.len()];
        for candidate in candidates {
            let Some(index) = nodes.iter().position(|node| node.name == candidate.node) else {
                continue;
            };
            if nodes[index].capacity_mb < needed_mb {
                continue;
            }
            freed[index] += candidate.memory_mb;
            if nodes[index].free_mb() + freed[index] >= needed_mb {
                let name = &nodes[index].name;
                let mut victims: Vec<&ContainerView<'a>> = view
                    .iter()
                    .filter(|c| !c.busy && c.action != for_action && c.node == name)
                    .filter(|c| (c.last_used_ms, c.id) <= (candidate.last_used_ms, candidate.id))
                    .collect();
                victims.sort_by_key(|c| (c.last_used_ms, c.id));
                return Some(Reclaim {
                    node: name.clone(),
                    freed_mb: victims.iter().map(|c| c.memory_mb).sum(),
                    victims: victims.iter().map(|c| c.id).collect(),
                });
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::naive::RoundRobin;
    use super::*;
    use proptest::prelude::*;

    fn nodes(allocations: &[(u64, u64)]) -> Vec<Node> {
        allocations
            .iter()
            .enumerate()
            .map(|(index, &(capacity_mb, allocated_mb))| Node {
                name: format!("n{index:02}"),
                capacity_mb,
                allocated_mb,
            })
            .collect()
    }

    #[test]
    fn memory_held_outside_the_table_is_not_given_away() {
        let pool = vec![Node::new("local", 1024), Node::new("other", 512)];
        let held = less_held(&pool, [(None, 512), (Some("nowhere"), 256)]);
        assert_eq!((held[0].capacity_mb, held[1].capacity_mb), (256, 512), "unknown nodes: the first");
        assert_eq!(place(&held, 512).map(|n| n.name.as_str()), Some("other"));
        assert_eq!(less_held(&pool, [(None, 4096)])[0].free_mb(), 0, "never below zero");
        let held = less_held(&pool, [(Some("other"), 256), (Some("local"), 128)]);
        assert_eq!((held[0].capacity_mb, held[1].capacity_mb), (896, 256), "each from its own node");
    }

    #[test]
    fn best_fit_picks_the_most_allocated_node_that_fits() {
        let pool = nodes(&[(4096, 1024), (4096, 3840), (4096, 3072), (4096, 0)]);
        assert_eq!(place(&pool, 256).map(|n| n.name.as_str()), Some("n01"));
        assert_eq!(place(&pool, 512).map(|n| n.name.as_str()), Some("n02"));
        assert_eq!(place(&pool, 4096).map(|n| n.name.as_str()), Some("n03"));
        assert_eq!(place(&pool, 8192), None);
    }

    #[test]
    fn best_fit_with_unequal_capacities_leaves_the_least_free_memory() {
        // n00 is more allocated, but n01 is left with less free memory after the placement.
        let pool = nodes(&[(16384, 8192), (2048, 512)]);
        assert_eq!(place(&pool, 1024).map(|n| n.name.as_str()), Some("n01"));
    }

    #[test]
    fn fragmentation_is_nodes_in_use_over_the_packing_lower_bound() {
        assert_eq!(fragmentation(&nodes(&[(4096, 0), (4096, 0)])), None);
        assert_eq!(fragmentation(&nodes(&[(4096, 4096), (4096, 1), (4096, 0)])), Some(1.0));
        assert_eq!(fragmentation(&nodes(&[(4096, 256), (4096, 256), (4096, 256)])), Some(3.0));
        assert_eq!(lower_bound(&nodes(&[(1024, 1000), (8192, 1000)])), 1);
        assert_eq!(lower_bound(&nodes(&[(1024, 2000), (1024, 2000)])), 2);
    }

    #[test]
    fn round_robin_takes_the_next_node_that_fits() {
        let pool = nodes(&[(1024, 0), (1024, 1000), (1024, 0)]);
        let mut policy = RoundRobin::default();
        let picks: Vec<_> = (0..4).filter_map(|_| policy.place(&pool, 256).map(|n| n.name.clone())).collect();
        assert_eq!(picks, ["n00", "n02", "n00", "n02"]);
    }

    proptest! {
        /// Whatever the sequence of placements and removals, no node is ever allocated beyond its
        /// capacity, and a placement is refused only when the container fits nowhere.
        #[test]
        fn placement_never_exceeds_a_nodes_capacity(
            capacities in proptest::collection::vec(prop_oneof![Just(1024u64), Just(2048), Just(4096)], 1..8),
            ops in proptest::collection::vec((any::<bool>(), prop_oneof![Just(128u64), Just(256), Just(512), Just(1024), Just(3000)], any::<prop::sample::Index>()), 1..200),
            round_robin in any::<bool>(),
        ) {
            let mut pool: Vec<Node> =
                capacities.iter().enumerate().map(|(i, c)| Node::new(format!("n{i}"), *c)).collect();
            let mut placed: Vec<(usize, u64)> = Vec::new();
            let mut policy = RoundRobin::default();
            for (add, memory, pick) in ops {
                if add {
                    let chosen = if round_robin { policy.place(&pool, memory) } else { place(&pool, memory) };
                    match chosen.map(|node| node.name.clone()) {
                        Some(name) => {
                            let index = pool.iter().position(|n| n.name == name).unwrap();
                            pool[index].allocated_mb += memory;
                            placed.push((index, memory));
                        }
                        None => prop_assert!(pool.iter().all(|n| !n.fits(memory))),
                    }
                } else if !placed.is_empty() {
                    let (index, memory) = placed.swap_remove(pick.index(placed.len()));
                    pool[index].allocated_mb -= memory;
                }
                for node in &pool {
                    prop_assert!(node.allocated_mb <= node.capacity_mb);
                }
            }
        }

        /// Best fit: no node that fits would have been left with less free memory.
        #[test]
        fn best_fit_is_the_tightest_fit(
            pool in proptest::collection::vec((1024u64..8192, 0u64..8192), 1..10),
            memory in 1u64..4096,
        ) {
            let pool = nodes(&pool);
            if let Some(chosen) = place(&pool, memory) {
                prop_assert!(chosen.fits(memory));
                for node in pool.iter().filter(|n| n.fits(memory)) {
                    prop_assert!(chosen.free_mb() <= node.free_mb());
                }
            } else {
                prop_assert!(pool.iter().all(|n| !n.fits(memory)));
            }
        }
    }
}
