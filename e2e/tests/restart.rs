//! Control-plane restart recovery: the control server is killed without warning (SIGKILL, as a
//! crash or an OOM kill) while clients invoke warm actions through Envoy; every invoke succeeds
//! while it is away, and the new server rebuilds its table from the labels of the running runtime
//! processes, without restarting a warm container, before Envoy reconnects.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use e2e::client::{Client, annotation, control_containers, control_metrics, metric};
use e2e::{Artifacts, GUEST_KEY, Options, Platform};
use serde_json::json;

const ECHO_JS: &str = "function main(p) { return p; }";
const SLOW_ECHO_JS: &str =
    "function main(p) { return new Promise(r => setTimeout(() => r(p), p.sleep || 0)); }";
/// Sequential clients never hold two containers at once (a container is released before the
/// reply), so with at least this many warm containers no invoke of the load needs a cold start.
const CLIENTS: usize = 2;

async fn table(platform: &Platform) -> Vec<(String, String)> {
    let containers = control_containers(platform).await.unwrap();
    let mut ids: Vec<(String, String)> = containers
        .iter()
        .map(|c| (c["id"].as_str().unwrap().to_owned(), c["address"].as_str().unwrap_or("").to_owned()))
        .collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_invokes_all_succeed_while_the_control_server_restarts_and_nothing_is_restarted() {
    let dir = tempfile::tempdir().unwrap();
    let mut platform = Platform::start(
        Options::for_test(dir.path(), "envoy-restart").unwrap(),
        Artifacts::from_workspace().unwrap(),
    )
    .unwrap();
    let client = Client::new(&platform.api_host(), GUEST_KEY);
    assert_eq!(client.create_action("echo", "nodejs:20", SLOW_ECHO_JS).await.unwrap().status, 200);
    // Warm up at least as many containers as there are clients, and let every start finish.
    let deadline = Instant::now() + Duration::from_secs(30);
    let before = loop {
        let warmups: Vec<_> = (0..2 * CLIENTS)
            .map(|n| {
                let client = client.clone();
                tokio::spawn(async move {
                    client.invoke("echo", &json!({"n": n, "sleep": 300}), true).await.unwrap().status
                })
            })
            .collect();
        for warmup in warmups {
            assert_eq!(warmup.await.unwrap(), 200);
        }
        let seen = table(&platform).await;
        if seen.len() >= CLIENTS && seen.iter().all(|(_, address)| !address.is_empty()) {
            break seen;
        }
        assert!(Instant::now() < deadline, "no {CLIENTS} warm containers: {seen:?}");
    };

    let stop = Arc::new(AtomicBool::new(false));
    let load: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (client, stop) = (client.clone(), stop.clone());
            tokio::spawn(async move {
                let (mut ok, mut failures) = (0usize, Vec::new());
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let params = json!({"client": c, "n": n});
                    match client.invoke("echo", &params, true).await {
                        Ok(reply) if reply.status == 200 && reply.body == params => ok += 1,
                        Ok(reply) => failures.push(format!("{} {}", reply.status, reply.body)),
                        Err(error) => failures.push(error.to_string()),
                    }
                }
                (ok, failures)
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_millis(500)).await;
    let away = Instant::now();
    tokio::task::block_in_place(|| platform.crash_xds());
    tokio::time::sleep(Duration::from_secs(2)).await;
    tokio::task::block_in_place(|| platform.start_xds()).unwrap();
    let restarted_after = away.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut served, mut failures) = (0, Vec::new());
    for task in load {
        let (ok, failed) = task.await.unwrap();
        served += ok;
        failures.extend(failed);
    }
    assert!(
        failures.is_empty(),
        "{} of {} failed, e.g. {:?}",
        failures.len(),
        served + failures.len(),
        &failures[..failures.len().min(3)]
    );
    eprintln!("{served} warm invokes, 0 failed; the control server was away for {restarted_after:?}");

    // The new server adopted exactly the running containers, at their addresses; it started none.
    assert_eq!(table(&platform).await, before);
    let page = control_metrics(&platform).await.unwrap();
    assert_eq!(metric(&page, "xds_whisk_cold_starts_total", "started"), 0.0, "{page}");

    // Envoy reconnects to the new server, which can cold-start and publish again.
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(&control_metrics(&platform).await.unwrap(), "xds_whisk_xds_pushes_total", "endpoint") < 1.0 {
        assert!(Instant::now() < deadline, "Envoy did not reconnect to the new control server");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(client.create_action("fresh", "nodejs:20", ECHO_JS).await.unwrap().status, 200);
    let fresh = client.invoke("fresh", &json!({"n": 1}), false).await.unwrap();
    assert_eq!(fresh.status, 200, "{}", fresh.body);
    assert!(annotation(&fresh.body, "initTime").is_some());
    let warm = client.invoke("echo", &json!({"n": 2}), false).await.unwrap();
    assert_eq!(annotation(&warm.body, "initTime"), None, "still warm: {}", warm.body);
}
