//! Every error a client can see, and the one place that turns it into OpenWhisk's
//! `{"error": "...", "code": "..."}` body.
//!
//! The extractors here ([`ApiJson`], [`ApiQuery`], [`ApiPath`]) wrap axum's so that their rejections
//! take the same shape instead of axum's plain-text bodies.

use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use rand::RngCore as _;
use serde::de::DeserializeOwned;
use whisk_contract::{ErrorBody, messages};

use crate::store::StoreError;

/// OpenWhisk's message when a create meets an existing entity without `overwrite=true`.
pub const RESOURCE_EXISTS: &str = "resource already exists";
/// Invokes are the data plane's job: a request that reaches this server bypassed the ingress.
pub const INVOKE_AT_INGRESS: &str =
    "Invocations are served by the ingress (Envoy data plane), not by the management API.";
/// OpenWhisk's package and binding messages.
pub const BINDING_DOES_NOT_EXIST: &str = "Binding references a package that does not exist.";
pub const PACKAGE_CANNOT_BECOME_BINDING: &str =
    "Resource is a package and cannot be converted into a binding.";
pub const BINDING_TO_BINDING: &str = "Cannot bind to another package binding.";
pub const NOT_ALLOWED_ON_BINDING: &str = "Operation not permitted on package binding.";

/// An error answered to a client; [`std::fmt::Display`] is the message it sees.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{}", messages::UNAUTHENTICATED)]
    Unauthenticated,
    /// The resource (`namespace` or `namespace/name`) the key may not touch.
    #[error("{}", messages::NOT_AUTHORIZED.replace("{0}", .0))]
    Forbidden(String),
    #[error("{}", messages::RESOURCE_DOES_NOT_EXIST)]
    NotFound,
    #[error("{RESOURCE_EXISTS}")]
    Conflict,
    /// A package still holding actions cannot be deleted.
    #[error(
        "Package not empty (contains {0} {entities}). Set force param or delete package contents.",
        entities = if *.0 == 1 { "entity" } else { "entities" }
    )]
    PackageNotEmpty(u64),
    #[error("{PACKAGE_CANNOT_BECOME_BINDING}")]
    PackageCannotBecomeBinding,
    #[error("{BINDING_DOES_NOT_EXIST}")]
    BindingDoesNotExist,
    #[error("{BINDING_TO_BINDING}")]
    BindingToBinding,
    /// Creating, updating or deleting an action inside a binding.
    #[error("{NOT_ALLOWED_ON_BINDING}")]
    NotAllowedOnBinding,
    #[error("Package name '{0}' is reserved.")]
    ReservedPackageName(String),
    /// The body could not be read as the entity; the detail says why.
    #[error("{malformed}\n{0}", malformed = messages::MALFORMED_CONTENT)]
    Malformed(String),
    /// A request that is well-formed but not acceptable (a bad name, a query parameter out of range).
    #[error("{0}")]
    BadRequest(String),
    #[error("{}", messages::ENTITY_TOO_BIG)]
    TooLarge,
    #[error("The requested method is not allowed for this resource.")]
    MethodNotAllowed,
    #[error("{INVOKE_AT_INGRESS}")]
    InvokeAtIngress,
    /// The detail is logged, never shown: it may name tables or files.
    #[error("{}", messages::INTERNAL_ERROR)]
    Internal(String),
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        Self::Internal(error.to_string())
    }
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Unauthenticated => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::Conflict | Self::PackageNotEmpty(_) | Self::PackageCannotBecomeBinding => {
                StatusCode::CONFLICT
            }
            Self::Malformed(_)
            | Self::BadRequest(_)
            | Self::BindingDoesNotExist
            | Self::BindingToBinding
            | Self::NotAllowedOnBinding
            | Self::ReservedPackageName(_) => StatusCode::BAD_REQUEST,
            Self::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::InvokeAtIngress => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// A fresh transaction-like id (32 hex characters) that ties the answer to the server's log line.
pub fn transaction_id() -> String {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let code = transaction_id();
        match &self {
            Self::Internal(detail) => tracing::error!(%code, %detail, "internal error"),
            _ => tracing::debug!(%code, %status, error = %self, "request refused"),
        }
        (status, axum::Json(ErrorBody { error: self.to_string(), code })).into_response()
    }
}

/// Answers unknown routes.
pub async fn not_found() -> ApiError {
    ApiError::NotFound
}

/// Answers a known route called with a method it does not serve.
pub async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// A raw body, with OpenWhisk's 400 and 413 answers (for bodies that may be empty).
#[derive(Debug)]
pub struct ApiBytes(pub axum::body::Bytes);

impl<S: Send + Sync> FromRequest<S> for ApiBytes {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        axum::body::Bytes::from_request(request, state).await.map(ApiBytes).map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::TooLarge
            } else {
                ApiError::Malformed(rejection.body_text())
            }
        })
    }
}

/// A JSON body read whatever its `content-type` (as OpenWhisk does for `wsk`), with OpenWhisk's
/// 400 and 413 answers.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let ApiBytes(bytes) = ApiBytes::from_request(request, state).await?;
        serde_json::from_slice(&bytes).map(ApiJson).map_err(|error| ApiError::Malformed(error.to_string()))
    }
}

/// Query parameters; a query that does not parse is a 400 in the error shape.
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(query)| ApiQuery(query))
            .map_err(|rejection| ApiError::BadRequest(rejection.body_text()))
    }
}

/// Path parameters; a segment that does not decode is a 400 in the error shape.
#[derive(Debug)]
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(path)| ApiPath(path))
            .map_err(|rejection| ApiError::BadRequest(rejection.body_text()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_openwhisks() {
        assert_eq!(ApiError::Unauthenticated.to_string(), "The supplied authentication is invalid.");
        assert_eq!(
            ApiError::Forbidden("guest/hello".into()).to_string(),
            "The supplied authentication is not authorized to access 'guest/hello'."
        );
        assert_eq!(
            ApiError::Malformed("expected value".into()).to_string(),
            "The request content was malformed:\nexpected value"
        );
        assert_eq!(ApiError::Conflict.to_string(), "resource already exists");
        assert_eq!(
            ApiError::PackageNotEmpty(1).to_string(),
            "Package not empty (contains 1 entity). Set force param or delete package contents."
        );
        assert!(
            ApiError::PackageNotEmpty(3).to_string().starts_with("Package not empty (contains 3 entities).")
        );
        assert_eq!(
            ApiError::ReservedPackageName("default".into()).to_string(),
            "Package name 'default' is reserved."
        );
        assert_eq!(ApiError::Internal("disk I/O error".into()).to_string(), "Internal server error.");
    }

    #[test]
    fn transaction_ids_are_32_fresh_hex_characters() {
        let (a, b) = (transaction_id(), transaction_id());
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
