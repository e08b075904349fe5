//! A container that stops on its own (here: its runtime process is terminated by someone else) is
//! taken out of Envoy's endpoints at once, counted as lost, and the action's next invoke gets a new
//! container instead of the dead one.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use e2e::client::{
    Client, control_containers, control_metrics, envoy_cluster_hosts, envoy_stat, metric, remove_container,
};
use e2e::{Artifacts, GUEST_KEY, Options, Platform};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};
use xds_server::cluster::local::owned_runtimes;

/// The hosts Envoy routes to in the containers cluster.
async fn container_hosts(platform: &Platform) -> Vec<String> {
    envoy_cluster_hosts(platform, "whisk_containers").await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_that_dies_leaves_xds_at_once_and_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let platform = Platform::start(
        Options::for_test(dir.path(), "envoy-lost").unwrap(),
        Artifacts::from_workspace().unwrap(),
    )
    .unwrap();
    let client = Client::new(&platform.api_host(), GUEST_KEY);
    assert_eq!(
        client.create_action("echo", "nodejs:20", "function main(p) { return p; }").await.unwrap().status,
        200
    );
    assert_eq!(client.invoke("echo", &json!({"n": 1}), true).await.unwrap().status, 200);
    assert_eq!(container_hosts(&platform).await.len(), 1);

    let runtimes = owned_runtimes(&platform.owner());
    assert_eq!(runtimes.len(), 1, "one container");
    kill(Pid::from_raw(runtimes[0].pid), Signal::SIGTERM).unwrap();
    let died = Instant::now();
    while !container_hosts(&platform).await.is_empty() {
        assert!(died.elapsed() < Duration::from_secs(5), "the dead container is still routed to");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let gone_after = died.elapsed();
    let page = control_metrics(&platform).await.unwrap();
    assert_eq!(metric(&page, "xds_whisk_containers_lost_total", ""), 1.0, "{page}");
    eprintln!("out of Envoy's endpoints {} ms after its process ended", gone_after.as_millis());

    // Once the filter's next usage report hears the container is unknown, its slot is retired:
    // the next invoke starts a new container.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let again = client.invoke("echo", &json!({"n": 2}), true).await.unwrap();
    assert_eq!((again.status, again.body), (200, json!({"n": 2})));
    assert_eq!(container_hosts(&platform).await.len(), 1);
    assert_eq!(owned_runtimes(&platform.owner()).len(), 1, "the new one only");
}

/// An operator's removal of container `id` while the filter still counts it free (its usage
/// report is far off): done once Envoy's workers no longer route to it. The admin's view is the
/// main thread's, which each worker follows on its own event loop a moment later.
async fn remove_behind_the_filters_back(platform: &Platform, id: &str) {
    let hosts = container_hosts(platform).await.len();
    assert_eq!(remove_container(platform, id).await.unwrap(), 204);
    let deadline = Instant::now() + Duration::from_secs(5);
    while container_hosts(platform).await.len() >= hosts {
        assert!(Instant::now() < deadline, "the removed container is still an endpoint");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
}

/// The control plane's container table, by node.
async fn nodes_of_containers(platform: &Platform) -> Vec<String> {
    let table = control_containers(platform).await.unwrap();
    table.iter().map(|c| c["node"].as_str().unwrap().to_owned()).collect()
}

/// An Envoy that goes away for good leaves containers that no filter will ever name in a usage
/// report again. After the orphan timeout the control plane removes and stops them; the containers
/// of the Envoy that stays, named in every report, are kept and stay warm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_containers_of_an_envoy_that_went_away_are_stopped_after_the_orphan_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = Options::for_test(dir.path(), "envoy-gone").unwrap();
    options.replicas = 2;
    options.xds_args =
        ["--usage-report-period-ms", "200", "--orphan-timeout-ms", "3000", "--gc-interval-ms", "200"]
            .map(str::to_owned)
            .to_vec();
    let mut platform = Platform::start(options, Artifacts::from_workspace().unwrap()).unwrap();
    let staying = Client::new(&platform.api_host_of(0), GUEST_KEY);
    let leaving = Client::new(&platform.api_host_of(1), GUEST_KEY);
    assert_eq!(
        staying.create_action("echo", "nodejs:20", "function main(p) { return p; }").await.unwrap().status,
        200
    );
    for client in [&staying, &leaving] {
        assert_eq!(client.invoke("echo", &json!({"n": 1}), true).await.unwrap().status, 200);
    }
    let mut nodes = nodes_of_containers(&platform).await;
    nodes.sort();
    assert_eq!(nodes, [platform.node_id_of(0), platform.node_id_of(1)]);

    platform.stop_envoy(1);
    let stopped = Instant::now();
    while nodes_of_containers(&platform).await.len() > 1 {
        assert!(stopped.elapsed() < Duration::from_secs(15), "the gone node's container is still kept");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "removed {} ms after its Envoy stopped (orphan timeout 3000 ms)",
        stopped.elapsed().as_millis()
    );
    assert!(stopped.elapsed() >= Duration::from_millis(2_500), "not before the timeout");
    assert_eq!(nodes_of_containers(&platform).await, [platform.node_id_of(0)]);
    while owned_runtimes(&platform.owner()).len() > 1 {
        assert!(stopped.elapsed() < Duration::from_secs(20), "the orphan's process still runs");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let page = control_metrics(&platform).await.unwrap();
    assert_eq!(metric(&page, "xds_whisk_containers_orphaned_total", ""), 1.0, "{page}");

    // The staying node's container was named all along: still there, still warm.
    let reply = staying.invoke("echo", &json!({"n": 2}), false).await.unwrap();
    assert_eq!(reply.status, 200);
    assert!(reply.body["annotations"].to_string().find("initTime").is_none(), "warm: {}", reply.body);
    assert_eq!(owned_runtimes(&platform.owner()).len(), 1);
}

/// A `/run` stamped for a container Envoy's worker does not hold goes, by override_host's fallback,
/// to another container. Our runtime refuses it with 421 before running anything, the route
/// retries 421, and the filter then runs the activation again, once, claiming anew (decision
/// 0001). Here the stamped container was removed by the operator while the filter still counts it
/// free (its next usage report is a minute away), so every try lands on the other container: the
/// retries are counted, the client's own `x-envoy-max-retries` changes nothing (Envoy drops it from
/// a client it counts as external, the filter from any), the other container never ran the
/// request, and the activation runs once, in a new container: for a blocking invoke, and for a
/// non-blocking one's run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misrouted_run_is_refused_retried_and_run_again_in_a_container_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = Options::for_test(dir.path(), "envoy-misrouted").unwrap();
    options.xds_args = ["--usage-report-period-ms", "60000"].map(str::to_owned).to_vec();
    let platform = Platform::start(options, Artifacts::from_workspace().unwrap()).unwrap();
    let client = Client::new(&platform.api_host(), GUEST_KEY);
    let counting = "let runs = 0; function main(p) { return { runs: ++runs, p }; }";
    assert_eq!(client.create_action("stays", "nodejs:20", counting).await.unwrap().status, 200);
    assert_eq!(client.create_action("goes", "nodejs:20", counting).await.unwrap().status, 200);
    for action in ["stays", "goes"] {
        let reply = client.invoke(action, &json!({}), true).await.unwrap();
        assert_eq!((reply.status, reply.body), (200, json!({"runs": 1, "p": {}})), "{action}");
    }
    let table = control_containers(&platform).await.unwrap();
    let goes = table
        .iter()
        .find(|c| c["action"].as_str().is_some_and(|a| a.contains("/goes@")))
        .expect("the container of goes");
    let removed = goes["id"].as_str().unwrap().to_owned();
    remove_behind_the_filters_back(&platform, &removed).await;
    // Envoy counts a request's first answer under upstream_rq_<code>, its retries' under
    // retry.upstream_rq_<code>; the filter counts the runs it starts again.
    let counters = async || {
        let mut counted = Vec::new();
        for name in [
            "cluster\\.whisk_containers\\.upstream_rq_421",
            "cluster\\.whisk_containers\\.retry\\.upstream_rq_421",
            "cluster\\.whisk_containers\\.upstream_rq_retry",
            ".*whisk_misrouted_reruns",
        ] {
            counted.push(envoy_stat(&platform, &format!("^{name}$")).await.unwrap() as u64);
        }
        counted
    };
    let before = counters().await;

    // The filter still counts the removed container free (its usage report is a minute away):
    // the invoke is stamped for it, and every try reaches the other container, which refuses it.
    let (user, password) = GUEST_KEY.split_once(':').unwrap();
    let misrouted = reqwest::Client::new()
        .post(format!("{}/api/v1/namespaces/_/actions/goes?blocking=true", platform.api_host()))
        .basic_auth(user, Some(password))
        .header("x-envoy-max-retries", "0")
        .json(&json!({"n": 7}))
        .send()
        .await
        .unwrap();
    let status = misrouted.status().as_u16();
    let record: Value = misrouted.json().await.unwrap();
    assert_eq!(status, 200, "{record}");
    assert_eq!(record["response"]["result"], json!({"runs": 1, "p": {"n": 7}}), "ran once, anew: {record}");
    let after = counters().await;
    let refused: Vec<u64> = after.iter().zip(&before).map(|(after, before)| after - before).collect();
    assert_eq!(refused, [1, 4, 4, 1], "every try refused, the client's header ignored, one run again");
    let id = record["activationId"].as_str().unwrap();
    let stored = client.wait_for_activation(id, Duration::from_secs(5)).await.unwrap();
    assert_eq!(stored.status, 200);
    assert_eq!(stored.body["response"]["result"], json!({"runs": 1, "p": {"n": 7}}));

    // None of the tries ran in the container that refused them.
    let reply = client.invoke("stays", &json!({}), true).await.unwrap();
    assert_eq!((reply.status, reply.body), (200, json!({"runs": 2, "p": {}})));
    // The claimed container was retired for good; the one the run again started serves on.
    let reply = client.invoke("goes", &json!({}), true).await.unwrap();
    assert_eq!((reply.status, reply.body), (200, json!({"runs": 2, "p": {}})));
    let table = control_containers(&platform).await.unwrap();
    assert!(table.iter().all(|c| c["id"] != removed.as_str()), "{table:?}");

    // A non-blocking invoke's run (an internal run, whose client got 202 at once) is run again
    // from its own stream the same way, and its record is the run again's.
    let second = table
        .iter()
        .find(|c| c["action"].as_str().is_some_and(|a| a.contains("/goes@")))
        .expect("the new container of goes");
    remove_behind_the_filters_back(&platform, second["id"].as_str().unwrap()).await;
    let before = counters().await;
    let reply = client.post("/api/v1/namespaces/_/actions/goes", &json!({"n": 8})).await.unwrap();
    assert_eq!(reply.status, 202, "{}", reply.body);
    let id = reply.body["activationId"].as_str().unwrap();
    let stored = client.wait_for_activation(id, Duration::from_secs(10)).await.unwrap();
    assert_eq!(stored.status, 200, "{}", stored.body);
    assert_eq!(stored.body["response"]["result"], json!({"runs": 1, "p": {"n": 8}}), "{}", stored.body);
    let after = counters().await;
    let refused: Vec<u64> = after.iter().zip(&before).map(|(after, before)| after - before).collect();
    assert_eq!(refused, [1, 4, 4, 1]);
}
