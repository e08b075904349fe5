//! The slice driven by the official OpenWhisk JavaScript client (npm `openwhisk`), proving a real
//! OpenWhisk client works unchanged: this test starts the platform and runs `node --test` in
//! `e2e/js` against it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use e2e::{Artifacts, GUEST_KEY, Options, Platform, workspace_root};

/// Runs `node --test <file>` in `e2e/js` against a fresh platform; `passes` tests must pass.
fn run_node_test(node: &str, file: &str, passes: usize) {
    let js = workspace_root().join("e2e/js");
    assert!(
        js.join("node_modules/openwhisk").exists(),
        "the npm package openwhisk is not installed: run `make deps` (npm ci in e2e/js)"
    );
    let dir = tempfile::tempdir().unwrap();
    let options = Options::for_test(dir.path(), node).unwrap();
    let platform = Platform::start(options, Artifacts::from_workspace().unwrap()).unwrap();
    let output = Command::new("node")
        .arg("--test")
        .arg(file)
        .current_dir(&js)
        .env("OW_APIHOST", platform.api_host())
        .env("OW_KEY", GUEST_KEY)
        .output()
        .expect("node runs");
    let report =
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "node --test failed:\n{report}\n{}", platform.logs(40));
    assert!(report.contains(&format!("# pass {passes}")), "the JS tests did not all run:\n{report}");
}

#[test]
fn the_official_javascript_client_works_unchanged() {
    run_node_test("envoy-js", "slice.test.js", 1);
}

#[test]
fn feeds_created_through_the_official_client_fire_their_trigger() {
    run_node_test("envoy-feeds", "feeds.test.js", 1);
}

#[test]
fn packages_triggers_rules_activations_and_web_actions_through_the_official_client() {
    run_node_test("envoy-entities-js", "entities.test.js", 1);
}
