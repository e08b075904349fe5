//! Sequences through `Router::oneshot`: create, read, list, update and resolve them as `wsk` and the
//! filter do, and every refusal with OpenWhisk's status and message; on SQLite and on PostgreSQL.

// Helpers outside `#[test]` functions are not covered by clippy.toml's allow-unwrap-in-tests.
#![allow(clippy::unwrap_used, reason = "a panic in a test helper is a failed test with its location")]

mod support;

use axum::http::{Method, StatusCode};
use management_api::Key;
use serde_json::{Value, json};
use support::{Backend, Harness, assert_error, create, harness, internal, on_every_backend, request, send};
use whisk_contract::ResolvedAction;

on_every_backend!(
    a_sequence_is_created_read_listed_and_resolved_in_openwhisks_shape,
    packaged_sequences_and_packaged_components,
    components_must_exist_and_be_readable,
    a_sequence_may_not_refer_to_itself,
    sequences_are_capped_at_fifty_atomic_actions,
    malformed_sequences_are_refused,
    an_update_replaces_or_keeps_the_components,
    a_web_sequence_s_components_resolve_as_its_owner_without_a_key,
);

async fn put(h: &Harness, key: &Key, uri: &str, body: Value) -> (StatusCode, Value) {
    send(&h.router, request(Method::PUT, uri, Some(key), Some(body))).await
}

async fn get(h: &Harness, key: &Key, uri: &str) -> (StatusCode, Value) {
    send(&h.router, request(Method::GET, uri, Some(key), None)).await
}

/// Asserts a 200 and answers the body.
#[track_caller]
fn ok((status, body): (StatusCode, Value)) -> Value {
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// Asserts OpenWhisk's error: the status, and the message in its error shape.
#[track_caller]
fn refused((status, body): (StatusCode, Value), expected: StatusCode, message: &str) {
    assert_eq!(status, expected, "{body}");
    assert_error(&body, message);
}

/// What `wsk action create s --sequence a,b` sends.
fn sequence(components: &[&str]) -> Value {
    json!({"exec": {"kind": "sequence", "components": components}})
}

async fn resolved(h: &Harness, action: &str) -> ResolvedAction {
    let uri = format!("/internal/v1/resolve?namespace=_&action={action}");
    let (status, body) = send(&h.router, internal(Method::GET, &uri, Some(&h.guest), None)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    serde_json::from_value(body).unwrap()
}

async fn a_sequence_is_created_read_listed_and_resolved_in_openwhisks_shape(backend: Backend) {
    let h = harness(&backend);
    create(&h, "a").await;
    create(&h, "b").await;
    let body = json!({
        "exec": {"kind": "sequence", "components": ["/_/a", "/guest/b"]},
        "parameters": [{"key": "start", "value": 1}],
    });
    let created = ok(put(&h, &h.guest, "/api/v1/namespaces/_/actions/s", body).await);
    // `_` is resolved when the sequence is written, as OpenWhisk stores it.
    assert_eq!(
        created["exec"],
        json!({"kind": "sequence", "components": ["/guest/a", "/guest/b"], "binary": false})
    );
    assert_eq!(created["annotations"], json!([{"key": "exec", "value": "sequence"}]));
    assert_eq!(created["version"], "0.0.1");
    assert_eq!(created["limits"]["timeout"], 60000);

    let got = ok(get(&h, &h.guest, "/api/v1/namespaces/guest/actions/s").await);
    assert_eq!(got, created);
    let without_code = ok(get(&h, &h.guest, "/api/v1/namespaces/_/actions/s?code=false").await);
    assert_eq!(without_code["exec"], created["exec"], "components are not code: always shown");
    let listed = ok(get(&h, &h.guest, "/api/v1/namespaces/_/actions").await);
    let entry = listed.as_array().unwrap().iter().find(|a| a["name"] == "s").unwrap().clone();
    assert_eq!(entry["exec"], json!({"binary": false}));
    assert_eq!(entry["annotations"], json!([{"key": "exec", "value": "sequence"}]));

    let resolved = resolved(&h, "s").await;
    assert_eq!(resolved.kind, "sequence");
    assert_eq!(resolved.components, Some(vec!["/guest/a".to_owned(), "/guest/b".to_owned()]));
    assert_eq!(resolved.parameters.len(), 1, "the sequence's own parameters reach the filter");
    assert_eq!(resolved.subject, "guest");
    assert_eq!(self::resolved(&h, "a").await.components, None, "an action with code has none");

    // The control plane is never to start a container of a sequence; if asked, it is told why.
    let (status, answer) =
        send(&h.router, internal(Method::GET, "/internal/v1/actions/guest/s", None, None)).await;
    refused((status, answer), StatusCode::BAD_REQUEST, "A sequence has no code");

    // A sequence is a component like any other action (nesting), and deleting a component leaves
    // the sequence in place (its run then fails, as in OpenWhisk).
    ok(put(&h, &h.guest, "/api/v1/namespaces/_/actions/outer", sequence(&["/_/s", "/_/a"])).await);
    let (status, _) =
        send(&h.router, request(Method::DELETE, "/api/v1/namespaces/_/actions/b", Some(&h.guest), None))
            .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ok(get(&h, &h.guest, "/api/v1/namespaces/_/actions/s").await)["exec"], created["exec"]);
}

async fn packaged_sequences_and_packaged_components(backend: Backend) {
    let h = harness(&backend);
    ok(put(&h, &h.guest, "/api/v1/namespaces/_/packages/utils", json!({})).await);
    let code = json!({"exec": {"kind": "python:3", "code": "def main(a):\n    return a\n"}});
    ok(put(&h, &h.guest, "/api/v1/namespaces/_/actions/utils/double", code).await);
    create(&h, "a").await;
    // A sequence inside a package, with a component inside a package.
    let created = ok(put(
        &h,
        &h.guest,
        "/api/v1/namespaces/_/actions/utils/chain",
        sequence(&["/_/a", "/_/utils/double"]),
    )
    .await);
    assert_eq!(created["namespace"], "guest/utils");
    assert_eq!(created["exec"]["components"], json!(["/guest/a", "/guest/utils/double"]));
    let resolved = resolved(&h, "utils/chain").await;
    assert_eq!((resolved.namespace.as_str(), resolved.package.as_deref()), ("guest", Some("utils")));
    assert_eq!(resolved.components.unwrap().len(), 2);
    // A packaged sequence naming itself is cyclic too.
    refused(
        put(&h, &h.guest, "/api/v1/namespaces/_/actions/utils/loop", sequence(&["/guest/utils/loop"])).await,
        StatusCode::BAD_REQUEST,
        "Sequence may not refer to itself.",
    );
    // A component through a binding is followed to the bound package: naming the sequence being
    // written through it is still a cycle.
    ok(put(
        &h,
        &h.guest,
        "/api/v1/namespaces/_/packages/alias",
        json!({"binding": {"namespace": "_", "name": "utils"}}),
    )
    .await);
    ok(put(&h, &h.guest, "/api/v1/namespaces/_/actions/via", sequence(&["/_/alias/double"])).await);
    refused(
        put(
            &h,
            &h.guest,
            "/api/v1/namespaces/_/actions/utils/chain?overwrite=true",
            sequence(&["/_/a", "/_/alias/chain"]),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "Sequence may not refer to itself.",
    );
    refused(
        put(&h, &h.guest, "/api/v1/namespaces/_/actions/x", sequence(&["/_/nopkg/double"])).await,
        StatusCode::BAD_REQUEST,
        "Sequence component does not exist.",
    );
}

async fn components_must_exist_and_be_readable(backend: Backend) {
    let h = harness(&backend);
    create(&h, "a").await;
    refused(
        put(&h, &h.guest, "/api/v1/namespaces/_/actions/s", sequence(&["/_/a", "/_/missing"])).await,
        StatusCode::BAD_REQUEST,
        "Sequence component does not exist.",
    );
    // Another namespace's action is not readable by this key: 403, before anything about it is
    // looked up (alice's action exists, and its existence is not revealed either way).
    let alice_action = json!({"exec": {"kind": "nodejs:20", "code": "function main(p) { return p; }"}});
    ok(put(&h, &h.alice, "/api/v1/namespaces/_/actions/private", alice_action).await);
    for component in ["/alice/private", "/alice/nothing"] {
        refused(
            put(&h, &h.guest, "/api/v1/namespaces/_/actions/s", sequence(&["/_/a", component])).await,
            StatusCode::FORBIDDEN,
            &format!("not authorized to access '{}'", component.trim_start_matches('/')),
        );
    }
    // Nothing was written by the refusals.
    refused(
        get(&h, &h.guest, "/api/v1/namespaces/_/actions/s").await,
        StatusCode::NOT_FOUND,
        "The requested resource does not exist.",
    );
}

async fn a_sequence_may_not_refer_to_itself(backend: Backend) {
    let h = harness(&backend);
    create(&h, "a").await;
    // Directly, while it does not exist yet.
    refused(
        put(&h, &h.guest, "/api/v1/namespaces/_/actions/s", sequence(&["/_/a", "/_/s"])).await,
        StatusCode::BAD_REQUEST,
        "Sequence may not refer to itself.",
    );
    // Recursively: `t` runs `s`; updating `s` to run `t` would close the loop, and so would turning
    // the atomic action `a`, which `s` runs, into a sequence running `t`.
    ok(put(&h, &h.guest, "/api/v1/namespaces/_/actions/s", sequence(&["/_/a"])).await);
    ok(put(&h, &h.guest, "/api/v1/namespaces/_/actions/t", sequence(&["/_/s"])).await);
    refused(
        put(&h, &h.guest, "/api/v1/namespaces/_/actions/s?overwrite=true", sequence(&["/_/t"])).await,
        StatusCode::BAD_REQUEST,
        "Sequence may not refer to itself.",
    );
    refused(
        put(&h, &h.guest, "/api/v1/namespaces/_/actions/a?overwrite=true", sequence(&["/_/t"])).await,
        StatusCode::BAD_REQUEST,
        "Sequence may not refer to itself.",
    );
    assert_eq!(ok(get(&h, &h.guest, "/api/v1/namespaces/_/actions/a").await)["exec"]["kind"], "nodejs:20");
}

async fn sequences_are_capped_at_fifty_atomic_actions(backend: Backend) {
    let h = harness(&backend);
    create(&h, "a").await;
    let fifty = vec!["/_/a"; 50];
    ok(put(&h, &h.guest, "/api/v1/namespaces/_/actions/fifty", sequence(&fifty)).await);
    refused(
        put(&h, &h.guest, "/api/v1/namespaces/_/actions/s", sequence(&[&fifty[..], &["/_/a"]].concat()))
            .await,
        StatusCode::BAD_REQUEST,
        "Too many actions in the sequence.",
    );
    // Nested sequences count with their atomic actions: 50 + 1 is one too many.
    refused(
        put(&h, &h.guest, "/api/v1/namespaces/_/actions/s", sequence(&["/_/fifty", "/_/a"])).await,
        StatusCode::BAD_REQUEST,
        "Too many actions in the sequence.",
    );
    ok(put(&h, &h.guest, "/api/v1/namespaces/_/actions/s", sequence(&["/_/fifty"])).await);
}

async fn malformed_sequences_are_refused(backend: Backend) {
    let h = harness(&backend);
    create(&h, "a").await;
    let uri = "/api/v1/namespaces/_/actions/s";
    refused(put(&h, &h.guest, uri, sequence(&[])).await, StatusCode::BAD_REQUEST, "No component specified");
    refused(
        put(&h, &h.guest, uri, json!({"exec": {"kind": "sequence"}})).await,
        StatusCode::BAD_REQUEST,
        "'components' must be defined for sequence kind",
    );
    refused(
        put(&h, &h.guest, uri, json!({"exec": {"kind": "sequence", "components": "/_/a"}})).await,
        StatusCode::BAD_REQUEST,
        "The request content was malformed:",
    );
    for bad in ["a", "/_/a/b/c", "/_/bad$name"] {
        refused(
            put(&h, &h.guest, uri, sequence(&[bad])).await,
            StatusCode::BAD_REQUEST,
            "is not a fully qualified action name",
        );
    }
}

async fn an_update_replaces_or_keeps_the_components(backend: Backend) {
    let h = harness(&backend);
    create(&h, "a").await;
    create(&h, "b").await;
    let uri = "/api/v1/namespaces/_/actions/s";
    ok(put(&h, &h.guest, uri, sequence(&["/_/a"])).await);
    let before = resolved(&h, "s").await;
    let updated = ok(put(&h, &h.guest, &format!("{uri}?overwrite=true"), sequence(&["/_/b", "/_/a"])).await);
    assert_eq!(updated["exec"]["components"], json!(["/guest/b", "/guest/a"]));
    assert_eq!(updated["version"], "0.0.2");
    let after = resolved(&h, "s").await;
    assert_ne!(before.revision, after.revision);
    assert_eq!(after.components.unwrap().len(), 2);
    // An update without exec keeps the components.
    let kept =
        ok(put(&h, &h.guest, &format!("{uri}?overwrite=true"), json!({"limits": {"timeout": 1000}})).await);
    assert_eq!(kept["exec"], updated["exec"]);
    // A sequence can become an action with code, which has no components.
    let code = json!({"exec": {"kind": "nodejs:20", "code": "function main() { return {}; }"}});
    let replaced = ok(put(&h, &h.guest, &format!("{uri}?overwrite=true"), code).await);
    assert!(replaced["exec"].get("components").is_none(), "{replaced}");
    assert_eq!(resolved(&h, "s").await.components, None);
    assert_eq!(replaced["annotations"], json!([{"key": "exec", "value": "nodejs:20"}]));
}

/// The filter resolves a web sequence's components as the sequence's owner (a web request has no
/// key): with the internal token only, and only within what that owner may read.
async fn a_web_sequence_s_components_resolve_as_its_owner_without_a_key(backend: Backend) {
    let h = harness(&backend);
    create(&h, "a").await;
    let as_owner = |namespace: &str, subject: &str| {
        format!("/internal/v1/resolve?namespace={namespace}&action=a&subject={subject}")
    };
    let (status, body) =
        send(&h.router, internal(Method::GET, &as_owner("guest", "guest"), None, None)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let resolved: ResolvedAction = serde_json::from_value(body).unwrap();
    assert_eq!((resolved.namespace.as_str(), resolved.subject.as_str()), ("guest", "guest"));
    // Another owner's action stays out of reach, as with that owner's key.
    let (status, _) = send(&h.router, internal(Method::GET, &as_owner("guest", "alice"), None, None)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // Without the internal token there is no resolve at all.
    let (status, _) = send(&h.router, request(Method::GET, &as_owner("guest", "guest"), None, None)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}
