//! Triggers: the stored entity, its JSON views, and the handlers of
//! `/api/v1/namespaces/{ns}/triggers[/{name}]`, firing included.
//!
//! ```text
//!  POST …/triggers/t {payload} ─► arguments = t.parameters < payload
//!     for each active rule r of t: POST {ingress}/…/actions/{r.action}?blocking=false (caller's key)
//!     store the trigger's activation (result = payload, one log line per rule) ─► 202 {activationId}
//!  no active rule ─► 204, nothing stored
//! ```
//!
//! The rule invokes run before the answer, concurrently: each is a non-blocking invoke that the data
//! plane acknowledges after resolving, and waiting for them means the activation id handed back can
//! be read at once, with every rule's outcome in its logs.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use whisk_contract::{
    ActivationRecord, ActivationResponse, ActivationStatus, ErrorBody, KeyValue, headers, messages,
};

use crate::actions::{FIRST_VERSION, bump_patch};
use crate::error::{ApiBytes, ApiError, ApiJson, ApiPath, ApiQuery};
use crate::ingress::InvokeReply;
use crate::names::validate_entity_name;
use crate::namespaces::authorize;
use crate::paging::{ListQuery, parse_bool};
use crate::rules::{PathName, Rule, RuleStatus};
use crate::state::{AppState, Subject, epoch_millis};

/// A trigger as stored; its rules are the rules that name it (see [`crate::rules`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Trigger {
    pub namespace: String,
    pub name: String,
    pub version: String,
    pub publish: bool,
    pub parameters: Vec<KeyValue>,
    pub annotations: Vec<KeyValue>,
    /// Epoch milliseconds of the last create or update.
    pub updated: u64,
}

/// The body of a `PUT`; `limits` is accepted and ignored (OpenWhisk defines none for triggers).
#[derive(Debug, Default, Deserialize)]
pub struct TriggerPut {
    pub parameters: Option<Vec<KeyValue>>,
    pub annotations: Option<Vec<KeyValue>>,
    pub publish: Option<bool>,
    pub limits: Option<Value>,
}

/// Everything [`apply_put`] needs besides the body.
#[derive(Debug)]
pub struct PutContext<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub overwrite: bool,
    pub now: u64,
}

/// The trigger a `PUT` produces: conflict without `overwrite`; an update keeps what the body omits
/// and bumps the version.
pub fn apply_put(
    existing: Option<Trigger>,
    put: TriggerPut,
    context: PutContext<'_>,
) -> Result<Trigger, ApiError> {
    if existing.is_some() && !context.overwrite {
        return Err(ApiError::Conflict);
    }
    let version =
        existing.as_ref().map_or_else(|| FIRST_VERSION.to_owned(), |trigger| bump_patch(&trigger.version));
    let (parameters, annotations, publish) = match existing {
        Some(trigger) => (trigger.parameters, trigger.annotations, trigger.publish),
        None => (Vec::new(), Vec::new(), false),
    };
    Ok(Trigger {
        namespace: context.namespace.to_owned(),
        name: context.name.to_owned(),
        version,
        publish: put.publish.unwrap_or(publish),
        parameters: put.parameters.unwrap_or(parameters),
        annotations: put.annotations.unwrap_or(annotations),
        updated: context.now,
    })
}

/// What a rule's action gets: the trigger's parameters, each overridden by the payload's.
pub fn arguments(parameters: &[KeyValue], payload: &Map<String, Value>) -> Map<String, Value> {
    let mut arguments: Map<String, Value> =
        parameters.iter().map(|parameter| (parameter.key.clone(), parameter.value.clone())).collect();
    arguments.extend(payload.iter().map(|(key, value)| (key.clone(), value.clone())));
    arguments
}

/// A fire's payload: absent or empty is `{}`; anything but a JSON object is malformed.
pub fn parse_payload(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice(body) {
        Ok(Value::Object(payload)) => Ok(payload),
        Ok(_) => Err(ApiError::Malformed("the payload must be a JSON object".into())),
        Err(error) => Err(ApiError::Malformed(error.to_string())),
    }
}

/// How one rule fared when its trigger fired.
#[derive(Debug, Clone, PartialEq)]
pub enum RuleOutcome {
    Invoked {
        activation_id: String,
    },
    Failed {
        status: ActivationStatus,
        error: String,
    },
    /// Not invoked: OpenWhisk still logs inactive rules when another rule fired.
    Inactive,
}

/// OpenWhisk's reading of the ingress's answer to a rule's invoke: 200/202 with an id is a success,
/// a 5xx a whisk error, any other status an application error carrying the error body's message.
pub fn outcome(reply: InvokeReply) -> RuleOutcome {
    let (status, body) = match reply {
        Ok(reply) => reply,
        Err(error) => {
            tracing::warn!(%error, "rule invoke did not reach the ingress");
            return RuleOutcome::Failed {
                status: ActivationStatus::WhiskError,
                error: messages::INTERNAL_ERROR.into(),
            };
        }
    };
    if matches!(status, 200 | 202) {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Accepted {
            activation_id: String,
        }
        if let Ok(Accepted { activation_id }) = serde_json::from_slice(&body) {
            return RuleOutcome::Invoked { activation_id };
        }
        return RuleOutcome::Failed {
            status: ActivationStatus::WhiskError,
            error: messages::INTERNAL_ERROR.into(),
        };
    }
    let error = serde_json::from_slice::<ErrorBody>(&body)
        .map_or_else(|_| messages::INTERNAL_ERROR.to_owned(), |body| body.error);
    let status =
        if status >= 500 { ActivationStatus::WhiskError } else { ActivationStatus::ApplicationError };
    RuleOutcome::Failed { status, error }
}

/// One line of the trigger activation's logs, in OpenWhisk's field names.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct RuleLog<'a> {
    status_code: u8,
    success: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    activation_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    rule: String,
    action: String,
}

/// The log line of `rule`'s outcome: `{"statusCode","success","activationId"|"error","rule","action"}`.
pub fn rule_log(rule: &Rule, outcome: &RuleOutcome) -> String {
    let (status, activation_id, error) = match outcome {
        RuleOutcome::Invoked { activation_id } => {
            (ActivationStatus::Success, Some(activation_id.as_str()), None)
        }
        RuleOutcome::Failed { status, error } => (*status, None, Some(error.clone())),
        RuleOutcome::Inactive => (
            ActivationStatus::ApplicationError,
            None,
            Some(format!(
                "Rule '{}' is inactive, action '{}' was not activated.",
                rule.qualified_name(),
                rule.action.qualified()
            )),
        ),
    };
    let line = RuleLog {
        status_code: status.code(),
        success: status == ActivationStatus::Success,
        activation_id,
        error,
        rule: rule.qualified_name(),
        action: rule.action.qualified(),
    };
    serde_json::to_string(&line).unwrap_or_default()
}

/// The trigger's own activation record: OpenWhisk's, whose result is the payload as posted.
pub fn activation(
    trigger: &Trigger,
    subject: &str,
    activation_id: String,
    payload: Map<String, Value>,
    logs: Vec<String>,
    now: u64,
) -> ActivationRecord {
    ActivationRecord {
        activation_id,
        namespace: subject.to_owned(),
        name: trigger.name.clone(),
        version: trigger.version.clone(),
        subject: subject.to_owned(),
        publish: false,
        start: now,
        end: now,
        duration: 0,
        response: ActivationResponse::new(ActivationStatus::Success, Value::Object(payload)),
        logs,
        annotations: Vec::new(),
        cause: None,
    }
}

/// A rule as its trigger lists it.
#[derive(Debug, Serialize)]
struct RuleLink<'a> {
    action: &'a PathName,
    status: RuleStatus,
}

/// A trigger in OpenWhisk's JSON shape (`GET`, `PUT`, `DELETE`): `rules` maps `ns/rule` to the rule's
/// action and status.
#[derive(Debug, Serialize)]
pub struct TriggerView<'a> {
    namespace: &'a str,
    name: &'a str,
    version: &'a str,
    publish: bool,
    parameters: &'a [KeyValue],
    annotations: &'a [KeyValue],
    limits: Map<String, Value>,
    rules: BTreeMap<String, RuleLink<'a>>,
    updated: u64,
}

/// A list entry: OpenWhisk's trigger summary.
#[derive(Debug, Serialize)]
pub struct TriggerSummary<'a> {
    namespace: &'a str,
    name: &'a str,
    version: &'a str,
    publish: bool,
    annotations: &'a [KeyValue],
    updated: u64,
}

impl Trigger {
    pub fn view<'a>(&'a self, rules: &'a [Rule]) -> TriggerView<'a> {
        TriggerView {
            namespace: &self.namespace,
            name: &self.name,
            version: &self.version,
            publish: self.publish,
            parameters: &self.parameters,
            annotations: &self.annotations,
            limits: Map::new(),
            rules: rules
                .iter()
                .map(|rule| (rule.qualified_name(), RuleLink { action: &rule.action, status: rule.status }))
                .collect(),
            updated: self.updated,
        }
    }

    pub fn summary(&self) -> TriggerSummary<'_> {
        TriggerSummary {
            namespace: &self.namespace,
            name: &self.name,
            version: &self.version,
            publish: self.publish,
            annotations: &self.annotations,
            updated: self.updated,
        }
    }
}

fn check_name(name: &str) -> Result<(), ApiError> {
    validate_entity_name(name).map_err(|error| ApiError::BadRequest(error.to_string()))
}

/// `GET /api/v1/namespaces/{ns}/triggers`
pub async fn list(
    State(state): State<AppState>,
    subject: Subject,
    ApiPath(namespace): ApiPath<String>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Response, ApiError> {
    let namespace = authorize(&subject, &namespace)?;
    crate::paging::respond(
        &state,
        namespace,
        query.page()?,
        "triggers",
        crate::store::Store::count_triggers,
        crate::store::Store::list_triggers,
    )
    .await
}

impl crate::paging::Listed for Trigger {
    fn listed(&self) -> impl serde::Serialize + '_ {
        self.summary()
    }
}

/// `GET /api/v1/namespaces/{ns}/triggers/{name}`
pub async fn get(
    State(state): State<AppState>,
    subject: Subject,
    ApiPath((namespace, name)): ApiPath<(String, String)>,
) -> Result<Response, ApiError> {
    let namespace = authorize(&subject, &namespace)?;
    check_name(&name)?;
    let (trigger, rules) = state
        .db(move |store| store.get_trigger_with_rules(&namespace, &name))
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(Json(trigger.view(&rules)).into_response())
}

#[derive(Debug, Deserialize)]
pub struct PutQuery {
    overwrite: Option<String>,
}

/// `PUT /api/v1/namespaces/{ns}/triggers/{name}?overwrite=`
pub async fn put(
    State(state): State<AppState>,
    subject: Subject,
    ApiPath((namespace, name)): ApiPath<(String, String)>,
    ApiQuery(query): ApiQuery<PutQuery>,
    ApiJson(body): ApiJson<TriggerPut>,
) -> Result<Response, ApiError> {
    let namespace = authorize(&subject, &namespace)?;
    check_name(&name)?;
    let overwrite = parse_bool("overwrite", query.overwrite.as_deref())?.unwrap_or(false);
    let (trigger, rules) = state
        .db(move |store| {
            let trigger = store.put_trigger(&namespace, &name, |existing| {
                let context =
                    PutContext { namespace: &namespace, name: &name, overwrite, now: epoch_millis() };
                apply_put(existing, body, context)
            })?;
            let rules = store.trigger_rules(&namespace, &name)?;
            Ok::<_, ApiError>((trigger, rules))
        })
        .await?;
    tracing::info!(namespace = %trigger.namespace, name = %trigger.name, version = %trigger.version, "trigger saved");
    Ok(Json(trigger.view(&rules)).into_response())
}

/// `DELETE /api/v1/namespaces/{ns}/triggers/{name}`: its rules stay, inactive.
pub async fn delete(
    State(state): State<AppState>,
    subject: Subject,
    ApiPath((namespace, name)): ApiPath<(String, String)>,
) -> Result<Response, ApiError> {
    let namespace = authorize(&subject, &namespace)?;
    check_name(&name)?;
    let (trigger, rules) =
        state.db(move |store| store.delete_trigger(&namespace, &name)).await?.ok_or(ApiError::NotFound)?;
    tracing::info!(namespace = %trigger.namespace, name = %trigger.name, "trigger deleted");
    Ok(Json(trigger.view(&rules)).into_response())
}

/// `POST /api/v1/namespaces/{ns}/triggers/{name}`: fires the trigger (see the module documentation).
pub async fn fire(
    State(state): State<AppState>,
    subject: Subject,
    request_headers: HeaderMap,
    ApiPath((namespace, name)): ApiPath<(String, String)>,
    ApiBytes(body): ApiBytes,
) -> Result<Response, ApiError> {
    let namespace = authorize(&subject, &namespace)?;
    check_name(&name)?;
    let payload = parse_payload(&body)?;
    let (trigger, rules) = state
        .db(move |store| store.get_trigger_with_rules(&namespace, &name))
        .await?
        .ok_or(ApiError::NotFound)?;
    if !rules.iter().any(|rule| rule.status == RuleStatus::Active) {
        tracing::debug!(namespace = %trigger.namespace, name = %trigger.name, "trigger fired without an active rule");
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    // `Subject` authenticated this very header, so it is there.
    let authorization =
        request_headers.get(AUTHORIZATION).and_then(|value| value.to_str().ok()).unwrap_or_default();
    let arguments = Value::Object(arguments(&trigger.parameters, &payload));
    let ingress = state.ingress();
    let outcomes = futures::future::join_all(rules.iter().map(|rule| {
        let arguments = &arguments;
        async move {
            if rule.status != RuleStatus::Active {
                return RuleOutcome::Inactive;
            }
            let (root, package) = rule.action_owner();
            let path: Vec<&str> = package.into_iter().chain([rule.action.name.as_str()]).collect();
            outcome(ingress.invoke(root, &path, authorization, arguments).await)
        }
    }))
    .await;
    let logs = rules.iter().zip(&outcomes).map(|(rule, outcome)| rule_log(rule, outcome)).collect();
    let activation_id = crate::error::transaction_id();
    let record =
        activation(&trigger, &subject.namespace, activation_id.clone(), payload, logs, epoch_millis());
    state.db(move |store| store.put_activations(&[record])).await?;
    tracing::info!(namespace = %trigger.namespace, name = %trigger.name, %activation_id, "trigger fired");
    Ok((
        StatusCode::ACCEPTED,
        [(headers::ACTIVATION_ID, activation_id.clone())],
        Json(serde_json::json!({ "activationId": activation_id })),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, value: Value) -> KeyValue {
        KeyValue { key: key.into(), value }
    }

    fn trigger() -> Trigger {
        let put: TriggerPut = serde_json::from_value(
            serde_json::json!({"parameters": [{"key": "a", "value": 1}], "limits": {}}),
        )
        .unwrap();
        apply_put(None, put, PutContext { namespace: "guest", name: "t", overwrite: false, now: 1 }).unwrap()
    }

    fn rule(status: RuleStatus) -> Rule {
        Rule {
            namespace: "guest".into(),
            name: "r".into(),
            version: "0.0.1".into(),
            publish: false,
            annotations: vec![],
            status,
            trigger: PathName { path: "guest".into(), name: "t".into() },
            action: PathName { path: "guest/utils".into(), name: "echo".into() },
            updated: 1,
        }
    }

    #[test]
    fn put_follows_openwhisk() {
        let created = trigger();
        assert_eq!(created.version, "0.0.1");
        let context = |overwrite| PutContext { namespace: "guest", name: "t", overwrite, now: 2 };
        assert!(matches!(
            apply_put(Some(created.clone()), TriggerPut::default(), context(false)),
            Err(ApiError::Conflict)
        ));
        let updated = apply_put(Some(created.clone()), TriggerPut::default(), context(true)).unwrap();
        assert_eq!((updated.version.as_str(), updated.parameters.clone()), ("0.0.2", created.parameters));
    }

    #[test]
    fn the_payload_overrides_the_trigger_parameters() {
        let payload = parse_payload(br#"{"b": 2, "a": "x"}"#).unwrap();
        let merged = arguments(&[kv("a", 1.into()), kv("c", 3.into())], &payload);
        assert_eq!(Value::Object(merged), serde_json::json!({"a": "x", "b": 2, "c": 3}));
        assert_eq!(parse_payload(b"").unwrap(), Map::new());
        assert_eq!(parse_payload(b" \n").unwrap(), Map::new());
        assert!(matches!(parse_payload(b"[1]"), Err(ApiError::Malformed(_))));
        assert!(matches!(parse_payload(b"{"), Err(ApiError::Malformed(_))));
    }

    #[test]
    fn ingress_answers_become_rule_outcomes() {
        assert_eq!(
            outcome(Ok((202, br#"{"activationId": "abc"}"#.to_vec()))),
            RuleOutcome::Invoked { activation_id: "abc".into() }
        );
        assert_eq!(
            outcome(Ok((
                404,
                br#"{"error": "The requested resource does not exist.", "code": "x"}"#.to_vec()
            ))),
            RuleOutcome::Failed {
                status: ActivationStatus::ApplicationError,
                error: "The requested resource does not exist.".into()
            }
        );
        assert!(matches!(
            outcome(Ok((503, b"no".to_vec()))),
            RuleOutcome::Failed { status: ActivationStatus::WhiskError, .. }
        ));
        assert!(matches!(
            outcome(Err("connection refused".into())),
            RuleOutcome::Failed { status: ActivationStatus::WhiskError, .. }
        ));
        assert!(matches!(outcome(Ok((202, b"{}".to_vec()))), RuleOutcome::Failed { .. }));
    }

    #[test]
    fn rule_logs_are_openwhisks_lines() {
        let invoked =
            rule_log(&rule(RuleStatus::Active), &RuleOutcome::Invoked { activation_id: "abc".into() });
        assert_eq!(
            invoked,
            r#"{"statusCode":0,"success":true,"activationId":"abc","rule":"guest/r","action":"guest/utils/echo"}"#
        );
        let inactive: Value =
            serde_json::from_str(&rule_log(&rule(RuleStatus::Inactive), &RuleOutcome::Inactive)).unwrap();
        assert_eq!(inactive["statusCode"], 1);
        assert_eq!(
            inactive["error"],
            "Rule 'guest/r' is inactive, action 'guest/utils/echo' was not activated."
        );
        let failed: Value = serde_json::from_str(&rule_log(
            &rule(RuleStatus::Active),
            &RuleOutcome::Failed { status: ActivationStatus::WhiskError, error: "down".into() },
        ))
        .unwrap();
        assert_eq!((failed["statusCode"].as_u64(), failed["success"].as_bool()), (Some(3), Some(false)));
        assert!(failed.get("activationId").is_none());
    }

    #[test]
    fn views_follow_openwhisks_shapes() {
        let trigger = trigger();
        let rules = [rule(RuleStatus::Active)];
        let view = serde_json::to_value(trigger.view(&rules)).unwrap();
        assert_eq!(view["limits"], serde_json::json!({}));
        assert_eq!(
            view["rules"],
            serde_json::json!({"guest/r": {"action": {"name": "echo", "path": "guest/utils"}, "status": "active"}})
        );
        let summary = serde_json::to_value(trigger.summary()).unwrap();
        assert!(summary.get("parameters").is_none() && summary.get("rules").is_none());
        let record = activation(&trigger, "guest", "id".into(), Map::new(), vec!["l".into()], 5);
        assert_eq!((record.name.as_str(), record.response.result.clone()), ("t", serde_json::json!({})));
    }
}
