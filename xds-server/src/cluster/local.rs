//! The embedded default cluster manager: every container is an `action-runtime` process listening on
//! a free loopback port. Its labels (owner, container id, action revision, kind, memory, Envoy
//! node, slot, address) travel as environment variables of the process, where a restarted control
//! plane reads them back from `/proc/<pid>/environ` to adopt the processes.

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

use super::{Adopted, ClusterError, ClusterManager, ContainerSpec, StartedContainer};
use crate::table::ActionKey;

/// How long a runtime gets to stop on SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// How often the runtimes are checked for having exited: a child's exit is a cheap non-blocking
/// `waitpid`, an adopted process's a signal 0.
const EXIT_CHECK: Duration = Duration::from_millis(100);

/// The environment variables that label a runtime process.
pub mod labels {
    /// Which control plane owns it: two platforms on one machine never adopt each other's.
    pub const OWNER: &str = "WHISK_OWNER";
    pub const CONTAINER_ID: &str = "WHISK_CONTAINER_ID";
    pub const NAMESPACE: &str = "WHISK_NAMESPACE";
    /// Empty for an action outside a package.
    pub const PACKAGE: &str = "WHISK_PACKAGE";
    pub const ACTION: &str = "WHISK_ACTION";
    pub const REVISION: &str = "WHISK_REVISION";
    pub const KIND: &str = "WHISK_KIND";
    pub const MEMORY_MB: &str = "WHISK_MEMORY_MB";
    pub const NODE: &str = "WHISK_ENVOY_NODE";
    pub const SLOT: &str = "WHISK_SLOT";
    pub const ADDRESS: &str = "WHISK_ADDRESS";
}

/// A runtime this manager can stop: its own child, or a process adopted after a restart.
#[derive(Debug)]
enum Runtime {
    Child(Child),
    Adopted(Pid),
}

/// Runtime processes on this machine.
#[derive(Debug)]
pub struct LocalProcesses {
    runtime_bin: PathBuf,
    owner: String,
    /// A prewarmed process's environment cannot change once it is specialised, so its new labels
    /// are written here (`<container id>.env`), where adoption looks for them.
    labels_dir: PathBuf,
    host: IpAddr,
    children: Mutex<HashMap<String, Runtime>>,
}

/// A runtime process of some owner found in `/proc`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundRuntime {
    pub pid: i32,
    pub env: HashMap<String, String>,
}

/// The runtime processes labelled with `owner`, from `/proc/<pid>/environ` (processes of other
/// users, or gone meanwhile, are skipped).
pub fn owned_runtimes(owner: &str) -> Vec<FoundRuntime> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
            let env = parse_environ(&environ);
            (env.get(labels::OWNER).map(String::as_str) == Some(owner)).then_some(FoundRuntime { pid, env })
        })
        .collect()
}

/// The labels that say which action a container serves (the rest: owner, id, address, kind).
fn identity_labels(spec: &ContainerSpec) -> Vec<(&'static str, String)> {
    vec![
        (labels::NAMESPACE, spec.action.namespace.clone()),
        (labels::PACKAGE, spec.action.package.clone().unwrap_or_default()),
        (labels::ACTION, spec.action.name.clone()),
        (labels::REVISION, spec.action.revision.clone()),
        (labels::MEMORY_MB, spec.memory_mb.to_string()),
        (labels::NODE, spec.node.clone()),
        (labels::SLOT, spec.slot.to_string()),
    ]
}

/// `KEY=value` entries separated by NUL bytes.
fn parse_environ(bytes: &[u8]) -> HashMap<String, String> {
    bytes
        .split(|byte| *byte == 0)
        .filter_map(|entry| {
            let text = std::str::from_utf8(entry).ok()?;
            let (key, value) = text.split_once('=')?;
            Some((key.to_owned(), value.to_owned()))
        })
        .collect()
}

/// Why a labelled process cannot be adopted.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("runtime process {pid} has no valid {label}")]
pub struct BadLabel {
    pub pid: i32,
    pub label: &'static str,
}

/// The container a runtime process runs, read back from its labels.
pub fn adopted_from(found: &FoundRuntime) -> Result<Adopted, BadLabel> {
    let get = |label: &'static str| -> Result<String, BadLabel> {
        found
            .env
            .get(label)
            .filter(|value| !value.is_empty())
            .cloned()
            .ok_or(BadLabel { pid: found.pid, label })
    };
    let number = |label: &'static str| -> Result<u64, BadLabel> {
        get(label)?.parse().map_err(|_| BadLabel { pid: found.pid, label })
    };
    let address = get(labels::ADDRESS)?;
    address.parse::<SocketAddr>().map_err(|_| BadLabel { pid: found.pid, label: labels::ADDRESS })?;
    let spec = ContainerSpec {
        id: get(labels::CONTAINER_ID)?,
        action: ActionKey {
            namespace: get(labels::NAMESPACE)?,
            package: found.env.get(labels::PACKAGE).filter(|package| !package.is_empty()).cloned(),
            name: get(labels::ACTION)?,
            revision: get(labels::REVISION)?,
        },
        kind: get(labels::KIND)?,
        memory_mb: number(labels::MEMORY_MB)?,
        node: get(labels::NODE)?,
        slot: u32::try_from(number(labels::SLOT)?)
            .map_err(|_| BadLabel { pid: found.pid, label: labels::SLOT })?,
        // Local processes run no images; a blackbox action's code runs natively.
        image: None,
        placed_on: None,
    };
    Ok(Adopted { spec, address, host: None })
}

impl LocalProcesses {
    /// `owner` labels every process started, so that only this control plane (after a restart
    /// too) adopts them.
    pub fn new(runtime_bin: PathBuf, owner: impl Into<String>) -> Self {
        let owner = owner.into();
        let safe: String = owner.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
        Self {
            runtime_bin,
            labels_dir: std::env::temp_dir().join(format!("whisk-labels-{safe}")),
            owner,
            host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            children: Mutex::new(HashMap::new()),
        }
    }

    /// A port the kernel says is free now; the runtime binds it a moment later (loopback only, so
    /// the window is ours alone in practice).
    fn free_port(&self, id: &str) -> Result<u16, ClusterError> {
        TcpListener::bind(SocketAddr::new(self.host, 0))
            .and_then(|listener| listener.local_addr())
            .map(|address| address.port())
            .map_err(|source| ClusterError::NoPort { id: id.to_owned(), source })
    }

    async fn terminate(id: &str, runtime: Runtime) {
        match runtime {
            Runtime::Child(mut child) => {
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
            Runtime::Adopted(pid) => {
                // Not our child: whoever adopted the orphan reaps it; we watch it disappear.
                let _ = kill(pid, Signal::SIGTERM);
                let deadline = tokio::time::Instant::now() + STOP_GRACE;
                while kill(pid, None).is_ok() && tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                if kill(pid, None).is_ok() {
                    warn!(container = id, "adopted runtime ignored SIGTERM; killing it");
                    let _ = kill(pid, Signal::SIGKILL);
                }
            }
        }
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
            .env(labels::OWNER, &self.owner)
            .env(labels::CONTAINER_ID, &spec.id)
            .env(labels::KIND, &spec.kind)
            .env(labels::ADDRESS, &address)
            .envs(identity_labels(spec))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            // Warm containers outlive this server (a restart adopts them); shutdown stops them
            // explicitly unless told to keep them.
            .kill_on_drop(false)
            .spawn()
            .map_err(|source| ClusterError::Spawn { id: spec.id.clone(), source })?;
        info!(container = %spec.id, action = %spec.action, %address, pid = child.id(), "runtime started");
        self.children.lock().await.insert(spec.id.clone(), Runtime::Child(child));
        Ok(StartedContainer { address, host: None })
    }

    async fn relabel(&self, spec: &ContainerSpec) -> Result<(), ClusterError> {
        let failed =
            |error: std::io::Error| ClusterError::Relabel { id: spec.id.clone(), reason: error.to_string() };
        std::fs::create_dir_all(&self.labels_dir).map_err(failed)?;
        let text: String =
            identity_labels(spec).iter().map(|(key, value)| format!("{key}={value}\n")).collect();
        std::fs::write(self.labels_dir.join(format!("{}.env", spec.id)), text).map_err(failed)
    }

    /// Reaps runtimes that exited (crashed, killed by someone else) and reports them; they leave the
    /// map, so a later `stop` of one is an unknown id.
    async fn watch_lost(&self, lost: tokio::sync::mpsc::UnboundedSender<String>) {
        let mut checks = tokio::time::interval(EXIT_CHECK);
        checks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            checks.tick().await;
            let exited: Vec<(String, String)> = {
                let mut children = self.children.lock().await;
                let exited: Vec<(String, String)> = children
                    .iter_mut()
                    .filter_map(|(id, runtime)| {
                        let how = match runtime {
                            Runtime::Child(child) => match child.try_wait() {
                                Ok(Some(status)) => status.to_string(),
                                Ok(None) => return None,
                                Err(error) => format!("cannot be waited for: {error}"),
                            },
                            Runtime::Adopted(pid) if kill(*pid, None).is_err() => "gone".to_owned(),
                            Runtime::Adopted(_) => return None,
                        };
                        Some((id.clone(), how))
                    })
                    .collect();
                for (id, _) in &exited {
                    children.remove(id);
                }
                exited
            };
            for (id, how) in exited {
                warn!(container = %id, exit = %how, "runtime process exited on its own");
                if lost.send(id).is_err() {
                    return;
                }
            }
        }
    }

    async fn stop(&self, id: &str) -> Result<(), ClusterError> {
        let _ = std::fs::remove_file(self.labels_dir.join(format!("{id}.env")));
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

    async fn adopt(&self) -> Result<Vec<Adopted>, ClusterError> {
        let mut adopted = Vec::new();
        let mut children = self.children.lock().await;
        for mut found in owned_runtimes(&self.owner) {
            // Only the runtime itself: a process it started (an action) must never be taken for it.
            // A binary replaced since (an upgrade) shows as "<path> (deleted)".
            let exe = std::fs::read_link(format!("/proc/{}/exe", found.pid)).unwrap_or_default();
            let exe = exe.to_string_lossy();
            let ours = self.runtime_bin.to_string_lossy();
            if exe != ours && exe != format!("{ours} (deleted)") {
                continue;
            }
            // A specialised prewarmed process: its labels are in the file, not its environment.
            if let Some(id) = found.env.get(labels::CONTAINER_ID)
                && let Ok(text) = std::fs::read_to_string(self.labels_dir.join(format!("{id}.env")))
            {
                found.env.extend(parse_environ(text.replace('\n', "\0").as_bytes()));
            }
            match adopted_from(&found) {
                Ok(container) => {
                    info!(container = %container.spec.id, action = %container.spec.action, pid = found.pid,
                        address = %container.address, "runtime adopted");
                    children.insert(container.spec.id.clone(), Runtime::Adopted(Pid::from_raw(found.pid)));
                    adopted.push(container);
                }
                Err(error) => {
                    warn!(%error, "stopping a runtime that cannot be adopted");
                    Self::terminate("unreadable", Runtime::Adopted(Pid::from_raw(found.pid))).await;
                }
            }
        }
        Ok(adopted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(entries: &[(&str, &str)]) -> FoundRuntime {
        FoundRuntime {
            pid: 42,
            env: entries.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
        }
    }

    const LABELS: [(&str, &str); 11] = [
        (labels::OWNER, "127.0.0.1:3235"),
        (labels::CONTAINER_ID, "c1"),
        (labels::NAMESPACE, "guest"),
        (labels::PACKAGE, ""),
        (labels::ACTION, "hello"),
        (labels::REVISION, "r7"),
        (labels::KIND, "nodejs:20"),
        (labels::MEMORY_MB, "256"),
        (labels::NODE, "envoy-1"),
        (labels::SLOT, "3"),
        (labels::ADDRESS, "127.0.0.1:4001"),
    ];

    #[test]
    fn a_labelled_process_is_read_back_as_the_container_it_runs() {
        let adopted = adopted_from(&found(&LABELS)).unwrap();
        assert_eq!(adopted.address, "127.0.0.1:4001");
        assert_eq!(
            adopted.spec,
            ContainerSpec {
                id: "c1".into(),
                action: ActionKey {
                    namespace: "guest".into(),
                    package: None,
                    name: "hello".into(),
                    revision: "r7".into()
                },
                kind: "nodejs:20".into(),
                memory_mb: 256,
                node: "envoy-1".into(),
                slot: 3,
                image: None,
                placed_on: None,
            }
        );
        let mut packaged = LABELS;
        packaged[3] = (labels::PACKAGE, "utils");
        assert_eq!(adopted_from(&found(&packaged)).unwrap().spec.action.package.as_deref(), Some("utils"));
    }

    #[test]
    fn missing_or_bad_labels_are_refused() {
        for (index, bad) in [(1, ""), (7, "lots"), (9, "-1"), (10, "not-an-address")] {
            let mut labels = LABELS;
            labels[index].1 = bad;
            let label = labels[index].0;
            assert_eq!(adopted_from(&found(&labels)), Err(BadLabel { pid: 42, label }), "{label}={bad}");
        }
    }

    #[test]
    fn environ_is_nul_separated_key_values() {
        let env = parse_environ(b"A=1\0B=x=y\0junk\0\0");
        assert_eq!(env.get("A").map(String::as_str), Some("1"));
        assert_eq!(env.get("B").map(String::as_str), Some("x=y"));
        assert_eq!(env.len(), 2);
    }

    #[test]
    fn labelled_processes_are_found_by_their_owner_only() {
        let owner = format!("test-owner-{}", std::process::id());
        let mut mine =
            std::process::Command::new("sleep").arg("30").env(labels::OWNER, &owner).spawn().unwrap();
        let mut other =
            std::process::Command::new("sleep").arg("30").env(labels::OWNER, "someone-else").spawn().unwrap();
        // Until the child has exec'd, /proc shows the parent's environment: give it a moment.
        let mut found: Vec<i32> = Vec::new();
        for _ in 0..100 {
            found = owned_runtimes(&owner).into_iter().map(|runtime| runtime.pid).collect();
            if !found.is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let _ = (mine.kill(), other.kill(), mine.wait(), other.wait());
        assert_eq!(found, [i32::try_from(mine.id()).unwrap()]);
    }
}
