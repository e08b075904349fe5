//! Activation records are never silently lost: an activation that ends while the management API is
//! down keeps its record in the filter, which retries until the API is back and stores it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use e2e::client::Client;
use e2e::{Artifacts, GUEST_KEY, Options, Platform};
use serde_json::json;

const SLEEPY_JS: &str =
    "function main(p) { return new Promise(r => setTimeout(() => r({slept: p.ms}), p.ms)); }";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_that_could_not_be_stored_is_retried_until_the_api_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut platform = Platform::start(
        Options::for_test(dir.path(), "envoy-records").unwrap(),
        Artifacts::from_workspace().unwrap(),
    )
    .unwrap();
    let client = Client::new(&platform.api_host(), GUEST_KEY);
    assert_eq!(client.create_action("sleepy", "nodejs:20", SLEEPY_JS).await.unwrap().status, 200);
    assert_eq!(client.invoke("sleepy", &json!({"ms": 1}), true).await.unwrap().status, 200);

    // A non-blocking activation of 1.5 s; the API goes away while it runs and stays away after.
    let accepted = client.post("/api/v1/namespaces/_/actions/sleepy", &json!({"ms": 1500})).await.unwrap();
    assert_eq!(accepted.status, 202, "{}", accepted.body);
    let id = accepted.body["activationId"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(300)).await;
    tokio::task::block_in_place(|| platform.stop_management());
    tokio::time::sleep(Duration::from_secs(3)).await;
    tokio::task::block_in_place(|| platform.start_management()).unwrap();

    let record = client.wait_for_activation(&id, Duration::from_secs(10)).await.unwrap();
    assert_eq!(record.status, 200, "the record was lost: {}", record.body);
    assert_eq!(record.body["response"]["result"], json!({"slept": 1500}));
}
