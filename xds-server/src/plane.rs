//! The control plane: owns the container table, starts containers through a cluster manager, runs
//! `/init`, publishes each change to the data plane and answers a cold start only once the asking
//! Envoy acknowledged the new endpoint.
//!
//! ```text
//!  cold start ─► fetch code ─► reserve slot ─► cluster.start ─► POST /init ─► set ready
//!             ─► publish (version v) ─► wait for node's EDS ACK ≥ v ─► answer {id, address, slot}
//!  pool full  ─► reclaim: mark idle containers of other actions as due ─► 429 (the filter retries
//!                after its next usage reports swept them)
//!
//!  GC round   ─► mark idle containers (collector) │ usage report ─► marks, unmarks, sweeps
//!  sweep      ─► the filter retires the slot by CAS ─► DELETE ─► out of xDS ─► ACK ─► stop
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::watch;
use tracing::{debug, info, warn};
use whisk_contract::{ActionCode, ColdStartRequest, ColdStartResponse, headers, paths};

use whisk_contract::{UsageAnswer, UsageReport};

use crate::ads::{AckTracker, Published};
use crate::cluster::{ClusterError, ClusterManager, ContainerSpec, StartedContainer};
use crate::collector;
use crate::gc::{GcConfig, GcState};
use crate::metrics::{Metrics, OutcomeLabel, ReasonLabel};
use crate::placement::{self, Node};
use crate::table::{ActionKey, Container, ContainerState, Handover, Table, Usage};

/// How long `/init` is retried while the runtime is not listening yet.
const LISTEN_WAIT: Duration = Duration::from_secs(10);

/// Why a cold start failed.
#[derive(Debug, thiserror::Error)]
pub enum ColdStartError {
    #[error("could not read the action's code from the management API: {0}")]
    Code(String),
    #[error("the action was updated meanwhile (asked for revision {asked}, current is {current})")]
    StaleRevision { asked: String, current: String },
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// The runtime refused the code: the action developer's error, shown in the activation.
    #[error("{message}")]
    Init { message: String },
    #[error("the container did not become reachable: {0}")]
    Unreachable(String),
    #[error("Envoy node {node} did not acknowledge the new endpoint in time")]
    NotAcknowledged { node: String },
    /// The pool or the action is at its container limit: the caller waits for one to free up.
    #[error("at capacity: {0}")]
    AtCapacity(String),
}

impl ColdStartError {
    /// True when the action's code, not the platform, is at fault.
    pub fn is_developer_error(&self) -> bool {
        matches!(self, Self::Init { .. })
    }
}

/// The table and its published version, changed together under one lock.
#[derive(Debug, Default)]
struct TableState {
    table: Table,
    version: u64,
}

/// Settings of the control plane.
#[derive(Debug, Clone)]
pub struct PlaneConfig {
    /// Base URL of the management API (for action code).
    pub management_url: String,
    pub internal_token: String,
    /// How long a cold start waits for the node's EDS acknowledgement.
    pub ack_timeout: Duration,
    /// Containers the pool may hold in all.
    pub max_containers: usize,
    /// Containers one action revision may hold on one Envoy node.
    pub max_containers_per_action: usize,
    /// The collector's timing.
    pub gc: GcConfig,
    /// The machines containers are placed on, with their memory (allocation is derived).
    pub capacities: Vec<Node>,
    /// How long a routable container may go unnamed by its Envoy node's usage reports before it
    /// is removed and stopped ([`collector::Collected::orphans`]).
    pub orphan_timeout: Duration,
    /// Prewarmed ("stem cell") containers to keep started per runtime kind, not yet initialised.
    pub prewarm: Vec<(String, usize)>,
    /// The memory a prewarmed container is started with; it serves actions that need no more.
    pub prewarm_memory_mb: u64,
}

/// A started, uninitialised container waiting to be specialised by a cold start.
#[derive(Debug, Clone)]
pub struct Stem {
    pub id: String,
    pub address: String,
    pub memory_mb: u64,
    /// The machine it runs on, when the cluster manager says.
    pub host: Option<String>,
}

/// The control plane.
pub struct ControlPlane<C> {
    state: Mutex<TableState>,
    published: watch::Sender<Arc<Published>>,
    acks: AckTracker,
    cluster: C,
    http: reqwest::Client,
    config: PlaneConfig,
    metrics: Arc<Metrics>,
    /// The collector's clock: milliseconds since the plane was made.
    epoch: Instant,
    /// Prewarmed containers by kind.
    stems: Mutex<HashMap<String, Vec<Stem>>>,
}

impl<C: ClusterManager> ControlPlane<C> {
    pub fn new(cluster: C, config: PlaneConfig, metrics: Arc<Metrics>) -> Self {
        Self {
            state: Mutex::new(TableState::default()),
            published: watch::channel(Arc::new(Published::default())).0,
            acks: AckTracker::default(),
            cluster,
            http: reqwest::Client::new(),
            config,
            metrics,
            epoch: Instant::now(),
            stems: Mutex::new(HashMap::new()),
        }
    }

    fn stems(&self) -> MutexGuard<'_, HashMap<String, Vec<Stem>>> {
        self.stems.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A prewarmed container of `kind` with at least `memory_mb`, taken out of the stock.
    fn take_stem(&self, kind: &str, memory_mb: u64) -> Option<Stem> {
        let mut stems = self.stems();
        let stock = stems.get_mut(kind)?;
        let index = stock.iter().position(|stem| stem.memory_mb >= memory_mb)?;
        let stem = stock.swap_remove(index);
        self.metrics.stems_ready.dec();
        Some(stem)
    }

    /// The machines containers are placed on: the cluster manager's when it sees them (Kubernetes
    /// nodes), else the configured pool.
    fn capacities(&self) -> Vec<Node> {
        self.cluster.machines().unwrap_or_else(|| self.config.capacities.clone())
    }

    /// The machines less what the prewarmed containers hold (they are not in the table), except
    /// stem `usable`: the one a cold start will turn into its container.
    fn capacities_less_stems(&self, usable: Option<&str>) -> Vec<Node> {
        let stems = self.stems();
        let held = stems
            .values()
            .flatten()
            .filter(|stem| Some(stem.id.as_str()) != usable)
            .map(|stem| (stem.host.as_deref(), stem.memory_mb));
        placement::less_held(&self.capacities(), held)
    }

    /// The prewarmed container a cold start of `kind` needing `memory_mb` would use.
    fn usable_stem(&self, kind: &str, memory_mb: u64) -> Option<String> {
        self.stems()
            .get(kind)
            .and_then(|stock| stock.iter().find(|stem| stem.memory_mb >= memory_mb))
            .map(|stem| stem.id.clone())
    }

    /// Starts prewarmed containers until each configured kind has its count (the refill runs in
    /// the background: a cold start that used one does not wait for its replacement).
    pub async fn refill_stems(&self) {
        for (kind, wanted) in &self.config.prewarm {
            while self.stems().get(kind).map_or(0, Vec::len) < *wanted {
                // Stems count against the pool: none is started where it would not fit, so a full
                // pool is never over-committed by its prewarmed stock.
                let fits = {
                    let state = self.lock();
                    let capacities = self.capacities_less_stems(None);
                    collector::place(&state.table, &capacities, self.config.prewarm_memory_mb).is_some()
                };
                if !fits {
                    debug!(kind, "no room for a prewarmed container");
                    return;
                }
                let spec = ContainerSpec {
                    id: uuid::Uuid::new_v4().simple().to_string(),
                    action: ActionKey {
                        namespace: String::new(),
                        package: None,
                        name: String::new(),
                        revision: String::new(),
                    },
                    kind: kind.clone(),
                    memory_mb: self.config.prewarm_memory_mb,
                    node: String::new(),
                    slot: 0,
                    image: None,
                    placed_on: None,
                };
                match self.prewarm(&spec).await {
                    Ok(started) => {
                        debug!(container = %spec.id, kind, address = %started.address, "prewarmed");
                        let stem = Stem {
                            id: spec.id,
                            address: started.address,
                            memory_mb: spec.memory_mb,
                            host: started.host,
                        };
                        self.stems().entry(kind.clone()).or_default().push(stem);
                        self.metrics.stems_ready.inc();
                    }
                    Err(error) => {
                        warn!(kind, %error, "could not prewarm a container; retrying later");
                        let _ = self.cluster.stop(&spec.id).await;
                        return;
                    }
                }
            }
        }
    }

    /// Starts a container and waits until its runtime accepts connections.
    async fn prewarm(&self, spec: &ContainerSpec) -> Result<StartedContainer, ColdStartError> {
        let started = self.cluster.start(spec).await?;
        let deadline = Instant::now() + LISTEN_WAIT;
        loop {
            match tokio::net::TcpStream::connect(&started.address).await {
                Ok(_) => return Ok(started),
                Err(error) if Instant::now() > deadline => {
                    return Err(ColdStartError::Unreachable(error.to_string()));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<Published>> {
        self.published.subscribe()
    }

    pub fn acks(&self) -> AckTracker {
        self.acks.clone()
    }

    fn lock(&self) -> MutexGuard<'_, TableState> {
        // A panic while holding the lock cannot leave the table half-changed (every mutation is a
        // single call), so a poisoned lock is still consistent.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Publishes the table as a new version; call with the lock held so versions follow changes.
    fn publish(&self, state: &mut TableState) -> u64 {
        state.version += 1;
        self.metrics.containers_ready.set(state.table.count_in(ContainerState::Ready) as i64);
        self.metrics.containers_starting.set(state.table.count_in(ContainerState::Starting) as i64);
        let fragmentation = collector::fragmentation(&state.table, &self.capacities());
        self.metrics.fragmentation.set(fragmentation.unwrap_or(0.0));
        let published = Published { version: state.version, table: state.table.clone() };
        self.published.send_replace(Arc::new(published));
        state.version
    }

    /// Starts, initialises and publishes a container for the request's action revision.
    pub async fn cold_start(&self, request: ColdStartRequest) -> Result<ColdStartResponse, ColdStartError> {
        let started = Instant::now();
        let outcome = self.try_cold_start(&request).await;
        let label = match &outcome {
            Ok(response) if response.init_ms.is_none() => "handed_over",
            Ok(_) => "started",
            Err(ColdStartError::AtCapacity(_)) => "at_capacity",
            Err(error) if error.is_developer_error() => "init_failed",
            Err(_) => "failed",
        };
        self.metrics.cold_starts.get_or_create(&OutcomeLabel { outcome: label }).inc();
        match &outcome {
            Ok(response) => info!(
                container = %response.container_id, action = %request.name, node = %request.node_id,
                elapsed_ms = started.elapsed().as_millis() as u64, init_ms = ?response.init_ms, "cold start"
            ),
            Err(error @ ColdStartError::AtCapacity(_)) => {
                debug!(action = %request.name, node = %request.node_id, %error, "cold start refused")
            }
            Err(error) => warn!(action = %request.name, node = %request.node_id, %error, "cold start failed"),
        }
        outcome
    }

    async fn try_cold_start(&self, request: &ColdStartRequest) -> Result<ColdStartResponse, ColdStartError> {
        let code = self.fetch_code(request).await?;
        if code.revision != request.revision {
            return Err(ColdStartError::StaleRevision {
                asked: request.revision.clone(),
                current: code.revision,
            });
        }
        let action = ActionKey {
            namespace: request.namespace.clone(),
            package: request.package.clone(),
            name: request.name.clone(),
            revision: request.revision.clone(),
        };
        if let Some(moved) = self.take_moved(&action, &request.node_id).await? {
            return Ok(moved);
        }
        let (id, slot, stem, placed_on) = {
            let now = self.now_ms();
            let mut state = self.lock();
            let obsolete = collector::retire_old_revisions(&mut state.table, &action, &request.node_id, now);
            if !obsolete.is_empty() {
                self.metrics
                    .marks
                    .get_or_create(&ReasonLabel { reason: "revision" })
                    .inc_by(obsolete.len() as u64);
                info!(action = %action, containers = ?obsolete, "retiring the containers of older revisions");
            }
            // A prewarmed container runs its kind's runtime image, so it cannot serve an action that
            // names its own image; the same rule decides which stem is counted as usable below and
            // which one is taken.
            let stem_serves = code.image.is_none();
            let usable = stem_serves.then(|| self.usable_stem(&request.kind, request.memory_mb)).flatten();
            let capacities = self.capacities_less_stems(usable.as_deref());
            let Some(host) = collector::place(&state.table, &capacities, request.memory_mb) else {
                if let Some(refusal) = self.hand_over(&mut state, &action, &request.node_id) {
                    return Err(refusal);
                }
                return Err(self.reclaim(&mut state, &capacities, &action, request.memory_mb, now));
            };
            if state.table.len() >= self.config.max_containers {
                if let Some(refusal) = self.hand_over(&mut state, &action, &request.node_id) {
                    return Err(refusal);
                }
                return Err(ColdStartError::AtCapacity(format!(
                    "{} containers in the pool",
                    state.table.len()
                )));
            }
            // Per node: containers move between Envoys only when the pool is full, so a cap shared
            // by all nodes would let one node take every container of an action and starve the
            // others.
            let of_action = state.table.count_of_on(&action, &request.node_id);
            if of_action >= self.config.max_containers_per_action {
                return Err(ColdStartError::AtCapacity(format!(
                    "{of_action} containers of {action} on {}",
                    request.node_id
                )));
            }
            // A prewarmed container of the kind becomes this one: only `/init` is left to do.
            let stem = stem_serves.then(|| self.take_stem(&request.kind, request.memory_mb)).flatten();
            let id =
                stem.as_ref().map_or_else(|| uuid::Uuid::new_v4().simple().to_string(), |s| s.id.clone());
            let slot = state.table.reserve(
                id.clone(),
                action.clone(),
                request.kind.clone(),
                request.node_id.clone(),
            );
            if let Some(container) = state.table.get_mut(&id) {
                container.host = host.clone();
                container.memory_mb = request.memory_mb;
                container.usage.gc = GcState::new(now);
            }
            self.publish(&mut state);
            (id, slot, stem, host)
        };
        let spec = ContainerSpec {
            id: id.clone(),
            action,
            kind: request.kind.clone(),
            memory_mb: request.memory_mb,
            node: request.node_id.clone(),
            slot,
            image: code.image.clone(),
            placed_on: Some(placed_on),
        };
        match self.start_and_init(&spec, &code, stem).await {
            Ok((StartedContainer { address, host }, init_ms)) => {
                let version = {
                    let mut state = self.lock();
                    state.table.set_ready(&id, address.clone());
                    let now = self.now_ms();
                    if let Some(container) = state.table.get_mut(&id) {
                        container.usage.last_named = Some(now);
                        // Where it really runs (the scheduler may differ from placement's choice).
                        if let Some(host) = host {
                            container.host = host;
                        }
                    }
                    self.publish(&mut state)
                };
                let published = Instant::now();
                let acknowledged =
                    self.acks.wait_for(&request.node_id, version, self.config.ack_timeout).await;
                if acknowledged {
                    self.metrics.publish_to_ack.observe(published.elapsed().as_secs_f64());
                }
                if !acknowledged {
                    self.discard(&id).await;
                    return Err(ColdStartError::NotAcknowledged { node: request.node_id.clone() });
                }
                Ok(ColdStartResponse { container_id: id, address, slot, init_ms: Some(init_ms) })
            }
            Err(error) => {
                self.discard(&id).await;
                Err(error)
            }
        }
    }

    /// A container of the action handed over to this node, once this node applied the move: the
    /// cold start's answer, with no process start and no `/init` (it is warm).
    async fn take_moved(
        &self,
        action: &ActionKey,
        node: &str,
    ) -> Result<Option<ColdStartResponse>, ColdStartError> {
        let (moved, version) = {
            let mut state = self.lock();
            (collector::take_moved(&mut state.table, action, node), state.version)
        };
        let Some((id, address, slot)) = moved else { return Ok(None) };
        if !self.acks.wait_for(node, version, self.config.ack_timeout).await {
            if let Some(container) = self.lock().table.get_mut(&id) {
                container.handover = Some(Handover::Moved);
            }
            return Err(ColdStartError::NotAcknowledged { node: node.to_owned() });
        }
        self.metrics.handovers.inc();
        info!(container = %id, action = %action, node, slot, "handed-over container taken");
        Ok(Some(ColdStartResponse { container_id: id, address, slot, init_ms: None }))
    }

    /// The pool is full: another node's idle container of the same action moves here rather than
    /// other actions' containers being freed. The refusal that tells the caller to ask again.
    fn hand_over(&self, state: &mut TableState, action: &ActionKey, node: &str) -> Option<ColdStartError> {
        let id = collector::start_handover(&mut state.table, action, node)?;
        debug!(container = %id, action = %action, to = node, "pool full: handing over an idle container");
        Some(ColdStartError::AtCapacity(format!("pool full; container {id} is being handed over to {node}")))
    }

    /// No node has room: marks idle containers of other actions as due, so the owning nodes sweep
    /// them at their next reports; the caller is told to wait (the filter asks again shortly).
    fn reclaim(
        &self,
        state: &mut TableState,
        capacities: &[Node],
        action: &ActionKey,
        memory_mb: u64,
        now: u64,
    ) -> ColdStartError {
        let marked_before = state.table.iter().filter(|c| c.usage.gc.marked_at.is_some()).count();
        match collector::reclaim(&mut state.table, capacities, action, memory_mb, now) {
            Some(victims) => {
                let marked_after = state.table.iter().filter(|c| c.usage.gc.marked_at.is_some()).count();
                let newly = marked_after.saturating_sub(marked_before) as u64;
                if newly > 0 {
                    self.metrics.marks.get_or_create(&ReasonLabel { reason: "reclaim" }).inc_by(newly);
                    info!(action = %action, victims = ?victims, "pool full: reclaiming idle containers");
                }
                self.metrics.containers_marked.set(marked_after as i64);
                ColdStartError::AtCapacity(format!(
                    "no node has {memory_mb} MB free; freeing {} idle containers",
                    victims.len()
                ))
            }
            None => {
                ColdStartError::AtCapacity(format!("no node has {memory_mb} MB free and none can be freed"))
            }
        }
    }

    /// One GC round: marks containers idle for the idle timeout (and compaction victims); the marks
    /// reach the data plane in the answers to its usage reports.
    pub async fn collect(&self) {
        let now = self.now_ms();
        let capacities = self.capacities();
        let (collected, marked, fragmentation) = {
            let mut state = self.lock();
            let collected = collector::collect(
                &mut state.table,
                &capacities,
                now,
                &self.config.gc,
                self.config.orphan_timeout.as_millis() as u64,
            );
            let marked = state.table.iter().filter(|c| c.usage.gc.marked_at.is_some()).count();
            let fragmentation = collector::fragmentation(&state.table, &capacities).unwrap_or(0.0);
            (collected, marked, fragmentation)
        };
        for (reason, ids) in [("idle", &collected.marked), ("compaction", &collected.compacted)] {
            if !ids.is_empty() {
                self.metrics.marks.get_or_create(&ReasonLabel { reason }).inc_by(ids.len() as u64);
                info!(reason, containers = ?ids, "marked");
            }
        }
        self.metrics.containers_marked.set(marked as i64);
        self.metrics.fragmentation.set(fragmentation);
        for id in collected.orphans {
            warn!(container = %id, "container named by no Envoy node's usage report in time; stopping it");
            self.metrics.containers_orphaned.inc();
            self.discard(&id).await;
        }
    }

    /// Rebuilds the table from the containers a previous run left running (restart recovery) and
    /// publishes it; call before Envoy connects. The number adopted.
    pub async fn adopt(&self) -> Result<usize, ClusterError> {
        let found = self.cluster.adopt().await?;
        let now = self.now_ms();
        // Where the cluster manager does not say (local processes), the one configured machine.
        let default_host = self.config.capacities.first().map(|node| node.name.clone()).unwrap_or_default();
        let (count, refused) = {
            let mut state = self.lock();
            let containers = found
                .into_iter()
                .map(|adopted| {
                    let spec = adopted.spec;
                    Container {
                        id: spec.id,
                        action: spec.action,
                        kind: spec.kind,
                        slot: spec.slot,
                        node: spec.node,
                        address: Some(adopted.address),
                        state: ContainerState::Ready,
                        host: adopted.host.unwrap_or_else(|| default_host.clone()),
                        memory_mb: spec.memory_mb,
                        usage: Usage {
                            gc: GcState::new(now),
                            unclaimed_since: Some(now),
                            last_named: Some(now),
                            ..Usage::default()
                        },
                        handover: None,
                    }
                })
                .collect();
            let refused = state.table.insert_adopted(containers);
            self.publish(&mut state);
            (state.table.len(), refused)
        };
        for id in refused {
            warn!(container = %id, "adopted container clashes with another's id or slot; stopping it");
            if let Err(error) = self.cluster.stop(&id).await {
                warn!(container = %id, %error, "could not stop a clashing container");
            }
        }
        Ok(count)
    }

    /// A usage report of one worker of one Envoy node: updates the collector's view, answers its
    /// marks, unmarks and sweeps.
    pub fn usage(&self, report: &UsageReport) -> UsageAnswer {
        let now = self.now_ms();
        let outcome = collector::apply_report(&mut self.lock().table, report, now, &self.config.gc);
        if outcome.unmarked > 0 {
            self.metrics.unmarks.inc_by(outcome.unmarked as u64);
        }
        if !outcome.answer.sweep.is_empty() {
            debug!(node = %report.node_id, containers = ?outcome.answer.sweep, "sweep due");
        }
        outcome.answer
    }

    /// Keeps the cluster manager's view of machines current, for the server's life.
    pub async fn follow_machines(&self) {
        self.cluster.watch_machines().await;
    }

    /// Follows the cluster manager's reports of containers that stopped on their own, for the
    /// server's life.
    pub async fn follow_lost(&self) {
        let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel::<String>();
        let handle = async {
            while let Some(id) = receiver.recv().await {
                self.lost(&id).await;
            }
        };
        tokio::join!(self.cluster.watch_lost(sender), handle);
    }

    /// A ready container that stopped on its own: out of the table and xDS at once, so no new
    /// activation is sent to it (the ones running in it fail with their connection, and the filter
    /// retires its slot once the collector calls it unknown); then what is left of it is removed.
    /// A container still starting is its cold start's to fail; an unknown one was stopped by us.
    async fn lost(&self, id: &str) {
        self.stems().values_mut().for_each(|stems| stems.retain(|stem| stem.id != id));
        let removed = {
            let mut state = self.lock();
            if state.table.get(id).is_none_or(|container| container.state != ContainerState::Ready) {
                return;
            }
            let removed = state.table.remove(id);
            self.publish(&mut state);
            removed
        };
        let Some(container) = removed else { return };
        self.metrics.containers_lost.inc();
        warn!(container = id, action = %container.action, node = %container.node, "container lost; out of xDS");
        if let Err(error) = self.cluster.stop(id).await {
            debug!(container = id, %error, "nothing left to stop of a lost container");
        }
    }

    /// Removes a container from the table (and so from xDS) first, then stops it.
    async fn discard(&self, id: &str) {
        {
            let mut state = self.lock();
            if state.table.remove(id).is_some() {
                self.publish(&mut state);
            }
        }
        if let Err(error) = self.cluster.stop(id).await {
            warn!(container = id, %error, "could not stop a discarded container");
        }
    }

    async fn start_and_init(
        &self,
        spec: &ContainerSpec,
        code: &ActionCode,
        stem: Option<Stem>,
    ) -> Result<(StartedContainer, u64), ColdStartError> {
        let started = match stem {
            Some(stem) => {
                self.metrics.prewarm_used.inc();
                if let Err(error) = self.cluster.relabel(spec).await {
                    // It still serves; only a restart would not adopt it.
                    warn!(container = %spec.id, %error, "a specialised prewarmed container keeps its old labels");
                }
                StartedContainer { address: stem.address, host: stem.host }
            }
            None => self.cluster.start(spec).await?,
        };
        let body = json!({"value": {
            "name": code.name,
            "main": code.main.as_deref().unwrap_or("main"),
            "code": code.code,
            "binary": code.binary,
            "env": {},
        }});
        let url = format!("http://{}/init", started.address);
        let deadline = Instant::now() + LISTEN_WAIT;
        let mut pause = Duration::from_millis(2);
        loop {
            let attempt = Instant::now();
            match self.http.post(&url).json(&body).send().await {
                Ok(response) => {
                    let init_ms = attempt.elapsed().as_millis() as u64;
                    if response.status().is_success() {
                        return Ok((started, init_ms));
                    }
                    let text = response.text().await.unwrap_or_default();
                    return Err(ColdStartError::Init { message: init_error_message(&text) });
                }
                // /init may be retried until the runtime listens (the protocol allows it).
                Err(error) if error.is_connect() && Instant::now() < deadline => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(50));
                }
                Err(error) => return Err(ColdStartError::Unreachable(error.to_string())),
            }
        }
    }

    async fn fetch_code(&self, request: &ColdStartRequest) -> Result<ActionCode, ColdStartError> {
        let path = match &request.package {
            Some(package) => format!("{}/{}/{}", request.namespace, package, request.name),
            None => format!("{}/{}", request.namespace, request.name),
        };
        let url = format!("{}{}/{}", self.config.management_url, paths::ACTION_CODE, path);
        let response = self
            .http
            .get(url)
            .header(headers::INTERNAL_TOKEN, &self.config.internal_token)
            .send()
            .await
            .map_err(|error| ColdStartError::Code(error.to_string()))?;
        if !response.status().is_success() {
            return Err(ColdStartError::Code(format!("status {}", response.status())));
        }
        response.json().await.map_err(|error| ColdStartError::Code(error.to_string()))
    }

    /// The container table as operators see it (`GET /v1/containers`).
    pub fn containers(&self) -> Vec<serde_json::Value> {
        let state = self.lock();
        state
            .table
            .iter()
            .map(|c| {
                json!({
                    "id": c.id,
                    "node": c.node,
                    "action": c.action.to_string(),
                    "kind": c.kind,
                    "slot": c.slot,
                    "address": c.address,
                    "state": format!("{:?}", c.state).to_lowercase(),
                    "host": c.host,
                    "memory_mb": c.memory_mb,
                    "busy": c.usage.busy,
                    "uses": c.usage.uses_seen,
                    "marked": c.usage.gc.marked_at.is_some(),
                    "mark_confirmed": c.usage.mark_confirmed,
                })
            })
            .collect()
    }

    /// Retires a container the data plane will not use again: out of the table (and so out of
    /// xDS) now, stopped after `grace` so that an activation still running in it can finish.
    /// False when the id is unknown.
    pub fn retire(self: &Arc<Self>, id: &str, grace: Duration, swept: bool) -> bool {
        if swept && self.finish_handover(id) {
            return true;
        }
        let (removed, version) = {
            let mut state = self.lock();
            let Some(removed) = state.table.remove(id) else {
                return false;
            };
            let version = self.publish(&mut state);
            let marked = state.table.iter().filter(|c| c.usage.gc.marked_at.is_some()).count();
            self.metrics.containers_marked.set(marked as i64);
            (removed, version)
        };
        // A marked container the filter retired is the collector's sweep; any other is the data
        // plane giving up on it (timeout, lost client, refused run).
        let swept = removed.usage.gc.marked_at.is_some();
        if swept {
            self.metrics.sweeps.inc();
        } else {
            self.metrics.containers_retired.inc();
        }
        info!(container = id, swept, grace_ms = grace.as_millis() as u64, "container retired");
        let (plane, id) = (self.clone(), id.to_owned());
        tokio::spawn(async move {
            // Out of xDS before it is stopped: wait for its node to apply the removal (bounded).
            plane.acks.wait_for(&removed.node, version, plane.config.ack_timeout).await;
            tokio::time::sleep(grace).await;
            if let Err(error) = plane.cluster.stop(&id).await {
                warn!(container = id, %error, "could not stop a retired container");
            }
        });
        true
    }

    /// A container its node swept (free, and never to be claimed there again) that was being
    /// handed over: published on its new node instead of stopped, its labels rewritten for restart
    /// recovery. False when it was not being handed over.
    fn finish_handover(self: &Arc<Self>, id: &str) -> bool {
        let now = self.now_ms();
        let spec = {
            let mut state = self.lock();
            let Some((node, slot)) = collector::complete_handover(&mut state.table, id, now) else {
                return false;
            };
            self.publish(&mut state);
            let Some(container) = state.table.get(id) else { return true };
            info!(container = id, action = %container.action, to = %node, slot, "container handed over");
            ContainerSpec {
                id: id.to_owned(),
                action: container.action.clone(),
                kind: container.kind.clone(),
                memory_mb: container.memory_mb,
                node,
                slot,
                // Relabelling does not touch the image.
                image: None,
                placed_on: None,
            }
        };
        let plane = self.clone();
        tokio::spawn(async move {
            if let Err(error) = plane.cluster.relabel(&spec).await {
                warn!(container = %spec.id, %error, "could not relabel a handed-over container");
            }
        });
        true
    }

    /// Stops every container (server shutdown): out of xDS first, then the processes.
    pub async fn shutdown(&self) {
        {
            let mut state = self.lock();
            for id in state.table.ids() {
                state.table.remove(&id);
            }
            self.publish(&mut state);
        }
        self.cluster.stop_all().await;
    }
}

/// The runtime's `{"error": …}` as text for the activation record.
fn init_error_message(body: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(body) {
        Ok(serde_json::Value::Object(fields)) => match fields.get("error") {
            Some(serde_json::Value::String(text)) => text.clone(),
            Some(other) => other.to_string(),
            None => body.to_owned(),
        },
        _ if body.trim().is_empty() => "The action failed to initialise.".to_owned(),
        _ => body.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::Adopted;

    /// A cluster manager that sees two machines and left four containers running on them.
    struct TwoMachines;

    impl ClusterManager for TwoMachines {
        async fn start(&self, spec: &ContainerSpec) -> Result<StartedContainer, ClusterError> {
            Err(ClusterError::Unknown(spec.id.clone()))
        }
        async fn stop(&self, _id: &str) -> Result<(), ClusterError> {
            Ok(())
        }
        async fn stop_all(&self) {}
        async fn adopt(&self) -> Result<Vec<Adopted>, ClusterError> {
            let adopted = |index: u32, host: &str| Adopted {
                spec: ContainerSpec {
                    id: format!("c{index}"),
                    action: ActionKey {
                        namespace: "guest".into(),
                        package: None,
                        name: "hello".into(),
                        revision: "1".into(),
                    },
                    kind: "nodejs:20".into(),
                    memory_mb: 256,
                    node: "envoy-1".into(),
                    slot: index,
                    image: None,
                    placed_on: None,
                },
                address: format!("10.0.0.{index}:8080"),
                host: Some(host.into()),
            };
            Ok(vec![adopted(1, "a"), adopted(2, "a"), adopted(3, "a"), adopted(4, "b")])
        }
        async fn relabel(&self, _spec: &ContainerSpec) -> Result<(), ClusterError> {
            Ok(())
        }
        async fn watch_lost(&self, _lost: tokio::sync::mpsc::UnboundedSender<String>) {}
        fn machines(&self) -> Option<Vec<Node>> {
            Some(vec![Node::new("a", 1024), Node::new("b", 1024)])
        }
    }

    fn config() -> PlaneConfig {
        PlaneConfig {
            management_url: "http://127.0.0.1:9".into(),
            internal_token: "t".into(),
            ack_timeout: Duration::from_secs(1),
            max_containers: 64,
            max_containers_per_action: 16,
            gc: GcConfig::default(),
            capacities: vec![Node::new("cluster", 16_384)],
            orphan_timeout: Duration::from_secs(60),
            prewarm: Vec::new(),
            prewarm_memory_mb: 256,
        }
    }

    #[tokio::test]
    async fn the_cluster_managers_machines_and_hosts_replace_the_configured_pool() {
        let metrics = Arc::new(Metrics::default());
        let plane = ControlPlane::new(TwoMachines, config(), metrics.clone());
        assert_eq!(plane.adopt().await.unwrap(), 4);
        let published = plane.subscribe().borrow().clone();
        let mut hosts: Vec<(&str, &str)> =
            published.table.iter().map(|c| (c.id.as_str(), c.host.as_str())).collect();
        hosts.sort_unstable();
        assert_eq!(hosts, [("c1", "a"), ("c2", "a"), ("c3", "a"), ("c4", "b")]);
        // 1,024 MB in use fits one machine of 1,024 MB, and two are in use.
        assert_eq!(metrics.fragmentation.get(), 2.0);
        let free = collector::nodes(&published.table, &plane.capacities());
        assert_eq!(free.iter().map(Node::free_mb).collect::<Vec<_>>(), [256, 768]);
    }

    #[tokio::test]
    async fn compaction_drains_the_emptier_of_the_cluster_managers_machines() {
        let mut config = config();
        // Nothing is idle long enough to be marked for idleness; compaction alone acts.
        config.gc = GcConfig { idle_timeout_ms: 3_600_000, grace_ms: 30_000, compact_idle_ms: 0 };
        let metrics = Arc::new(Metrics::default());
        let plane = ControlPlane::new(TwoMachines, config, metrics);
        plane.adopt().await.unwrap();
        // Envoy names its containers (free), so the collector counts them as in use by it.
        let report = UsageReport {
            node_id: "envoy-1".into(),
            containers: (1..=4)
                .map(|index| whisk_contract::ContainerUse {
                    id: format!("c{index}"),
                    state: whisk_contract::SlotUse::Free,
                    uses: 0,
                })
                .collect(),
        };
        plane.usage(&report);
        plane.collect().await;
        // Marks travel in the answers to usage reports, not by publishing: read the table itself.
        let containers = plane.containers();
        let mut marked: Vec<&str> =
            containers.iter().filter(|c| c["marked"] == true).filter_map(|c| c["id"].as_str()).collect();
        marked.sort_unstable();
        // Machine b holds one of the four, and machine a has room for it: b is drained.
        assert_eq!(marked, ["c4"]);
    }

    #[test]
    fn init_errors_surface_the_runtime_message() {
        assert_eq!(init_error_message(r#"{"error":"SyntaxError: x"}"#), "SyntaxError: x");
        assert_eq!(init_error_message(r#"{"error":{"a":1}}"#), r#"{"a":1}"#);
        assert_eq!(init_error_message(""), "The action failed to initialise.");
        assert_eq!(init_error_message("boom"), "boom");
    }
}
