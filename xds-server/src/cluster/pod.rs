//! The pure core of the Kubernetes cluster manager: what pod a container becomes, how its identity
//! is written onto the pod and read back, and what a pod's status says about it. No I/O; the
//! actuator in [`super::kube`] only sends what these functions build.
//!
//! ```text
//!  ContainerSpec ──pod_for──► Pod { labels (sanitised, for selectors),
//!        ▲                          annotations (exact, for recovery), spec }
//!        └──spec_from_meta──────────┘
//!  Pod status ──readiness──► Waiting(what) | Ready(ip) | Failed(why)      Pod ──host──► its node
//!  Node ──machine──► placement::Node { allocatable memory; none while it takes no new pods }
//! ```
//!
//! Label values must match `(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?` and be at most 63
//! characters; OpenWhisk names may hold `@`, spaces and more. Labels therefore carry a sanitised
//! value (unchanged when already valid, otherwise a readable prefix plus a hash of the original, so
//! distinct names stay distinct) and annotations carry the exact value.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::str::FromStr;

use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, Container, ContainerPort, Node, NodeAffinity, NodeSelectorRequirement,
    NodeSelectorTerm, Pod, PodSpec, PreferredSchedulingTerm, ResourceRequirements, SeccompProfile,
    SecurityContext,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::{ClusterError, ContainerSpec};
use crate::placement;
use crate::table::ActionKey;

/// The port every OpenWhisk runtime image listens on.
pub const RUNTIME_PORT: u16 = 8080;
/// Name of the runtime container inside an action pod.
pub const CONTAINER_NAME: &str = "runtime";
/// Every pod this server creates carries this label; `stop_all` and recovery select on it.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "whisk-xds-server");
/// Names the pods as action pods (the NetworkPolicy selects on it).
pub const APP_NAME: (&str, &str) = ("app.kubernetes.io/name", "whisk-action");

/// Keys of the identity, used both as label keys (sanitised values) and as annotation keys (exact).
pub mod keys {
    pub const CONTAINER_ID: &str = "whisk/container-id";
    pub const NAMESPACE: &str = "whisk/namespace";
    pub const PACKAGE: &str = "whisk/package";
    pub const ACTION: &str = "whisk/action";
    pub const REVISION: &str = "whisk/revision";
    pub const KIND: &str = "whisk/kind";
    /// The Envoy node that routes to the pod.
    pub const NODE: &str = "whisk/envoy-node";
    /// Annotation only.
    pub const MEMORY_MB: &str = "whisk/memory-mb";
    /// Annotation only: the filter's slot on that node.
    pub const SLOT: &str = "whisk/slot";
    /// Annotation only: the image a blackbox action named.
    pub const IMAGE: &str = "whisk/image";
    /// Label only: the control server (`--owner`) whose pod it is.
    pub const OWNER: &str = "whisk/owner";
}

const MAX_LABEL_VALUE: usize = 63;
const MAX_DNS_LABEL: usize = 63;
const POD_NAME_PREFIX: &str = "whisk-";
/// Eight hex digits of FNV-1a.
const HASH_LEN: usize = 8;

/// A label value Kubernetes accepts for `value`: `value` itself when it is valid, otherwise its
/// allowed characters (others become `_`, trimmed to start and end alphanumeric, cut to fit)
/// followed by a hash of the original. Pure, deterministic across releases, idempotent.
pub fn label_value(value: &str) -> String {
    if is_label_value(value) {
        return value.to_owned();
    }
    let mapped: String = value.chars().map(|c| if is_label_char(c) { c } else { '_' }).collect();
    squeeze(&mapped, value, MAX_LABEL_VALUE)
}

/// True when Kubernetes accepts `value` as a label value.
pub fn is_label_value(value: &str) -> bool {
    value.is_empty()
        || (value.len() <= MAX_LABEL_VALUE
            && value.chars().all(is_label_char)
            && value.starts_with(|c: char| c.is_ascii_alphanumeric())
            && value.ends_with(|c: char| c.is_ascii_alphanumeric()))
}

fn is_label_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')
}

/// The pod of container `id`: `whisk-<id>` when `id` is a DNS label already (the control plane's
/// ids are hex uuids), otherwise a sanitised prefix and a hash. One id, one name: a second create
/// of the same id meets a 409.
pub fn pod_name(id: &str) -> String {
    let room = MAX_DNS_LABEL - POD_NAME_PREFIX.len();
    let plain = id.len() <= room
        && !id.is_empty()
        && id.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !id.starts_with('-')
        && !id.ends_with('-');
    if plain {
        return format!("{POD_NAME_PREFIX}{id}");
    }
    let mapped: String =
        id.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect();
    format!("{POD_NAME_PREFIX}{}", squeeze(&mapped, id, room))
}

/// `mapped` trimmed to alphanumeric ends and cut so that `-<hash of original>` fits in `max`.
fn squeeze(mapped: &str, original: &str, max: usize) -> String {
    let hash = format!("{:08x}", fnv1a(original.as_bytes()));
    let trimmed = mapped.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    // `mapped` is ASCII (every other character was replaced), so byte and char counts agree.
    let head = &trimmed[..trimmed.len().min(max - HASH_LEN - 1)];
    let head = head.trim_end_matches(|c: char| !c.is_ascii_alphanumeric());
    if head.is_empty() { hash } else { format!("{head}-{hash}") }
}

/// 32-bit FNV-1a: tiny, and stable across Rust releases (unlike `DefaultHasher`).
fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5_u32, |hash, byte| (hash ^ u32::from(*byte)).wrapping_mul(0x0100_0193))
}

/// One entry of the kind → image table, parsed from `kind=image`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeImage {
    pub kind: String,
    pub image: String,
}

impl FromStr for RuntimeImage {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.split_once('=') {
            Some((kind, image)) if !kind.trim().is_empty() && !image.trim().is_empty() => {
                Ok(Self { kind: kind.trim().to_owned(), image: image.trim().to_owned() })
            }
            _ => Err(format!("expected kind=image (e.g. nodejs=openwhisk/action-nodejs-v20), got {text:?}")),
        }
    }
}

/// Which image runs which action kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuntimeImages {
    by_kind: BTreeMap<String, String>,
}

impl RuntimeImages {
    pub fn new(entries: impl IntoIterator<Item = RuntimeImage>) -> Self {
        Self { by_kind: entries.into_iter().map(|entry| (entry.kind, entry.image)).collect() }
    }

    pub fn is_empty(&self) -> bool {
        self.by_kind.is_empty()
    }

    /// The image of `kind`: an exact entry (`nodejs:20`) first, then its family (`nodejs`).
    pub fn image_for(&self, kind: &str) -> Option<&str> {
        self.by_kind
            .get(kind)
            .or_else(|| kind.split_once(':').and_then(|(family, _)| self.by_kind.get(family)))
            .map(String::as_str)
    }
}

/// What every action pod shares.
#[derive(Debug, Clone)]
pub struct PodConfig {
    /// Namespace the action pods run in.
    pub namespace: String,
    pub images: RuntimeImages,
    /// Grace period on deletion (and in the pod spec), seconds.
    pub grace_period_seconds: u32,
    /// A non-default scheduler (e.g. a `MostAllocated` profile, see docs/decisions/0006).
    pub scheduler_name: Option<String>,
    /// The control server (`--owner`) the pods belong to: it adopts, watches and deletes only its
    /// own, so that two platforms can share an actions namespace.
    pub owner: String,
}

impl PodConfig {
    /// The label selector of this server's pods.
    pub fn selector(&self) -> String {
        format!("{}={},{}={}", MANAGED_BY.0, MANAGED_BY.1, keys::OWNER, label_value(&self.owner))
    }
}

impl PodConfig {
    #[cfg(test)]
    pub fn test() -> Self {
        Self {
            namespace: "whisk-actions".into(),
            images: RuntimeImages::new([
                RuntimeImage { kind: "nodejs".into(), image: "openwhisk/action-nodejs-v20".into() },
                RuntimeImage { kind: "python:3.11".into(), image: "openwhisk/action-python-v3.11".into() },
            ]),
            grace_period_seconds: 1,
            scheduler_name: None,
            owner: "test-owner".into(),
        }
    }
}

/// The pod that runs container `spec`.
pub fn pod_for(spec: &ContainerSpec, config: &PodConfig) -> Result<Pod, ClusterError> {
    // A blackbox action runs the image it names; every other kind its runtime's.
    let image = match &spec.image {
        Some(image) => image.as_str(),
        None => config
            .images
            .image_for(&spec.kind)
            .ok_or_else(|| ClusterError::NoImage { id: spec.id.clone(), kind: spec.kind.clone() })?,
    };
    let memory = BTreeMap::from([("memory".to_owned(), Quantity(format!("{}Mi", spec.memory_mb)))]);
    Ok(Pod {
        metadata: ObjectMeta {
            name: Some(pod_name(&spec.id)),
            namespace: Some(config.namespace.clone()),
            labels: Some({
                let mut labels = labels(spec);
                labels.insert(keys::OWNER.into(), label_value(&config.owner));
                labels
            }),
            annotations: Some(annotations(spec)),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: CONTAINER_NAME.into(),
                image: Some(image.to_owned()),
                image_pull_policy: Some("IfNotPresent".into()),
                ports: Some(vec![ContainerPort {
                    name: Some("http".into()),
                    container_port: i32::from(RUNTIME_PORT),
                    protocol: Some("TCP".into()),
                    ..ContainerPort::default()
                }]),
                // Requests equal limits: what the pod reserves is what it may use, so the
                // scheduler's accounting (and bin packing) sees the real footprint.
                resources: Some(ResourceRequirements {
                    requests: Some(memory.clone()),
                    limits: Some(memory),
                    ..ResourceRequirements::default()
                }),
                security_context: Some(SecurityContext {
                    allow_privilege_escalation: Some(false),
                    capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), add: None }),
                    seccomp_profile: Some(SeccompProfile {
                        type_: "RuntimeDefault".into(),
                        localhost_profile: None,
                    }),
                    ..SecurityContext::default()
                }),
                ..Container::default()
            }],
            // Action code must not reach the Kubernetes API.
            automount_service_account_token: Some(false),
            // No `*_SERVICE_HOST` variables: faster start, nothing about the cluster leaks in.
            enable_service_links: Some(false),
            restart_policy: Some("Never".into()),
            termination_grace_period_seconds: Some(i64::from(config.grace_period_seconds)),
            scheduler_name: config.scheduler_name.clone(),
            affinity: placement_hint(spec, config),
            ..PodSpec::default()
        }),
        status: None,
    })
}

/// The weight of the preferred node term: the highest, so that under the default scheduler (whose
/// resource scoring spreads pods) the node placement chose usually wins while it has room.
const PLACEMENT_WEIGHT: i32 = 100;

/// Placement's choice as a preferred node affinity, when no packing scheduler is configured: the
/// default scheduler spreads pods over the least allocated nodes, which fragments the pool; the
/// hint makes it pack them as placement does, and the scheduler still checks fit and constraints
/// (a full node is passed over). With a packing profile the scheduler's own accounting decides.
fn placement_hint(spec: &ContainerSpec, config: &PodConfig) -> Option<Affinity> {
    if config.scheduler_name.is_some() {
        return None;
    }
    let node = spec.placed_on.clone()?;
    let term = PreferredSchedulingTerm {
        weight: PLACEMENT_WEIGHT,
        preference: NodeSelectorTerm {
            match_expressions: None,
            match_fields: Some(vec![NodeSelectorRequirement {
                key: "metadata.name".into(),
                operator: "In".into(),
                values: Some(vec![node]),
            }]),
        },
    };
    Some(Affinity {
        node_affinity: Some(NodeAffinity {
            preferred_during_scheduling_ignored_during_execution: Some(vec![term]),
            required_during_scheduling_ignored_during_execution: None,
        }),
        ..Affinity::default()
    })
}

fn identity(spec: &ContainerSpec) -> Vec<(&'static str, &str)> {
    let mut fields = vec![
        (keys::CONTAINER_ID, spec.id.as_str()),
        (keys::NAMESPACE, spec.action.namespace.as_str()),
        (keys::ACTION, spec.action.name.as_str()),
        (keys::REVISION, spec.action.revision.as_str()),
        (keys::KIND, spec.kind.as_str()),
        (keys::NODE, spec.node.as_str()),
    ];
    if let Some(package) = &spec.action.package {
        fields.push((keys::PACKAGE, package.as_str()));
    }
    fields
}

/// Selectable labels: owner, app name and the sanitised identity.
pub fn labels(spec: &ContainerSpec) -> BTreeMap<String, String> {
    let mut labels: BTreeMap<String, String> =
        identity(spec).into_iter().map(|(key, value)| (key.to_owned(), label_value(value))).collect();
    labels.insert(MANAGED_BY.0.into(), MANAGED_BY.1.into());
    labels.insert(APP_NAME.0.into(), APP_NAME.1.into());
    labels
}

/// The exact identity, read back by [`spec_from_meta`].
pub fn annotations(spec: &ContainerSpec) -> BTreeMap<String, String> {
    let mut annotations: BTreeMap<String, String> =
        identity(spec).into_iter().map(|(key, value)| (key.to_owned(), value.to_owned())).collect();
    annotations.insert(keys::MEMORY_MB.into(), spec.memory_mb.to_string());
    annotations.insert(keys::SLOT.into(), spec.slot.to_string());
    if let Some(image) = &spec.image {
        annotations.insert(keys::IMAGE.into(), image.clone());
    }
    annotations
}

/// Why a pod's metadata does not describe one of our containers.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("pod {pod} is not managed by this server (label {} is not {})", MANAGED_BY.0, MANAGED_BY.1)]
    NotOurs { pod: String },
    #[error("pod {pod} lacks the annotation {key}")]
    Missing { pod: String, key: &'static str },
    #[error("pod {pod} has a bad {key} annotation {value:?}")]
    Bad { pod: String, key: &'static str, value: String },
    #[error("pod {pod}'s label {key} does not match its annotation")]
    Mismatch { pod: String, key: &'static str },
}

/// The container a pod of ours runs, read back from its metadata (for restart recovery): the exact
/// values from the annotations, checked against the labels so that a hand-edited pod is refused
/// rather than adopted under a wrong identity.
pub fn spec_from_meta(meta: &ObjectMeta) -> Result<ContainerSpec, IdentityError> {
    let pod = meta.name.clone().unwrap_or_default();
    let labels = meta.labels.clone().unwrap_or_default();
    if labels.get(MANAGED_BY.0).map(String::as_str) != Some(MANAGED_BY.1) {
        return Err(IdentityError::NotOurs { pod });
    }
    let annotations = meta.annotations.clone().unwrap_or_default();
    let exact = |key: &'static str| -> Result<Option<String>, IdentityError> {
        let Some(value) = annotations.get(key) else { return Ok(None) };
        if labels.get(key) != Some(&label_value(value)) {
            return Err(IdentityError::Mismatch { pod: pod.clone(), key });
        }
        Ok(Some(value.clone()))
    };
    // Empty counts as missing: a prewarmed pod carries an empty identity until it is specialised.
    let required = |key: &'static str| -> Result<String, IdentityError> {
        exact(key)?
            .filter(|value| !value.is_empty())
            .ok_or_else(|| IdentityError::Missing { pod: pod.clone(), key })
    };
    let number = |key: &'static str| -> Result<u64, IdentityError> {
        let value = annotations.get(key).ok_or_else(|| IdentityError::Missing { pod: pod.clone(), key })?;
        value.parse().map_err(|_| IdentityError::Bad { pod: pod.clone(), key, value: value.clone() })
    };
    let memory_mb = number(keys::MEMORY_MB)?;
    let slot = u32::try_from(number(keys::SLOT)?).map_err(|_| IdentityError::Bad {
        pod: pod.clone(),
        key: keys::SLOT,
        value: annotations.get(keys::SLOT).cloned().unwrap_or_default(),
    })?;
    Ok(ContainerSpec {
        id: required(keys::CONTAINER_ID)?,
        action: ActionKey {
            namespace: required(keys::NAMESPACE)?,
            package: exact(keys::PACKAGE)?,
            name: required(keys::ACTION)?,
            revision: required(keys::REVISION)?,
        },
        kind: required(keys::KIND)?,
        memory_mb,
        node: required(keys::NODE)?,
        slot,
        image: annotations.get(keys::IMAGE).filter(|image| !image.is_empty()).cloned(),
        // Placement matters only when the pod is created.
        placed_on: None,
    })
}

/// What a pod's status says about its container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// Not ready yet; what it is waiting for, for logs and timeout messages.
    Waiting(String),
    /// Running and Ready, reachable at this IP.
    Ready(IpAddr),
    /// It will never become ready.
    Failed(String),
}

/// Container waiting reasons that will not resolve within a cold start. `ErrImagePull` is not
/// among them: the kubelet retries it, and a registry hiccup may pass; `ImagePullBackOff` follows
/// a failed pull and means the wait is now counted in tens of seconds.
const FATAL_WAITING: &[&str] = &[
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
    "CrashLoopBackOff",
];

/// The container a pod event says is lost: any deleted pod, or one that failed (phase Failed,
/// evicted, its runtime exited). `None` for a healthy or starting pod and for pods not ours.
pub fn lost_container(pod: &Pod, deleted: bool) -> Option<String> {
    let annotations = pod.metadata.annotations.as_ref()?;
    let id = annotations.get(keys::CONTAINER_ID).filter(|id| !id.is_empty())?;
    (deleted || matches!(readiness(pod), Readiness::Failed(_))).then(|| id.clone())
}

/// Reads a pod's status: Ready once the phase is Running, the Ready condition is True and the pod
/// has an IP; Failed on a terminal phase, a terminated container or a hopeless waiting reason.
pub fn readiness(pod: &Pod) -> Readiness {
    if pod.metadata.deletion_timestamp.is_some() {
        return Readiness::Failed("the pod is being deleted".into());
    }
    let Some(status) = &pod.status else { return Readiness::Waiting("no status yet".into()) };
    let phase = status.phase.as_deref().unwrap_or("Pending");
    if matches!(phase, "Failed" | "Succeeded") {
        let why = status.message.as_deref().or(status.reason.as_deref()).unwrap_or("no reason given");
        return Readiness::Failed(format!("pod phase {phase}: {why}"));
    }
    for container in status.container_statuses.iter().flatten() {
        let Some(state) = &container.state else { continue };
        if let Some(waiting) = &state.waiting {
            let reason = waiting.reason.as_deref().unwrap_or("");
            if FATAL_WAITING.contains(&reason) {
                let message = waiting.message.as_deref().unwrap_or("");
                return Readiness::Failed(format!("{reason}: {message}").trim_end_matches(": ").to_owned());
            }
        }
        if let Some(terminated) = &state.terminated {
            let reason = terminated.reason.as_deref().unwrap_or("Terminated");
            return Readiness::Failed(format!("container exited with {} ({reason})", terminated.exit_code));
        }
    }
    let condition = |kind: &str| status.conditions.iter().flatten().find(|condition| condition.type_ == kind);
    if let Some(scheduled) = condition("PodScheduled").filter(|condition| condition.status == "False") {
        let why = scheduled.message.as_deref().or(scheduled.reason.as_deref()).unwrap_or("unschedulable");
        return Readiness::Waiting(format!("not scheduled: {why}"));
    }
    let ready = condition("Ready").is_some_and(|condition| condition.status == "True");
    match (phase, ready, status.pod_ip.as_deref()) {
        ("Running", true, Some(ip)) => match ip.parse() {
            Ok(ip) => Readiness::Ready(ip),
            Err(_) => Readiness::Failed(format!("the pod IP {ip:?} is not an IP address")),
        },
        ("Running", _, _) => Readiness::Waiting("running, not ready".into()),
        (phase, _, _) => {
            let waiting = status
                .container_statuses
                .iter()
                .flatten()
                .find_map(|container| container.state.as_ref()?.waiting.as_ref()?.reason.clone());
            match waiting {
                Some(reason) => Readiness::Waiting(format!("{phase}: {reason}")),
                None => Readiness::Waiting(phase.to_owned()),
            }
        }
    }
}

/// The node a pod was scheduled to (`spec.nodeName`); `None` until the scheduler placed it.
pub fn host(pod: &Pod) -> Option<String> {
    pod.spec.as_ref()?.node_name.clone().filter(|name| !name.is_empty())
}

/// Why a node cannot be read as a machine.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MachineError {
    #[error("the node has no name")]
    NoName,
    #[error("node {node}: allocatable memory {value:?} is not a quantity of bytes")]
    Memory { node: String, value: String },
}

const MIB: u64 = 1024 * 1024;

/// A node as placement sees it: its allocatable memory (what the kubelet lets pods request, system
/// reservations already taken out), in MiB as action limits are. A node that takes no new pods
/// (cordoned, or not Ready) keeps its name with no memory, so that the pods it still holds count as
/// in use there while nothing new is placed on it. Other workloads' requests are not subtracted:
/// the scheduler has the final word on fit, this view ranks nodes for packing and victims.
pub fn machine(node: &Node) -> Result<placement::Node, MachineError> {
    let name = node.metadata.name.clone().filter(|name| !name.is_empty()).ok_or(MachineError::NoName)?;
    let status = node.status.as_ref();
    let ready = status
        .and_then(|status| status.conditions.as_ref())
        .and_then(|conditions| conditions.iter().find(|condition| condition.type_ == "Ready"))
        .is_some_and(|condition| condition.status == "True");
    let cordoned = node.spec.as_ref().and_then(|spec| spec.unschedulable).unwrap_or(false);
    let memory = status
        .and_then(|status| status.allocatable.as_ref())
        .and_then(|allocatable| allocatable.get("memory"));
    let capacity_mb = match memory {
        _ if !ready || cordoned => 0,
        None => 0,
        Some(quantity) => {
            let bytes = kube_quantity::ParsedQuantity::try_from(quantity)
                .ok()
                .and_then(|parsed| parsed.to_bytes_u64())
                .ok_or_else(|| MachineError::Memory { node: name.clone(), value: quantity.0.clone() })?;
            bytes / MIB
        }
    };
    Ok(placement::Node::new(name, capacity_mb))
}

#[cfg(test)]
pub(crate) mod fixtures {
    //! Pods as the API server shows them at each step of a start.

    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateWaiting, ContainerStatus, PodCondition, PodStatus,
    };

    use super::*;

    pub fn spec(id: &str) -> ContainerSpec {
        ContainerSpec {
            id: id.into(),
            action: ActionKey {
                namespace: "guest".into(),
                package: None,
                name: "hello".into(),
                revision: "3".into(),
            },
            kind: "nodejs:20".into(),
            memory_mb: 256,
            node: "envoy-1".into(),
            slot: 0,
            image: None,
            placed_on: None,
        }
    }

    /// `pod` with `status` set, as the API server would return it at `resource_version`.
    pub fn with_status(pod: &Pod, resource_version: &str, status: PodStatus) -> Pod {
        let mut pod = pod.clone();
        pod.metadata.resource_version = Some(resource_version.into());
        pod.metadata.uid = Some("0b7c6a4e-uid".into());
        pod.status = Some(status);
        pod
    }

    fn condition(kind: &str, status: &str) -> PodCondition {
        PodCondition { type_: kind.into(), status: status.into(), ..PodCondition::default() }
    }

    fn waiting(reason: &str) -> ContainerStatus {
        ContainerStatus {
            name: CONTAINER_NAME.into(),
            state: Some(ContainerState {
                waiting: Some(ContainerStateWaiting {
                    reason: Some(reason.into()),
                    message: Some(format!("{reason} message")),
                }),
                ..ContainerState::default()
            }),
            ..ContainerStatus::default()
        }
    }

    pub fn pending() -> PodStatus {
        PodStatus {
            phase: Some("Pending".into()),
            conditions: Some(vec![condition("PodScheduled", "True")]),
            container_statuses: Some(vec![waiting("ContainerCreating")]),
            ..PodStatus::default()
        }
    }

    pub fn pulling_failed() -> PodStatus {
        PodStatus { container_statuses: Some(vec![waiting("ImagePullBackOff")]), ..pending() }
    }

    pub fn running_not_ready(ip: &str) -> PodStatus {
        PodStatus {
            phase: Some("Running".into()),
            pod_ip: Some(ip.into()),
            conditions: Some(vec![condition("PodScheduled", "True"), condition("Ready", "False")]),
            ..PodStatus::default()
        }
    }

    pub fn ready(ip: &str) -> PodStatus {
        PodStatus {
            conditions: Some(vec![condition("PodScheduled", "True"), condition("Ready", "True")]),
            ..running_not_ready(ip)
        }
    }

    pub fn unschedulable() -> PodStatus {
        PodStatus {
            phase: Some("Pending".into()),
            conditions: Some(vec![PodCondition {
                reason: Some("Unschedulable".into()),
                message: Some("0/3 nodes are available: 3 Insufficient memory.".into()),
                ..condition("PodScheduled", "False")
            }]),
            ..PodStatus::default()
        }
    }

    /// A node as the API server shows it: Ready (or not), with `memory` allocatable.
    pub fn node(name: &str, memory: &str, ready: bool) -> Node {
        use k8s_openapi::api::core::v1::{NodeCondition, NodeStatus};
        Node {
            metadata: ObjectMeta { name: Some(name.into()), ..ObjectMeta::default() },
            status: Some(NodeStatus {
                allocatable: Some(BTreeMap::from([("memory".to_owned(), Quantity(memory.into()))])),
                conditions: Some(vec![NodeCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..NodeCondition::default()
                }]),
                ..NodeStatus::default()
            }),
            ..Node::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::PodStatus;
    use proptest::prelude::*;

    use super::fixtures::*;
    use super::*;

    #[test]
    fn lost_pods_are_the_deleted_and_the_failed_ones() {
        let config = PodConfig::test();
        let pod = pod_for(&fixtures::spec("abc"), &config).unwrap();
        let ready = fixtures::with_status(&pod, "2", fixtures::ready("10.0.0.9"));
        assert_eq!(lost_container(&ready, false), None);
        assert_eq!(lost_container(&ready, true).as_deref(), Some("abc"));
        let starting = fixtures::with_status(&pod, "3", fixtures::pending());
        assert_eq!(lost_container(&starting, false), None);
        let mut failed = fixtures::ready("10.0.0.9");
        failed.phase = Some("Failed".into());
        assert_eq!(lost_container(&fixtures::with_status(&pod, "4", failed), false).as_deref(), Some("abc"));
        let mut foreign = ready.clone();
        foreign.metadata.annotations = None;
        assert_eq!(lost_container(&foreign, true), None, "not one of ours");
    }

    #[test]
    fn a_ready_node_offers_its_allocatable_memory_in_mib() {
        for (memory, mib) in [("16393216Ki", 16_009), ("8Gi", 8_192), ("2G", 1_907), ("3221225472", 3_072)] {
            let machine = machine(&fixtures::node("n1", memory, true)).unwrap();
            assert_eq!(
                (machine.name.as_str(), machine.capacity_mb, machine.allocated_mb),
                ("n1", mib, 0),
                "{memory}"
            );
        }
    }

    #[test]
    fn a_node_that_takes_no_new_pods_offers_nothing_but_keeps_its_name() {
        let not_ready = machine(&fixtures::node("n1", "8Gi", false)).unwrap();
        assert_eq!((not_ready.name.as_str(), not_ready.capacity_mb), ("n1", 0));
        let mut cordoned = fixtures::node("n2", "8Gi", true);
        cordoned.spec =
            Some(k8s_openapi::api::core::v1::NodeSpec { unschedulable: Some(true), ..Default::default() });
        assert_eq!(machine(&cordoned).unwrap().capacity_mb, 0);
    }

    #[test]
    fn an_unreadable_node_is_an_error() {
        assert_eq!(
            machine(&fixtures::node("n1", "lots", true)),
            Err(MachineError::Memory { node: "n1".into(), value: "lots".into() })
        );
        let mut nameless = fixtures::node("", "8Gi", true);
        nameless.metadata.name = None;
        assert_eq!(machine(&nameless), Err(MachineError::NoName));
    }

    #[test]
    fn pods_carry_their_owner_and_the_selector_picks_only_its_own() {
        let mut config = PodConfig::test();
        config.owner = "whisk control@10.0.0.7".into();
        let labels = pod_for(&fixtures::spec("abc"), &config).unwrap().metadata.labels.unwrap();
        let owner = &labels[keys::OWNER];
        assert!(is_label_value(owner), "{owner}");
        assert_eq!(
            config.selector(),
            format!("app.kubernetes.io/managed-by=whisk-xds-server,whisk/owner={owner}")
        );
        let other = PodConfig { owner: "another".into(), ..config.clone() };
        assert_ne!(other.selector(), config.selector());
    }

    #[test]
    fn a_pods_host_is_its_scheduled_node() {
        let mut pod = pod_for(&fixtures::spec("abc"), &PodConfig::test()).unwrap();
        assert_eq!(host(&pod), None, "not scheduled yet");
        pod.spec.as_mut().unwrap().node_name = Some("worker-2".into());
        assert_eq!(host(&pod).as_deref(), Some("worker-2"));
    }

    #[test]
    fn valid_label_values_are_kept() {
        for value in ["", "guest", "hello-world", "a.b_c-1", "nodejs", &"x".repeat(63)] {
            assert_eq!(label_value(value), value);
        }
    }

    #[test]
    fn invalid_label_values_are_sanitised_readably() {
        assert_eq!(label_value("nodejs:20"), format!("nodejs_20-{:08x}", fnv1a(b"nodejs:20")));
        assert_eq!(
            label_value("user@example.com"),
            format!("user_example.com-{:08x}", fnv1a(b"user@example.com"))
        );
        assert_eq!(label_value("_x_"), format!("x-{:08x}", fnv1a(b"_x_")));
        assert_eq!(label_value("@@@"), format!("{:08x}", fnv1a(b"@@@")));
        let long = label_value(&"a".repeat(64));
        assert_eq!(long.len(), 63);
        assert!(long.starts_with(&"a".repeat(54)));
        // Two names that sanitise alike stay apart.
        assert_ne!(label_value("a b"), label_value("a+b"));
    }

    #[test]
    fn pod_names_come_from_container_ids() {
        assert_eq!(pod_name("0123abcd"), "whisk-0123abcd");
        let odd = pod_name("Some_ID");
        assert!(odd.starts_with("whisk-some-id-"), "{odd}");
        assert_ne!(pod_name("Some_ID"), pod_name("some-id"));
        assert!(pod_name(&"a".repeat(200)).len() <= 63);
    }

    proptest! {
        #[test]
        fn every_label_value_is_valid_and_stable(value in "\\PC{0,80}") {
            let label = label_value(&value);
            prop_assert!(is_label_value(&label), "{label:?}");
            prop_assert_eq!(label_value(&label), label.clone());
        }

        #[test]
        fn every_pod_name_is_a_dns_label(id in "\\PC{0,80}") {
            let name = pod_name(&id);
            prop_assert!(name.len() <= 63);
            prop_assert!(name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'));
            prop_assert!(!name.ends_with('-'));
        }

        #[test]
        fn identity_round_trips_through_the_pod(
            id in "[a-f0-9]{32}",
            namespace in "\\PC{1,40}",
            package in proptest::option::of("\\PC{1,40}"),
            name in "\\PC{1,40}",
            revision in "[0-9a-z-]{1,20}",
            kind in "(nodejs|python)(:[0-9.]{1,5})?",
            memory_mb in 128u64..4096,
            node in "\\PC{1,40}",
            slot in 0u32..10_000,
            image in proptest::option::of("[a-z0-9./:-]{1,60}"),
        ) {
            let spec = ContainerSpec {
                id, action: ActionKey { namespace, package, name, revision }, kind, memory_mb, node, slot, image, placed_on: None,
            };
            let mut config = PodConfig::test();
            config.images = RuntimeImages::new([
                RuntimeImage { kind: "nodejs".into(), image: "n".into() },
                RuntimeImage { kind: "python".into(), image: "p".into() },
            ]);
            let pod = pod_for(&spec, &config).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let back = spec_from_meta(&pod.metadata).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(back.id, spec.id);
            prop_assert_eq!(back.action, spec.action);
            prop_assert_eq!(back.kind, spec.kind);
            prop_assert_eq!(back.memory_mb, spec.memory_mb);
            prop_assert_eq!(back.node, spec.node);
            prop_assert_eq!(back.slot, spec.slot);
            prop_assert_eq!(back.image, spec.image);
        }
    }

    #[test]
    fn placements_choice_is_a_preferred_node_unless_a_packing_scheduler_places_pods() {
        let placed = ContainerSpec { placed_on: Some("worker-3".into()), ..spec("abc123") };
        let pod = pod_for(&placed, &PodConfig::test()).unwrap();
        let affinity = pod.spec.unwrap().affinity.unwrap().node_affinity.unwrap();
        assert_eq!(affinity.required_during_scheduling_ignored_during_execution, None, "a hint only");
        let terms = affinity.preferred_during_scheduling_ignored_during_execution.unwrap();
        assert_eq!(terms.len(), 1);
        assert_eq!(terms[0].weight, 100);
        let fields = terms[0].preference.match_fields.clone().unwrap();
        assert_eq!(
            (fields[0].key.as_str(), fields[0].operator.as_str(), fields[0].values.clone()),
            ("metadata.name", "In", Some(vec!["worker-3".to_owned()]))
        );

        let packing = PodConfig { scheduler_name: Some("whisk-packing".into()), ..PodConfig::test() };
        assert_eq!(pod_for(&placed, &packing).unwrap().spec.unwrap().affinity, None);
        assert_eq!(pod_for(&spec("abc123"), &PodConfig::test()).unwrap().spec.unwrap().affinity, None);
    }

    #[test]
    fn a_blackbox_action_runs_the_image_it_names() {
        let spec = ContainerSpec {
            kind: "blackbox".into(),
            image: Some("example.com/me/tool:1".into()),
            ..spec("abc123")
        };
        let pod = pod_for(&spec, &PodConfig::test()).unwrap();
        assert_eq!(pod.spec.unwrap().containers[0].image.as_deref(), Some("example.com/me/tool:1"));
        let without = ContainerSpec { image: None, ..spec };
        assert!(matches!(pod_for(&without, &PodConfig::test()), Err(ClusterError::NoImage { .. })));
    }

    #[test]
    fn the_pod_runs_the_kinds_image_locked_down() {
        let pod = pod_for(&spec("abc123"), &PodConfig::test()).unwrap();
        assert_eq!(pod.metadata.name.as_deref(), Some("whisk-abc123"));
        assert_eq!(pod.metadata.namespace.as_deref(), Some("whisk-actions"));
        let labels = pod.metadata.labels.as_ref().unwrap();
        assert_eq!(labels["app.kubernetes.io/managed-by"], "whisk-xds-server");
        assert_eq!(labels[keys::CONTAINER_ID], "abc123");
        assert_eq!(labels[keys::NAMESPACE], "guest");
        assert_eq!(labels[keys::ACTION], "hello");
        assert_eq!(labels[keys::REVISION], "3");
        assert!(!labels.contains_key(keys::PACKAGE));
        assert_eq!(pod.metadata.annotations.as_ref().unwrap()[keys::KIND], "nodejs:20");

        let spec = pod.spec.unwrap();
        assert_eq!(spec.automount_service_account_token, Some(false));
        assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
        assert_eq!(spec.termination_grace_period_seconds, Some(1));
        assert_eq!(spec.scheduler_name, None);
        let [container] = spec.containers.as_slice() else { panic!("one container") };
        assert_eq!(container.image.as_deref(), Some("openwhisk/action-nodejs-v20"));
        assert_eq!(container.ports.as_ref().unwrap()[0].container_port, 8080);
        let resources = container.resources.as_ref().unwrap();
        assert_eq!(resources.limits.as_ref().unwrap()["memory"], Quantity("256Mi".into()));
        assert_eq!(resources.requests, resources.limits);
        assert_eq!(container.security_context.as_ref().unwrap().allow_privilege_escalation, Some(false));
    }

    #[test]
    fn images_match_the_exact_kind_then_its_family() {
        let images = PodConfig::test().images;
        assert_eq!(images.image_for("nodejs:20"), Some("openwhisk/action-nodejs-v20"));
        assert_eq!(images.image_for("nodejs"), Some("openwhisk/action-nodejs-v20"));
        assert_eq!(images.image_for("python:3.11"), Some("openwhisk/action-python-v3.11"));
        assert_eq!(images.image_for("python:3.12"), None);
        assert_eq!(images.image_for("blackbox"), None);
        let error = pod_for(&ContainerSpec { kind: "go:1.22".into(), ..spec("x") }, &PodConfig::test());
        assert!(matches!(error, Err(ClusterError::NoImage { kind, .. }) if kind == "go:1.22"));
    }

    #[test]
    fn runtime_images_parse_from_flags() {
        let entry: RuntimeImage = "nodejs:20=openwhisk/action-nodejs-v20:1.2".parse().unwrap();
        assert_eq!(
            entry,
            RuntimeImage { kind: "nodejs:20".into(), image: "openwhisk/action-nodejs-v20:1.2".into() }
        );
        assert!("nodejs".parse::<RuntimeImage>().is_err());
        assert!("=image".parse::<RuntimeImage>().is_err());
    }

    #[test]
    fn a_scheduler_name_is_passed_on() {
        let config = PodConfig { scheduler_name: Some("whisk-packing".into()), ..PodConfig::test() };
        let pod = pod_for(&spec("a"), &config).unwrap();
        assert_eq!(pod.spec.unwrap().scheduler_name.as_deref(), Some("whisk-packing"));
    }

    #[test]
    fn foreign_or_edited_pods_are_not_adopted() {
        let pod = pod_for(&spec("abc"), &PodConfig::test()).unwrap();
        let mut foreign = pod.metadata.clone();
        foreign.labels.as_mut().unwrap().remove(MANAGED_BY.0);
        assert!(matches!(spec_from_meta(&foreign), Err(IdentityError::NotOurs { .. })));
        let mut edited = pod.metadata.clone();
        edited.annotations.as_mut().unwrap().insert(keys::ACTION.into(), "other".into());
        assert!(matches!(spec_from_meta(&edited), Err(IdentityError::Mismatch { key: keys::ACTION, .. })));
        let mut bare = pod.metadata;
        bare.annotations.as_mut().unwrap().remove(keys::MEMORY_MB);
        assert!(matches!(spec_from_meta(&bare), Err(IdentityError::Missing { key: keys::MEMORY_MB, .. })));
    }

    #[test]
    fn readiness_follows_the_pod_through_its_start() {
        let pod = pod_for(&spec("a"), &PodConfig::test()).unwrap();
        let at = |status: PodStatus| readiness(&with_status(&pod, "1", status));
        assert_eq!(readiness(&pod), Readiness::Waiting("no status yet".into()));
        assert_eq!(at(pending()), Readiness::Waiting("Pending: ContainerCreating".into()));
        assert_eq!(at(running_not_ready("10.1.2.3")), Readiness::Waiting("running, not ready".into()));
        assert_eq!(at(ready("10.1.2.3")), Readiness::Ready("10.1.2.3".parse().unwrap()));
        assert_eq!(at(ready("fd00::7")), Readiness::Ready("fd00::7".parse().unwrap()));
        assert_eq!(
            at(unschedulable()),
            Readiness::Waiting("not scheduled: 0/3 nodes are available: 3 Insufficient memory.".into())
        );
    }

    #[test]
    fn hopeless_pods_fail_fast() {
        let pod = pod_for(&spec("a"), &PodConfig::test()).unwrap();
        let at = |status: PodStatus| readiness(&with_status(&pod, "1", status));
        assert_eq!(
            at(pulling_failed()),
            Readiness::Failed("ImagePullBackOff: ImagePullBackOff message".into())
        );
        let failed = PodStatus { phase: Some("Failed".into()), reason: Some("Evicted".into()), ..pending() };
        assert_eq!(at(failed), Readiness::Failed("pod phase Failed: Evicted".into()));
        assert!(matches!(at(ready("not-an-ip")), Readiness::Failed(_)));
        let mut deleting = with_status(&pod, "1", ready("10.0.0.1"));
        deleting.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
        ));
        assert_eq!(readiness(&deleting), Readiness::Failed("the pod is being deleted".into()));
    }
}
