//! Cluster managers: what starts and stops containers. The control plane only speaks this trait;
//! the embedded default is [`local::LocalProcesses`] (one runtime process per container on loopback).

pub mod local;

use std::future::Future;

use crate::table::ActionKey;

/// What to start.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    pub id: String,
    pub action: ActionKey,
    pub kind: String,
    pub memory_mb: u64,
}

/// A started (not yet initialised) container.
#[derive(Debug, Clone)]
pub struct StartedContainer {
    /// `ip:port` of its runtime protocol endpoint.
    pub address: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("no free port to start container {id}: {source}")]
    NoPort { id: String, source: std::io::Error },
    #[error("could not start the runtime for container {id}: {source}")]
    Spawn { id: String, source: std::io::Error },
    #[error("unknown container {0}")]
    Unknown(String),
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
}
