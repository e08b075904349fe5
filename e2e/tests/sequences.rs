//! Sequences through real Envoy: the filter runs each component as a blocking internal invoke
//! through its own ingress (same routing, waiting and cold starts as any invoke), chains the results
//! and records the sequence; components in packages, sequences in packages, errors that end a
//! sequence, nesting, and the official JavaScript client.

// Helpers of a test binary may panic: a panic is a failed test with its location.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::time::{Duration, Instant};

use e2e::client::{Client, Reply, annotation, control_metrics, metric};
use e2e::{Artifacts, GUEST_KEY, Options, Platform, workspace_root};
use serde_json::{Value, json};

const ADD_ONE_JS: &str = "function main(p) { return {n: p.n + 1}; }";
const DOUBLE_PY: &str = "def main(args):\n    return {'n': args['n'] * 2}\n";
const TO_STRING_JS: &str = "function main(p) { return {text: 'n=' + p.n}; }";
const THROWS_JS: &str = "function main() { throw new Error('boom in the middle'); }";
const REFUSES_JS: &str = "function main(p) { return {error: 'odd input ' + p.n}; }";

/// Records are written off the reply path: how long a test waits for one.
const RECORD_WAIT: Duration = Duration::from_secs(20);

fn start(dir: &tempfile::TempDir) -> Platform {
    let options = Options::for_test(dir.path(), "envoy-seq").expect("free ports");
    Platform::start(options, Artifacts::from_workspace().expect("artifacts")).expect("platform starts")
}

async fn put_sequence(client: &Client, path: &str, components: &[&str], parameters: Value) -> Reply {
    let body = json!({"exec": {"kind": "sequence", "components": components}, "parameters": parameters});
    client.put(&format!("/api/v1/namespaces/_/actions/{path}?overwrite=true"), &body).await.unwrap()
}

#[track_caller]
fn ok(reply: &Reply) {
    assert_eq!(reply.status, 200, "{}", reply.body);
}

/// The component ids a sequence record lists as its logs.
fn component_ids(record: &Value) -> Vec<String> {
    record["logs"].as_array().unwrap().iter().map(|id| id.as_str().unwrap().to_owned()).collect()
}

/// Each component's stored record, in order, checked against the sequence that caused it.
async fn component_records(client: &Client, sequence: &Value) -> Vec<Value> {
    let mut records = Vec::new();
    for id in component_ids(sequence) {
        assert!(id.len() == 32 && id.chars().all(|c| c.is_ascii_hexdigit()), "{id}");
        let stored = client.wait_for_activation(&id, RECORD_WAIT).await.unwrap();
        assert_eq!(stored.status, 200, "component record {id} was never stored");
        assert_eq!(stored.body["cause"], sequence["activationId"], "{}", stored.body);
        records.push(stored.body);
    }
    records
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequences_run_their_components_through_envoy() {
    let dir = tempfile::tempdir().unwrap();
    let platform = start(&dir);
    let client = Client::new(&platform.api_host(), GUEST_KEY);

    ok(&client.create_action("add_one", "nodejs:20", ADD_ONE_JS).await.unwrap());
    ok(&client.create_action("double", "python:3", DOUBLE_PY).await.unwrap());
    ok(&client.create_action("to_string", "nodejs:20", TO_STRING_JS).await.unwrap());
    let components = ["/_/add_one", "/_/double", "/_/to_string"];
    let created = put_sequence(&client, "chain", &components, json!([{"key": "n", "value": 10}])).await;
    ok(&created);
    assert_eq!(
        created.body["exec"]["components"],
        json!(["/guest/add_one", "/guest/double", "/guest/to_string"])
    );

    // Blocking, bare result: (3 + 1) * 2, and the sequence's default reaches the first component.
    let result = client.invoke("chain", &json!({"n": 3}), true).await.unwrap();
    assert_eq!((result.status, result.body.clone()), (200, json!({"text": "n=8"})));
    let defaults = client.invoke("chain", &json!({}), true).await.unwrap();
    assert_eq!(defaults.body, json!({"text": "n=22"}), "(10 + 1) * 2 from the sequence's default");

    // Blocking, the record: one for the sequence, its components' ids as logs.
    let reply = client.invoke("chain", &json!({"n": 1}), false).await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.body);
    let record = reply.body.clone();
    assert_eq!(reply.activation_id.as_deref(), record["activationId"].as_str());
    assert_eq!(record["name"], "chain");
    assert_eq!(record["namespace"], "guest");
    assert_eq!(record["response"]["status"], "success");
    assert_eq!(record["response"]["result"], json!({"text": "n=4"}));
    assert_eq!(annotation(&record, "topmost"), Some(json!(true)));
    assert_eq!(annotation(&record, "kind"), Some(json!("sequence")));
    assert_eq!(annotation(&record, "path"), Some(json!("guest/chain")));
    assert_eq!(annotation(&record, "limits").unwrap()["memory"], 256);
    assert!(record.get("cause").is_none(), "a topmost sequence has no cause: {record}");
    let parts = component_records(&client, &record).await;
    let names: Vec<&str> = parts.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["add_one", "double", "to_string"]);
    assert_eq!(parts[0]["response"]["result"], json!({"n": 2}));
    assert_eq!(parts[1]["response"]["result"], json!({"n": 4}));
    assert_eq!(annotation(&parts[1], "kind"), Some(json!("python:3")));
    let sum: u64 = parts.iter().map(|r| r["duration"].as_u64().unwrap()).sum();
    assert_eq!(record["duration"].as_u64(), Some(sum), "a sequence's duration is its components' sum");
    let stored =
        client.wait_for_activation(record["activationId"].as_str().unwrap(), RECORD_WAIT).await.unwrap();
    assert_eq!(stored.body["logs"], record["logs"]);

    // Non-blocking: 202 and the id; the record appears, and so do its components'.
    let queued =
        client.post("/api/v1/namespaces/_/actions/chain?blocking=false", &json!({"n": 5})).await.unwrap();
    assert_eq!(queued.status, 202, "{}", queued.body);
    let queued_id = queued.body["activationId"].as_str().unwrap().to_owned();
    let later = client.wait_for_activation(&queued_id, RECORD_WAIT).await.unwrap();
    assert_eq!(later.status, 200, "non-blocking sequence record {queued_id} never stored");
    assert_eq!(later.body["response"]["result"], json!({"text": "n=12"}));
    assert_eq!(component_records(&client, &later.body).await.len(), 3);

    // The first error ends the sequence, and is its answer: a thrown error in the middle...
    ok(&client.create_action("throws", "nodejs:20", THROWS_JS).await.unwrap());
    ok(&put_sequence(&client, "broken", &["/_/add_one", "/_/throws", "/_/to_string"], json!([])).await);
    let broken = client.invoke("broken", &json!({"n": 1}), false).await.unwrap();
    assert_eq!(broken.status, 502, "{}", broken.body);
    assert_eq!(broken.body["response"]["status"], "action developer error");
    let error = broken.body["response"]["result"]["error"].as_str().unwrap();
    assert!(error.contains("boom in the middle"), "{error}");
    let parts = component_records(&client, &broken.body).await;
    assert_eq!(parts.len(), 2, "to_string never ran");
    assert_eq!(parts[1]["name"], "throws");
    assert_eq!(parts[1]["response"], broken.body["response"]);
    let bare = client.invoke("broken", &json!({"n": 1}), true).await.unwrap();
    assert_eq!(bare.status, 502);
    assert!(bare.body["error"].as_str().unwrap().contains("boom in the middle"), "{}", bare.body);
    // ...and an application error (a result with `error`).
    ok(&client.create_action("refuses", "nodejs:20", REFUSES_JS).await.unwrap());
    ok(&put_sequence(&client, "refused", &["/_/add_one", "/_/refuses", "/_/to_string"], json!([])).await);
    let refused = client.invoke("refused", &json!({"n": 2}), false).await.unwrap();
    assert_eq!(refused.status, 502);
    assert_eq!(refused.body["response"]["status"], "application error");
    assert_eq!(refused.body["response"]["result"], json!({"error": "odd input 3"}));
    assert_eq!(component_ids(&refused.body).len(), 2);

    // A sequence in a package, with a component in a package.
    let package = client.put("/api/v1/namespaces/_/packages/math", &json!({})).await.unwrap();
    ok(&package);
    let body = json!({"exec": {"kind": "python:3", "code": DOUBLE_PY}});
    ok(&client.put("/api/v1/namespaces/_/actions/math/double?overwrite=true", &body).await.unwrap());
    ok(&put_sequence(&client, "math/pipeline", &["/_/add_one", "/guest/math/double"], json!([])).await);
    let packaged = client
        .post("/api/v1/namespaces/_/actions/math/pipeline?blocking=true", &json!({"n": 20}))
        .await
        .unwrap();
    assert_eq!(packaged.status, 200, "{}", packaged.body);
    assert_eq!(packaged.body["response"]["result"], json!({"n": 42}));
    assert_eq!(annotation(&packaged.body, "path"), Some(json!("guest/math/pipeline")));
    let parts = component_records(&client, &packaged.body).await;
    assert_eq!(annotation(&parts[1], "path"), Some(json!("guest/math/double")));

    // Nested: a sequence as a component is a sequence of its own, not topmost, caused by the outer.
    ok(&put_sequence(&client, "outer", &["/_/add_one", "/_/math/pipeline", "/_/to_string"], json!([])).await);
    let outer = client.invoke("outer", &json!({"n": 0}), false).await.unwrap();
    assert_eq!(outer.body["response"]["result"], json!({"text": "n=4"}), "{}", outer.body);
    let parts = component_records(&client, &outer.body).await;
    let inner = &parts[1];
    assert_eq!(inner["name"], "pipeline");
    assert_eq!(annotation(inner, "topmost"), Some(json!(false)));
    assert_eq!(annotation(inner, "causedBy"), Some(json!("sequence")));
    assert_eq!(component_records(&client, inner).await.len(), 2);

    // A component deleted after the sequence was written ends it with OpenWhisk's message.
    ok(&client.create_action("doomed", "nodejs:20", ADD_ONE_JS).await.unwrap());
    ok(&put_sequence(&client, "orphaned", &["/_/add_one", "/_/doomed"], json!([])).await);
    assert_eq!(client.delete("/api/v1/namespaces/_/actions/doomed").await.unwrap().status, 200);
    let orphaned = client.invoke("orphaned", &json!({"n": 1}), false).await.unwrap();
    assert_eq!(orphaned.status, 502, "{}", orphaned.body);
    assert_eq!(orphaned.body["response"]["status"], "application error");
    assert_eq!(orphaned.body["response"]["result"], json!({"error": "Sequence component does not exist."}));
    assert_eq!(component_ids(&orphaned.body).len(), 1);

    // Refusals at create time come back through Envoy in OpenWhisk's shape.
    let missing = put_sequence(&client, "bad", &["/_/add_one", "/_/nope"], json!([])).await;
    assert_eq!(missing.status, 400);
    assert_eq!(missing.body["error"], "Sequence component does not exist.");

    // The sequence's cost: its wall time beyond its components' durations, per component, against
    // a direct invoke's wall time beyond its duration. Everything is warm by now.
    let mut sequence_overheads = Vec::new();
    let mut direct_overheads = Vec::new();
    for n in 0..20 {
        let began = Instant::now();
        let reply = client.invoke("chain", &json!({"n": n}), false).await.unwrap();
        let wall = began.elapsed().as_secs_f64() * 1000.0;
        assert_eq!(reply.body["response"]["result"], json!({"text": format!("n={}", (n + 1) * 2)}));
        let duration = reply.body["duration"].as_f64().unwrap();
        sequence_overheads.push((wall - duration) / components.len() as f64);
        let began = Instant::now();
        let reply = client.invoke("add_one", &json!({"n": n}), false).await.unwrap();
        let wall = began.elapsed().as_secs_f64() * 1000.0;
        direct_overheads.push(wall - reply.body["duration"].as_f64().unwrap());
    }
    let (per_component, direct) = (median(sequence_overheads), median(direct_overheads));
    println!(
        "sequence overhead: {per_component:.2} ms per component (median of 20 warm 3-component runs, \
         wall time beyond the components' durations); a direct invoke's: {direct:.2} ms"
    );
    assert!(per_component < 250.0, "a component costs {per_component:.1} ms beyond its own run");

    // No cold start was ever asked for a sequence: every one asked for started a container.
    let page = control_metrics(&platform).await.unwrap();
    let started = metric(&page, "xds_whisk_cold_starts_total", "outcome=\"started\"");
    let asked = metric(&page, "xds_whisk_cold_starts_total", "");
    assert!(started >= 6.0, "one per atomic action at least: {page}");
    assert_eq!(asked, started, "a cold start that did not start a container: {page}");

    // The official JavaScript client creates and invokes a sequence unchanged.
    let js = workspace_root().join("e2e/js");
    assert!(
        js.join("node_modules/openwhisk").exists(),
        "the npm package openwhisk is not installed: run `make deps` (npm ci in e2e/js)"
    );
    let output = tokio::process::Command::new("node")
        .arg("--test")
        .arg("sequences.test.js")
        .current_dir(&js)
        .env("OW_APIHOST", platform.api_host())
        .env("OW_KEY", GUEST_KEY)
        .output()
        .await
        .expect("node runs");
    let report =
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "node --test failed:\n{report}\n{}", platform.logs(40));
    assert!(report.contains("# pass 1"), "the JS test did not run:\n{report}");
}
