//! Cluster managers: what starts and stops containers. The control plane only speaks this trait;
//! the embedded default is [`local::LocalProcesses`] (one runtime process per container on loopback);
//! [`kube::KubeCluster`] runs one pod per container, built by the pure [`pod`] module.

pub mod kube;
pub mod local;
pub mod pod;

use std::future::Future;

use tokio::sync::mpsc;

use crate::placement::Node;
use crate::table::ActionKey;

/// What to start. Everything here is written on the container (labels of a process or pod), so
/// that a restarted control plane can rebuild its table from the running containers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSpec {
    pub id: String,
    pub action: ActionKey,
    pub kind: String,
    pub memory_mb: u64,
    /// The Envoy node that routes to it.
    pub node: String,
    /// Its slot among the action revision's containers on that node (the filter's shared-data key).
    pub slot: u32,
    /// The image a blackbox action names; `None` runs the runtime of `kind`. Only the Kubernetes
    /// cluster manager runs images; local processes run a blackbox action's code natively.
    pub image: Option<String>,
    /// The machine placement chose (best fit over the machines the control plane sees). A cluster
    /// manager that does not place by itself may use it as a hint (see docs/decisions/0006).
    pub placed_on: Option<String>,
}

/// A container found running when the control plane starts (restart recovery).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Adopted {
    pub spec: ContainerSpec,
    /// `ip:port` of its runtime protocol endpoint.
    pub address: String,
    /// The machine it runs on, when the cluster manager knows machines apart (a pod's node).
    pub host: Option<String>,
}

/// A started (not yet initialised) container.
#[derive(Debug, Clone)]
pub struct StartedContainer {
    /// `ip:port` of its runtime protocol endpoint.
    pub address: String,
    /// The machine it landed on, when the cluster manager knows machines apart (a pod's node, which
    /// the scheduler chose); `None` keeps the control plane's own placement.
    pub host: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("no free port to start container {id}: {source}")]
    NoPort { id: String, source: std::io::Error },
    #[error("could not start the runtime for container {id}: {source}")]
    Spawn { id: String, source: std::io::Error },
    #[error("unknown container {0}")]
    Unknown(String),
    #[error("no runtime image for kind {kind} (container {id}); add one with --runtime-image")]
    NoImage { id: String, kind: String },
    #[error("pod {pod} already exists: container {id} was started before; not adopting it")]
    PodExists { id: String, pod: String },
    #[error("Kubernetes refused to {operation} pod {pod}: {source}")]
    Kube {
        operation: &'static str,
        pod: String,
        #[source]
        source: Box<::kube::Error>,
    },
    #[error("pod {pod} of container {id} cannot start: {reason}")]
    PodFailed { id: String, pod: String, reason: String },
    #[error("pod {pod} of container {id} was not ready after {timeout:?} (last seen: {last})")]
    PodTimeout { id: String, pod: String, timeout: std::time::Duration, last: String },
    #[error("could not list the running containers to adopt them: {0}")]
    Discovery(String),
    #[error("could not relabel container {id}: {reason}")]
    Relabel { id: String, reason: String },
}

/// Which cluster manager the server runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ClusterManagerKind {
    /// `action-runtime` processes on this machine (the embedded default).
    Local,
    /// One pod per container through the Kubernetes API.
    Kubernetes,
}

/// Starts and stops containers.
pub trait ClusterManager: Send + Sync + 'static {
    fn start(
        &self,
        spec: &ContainerSpec,
    ) -> impl Future<Output = Result<StartedContainer, ClusterError>> + Send;
    fn stop(&self, id: &str) -> impl Future<Output = Result<(), ClusterError>> + Send;
    /// Stops every container this manager started (server shutdown).
    fn stop_all(&self) -> impl Future<Output = ()> + Send;
    /// Finds the initialised containers a previous run of this server left running, and takes
    /// them over (later `stop`s reach them). Containers it cannot adopt (not ready, unreadable
    /// labels) are stopped rather than left behind.
    fn adopt(&self) -> impl Future<Output = Result<Vec<Adopted>, ClusterError>> + Send;
    /// A prewarmed container was specialised for `spec`'s action: its labels must say so, so that
    /// a restarted control plane adopts it as that action's container.
    fn relabel(&self, spec: &ContainerSpec) -> impl Future<Output = Result<(), ClusterError>> + Send;
    /// Runs for the server's life, sending the id of every container that stops on its own (a
    /// runtime process that exits; a pod that fails, is evicted or is deleted by someone else) as
    /// it is noticed, so that the control plane takes it out of xDS at once. Ids the control plane
    /// no longer knows (its own stops) are ignored there.
    fn watch_lost(&self, lost: mpsc::UnboundedSender<String>) -> impl Future<Output = ()> + Send;
    /// The machines containers run on, with the memory each gives them, when the cluster manager
    /// sees them (the Kubernetes nodes); `None` when it does not, and the configured pool stands for
    /// one machine.
    fn machines(&self) -> Option<Vec<Node>> {
        None
    }
    /// Runs for the server's life, keeping [`ClusterManager::machines`] current (a watch of nodes).
    fn watch_machines(&self) -> impl Future<Output = ()> + Send {
        std::future::pending()
    }
}
