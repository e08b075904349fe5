//! A container a cold start just brought is claimed only by the Envoy worker whose cold start
//! brought it, for `--new-container-exclusive-ms`: the node acknowledges an endpoint update from
//! Envoy's main thread and each worker applies it on its own event loop a moment later, so another
//! worker could still be without the endpoint and route the container's request to another one.
//! Here the while is stretched to seconds, and each request's worker is known (a client's
//! keep-alive connection belongs to the worker that accepted it, which Envoy's per-worker listener
//! counters tell): the other worker's request waits for the while to end and then takes the
//! container, without a cold start of its own.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use e2e::client::{Client, control_containers};
use e2e::{Artifacts, GUEST_KEY, Options, Platform};
use serde_json::{Value, json};

const EXCLUSIVE: Duration = Duration::from_millis(3_000);
const PID_JS: &str = "function main() { return { pid: process.pid }; }";

/// Connections each of the ingress listener's workers accepted so far, by worker.
async fn accepted_by_worker(platform: &Platform) -> BTreeMap<String, u64> {
    let port = platform.api_host().rsplit(':').next().unwrap().to_owned();
    let filter = format!("^listener\\.127\\.0\\.0\\.1_{port}\\.worker_[0-9]+\\.downstream_cx_total$");
    let page = reqwest::get(format!("{}/stats?filter={filter}", platform.admin_url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    page.lines()
        .filter_map(|line| {
            let (name, value) = line.split_once(": ")?;
            let worker = name.split('.').find(|part| part.starts_with("worker_"))?;
            Some((worker.to_owned(), value.trim().parse().ok()?))
        })
        .collect()
}

/// A client with a connection of its own, and the worker that accepted it.
async fn connected_client(platform: &Platform) -> (Client, String) {
    for _ in 0..20 {
        let before = accepted_by_worker(platform).await;
        let client = Client::new(&platform.api_host(), GUEST_KEY);
        assert_eq!(client.get("/api/v1/namespaces/_/actions?limit=1").await.unwrap().status, 200);
        let after = accepted_by_worker(platform).await;
        let new: Vec<&String> = after
            .iter()
            .filter(|(worker, n)| before.get(*worker) < Some(*n))
            .map(|(worker, _)| worker)
            .collect();
        if let [worker] = new.as_slice() {
            return (client, (*worker).clone());
        }
    }
    panic!("no connection could be told apart: {:?}", accepted_by_worker(platform).await);
}

async fn pid(client: &Client, params: Value) -> u64 {
    let reply = client.invoke("pid", &params, true).await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.body["pid"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_container_is_its_worker_s_alone_for_a_while_and_others_wait_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = Options::for_test(dir.path(), "envoy-new-containers").unwrap();
    options.envoy_concurrency = 2;
    options.xds_args = vec!["--new-container-exclusive-ms".into(), EXCLUSIVE.as_millis().to_string()];
    let platform = Platform::start(options, Artifacts::from_workspace().unwrap()).unwrap();
    let creator = Client::new(&platform.api_host(), GUEST_KEY);
    assert_eq!(creator.create_action("pid", "nodejs:20", PID_JS).await.unwrap().status, 200);

    // One client on each worker.
    let mut by_worker: BTreeMap<String, Client> = BTreeMap::new();
    while by_worker.len() < 2 {
        let (client, worker) = connected_client(&platform).await;
        by_worker.entry(worker).or_insert(client);
    }
    let clients: Vec<Client> = by_worker.into_values().collect();
    let (first, second) = (&clients[0], &clients[1]);

    // The first worker's cold start brings a container; the second worker may not take it yet,
    // although it is free, and waits for the while to end rather than start one of its own.
    let first_pid = pid(first, json!({})).await;
    let brought = Instant::now();
    let asked = Instant::now();
    let second_pid = pid(second, json!({})).await;
    let waited = asked.elapsed();
    let left = EXCLUSIVE.saturating_sub(asked - brought);
    assert_eq!(second_pid, first_pid, "the other worker started a container of its own");
    assert!(
        waited + Duration::from_millis(150) >= left,
        "the other worker took the new container after {waited:?}, {left:?} before the while's end"
    );
    assert!(waited < left + Duration::from_secs(2), "served {waited:?} after asking");
    let started = Instant::now();
    assert_eq!(pid(first, json!({})).await, first_pid);
    assert!(started.elapsed() < Duration::from_secs(1), "a warm invoke on the first worker");
    let containers = control_containers(&platform).await.unwrap();
    let of_pid = containers.iter().filter(|c| c["action"].as_str().is_some_and(|a| a.contains("/pid@")));
    assert_eq!(of_pid.count(), 1, "no cold start for the waiting worker: {containers:?}");
}
