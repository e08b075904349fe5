//! The embedded default cluster manager: every container is an `action-runtime` process listening on
//! a free loopback port. Its labels (namespace, action, revision, container id) travel as environment
//! variables of the process.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio::sync::Mutex;
use tracing::{info, warn};

use super::{ClusterError, ClusterManager, ContainerSpec, StartedContainer};

/// How long a runtime gets to stop on SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// Runtime processes on this machine.
#[derive(Debug)]
pub struct LocalProcesses {
    runtime_bin: PathBuf,
    host: IpAddr,
    children: Mutex<HashMap<String, Child>>,
}

impl LocalProcesses {
    pub fn new(runtime_bin: PathBuf) -> Self {
        Self { runtime_bin, host: IpAddr::V4(Ipv4Addr::LOCALHOST), children: Mutex::new(HashMap::new()) }
    }

    /// A port the kernel says is free now; the runtime binds it a moment later (loopback only, so
    /// the window is ours alone in practice).
    fn free_port(&self, id: &str) -> Result<u16, ClusterError> {
        TcpListener::bind(SocketAddr::new(self.host, 0))
            .and_then(|listener| listener.local_addr())
            .map(|address| address.port())
            .map_err(|source| ClusterError::NoPort { id: id.to_owned(), source })
    }

    async fn terminate(id: &str, mut child: Child) {
        if let Some(pid) = child.id().and_then(|pid| i32::try_from(pid).ok()) {
            // SIGTERM first: the runtime stops its action process and removes its work dir.
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            if tokio::time::timeout(STOP_GRACE, child.wait()).await.is_ok() {
                return;
            }
            warn!(container = id, "runtime ignored SIGTERM; killing it");
        }
        let _ = child.kill().await;
    }
}

impl ClusterManager for LocalProcesses {
    async fn start(&self, spec: &ContainerSpec) -> Result<StartedContainer, ClusterError> {
        let port = self.free_port(&spec.id)?;
        let address = SocketAddr::new(self.host, port).to_string();
        let child = Command::new(&self.runtime_bin)
            .arg("--listen")
            .arg(&address)
            .arg("--container-id")
            .arg(&spec.id)
            .arg("--kind")
            .arg(&spec.kind)
            .env("WHISK_CONTAINER_ID", &spec.id)
            .env("WHISK_NAMESPACE", &spec.action.namespace)
            .env("WHISK_PACKAGE", spec.action.package.as_deref().unwrap_or(""))
            .env("WHISK_ACTION", &spec.action.name)
            .env("WHISK_REVISION", &spec.action.revision)
            .env("WHISK_MEMORY_MB", spec.memory_mb.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| ClusterError::Spawn { id: spec.id.clone(), source })?;
        info!(container = %spec.id, action = %spec.action, %address, pid = child.id(), "runtime started");
        self.children.lock().await.insert(spec.id.clone(), child);
        Ok(StartedContainer { address })
    }

    async fn stop(&self, id: &str) -> Result<(), ClusterError> {
        let child =
            self.children.lock().await.remove(id).ok_or_else(|| ClusterError::Unknown(id.to_owned()))?;
        Self::terminate(id, child).await;
        info!(container = id, "runtime stopped");
        Ok(())
    }

    async fn stop_all(&self) {
        let children: Vec<_> = self.children.lock().await.drain().collect();
        let count = children.len();
        futures::future::join_all(children.into_iter().map(|(id, child)| async move {
            Self::terminate(&id, child).await;
        }))
        .await;
        info!(count, "all runtimes stopped");
    }
}
