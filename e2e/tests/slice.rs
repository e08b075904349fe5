//! The whole path on one machine, with every part real: wsk's calls through Envoy and the wasm
//! filter, cold starts through the xDS control server and the local runtime, records in SQLite.

// Helpers of a test binary may panic: a panic is a failed test with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use e2e::client::{Client, annotation, control_metrics, envoy_stat, metric};
use e2e::{Artifacts, GUEST_KEY, Options, Platform};
use serde_json::{Value, json};

const HELLO_JS: &str =
    "function main(p) { console.log('hello from node', p.name); return {greeting: 'hello ' + p.name}; }";
const HELLO_PY: &str = "def main(args):\n    print('hello from python', args.get('name'))\n    return {'greeting': 'hello ' + args.get('name', 'nobody')}\n";
const THROWS_JS: &str = "function main() { throw new Error('boom'); }";
const APP_ERROR_JS: &str = "function main() { return {error: 'not today'}; }";

fn start(dir: &tempfile::TempDir) -> Platform {
    let options = Options::for_test(dir.path(), "envoy-test").expect("free ports");
    Platform::start(options, Artifacts::from_workspace().expect("artifacts")).expect("platform starts")
}

async fn cold_starts(platform: &Platform) -> f64 {
    metric(&control_metrics(platform).await.unwrap(), "xds_whisk_cold_starts_total", "outcome=\"started\"")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_invoke_read_back_and_errors_through_envoy() {
    let dir = tempfile::tempdir().unwrap();
    let mut platform = start(&dir);
    let client = Client::new(&platform.api_host(), GUEST_KEY);

    // Create and read back in OpenWhisk's shape.
    let created = client.create_action("hello", "nodejs:20", HELLO_JS).await.unwrap();
    assert_eq!(created.status, 200, "{:?}", created.body);
    let action = client.get("/api/v1/namespaces/_/actions/hello").await.unwrap();
    assert_eq!(action.status, 200);
    for field in ["namespace", "name", "version", "exec", "limits", "parameters", "annotations", "publish"] {
        assert!(action.body.get(field).is_some(), "action lacks {field}: {}", action.body);
    }
    assert_eq!(action.body["namespace"], "guest");
    let listed = client.get("/api/v1/namespaces/_/actions").await.unwrap();
    assert!(listed.body.as_array().unwrap().iter().any(|a| a["name"] == "hello"));

    // Cold invoke: a record with initTime, the result and the logs.
    let before = cold_starts(&platform).await;
    let cold = client.invoke("hello", &json!({"name": "x"}), false).await.unwrap();
    assert_eq!(cold.status, 200, "{}", cold.body);
    let record = &cold.body;
    for field in [
        "activationId",
        "namespace",
        "name",
        "version",
        "start",
        "end",
        "duration",
        "response",
        "logs",
        "annotations",
    ] {
        assert!(record.get(field).is_some(), "record lacks {field}: {record}");
    }
    assert_eq!(record["response"]["status"], "success");
    assert_eq!(record["response"]["statusCode"], 0);
    assert_eq!(record["response"]["success"], true);
    assert_eq!(record["response"]["result"], json!({"greeting": "hello x"}));
    assert!(annotation(record, "initTime").is_some(), "a cold start has initTime: {record}");
    assert!(
        record["logs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l.as_str().unwrap().contains("stdout: hello from node x")),
        "logs: {}",
        record["logs"]
    );
    assert_eq!(cold.activation_id.as_deref(), record["activationId"].as_str());
    assert_eq!(cold_starts(&platform).await, before + 1.0);

    // Warm invokes: no initTime, and the control plane's cold-start counter does not move.
    for _ in 0..5 {
        let warm = client.invoke("hello", &json!({"name": "y"}), false).await.unwrap();
        assert_eq!(warm.status, 200);
        assert_eq!(annotation(&warm.body, "initTime"), None, "warm record: {}", warm.body);
    }
    let bare = client.invoke("hello", &json!({"name": "z"}), true).await.unwrap();
    assert_eq!((bare.status, bare.body.clone()), (200, json!({"greeting": "hello z"})));
    assert_eq!(cold_starts(&platform).await, before + 1.0, "warm invokes never cold start");
    // Warm invokes are answered from the filter's resolve cache: no call before the container.
    // (Each worker hands Envoy its count on its next tick.)
    let mut hits = 0.0;
    for _ in 0..50 {
        hits = envoy_stat(&platform, "whisk_resolve_cache_hits").await.unwrap();
        if hits >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(hits >= 1.0, "warm invokes hit the resolve cache");

    // An update takes effect on the very next invoke (the cache follows the entity generation).
    client.create_action("hello", "nodejs:20", "function main(p) { return {v: 2}; }").await.unwrap();
    assert_eq!(client.invoke("hello", &json!({}), true).await.unwrap().body, json!({"v": 2}));
    client.create_action("hello", "nodejs:20", HELLO_JS).await.unwrap();
    assert_eq!(
        client.invoke("hello", &json!({"name": "back"}), true).await.unwrap().body,
        json!({"greeting": "hello back"})
    );

    // A bodyless blocking invoke (curl -X POST) still runs, with the default parameters.
    let bodyless = reqwest::Client::new()
        .post(format!("{}/api/v1/namespaces/_/actions/hello?blocking=true&result=true", platform.api_host()))
        .basic_auth(GUEST_KEY.split(':').next().unwrap(), GUEST_KEY.split(':').nth(1))
        .send()
        .await
        .unwrap();
    assert_eq!(bodyless.status(), 200);
    assert_eq!(bodyless.json::<Value>().await.unwrap(), json!({"greeting": "hello undefined"}));

    // The container's answer reaches the client rewritten: the reply's own length and type, the
    // activation id, and none of the runtime's headers to the filter (its logs ride in one).
    let warm = reqwest::Client::new()
        .post(format!("{}/api/v1/namespaces/_/actions/hello?blocking=true", platform.api_host()))
        .basic_auth(GUEST_KEY.split(':').next().unwrap(), GUEST_KEY.split(':').nth(1))
        .json(&json!({"name": "h"}))
        .send()
        .await
        .unwrap();
    assert_eq!(warm.status(), 200);
    let headers = warm.headers().clone();
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(headers.get_all("content-length").iter().count(), 1, "{headers:?}");
    assert!(headers.get("x-whisk-logs").is_none(), "the runtime's logs header leaked: {headers:?}");
    let text = warm.text().await.unwrap();
    assert_eq!(headers["content-length"].to_str().unwrap(), text.len().to_string());
    let answered: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(headers["x-openwhisk-activation-id"].to_str().unwrap(), answered["activationId"]);
    assert_eq!(answered["response"]["result"], json!({"greeting": "hello h"}));
    assert!(answered["logs"].to_string().contains("hello from node h"), "{answered}");

    // Read-back of the stored record, its logs and its result.
    let id = record["activationId"].as_str().unwrap();
    let stored = client.wait_for_activation(id, Duration::from_secs(10)).await.unwrap();
    assert_eq!(stored.status, 200);
    assert_eq!(stored.body["response"]["result"], json!({"greeting": "hello x"}));
    let logs = client.get(&format!("/api/v1/namespaces/_/activations/{id}/logs")).await.unwrap();
    assert!(logs.body["logs"].to_string().contains("hello from node x"), "{}", logs.body);
    let result = client.get(&format!("/api/v1/namespaces/_/activations/{id}/result")).await.unwrap();
    assert_eq!(result.body["result"], json!({"greeting": "hello x"}));

    // Non-blocking: 202 with the id, and the record appears.
    let queued = client
        .post("/api/v1/namespaces/_/actions/hello?blocking=false", &json!({"name": "later"}))
        .await
        .unwrap();
    assert_eq!(queued.status, 202, "{}", queued.body);
    let queued_id = queued.body["activationId"].as_str().unwrap().to_owned();
    let later = client.wait_for_activation(&queued_id, Duration::from_secs(20)).await.unwrap();
    assert_eq!(later.status, 200, "non-blocking record {queued_id} never stored");
    assert_eq!(later.body["response"]["result"], json!({"greeting": "hello later"}));

    // Python.
    assert_eq!(client.create_action("hello_py", "python:3", HELLO_PY).await.unwrap().status, 200);
    let py = client.invoke("hello_py", &json!({"name": "snake"}), false).await.unwrap();
    assert_eq!(py.status, 200, "{}", py.body);
    assert_eq!(py.body["response"]["result"], json!({"greeting": "hello snake"}));
    assert!(py.body["logs"].to_string().contains("hello from python snake"), "{}", py.body);

    // Errors in OpenWhisk's shape.
    client.create_action("throws", "nodejs:20", THROWS_JS).await.unwrap();
    let thrown = client.invoke("throws", &json!({}), false).await.unwrap();
    assert_eq!(thrown.status, 502, "{}", thrown.body);
    assert_eq!(thrown.body["response"]["status"], "action developer error");
    assert!(thrown.body["response"]["result"]["error"].as_str().unwrap().contains("boom"));
    client.create_action("app_error", "nodejs:20", APP_ERROR_JS).await.unwrap();
    let app = client.invoke("app_error", &json!({}), false).await.unwrap();
    assert_eq!(app.status, 502);
    assert_eq!(app.body["response"]["status"], "application error");

    // A `final` action keeps its parameters: an invoke may add parameters, not override them.
    let sealed = json!({"exec": {"kind": "nodejs:20", "code": "function main(p) { return p; }"},
                        "parameters": [{"key": "mode", "value": "safe"}],
                        "annotations": [{"key": "final", "value": true}]});
    assert_eq!(client.put("/api/v1/namespaces/_/actions/sealed", &sealed).await.unwrap().status, 200);
    let added = client.invoke("sealed", &json!({"extra": 1}), true).await.unwrap();
    assert_eq!(added.body, json!({"mode": "safe", "extra": 1}));
    let overridden = client.invoke("sealed", &json!({"mode": "unsafe"}), true).await.unwrap();
    assert_eq!(overridden.status, 400, "{}", overridden.body);
    assert_eq!(
        overridden.body["error"],
        "Request defines parameters that are not allowed (e.g., reserved properties)."
    );

    let missing = client.invoke("nope", &json!({}), false).await.unwrap();
    assert_eq!(missing.status, 404);
    assert!(missing.body["error"].is_string() && missing.body["code"].is_string(), "{}", missing.body);
    let wrong_key = Client::new(&platform.api_host(), "23bc46b1-71f6-4ed5-8c54-816aa4f8c502:wrong");
    let denied = wrong_key.invoke("hello", &json!({}), false).await.unwrap();
    assert_eq!(denied.status, 401);
    assert!(denied.body["error"].is_string() && denied.body["code"].is_string());
    assert_eq!(wrong_key.get("/api/v1/namespaces/_/actions").await.unwrap().status, 401);
    let malformed = reqwest::Client::new()
        .post(format!("{}/api/v1/namespaces/_/actions/hello?blocking=true", platform.api_host()))
        .basic_auth(GUEST_KEY.split(':').next().unwrap(), GUEST_KEY.split(':').nth(1))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status(), 400);
    let internal =
        reqwest::get(format!("{}/internal/v1/resolve?namespace=guest&action=hello", platform.api_host()))
            .await
            .unwrap();
    assert_eq!(internal.status(), 404, "internal paths are not reachable through the ingress");

    // A restart of the management API keeps actions and activations.
    platform.restart_management().unwrap();
    assert_eq!(client.get("/api/v1/namespaces/_/actions/hello").await.unwrap().status, 200);
    assert_eq!(client.get(&format!("/api/v1/namespaces/_/activations/{id}")).await.unwrap().status, 200);
    let after = client.invoke("hello", &json!({"name": "again"}), true).await.unwrap();
    assert_eq!(after.body, json!({"greeting": "hello again"}));

    // Delete.
    assert_eq!(client.delete("/api/v1/namespaces/_/actions/hello").await.unwrap().status, 200);
    assert_eq!(client.get("/api/v1/namespaces/_/actions/hello").await.unwrap().status, 404);
    assert_eq!(client.invoke("hello", &json!({}), false).await.unwrap().status, 404);
}
