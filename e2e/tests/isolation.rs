//! Namespace isolation through the whole platform: a key of namespace A can neither invoke nor
//! read nor list anything of namespace B, including through the data plane's resolve cache.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use e2e::client::Client;
use e2e::{Artifacts, GUEST_KEY, Options, Platform};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_of_one_namespace_reaches_nothing_of_another() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options::for_test(dir.path(), "envoy-isolation").unwrap();
    let data_dir = options.data_dir.clone();
    let platform = Platform::start(options, Artifacts::from_workspace().unwrap()).unwrap();
    let guest = Client::new(&platform.api_host(), GUEST_KEY);

    // A second namespace, created the way an operator does (wskadmin user create).
    let output = Command::new(&platform.artifacts.management_api)
        .args(["user", "create", "other", "--data-dir"])
        .arg(&data_dir)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let other_key = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    let other = Client::new(&platform.api_host(), &other_key);

    assert_eq!(
        guest
            .create_action("secret", "nodejs:20", "function main() { return {s: 42}; }")
            .await
            .unwrap()
            .status,
        200
    );
    let own = guest.invoke("secret", &json!({}), false).await.unwrap();
    assert_eq!(own.status, 200);
    let id = own.body["activationId"].as_str().unwrap().to_owned();
    guest.wait_for_activation(&id, std::time::Duration::from_secs(10)).await.unwrap();

    // The other key, with guest's resolution warm in the cache: still refused.
    for path in
        ["/api/v1/namespaces/guest/actions/secret?blocking=true", "/api/v1/namespaces/guest/actions/secret"]
    {
        let reply = other.post(path, &json!({})).await.unwrap();
        assert_eq!(reply.status, 403, "{path}: {}", reply.body);
        assert!(reply.body["error"].is_string() && reply.body["code"].is_string());
    }
    assert_eq!(other.get("/api/v1/namespaces/guest/actions/secret").await.unwrap().status, 403);
    assert_eq!(other.get("/api/v1/namespaces/guest/actions").await.unwrap().status, 403);
    assert_eq!(other.get(&format!("/api/v1/namespaces/guest/activations/{id}")).await.unwrap().status, 403);
    assert_eq!(other.get("/api/v1/namespaces/guest/activations").await.unwrap().status, 403);
    // Its own namespace (`_`) has neither the action nor the activation.
    assert_eq!(other.invoke("secret", &json!({}), false).await.unwrap().status, 404);
    assert_eq!(other.get(&format!("/api/v1/namespaces/_/activations/{id}")).await.unwrap().status, 404);
    assert_eq!(other.get("/api/v1/namespaces/_/actions").await.unwrap().body, json!([]));
    assert_eq!(other.get("/api/v1/namespaces").await.unwrap().body, json!(["other"]));
    // And guest still works.
    assert_eq!(guest.invoke("secret", &json!({}), true).await.unwrap().body, json!({"s": 42}));
}
