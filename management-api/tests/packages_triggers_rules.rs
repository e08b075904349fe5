//! Packages, bindings, packaged actions, triggers and rules through `Router::oneshot`, with a small
//! in-process HTTP server standing in for the ingress that trigger fires invoke through; on SQLite
//! and on PostgreSQL.

// Helpers outside `#[test]` functions are not covered by clippy.toml's allow-unwrap-in-tests.
#![allow(clippy::unwrap_used, reason = "a panic in a test helper is a failed test with its location")]

mod support;

use axum::http::{Method, StatusCode};
use management_api::Key;
use serde_json::{Value, json};
use support::{
    Backend, Harness, assert_error, create, harness, harness_with_ingress, internal, on_every_backend,
    request, resolve, send, stand_in_ingress,
};
use whisk_contract::{ActionCode, ActivationRecord, ResolvedAction};

on_every_backend!(
    package_lifecycle_in_openwhisks_shape,
    packaged_actions_live_in_their_package,
    bindings_reach_published_packages_with_merged_parameters,
    triggers_and_rules_lifecycle,
    firing_invokes_active_rules_through_the_ingress_and_records_the_trigger,
    a_key_reaches_no_package_trigger_or_rule_of_another_namespace,
    api_info_and_limits_are_served,
);

/// `PUT` of `body` at `uri` with `key`; answers status and body.
async fn put(h: &Harness, key: &Key, uri: &str, body: Value) -> (StatusCode, Value) {
    send(&h.router, request(Method::PUT, uri, Some(key), Some(body))).await
}

async fn get(h: &Harness, key: &Key, uri: &str) -> (StatusCode, Value) {
    send(&h.router, request(Method::GET, uri, Some(key), None)).await
}

async fn delete(h: &Harness, key: &Key, uri: &str) -> (StatusCode, Value) {
    send(&h.router, request(Method::DELETE, uri, Some(key), None)).await
}

async fn post(h: &Harness, key: &Key, uri: &str, body: Option<Value>) -> (StatusCode, Value) {
    send(&h.router, request(Method::POST, uri, Some(key), body)).await
}

/// Asserts a 200 and answers the body.
#[track_caller]
fn ok((status, body): (StatusCode, Value)) -> Value {
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

fn kv(pairs: &[(&str, Value)]) -> Value {
    Value::Array(pairs.iter().map(|(key, value)| json!({"key": key, "value": value})).collect())
}

fn code(kind: &str) -> Value {
    json!({"exec": {"kind": kind, "code": "function main(p) { return p; }"}})
}

async fn package_lifecycle_in_openwhisks_shape(backend: Backend) {
    let h = harness(&backend);
    let uri = "/api/v1/namespaces/_/packages/utils";
    let created = ok(put(&h, &h.guest, uri, json!({"parameters": kv(&[("a", json!(1))])})).await);
    assert_eq!(created["namespace"], "guest");
    assert_eq!(created["name"], "utils");
    assert_eq!(created["version"], "0.0.1");
    assert_eq!(created["publish"], false);
    assert_eq!(created["binding"], json!({}));
    assert_eq!(created["parameters"], kv(&[("a", json!(1))]));
    assert_eq!(created["annotations"], json!([]));

    let (status, conflict) = put(&h, &h.guest, uri, json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_error(&conflict, "resource already exists");
    let updated = ok(put(&h, &h.guest, &format!("{uri}?overwrite=true"), json!({"publish": true})).await);
    assert_eq!(updated["version"], "0.0.2");
    assert_eq!(updated["publish"], true);
    assert_eq!(updated["parameters"], created["parameters"], "an update keeps what it omits");

    let got = ok(get(&h, &h.guest, "/api/v1/namespaces/guest/packages/utils").await);
    assert_eq!((got["actions"].clone(), got["feeds"].clone()), (json!([]), json!([])));
    assert_eq!(got["version"], "0.0.2");
    ok(put(&h, &h.guest, "/api/v1/namespaces/_/packages/other", json!({})).await);
    let list = ok(get(&h, &h.guest, "/api/v1/namespaces/_/packages").await);
    let names: Vec<_> = list.as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["other", "utils"], "most recently updated first");
    assert!(list[0].get("parameters").is_none() && list[0]["binding"] == json!({}));
    let page = ok(get(&h, &h.guest, "/api/v1/namespaces/_/packages?limit=1&skip=1").await);
    assert_eq!(page[0]["name"], "utils");
    assert_eq!(
        ok(get(&h, &h.guest, "/api/v1/namespaces/_/packages?count=true").await),
        json!({"packages": 2})
    );

    for (uri, message) in [
        ("/api/v1/namespaces/_/packages/default", "Package name 'default' is reserved."),
        ("/api/v1/namespaces/_/packages/bad$name", "illegal characters"),
    ] {
        let (status, body) = put(&h, &h.guest, uri, json!({})).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}");
        assert_error(&body, message);
    }

    let deleted = ok(delete(&h, &h.guest, uri).await);
    assert_eq!(deleted["name"], "utils");
    for (status, body) in [get(&h, &h.guest, uri).await, delete(&h, &h.guest, uri).await] {
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_error(&body, "does not exist");
    }
}

async fn packaged_actions_live_in_their_package(backend: Backend) {
    let h = harness(&backend);
    let (status, body) =
        put(&h, &h.guest, "/api/v1/namespaces/_/actions/utils/echo", code("nodejs:20")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "no package yet");
    assert_error(&body, "does not exist");

    let package_parameters = kv(&[("a", json!("package")), ("b", json!("package"))]);
    ok(put(&h, &h.guest, "/api/v1/namespaces/_/packages/utils", json!({"parameters": package_parameters}))
        .await);
    let mut action = code("nodejs:20");
    action["parameters"] = kv(&[("b", json!("action")), ("c", json!("action"))]);
    let created = ok(put(&h, &h.guest, "/api/v1/namespaces/_/actions/utils/echo", action.clone()).await);
    assert_eq!(created["namespace"], "guest/utils");
    assert_eq!(created["name"], "echo");
    assert_eq!(created["version"], "0.0.1");
    let (status, _) = put(&h, &h.guest, "/api/v1/namespaces/_/actions/utils%2Fecho", action.clone()).await;
    assert_eq!(status, StatusCode::CONFLICT, "the encoded path names the same action");
    let updated =
        ok(put(&h, &h.guest, "/api/v1/namespaces/_/actions/utils%2Fecho?overwrite=true", action).await);
    assert_eq!(updated["version"], "0.0.2");

    let merged = kv(&[("a", json!("package")), ("b", json!("action")), ("c", json!("action"))]);
    for uri in ["/api/v1/namespaces/_/actions/utils/echo", "/api/v1/namespaces/guest/actions/utils%2Fecho"] {
        let got = ok(get(&h, &h.guest, uri).await);
        assert_eq!(got["namespace"], "guest/utils", "{uri}");
        assert_eq!(got["parameters"], merged, "{uri}: package parameters under the action's");
    }
    create(&h, "plain").await;
    let list = ok(get(&h, &h.guest, "/api/v1/namespaces/_/actions").await);
    let listed: Vec<_> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|a| format!("{}/{}", a["namespace"].as_str().unwrap(), a["name"].as_str().unwrap()))
        .collect();
    assert_eq!(listed, ["guest/plain", "guest/utils/echo"]);
    assert_eq!(ok(get(&h, &h.guest, "/api/v1/namespaces/_/actions?count=true").await), json!({"actions": 2}));
    let package = ok(get(&h, &h.guest, "/api/v1/namespaces/_/packages/utils").await);
    assert_eq!(package["actions"].as_array().unwrap().len(), 1);
    assert_eq!(package["actions"][0]["name"], "echo");
    assert_eq!(package["actions"][0]["version"], "0.0.2");
    assert_eq!(package["actions"][0]["annotations"], json!([{"key": "exec", "value": "nodejs:20"}]));

    let (status, body) = delete(&h, &h.guest, "/api/v1/namespaces/_/packages/utils").await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_error(&body, "Package not empty (contains 1 entity). Set force param or delete package contents.");

    let (status, body) = resolve(&h, "_", "utils%2Fecho", Some(&h.guest)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let resolved: ResolvedAction = serde_json::from_value(body).unwrap();
    assert_eq!(
        (resolved.namespace.as_str(), resolved.package.as_deref(), resolved.name.as_str()),
        ("guest", Some("utils"), "echo")
    );
    assert_eq!(serde_json::to_value(&resolved.parameters).unwrap(), merged);
    assert_eq!(resolved.subject, "guest");
    for uri in ["/internal/v1/actions/guest/utils/echo", "/internal/v1/actions/guest/utils%2Fecho"] {
        let (status, body) = send(&h.router, internal(Method::GET, uri, None, None)).await;
        assert_eq!(status, StatusCode::OK, "{uri}: {body}");
        let code: ActionCode = serde_json::from_value(body).unwrap();
        assert_eq!(
            (code.package.as_deref(), code.revision.as_str()),
            (Some("utils"), resolved.revision.as_str())
        );
        assert_eq!(code.code, "function main(p) { return p; }");
    }
    let (status, _) =
        send(&h.router, internal(Method::GET, "/internal/v1/actions/guest/utils/absent", None, None)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    ok(delete(&h, &h.guest, "/api/v1/namespaces/_/actions/utils/echo").await);
    let (status, _) = get(&h, &h.guest, "/api/v1/namespaces/_/actions/utils/echo").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    ok(delete(&h, &h.guest, "/api/v1/namespaces/_/packages/utils").await);
    let (status, _) = resolve(&h, "_", "utils%2Fecho", Some(&h.guest)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // `force=true` takes the package's actions with it, and only them.
    ok(put(&h, &h.guest, "/api/v1/namespaces/_/packages/tools", json!({})).await);
    for name in ["a", "b"] {
        ok(put(&h, &h.guest, &format!("/api/v1/namespaces/_/actions/tools/{name}"), code("nodejs:20")).await);
    }
    let (status, body) = delete(&h, &h.guest, "/api/v1/namespaces/_/packages/tools?force=maybe").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_error(&body, "not a boolean for query parameter 'force'");
    let (status, _) = delete(&h, &h.guest, "/api/v1/namespaces/_/packages/tools?force=false").await;
    assert_eq!(status, StatusCode::CONFLICT);
    let deleted = ok(delete(&h, &h.guest, "/api/v1/namespaces/_/packages/tools?force=true").await);
    assert_eq!(deleted["name"], "tools");
    for uri in ["/api/v1/namespaces/_/packages/tools", "/api/v1/namespaces/_/actions/tools/a"] {
        let (status, _) = get(&h, &h.guest, uri).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{uri}");
    }
    let left = ok(get(&h, &h.guest, "/api/v1/namespaces/_/actions").await);
    let names: Vec<_> = left.as_array().unwrap().iter().map(|a| a["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["plain"]);
}

async fn bindings_reach_published_packages_with_merged_parameters(backend: Backend) {
    let h = harness(&backend);
    // alice publishes `shared` (with an action) and keeps `private` to herself.
    let shared =
        json!({"publish": true, "parameters": kv(&[("p", json!("package")), ("q", json!("package"))])});
    ok(put(&h, &h.alice, "/api/v1/namespaces/_/packages/shared", shared).await);
    ok(put(&h, &h.alice, "/api/v1/namespaces/_/packages/private", json!({})).await);
    let mut echo = code("python:3");
    echo["parameters"] = kv(&[("r", json!("action"))]);
    ok(put(&h, &h.alice, "/api/v1/namespaces/_/actions/shared/echo", echo).await);

    let bind = |namespace: &str, name: &str| json!({"binding": {"namespace": namespace, "name": name}});
    for target in ["private", "absent"] {
        let (status, body) =
            put(&h, &h.guest, "/api/v1/namespaces/_/packages/mine", bind("alice", target)).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{target}: {body}");
        assert_error(&body, &format!("not authorized to access 'alice/{target}'"));
    }
    let (status, body) = put(&h, &h.guest, "/api/v1/namespaces/_/packages/mine", bind("_", "absent")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_error(&body, "Binding references a package that does not exist.");

    let mut binding = bind("alice", "shared");
    binding["parameters"] = kv(&[("q", json!("binding")), ("r", json!("binding"))]);
    let created = ok(put(&h, &h.guest, "/api/v1/namespaces/_/packages/mine", binding).await);
    assert_eq!(created["binding"], json!({"namespace": "alice", "name": "shared"}));
    assert_eq!(
        created["annotations"],
        json!([{"key": "binding", "value": {"namespace": "alice", "name": "shared"}}])
    );

    let (status, body) = resolve(&h, "guest", "mine%2Fecho", Some(&h.guest)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let resolved: ResolvedAction = serde_json::from_value(body).unwrap();
    assert_eq!(resolved.path(), "alice/shared/echo", "the real owner's names");
    assert_eq!(resolved.subject, "guest", "the caller stays the subject");
    assert_eq!(
        serde_json::to_value(&resolved.parameters).unwrap(),
        kv(&[("p", json!("package")), ("q", json!("binding")), ("r", json!("action"))]),
        "bound package < binding < action"
    );

    let got = ok(get(&h, &h.guest, "/api/v1/namespaces/_/packages/mine").await);
    assert_eq!(got["name"], "mine");
    assert_eq!(
        got["parameters"],
        kv(&[("p", json!("package")), ("q", json!("binding")), ("r", json!("binding"))])
    );
    assert_eq!(got["actions"][0]["name"], "echo");

    // A binding holds no actions of its own, and another namespace's code is not readable through it.
    let (status, body) = put(&h, &h.guest, "/api/v1/namespaces/_/actions/mine/x", code("nodejs:20")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_error(&body, "Operation not permitted on package binding.");
    let (status, body) = delete(&h, &h.guest, "/api/v1/namespaces/_/actions/mine/echo").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_error(&body, "Operation not permitted on package binding.");
    let (status, _) = get(&h, &h.guest, "/api/v1/namespaces/_/actions/mine/echo").await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // Published packages are readable; the rest of alice's namespace is not.
    assert_eq!(
        ok(get(&h, &h.guest, "/api/v1/namespaces/alice/packages/shared").await)["actions"][0]["name"],
        "echo"
    );
    for uri in [
        "/api/v1/namespaces/alice/packages/private",
        "/api/v1/namespaces/alice/packages/absent",
        "/api/v1/namespaces/alice/actions/shared/echo",
    ] {
        let (status, body) = get(&h, &h.guest, uri).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{uri}");
        assert_error(&body, "not authorized to access 'alice'");
    }
    let (status, _) = resolve(&h, "alice", "shared%2Fecho", Some(&h.guest)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "only through a binding");
    // Listing another namespace shows its published packages only (`wsk package list /alice`).
    let listed = ok(get(&h, &h.guest, "/api/v1/namespaces/alice/packages").await);
    let names: Vec<&str> = listed.as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["shared"]);
    assert_eq!(
        ok(get(&h, &h.guest, "/api/v1/namespaces/alice/packages?count=true").await),
        json!({"packages": 1})
    );

    // Same-namespace bindings: no binding of a binding, no package turned into a binding.
    ok(put(&h, &h.guest, "/api/v1/namespaces/_/packages/local", json!({})).await);
    ok(put(&h, &h.guest, "/api/v1/namespaces/_/packages/b1", bind("_", "local")).await);
    let (status, body) = put(&h, &h.guest, "/api/v1/namespaces/_/packages/b2", bind("guest", "b1")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_error(&body, "Cannot bind to another package binding.");
    let (status, body) =
        put(&h, &h.guest, "/api/v1/namespaces/_/packages/local?overwrite=true", bind("alice", "shared"))
            .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_error(&body, "Resource is a package and cannot be converted into a binding.");

    // A binding can go even though its bound package holds actions.
    ok(delete(&h, &h.guest, "/api/v1/namespaces/_/packages/mine").await);
    let (status, _) = resolve(&h, "guest", "mine%2Fecho", Some(&h.guest)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

async fn triggers_and_rules_lifecycle(backend: Backend) {
    let h = harness(&backend);
    create(&h, "hello").await;
    let trigger_uri = "/api/v1/namespaces/_/triggers/t";
    let created =
        ok(put(&h, &h.guest, trigger_uri, json!({"parameters": kv(&[("a", json!(1))]), "limits": {}})).await);
    assert_eq!(created["namespace"], "guest");
    assert_eq!(created["version"], "0.0.1");
    assert_eq!((created["limits"].clone(), created["rules"].clone()), (json!({}), json!({})));
    let (status, _) = put(&h, &h.guest, trigger_uri, json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let updated =
        ok(put(&h, &h.guest, &format!("{trigger_uri}?overwrite=true"), json!({"publish": true})).await);
    assert_eq!(
        (updated["version"].clone(), updated["parameters"].clone()),
        (json!("0.0.2"), created["parameters"].clone())
    );

    let rule_uri = "/api/v1/namespaces/_/rules/r";
    for (body, message) in [
        (json!({"trigger": "/guest/nope", "action": "hello"}), "trigger /guest/nope does not exist"),
        (json!({"trigger": "t", "action": "/_/nope"}), "action /guest/nope does not exist"),
        (json!({"trigger": "t", "action": "/_/pkg/nope"}), "action /guest/pkg/nope does not exist"),
        (json!({"trigger": "t"}), "rule requires a valid trigger and a valid action"),
        (json!({"trigger": "/a/b/c/d", "action": "hello"}), "fully qualified name"),
    ] {
        let (status, error) = put(&h, &h.guest, rule_uri, body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {error}");
        assert_error(&error, message);
    }
    let rule = ok(put(&h, &h.guest, rule_uri, json!({"trigger": "/_/t", "action": "/guest/hello"})).await);
    assert_eq!(rule["status"], "active");
    assert_eq!(rule["version"], "0.0.1");
    assert_eq!(rule["trigger"], json!({"name": "t", "path": "guest"}));
    assert_eq!(rule["action"], json!({"name": "hello", "path": "guest"}));
    let (status, _) = put(&h, &h.guest, rule_uri, json!({"trigger": "t", "action": "hello"})).await;
    assert_eq!(status, StatusCode::CONFLICT);

    let trigger = ok(get(&h, &h.guest, trigger_uri).await);
    assert_eq!(
        trigger["rules"],
        json!({"guest/r": {"action": {"name": "hello", "path": "guest"}, "status": "active"}})
    );

    let disabled = ok(post(&h, &h.guest, rule_uri, Some(json!({"status": "inactive"}))).await);
    assert_eq!(disabled["status"], "inactive");
    assert_eq!(ok(get(&h, &h.guest, rule_uri).await)["status"], "inactive");
    let overwritten =
        ok(put(&h, &h.guest, &format!("{rule_uri}?overwrite=true"), json!({"publish": true})).await);
    assert_eq!(
        (overwritten["status"].clone(), overwritten["version"].clone()),
        (json!("inactive"), json!("0.0.2"))
    );
    assert_eq!(overwritten["trigger"]["name"], "t", "an update keeps the trigger it omits");
    let (status, body) = post(&h, &h.guest, rule_uri, Some(json!({"status": "paused"}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_error(&body, "status must be 'active' or 'inactive'");
    assert_eq!(ok(post(&h, &h.guest, rule_uri, Some(json!({"status": "active"}))).await)["status"], "active");

    let rules = ok(get(&h, &h.guest, "/api/v1/namespaces/_/rules").await);
    assert_eq!(rules.as_array().unwrap().len(), 1);
    assert_eq!(rules[0]["status"], "active");
    assert_eq!(ok(get(&h, &h.guest, "/api/v1/namespaces/_/rules?count=true").await), json!({"rules": 1}));
    let triggers = ok(get(&h, &h.guest, "/api/v1/namespaces/_/triggers").await);
    assert_eq!(triggers[0]["name"], "t");
    assert!(triggers[0].get("rules").is_none());
    assert_eq!(
        ok(get(&h, &h.guest, "/api/v1/namespaces/_/triggers?count=true").await),
        json!({"triggers": 1})
    );

    // Deleting the trigger leaves the rule, inactive; it cannot be enabled without a trigger.
    ok(delete(&h, &h.guest, trigger_uri).await);
    assert_eq!(ok(get(&h, &h.guest, rule_uri).await)["status"], "inactive");
    let (status, _) = post(&h, &h.guest, rule_uri, Some(json!({"status": "active"}))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    ok(put(&h, &h.guest, trigger_uri, json!({})).await);
    assert_eq!(ok(get(&h, &h.guest, trigger_uri).await)["rules"]["guest/r"]["status"], "inactive");
    ok(delete(&h, &h.guest, rule_uri).await);
    for (status, _) in [get(&h, &h.guest, rule_uri).await, delete(&h, &h.guest, rule_uri).await] {
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
    assert_eq!(ok(get(&h, &h.guest, trigger_uri).await)["rules"], json!({}));
}

async fn firing_invokes_active_rules_through_the_ingress_and_records_the_trigger(backend: Backend) {
    let (ingress, seen) = stand_in_ingress().await;
    let h = harness_with_ingress(&backend, &ingress);
    create(&h, "hello").await;
    create(&h, "missing").await;
    ok(put(&h, &h.guest, "/api/v1/namespaces/_/packages/utils", json!({})).await);
    ok(put(&h, &h.guest, "/api/v1/namespaces/_/actions/utils/echo", code("nodejs:20")).await);
    let parameters = kv(&[("a", json!(1)), ("b", json!(1))]);
    ok(put(&h, &h.guest, "/api/v1/namespaces/_/triggers/t", json!({"parameters": parameters})).await);
    for (rule, action) in [("r1", "hello"), ("r2", "/_/utils/echo"), ("r3", "missing"), ("r4", "hello")] {
        let uri = format!("/api/v1/namespaces/_/rules/{rule}");
        ok(put(&h, &h.guest, &uri, json!({"trigger": "t", "action": action})).await);
    }
    ok(post(&h, &h.guest, "/api/v1/namespaces/_/rules/r4", Some(json!({"status": "inactive"}))).await);

    let response = {
        use http_body_util::BodyExt as _;
        use tower::ServiceExt as _;
        let fire = request(
            Method::POST,
            "/api/v1/namespaces/guest/triggers/t",
            Some(&h.guest),
            Some(json!({"b": 2})),
        );
        let response = h.router.clone().oneshot(fire).await.unwrap();
        let status = response.status();
        let header =
            response.headers().get("x-openwhisk-activation-id").unwrap().to_str().unwrap().to_owned();
        let body: Value =
            serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes()).unwrap();
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        assert_eq!(body["activationId"], header.as_str());
        body
    };
    let activation_id = response["activationId"].as_str().unwrap();

    let mut calls = seen.lock().unwrap().clone();
    calls.sort_by(|a, b| a.0.cmp(&b.0));
    let arguments = json!({"a": 1, "b": 2});
    let authorization = h.guest.basic_authorization();
    assert_eq!(
        calls,
        vec![
            (
                "/api/v1/namespaces/guest/actions/hello?blocking=false".into(),
                authorization.clone(),
                arguments.clone()
            ),
            (
                "/api/v1/namespaces/guest/actions/missing?blocking=false".into(),
                authorization.clone(),
                arguments.clone()
            ),
            ("/api/v1/namespaces/guest/actions/utils/echo?blocking=false".into(), authorization, arguments),
        ],
        "one non-blocking invoke per active rule, with the caller's key and the merged arguments"
    );

    let record = ok(get(&h, &h.guest, &format!("/api/v1/namespaces/_/activations/{activation_id}")).await);
    let record: ActivationRecord = serde_json::from_value(record).unwrap();
    assert_eq!(
        (record.name.as_str(), record.namespace.as_str(), record.subject.as_str()),
        ("t", "guest", "guest")
    );
    assert!(record.response.success);
    assert_eq!(record.response.result, json!({"b": 2}), "OpenWhisk records the payload as posted");
    let logs: Vec<Value> = record.logs.iter().map(|line| serde_json::from_str(line).unwrap()).collect();
    assert_eq!(logs.len(), 4, "one line per rule: {logs:?}");
    let by_rule = |rule: &str| logs.iter().find(|log| log["rule"] == rule).unwrap().clone();
    let r1 = by_rule("guest/r1");
    assert_eq!(
        (r1["statusCode"].clone(), r1["success"].clone(), r1["action"].clone()),
        (json!(0), json!(true), json!("guest/hello"))
    );
    assert!(r1["activationId"].as_str().unwrap().starts_with("rule-activation-"));
    assert_eq!(by_rule("guest/r2")["action"], "guest/utils/echo");
    let r3 = by_rule("guest/r3");
    assert_eq!((r3["statusCode"].clone(), r3["success"].clone()), (json!(1), json!(false)));
    assert_eq!(r3["error"], "The requested resource does not exist.");
    assert_eq!(
        by_rule("guest/r4")["error"],
        "Rule 'guest/r4' is inactive, action 'guest/hello' was not activated."
    );
    let logs_route =
        ok(get(&h, &h.guest, &format!("/api/v1/namespaces/guest/activations/{activation_id}/logs")).await);
    assert_eq!(logs_route["logs"].as_array().unwrap().len(), 4);
    let listed = ok(get(&h, &h.guest, "/api/v1/namespaces/_/activations?name=t").await);
    assert_eq!(listed[0]["activationId"], activation_id);

    // No active rule: 204, nothing invoked, nothing recorded.
    for rule in ["r1", "r2", "r3"] {
        let uri = format!("/api/v1/namespaces/_/rules/{rule}");
        ok(post(&h, &h.guest, &uri, Some(json!({"status": "inactive"}))).await);
    }
    let (status, body) = post(&h, &h.guest, "/api/v1/namespaces/_/triggers/t", None).await;
    assert_eq!((status, body), (StatusCode::NO_CONTENT, Value::Null));
    assert_eq!(seen.lock().unwrap().len(), 3);
    assert_eq!(
        ok(get(&h, &h.guest, "/api/v1/namespaces/_/activations?count=true").await),
        json!({"activations": 1})
    );

    let (status, body) = post(&h, &h.guest, "/api/v1/namespaces/_/triggers/absent", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_error(&body, "does not exist");
    let (status, body) = post(&h, &h.guest, "/api/v1/namespaces/_/triggers/t", Some(json!([1]))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_error(&body, "The request content was malformed:");
}

async fn a_key_reaches_no_package_trigger_or_rule_of_another_namespace(backend: Backend) {
    let (ingress, seen) = stand_in_ingress().await;
    let h = harness_with_ingress(&backend, &ingress);
    create(&h, "hello").await;
    ok(put(&h, &h.guest, "/api/v1/namespaces/_/packages/utils", json!({})).await);
    ok(put(&h, &h.guest, "/api/v1/namespaces/_/actions/utils/echo", code("nodejs:20")).await);
    ok(put(&h, &h.guest, "/api/v1/namespaces/_/triggers/t", json!({})).await);
    ok(put(&h, &h.guest, "/api/v1/namespaces/_/rules/r", json!({"trigger": "t", "action": "hello"})).await);

    let forbidden = [
        (Method::GET, "/api/v1/namespaces/guest/packages/utils", None),
        (Method::PUT, "/api/v1/namespaces/guest/packages/utils?overwrite=true", Some(json!({}))),
        (Method::DELETE, "/api/v1/namespaces/guest/packages/utils", None),
        (Method::GET, "/api/v1/namespaces/guest/actions/utils/echo", None),
        (Method::PUT, "/api/v1/namespaces/guest/actions/utils/echo?overwrite=true", Some(code("nodejs:20"))),
        (Method::DELETE, "/api/v1/namespaces/guest/actions/utils/echo", None),
        (Method::GET, "/api/v1/namespaces/guest/triggers", None),
        (Method::GET, "/api/v1/namespaces/guest/triggers/t", None),
        (Method::PUT, "/api/v1/namespaces/guest/triggers/t?overwrite=true", Some(json!({}))),
        (Method::DELETE, "/api/v1/namespaces/guest/triggers/t", None),
        (Method::POST, "/api/v1/namespaces/guest/triggers/t", Some(json!({}))),
        (Method::GET, "/api/v1/namespaces/guest/rules", None),
        (Method::GET, "/api/v1/namespaces/guest/rules/r", None),
        (
            Method::PUT,
            "/api/v1/namespaces/guest/rules/r?overwrite=true",
            Some(json!({"trigger": "t", "action": "hello"})),
        ),
        (Method::POST, "/api/v1/namespaces/guest/rules/r", Some(json!({"status": "inactive"}))),
        (Method::DELETE, "/api/v1/namespaces/guest/rules/r", None),
        (Method::GET, "/api/v1/namespaces/guest/limits", None),
    ];
    for (method, uri, body) in forbidden {
        let (status, body) = send(&h.router, request(method.clone(), uri, Some(&h.alice), body)).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {uri}: {body}");
        assert_error(&body, "The supplied authentication is not authorized to access 'guest'.");
    }
    assert!(seen.lock().unwrap().is_empty(), "nothing was fired");
    let (status, listed) =
        send(&h.router, request(Method::GET, "/api/v1/namespaces/guest/packages", Some(&h.alice), None))
            .await;
    assert_eq!((status, listed), (StatusCode::OK, json!([])), "guest published nothing");
    let (status, _) = resolve(&h, "guest", "utils%2Fecho", Some(&h.alice)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // Alice's `_` holds none of guest's entities.
    for uri in
        ["/api/v1/namespaces/_/packages", "/api/v1/namespaces/_/triggers", "/api/v1/namespaces/_/rules"]
    {
        assert_eq!(ok(get(&h, &h.alice, uri).await), json!([]), "{uri}");
    }
    for uri in [
        "/api/v1/namespaces/_/packages/utils",
        "/api/v1/namespaces/_/triggers/t",
        "/api/v1/namespaces/_/rules/r",
    ] {
        let (status, _) = get(&h, &h.alice, uri).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{uri}");
    }

    // Alice's own rules cannot point into guest's namespace.
    ok(put(&h, &h.alice, "/api/v1/namespaces/_/triggers/mine", json!({})).await);
    for (body, resource) in [
        (json!({"trigger": "/guest/t", "action": "hello"}), "guest/t"),
        (json!({"trigger": "mine", "action": "/guest/hello"}), "guest/hello"),
        (json!({"trigger": "mine", "action": "/guest/utils/echo"}), "guest/utils/echo"),
    ] {
        let (status, error) = put(&h, &h.alice, "/api/v1/namespaces/_/rules/sneaky", body.clone()).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        assert_error(&error, &format!("not authorized to access '{resource}'"));
    }
}

async fn api_info_and_limits_are_served(backend: Backend) {
    let h = harness(&backend);
    let (status, info) = send(&h.router, request(Method::GET, "/api/v1", None, None)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (info["description"].clone(), info["api_paths"].clone()),
        (json!("OpenWhisk"), json!(["/api/v1"]))
    );
    let limits = ok(get(&h, &h.guest, "/api/v1/namespaces/_/limits").await);
    assert_eq!(limits["maxActionMemory"], 2048);
    assert_eq!(limits["maxActionTimeout"], 300_000);
    let (status, _) = send(&h.router, request(Method::GET, "/api/v1/namespaces/_/limits", None, None)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}
