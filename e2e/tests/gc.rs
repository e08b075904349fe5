//! Mark and sweep with real Envoy and real runtime processes: an idle container is marked, its
//! Envoy confirms, it is swept (out of xDS, then stopped) and the next invoke cold-starts a fresh
//! one; a container running an activation longer than idle timeout + grace is never swept; a marked
//! container that is used again is revived without a cold start; an update retires the old
//! revision's containers; a full pool frees idle containers of other actions instead of refusing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use e2e::client::{Client, annotation, control_containers, control_metrics, metric};
use e2e::{Artifacts, GUEST_KEY, Options, Platform};
use serde_json::{Value, json};

const ECHO_JS: &str = "function main(p) { return p; }";
const SLEEPY_JS: &str =
    "function main(p) { return new Promise(r => setTimeout(() => r({slept: p.ms}), p.ms)); }";

fn start(node: &str, xds_args: &[&str]) -> (tempfile::TempDir, Platform, Client) {
    let dir = tempfile::tempdir().unwrap();
    let mut options = Options::for_test(dir.path(), node).unwrap();
    options.xds_args = xds_args.iter().map(|arg| (*arg).to_owned()).collect();
    let platform = Platform::start(options, Artifacts::from_workspace().unwrap()).unwrap();
    let client = Client::new(&platform.api_host(), GUEST_KEY);
    (dir, platform, client)
}

async fn containers(platform: &Platform) -> Vec<Value> {
    control_containers(platform).await.unwrap()
}

/// The containers of action `name` (any revision).
async fn containers_of(platform: &Platform, name: &str) -> Vec<Value> {
    let prefix = format!("guest/{name}@");
    containers(platform)
        .await
        .into_iter()
        .filter(|c| c["action"].as_str().is_some_and(|a| a.starts_with(&prefix)))
        .collect()
}

/// Polls the container table until `done` holds for the containers of `name`, or panics.
async fn wait_for(
    platform: &Platform,
    name: &str,
    within: Duration,
    what: &str,
    done: impl Fn(&[Value]) -> bool,
) {
    let deadline = Instant::now() + within;
    loop {
        let seen = containers_of(platform, name).await;
        if done(&seen) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: not within {within:?}; table: {seen:?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn cold_starts(platform: &Platform) -> f64 {
    metric(&control_metrics(platform).await.unwrap(), "xds_whisk_cold_starts_total", "started")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_containers_are_marked_and_swept_busy_ones_never_and_a_used_mark_is_revived() {
    let (_dir, platform, client) = start(
        "envoy-gc",
        &[
            "--idle-timeout-ms",
            "1500",
            "--gc-grace-ms",
            "2500",
            "--gc-interval-ms",
            "100",
            "--usage-report-period-ms",
            "100",
        ],
    );
    for (name, code) in [("idle", ECHO_JS), ("revive", ECHO_JS), ("long", SLEEPY_JS)] {
        assert_eq!(client.create_action(name, "nodejs:20", code).await.unwrap().status, 200);
    }

    // Idle: marked after 1.5 s, confirmed by Envoy, swept 2.5 s later: out of the table and stopped.
    let first = client.invoke("idle", &json!({"n": 1}), false).await.unwrap();
    assert_eq!(first.status, 200, "{}", first.body);
    let table = containers_of(&platform, "idle").await;
    assert_eq!(table.len(), 1, "{table:?}");
    let address = table[0]["address"].as_str().unwrap().to_owned();
    wait_for(&platform, "idle", Duration::from_secs(20), "swept", |seen| seen.is_empty()).await;
    let page = control_metrics(&platform).await.unwrap();
    assert!(metric(&page, "xds_whisk_gc_marks_total", "idle") >= 1.0, "{page}");
    assert!(metric(&page, "xds_whisk_gc_sweeps_total", "") >= 1.0, "{page}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while tokio::net::TcpStream::connect(&address).await.is_ok() {
        assert!(Instant::now() < deadline, "the swept container's process still listens on {address}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let again = client.invoke("idle", &json!({"n": 2}), false).await.unwrap();
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.body["response"]["result"], json!({"n": 2}));
    assert!(annotation(&again.body, "initTime").is_some(), "a fresh container: {}", again.body);

    // Busy: an activation of 6 s outlives idle timeout + grace (4 s) in a container that is never
    // marked, so it completes.
    let long = client.invoke("long", &json!({"ms": 6000}), false).await.unwrap();
    assert_eq!(long.status, 200, "{}", long.body);
    assert_eq!(long.body["response"]["result"], json!({"slept": 6000}));
    let warm_again = client.invoke("long", &json!({"ms": 1}), false).await.unwrap();
    assert_eq!(
        annotation(&warm_again.body, "initTime"),
        None,
        "the long container survived: {}",
        warm_again.body
    );

    // Revive: a marked, confirmed container that is invoked again serves warm and is unmarked.
    assert_eq!(client.invoke("revive", &json!({}), false).await.unwrap().status, 200);
    wait_for(&platform, "revive", Duration::from_secs(10), "marked and confirmed", |seen| {
        seen.len() == 1 && seen[0]["mark_confirmed"] == true
    })
    .await;
    let starts_before = cold_starts(&platform).await;
    let revived = client.invoke("revive", &json!({"n": 3}), false).await.unwrap();
    assert_eq!(revived.status, 200, "{}", revived.body);
    assert_eq!(annotation(&revived.body, "initTime"), None, "served warm by the marked container");
    assert_eq!(cold_starts(&platform).await, starts_before, "no cold start for a marked container");
    wait_for(&platform, "revive", Duration::from_secs(5), "unmarked after its use", |seen| {
        seen.len() == 1 && seen[0]["marked"] == false
    })
    .await;
    assert!(metric(&control_metrics(&platform).await.unwrap(), "xds_whisk_gc_unmarks_total", "") >= 1.0);

    // Update: the next invoke runs the new code in a new container; the old revision's container
    // is swept at once, long before its idle timeout.
    let old = containers_of(&platform, "revive").await;
    let update = json!({"exec": {"kind": "nodejs:20", "code": "function main(p) { return {v: 2}; }"}});
    let put = client.put("/api/v1/namespaces/_/actions/revive?overwrite=true", &update).await.unwrap();
    assert_eq!(put.status, 200, "{}", put.body);
    let new = client.invoke("revive", &json!({}), false).await.unwrap();
    assert_eq!(new.body["response"]["result"], json!({"v": 2}), "{}", new.body);
    let old_id = old[0]["id"].clone();
    wait_for(&platform, "revive", Duration::from_secs(5), "old revision swept", |seen| {
        seen.len() == 1 && seen[0]["id"] != old_id
    })
    .await;
    assert!(
        metric(&control_metrics(&platform).await.unwrap(), "xds_whisk_gc_marks_total", "revision") >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_pool_frees_idle_containers_of_other_actions_instead_of_refusing() {
    // Room for two 256 MB containers; nothing goes idle by the clock during the test.
    let (_dir, platform, client) = start(
        "envoy-reclaim",
        &["--pool-memory-mb", "512", "--idle-timeout-ms", "600000", "--usage-report-period-ms", "100"],
    );
    for name in ["a", "b", "c"] {
        assert_eq!(client.create_action(name, "nodejs:20", ECHO_JS).await.unwrap().status, 200);
    }
    for name in ["a", "b"] {
        assert_eq!(client.invoke(name, &json!({}), false).await.unwrap().status, 200);
    }
    assert_eq!(containers(&platform).await.len(), 2);

    // The pool is full: c's cold start frees a (the longest idle) and then runs.
    let started = Instant::now();
    let third = client.invoke("c", &json!({"n": 3}), false).await.unwrap();
    assert_eq!(third.status, 200, "{}", third.body);
    assert_eq!(third.body["response"]["result"], json!({"n": 3}));
    let waited = started.elapsed();
    assert!(containers_of(&platform, "a").await.is_empty(), "a was the victim");
    assert_eq!(containers_of(&platform, "b").await.len(), 1);
    assert_eq!(containers_of(&platform, "c").await.len(), 1);
    let page = control_metrics(&platform).await.unwrap();
    assert!(metric(&page, "xds_whisk_gc_marks_total", "reclaim") >= 1.0, "{page}");
    assert!(metric(&page, "xds_whisk_gc_sweeps_total", "") >= 1.0, "{page}");
    assert_eq!(metric(&page, "xds_whisk_pool_fragmentation", ""), 1.0, "{page}");
    eprintln!("a cold start into a full pool waited {waited:?} for the reclaim");

    // And back: a frees b, the longest idle now.
    let back = client.invoke("a", &json!({"n": 4}), false).await.unwrap();
    assert_eq!(back.status, 200, "{}", back.body);
    assert!(containers_of(&platform, "b").await.is_empty(), "b was the victim");
    assert_eq!(containers(&platform).await.len(), 2);
}
