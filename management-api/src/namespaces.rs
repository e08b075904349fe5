//! Namespaces as the API sees them: `_` resolution, the isolation check, `GET /api/v1/namespaces`
//! and `GET /api/v1/namespaces/{ns}/limits`.

use axum::Json;
use axum::extract::State;
use serde::Serialize;

use crate::actions::{CONCURRENCY_RANGE, LOGS_RANGE, MEMORY_RANGE, TIMEOUT_RANGE};
use crate::error::{ApiError, ApiPath};
use crate::state::{AppState, Subject};
use whisk_contract::NamespaceLimits;

/// The path segment that means "the key's own namespace".
pub const DEFAULT_NAMESPACE: &str = "_";

/// Resolves `_` and checks the key may touch `namespace`: a key reaches only its own namespace
/// (403 otherwise, before anything about the resource is revealed).
pub fn authorize(subject: &Subject, namespace: &str) -> Result<String, ApiError> {
    if namespace == DEFAULT_NAMESPACE || namespace == subject.namespace {
        Ok(subject.namespace.clone())
    } else {
        Err(ApiError::Forbidden(namespace.to_owned()))
    }
}

/// `GET /api/v1/namespaces`: the key's namespaces (one per key here).
pub async fn list(subject: Subject) -> Json<Vec<String>> {
    Json(vec![subject.namespace])
}

/// OpenWhisk's `UserLimits`, limited to what this platform enforces: the invocation limits (per
/// Envoy) and the action limit ranges.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Limits {
    concurrent_invocations: u64,
    invocations_per_minute: u64,
    min_action_memory: u64,
    max_action_memory: u64,
    min_action_timeout: u64,
    max_action_timeout: u64,
    min_action_logs: u64,
    max_action_logs: u64,
    min_action_concurrency: u64,
    max_action_concurrency: u64,
    store_activations: bool,
}

impl Limits {
    pub fn current(namespace: NamespaceLimits) -> Self {
        Self {
            concurrent_invocations: namespace.concurrent_invocations,
            invocations_per_minute: namespace.invocations_per_minute,
            min_action_memory: MEMORY_RANGE.0,
            max_action_memory: MEMORY_RANGE.1,
            min_action_timeout: TIMEOUT_RANGE.0,
            max_action_timeout: TIMEOUT_RANGE.1,
            min_action_logs: LOGS_RANGE.0,
            max_action_logs: LOGS_RANGE.1,
            min_action_concurrency: CONCURRENCY_RANGE.0,
            max_action_concurrency: CONCURRENCY_RANGE.1,
            store_activations: true,
        }
    }
}

/// `GET /api/v1/namespaces/{ns}/limits`
pub async fn limits(
    State(state): State<AppState>,
    subject: Subject,
    ApiPath(namespace): ApiPath<String>,
) -> Result<Json<Limits>, ApiError> {
    authorize(&subject, &namespace)?;
    Ok(Json(Limits::current(state.namespace_limits())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_reaches_only_its_own_namespace() {
        let subject = Subject { namespace: "guest".into() };
        assert_eq!(authorize(&subject, "_").unwrap(), "guest");
        assert_eq!(authorize(&subject, "guest").unwrap(), "guest");
        assert!(matches!(authorize(&subject, "alice"), Err(ApiError::Forbidden(ns)) if ns == "alice"));
    }

    #[test]
    fn limits_use_openwhisks_names() {
        let limits = serde_json::to_value(Limits::current(NamespaceLimits::default())).unwrap();
        assert_eq!(limits["concurrentInvocations"], 100);
        assert_eq!(limits["invocationsPerMinute"], 120);
        assert_eq!(limits["maxActionMemory"], 2048);
        assert_eq!(limits["minActionTimeout"], 100);
        assert_eq!(limits["maxActionConcurrency"], 1);
    }
}
