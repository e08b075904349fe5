//! Activation records as users read them: `/api/v1/namespaces/{ns}/activations[/{id}[/logs|/result]]`.
//!
//! Records are written by the data plane through the internal endpoint ([`crate::internal`]); here
//! they are only listed and read, scoped to the key's namespace.

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use whisk_contract::{ActivationRecord, KeyValue};

use crate::error::{ApiError, ApiPath, ApiQuery};
use crate::namespaces::authorize;
use crate::paging::{ListQuery, parse_bool, parse_millis};
use crate::state::{AppState, Subject};
use crate::store::ActivationFilter;

/// A list entry without `docs=true`: OpenWhisk's activation summary (no response, logs or subject;
/// the status code instead of the response).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ActivationSummary<'a> {
    namespace: &'a str,
    name: &'a str,
    version: &'a str,
    publish: bool,
    annotations: &'a [KeyValue],
    activation_id: &'a str,
    start: u64,
    end: u64,
    duration: u64,
    status_code: u8,
}

impl<'a> From<&'a ActivationRecord> for ActivationSummary<'a> {
    fn from(record: &'a ActivationRecord) -> Self {
        Self {
            namespace: &record.namespace,
            name: &record.name,
            version: &record.version,
            publish: record.publish,
            annotations: &record.annotations,
            activation_id: &record.activation_id,
            start: record.start,
            end: record.end,
            duration: record.duration,
            status_code: record.response.status_code,
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct ActivationsQuery {
    #[serde(flatten)]
    page: ListQuery,
    name: Option<String>,
    since: Option<String>,
    upto: Option<String>,
    docs: Option<String>,
}

/// `GET /api/v1/namespaces/{ns}/activations`: newest first.
pub async fn list(
    State(state): State<AppState>,
    subject: Subject,
    ApiPath(namespace): ApiPath<String>,
    ApiQuery(query): ApiQuery<ActivationsQuery>,
) -> Result<Response, ApiError> {
    let namespace = authorize(&subject, &namespace)?;
    let page = query.page.page()?;
    let filter = ActivationFilter {
        name: query.name.filter(|name| !name.is_empty()),
        since: parse_millis("since", query.since.as_deref())?,
        upto: parse_millis("upto", query.upto.as_deref())?,
    };
    let docs = parse_bool("docs", query.docs.as_deref())?.unwrap_or(false);
    if page.count {
        let count = state.db(move |store| store.count_activations(&namespace, &filter)).await?;
        return Ok(Json(serde_json::json!({ "activations": count })).into_response());
    }
    let records =
        state.db(move |store| store.list_activations(&namespace, &filter, page.skip, page.limit)).await?;
    if docs {
        Ok(Json(records).into_response())
    } else {
        Ok(Json(records.iter().map(ActivationSummary::from).collect::<Vec<_>>()).into_response())
    }
}

async fn find(
    state: &AppState,
    subject: &Subject,
    namespace: &str,
    id: String,
) -> Result<ActivationRecord, ApiError> {
    let namespace = authorize(subject, namespace)?;
    state.db(move |store| store.get_activation(&namespace, &id)).await?.ok_or(ApiError::NotFound)
}

/// `GET /api/v1/namespaces/{ns}/activations/{id}`
pub async fn get(
    State(state): State<AppState>,
    subject: Subject,
    ApiPath((namespace, id)): ApiPath<(String, String)>,
) -> Result<Json<ActivationRecord>, ApiError> {
    Ok(Json(find(&state, &subject, &namespace, id).await?))
}

/// `GET /api/v1/namespaces/{ns}/activations/{id}/logs`
pub async fn logs(
    State(state): State<AppState>,
    subject: Subject,
    ApiPath((namespace, id)): ApiPath<(String, String)>,
) -> Result<Response, ApiError> {
    let record = find(&state, &subject, &namespace, id).await?;
    Ok(Json(serde_json::json!({ "logs": record.logs })).into_response())
}

/// `GET /api/v1/namespaces/{ns}/activations/{id}/result`: the record's `response`.
pub async fn result(
    State(state): State<AppState>,
    subject: Subject,
    ApiPath((namespace, id)): ApiPath<(String, String)>,
) -> Result<Response, ApiError> {
    let record = find(&state, &subject, &namespace, id).await?;
    Ok(Json(record.response).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use whisk_contract::{ActivationResponse, ActivationStatus};

    #[test]
    fn summaries_leave_out_response_logs_and_subject() {
        let record = ActivationRecord {
            activation_id: "a1".into(),
            namespace: "guest".into(),
            name: "hello".into(),
            version: "0.0.1".into(),
            subject: "guest".into(),
            publish: false,
            start: 10,
            end: 15,
            duration: 5,
            response: ActivationResponse::new(
                ActivationStatus::ApplicationError,
                serde_json::json!({"error": "x"}),
            ),
            logs: vec!["line".into()],
            annotations: vec![KeyValue { key: "kind".into(), value: "nodejs:20".into() }],
            cause: None,
        };
        let summary = serde_json::to_value(ActivationSummary::from(&record)).unwrap();
        assert_eq!(summary["activationId"], "a1");
        assert_eq!(summary["statusCode"], 1);
        assert_eq!(summary["annotations"][0]["key"], "kind");
        for absent in ["response", "logs", "subject"] {
            assert!(summary.get(absent).is_none(), "{absent}");
        }
    }
}
