//! The xDS server against real Envoy: everything pushed is accepted (read back from Envoy's admin
//! `/config_dump` and `/clusters`), a change of the container table reaches Envoy's endpoints, and a
//! resource Envoy rejects is NACKed, logged and counted once, not pushed again in a loop, while the
//! server keeps serving the other resource types.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use e2e::client::{Client, control_metrics, metric};
use e2e::{Artifacts, GUEST_KEY, Options, Platform};
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
    let clusters = admin(platform, "/clusters?format=json").await;
    let mut hosts: Vec<String> = clusters["cluster_statuses"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|cluster| cluster["name"] == name)
        .flat_map(|cluster| cluster["host_statuses"].as_array().cloned().unwrap_or_default())
        .map(|host| {
            let socket = &host["address"]["socket_address"];
            format!("{}:{}", socket["address"].as_str().unwrap(), socket["port_value"])
        })
        .collect();
    hosts.sort();
    hosts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_pushed_resource_is_accepted_and_table_changes_reach_envoy() {
    let dir = tempfile::tempdir().unwrap();
    let platform = Platform::start(
        Options::for_test(dir.path(), "envoy-xds").unwrap(),
        Artifacts::from_workspace().unwrap(),
    )
    .unwrap();
    let dump = admin(&platform, "/config_dump").await;
    let clusters = dump_of(&dump, "ClustersConfigDump");
    let mut names: Vec<&str> = clusters["dynamic_active_clusters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["cluster"]["name"].as_str().unwrap())
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["whisk_containers", "whisk_control_plane", "whisk_ingress", "whisk_management_api"]);
    assert!(clusters.get("dynamic_warming_clusters").is_none_or(|w| w.as_array().is_none_or(Vec::is_empty)));
    let listeners = dump_of(&dump, "ListenersConfigDump")["dynamic_listeners"].as_array().unwrap();
    assert_eq!(listeners.len(), 1, "{listeners:?}");
    assert!(listeners[0].get("active_state").is_some(), "{:?}", listeners[0]);
    assert!(listeners[0].get("error_state").is_none(), "{:?}", listeners[0]);
    assert!(hosts(&platform, "whisk_containers").await.is_empty());

    // A cold start adds the container to Envoy's endpoints.
    let client = Client::new(&platform.api_host(), GUEST_KEY);
    assert_eq!(
        client.create_action("echo", "nodejs:20", "function main(p) { return p; }").await.unwrap().status,
        200
    );
    assert_eq!(client.invoke("echo", &json!({}), true).await.unwrap().status, 200);
    let table: Vec<Value> = reqwest::get(format!("{}/v1/containers", platform.control_url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let addresses: Vec<String> = table.iter().map(|c| c["address"].as_str().unwrap().to_owned()).collect();
    assert_eq!(hosts(&platform, "whisk_containers").await, addresses);

    // A retirement removes it.
    let id = table[0]["id"].as_str().unwrap();
    let retired = reqwest::Client::new()
        .delete(format!("{}/v1/containers/{id}", platform.control_url()))
        .header("x-whisk-internal-token", &platform.internal_token)
        .send()
        .await
        .unwrap();
    assert_eq!(retired.status(), 204);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !hosts(&platform, "whisk_containers").await.is_empty() {
        assert!(Instant::now() < deadline, "the retired container is still an endpoint");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(metric(&control_metrics(&platform).await.unwrap(), "xds_whisk_xds_nacks_total", ""), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_listener_is_nacked_once_and_the_rest_is_served() {
    let dir = tempfile::tempdir().unwrap();
    // A filter module Envoy cannot load makes the listener invalid.
    let mut artifacts = Artifacts::from_workspace().unwrap();
    let broken = dir.path().join("broken.wasm");
    std::fs::write(&broken, b"\0asm this is not a wasm module").unwrap();
    artifacts.filter_wasm = broken;
    let platform =
        Platform::start_unready(Options::for_test(dir.path(), "envoy-nack").unwrap(), artifacts).unwrap();

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
