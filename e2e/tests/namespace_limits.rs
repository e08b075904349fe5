//! Per-namespace invocation limits through real Envoy: invokes per minute and activations in
//! flight, answered 429 with OpenWhisk's messages, and no leak of in-flight counts (every refused
//! or finished activation makes room again).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use e2e::client::Client;
use e2e::{Artifacts, GUEST_KEY, Options, Platform};
use serde_json::json;

const ECHO_JS: &str = "function main(p) { return p; }";
const SLEEPY_JS: &str =
    "function main(p) { return new Promise(r => setTimeout(() => r({slept: p.ms}), p.ms)); }";

fn start(node: &str, management_args: &[&str]) -> (tempfile::TempDir, Platform, Client) {
    let dir = tempfile::tempdir().unwrap();
    let mut options = Options::for_test(dir.path(), node).unwrap();
    options.management_args = management_args.iter().map(|arg| (*arg).to_owned()).collect();
    let platform = Platform::start(options, Artifacts::from_workspace().unwrap()).unwrap();
    let client = Client::new(&platform.api_host(), GUEST_KEY);
    (dir, platform, client)
}

fn minute() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() / 60
}

/// Sleeps into the next minute (the limit counts per minute of the epoch).
async fn next_minute() {
    let into = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() % 60_000;
    tokio::time::sleep(Duration::from_millis(60_000 - into as u64 + 100)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_gets_its_invokes_per_minute_then_429() {
    let (_dir, _platform, client) = start("envoy-per-minute", &["--invocations-per-minute", "5"]);
    assert_eq!(client.create_action("echo", "nodejs:20", ECHO_JS).await.unwrap().status, 200);
    let limits = client.get("/api/v1/namespaces/_/limits").await.unwrap();
    assert_eq!(limits.body["invocationsPerMinute"], 5, "{}", limits.body);
    // A minute boundary inside the burst resets the count. A burst starts well inside a minute;
    // if one still crosses a boundary, the new minute has counted its last invokes already, so
    // the burst is tried once more from the start of the minute after.
    if SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() % 60 > 45 {
        next_minute().await;
    }
    for attempt in 0..2 {
        let first_minute = minute();
        let mut statuses = Vec::new();
        for n in 0..5 {
            statuses.push(client.invoke("echo", &json!({"n": n}), true).await.unwrap());
        }
        // A bodyless blocking invoke (run detached with an empty object as body) counts as well.
        let bodyless = "/api/v1/namespaces/_/actions/echo?blocking=true&result=true";
        statuses.push(client.call(reqwest::Method::POST, bodyless, None).await.unwrap());
        if minute() != first_minute && attempt == 0 {
            next_minute().await;
            continue;
        }
        let codes: Vec<u16> = statuses.iter().map(|reply| reply.status).collect();
        assert_eq!(codes, [200, 200, 200, 200, 200, 429], "{:?}", statuses.last());
        let refused = &statuses[5].body;
        assert_eq!(refused["error"], "Too many requests in the last minute (count: 6, allowed: 5).");
        assert!(refused["code"].is_string());
        // Non-blocking invokes count too.
        let async_refused = client.post("/api/v1/namespaces/_/actions/echo", &json!({})).await.unwrap();
        assert_eq!(async_refused.status, 429);
        return;
    }
    panic!("both bursts crossed a minute boundary");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_gets_its_concurrent_activations_then_429_and_room_comes_back() {
    let (_dir, _platform, client) = start("envoy-concurrent", &["--concurrent-invocations", "2"]);
    assert_eq!(client.create_action("sleepy", "nodejs:20", SLEEPY_JS).await.unwrap().status, 200);
    // Two containers warm, so that the two admitted run side by side.
    let warm: Vec<_> = (0..2)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(
                async move { client.invoke("sleepy", &json!({"ms": 300}), true).await.unwrap().status },
            )
        })
        .collect();
    for task in warm {
        assert_eq!(task.await.unwrap(), 200);
    }

    let running: Vec<_> = (0..2)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { client.invoke("sleepy", &json!({"ms": 1500}), true).await.unwrap() })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let third = client.invoke("sleepy", &json!({"ms": 1}), true).await.unwrap();
    assert_eq!(third.status, 429, "{}", third.body);
    assert_eq!(third.body["error"], "Too many concurrent requests in flight (count: 3, allowed: 2).");
    let async_third = client.post("/api/v1/namespaces/_/actions/sleepy", &json!({"ms": 1})).await.unwrap();
    assert_eq!(async_third.status, 429, "{}", async_third.body);
    for task in running {
        let reply = task.await.unwrap();
        assert_eq!((reply.status, &reply.body), (200, &json!({"slept": 1500})));
    }
    // Finished and refused activations left no count behind.
    for n in 0..4 {
        let reply = client.invoke("sleepy", &json!({"ms": n}), true).await.unwrap();
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
}
