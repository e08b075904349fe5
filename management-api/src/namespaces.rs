//! Namespaces as the API sees them: `_` resolution, the isolation check, and
//! `GET /api/v1/namespaces`.

use axum::Json;

use crate::error::ApiError;
use crate::state::Subject;

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
}
