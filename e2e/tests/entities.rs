//! Packages, bindings, triggers and rules through the whole platform: a packaged action invoked
//! through Envoy with its package's parameters, the same action through a binding, and a trigger
//! whose rule invokes an action through the data plane.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use e2e::client::Client;
use e2e::{Artifacts, GUEST_KEY, Options, Platform};
use serde_json::{Value, json};

const GREET_JS: &str =
    "function main(p) { console.log('greeting', p.name); return {text: p.greeting + ' ' + p.name}; }";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packages_bindings_triggers_and_rules_run_through_the_data_plane() {
    let dir = tempfile::tempdir().unwrap();
    let platform = Platform::start(
        Options::for_test(dir.path(), "envoy-entities").unwrap(),
        Artifacts::from_workspace().unwrap(),
    )
    .unwrap();
    let client = Client::new(&platform.api_host(), GUEST_KEY);

    // A package with a default parameter, and an action in it.
    let package = json!({"parameters": [{"key": "greeting", "value": "hello"}], "publish": true});
    assert_eq!(client.put("/api/v1/namespaces/_/packages/utils", &package).await.unwrap().status, 200);
    let action = json!({"exec": {"kind": "nodejs:20", "code": GREET_JS}});
    let created = client.put("/api/v1/namespaces/_/actions/utils/greet", &action).await.unwrap();
    assert_eq!(created.status, 200, "{}", created.body);

    let packaged = client.invoke("utils/greet", &json!({"name": "pkg"}), true).await.unwrap();
    assert_eq!((packaged.status, packaged.body.clone()), (200, json!({"text": "hello pkg"})));
    // Invoke parameters win over the package's.
    let overridden =
        client.invoke("utils/greet", &json!({"name": "x", "greeting": "hi"}), true).await.unwrap();
    assert_eq!(overridden.body, json!({"text": "hi x"}));

    // A binding with its own parameter reaches the same action.
    let binding = json!({"binding": {"namespace": "guest", "name": "utils"}, "parameters": [{"key": "greeting", "value": "hey"}]});
    assert_eq!(client.put("/api/v1/namespaces/_/packages/mine", &binding).await.unwrap().status, 200);
    let bound = client.invoke("mine/greet", &json!({"name": "bound"}), false).await.unwrap();
    assert_eq!(bound.status, 200, "{}", bound.body);
    assert_eq!(bound.body["response"]["result"], json!({"text": "hey bound"}));
    let path =
        bound.body["annotations"].as_array().unwrap().iter().find(|a| a["key"] == "path").unwrap()["value"]
            .clone();
    assert_eq!(path, json!("guest/utils/greet"), "the record names the real action");

    // A trigger with a rule: firing it invokes the action through Envoy, non-blocking.
    let trigger = json!({"parameters": [{"key": "name", "value": "trigger"}]});
    assert_eq!(client.put("/api/v1/namespaces/_/triggers/ping", &trigger).await.unwrap().status, 200);
    let rule = json!({"trigger": "/_/ping", "action": "/_/utils/greet"});
    let created_rule = client.put("/api/v1/namespaces/_/rules/on-ping", &rule).await.unwrap();
    assert_eq!(created_rule.status, 200, "{}", created_rule.body);
    let fired = client.post("/api/v1/namespaces/_/triggers/ping", &json!({})).await.unwrap();
    assert_eq!(fired.status, 202, "{}", fired.body);
    let trigger_id = fired.body["activationId"].as_str().unwrap().to_owned();
    let trigger_record = client.wait_for_activation(&trigger_id, Duration::from_secs(10)).await.unwrap();
    assert_eq!(trigger_record.status, 200);
    let rule_log: Value = serde_json::from_str(trigger_record.body["logs"][0].as_str().unwrap()).unwrap();
    assert_eq!(rule_log["success"], true, "{rule_log}");
    let rule_activation = rule_log["activationId"].as_str().unwrap();
    let action_record = client.wait_for_activation(rule_activation, Duration::from_secs(20)).await.unwrap();
    assert_eq!(action_record.status, 200, "the rule's activation {rule_activation} was never stored");
    assert_eq!(action_record.body["response"]["result"], json!({"text": "hello trigger"}));

    // A disabled rule does not fire.
    let disabled =
        client.post("/api/v1/namespaces/_/rules/on-ping", &json!({"status": "inactive"})).await.unwrap();
    assert_eq!(disabled.status, 200);
    assert_eq!(client.post("/api/v1/namespaces/_/triggers/ping", &json!({})).await.unwrap().status, 204);

    // A non-empty package cannot be deleted.
    assert_eq!(client.delete("/api/v1/namespaces/_/packages/utils").await.unwrap().status, 409);
}
