//! The xDS control server and control plane of the platform.
//!
//! It serves Envoy its whole configuration by ADS ([`ads`], state of the world or incremental with
//! [`delta`], built by [`snapshot`]), starts action
//! containers through a cluster manager ([`cluster`]) when the filter asks for a cold start
//! ([`api`], [`plane`]), and keeps the container table ([`table`]) that every Envoy's endpoints
//! are derived from.

pub mod ads;
pub mod api;
pub mod cluster;
pub mod collector;
pub mod delta;
pub mod gc;
pub mod metrics;
pub mod placement;
pub mod plane;
pub mod simulation;
pub mod snapshot;
pub mod table;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tracing::info;
use whisk_contract::FilterConfig;

use crate::ads::Ads;
use crate::cluster::kube::{KubeArgs, KubeCluster};
use crate::cluster::local::LocalProcesses;
use crate::cluster::{ClusterManager, ClusterManagerKind};
use crate::plane::{ControlPlane, PlaneConfig};
use crate::snapshot::Topology;

/// Owner of the action pods when `--owner` is not given.
const DEFAULT_KUBE_OWNER: &str = "whisk";

/// The server's configuration, from flags and environment.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "xds-server", about = "xDS control server and control plane")]
pub struct Config {
    /// gRPC address Envoy connects to for ADS.
    #[arg(long, env = "WHISK_XDS_LISTEN", default_value = "127.0.0.1:3236")]
    pub xds_listen: SocketAddr,
    /// HTTP address of the control API (cold starts, metrics).
    #[arg(long, env = "WHISK_CONTROL_LISTEN", default_value = "127.0.0.1:3235")]
    pub control_listen: SocketAddr,
    /// Envoy's ingress listener address (a node's `ingress_address` metadata overrides it).
    #[arg(long, env = "WHISK_INGRESS", default_value = "127.0.0.1:3233")]
    pub ingress: SocketAddr,
    /// The management API's address.
    #[arg(long, env = "WHISK_MANAGEMENT_API", default_value = "127.0.0.1:3234")]
    pub management_api: SocketAddr,
    /// The compiled filter module Envoy loads.
    #[arg(long, env = "WHISK_FILTER_WASM")]
    pub filter_wasm: PathBuf,
    /// The local runtime binary (`action-runtime`); required by the local cluster manager.
    #[arg(long, env = "WHISK_RUNTIME_BIN")]
    pub runtime_bin: Option<PathBuf>,
    /// Shared secret of the internal endpoints.
    #[arg(long, env = "WHISK_INTERNAL_TOKEN", hide_env_values = true)]
    pub internal_token: String,
    /// `api_host` given to actions (the public ingress URL).
    #[arg(long, env = "WHISK_API_HOST", default_value = "http://127.0.0.1:3233")]
    pub api_host: String,
    /// How long a cold start waits for Envoy to acknowledge the new endpoint, in milliseconds.
    #[arg(long, env = "WHISK_ACK_TIMEOUT_MS", default_value_t = 5_000)]
    pub ack_timeout_ms: u64,
    /// What starts containers: local `action-runtime` processes or Kubernetes pods.
    #[arg(long, env = "WHISK_CLUSTER_MANAGER", value_enum, default_value_t = ClusterManagerKind::Local)]
    pub cluster_manager: ClusterManagerKind,
    #[command(flatten)]
    pub kube: KubeArgs,
    /// Containers the pool may hold in all.
    #[arg(long, env = "WHISK_MAX_CONTAINERS", default_value_t = 64)]
    pub max_containers: usize,
    /// Containers one action revision may hold on one Envoy node (`--max-containers` bounds the total).
    #[arg(long, env = "WHISK_MAX_CONTAINERS_PER_ACTION", default_value_t = 16)]
    pub max_containers_per_action: usize,
    /// Memory of the machine the local cluster manager starts containers on, in MB; a full pool
    /// reclaims idle containers of other actions. On Kubernetes the nodes' allocatable memory
    /// replaces it as soon as the node watch has listed them (`--max-containers` still caps the pool).
    #[arg(long, env = "WHISK_POOL_MEMORY_MB", default_value_t = 16_384)]
    pub pool_memory_mb: u64,
    /// A free container unused this long is marked (OpenWhisk's default: 10 minutes).
    #[arg(long, env = "WHISK_IDLE_TIMEOUT_MS", default_value_t = 600_000)]
    pub idle_timeout_ms: u64,
    /// A marked container unused this long after its node confirmed the mark is swept.
    #[arg(long, env = "WHISK_GC_GRACE_MS", default_value_t = 30_000)]
    pub gc_grace_ms: u64,
    /// While the pool is fragmented, free containers on the nodes to drain unused this long are marked.
    #[arg(long, env = "WHISK_COMPACT_IDLE_MS", default_value_t = 180_000)]
    pub compact_idle_ms: u64,
    /// How often the collector runs a round of marking.
    #[arg(long, env = "WHISK_GC_INTERVAL_MS", default_value_t = 10_000)]
    pub gc_interval_ms: u64,
    /// Labels every container this server starts, so that after a restart it adopts its own
    /// containers and no other platform's on the same machine or namespace (default: the control
    /// listen address for local processes; `whisk` on Kubernetes, where that address changes).
    #[arg(long, env = "WHISK_OWNER")]
    pub owner: Option<String>,
    /// Leave the containers running on shutdown, for the next run to adopt (a rolling update on
    /// Kubernetes); by default shutdown stops them.
    #[arg(long, env = "WHISK_KEEP_CONTAINERS_ON_EXIT")]
    pub keep_containers_on_exit: bool,
    /// Prewarmed containers to keep per runtime kind, e.g. `nodejs:20=2,python:3=1`: a cold start of
    /// that kind then costs only `/init`.
    #[arg(long, env = "WHISK_PREWARM", value_delimiter = ',', value_parser = prewarm_entry)]
    pub prewarm: Vec<(String, usize)>,
    /// Memory of a prewarmed container, in MB: it serves actions whose limit is at most this.
    #[arg(long, env = "WHISK_PREWARM_MEMORY_MB", default_value_t = 256)]
    pub prewarm_memory_mb: u64,
    /// How often each filter worker reports its containers' use (the filter's configuration).
    #[arg(long, env = "WHISK_USAGE_REPORT_PERIOD_MS", default_value_t = 1_000)]
    pub usage_report_period_ms: u64,
    /// How long an activation record may wait in a filter worker to be stored with later ones (the
    /// filter's configuration): each store is an HTTP call through Envoy, costing it far more than
    /// the records it carries.
    #[arg(long, env = "WHISK_RECORD_BATCH_MS", default_value_t = 50)]
    pub record_batch_ms: u64,
    /// How long a container that just joined an Envoy's pool is claimed only by the filter worker
    /// whose cold start brought it (the filter's configuration): Envoy's other workers apply the new
    /// endpoint each on its own event loop, a few milliseconds after the node acknowledged it, and
    /// until then would send the container's requests to another one.
    #[arg(long, env = "WHISK_NEW_CONTAINER_EXCLUSIVE_MS", default_value_t = 50)]
    pub new_container_exclusive_ms: u64,
    /// Longest a client waits on a blocking invoke, in milliseconds (OpenWhisk: 60 s); an action
    /// with a longer time limit answers 202 with its activation id when it runs past it.
    #[arg(long, env = "WHISK_BLOCKING_WAIT_MS", default_value_t = 60_000)]
    pub blocking_wait_ms: u64,
    /// A routable container that no usage report of its Envoy node names for this long is held by
    /// no filter (its Envoy is gone, or restarted and forgot it; or it was adopted and its cold
    /// start died with the previous server): it is removed and stopped. Default: ten usage report
    /// periods, at least 30 s.
    #[arg(long, env = "WHISK_ORPHAN_TIMEOUT_MS")]
    pub orphan_timeout_ms: Option<u64>,
    /// EDS clusters the containers are spread over (by a hash of their address): a container
    /// change re-sends one cluster's endpoints, so with 50,000 containers, 256 clusters make a
    /// change cost about 200 endpoints instead of 50,000 (decision 0009). 1 keeps the single
    /// `whisk_containers` cluster.
    #[arg(long, env = "WHISK_CONTAINER_CLUSTERS", default_value_t = 1)]
    pub container_clusters: u32,
    /// Delta xDS Envoys get every container as its own LEDS resource (`LbEndpoint`, named
    /// `xdstp://whisk/envoy.config.endpoint.v3.LbEndpoint/<cluster>/<container id>`), and the
    /// containers clusters' assignments only name those collections: a container change pushes
    /// that one endpoint, whatever the pool's size (decision 0010). State-of-the-world Envoys keep
    /// whole assignments.
    #[arg(long, env = "WHISK_LEDS")]
    pub leds: bool,
}

/// Runs the server with the configured cluster manager (see [`run_with`]).
pub async fn run(config: Config) -> anyhow::Result<()> {
    match config.cluster_manager {
        ClusterManagerKind::Local => {
            let runtime_bin = config
                .runtime_bin
                .as_ref()
                .context("--runtime-bin (WHISK_RUNTIME_BIN) is required by the local cluster manager")?;
            let runtime_bin = std::fs::canonicalize(runtime_bin)
                .with_context(|| format!("runtime binary {}", runtime_bin.display()))?;
            let owner = config.owner.clone().unwrap_or_else(|| config.control_listen.to_string());
            run_with(config, LocalProcesses::new(runtime_bin, owner)).await
        }
        ClusterManagerKind::Kubernetes => {
            // Pods outlive the server's pod IP, so the owner cannot default to the listen address.
            let owner = config.owner.clone().unwrap_or_else(|| DEFAULT_KUBE_OWNER.to_owned());
            let cluster =
                KubeCluster::connect(&config.kube, &owner).await.context("Kubernetes cluster manager")?;
            run_with(config, cluster).await
        }
    }
}

/// Runs the server with `cluster` until SIGTERM or SIGINT, then stops every container it started.
pub async fn run_with<C: ClusterManager>(config: Config, cluster: C) -> anyhow::Result<()> {
    let filter_wasm = std::fs::canonicalize(&config.filter_wasm)
        .with_context(|| format!("filter module {}", config.filter_wasm.display()))?;
    let topology = Arc::new(Topology {
        ingress: config.ingress,
        management_api: config.management_api,
        control_api: config.control_listen,
        filter_wasm,
        filter_config: FilterConfig {
            node_id: String::new(),
            internal_token: config.internal_token.clone(),
            api_host: config.api_host.clone(),
            max_payload_bytes: 1_048_576,
            resolve_timeout_ms: 5_000,
            cold_start_timeout_ms: 70_000,
            flush_period_ms: 10,
            record_batch_ms: config.record_batch_ms,
            max_waiting_per_action: 1_000,
            max_wait_ms: 60_000,
            waiters_per_cold_start: 2,
            resolve_cache_max_age_ms: 30_000,
            usage_report_period_ms: config.usage_report_period_ms,
            max_blocking_wait_ms: config.blocking_wait_ms,
            container_clusters: config.container_clusters.max(1),
            new_container_exclusive_ms: config.new_container_exclusive_ms,
        },
        leds: config.leds,
    });

    let metrics = Arc::new(metrics::Metrics::default());
    let mut registry = Registry::with_prefix("xds");
    metrics.register(&mut registry);
    let plane = Arc::new(ControlPlane::new(
        cluster,
        PlaneConfig {
            management_url: format!("http://{}", config.management_api),
            internal_token: config.internal_token.clone(),
            ack_timeout: Duration::from_millis(config.ack_timeout_ms),
            max_containers: config.max_containers,
            max_containers_per_action: config.max_containers_per_action,
            gc: gc::GcConfig {
                idle_timeout_ms: config.idle_timeout_ms,
                grace_ms: config.gc_grace_ms,
                compact_idle_ms: config.compact_idle_ms,
            },
            capacities: vec![placement::Node::new(
                cluster_node_name(config.cluster_manager),
                config.pool_memory_mb,
            )],
            orphan_timeout: Duration::from_millis(config.orphan_timeout_ms.unwrap_or(
                // Ten report periods, at least 30 s: a node that is up names its containers every period.
                (config.usage_report_period_ms * 10).max(30_000),
            )),
            prewarm: config.prewarm.clone(),
            prewarm_memory_mb: config.prewarm_memory_mb,
        },
        metrics.clone(),
    ));

    // Before Envoy can connect: its first snapshot must already hold the warm containers it routes
    // to, or a restart would empty its endpoints.
    let adopted = plane.adopt().await.context("adopting the running containers")?;
    info!(adopted, "container table rebuilt from the running containers");

    let ads = Ads::new(topology, plane.subscribe(), plane.acks(), metrics).into_service();
    let xds_listener = TcpListener::bind(config.xds_listen).await.context("xDS listen address")?;
    let control_listener =
        TcpListener::bind(config.control_listen).await.context("control listen address")?;
    info!(xds = %config.xds_listen, control = %config.control_listen, "xds-server listening");

    let (stop_sender, stop) = tokio::sync::watch::channel(false);
    let grpc = {
        let mut stop = stop.clone();
        tonic::transport::Server::builder().add_service(ads).serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(xds_listener),
            async move {
                let _ = stop.wait_for(|stopped| *stopped).await;
            },
        )
    };
    let api_state =
        Arc::new(api::ApiState { plane: plane.clone(), registry, internal_token: config.internal_token });
    let http = {
        let mut stop = stop.clone();
        axum::serve(control_listener, api::router(api_state)).with_graceful_shutdown(async move {
            let _ = stop.wait_for(|stopped| *stopped).await;
        })
    };
    let refill = {
        let (plane, mut stop) = (plane.clone(), stop.clone());
        async move {
            let mut rounds = tokio::time::interval(Duration::from_millis(200));
            rounds.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = rounds.tick() => plane.refill_stems().await,
                    _ = stop.wait_for(|stopped| *stopped) => break,
                }
            }
        }
    };
    let collector = {
        let (plane, mut stop) = (plane.clone(), stop.clone());
        let period = Duration::from_millis(config.gc_interval_ms.max(10));
        async move {
            let mut rounds = tokio::time::interval(period);
            rounds.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = rounds.tick() => plane.collect().await,
                    _ = stop.wait_for(|stopped| *stopped) => break,
                }
            }
        }
    };
    let lost = until_stopped(plane.follow_lost(), stop.clone());
    let machines = until_stopped(plane.follow_machines(), stop.clone());
    let signal = async {
        shutdown_signal().await;
        info!("shutting down: stopping containers");
        let _ = stop_sender.send(true);
    };
    let (grpc, http, (), (), (), (), ()) =
        tokio::join!(grpc, http, signal, collector, refill, lost, machines);
    if config.keep_containers_on_exit {
        info!("leaving the containers running for the next run to adopt");
    } else {
        plane.shutdown().await;
    }
    grpc.context("xDS server")?;
    http.context("control API")?;
    Ok(())
}

/// Runs `work` until it ends or the server stops.
async fn until_stopped(work: impl Future<Output = ()>, mut stop: tokio::sync::watch::Receiver<bool>) {
    tokio::select! {
        () = work => {},
        _ = stop.wait_for(|stopped| *stopped) => {},
    }
}

/// `kind=count` of `--prewarm`.
fn prewarm_entry(value: &str) -> Result<(String, usize), String> {
    let (kind, count) = value.split_once('=').ok_or_else(|| format!("{value:?} is not kind=count"))?;
    let count = count.parse().map_err(|_| format!("{count:?} is not a count"))?;
    if kind.is_empty() {
        return Err(format!("{value:?} names no kind"));
    }
    Ok((kind.to_owned(), count))
}

/// The placement node the configured cluster manager offers: this machine, or (until node-level
/// placement reads the cluster's nodes) the cluster as one pool.
fn cluster_node_name(kind: ClusterManagerKind) -> &'static str {
    match kind {
        ClusterManagerKind::Local => "local",
        ClusterManagerKind::Kubernetes => "cluster",
    }
}

/// Logs with `tracing` to stderr, at the level `RUST_LOG` says (default `info`).
pub fn init_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prewarm_entries_are_kind_equals_count() {
        assert_eq!(prewarm_entry("nodejs:20=2"), Ok(("nodejs:20".to_owned(), 2)));
        assert!(prewarm_entry("nodejs:20").is_err());
        assert!(prewarm_entry("=2").is_err());
        assert!(prewarm_entry("python:3=many").is_err());
    }
}
