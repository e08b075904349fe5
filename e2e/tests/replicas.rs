//! One activation per container across Envoy replicas: two Envoys (each with two workers) in front
//! of one control plane, 32 clients on each, 5,000 invocations in all, at most 2 containers per
//! node. Shared data is per Envoy process, so the control plane gives each container to exactly one node (per-node endpoints);
//! our runtime refuses an overlapping `/run`, which would surface as an error here.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use e2e::client::{Client, control_containers, control_metrics, echo_until, metric, quantile};
use e2e::{Artifacts, GUEST_KEY, Options, Platform};

const SLOW_ECHO_JS: &str = "function main(p) { return new Promise(r => setTimeout(() => r({n: p.n}), 3)); }";
const CLIENTS_PER_REPLICA: usize = 32;
const INVOCATIONS: usize = 5_000;
/// Containers per Envoy node; the pool holds at most twice this.
const CAP_PER_NODE: usize = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_never_overlap_in_one_container() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = Options::for_test(dir.path(), "envoy-replica").unwrap();
    options.replicas = 2;
    options.xds_args = vec!["--max-containers-per-action".into(), CAP_PER_NODE.to_string()];
    let platform = Platform::start(options, Artifacts::from_workspace().unwrap()).unwrap();
    let clients =
        [Client::new(&platform.api_host_of(0), GUEST_KEY), Client::new(&platform.api_host_of(1), GUEST_KEY)];
    assert_eq!(clients[0].create_action("echo", "nodejs:20", SLOW_ECHO_JS).await.unwrap().status, 200);

    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for (replica, client) in clients.iter().enumerate() {
        for _ in 0..CLIENTS_PER_REPLICA {
            let echoes = echo_until(client.clone(), "echo", next.clone(), INVOCATIONS);
            tasks.push((replica, tokio::spawn(echoes)));
        }
    }
    let mut failures = Vec::new();
    let mut served = [0usize; 2];
    let mut latencies = Vec::new();
    for (replica, task) in tasks {
        let echoes = task.await.unwrap();
        served[replica] += echoes.served;
        latencies.extend(echoes.latencies);
        failures.extend(echoes.failures.into_iter().map(|failure| format!("{failure} via {replica}")));
    }
    eprintln!(
        "{INVOCATIONS} invocations over two replicas ({} and {} served): {} failed; latency p50 {:?}, p99 {:?}",
        served[0],
        served[1],
        failures.len(),
        quantile(&mut latencies, 0.5),
        quantile(&mut latencies, 0.99),
    );
    assert!(failures.is_empty(), "{} failed, e.g. {:?}", failures.len(), &failures[..failures.len().min(5)]);
    let (first, second) = (served[0], served[1]);
    assert_eq!(first + second, INVOCATIONS);
    assert!(first > 0 && second > 0, "both replicas served: {first} and {second}");

    // Each container belongs to one node: the per-node endpoint sets are disjoint.
    let containers = control_containers(&platform).await.unwrap();
    assert!(
        containers.len() <= 2 * CAP_PER_NODE,
        "{} containers, cap {}",
        containers.len(),
        2 * CAP_PER_NODE
    );
    let nodes: std::collections::BTreeSet<&str> =
        containers.iter().map(|c| c["node"].as_str().unwrap()).collect();
    assert_eq!(
        nodes,
        [platform.node_id_of(0).as_str(), platform.node_id_of(1).as_str()].into_iter().collect()
    );
    let page = control_metrics(&platform).await.unwrap();
    assert_eq!(metric(&page, "xds_whisk_containers_ready", "") as usize, containers.len());
}
