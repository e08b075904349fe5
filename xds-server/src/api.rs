//! The control server's HTTP API: cold starts for the filter, Prometheus metrics, health.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use prometheus_client::registry::Registry;
use whisk_contract::{ColdStartRequest, ErrorBody, UsageReport, headers, messages, paths};

use crate::cluster::ClusterManager;
use crate::plane::{ColdStartError, ControlPlane};

/// Shared state of the handlers.
pub struct ApiState<C> {
    pub plane: Arc<ControlPlane<C>>,
    pub registry: Registry,
    pub internal_token: String,
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    let body = ErrorBody { error: message.into(), code: uuid::Uuid::new_v4().simple().to_string() };
    (status, Json(body)).into_response()
}

/// The internal endpoints answer only the filter, which carries the shared token.
/// The 401 for a request without it, if so.
fn refuse_without_token<C>(state: &ApiState<C>, request_headers: &HeaderMap) -> Option<Response> {
    let token = request_headers.get(headers::INTERNAL_TOKEN).and_then(|v| v.to_str().ok());
    (token != Some(state.internal_token.as_str()))
        .then(|| error(StatusCode::UNAUTHORIZED, messages::UNAUTHENTICATED))
}

pub fn router<C: ClusterManager>(state: Arc<ApiState<C>>) -> Router {
    Router::new()
        .route(paths::COLD_START, post(cold_start::<C>).get(containers::<C>))
        .route(&format!("{}/{{id}}", paths::CONTAINERS), axum::routing::delete(retire::<C>))
        .route(paths::USAGE, post(usage::<C>))
        .route("/metrics", get(metrics::<C>))
        .route("/health", get(|| async { "ok" }))
        .with_state(state)
}

async fn cold_start<C: ClusterManager>(
    State(state): State<Arc<ApiState<C>>>,
    request_headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Some(refused) = refuse_without_token(&state, &request_headers) {
        return refused;
    }
    let request: ColdStartRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(parse) => {
            return error(StatusCode::BAD_REQUEST, format!("{} {parse}", messages::MALFORMED_CONTENT));
        }
    };
    match state.plane.cold_start(request).await {
        Ok(response) => Json(response).into_response(),
        // The filter turns a 502 into an "action developer error" activation with this message.
        Err(failure @ ColdStartError::Init { .. }) => error(StatusCode::BAD_GATEWAY, failure.to_string()),
        Err(ColdStartError::StaleRevision { .. }) => {
            error(StatusCode::CONFLICT, "The action was updated; retry.")
        }
        // The filter keeps the request waiting for a container to free up.
        Err(failure @ ColdStartError::AtCapacity(_)) => {
            error(StatusCode::TOO_MANY_REQUESTS, failure.to_string())
        }
        Err(failure) => {
            error(StatusCode::SERVICE_UNAVAILABLE, format!("{} ({failure})", messages::NO_CAPACITY))
        }
    }
}

/// A filter worker's usage report: the collector's marks, unmarks and sweeps in return.
async fn usage<C: ClusterManager>(
    State(state): State<Arc<ApiState<C>>>,
    request_headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Some(refused) = refuse_without_token(&state, &request_headers) {
        return refused;
    }
    match serde_json::from_slice::<UsageReport>(&body) {
        Ok(report) => Json(state.plane.usage(&report)).into_response(),
        Err(parse) => error(StatusCode::BAD_REQUEST, format!("{} {parse}", messages::MALFORMED_CONTENT)),
    }
}

/// The container table, for operators and tests (the control port is not exposed at the ingress).
async fn containers<C: ClusterManager>(State(state): State<Arc<ApiState<C>>>) -> Response {
    Json(state.plane.containers()).into_response()
}

/// Query of a retire.
#[derive(Debug, serde::Deserialize)]
struct RetireQuery {
    #[serde(default)]
    grace_ms: u64,
    /// The filter's sweep retired it: it was free, and no activation can be running in it.
    #[serde(default)]
    swept: bool,
}

async fn retire<C: ClusterManager>(
    State(state): State<Arc<ApiState<C>>>,
    request_headers: HeaderMap,
    axum::extract::Path(id): axum::extract::Path<String>,
    axum::extract::Query(query): axum::extract::Query<RetireQuery>,
) -> Response {
    if let Some(refused) = refuse_without_token(&state, &request_headers) {
        return refused;
    }
    // Bounded: a retire never keeps a process longer than the longest action timeout.
    let grace = std::time::Duration::from_millis(query.grace_ms.min(300_000));
    if state.plane.retire(&id, grace, query.swept) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        error(StatusCode::NOT_FOUND, messages::RESOURCE_DOES_NOT_EXIST)
    }
}

async fn metrics<C: ClusterManager>(State(state): State<Arc<ApiState<C>>>) -> Response {
    let mut text = String::new();
    match prometheus_client::encoding::text::encode(&mut text, &state.registry) {
        Ok(()) => ([("content-type", "application/openmetrics-text; version=1.0.0; charset=utf-8")], text)
            .into_response(),
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, messages::INTERNAL_ERROR),
    }
}
