//! The REST API and the internal endpoints through `Router::oneshot`: shapes, statuses and
//! namespace isolation as `wsk`, the filter and the control server see them; on SQLite and on
//! PostgreSQL.

// Helpers outside `#[test]` functions are not covered by clippy.toml's allow-unwrap-in-tests.
#![allow(clippy::unwrap_used, reason = "a panic in a test helper is a failed test with its location")]

mod support;

use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt as _;
use management_api::Key;
use management_api::auth::GUEST_KEY;
use serde_json::{Value, json};
use support::{
    Backend, Harness, TOKEN, assert_error, create, harness, hello, internal, on_every_backend, request,
    resolve, send,
};
use tower::ServiceExt as _;
use whisk_contract::{
    ActionCode, ActivationRecord, ActivationResponse, ActivationStatus, ResolvedAction, headers,
};

on_every_backend!(
    action_lifecycle_in_openwhisks_shape,
    bad_input_gets_openwhisk_errors,
    wrong_or_missing_keys_are_unauthenticated,
    a_key_reaches_nothing_of_another_namespace,
    resolve_answers_the_filter,
    internal_routes_refuse_a_missing_or_wrong_token,
    activation_records_are_listed_and_read,
    health_and_metrics_are_served,
    serve_answers_over_tcp_and_stops_gracefully,
    expired_activations_are_deleted_while_serving,
);

async fn action_lifecycle_in_openwhisks_shape(backend: Backend) {
    let h = harness(&backend);
    let created = create(&h, "hello").await;
    assert_eq!(created["namespace"], "guest");
    assert_eq!(created["name"], "hello");
    assert_eq!(created["version"], "0.0.1");
    assert_eq!(created["publish"], false);
    assert_eq!(
        created["exec"],
        json!({"kind": "nodejs:20", "code": "function main(p) { return p; }", "binary": false})
    );
    assert_eq!(created["annotations"], json!([{"key": "exec", "value": "nodejs:20"}]));
    assert_eq!(created["parameters"], json!([]));
    assert_eq!(created["limits"], json!({"timeout": 60000, "memory": 256, "logs": 10, "concurrency": 1}));

    let (status, got) =
        send(&h.router, request(Method::GET, "/api/v1/namespaces/guest/actions/hello", Some(&h.guest), None))
            .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got, created);
    let (_, without_code) = send(
        &h.router,
        request(Method::GET, "/api/v1/namespaces/_/actions/hello?code=false", Some(&h.guest), None),
    )
    .await;
    assert_eq!(without_code["exec"], json!({"kind": "nodejs:20", "binary": false}));

    // The invoke itself is the data plane's: here only an action that exists gets this far.
    let (status, invoked) = send(
        &h.router,
        request(Method::POST, "/api/v1/namespaces/_/actions/hello", Some(&h.guest), Some(json!({}))),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_error(&invoked, "served by the ingress");

    let (status, conflict) = send(
        &h.router,
        request(Method::PUT, "/api/v1/namespaces/_/actions/hello", Some(&h.guest), Some(hello())),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_error(&conflict, "resource already exists");

    let (_, before) = resolve(&h, "_", "hello", Some(&h.guest)).await;
    let update = json!({"parameters": [{"key": "name", "value": "world"}], "limits": {"memory": 512}});
    let (status, updated) = send(
        &h.router,
        request(
            Method::PUT,
            "/api/v1/namespaces/_/actions/hello?overwrite=true",
            Some(&h.guest),
            Some(update),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert_eq!(updated["version"], "0.0.2");
    assert_eq!(updated["exec"], created["exec"], "an update without exec keeps it");
    assert_eq!(updated["parameters"], json!([{"key": "name", "value": "world"}]));
    assert_eq!(updated["limits"]["memory"], 512);
    assert_eq!(updated["limits"]["timeout"], 60000);
    let (_, after) = resolve(&h, "_", "hello", Some(&h.guest)).await;
    assert_ne!(before["revision"], after["revision"], "every update gets a fresh revision");
    assert_eq!(after["version"], "0.0.2");

    // `updated` is in epoch milliseconds and ties list by name ("hello" first): the next write
    // must land in a later millisecond for the order to say which came last.
    tokio::time::sleep(Duration::from_millis(2)).await;
    create(&h, "second").await;
    let (status, list) =
        send(&h.router, request(Method::GET, "/api/v1/namespaces/_/actions", Some(&h.guest), None)).await;
    assert_eq!(status, StatusCode::OK);
    let names: Vec<_> = list.as_array().unwrap().iter().map(|a| a["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["second", "hello"], "most recently updated first");
    assert_eq!(list[1]["exec"], json!({"binary": false}));
    assert_eq!(list[1]["version"], "0.0.2");
    assert!(list[1].get("parameters").is_none());
    let (_, page) = send(
        &h.router,
        request(Method::GET, "/api/v1/namespaces/_/actions?limit=1&skip=1", Some(&h.guest), None),
    )
    .await;
    assert_eq!(page.as_array().unwrap().len(), 1);
    assert_eq!(page[0]["name"], "hello");
    let (_, count) = send(
        &h.router,
        request(Method::GET, "/api/v1/namespaces/_/actions?count=true", Some(&h.guest), None),
    )
    .await;
    assert_eq!(count, json!({"actions": 2}));

    let (status, deleted) =
        send(&h.router, request(Method::DELETE, "/api/v1/namespaces/_/actions/hello", Some(&h.guest), None))
            .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(deleted["name"], "hello");
    assert_eq!(deleted["version"], "0.0.2");
    for method in [Method::GET, Method::DELETE] {
        let (status, body) =
            send(&h.router, request(method, "/api/v1/namespaces/_/actions/hello", Some(&h.guest), None))
                .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_error(&body, "The requested resource does not exist.");
    }
}

async fn bad_input_gets_openwhisk_errors(backend: Backend) {
    let h = harness(&backend);
    let put = |uri: &str, body: Value| request(Method::PUT, uri, Some(&h.guest), Some(body));
    let cases = [
        (
            put("/api/v1/namespaces/_/actions/bad$name", hello()),
            StatusCode::BAD_REQUEST,
            "illegal characters",
        ),
        (
            put("/api/v1/namespaces/_/actions/x", json!({"exec": {"kind": "cobol:85", "code": "x"}})),
            StatusCode::BAD_REQUEST,
            "The request content was malformed:\nkind 'cobol:85' not in Set(",
        ),
        (
            put(
                "/api/v1/namespaces/_/actions/x",
                json!({"exec": {"kind": "nodejs:20", "code": "x"}, "limits": {"timeout": 300001}}),
            ),
            StatusCode::BAD_REQUEST,
            "exceeds allowed threshold of 300000 milliseconds",
        ),
        (
            put(
                "/api/v1/namespaces/_/actions/x",
                json!({"exec": {"kind": "nodejs:20", "code": "x"}, "limits": {"memory": 4096}}),
            ),
            StatusCode::BAD_REQUEST,
            "memory 4096 MB exceeds",
        ),
        (
            put("/api/v1/namespaces/_/actions/x", json!({"exec": {"kind": "nodejs:20", "code": ""}})),
            StatusCode::BAD_REQUEST,
            "code is empty",
        ),
        (put("/api/v1/namespaces/_/actions/pkg%2Fx", hello()), StatusCode::NOT_FOUND, "does not exist"),
        (put("/api/v1/namespaces/_/actions/pkg/x", hello()), StatusCode::NOT_FOUND, "does not exist"),
        (
            request(Method::GET, "/api/v1/namespaces/_/actions?limit=500", Some(&h.guest), None),
            StatusCode::BAD_REQUEST,
            "not in the range of 0 to 200",
        ),
        (
            request(Method::POST, "/api/v1/namespaces/_/actions/x", Some(&h.guest), Some(json!({}))),
            StatusCode::NOT_FOUND,
            "does not exist",
        ),
        (
            request(Method::GET, "/api/v1/nothing/here", Some(&h.guest), None),
            StatusCode::NOT_FOUND,
            "does not exist",
        ),
        (
            request(Method::PATCH, "/api/v1/namespaces/_/actions/x", Some(&h.guest), None),
            StatusCode::METHOD_NOT_ALLOWED,
            "not allowed",
        ),
    ];
    for (request, status, message) in cases {
        let uri = request.uri().to_string();
        let (actual, body) = send(&h.router, request).await;
        assert_eq!(actual, status, "{uri}: {body}");
        assert_error(&body, message);
    }

    let malformed = Request::put("/api/v1/namespaces/_/actions/x")
        .header("authorization", h.guest.basic_authorization())
        .body(Body::from("{\"exec\": "))
        .unwrap();
    let (status, body) = send(&h.router, malformed).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_error(&body, "The request content was malformed:\n");

    let huge = Request::put("/api/v1/namespaces/_/actions/x")
        .header("authorization", h.guest.basic_authorization())
        .body(Body::from(vec![b' '; management_api::MAX_BODY_BYTES + 1]))
        .unwrap();
    let (status, body) = send(&h.router, huge).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_error(&body, "exceeds the maximum allowed size");

    let (status, _) =
        send(&h.router, request(Method::GET, "/api/v1/namespaces/_/actions/x", Some(&h.guest), None)).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "no refused request left anything behind");
}

async fn wrong_or_missing_keys_are_unauthenticated(backend: Backend) {
    let h = harness(&backend);
    let wrong_secret = Key { secret: "x".repeat(64), ..h.guest.clone() };
    let unknown = Key::generate();
    let mut requests = vec![
        request(Method::GET, "/api/v1/namespaces", None, None),
        request(Method::GET, "/api/v1/namespaces/_/actions", Some(&wrong_secret), None),
        request(Method::GET, "/api/v1/namespaces/_/activations", Some(&unknown), None),
        request(Method::PUT, "/api/v1/namespaces/_/actions/x", None, Some(hello())),
    ];
    let mut garbage = request(Method::GET, "/api/v1/namespaces", None, None);
    garbage.headers_mut().insert("authorization", "Basic not-base64!".parse().unwrap());
    requests.push(garbage);
    for request in requests {
        let uri = request.uri().to_string();
        let (status, body) = send(&h.router, request).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{uri}");
        assert_error(&body, "The supplied authentication is invalid.");
    }
    let (status, namespaces) =
        send(&h.router, request(Method::GET, "/api/v1/namespaces", Some(&h.guest), None)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(namespaces, json!(["guest"]));
}

fn record(id: &str, name: &str, start: u64, namespace: &str) -> ActivationRecord {
    ActivationRecord {
        activation_id: id.into(),
        namespace: namespace.into(),
        name: name.into(),
        version: "0.0.1".into(),
        subject: namespace.into(),
        publish: false,
        start,
        end: start + 7,
        duration: 7,
        response: ActivationResponse::new(ActivationStatus::Success, json!({"greeting": id})),
        logs: vec![format!("2024-01-01T00:00:00Z stdout: {id}")],
        annotations: vec![],
        cause: None,
    }
}

async fn post_records(h: &Harness, records: &[ActivationRecord]) {
    let body = serde_json::to_value(records).unwrap();
    let (status, body) =
        send(&h.router, internal(Method::POST, "/internal/v1/activations", None, Some(body))).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
}

async fn a_key_reaches_nothing_of_another_namespace(backend: Backend) {
    let h = harness(&backend);
    create(&h, "hello").await;
    post_records(&h, &[record("g1", "hello", 10, "guest")]).await;
    let forbidden = [
        (Method::GET, "/api/v1/namespaces/guest/actions"),
        (Method::GET, "/api/v1/namespaces/guest/actions/hello"),
        (Method::PUT, "/api/v1/namespaces/guest/actions/hello?overwrite=true"),
        (Method::DELETE, "/api/v1/namespaces/guest/actions/hello"),
        (Method::GET, "/api/v1/namespaces/guest/activations"),
        (Method::GET, "/api/v1/namespaces/guest/activations/g1"),
        (Method::GET, "/api/v1/namespaces/guest/activations/g1/logs"),
        (Method::GET, "/api/v1/namespaces/guest/activations/g1/result"),
    ];
    for (method, uri) in forbidden {
        let body = (method == Method::PUT).then(hello);
        let (status, body) = send(&h.router, request(method, uri, Some(&h.alice), body)).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{uri}");
        assert_error(&body, "The supplied authentication is not authorized to access 'guest'.");
    }
    let (status, body) = resolve(&h, "guest", "hello", Some(&h.alice)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_error(&body, "not authorized");

    // Alice's own view of `_` holds none of guest's entities.
    let own = [
        "/api/v1/namespaces/_/actions",
        "/api/v1/namespaces/alice/activations",
        "/api/v1/namespaces/_/activations?docs=true",
    ];
    for uri in own {
        let (status, body) = send(&h.router, request(Method::GET, uri, Some(&h.alice), None)).await;
        assert_eq!((status, body), (StatusCode::OK, json!([])), "{uri}");
    }
    for uri in ["/api/v1/namespaces/_/actions/hello", "/api/v1/namespaces/_/activations/g1"] {
        let (status, _) = send(&h.router, request(Method::GET, uri, Some(&h.alice), None)).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{uri}");
    }
    let (status, _) = resolve(&h, "_", "hello", Some(&h.alice)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) =
        send(&h.router, request(Method::GET, "/api/v1/namespaces/guest/actions/hello", Some(&h.guest), None))
            .await;
    assert_eq!(status, StatusCode::OK, "guest's action is untouched");
}

async fn resolve_answers_the_filter(backend: Backend) {
    let h = harness(&backend);
    let put = json!({
        "exec": {"kind": "python:3", "code": "def main(a): return a"},
        "parameters": [{"key": "greeting", "value": "hi"}],
        "limits": {"timeout": 5000},
    });
    let (status, _) = send(
        &h.router,
        request(Method::PUT, "/api/v1/namespaces/guest/actions/hello", Some(&h.guest), Some(put)),
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    let (status, body) = resolve(&h, "_", "hello", Some(&h.guest)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let resolved: ResolvedAction = serde_json::from_value(body).unwrap();
    assert_eq!(resolved.namespace, "guest");
    assert_eq!(resolved.subject, "guest");
    assert_eq!(resolved.name, "hello");
    assert_eq!(resolved.package, None);
    assert_eq!(resolved.kind, "python:3");
    assert_eq!(resolved.version, "0.0.1");
    assert_eq!(resolved.limits.timeout, 5000);
    assert_eq!(resolved.parameters[0].key, "greeting");
    assert_eq!(resolved.revision.len(), 32);
    // Resolving again (from the key cache) gives the same answer.
    let (_, again) = resolve(&h, "guest", "hello", Some(&h.guest)).await;
    assert_eq!(serde_json::from_value::<ResolvedAction>(again).unwrap(), resolved);

    let (status, body) =
        send(&h.router, internal(Method::GET, "/internal/v1/actions/guest/hello", None, None)).await;
    assert_eq!(status, StatusCode::OK);
    let code: ActionCode = serde_json::from_value(body).unwrap();
    assert_eq!(
        (code.revision.as_str(), code.code.as_str(), code.binary),
        (resolved.revision.as_str(), "def main(a): return a", false)
    );

    let wrong = Key { secret: "y".repeat(64), ..h.guest.clone() };
    for (namespace, action, key, expected) in [
        ("_", "hello", Some(&wrong), StatusCode::UNAUTHORIZED),
        ("_", "hello", None, StatusCode::UNAUTHORIZED),
        ("_", "absent", Some(&h.guest), StatusCode::NOT_FOUND),
        ("_", "pkg%2Fhello", Some(&h.guest), StatusCode::NOT_FOUND),
        ("alice", "hello", Some(&h.guest), StatusCode::FORBIDDEN),
    ] {
        let (status, body) = resolve(&h, namespace, action, key).await;
        assert_eq!(status, expected, "{namespace}/{action}: {body}");
        assert!(body["error"].is_string() && body["code"].is_string(), "{body}");
    }
    let (status, _) =
        send(&h.router, internal(Method::GET, "/internal/v1/actions/guest/absent", None, None)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // A blackbox action's code names its image (`wsk action create --docker`), which the pod runs.
    let blackbox = json!({"exec": {"kind": "blackbox", "image": "example.com/me/tool:1"}});
    let uri = "/api/v1/namespaces/_/actions/tool";
    let (status, body) = send(&h.router, request(Method::PUT, uri, Some(&h.guest), Some(blackbox))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) =
        send(&h.router, internal(Method::GET, "/internal/v1/actions/guest/tool", None, None)).await;
    assert_eq!(status, StatusCode::OK);
    let code: ActionCode = serde_json::from_value(body).unwrap();
    assert_eq!((code.kind.as_str(), code.image.as_deref()), ("blackbox", Some("example.com/me/tool:1")));
    let (_, body) =
        send(&h.router, internal(Method::GET, "/internal/v1/actions/guest/hello", None, None)).await;
    assert_eq!(body.get("image"), None, "other kinds name no image: {body}");
}

async fn internal_routes_refuse_a_missing_or_wrong_token(backend: Backend) {
    let h = harness(&backend);
    create(&h, "hello").await;
    let routes = [
        (Method::GET, "/internal/v1/resolve?namespace=_&action=hello", None),
        (Method::GET, "/internal/v1/actions/guest/hello", None),
        (Method::POST, "/internal/v1/activations", Some(json!([]))),
    ];
    for (method, uri, body) in routes {
        for token in [None, Some("wrong"), Some("")] {
            let mut request = request(method.clone(), uri, Some(&h.guest), body.clone());
            if let Some(token) = token {
                request.headers_mut().insert(headers::INTERNAL_TOKEN, token.parse().unwrap());
            }
            let (status, body) = send(&h.router, request).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{uri} with {token:?}");
            assert_error(&body, "The supplied authentication is invalid.");
        }
    }
    let (status, _) = send(
        &h.router,
        internal(Method::POST, "/internal/v1/activations", None, Some(json!({"not": "a list"}))),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

async fn activation_records_are_listed_and_read(backend: Backend) {
    let h = harness(&backend);
    let records = [
        record("a1", "hello", 1_000, "guest"),
        record("a2", "other", 2_000, "guest"),
        record("a3", "hello", 3_000, "guest"),
        record("b1", "hello", 4_000, "alice"),
    ];
    post_records(&h, &records).await;
    post_records(&h, &records[..1]).await; // a retried batch must not duplicate

    let list = |query: &str| {
        request(Method::GET, &format!("/api/v1/namespaces/_/activations{query}"), Some(&h.guest), None)
    };
    let ids = |body: &Value| {
        body.as_array()
            .unwrap()
            .iter()
            .map(|r| r["activationId"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };

    let (status, all) = send(&h.router, list("")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ids(&all), ["a3", "a2", "a1"], "newest first, guest's only");
    assert_eq!(all[0]["statusCode"], 0);
    assert_eq!(all[0]["duration"], 7);
    assert!(all[0].get("response").is_none() && all[0].get("logs").is_none(), "{}", all[0]);

    let (_, by_name) = send(&h.router, list("?name=hello")).await;
    assert_eq!(ids(&by_name), ["a3", "a1"]);
    let (_, page) = send(&h.router, list("?limit=1&skip=1")).await;
    assert_eq!(ids(&page), ["a2"]);
    let (_, window) = send(&h.router, list("?since=1500&upto=3000")).await;
    assert_eq!(ids(&window), ["a3", "a2"]);
    let (_, docs) = send(&h.router, list("?docs=true&limit=1")).await;
    let full: Vec<ActivationRecord> = serde_json::from_value(docs).unwrap();
    assert_eq!(full, vec![records[2].clone()]);
    let (_, count) = send(&h.router, list("?count=true")).await;
    assert_eq!(count, json!({"activations": 3}));

    let get = |suffix: &str| {
        request(Method::GET, &format!("/api/v1/namespaces/guest/activations/{suffix}"), Some(&h.guest), None)
    };
    let (status, one) = send(&h.router, get("a2")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(serde_json::from_value::<ActivationRecord>(one).unwrap(), records[1]);
    let (_, logs) = send(&h.router, get("a2/logs")).await;
    assert_eq!(logs, json!({"logs": ["2024-01-01T00:00:00Z stdout: a2"]}));
    let (_, result) = send(&h.router, get("a2/result")).await;
    assert_eq!(
        result,
        json!({"status": "success", "statusCode": 0, "success": true, "result": {"greeting": "a2"}})
    );
    for suffix in ["absent", "absent/logs", "absent/result", "b1"] {
        let (status, body) = send(&h.router, get(suffix)).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{suffix}");
        assert_error(&body, "does not exist");
    }
}

async fn health_and_metrics_are_served(backend: Backend) {
    let h = harness(&backend);
    let (status, _) = send(&h.router, request(Method::GET, "/health", None, None)).await;
    assert_eq!(status, StatusCode::OK);
    send(&h.router, request(Method::GET, "/api/v1/namespaces/_/actions/x", Some(&h.guest), None)).await;
    let response = h.router.clone().oneshot(request(Method::GET, "/metrics", None, None)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let text = String::from_utf8(response.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    assert!(
        text.contains(r#"http_requests_total{method="GET",route="/api/v1/namespaces/{namespace}/actions/{name}",status="404"} 1"#),
        "{text}"
    );
    assert!(text.contains(r#"route="/health",status="200"} 1"#), "{text}");
}

async fn serve_answers_over_tcp_and_stops_gracefully(backend: Backend) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let directory = tempfile::tempdir().unwrap();
    let (database, _keeper) = backend.database(directory.path());
    let config = management_api::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        database: database.clone(),
        internal_token: TOKEN.into(),
        seed_guest: true,
        ingress_url: management_api::ingress::DEFAULT_INGRESS_URL.into(),
        activation_ttl: Duration::from_secs(7 * 24 * 60 * 60),
        concurrent_invocations: 100,
        invocations_per_minute: 120,
    };
    let state = management_api::open_state(&config).unwrap();
    let listener = tokio::net::TcpListener::bind(config.listen).await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(management_api::serve(listener, state, config.activation_ttl, async move {
        let _ = stopped.await;
    }));
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let authorization = Key::parse(GUEST_KEY).unwrap().basic_authorization();
    let request = format!(
        "GET /api/v1/namespaces HTTP/1.1\r\nhost: x\r\nauthorization: {authorization}\r\nconnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("[\"guest\"]"), "{answer}");
    stop.send(()).unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(5), server).await.unwrap().unwrap().unwrap();

    // The seeded database is one a second start (and the admin commands) can reuse.
    let key = management_api::create_user(&database, "bob").unwrap();
    assert!(management_api::create_user(&database, "bob").is_err());
    assert!(management_api::create_user(&database, "bad/name").is_err());
    let store = database.open().unwrap();
    assert_eq!(store.authenticate(&key).unwrap().as_deref(), Some("bob"));
    assert_eq!(store.authenticate(&Key::parse(GUEST_KEY).unwrap()).unwrap().as_deref(), Some("guest"));
    drop(store);
    management_api::delete_user(&database, "bob").unwrap();
    assert!(management_api::delete_user(&database, "bob").is_err());
}

async fn expired_activations_are_deleted_while_serving(backend: Backend) {
    let directory = tempfile::tempdir().unwrap();
    let (database, _keeper) = backend.database(directory.path());
    let ttl = Duration::from_secs(60 * 60);
    let now = management_api::state::epoch_millis();
    let an_hour = u64::try_from(ttl.as_millis()).unwrap();
    database
        .open()
        .unwrap()
        .put_activations(&[
            record("old1", "hello", now - 3 * an_hour, "guest"),
            record("old2", "hello", now - an_hour - 60_000, "alice"),
            record("fresh", "hello", now - an_hour + 60_000, "guest"),
        ])
        .unwrap();
    let config = management_api::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        database,
        internal_token: TOKEN.into(),
        seed_guest: true,
        ingress_url: management_api::ingress::DEFAULT_INGRESS_URL.into(),
        activation_ttl: ttl,
        concurrent_invocations: 100,
        invocations_per_minute: 120,
    };
    let state = management_api::open_state(&config).unwrap();
    let router = management_api::router(state.clone());
    let listener = tokio::net::TcpListener::bind(config.listen).await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(management_api::serve(listener, state, ttl, async move {
        let _ = stopped.await;
    }));

    // The first sweep runs as the server starts; it counts what it deleted once it is done.
    let metrics = || async {
        let response = router.clone().oneshot(request(Method::GET, "/metrics", None, None)).await.unwrap();
        String::from_utf8(response.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
    };
    let mut text = String::new();
    for _ in 0..100 {
        text = metrics().await;
        if text.contains("whisk_management_activations_deleted_total 2") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(text.contains("whisk_management_activations_deleted_total 2"), "{text}");
    let guest = Key::parse(GUEST_KEY).unwrap();
    let list = request(Method::GET, "/api/v1/namespaces/_/activations", Some(&guest), None);
    let (_, left) = send(&router, list).await;
    let ids: Vec<_> = left.as_array().unwrap().iter().map(|r| r["activationId"].clone()).collect();
    assert_eq!(ids, ["fresh"]);

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), server).await.unwrap().unwrap().unwrap();
}
