//! The filter rewritten to count its calls out of the VM (`whisk-bench --count-host-calls`) still
//! serves invokes, and Envoy shows the counts: the bench's host-call figures come from this path.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use e2e::client::{Client, envoy_stats};
use e2e::host_calls::{COUNTER_PREFIX, count_host_calls};
use e2e::{Artifacts, GUEST_KEY, Options, Platform};
use serde_json::json;

const WARM_INVOKES: usize = 10;

fn grown(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>, import: &str) -> f64 {
    let name = format!("wasmcustom.{COUNTER_PREFIX}{import}");
    after.get(&name).copied().unwrap_or_default() - before.get(&name).copied().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_counted_filter_serves_invokes_and_counts_its_calls_out_of_the_vm() {
    let dir = tempfile::tempdir().unwrap();
    let mut artifacts = Artifacts::from_workspace().unwrap();
    let counted = dir.path().join("counted.wasm");
    std::fs::write(&counted, count_host_calls(&std::fs::read(&artifacts.filter_wasm).unwrap()).unwrap())
        .unwrap();
    artifacts.filter_wasm = counted;
    let options = Options::for_test(dir.path(), "envoy-host-calls").unwrap();
    let platform = Platform::start(options, artifacts).unwrap();
    let client = Client::new(&platform.api_host(), GUEST_KEY);
    let code = "function main(p) { return {twice: p.n * 2}; }";
    assert_eq!(client.create_action("double", "nodejs:20", code).await.unwrap().status, 200);
    let cold = client.invoke("double", &json!({"n": 1}), true).await.unwrap();
    assert_eq!((cold.status, cold.body), (200, json!({"twice": 2})));

    let before = envoy_stats(&platform, COUNTER_PREFIX).await.unwrap();
    for n in 0..WARM_INVOKES {
        let warm = client.invoke("double", &json!({"n": n}), true).await.unwrap();
        assert_eq!((warm.status, warm.body), (200, json!({"twice": n * 2})));
    }
    let after = envoy_stats(&platform, COUNTER_PREFIX).await.unwrap();
    // Every invoke reads its request's and its answer's headers and bodies, and claims and
    // releases its container in shared data; the exact numbers are the bench's to report.
    let invokes = WARM_INVOKES as f64;
    for import in
        ["get_header_map_pairs", "get_buffer_bytes", "set_buffer_bytes", "get_shared_data", "set_shared_data"]
    {
        assert!(grown(&before, &after, import) >= invokes, "{import}: {before:?} → {after:?}");
    }
    // Only the filter's own counters are bumped through the counting: a counted build still
    // defines the metrics it defined, and the counting's bumps are not counted.
    assert!(grown(&before, &after, "increment_metric") < invokes, "{after:?}");
}
