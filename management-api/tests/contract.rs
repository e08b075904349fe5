//! OpenWhisk's REST contract, `fixtures/apiv1swagger.json`, walked operation by operation through
//! `Router::oneshot`, on SQLite and on PostgreSQL.
//!
//! For every path and verb of the swagger:
//! - a valid request, built from the parameters the operation declares (every optional query
//!   parameter included) against fixtures seeded anew before it, must answer a success status the
//!   operation documents, with a body of the documented schema. A path or verb the router does not
//!   serve fails here: its 404 or 405 is no success;
//! - invalid requests must answer the status the operation documents for them, in OpenWhisk's error
//!   shape `{"error", "code"}`: no key or a wrong one (401), another namespace's key (403), an
//!   unknown entity (404), a malformed body (400), a create over an existing entity (409); each
//!   only where the operation documents that status.
//!
//! Operations this server cannot serve at all are listed in [`NOT_SERVED`], each with why; those
//! whose success only the data plane can give are in [`DATA_PLANE`].
//!
//! The checker ([`Swagger::check`]) resolves `$ref` into `definitions` and `responses` and checks
//! what the swagger says about a body: required properties present, every property and item of the
//! declared JSON type. It leaves `enum`s alone: the swagger's lag OpenWhisk's own (no `statusCode` 3
//! for "whisk internal error", none of the `python:3`-style kinds).

// Helpers outside `#[test]` functions are not covered by clippy.toml's allow-unwrap-in-tests.
#![allow(clippy::unwrap_used, reason = "a panic in a test helper is a failed test with its location")]

mod support;

use std::collections::BTreeMap;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use management_api::Key;
use serde_json::{Value, json};
use support::{
    Backend, Harness, harness_with_ingress, hello, internal, on_every_backend, request, send,
    stand_in_ingress,
};
use whisk_contract::{ActivationRecord, ActivationResponse, ActivationStatus};

on_every_backend!(every_operation_of_the_swagger_keeps_its_contract);

/// The contract, compiled in so that the test needs nothing outside the repository.
const SWAGGER: &str = include_str!("fixtures/apiv1swagger.json");

/// Operations this server cannot serve at all: method, path template, why.
const NOT_SERVED: &[(&str, &str, &str)] = {
    const WEB: &str = "/web/{namespace}/{packageName}/{actionName}.{extension}";
    const WHY: &str = "a web action is an anonymous invoke of an action exported with `web-export`; \
        the data plane's filter serves them (e2e/tests/web.rs) and never passes them here, and this \
        server cannot run an action. The swagger documents only `default` for them, so there is no \
        status to hold an answer to either.";
    &[("GET", WEB, WHY), ("PUT", WEB, WHY), ("DELETE", WEB, WHY), ("POST", WEB, WHY)]
};

/// Operations whose success only the data plane gives: an invoke runs behind Envoy and the filter,
/// which `Router::oneshot` does not have. Their refusals (401, 403, 404) are checked like any
/// other's; a valid one must answer 503 in the error shape, which says it bypassed the ingress.
const DATA_PLANE: &[&str] = &["invokeAction", "invokeActionInPackage"];

/// Operations the swagger documents 403 for that OpenWhisk still answers for another namespace's
/// key, and why; such a request must succeed instead.
const WORLD_READABLE: &[(&str, &str)] = &[(
    "getAllPackages",
    "any subject may list any namespace's packages and sees only the published ones \
     (`wsk package list /whisk.system`), as OpenWhisk's package listing does",
)];

/// The id of the seeded activation record.
const ACTIVATION_ID: &str = "c0ffee00c0ffee00c0ffee00c0ffee00";

/// A name no fixture has.
const ABSENT: &str = "absent";

/// The value of each path parameter in a valid request: the seeded fixtures.
fn path_value(name: &str) -> &'static str {
    match name {
        "namespace" => "_",
        "packageName" => "utils",
        "actionName" => "hello",
        "triggerName" => "t",
        "ruleName" => "r",
        "activationid" => ACTIVATION_ID,
        other => panic!("no fixture for path parameter '{other}': add one to path_value"),
    }
}

/// The value of each query parameter in a valid request. `force=true` deletes the seeded package
/// with the action it holds; `overwrite=true` lets a `PUT` replace a seeded entity.
fn query_value(name: &str) -> &'static str {
    match name {
        "limit" => "5",
        "skip" => "0",
        "code" => "false",
        "overwrite" => "true",
        "force" => "true",
        "public" => "true",
        "blocking" => "true",
        "result" => "true",
        "timeout" => "60000",
        "name" => "hello",
        "since" => "1",
        "upto" => "4102444800000",
        "docs" => "true",
        other => panic!("no value for query parameter '{other}': add one to query_value"),
    }
}

/// The body of each body parameter in a valid request, by its name in the swagger.
fn body_value(name: &str) -> Value {
    match name {
        "action" => hello(),
        "package" => json!({"parameters": [{"key": "greeting", "value": "hi"}]}),
        "trigger" => json!({"parameters": [{"key": "a", "value": 1}]}),
        "rule" => json!({"trigger": "t", "action": "hello"}),
        "status" => json!({"status": "inactive"}),
        "payload" => json!({"name": "world"}),
        other => panic!("no body for body parameter '{other}': add one to body_value"),
    }
}

/// The parsed swagger, with `$ref` resolution and the schema checker.
struct Swagger {
    document: Value,
}

/// One path and verb of the swagger.
#[derive(Debug)]
struct Operation<'a> {
    method: Method,
    template: &'a str,
    /// `operationId`, or `METHOD template` when it has none.
    id: String,
    /// The path item's parameters, then the operation's (which replace those of the same name).
    parameters: Vec<&'a Value>,
    /// Status (or `default`) → the response object, `$ref` resolved.
    responses: BTreeMap<&'a str, &'a Value>,
}

impl Swagger {
    fn load() -> Self {
        Self { document: serde_json::from_str(SWAGGER).unwrap() }
    }

    /// `/api/v1`: what every template is relative to.
    fn base_path(&self) -> &str {
        self.document["basePath"].as_str().unwrap()
    }

    /// Follows `$ref`s (`#/definitions/…`, `#/responses/…`) until a node has none.
    fn resolve<'a>(&'a self, mut node: &'a Value) -> &'a Value {
        for _ in 0..16 {
            let Some(reference) = node.get("$ref").and_then(Value::as_str) else {
                return node;
            };
            node = reference
                .strip_prefix('#')
                .and_then(|pointer| self.document.pointer(pointer))
                .unwrap_or_else(|| panic!("unresolvable $ref '{reference}'"));
        }
        panic!("a $ref cycle at {node}")
    }

    /// Every path and verb, in path order.
    fn operations(&self) -> Vec<Operation<'_>> {
        let mut operations = Vec::new();
        for (template, item) in self.document["paths"].as_object().unwrap() {
            let shared: Vec<&Value> =
                item.get("parameters").and_then(Value::as_array).into_iter().flatten().collect();
            for (verb, operation) in item.as_object().unwrap() {
                let method = match verb.as_str() {
                    "get" => Method::GET,
                    "put" => Method::PUT,
                    "post" => Method::POST,
                    "delete" => Method::DELETE,
                    "patch" => Method::PATCH,
                    "head" => Method::HEAD,
                    "options" => Method::OPTIONS,
                    // The path item's own `parameters`, and extensions.
                    _ => continue,
                };
                let own: Vec<&Value> = operation
                    .get("parameters")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .map(|parameter| self.resolve(parameter))
                    .collect();
                let mut parameters: Vec<&Value> = shared
                    .iter()
                    .map(|parameter| self.resolve(parameter))
                    .filter(|parameter| !own.iter().any(|mine| same_parameter(mine, parameter)))
                    .collect();
                parameters.extend(own);
                let responses = operation["responses"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(status, response)| (status.as_str(), self.resolve(response)))
                    .collect();
                let id = operation
                    .get("operationId")
                    .and_then(Value::as_str)
                    .map_or_else(|| format!("{method} {template}"), str::to_owned);
                operations.push(Operation { method, template, id, parameters, responses });
            }
        }
        operations
    }

    /// Adds to `problems` every way `value` (found at `at`) breaks `schema`.
    fn check(&self, schema: &Value, value: &Value, at: &str, problems: &mut Vec<String>) {
        let schema = self.resolve(schema);
        let properties = schema.get("properties").and_then(Value::as_object);
        let required = schema.get("required").and_then(Value::as_array);
        // A schema that names properties describes an object even when it omits `type`.
        let declared = schema
            .get("type")
            .and_then(Value::as_str)
            .or_else(|| (properties.is_some() || required.is_some()).then_some("object"));
        if let Some(kind) = declared
            && !has_type(kind, value)
        {
            problems.push(format!("{at}: expected {kind}, found {value}"));
            return;
        }
        if let (Some(object), Some(required)) = (value.as_object(), required) {
            for key in required.iter().filter_map(Value::as_str) {
                if !object.contains_key(key) {
                    problems.push(format!("{at}: required property '{key}' is missing"));
                }
            }
        }
        if let (Some(object), Some(properties)) = (value.as_object(), properties) {
            for (key, property) in properties {
                if let Some(found) = object.get(key) {
                    self.check(property, found, &format!("{at}.{key}"), problems);
                }
            }
        }
        if let (Some(array), Some(items)) = (value.as_array(), schema.get("items")) {
            for (index, item) in array.iter().enumerate() {
                self.check(items, item, &format!("{at}[{index}]"), problems);
            }
        }
    }
}

fn same_parameter(a: &Value, b: &Value) -> bool {
    a["name"] == b["name"] && a["in"] == b["in"]
}

/// Whether `value` is of the swagger (JSON Schema) type `kind`.
fn has_type(kind: &str, value: &Value) -> bool {
    match kind {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "boolean" => value.is_boolean(),
        "null" => value.is_null(),
        other => panic!("the swagger names an unknown type '{other}'"),
    }
}

impl Operation<'_> {
    fn label(&self) -> String {
        format!("{} {} ({})", self.method, self.template, self.id)
    }

    fn declared<'b>(&'b self, location: &'b str) -> impl Iterator<Item = &'b str> + 'b {
        self.parameters
            .iter()
            .filter(move |parameter| parameter["in"] == location)
            .filter_map(|parameter| parameter["name"].as_str())
    }

    /// Whether the operation names `status` itself (`default` does not count: a refusal must be
    /// one the operation foresees).
    fn documents(&self, status: StatusCode) -> bool {
        self.responses.contains_key(status.as_str())
    }

    /// The response documented for `status`, else `default`.
    fn response(&self, status: StatusCode) -> Option<&Value> {
        self.responses.get(status.as_str()).or_else(|| self.responses.get("default")).copied()
    }

    /// The URI of a request: every path parameter at its fixture value unless `paths` says
    /// otherwise, and, when `with_query`, every query parameter the operation declares.
    fn uri(&self, base: &str, paths: &[(&str, &str)], with_query: bool) -> String {
        let mut path = format!("{base}{}", self.template);
        for name in self.declared("path") {
            let value = paths
                .iter()
                .find(|(named, _)| *named == name)
                .map_or_else(|| path_value(name), |(_, value)| *value);
            path = path.replace(&format!("{{{name}}}"), value);
        }
        assert!(!path.contains('{'), "{}: a path parameter is not declared: {path}", self.label());
        let query: Vec<String> = if with_query {
            self.declared("query").map(|name| format!("{name}={}", query_value(name))).collect()
        } else {
            Vec::new()
        };
        if query.is_empty() { path } else { format!("{path}?{}", query.join("&")) }
    }

    fn body(&self) -> Option<Value> {
        self.declared("body").next().map(body_value)
    }

    /// The last path parameter, unless it is the namespace (collections and limits have no entity).
    fn entity_parameter(&self) -> Option<&str> {
        self.declared("path").last().filter(|name| *name != "namespace")
    }
}

/// Where one operation broke the contract.
#[derive(Debug, Default)]
struct Findings {
    problems: Vec<String>,
}

impl Findings {
    fn add(&mut self, operation: &Operation<'_>, what: &str, problem: String) {
        self.problems.push(format!("{}: {what}: {problem}", operation.label()));
    }

    /// The answer's status must be documented, and its body of the documented schema.
    fn documented(
        &mut self,
        swagger: &Swagger,
        operation: &Operation<'_>,
        what: &str,
        status: StatusCode,
        body: &Value,
    ) {
        let Some(response) = operation.response(status) else {
            self.add(operation, what, format!("answered {status}, which it does not document: {body}"));
            return;
        };
        if let Some(schema) = response.get("schema") {
            let mut problems = Vec::new();
            swagger.check(schema, body, "body", &mut problems);
            for problem in problems {
                self.add(operation, what, problem);
            }
        }
    }

    /// A refusal: exactly `expected`, documented, in OpenWhisk's error shape.
    fn refused(
        &mut self,
        swagger: &Swagger,
        operation: &Operation<'_>,
        what: &str,
        expected: StatusCode,
        (status, body): (StatusCode, Value),
    ) {
        if status != expected {
            self.add(operation, what, format!("expected {expected}, answered {status}: {body}"));
            return;
        }
        self.documented(swagger, operation, what, status, &body);
        let shaped = body["error"].as_str().is_some_and(|error| !error.is_empty())
            && body["code"].as_str().is_some_and(|code| !code.is_empty());
        if !shaped {
            self.add(operation, what, format!("not OpenWhisk's error shape: {body}"));
        }
    }
}

/// A request with a raw body, for bodies that are not JSON.
fn raw(method: Method, uri: &str, key: &Key, body: &'static str) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(uri)
        .header("authorization", key.basic_authorization())
        .header("content-type", "application/json")
        .body(Body::from(body))
        .unwrap()
}

/// Creates, or puts back as they were, the entities valid requests name: package `utils`, actions
/// `hello` and `utils/hello`, trigger `t`, rule `r` (`t` → `hello`, active), and one activation.
async fn seed(h: &Harness) {
    let writes = [
        (Method::PUT, "/api/v1/namespaces/_/packages/utils?overwrite=true", json!({})),
        (Method::PUT, "/api/v1/namespaces/_/actions/hello?overwrite=true", hello()),
        (Method::PUT, "/api/v1/namespaces/_/actions/utils/hello?overwrite=true", hello()),
        (Method::PUT, "/api/v1/namespaces/_/triggers/t?overwrite=true", json!({})),
        (
            Method::PUT,
            "/api/v1/namespaces/_/rules/r?overwrite=true",
            json!({"trigger": "t", "action": "hello"}),
        ),
        (Method::POST, "/api/v1/namespaces/_/rules/r", json!({"status": "active"})),
    ];
    for (method, uri, body) in writes {
        let (status, answer) = send(&h.router, request(method, uri, Some(&h.guest), Some(body))).await;
        assert_eq!(status, StatusCode::OK, "seeding {uri}: {answer}");
    }
    let record = ActivationRecord {
        activation_id: ACTIVATION_ID.into(),
        namespace: "guest".into(),
        name: "hello".into(),
        version: "0.0.1".into(),
        subject: "guest".into(),
        publish: false,
        start: 1_000,
        end: 1_007,
        duration: 7,
        response: ActivationResponse::new(ActivationStatus::Success, json!({"greeting": "hi"})),
        logs: vec!["2024-01-01T00:00:00Z stdout: hi".into()],
        annotations: vec![],
        cause: None,
    };
    let body = serde_json::to_value([record]).unwrap();
    let (status, answer) =
        send(&h.router, internal(Method::POST, "/internal/v1/activations", None, Some(body))).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "seeding the activation: {answer}");
}

/// The valid request: a documented success with the documented body (for [`DATA_PLANE`]
/// operations, the 503 of an invoke that bypassed the ingress).
async fn check_valid(h: &Harness, swagger: &Swagger, operation: &Operation<'_>, findings: &mut Findings) {
    let uri = operation.uri(swagger.base_path(), &[], true);
    let answer =
        send(&h.router, request(operation.method.clone(), &uri, Some(&h.guest), operation.body())).await;
    let what = format!("valid {uri}");
    if DATA_PLANE.contains(&operation.id.as_str()) {
        let (status, body) = &answer;
        let ingress = body["error"].as_str().is_some_and(|error| error.contains("served by the ingress"));
        if *status != StatusCode::SERVICE_UNAVAILABLE || !ingress || !body["code"].is_string() {
            findings.add(operation, &what, format!("expected the ingress's 503, answered {status}: {body}"));
        }
        return;
    }
    let (status, body) = answer;
    if !status.is_success() {
        findings.add(operation, &what, format!("answered {status}: {body}"));
        return;
    }
    findings.documented(swagger, operation, &what, status, &body);
}

/// Every refusal the operation documents and a router test can provoke.
async fn check_refusals(h: &Harness, swagger: &Swagger, operation: &Operation<'_>, findings: &mut Findings) {
    let base = swagger.base_path();
    let method = &operation.method;
    let uri = operation.uri(base, &[], true);
    let body = operation.body();

    if operation.documents(StatusCode::UNAUTHORIZED) {
        let wrong = Key { secret: "x".repeat(64), ..h.guest.clone() };
        for (what, key) in [("without a key", None), ("with a wrong secret", Some(&wrong))] {
            let answer = send(&h.router, request(method.clone(), &uri, key, body.clone())).await;
            findings.refused(swagger, operation, what, StatusCode::UNAUTHORIZED, answer);
        }
    }
    if operation.documents(StatusCode::FORBIDDEN) {
        let foreign = operation.uri(base, &[("namespace", "guest")], true);
        let answer = send(&h.router, request(method.clone(), &foreign, Some(&h.alice), body.clone())).await;
        let what = "with another namespace's key";
        if WORLD_READABLE.iter().any(|(id, _)| *id == operation.id) {
            if answer.0 != StatusCode::OK {
                let (status, body) = answer;
                findings.add(
                    operation,
                    what,
                    format!("expected 200 (world-readable), answered {status}: {body}"),
                );
            }
        } else {
            findings.refused(swagger, operation, what, StatusCode::FORBIDDEN, answer);
        }
    }
    // A `PUT` of an unknown name creates it: only reads, deletes and posts can miss.
    if operation.documents(StatusCode::NOT_FOUND)
        && *method != Method::PUT
        && let Some(entity) = operation.entity_parameter()
    {
        let absent = operation.uri(base, &[(entity, ABSENT)], true);
        let answer = send(&h.router, request(method.clone(), &absent, Some(&h.guest), body.clone())).await;
        findings.refused(swagger, operation, &format!("unknown {entity}"), StatusCode::NOT_FOUND, answer);
    }
    if operation.documents(StatusCode::BAD_REQUEST) && body.is_some() {
        for (what, malformed) in [("truncated JSON", "{\"exec\": "), ("a JSON array", "[]")] {
            let answer = send(&h.router, raw(method.clone(), &uri, &h.guest, malformed)).await;
            findings.refused(swagger, operation, what, StatusCode::BAD_REQUEST, answer);
        }
    }
    if operation.documents(StatusCode::CONFLICT) && *method == Method::PUT {
        let again = operation.uri(base, &[], false);
        let answer = send(&h.router, request(method.clone(), &again, Some(&h.guest), body.clone())).await;
        findings.refused(
            swagger,
            operation,
            "a create over an existing entity",
            StatusCode::CONFLICT,
            answer,
        );
    }
}

async fn every_operation_of_the_swagger_keeps_its_contract(backend: Backend) {
    let (ingress, _) = stand_in_ingress().await;
    let h = harness_with_ingress(&backend, &ingress);
    let swagger = Swagger::load();
    let operations = swagger.operations();
    for (method, template, _) in NOT_SERVED {
        let listed = operations.iter().any(|op| op.method == *method && op.template == *template);
        assert!(listed, "NOT_SERVED names {method} {template}, which the swagger does not have");
    }
    for id in DATA_PLANE {
        assert!(operations.iter().any(|op| op.id == *id), "DATA_PLANE names {id}, which the swagger lacks");
    }
    for (id, _) in WORLD_READABLE {
        assert!(
            operations.iter().any(|op| op.id == *id),
            "WORLD_READABLE names {id}, which the swagger lacks"
        );
    }
    let mut findings = Findings::default();
    let mut walked = 0;
    for operation in &operations {
        let not_served = NOT_SERVED
            .iter()
            .any(|(method, template, _)| operation.method == *method && operation.template == *template);
        if not_served {
            continue;
        }
        seed(&h).await;
        check_valid(&h, &swagger, operation, &mut findings).await;
        seed(&h).await;
        check_refusals(&h, &swagger, operation, &mut findings).await;
        walked += 1;
    }
    assert_eq!(walked + NOT_SERVED.len(), operations.len());
    assert!(
        findings.problems.is_empty(),
        "{} breaches of the contract:\n{}",
        findings.problems.len(),
        findings.problems.join("\n")
    );
}

/// The checker finds what a schema forbids (else the walk above could pass on anything).
#[test]
fn the_checker_refuses_what_the_schema_forbids() {
    let swagger = Swagger::load();
    let action = json!({"$ref": "#/definitions/Action"});
    let valid = json!({
        "namespace": "guest", "name": "hello", "version": "0.0.1", "publish": false,
        "exec": {"kind": "nodejs:20", "code": "x", "binary": false},
        "annotations": [{"key": "exec", "value": "nodejs:20"}],
        "limits": {"timeout": 60000, "memory": 256, "logs": 10, "concurrency": 1},
    });
    let problems = |schema: &Value, value: &Value| {
        let mut found = Vec::new();
        swagger.check(schema, value, "body", &mut found);
        found
    };
    assert_eq!(problems(&action, &valid), Vec::<String>::new());
    let mut without_exec = valid.clone();
    without_exec.as_object_mut().unwrap().remove("exec");
    assert_eq!(problems(&action, &without_exec), ["body: required property 'exec' is missing"]);
    let mut bad_limit = valid.clone();
    bad_limit["limits"]["timeout"] = json!("60s");
    assert_eq!(problems(&action, &bad_limit), [r#"body.limits.timeout: expected integer, found "60s""#]);
    let mut bad_annotation = valid.clone();
    bad_annotation["annotations"][0]["key"] = json!(7);
    assert_eq!(problems(&action, &bad_annotation), ["body.annotations[0].key: expected string, found 7"]);
    // Through `#/responses/…` and a schema without `type`.
    let reference = json!({"$ref": "#/responses/UnauthorizedRequest"});
    let unauthorized = swagger.resolve(&reference);
    assert_eq!(problems(&unauthorized["schema"], &json!("denied")).len(), 1);
    assert_eq!(problems(&unauthorized["schema"], &json!({"code": "c"})).len(), 1);
    let logs = json!({"$ref": "#/definitions/ActivationLogs"});
    assert_eq!(problems(&logs, &json!({"logs": ["a", 1]})), ["body.logs[1]: expected string, found 1"]);
    let list = json!({"type": "array", "items": {"$ref": "#/definitions/RuleMeta"}});
    assert_eq!(problems(&list, &json!({})).len(), 1);
}

/// Path-level parameters reach each operation; the operation's own replace them by name.
#[test]
fn operations_carry_every_parameter_they_declare() {
    let swagger = Swagger::load();
    let operations = swagger.operations();
    let find = |id: &str| operations.iter().find(|op| op.id == id).unwrap();
    let get = find("getActionInPackageByName");
    assert_eq!(get.method, Method::GET);
    assert_eq!(get.declared("path").collect::<Vec<_>>(), ["namespace", "packageName", "actionName"]);
    assert_eq!(get.declared("query").collect::<Vec<_>>(), ["code"]);
    assert_eq!(
        get.uri(swagger.base_path(), &[("actionName", ABSENT)], true),
        "/api/v1/namespaces/_/actions/utils/absent?code=false"
    );
    let set_state = find("setState");
    assert_eq!(set_state.declared("path").count(), 2, "declared on the operation only once each");
    assert_eq!(set_state.body(), Some(json!({"status": "inactive"})));
    assert!(set_state.documents(StatusCode::ACCEPTED) && !set_state.documents(StatusCode::CONFLICT));
    assert_eq!(find("getAllNamespaces").entity_parameter(), None);
}
