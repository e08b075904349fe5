//! Prewarmed ("stem cell") containers: with `--prewarm nodejs:20=1` the control plane keeps one
//! started, uninitialised Node.js runtime; a cold start of any Node.js action specialises it with
//! `/init` instead of starting a process, the stock is refilled in the background, and the
//! specialised container is relabelled so that a restarted control plane adopts it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use e2e::client::{Client, annotation, control_containers, control_metrics, metric};
use e2e::{Artifacts, GUEST_KEY, Options, Platform};
use serde_json::{Value, json};

async fn wait_metric(platform: &Platform, name: &str, at_least: f64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let page = control_metrics(platform).await.unwrap_or_default();
        if metric(&page, name, "") >= at_least {
            return;
        }
        assert!(Instant::now() < deadline, "{name} never reached {at_least}: {page}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn table(platform: &Platform) -> Vec<Value> {
    control_containers(platform).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_start_specialises_a_prewarmed_container_and_a_restart_adopts_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = Options::for_test(dir.path(), "envoy-prewarm").unwrap();
    options.xds_args = vec!["--prewarm".into(), "nodejs:20=1".into()];
    let mut platform = Platform::start(options, Artifacts::from_workspace().unwrap()).unwrap();
    let client = Client::new(&platform.api_host(), GUEST_KEY);
    assert_eq!(
        client.create_action("echo", "nodejs:20", "function main(p) { return p; }").await.unwrap().status,
        200
    );
    wait_metric(&platform, "xds_whisk_prewarmed_ready", 1.0).await;

    let started = Instant::now();
    let cold = client.invoke("echo", &json!({"n": 1}), false).await.unwrap();
    let elapsed = started.elapsed();
    assert_eq!(cold.status, 200, "{}", cold.body);
    let init_ms = annotation(&cold.body, "initTime").expect("a cold start").as_u64().unwrap();
    eprintln!("cold start on a prewarmed container: {elapsed:?} end to end, /init {init_ms} ms");
    let page = control_metrics(&platform).await.unwrap();
    assert_eq!(metric(&page, "xds_whisk_prewarmed_used_total", ""), 1.0, "{page}");
    assert!(table(&platform).await.iter().all(|c| c["state"] == "ready"));
    // The stock is refilled in the background.
    wait_metric(&platform, "xds_whisk_prewarmed_ready", 1.0).await;

    // The specialised container carries its action's labels: a restarted control plane adopts it.
    let before = table(&platform).await;
    tokio::task::block_in_place(|| {
        platform.crash_xds();
        platform.start_xds()
    })
    .unwrap();
    let after = table(&platform).await;
    assert_eq!(
        after.iter().map(|c| (&c["id"], &c["address"])).collect::<Vec<_>>(),
        before.iter().map(|c| (&c["id"], &c["address"])).collect::<Vec<_>>()
    );
    let warm = client.invoke("echo", &json!({"n": 2}), false).await.unwrap();
    assert_eq!(warm.status, 200, "{}", warm.body);
    assert_eq!(annotation(&warm.body, "initTime"), None, "still warm after the restart: {}", warm.body);
}

/// Prewarmed containers count against the pool: on a pool with room for two containers the stock
/// is refilled while there is room, and no longer once two actions' containers fill it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prewarmed_containers_count_against_the_pool() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = Options::for_test(dir.path(), "envoy-prewarm-full").unwrap();
    options.xds_args = ["--prewarm", "nodejs:20=1", "--prewarm-memory-mb", "256", "--pool-memory-mb", "512"]
        .map(str::to_owned)
        .to_vec();
    let platform = Platform::start(options, Artifacts::from_workspace().unwrap()).unwrap();
    let client = Client::new(&platform.api_host(), GUEST_KEY);
    for name in ["first", "second"] {
        let created =
            client.create_action(name, "nodejs:20", "function main(p) { return p; }").await.unwrap();
        assert_eq!(created.status, 200);
    }
    for (name, used) in [("first", 1.0), ("second", 2.0)] {
        wait_metric(&platform, "xds_whisk_prewarmed_ready", 1.0).await;
        let cold = client.invoke(name, &json!({}), false).await.unwrap();
        assert_eq!(cold.status, 200, "{}", cold.body);
        let page = control_metrics(&platform).await.unwrap();
        assert_eq!(metric(&page, "xds_whisk_prewarmed_used_total", ""), used, "{page}");
    }
    // Both containers fill the pool: the refill (every 200 ms) starts no third process.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let page = control_metrics(&platform).await.unwrap();
    assert_eq!(metric(&page, "xds_whisk_prewarmed_ready", ""), 0.0, "{page}");
    let runtimes = xds_server::cluster::local::owned_runtimes(&platform.owner());
    assert_eq!(runtimes.len(), 2, "two action containers and no prewarmed one");
}
