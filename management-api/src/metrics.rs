//! Prometheus metrics: requests by method, route and status, their latency by route, and the
//! activation records retention deleted.
//!
//! Routes are labelled by their pattern (`/api/v1/namespaces/{ns}/actions/{name}`), never by the
//! concrete path, so user-chosen names cannot blow up the number of series.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::state::AppState;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

type LatencyFamily = Family<RouteLabels, Histogram, fn() -> Histogram>;

/// The registry and the metrics this server records.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: LatencyFamily,
    expired_activations: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("whisk_management");
        let requests = Family::<RequestLabels, Counter>::default();
        // 0.1 ms … ~3.3 s: resolve should sit in the first buckets, list pages in the middle.
        let latency: LatencyFamily =
            Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.0001, 2.0, 16)));
        registry.register("http_requests", "HTTP requests by method, route and status", requests.clone());
        registry.register("http_request_duration_seconds", "HTTP request latency by route", latency.clone());
        let expired_activations = Counter::default();
        registry.register(
            "activations_deleted",
            "Activation records deleted because they outlived the activation TTL",
            expired_activations.clone(),
        );
        Self { registry, requests, latency, expired_activations }
    }

    /// Counts activation records retention deleted.
    pub fn count_expired_activations(&self, deleted: u64) {
        self.expired_activations.inc_by(deleted);
    }

    fn record(&self, method: &str, route: &str, status: StatusCode, seconds: f64) {
        let labels =
            RequestLabels { method: method.to_owned(), route: route.to_owned(), status: status.as_u16() };
        self.requests.get_or_create(&labels).inc();
        self.latency.get_or_create(&RouteLabels { route: route.to_owned() }).observe(seconds);
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

/// Middleware: counts and times every request, under its route pattern (`unmatched` otherwise).
pub async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().as_str().to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let response = next.run(request).await;
    state.metrics().record(&method, &route, response.status(), started.elapsed().as_secs_f64());
    response
}

/// `GET /metrics`
pub async fn render(State(state): State<AppState>) -> Response {
    match state.metrics().encode() {
        Ok(text) => ([(CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text)
            .into_response(),
        Err(error) => {
            crate::error::ApiError::Internal(format!("cannot encode metrics: {error}")).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_by_route_and_status() {
        let metrics = Metrics::new();
        metrics.record("GET", "/health", StatusCode::OK, 0.001);
        metrics.record("GET", "/health", StatusCode::OK, 0.001);
        let text = metrics.encode().unwrap();
        assert!(
            text.contains(
                r#"whisk_management_http_requests_total{method="GET",route="/health",status="200"} 2"#
            ),
            "{text}"
        );
        assert!(text.contains("whisk_management_http_request_duration_seconds_bucket"), "{text}");
    }
}
