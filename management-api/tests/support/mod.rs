//! What the integration tests share: a server behind `Router::oneshot` on either store backend, two
//! keys, request and assertion helpers, and a stand-in for the ingress that trigger fires invoke
//! through.
//!
//! Each test is an `async fn(Backend)`; [`on_every_backend!`] runs it as `sqlite::<test>` and as
//! `postgres::<test>`, the latter in a private schema of the server at `WHISK_TEST_POSTGRES_URL`
//! (`scripts/postgres-test.sh` starts one). Without that variable the PostgreSQL variants say they
//! are skipped, once per test binary on stderr, and pass.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code, reason = "shared by several test binaries")]
// Helpers outside `#[test]` functions are not covered by clippy.toml's allow-unwrap-in-tests.
#![allow(clippy::unwrap_used, reason = "a panic in a test helper is a failed test with its location")]

use std::io::Write as _;
use std::path::Path;
use std::sync::{Arc, Mutex, Once};

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode, Uri};
use http_body_util::BodyExt as _;
use management_api::auth::GUEST_KEY;
use management_api::ingress::DEFAULT_INGRESS_URL;
use management_api::{AppState, Database, Ingress, Key, Store, router, seed_guest};
use serde_json::{Value, json};
use tower::ServiceExt as _;
use whisk_contract::headers;

pub const TOKEN: &str = "internal-secret";

/// Where the PostgreSQL variants find a server: a URL of a database they may create schemas in.
pub const POSTGRES_URL_VARIABLE: &str = "WHISK_TEST_POSTGRES_URL";

/// Defines `sqlite::$test` and `postgres::$test` for each `async fn $test(backend: Backend)` named.
macro_rules! on_every_backend {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test] async fn $test() { super::$test($crate::support::Backend::Sqlite).await })*
        }
        mod postgres {
            $(#[tokio::test] async fn $test() {
                if let Some(backend) = $crate::support::Backend::postgres() { super::$test(backend).await }
            })*
        }
    };
}
pub(crate) use on_every_backend;

/// The store a test runs against.
#[derive(Debug, Clone)]
pub enum Backend {
    /// In memory, or in a temporary directory.
    Sqlite,
    /// A private schema of the server at this URL.
    Postgres(String),
}

impl Backend {
    /// PostgreSQL at `WHISK_TEST_POSTGRES_URL`, or `None` when it is not set.
    pub fn postgres() -> Option<Self> {
        match std::env::var(POSTGRES_URL_VARIABLE) {
            Ok(url) if !url.is_empty() => Some(Self::Postgres(url)),
            _ => {
                static SAID: Once = Once::new();
                SAID.call_once(|| {
                    let binary = std::env::args().next().unwrap_or_default();
                    let binary = Path::new(&binary).file_name().unwrap_or_default().to_string_lossy();
                    let _ = writeln!(
                        std::io::stderr(),
                        "{binary}, PostgreSQL variants skipped: {POSTGRES_URL_VARIABLE} not set"
                    );
                });
                None
            }
        }
    }

    /// A fresh, empty store (a PostgreSQL one drops its schema when dropped).
    pub fn store(&self) -> Store {
        match self {
            Self::Sqlite => Store::open_in_memory().unwrap(),
            Self::Postgres(url) => Store::connect_private(url).unwrap(),
        }
    }

    /// Flags that reach one fresh, empty database from several stores (a server, admin commands),
    /// and what keeps it alive until dropped: SQLite files in `data_dir`, or a private PostgreSQL
    /// schema.
    pub fn database(&self, data_dir: &Path) -> (Database, Option<Store>) {
        match self {
            Self::Sqlite => (Database::sqlite(data_dir), None),
            Self::Postgres(url) => {
                let keeper = Store::connect_private(url).unwrap();
                let Store::Postgres(postgres) = &keeper else { unreachable!() };
                let schema = postgres.private_schema().unwrap();
                let separator = if url.contains('?') { '&' } else { '?' };
                let url = format!("{url}{separator}options=-csearch_path%3D{schema}");
                (Database { data_dir: data_dir.to_owned(), database_url: Some(url) }, Some(keeper))
            }
        }
    }
}

pub struct Harness {
    pub router: Router,
    pub guest: Key,
    pub alice: Key,
}

/// Namespaces `guest` (OpenWhisk's key) and `alice`; trigger fires go to the default ingress.
pub fn harness(backend: &Backend) -> Harness {
    harness_with_ingress(backend, DEFAULT_INGRESS_URL)
}

/// As [`harness`], with trigger fires sent to `ingress_url`.
pub fn harness_with_ingress(backend: &Backend, ingress_url: &str) -> Harness {
    let store = backend.store();
    seed_guest(&store).unwrap();
    let alice = Key::generate();
    store.create_namespace("alice", &alice, 1).unwrap();
    let ingress = Ingress::new(ingress_url).unwrap();
    Harness {
        router: router(AppState::new(store, TOKEN.into(), ingress)),
        guest: Key::parse(GUEST_KEY).unwrap(),
        alice,
    }
}

/// One request; answers the status and the body as JSON (`Value::Null` when empty or not JSON).
pub async fn send(router: &Router, request: Request<Body>) -> (StatusCode, Value) {
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

pub fn request(method: Method, uri: &str, key: Option<&Key>, body: Option<Value>) -> Request<Body> {
    let mut builder = Request::builder().method(method).uri(uri);
    if let Some(key) = key {
        builder = builder.header("authorization", key.basic_authorization());
    }
    match body {
        Some(body) => builder.header("content-type", "application/json").body(Body::from(body.to_string())),
        None => builder.body(Body::empty()),
    }
    .unwrap()
}

pub fn internal(method: Method, uri: &str, key: Option<&Key>, body: Option<Value>) -> Request<Body> {
    let mut request = request(method, uri, key, body);
    request.headers_mut().insert(headers::INTERNAL_TOKEN, TOKEN.parse().unwrap());
    request
}

pub fn hello() -> Value {
    json!({"exec": {"kind": "nodejs:20", "code": "function main(p) { return p; }"}})
}

pub async fn create(h: &Harness, name: &str) -> Value {
    let uri = format!("/api/v1/namespaces/_/actions/{name}");
    let (status, body) = send(&h.router, request(Method::PUT, &uri, Some(&h.guest), Some(hello()))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// An OpenWhisk error body: the message, and a 32-hex-character code.
#[track_caller]
pub fn assert_error(body: &Value, message: &str) {
    let error = body["error"].as_str().unwrap_or_else(|| panic!("not an error body: {body}"));
    assert!(error.contains(message), "{error:?} does not contain {message:?}");
    let code = body["code"].as_str().unwrap();
    assert!(code.len() == 32 && code.chars().all(|c| c.is_ascii_hexdigit()), "{code}");
}

pub async fn resolve(h: &Harness, namespace: &str, action: &str, key: Option<&Key>) -> (StatusCode, Value) {
    let uri = format!("/internal/v1/resolve?namespace={namespace}&action={action}");
    send(&h.router, internal(Method::GET, &uri, key, None)).await
}

/// What the stand-in ingress saw: path and query, `authorization`, body.
pub type Seen = Arc<Mutex<Vec<(String, String, Value)>>>;

/// An HTTP server on 127.0.0.1:0 that records every request and answers like the data plane: 202
/// with an id, except 404 for actions named `missing`.
pub async fn stand_in_ingress() -> (String, Seen) {
    let seen: Seen = Arc::default();
    let recorder = Arc::clone(&seen);
    let app = axum::Router::new().fallback(move |uri: Uri, headers: HeaderMap, body: axum::body::Bytes| {
        let recorder = Arc::clone(&recorder);
        async move {
            let authorization =
                headers.get("authorization").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
            let path = uri.path_and_query().unwrap().to_string();
            let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let number = {
                let mut seen = recorder.lock().unwrap();
                seen.push((path.clone(), authorization, body));
                seen.len()
            };
            if path.contains("/missing") {
                let error = json!({"error": "The requested resource does not exist.", "code": "c"});
                (StatusCode::NOT_FOUND, axum::Json(error))
            } else {
                (
                    StatusCode::ACCEPTED,
                    axum::Json(json!({"activationId": format!("rule-activation-{number}")})),
                )
            }
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{address}"), seen)
}
