//! A synthetic day of load on 20 nodes, run over the same arrivals with our policy
//! (best-fit placement; mark, compaction and sweep; reclaim on the emptiest node) or with the
//! naive one (round-robin placement; mark and sweep; oldest-first reclaim), as OpenWhisk spreads.
//! The figure compared is the fragmentation of the pool (nodes in use over the bin-packing lower
//! bound), averaged over one sample a minute whenever anything is allocated. Deterministic: a
//! seeded SplitMix64 drives everything.
//!
//! The model of the platform: an activation takes the lowest free, unmarked container of its action
//! (the filter claims the lowest free slot); with none, the control plane recycles a marked free one
//! of that action (`gc::recycle`, unmarking it) or starts a new one (placement; when nothing fits,
//! reclaim; when that cannot make room either, the request waits, up to 60 s). A container is busy
//! for the activation's duration (plus 500 ms when it was just started). The collector runs every
//! 10 s: mark (and, for our policy, compaction), then sweep, which frees the memory at once.
//!
//! Used by `tests/gc_simulation.rs` (the check) and by `make bench` (the `gc-simulation` figure).
// The model's own invariants (a container it just placed exists, a reclaim made room): a violation
// is a bug of the simulation, which should stop it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::VecDeque;
use std::f64::consts::PI;

use crate::gc::{self, ContainerView, GcConfig, GcState};
use crate::placement::{self, Node, naive::RoundRobin};
use crate::table::ActionKey;

const DAY_MS: u64 = 86_400_000;
const STEP_MS: u64 = 1_000;
const GC_EVERY_MS: u64 = 10_000;
const SAMPLE_EVERY_MS: u64 = 60_000;
/// Nodes of the simulated pool.
pub const NODES: usize = 20;
/// Memory of each simulated node.
pub const NODE_CAPACITY_MB: u64 = 8_192;
const ACTIONS: usize = 200;
/// Activations a second at the daily peak, bursts not included.
const PEAK_RATE: f64 = 24.0;
/// The load at midnight, as a share of the noon peak.
const TROUGH: f64 = 0.05;
/// Popularity: the action ranked `k` gets a share proportional to `1 / k^ZIPF`.
const ZIPF: f64 = 1.3;
/// Activations one action runs at once at its peak (bursts included), below MAX_PER_ACTION.
const PEAK_CONCURRENCY: f64 = 4.0;
const COLD_START_MS: u64 = 500;
const MAX_WAIT_MS: u64 = 60_000;
/// Containers one action may hold (the control plane's default `--max-containers-per-action`).
const MAX_PER_ACTION: usize = 16;
/// The collector runs with its defaults (10 min idle timeout, 30 s grace, 3 min compaction).
pub const GC: GcConfig = GcConfig { idle_timeout_ms: 600_000, grace_ms: 30_000, compact_idle_ms: 180_000 };

/// SplitMix64: tiny, seedable, good enough for a load model.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    fn poisson(&mut self, mean: f64) -> u64 {
        if mean <= 0.0 {
            return 0;
        }
        if mean < 30.0 {
            // Knuth: multiply uniforms until the product drops below e^-mean.
            let limit = (-mean).exp();
            let (mut count, mut product) = (0u64, self.unit());
            while product > limit {
                count += 1;
                product *= self.unit();
            }
            return count;
        }
        // Normal approximation (Box-Muller) for large means.
        let gauss = (-2.0 * (1.0 - self.unit()).ln()).sqrt() * (2.0 * PI * self.unit()).cos();
        (mean + mean.sqrt() * gauss).round().max(0.0) as u64
    }
}

struct Profile {
    key: ActionKey,
    memory_mb: u64,
    mean_duration_ms: u64,
}

#[derive(Clone, Copy)]
struct Arrival {
    at_ms: u64,
    action: usize,
    duration_ms: u64,
}

/// 200 actions: Zipf-like popularity, memory from 128 MB to 1 GB, mean durations from 50 ms to
/// 10 s (log-uniform).
fn profiles(rng: &mut Rng) -> (Vec<Profile>, Vec<f64>) {
    let mut profiles = Vec::with_capacity(ACTIONS);
    let mut cumulative = Vec::with_capacity(ACTIONS);
    let mut total = 0.0;
    let harmonic: f64 = (1..=ACTIONS).map(|rank| 1.0 / (rank as f64).powf(ZIPF)).sum();
    for index in 0..ACTIONS {
        let memory_mb = [128, 256, 256, 256, 512, 512, 1024][rng.below(7) as usize];
        // Busy actions are short (APIs), long ones are rare (batch): at the peak an action keeps
        // about PEAK_CONCURRENCY activations running at most.
        let peak_rate = PEAK_RATE / (index as f64 + 1.0).powf(ZIPF) / harmonic;
        let longest_ms = PEAK_CONCURRENCY * 1_000.0 / peak_rate;
        let mean_duration_ms = (50.0 * 200f64.powf(rng.unit())).min(longest_ms).max(20.0) as u64;
        profiles.push(Profile {
            key: ActionKey {
                namespace: format!("ns{}", index % 17),
                package: None,
                name: format!("action{index}"),
                revision: "1".into(),
            },
            memory_mb,
            mean_duration_ms,
        });
        total += 1.0 / (index as f64 + 1.0).powf(ZIPF);
        cumulative.push(total);
    }
    (profiles, cumulative.into_iter().map(|c| c / total).collect())
}

/// The day's arrivals in time order: a diurnal base load (a tenth of the peak at midnight, the
/// peak at noon) drawn by popularity, plus bursts (any action, 2 to 10 a second for 30 s to 3 min,
/// about six an hour).
fn arrivals(rng: &mut Rng, profiles: &[Profile], cumulative: &[f64]) -> Vec<Arrival> {
    let mut trace = Vec::new();
    let mut bursts: Vec<(usize, f64, u64)> = Vec::new(); // (action, rate, until second)
    for second in 0..DAY_MS / 1_000 {
        let phase = second as f64 / 86_400.0;
        let rate = PEAK_RATE * (TROUGH + (1.0 - TROUGH) * (1.0 - (2.0 * PI * phase).cos()) / 2.0);
        if rng.unit() < 6.0 / 3_600.0 {
            let action = rng.below(ACTIONS as u64) as usize;
            let most = PEAK_CONCURRENCY * 1_000.0 / profiles[action].mean_duration_ms as f64;
            bursts.push((action, (2.0 + 8.0 * rng.unit()).min(most), second + 30 + rng.below(150)));
        }
        bursts.retain(|&(_, _, until)| until > second);
        let first = trace.len();
        for _ in 0..rng.poisson(rate) {
            let draw = rng.unit();
            let action = cumulative.partition_point(|&c| c < draw).min(ACTIONS - 1);
            trace.push(arrival(rng, profiles, second, action));
        }
        for &(action, burst_rate, _) in &bursts {
            for _ in 0..rng.poisson(burst_rate) {
                trace.push(arrival(rng, profiles, second, action));
            }
        }
        trace[first..].sort_by_key(|a| a.at_ms);
    }
    trace
}

fn arrival(rng: &mut Rng, profiles: &[Profile], second: u64, action: usize) -> Arrival {
    let mean = profiles[action].mean_duration_ms as f64;
    Arrival {
        at_ms: second * 1_000 + rng.below(1_000),
        action,
        duration_ms: (mean * (0.5 + rng.unit())) as u64 + 1,
    }
}

struct Container {
    id: String,
    node: usize,
    memory_mb: u64,
    slot: u32,
    busy_until: u64,
    gc: GcState,
}

/// The policy under test.
pub enum Policy {
    /// Best-fit placement; mark, compaction and sweep; reclaim on the emptiest node.
    Ours(GcConfig),
    /// Round-robin placement; mark and sweep; oldest-first reclaim; no compaction.
    Naive(RoundRobin),
}

/// What one run of the day measured.
#[derive(Debug, Default)]
pub struct Report {
    /// Mean of nodes in use / lower bound over the samples taken while anything is allocated.
    pub fragmentation: f64,
    pub samples: usize,
    pub mean_nodes_in_use: f64,
    pub mean_lower_bound: f64,
    pub activations: u64,
    pub cold_starts: u64,
    pub recycled: u64,
    pub reclaimed: u64,
    pub swept: u64,
    pub refused: u64,
    pub peak_allocated_mb: u64,
}

struct Pool<'p> {
    profiles: &'p [Profile],
    nodes: Vec<Node>,
    by_action: Vec<Vec<Container>>,
    policy: Policy,
    next_id: u64,
    waiting: VecDeque<Arrival>,
    report: Report,
    fragmentation_sum: f64,
    in_use_sum: usize,
    bound_sum: usize,
}

impl<'p> Pool<'p> {
    fn new(profiles: &'p [Profile], policy: Policy) -> Self {
        Self {
            profiles,
            nodes: (0..NODES).map(|i| Node::new(format!("node{i:02}"), NODE_CAPACITY_MB)).collect(),
            by_action: (0..profiles.len()).map(|_| Vec::new()).collect(),
            policy,
            next_id: 0,
            waiting: VecDeque::new(),
            report: Report::default(),
            fragmentation_sum: 0.0,
            in_use_sum: 0,
            bound_sum: 0,
        }
    }

    fn views(&self, now: u64) -> Vec<ContainerView<'_>> {
        let mut views = Vec::new();
        for (action, containers) in self.by_action.iter().enumerate() {
            for c in containers {
                views.push(ContainerView {
                    id: &c.id,
                    action: &self.profiles[action].key,
                    node: &self.nodes[c.node].name,
                    memory_mb: c.memory_mb,
                    last_used_ms: c.gc.last_used_ms,
                    marked_at: c.gc.marked_at,
                    busy: c.busy_until > now,
                });
            }
        }
        views
    }

    fn node_index(&self, name: &str) -> usize {
        self.nodes.iter().position(|n| n.name == name).unwrap()
    }

    fn remove(&mut self, id: &str) {
        for containers in &mut self.by_action {
            if let Some(index) = containers.iter().position(|c| c.id == id) {
                let container = containers.swap_remove(index);
                self.nodes[container.node].allocated_mb -= container.memory_mb;
                return;
            }
        }
        panic!("no container {id}");
    }

    /// Serves one activation at `now`; false when it has to wait.
    fn serve(&mut self, arrival: Arrival, now: u64) -> bool {
        let ends = now + arrival.duration_ms;
        let containers = &mut self.by_action[arrival.action];
        let warm = containers
            .iter_mut()
            .filter(|c| c.busy_until <= now && c.gc.marked_at.is_none())
            .min_by_key(|c| c.slot);
        if let Some(container) = warm {
            container.busy_until = ends;
            container.gc.last_used_ms = ends;
            return true;
        }
        // The cold-start path: recycle a marked container of this action, or start one.
        let memory_mb = self.profiles[arrival.action].memory_mb;
        let recycled = match self.policy {
            Policy::Naive(_) => containers.iter().find(|c| c.busy_until <= now).map(|c| c.id.clone()),
            Policy::Ours(_) => {
                let views = self.views(now);
                gc::recycle(&views, &self.nodes, &self.profiles[arrival.action].key, memory_mb)
                    .map(str::to_owned)
            }
        };
        if let Some(id) = recycled {
            self.reuse(arrival.action, &id, now, ends);
            return true;
        }
        let at_cap = self.by_action[arrival.action].len() >= MAX_PER_ACTION;
        let room = if at_cap { None } else { self.room_for(arrival.action, memory_mb, now) };
        let Some(node) = room else {
            // No new container: the last resort is a marked one (on the node being drained).
            let fallback =
                self.by_action[arrival.action].iter().find(|c| c.busy_until <= now).map(|c| c.id.clone());
            return match fallback {
                Some(id) => {
                    self.reuse(arrival.action, &id, now, ends);
                    true
                }
                None => false,
            };
        };
        let slot = (0..).find(|s| self.by_action[arrival.action].iter().all(|c| c.slot != *s)).unwrap();
        self.next_id += 1;
        let started = ends + COLD_START_MS;
        self.by_action[arrival.action].push(Container {
            id: format!("c{}", self.next_id),
            node,
            memory_mb,
            slot,
            busy_until: started,
            gc: GcState::new(started),
        });
        self.nodes[node].allocated_mb += memory_mb;
        self.report.cold_starts += 1;
        let allocated: u64 = self.nodes.iter().map(|n| n.allocated_mb).sum();
        self.report.peak_allocated_mb = self.report.peak_allocated_mb.max(allocated);
        true
    }

    /// Hands a marked free container to an activation.
    fn reuse(&mut self, action: usize, id: &str, now: u64, ends: u64) {
        let container = self.by_action[action].iter_mut().find(|c| c.id == id).unwrap();
        assert!(container.busy_until <= now && gc::unmark_on_use(&mut container.gc, now));
        container.busy_until = ends;
        container.gc.last_used_ms = ends;
        self.report.recycled += 1;
    }

    /// The node a new container of `memory_mb` goes to, freeing victims first when needed.
    fn room_for(&mut self, action: usize, memory_mb: u64, now: u64) -> Option<usize> {
        let placed = match &mut self.policy {
            Policy::Naive(round_robin) => round_robin.place(&self.nodes, memory_mb),
            Policy::Ours(_) => placement::place(&self.nodes, memory_mb),
        };
        if let Some(node) = placed.map(|n| n.name.clone()) {
            return Some(self.node_index(&node));
        }
        let (node, victims) = {
            let views = self.views(now);
            let key = &self.profiles[action].key;
            let plan = match self.policy {
                Policy::Naive(_) => {
                    placement::naive::reclaim_oldest_first(&views, &self.nodes, key, memory_mb)
                }
                Policy::Ours(_) => gc::reclaim(&views, &self.nodes, key, memory_mb, now),
            }?;
            (plan.node, plan.victims.iter().map(|id| id.to_string()).collect::<Vec<_>>())
        };
        for id in &victims {
            self.remove(id);
        }
        self.report.reclaimed += victims.len() as u64;
        let node = self.node_index(&node);
        assert!(self.nodes[node].fits(memory_mb), "reclaim made no room on {}", self.nodes[node].name);
        Some(node)
    }

    fn collect_garbage(&mut self, now: u64) {
        let (marked, swept) = {
            let views = self.views(now);
            let owned = |ids: Vec<&str>| ids.into_iter().map(str::to_owned).collect::<Vec<_>>();
            let config = match &self.policy {
                Policy::Ours(config) => *config,
                Policy::Naive(_) => GC,
            };
            let mut marked = owned(gc::mark(&views, now, &config));
            if let Policy::Ours(_) = self.policy {
                marked.extend(owned(gc::compact(&views, &self.nodes, now, &config)));
            }
            (marked, owned(gc::sweep(&views, now, &config)))
        };
        for id in &swept {
            self.remove(id);
        }
        self.report.swept += swept.len() as u64;
        for containers in &mut self.by_action {
            for c in containers.iter_mut().filter(|c| marked.contains(&c.id)) {
                gc::set_marked(&mut c.gc, now);
            }
        }
    }

    fn sample(&mut self) {
        if let Some(figure) = placement::fragmentation(&self.nodes) {
            self.fragmentation_sum += figure;
            self.in_use_sum += self.nodes.iter().filter(|n| n.allocated_mb > 0).count();
            self.bound_sum += placement::lower_bound(&self.nodes);
            self.report.samples += 1;
        }
    }

    fn run(mut self, trace: &[Arrival]) -> Report {
        let mut next = 0;
        for step in 0..DAY_MS / STEP_MS {
            let now = step * STEP_MS;
            // Waiting requests first, in arrival order, each taking whatever is free now.
            for _ in 0..self.waiting.len() {
                let Some(arrival) = self.waiting.pop_front() else { break };
                if now.saturating_sub(arrival.at_ms) > MAX_WAIT_MS {
                    self.report.refused += 1;
                } else if !self.serve(arrival, now) {
                    self.waiting.push_back(arrival);
                }
            }
            while next < trace.len() && trace[next].at_ms < now + STEP_MS {
                let arrival = trace[next];
                next += 1;
                self.report.activations += 1;
                if !self.serve(arrival, arrival.at_ms) {
                    self.waiting.push_back(arrival);
                }
            }
            if now.is_multiple_of(GC_EVERY_MS) {
                self.collect_garbage(now);
            }
            if now.is_multiple_of(SAMPLE_EVERY_MS) {
                self.sample();
            }
        }
        let samples = self.report.samples.max(1) as f64;
        self.report.fragmentation = self.fragmentation_sum / samples;
        self.report.mean_nodes_in_use = self.in_use_sum as f64 / samples;
        self.report.mean_lower_bound = self.bound_sum as f64 / samples;
        self.report
    }
}

fn day_trace() -> (Vec<Profile>, Vec<Arrival>) {
    let mut rng = Rng(0x5eed_0007);
    let (profiles, cumulative) = profiles(&mut rng);
    let trace = arrivals(&mut rng, &profiles, &cumulative);
    (profiles, trace)
}

/// One synthetic day: the actions and their arrivals, the same for every policy.
pub struct Day {
    profiles: Vec<Profile>,
    trace: Vec<Arrival>,
}

impl Day {
    /// The day of the seeded generator.
    pub fn new() -> Self {
        let (profiles, trace) = day_trace();
        Self { profiles, trace }
    }

    /// Activations over the day.
    pub fn activations(&self) -> usize {
        self.trace.len()
    }

    /// Runs the day under `policy`.
    pub fn run(&self, policy: Policy) -> Report {
        Pool::new(&self.profiles, policy).run(&self.trace)
    }
}

impl Default for Day {
    fn default() -> Self {
        Self::new()
    }
}

impl Report {
    /// One line of figures, as the test and the bench print them.
    pub fn line(&self, name: &str) -> String {
        let report = self;
        format!(
            "{name:<24} fragmentation {:.3} (nodes in use {:.2} / lower bound {:.2}, {} samples), \
             cold starts {}, recycled {}, reclaimed {}, swept {}, refused {}, peak {} MB",
            report.fragmentation,
            report.mean_nodes_in_use,
            report.mean_lower_bound,
            report.samples,
            report.cold_starts,
            report.recycled,
            report.reclaimed,
            report.swept,
            report.refused,
            report.peak_allocated_mb,
        )
    }
}
