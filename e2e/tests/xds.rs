//! The xDS server against real Envoy, in both ADS variants (state of the world and delta): everything
//! pushed is accepted (read back from Envoy's admin `/config_dump` and `/clusters`), a change of the
//! container table reaches Envoy's endpoints, and a resource Envoy rejects is NACKed, logged and counted
//! once, not pushed again in a loop, while the server keeps serving the other resource types. Delta
//! only: a container change pushes only the endpoints, a reconnecting Envoy is not sent again what it
//! holds, and a SotW and a delta Envoy serve the same action side by side. With LEDS (decision 0010),
//! containers come and go as single resources, also across a server restart and beside a SotW Envoy.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use e2e::client::{
    Client, control_containers, control_metrics, envoy_cluster_hosts, metric, remove_container,
};
use e2e::{Artifacts, Delivery, GUEST_KEY, Options, Platform};
use serde_json::{Value, json};

async fn admin(platform: &Platform, path: &str) -> Value {
    reqwest::get(format!("{}{path}", platform.admin_url())).await.unwrap().json().await.unwrap()
}

/// The config dump of one type (`ClustersConfigDump`, `ListenersConfigDump`, …).
fn dump_of<'a>(dump: &'a Value, kind: &str) -> &'a Value {
    dump["configs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|config| config["@type"].as_str().is_some_and(|t| t.ends_with(kind)))
        .unwrap_or_else(|| panic!("no {kind} in the config dump"))
}

/// The addresses Envoy routes to in cluster `name`.
async fn hosts(platform: &Platform, name: &str) -> Vec<String> {
    envoy_cluster_hosts(platform, name).await.unwrap()
}

fn variant(delta: bool) -> &'static str {
    if delta { "delta" } else { "sotw" }
}

fn options(dir: &Path, node_id: &str, delta: bool) -> Options {
    let mut options = Options::for_test(dir, node_id).unwrap();
    options.delta_xds = delta;
    options
}

/// Resources pushed of `kind` (listener, cluster, endpoint) in `variant`.
fn pushed_resources(page: &str, kind: &str, variant: &str) -> f64 {
    metric(page, "xds_whisk_xds_pushed_resources_total", &format!("type=\"{kind}\",variant=\"{variant}\""))
}

/// Bytes pushed of `kind` (listener, cluster, endpoint) in `variant`.
fn pushed_bytes(page: &str, kind: &str, variant: &str) -> f64 {
    metric(page, "xds_whisk_xds_pushed_bytes_total", &format!("type=\"{kind}\",variant=\"{variant}\""))
}

async fn containers(platform: &Platform) -> Vec<Value> {
    control_containers(platform).await.unwrap()
}

/// Envoy holds the four clusters, all active, and the listener, active without error.
async fn assert_everything_accepted(platform: &Platform) {
    assert_everything_accepted_with(platform, 1).await;
}

/// The same with the containers spread over `container_clusters` clusters.
async fn assert_everything_accepted_with(platform: &Platform, container_clusters: u32) {
    let dump = admin(platform, "/config_dump").await;
    let clusters = dump_of(&dump, "ClustersConfigDump");
    let mut names: Vec<&str> = clusters["dynamic_active_clusters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["cluster"]["name"].as_str().unwrap())
        .collect();
    names.sort_unstable();
    let mut expected = whisk_contract::clusters::all_containers(container_clusters);
    expected.extend(["whisk_control_plane", "whisk_ingress", "whisk_management_api"].map(str::to_owned));
    expected.sort_unstable();
    assert_eq!(names, expected);
    assert!(clusters.get("dynamic_warming_clusters").is_none_or(|w| w.as_array().is_none_or(Vec::is_empty)));
    let listeners = dump_of(&dump, "ListenersConfigDump")["dynamic_listeners"].as_array().unwrap();
    assert_eq!(listeners.len(), 1, "{listeners:?}");
    assert!(listeners[0].get("active_state").is_some(), "{:?}", listeners[0]);
    assert!(listeners[0].get("error_state").is_none(), "{:?}", listeners[0]);
}

/// A cold start adds the container to Envoy's endpoints, a retirement removes it.
async fn assert_table_changes_reach_envoy(platform: &Platform) {
    assert!(hosts(platform, "whisk_containers").await.is_empty());
    let client = Client::new(&platform.api_host(), GUEST_KEY);
    assert_eq!(
        client.create_action("echo", "nodejs:20", "function main(p) { return p; }").await.unwrap().status,
        200
    );
    assert_eq!(client.invoke("echo", &json!({}), true).await.unwrap().status, 200);
    let table = containers(platform).await;
    let addresses: Vec<String> = table.iter().map(|c| c["address"].as_str().unwrap().to_owned()).collect();
    assert_eq!(hosts(platform, "whisk_containers").await, addresses);

    let id = table[0]["id"].as_str().unwrap();
    assert_eq!(remove_container(platform, id).await.unwrap(), 204);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !hosts(platform, "whisk_containers").await.is_empty() {
        assert!(Instant::now() < deadline, "the retired container is still an endpoint");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn accepted_and_table_changes_reach_envoy(delta: bool) {
    let dir = tempfile::tempdir().unwrap();
    let platform =
        Platform::start(options(dir.path(), "envoy-xds", delta), Artifacts::from_workspace().unwrap())
            .unwrap();
    assert_everything_accepted(&platform).await;
    assert_table_changes_reach_envoy(&platform).await;
    let page = control_metrics(&platform).await.unwrap();
    assert_eq!(metric(&page, "xds_whisk_xds_nacks_total", ""), 0.0);
    // The bootstrap picked the variant: every push went out in it.
    for kind in ["listener", "cluster", "endpoint"] {
        assert!(pushed_resources(&page, kind, variant(delta)) >= 1.0, "{kind}: {page}");
        assert_eq!(pushed_resources(&page, kind, variant(!delta)), 0.0, "{kind}: {page}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_pushed_resource_is_accepted_and_table_changes_reach_envoy() {
    accepted_and_table_changes_reach_envoy(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_every_pushed_resource_is_accepted_and_table_changes_reach_envoy() {
    accepted_and_table_changes_reach_envoy(true).await;
}

async fn rejected_listener_is_nacked_once(delta: bool) {
    let dir = tempfile::tempdir().unwrap();
    // A filter module Envoy cannot load makes the listener invalid.
    let mut artifacts = Artifacts::from_workspace().unwrap();
    let broken = dir.path().join("broken.wasm");
    std::fs::write(&broken, b"\0asm this is not a wasm module").unwrap();
    artifacts.filter_wasm = broken;
    let platform = Platform::start_unready(options(dir.path(), "envoy-nack", delta), artifacts).unwrap();

    let deadline = Instant::now() + Duration::from_secs(20);
    let page = loop {
        let page = control_metrics(&platform).await.unwrap_or_default();
        if metric(&page, "xds_whisk_xds_nacks_total", "") >= 1.0 {
            break page;
        }
        assert!(Instant::now() < deadline, "no NACK: {page}\n{}", platform.logs(20));
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let listener_pushes = metric(&page, "xds_whisk_xds_pushes_total", "listener");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let later = control_metrics(&platform).await.unwrap();
    assert_eq!(metric(&later, "xds_whisk_xds_nacks_total", ""), 1.0, "NACKed once: {later}");
    assert_eq!(metric(&later, "xds_whisk_xds_pushes_total", "listener"), listener_pushes, "no push loop");
    assert_eq!(pushed_resources(&later, "listener", variant(delta)), listener_pushes, "{later}");
    assert!(platform.logs(200).contains("Envoy rejected a push"), "the NACK is logged with Envoy's detail");

    // Envoy kept the clusters (ACKed) and shows the listener's error; the server still answers.
    let dump = admin(&platform, "/config_dump").await;
    let clusters = dump_of(&dump, "ClustersConfigDump")["dynamic_active_clusters"].as_array().unwrap().len();
    assert_eq!(clusters, 4);
    let listeners = dump_of(&dump, "ListenersConfigDump")["dynamic_listeners"].as_array().unwrap();
    assert!(
        listeners.iter().all(|l| l.get("active_state").is_none() && l.get("error_state").is_some()),
        "{listeners:?}"
    );
    let health = reqwest::get(format!("{}/health", platform.control_url())).await.unwrap();
    assert_eq!(health.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_listener_is_nacked_once_and_the_rest_is_served() {
    rejected_listener_is_nacked_once(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_a_rejected_listener_is_nacked_once_and_the_rest_is_served() {
    rejected_listener_is_nacked_once(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delta_container_change_pushes_only_the_endpoints() {
    let dir = tempfile::tempdir().unwrap();
    let platform =
        Platform::start(options(dir.path(), "envoy-delta", true), Artifacts::from_workspace().unwrap())
            .unwrap();
    let client = Client::new(&platform.api_host(), GUEST_KEY);
    for name in ["first", "second"] {
        let created =
            client.create_action(name, "nodejs:20", "function main(p) { return p; }").await.unwrap();
        assert_eq!(created.status, 200);
    }
    assert_eq!(client.invoke("first", &json!({}), true).await.unwrap().status, 200);
    let before = control_metrics(&platform).await.unwrap();
    // A cold start answers only after this node ACKed the endpoints holding the new container.
    assert_eq!(client.invoke("second", &json!({}), true).await.unwrap().status, 200);
    let after = control_metrics(&platform).await.unwrap();

    let delta = |f: fn(&str, &str, &str) -> f64, kind| f(&after, kind, "delta") - f(&before, kind, "delta");
    assert_eq!(delta(pushed_resources, "endpoint"), 1.0, "{after}");
    assert_eq!(delta(pushed_resources, "listener"), 0.0, "{after}");
    assert_eq!(delta(pushed_resources, "cluster"), 0.0, "{after}");
    let endpoint_bytes = delta(pushed_bytes, "endpoint");
    let static_bytes = pushed_bytes(&after, "listener", "delta") + pushed_bytes(&after, "cluster", "delta");
    eprintln!("one container change: {endpoint_bytes} bytes pushed; listener and clusters: {static_bytes}");
    assert!(endpoint_bytes > 0.0 && endpoint_bytes < static_bytes / 4.0, "{after}");
    assert_eq!(hosts(&platform, "whisk_containers").await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnecting_delta_envoy_is_not_sent_what_it_holds() {
    let dir = tempfile::tempdir().unwrap();
    let mut platform =
        Platform::start(options(dir.path(), "envoy-redelta", true), Artifacts::from_workspace().unwrap())
            .unwrap();
    let client = Client::new(&platform.api_host(), GUEST_KEY);
    assert_eq!(
        client.create_action("echo", "nodejs:20", "function main(p) { return p; }").await.unwrap().status,
        200
    );
    // Versions are hashes of the resources: the restarted server builds the same listener and
    // clusters, Envoy declares it holds them, and only the endpoints (now another set) go out.
    platform.restart_xds().unwrap();
    assert_eq!(client.invoke("echo", &json!({}), true).await.unwrap().status, 200);
    let page = control_metrics(&platform).await.unwrap();
    assert_eq!(pushed_resources(&page, "listener", "delta"), 0.0, "{page}");
    assert_eq!(pushed_resources(&page, "cluster", "delta"), 0.0, "{page}");
    assert!(pushed_resources(&page, "endpoint", "delta") >= 1.0, "{page}");
    assert_everything_accepted(&platform).await;
}

/// Decision 0010: with LEDS, containers come and go as single resources, an empty collection does
/// not keep its cluster warming, and a restarted server brings a reconnecting Envoy to the table
/// it rebuilt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leds_containers_come_and_go_and_survive_a_server_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = options(dir.path(), "envoy-leds", true);
    options.xds_args = vec!["--leds".into()];
    let started = Instant::now();
    let mut platform = Platform::start(options, Artifacts::from_workspace().unwrap()).unwrap();
    // The empty collection is answered at once: no initial fetch timeout (15 s) holds Envoy back.
    assert!(started.elapsed() < Duration::from_secs(10), "ready after {:?}", started.elapsed());
    assert_everything_accepted(&platform).await;
    assert_table_changes_reach_envoy(&platform).await;

    // (The retired container's action is left alone: the filter still counts it as warm.)
    let client = Client::new(&platform.api_host(), GUEST_KEY);
    let code = "function main(p) { return {n: p.n}; }";
    for name in ["second", "third"] {
        assert_eq!(client.create_action(name, "nodejs:20", code).await.unwrap().status, 200);
    }
    assert_eq!(client.invoke("second", &json!({"n": 1}), true).await.unwrap().status, 200);
    let addresses = |table: Vec<Value>| -> Vec<String> {
        let mut addresses: Vec<String> =
            table.iter().map(|c| c["address"].as_str().unwrap().to_owned()).collect();
        addresses.sort();
        addresses
    };
    assert_eq!(hosts(&platform, "whisk_containers").await, addresses(containers(&platform).await));

    // The restarted server adopts the running container; the reconnecting Envoy keeps routing to
    // it, and a cold start after the restart reaches Envoy as before.
    platform.restart_xds().unwrap();
    for name in ["second", "third"] {
        let reply = client.invoke(name, &json!({"n": 2}), true).await.unwrap();
        assert_eq!((reply.status, reply.body), (200, json!({"n": 2})), "{name}");
    }
    let table = containers(&platform).await;
    assert_eq!(table.len(), 2, "{table:?}");
    assert_eq!(hosts(&platform, "whisk_containers").await, addresses(table));
    let page = control_metrics(&platform).await.unwrap();
    assert_eq!(metric(&page, "xds_whisk_xds_nacks_total", ""), 0.0, "{page}");
    assert_eq!(pushed_resources(&page, "listener", "delta"), 0.0, "held across the restart: {page}");
    eprintln!("LEDS resources pushed after the restart: {}", pushed_resources(&page, "lb_endpoint", "delta"));
    assert_everything_accepted(&platform).await;
}

/// A SotW and a delta Envoy in front of one control plane; with `leds`, the delta one gets its
/// containers as LEDS resources while the SotW one keeps whole assignments.
async fn a_sotw_and_a_delta_envoy_serve_the_same_action_with(leds: bool) {
    let dir = tempfile::tempdir().unwrap();
    let mut options = options(dir.path(), if leds { "envoy-mixed-leds" } else { "envoy-mixed" }, false);
    options.replicas = 2;
    options.delta_replicas = vec![false, true];
    if leds {
        options.xds_args = vec!["--leds".into()];
    }
    let platform = Platform::start(options, Artifacts::from_workspace().unwrap()).unwrap();
    let clients =
        [Client::new(&platform.api_host_of(0), GUEST_KEY), Client::new(&platform.api_host_of(1), GUEST_KEY)];
    let code = "function main(p) { return {n: p.n}; }";
    assert_eq!(clients[0].create_action("echo", "nodejs:20", code).await.unwrap().status, 200);
    for n in 0..10 {
        for client in &clients {
            let reply = client.invoke("echo", &json!({ "n": n }), true).await.unwrap();
            assert_eq!((reply.status, reply.body.clone()), (200, json!({ "n": n })));
        }
    }
    // Each Envoy got its own container (per-node endpoints) by its own variant.
    let nodes: BTreeSet<String> =
        containers(&platform).await.iter().map(|c| c["node"].as_str().unwrap().to_owned()).collect();
    assert_eq!(nodes, [platform.node_id_of(0), platform.node_id_of(1)].into_iter().collect());
    let page = control_metrics(&platform).await.unwrap();
    assert!(pushed_resources(&page, "endpoint", "sotw") >= 2.0, "{page}");
    if leds {
        // The delta Envoy's assignment went once; its container came as a LEDS resource.
        assert_eq!(pushed_resources(&page, "endpoint", "delta"), 1.0, "{page}");
        assert_eq!(pushed_resources(&page, "lb_endpoint", "delta"), 1.0, "{page}");
        assert_eq!(pushed_resources(&page, "lb_endpoint", "sotw"), 0.0, "{page}");
    } else {
        assert!(pushed_resources(&page, "endpoint", "delta") >= 2.0, "{page}");
    }
    assert_eq!(metric(&page, "xds_whisk_xds_nacks_total", ""), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sotw_and_a_delta_envoy_serve_the_same_action() {
    a_sotw_and_a_delta_envoy_serve_the_same_action_with(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sotw_and_a_leds_envoy_serve_the_same_action() {
    a_sotw_and_a_delta_envoy_serve_the_same_action_with(true).await;
}

/// Decision 0009: containers spread over several EDS clusters by a hash of their address. The
/// filter stamps the cluster, Envoy routes by it, and a container change sends one cluster's
/// endpoints; both ADS variants. With LEDS (decision 0010), it sends that one container.
async fn spread_containers_are_routed_and_one_change_pushes_one_cluster(delivery: Delivery) {
    const CLUSTERS: u32 = 8;
    let dir = tempfile::tempdir().unwrap();
    let node = format!("envoy-spread-{}", delivery.name());
    let mut options = options(dir.path(), &node, false);
    options.xds_args = vec!["--container-clusters".into(), CLUSTERS.to_string()];
    delivery.apply(&mut options);
    let platform = Platform::start(options, Artifacts::from_workspace().unwrap()).unwrap();
    let client = Client::new(&platform.api_host(), GUEST_KEY);
    let names = ["one", "two", "three", "four"];
    for name in names {
        let code = format!("function main(p) {{ return {{name: '{name}', n: p.n}}; }}");
        assert_eq!(client.create_action(name, "nodejs:20", &code).await.unwrap().status, 200);
    }
    let variant = delivery.variant();
    let kind = if delivery == Delivery::Leds { "lb_endpoint" } else { "endpoint" };
    for name in &names[..3] {
        assert_eq!(client.invoke(name, &json!({"n": 0}), true).await.unwrap().status, 200);
    }
    let before = control_metrics(&platform).await.unwrap();
    assert_eq!(client.invoke(names[3], &json!({"n": 0}), true).await.unwrap().status, 200);
    let after = control_metrics(&platform).await.unwrap();
    let pushed = pushed_resources(&after, kind, variant) - pushed_resources(&before, kind, variant);
    // Every variant sends only the cluster the new container hashes to (Envoy keeps the endpoints a
    // state-of-the-world response leaves out), or with LEDS only the container.
    assert_eq!(pushed, 1.0, "{after}");
    if delivery == Delivery::Leds {
        let assignments = pushed_resources(&after, "endpoint", variant);
        assert_eq!(assignments, f64::from(CLUSTERS), "the assignments went once: {after}");
        let bytes = pushed_bytes(&after, kind, variant) - pushed_bytes(&before, kind, variant);
        eprintln!("one container change with LEDS: {bytes} bytes pushed");
    }

    // Warm invokes reach the right container through the cluster the filter stamped.
    for n in 1..=5 {
        for name in names {
            let reply = client.invoke(name, &json!({"n": n}), true).await.unwrap();
            assert_eq!(reply.status, 200, "{}", reply.body);
            assert_eq!(reply.body, json!({"name": name, "n": n}));
        }
    }
    // Each container is an endpoint of exactly the cluster its address hashes to.
    let listed = containers(&platform).await;
    assert_eq!(listed.len(), names.len(), "{listed:?}");
    for container in &listed {
        let address = container["address"].as_str().unwrap();
        let home = whisk_contract::clusters::containers_of(address, CLUSTERS);
        for cluster in whisk_contract::clusters::all_containers(CLUSTERS) {
            let held = hosts(&platform, &cluster).await.contains(&address.to_owned());
            assert_eq!(held, cluster == home, "{address} in {cluster}");
        }
    }
    assert_everything_accepted_with(&platform, CLUSTERS).await;
    assert_eq!(metric(&after, "xds_whisk_xds_nacks_total", ""), 0.0, "{after}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spread_containers_sotw() {
    spread_containers_are_routed_and_one_change_pushes_one_cluster(Delivery::Sotw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spread_containers_delta() {
    spread_containers_are_routed_and_one_change_pushes_one_cluster(Delivery::Delta).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spread_containers_leds() {
    spread_containers_are_routed_and_one_change_pushes_one_cluster(Delivery::Leds).await;
}
