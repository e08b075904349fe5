//! `whisk-xds-padded`: the control server of `xds-server`, whose cluster manager also reports a
//! pool of padding containers at start-up, so that the scale benchmark can publish 10,000 actions
//! and 50,000 containers to Envoy on a machine that could never run them.
//!
//! The padding goes through the control plane's own restart recovery (`adopt`): the table, the
//! snapshots and the xDS pushes are the server's, exactly as for adopted containers. Only their
//! addresses are unreachable (`127.1.x.y:9`, where nothing listens), which is harmless because the
//! benchmark never invokes a padding action. Everything else (cold starts of the measured actions,
//! stops, the lost-container watch) is the local cluster manager's.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use tokio::sync::mpsc;
use xds_server::cluster::local::LocalProcesses;
use xds_server::cluster::{Adopted, ClusterError, ClusterManager, ContainerSpec, StartedContainer};
use xds_server::table::ActionKey;

/// Ids of padding containers start with this; the cluster manager has nothing to stop for them.
const PADDING_PREFIX: &str = "padding-";

#[derive(Debug, Parser)]
#[command(name = "whisk-xds-padded", about = "xds-server with padding containers, for the scale benchmark")]
struct Args {
    #[command(flatten)]
    server: xds_server::Config,
    /// Padding actions, each with `--padding-containers-per-action` containers.
    #[arg(long, default_value_t = 0)]
    padding_actions: usize,
    #[arg(long, default_value_t = 5)]
    padding_containers_per_action: usize,
    /// The Envoy node the padding is routed by.
    #[arg(long)]
    padding_node: String,
}

/// The local cluster manager plus the padding it reports once, at adoption.
struct Padded {
    local: LocalProcesses,
    padding: std::sync::Mutex<Vec<Adopted>>,
}

impl ClusterManager for Padded {
    async fn start(&self, spec: &ContainerSpec) -> Result<StartedContainer, ClusterError> {
        self.local.start(spec).await
    }

    async fn stop(&self, id: &str) -> Result<(), ClusterError> {
        if id.starts_with(PADDING_PREFIX) { Ok(()) } else { self.local.stop(id).await }
    }

    async fn stop_all(&self) {
        self.local.stop_all().await;
    }

    async fn adopt(&self) -> Result<Vec<Adopted>, ClusterError> {
        let mut adopted = self.local.adopt().await?;
        adopted.extend(std::mem::take(&mut *self.padding.lock().unwrap_or_else(|e| e.into_inner())));
        Ok(adopted)
    }

    async fn relabel(&self, spec: &ContainerSpec) -> Result<(), ClusterError> {
        self.local.relabel(spec).await
    }

    async fn watch_lost(&self, lost: mpsc::UnboundedSender<String>) {
        self.local.watch_lost(lost).await;
    }
}

/// `actions × per_action` containers on `node`, each at its own unreachable loopback address.
fn padding(actions: usize, per_action: usize, node: &str) -> Vec<Adopted> {
    (0..actions)
        .flat_map(|action| (0..per_action).map(move |slot| (action, slot)))
        .enumerate()
        .map(|(index, (action, slot))| Adopted {
            spec: ContainerSpec {
                id: format!("{PADDING_PREFIX}{index}"),
                action: ActionKey {
                    namespace: "padding".into(),
                    package: None,
                    name: format!("action-{action}"),
                    revision: "1".into(),
                },
                kind: "nodejs:20".into(),
                memory_mb: 1,
                node: node.to_owned(),
                slot: u32::try_from(slot).unwrap_or(u32::MAX),
                image: None,
                placed_on: None,
            },
            address: format!("127.1.{}.{}:9", index / 250, index % 250 + 1),
            host: None,
        })
        .collect()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    xds_server::init_tracing();
    let args = Args::parse();
    anyhow::ensure!(
        args.padding_actions * args.padding_containers_per_action <= 250 * 256,
        "too much padding"
    );
    let runtime_bin: PathBuf = args.server.runtime_bin.clone().context("--runtime-bin is required")?;
    let runtime_bin = std::fs::canonicalize(&runtime_bin).context("runtime binary")?;
    let owner = args.server.owner.clone().unwrap_or_else(|| args.server.control_listen.to_string());
    let cluster = Padded {
        local: LocalProcesses::new(runtime_bin, owner),
        padding: std::sync::Mutex::new(padding(
            args.padding_actions,
            args.padding_containers_per_action,
            &args.padding_node,
        )),
    };
    xds_server::run_with(args.server, cluster).await
}
