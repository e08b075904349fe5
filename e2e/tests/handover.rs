//! A warm container moves between Envoys, and only after it drained: with room for one container,
//! an action invoked through one Envoy and then through another gets the same warm container (its
//! module state carries over, no second `/init`), handed over only once its first Envoy's sweep
//! let go of it while free.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use e2e::client::{Client, annotation, control_metrics, metric};
use e2e::{Artifacts, GUEST_KEY, Options, Platform};
use serde_json::json;

/// Counts its activations in module state: a warm container remembers, a new one starts at 1.
const COUNTER_JS: &str = "let n = 0; function main() { n += 1; return {n, pid: process.pid}; }";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_pool_hands_the_warm_container_to_the_envoy_that_needs_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = Options::for_test(dir.path(), "envoy-handover").unwrap();
    options.replicas = 2;
    options.xds_args = ["--max-containers", "1"].map(String::from).to_vec();
    let platform = Platform::start(options, Artifacts::from_workspace().unwrap()).unwrap();
    let envoys =
        [Client::new(&platform.api_host_of(0), GUEST_KEY), Client::new(&platform.api_host_of(1), GUEST_KEY)];
    assert_eq!(envoys[0].create_action("counter", "nodejs:20", COUNTER_JS).await.unwrap().status, 200);

    let first = envoys[0].invoke("counter", &json!({}), false).await.unwrap();
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.body["response"]["result"]["n"], 1);
    assert!(annotation(&first.body, "initTime").is_some(), "a cold start");
    let pid = first.body["response"]["result"]["pid"].clone();

    // Each later invoke goes through the other Envoy: the one container moves there, warm.
    for (turn, envoy) in [1, 0, 1].into_iter().enumerate() {
        let started = Instant::now();
        let moved = envoys[envoy].invoke("counter", &json!({}), false).await.unwrap();
        assert_eq!(moved.status, 200, "turn {turn}: {}", moved.body);
        assert_eq!(moved.body["response"]["result"]["n"], turn + 2, "the same warm container");
        assert_eq!(moved.body["response"]["result"]["pid"], pid);
        assert!(annotation(&moved.body, "initTime").is_none(), "no second /init: {}", moved.body);
        eprintln!("handed over to envoy {envoy} in {} ms", started.elapsed().as_millis());
    }
    let page = control_metrics(&platform).await.unwrap();
    assert_eq!(metric(&page, "xds_whisk_handovers_total", ""), 3.0, "{page}");
    assert_eq!(metric(&page, "xds_whisk_cold_starts_total", "outcome=\"started\""), 1.0, "{page}");
}
