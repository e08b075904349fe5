//! The internal endpoints the platform calls (never users; the ingress refuses `/internal/`):
//!
//! ```text
//! filter     ── GET  /internal/v1/resolve?namespace=&action=  (+ client's authorization) ─► ResolvedAction
//! filter     ── POST /internal/v1/activations  [ActivationRecord, …] ─────────────────────► 204
//! xds-server ── GET  /internal/v1/actions/{ns}/[{pkg}/]{name} ─────────────────────────────► ActionCode
//! ```
//!
//! Resolve follows packages and bindings ([`crate::packages::locate_action`]): the answer names the
//! action's real owner (namespace, package, name) and its merged parameters, while `subject` stays
//! the caller's namespace. For a sequence it also carries the components, which the filter invokes
//! one after another through the ingress (each resolved on its own).
//!
//! Every call carries the shared token in `x-whisk-internal-token`; [`require_token`] refuses the
//! rest with 401 before any handler runs.

use axum::Json;
use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::http::StatusCode;
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::Value;
use whisk_contract::{ActionCode, ActivationRecord, ResolvedAction, headers};

use crate::actions::{ActionName, ActionRoute};
use crate::error::{ApiError, ApiJson, ApiPath, ApiQuery};
use crate::namespaces::authorize;
use crate::packages::locate_action;
use crate::state::{AppState, Subject};

/// Middleware: only callers holding the internal token get through.
pub async fn require_token(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let token = request.headers().get(headers::INTERNAL_TOKEN).map(|value| value.as_bytes());
    match token {
        Some(token) if state.is_internal_token(token) => next.run(request).await,
        _ => ApiError::Unauthenticated.into_response(),
    }
}

#[derive(Debug, Deserialize)]
pub struct ResolveQuery {
    namespace: Option<String>,
    action: Option<String>,
    /// Resolve for a web request (`/api/v1/web/...`): see [`resolve_web`].
    #[serde(default)]
    web: bool,
    /// Resolve as this namespace, without a key: a component of a web sequence runs as the
    /// sequence's owner, as in OpenWhisk (a web request has no key of its own). Only the data
    /// plane, holding the internal token, can ask this.
    subject: Option<String>,
}

/// `GET /internal/v1/resolve`: the hot path of every invoke. Authenticates the forwarded key
/// (cached), checks the namespace, and reads the action (through its package or binding) without its
/// code.
pub async fn resolve(
    State(state): State<AppState>,
    request_headers: HeaderMap,
    ApiQuery(query): ApiQuery<ResolveQuery>,
) -> Result<([(&'static str, String); 1], Json<ResolvedAction>), ApiError> {
    // Read before the lookup: a write racing this resolve makes the answer's generation stale, so
    // the filter's cache never keeps what the write changed.
    let generation = state.generation().current();
    let authorization = request_headers.get(AUTHORIZATION).and_then(|value| value.to_str().ok());
    let namespace = query.namespace.ok_or_else(|| missing("namespace"))?;
    let action = query.action.ok_or_else(|| missing("action"))?;
    if query.web {
        let resolved = resolve_web(&state, &request_headers, namespace, &action).await?;
        return Ok(([(whisk_contract::headers::GENERATION, generation)], Json(resolved)));
    }
    let subject = match query.subject {
        Some(owner) => Subject { namespace: owner },
        None => Subject { namespace: state.authenticate(authorization).await? },
    };
    let namespace = authorize(&subject, &namespace)?;
    let action = ActionName::parse(&action)?;
    let action = state.db(move |store| locate_action(store, &namespace, &action, false)).await?;
    Ok((
        [(whisk_contract::headers::GENERATION, generation)],
        Json(action.resolved(subject.namespace, state.namespace_limits())),
    ))
}

/// Resolves an action for a web request: anyone may run an action its owner exported
/// (`web-export`); anything else is 404, as if it did not exist. The activation belongs to the
/// action's namespace. `require-whisk-auth: true` wants a valid key (its namespace becomes
/// `__ow_user`); a string or number wants that secret in `x-require-whisk-auth`.
async fn resolve_web(
    state: &AppState,
    request_headers: &HeaderMap,
    namespace: String,
    action: &str,
) -> Result<ResolvedAction, ApiError> {
    let action = ActionName::parse(action)?;
    let located = {
        let namespace = namespace.clone();
        state.db(move |store| locate_action(store, &namespace, &action, false)).await?
    };
    let annotation = |key: &str| located.annotations.iter().find(|a| a.key == key).map(|a| a.value.clone());
    let exported = matches!(annotation("web-export"), Some(Value::Bool(true)))
        || matches!(annotation("web-export"), Some(Value::String(text)) if text == "true" || text == "yes");
    if !exported {
        return Err(ApiError::NotFound);
    }
    let web_user = match annotation("require-whisk-auth") {
        None | Some(Value::Bool(false) | Value::Null) => None,
        Some(Value::Bool(true)) => {
            let authorization = request_headers.get(AUTHORIZATION).and_then(|value| value.to_str().ok());
            Some(state.authenticate(authorization).await?)
        }
        Some(secret) => {
            let expected = match secret {
                Value::String(text) => text,
                other => other.to_string(),
            };
            let given = request_headers.get(headers::REQUIRE_WHISK_AUTH).map(|value| value.as_bytes());
            if given != Some(expected.as_bytes()) {
                return Err(ApiError::Unauthenticated);
            }
            None
        }
    };
    let mut resolved = located.resolved(namespace, state.namespace_limits());
    resolved.web_user = web_user;
    Ok(resolved)
}

fn missing(parameter: &str) -> ApiError {
    ApiError::BadRequest(format!("The query parameter '{parameter}' is required."))
}

/// What the control server hears if it asks for the code of a sequence (it never should).
pub const SEQUENCE_HAS_NO_CODE: &str = "A sequence has no code: the data plane runs its components.";

/// `GET /internal/v1/actions/{ns}/{name}`, `…/{ns}/{pkg}/{name}` (or `{pkg}%2F{name}`): the code of
/// the current revision, read where the action is stored (a binding holds no code); 400 for a
/// sequence.
pub async fn action_code(
    State(state): State<AppState>,
    ApiPath(route): ApiPath<ActionRoute>,
) -> Result<Json<ActionCode>, ApiError> {
    let ActionName { package, name } = route.action_name()?;
    let namespace = match package {
        Some(package) => format!("{}/{package}", route.namespace),
        None => route.namespace,
    };
    let action =
        state.db(move |store| store.get_action(&namespace, &name, true)).await?.ok_or(ApiError::NotFound)?;
    if action.exec.is_sequence() {
        // The filter runs a sequence's components itself; a container of it could run nothing.
        return Err(ApiError::BadRequest(SEQUENCE_HAS_NO_CODE.into()));
    }
    Ok(Json(action.code()))
}

/// `POST /internal/v1/activations`: stores a batch of records; a resent batch replaces, never
/// duplicates.
pub async fn store_activations(
    State(state): State<AppState>,
    ApiJson(records): ApiJson<Vec<ActivationRecord>>,
) -> Result<StatusCode, ApiError> {
    let stored = records.len();
    state.db(move |store| store.put_activations(&records)).await?;
    tracing::debug!(stored, "activation records stored");
    Ok(StatusCode::NO_CONTENT)
}
