//! Rules: a trigger ─► action link with a status, its JSON views, and the handlers of
//! `/api/v1/namespaces/{ns}/rules[/{name}]`.
//!
//! A rule, its trigger and its action all live in the key's namespace (the action possibly in a
//! package or a binding there): firing invokes the action with the firing key, which can reach
//! nothing else. Trigger and action must exist when the rule is written (400, OpenWhisk's
//! messages); either may go later, and the rule then simply fires nothing (a deleted trigger's rules
//! turn inactive).

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use whisk_contract::KeyValue;

use crate::actions::{ActionName, FIRST_VERSION, bump_patch};
use crate::error::{ApiError, ApiJson, ApiPath, ApiQuery};
use crate::names::validate_entity_name;
use crate::namespaces::{DEFAULT_NAMESPACE, authorize};
use crate::packages::locate_action;
use crate::paging::{ListQuery, parse_bool};
use crate::state::{AppState, Subject, epoch_millis};

/// OpenWhisk's message for a name with too few or too many parts.
pub const MALFORMED_NAME: &str =
    "The fully qualified name of the entity must contain at least the namespace and the name of the entity.";

/// Whether firing the trigger invokes the action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleStatus {
    Active,
    Inactive,
}

impl RuleStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Inactive => "inactive",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "active" => Some(Self::Active),
            "inactive" => Some(Self::Inactive),
            _ => None,
        }
    }
}

/// OpenWhisk's `{"name", "path"}`: `path` is the namespace, or `ns/pkg` for a packaged action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PathName {
    pub name: String,
    pub path: String,
}

impl PathName {
    /// `path/name`, OpenWhisk's fully qualified name without the leading slash.
    pub fn qualified(&self) -> String {
        format!("{}/{}", self.path, self.name)
    }

    /// The root namespace of `path`.
    pub fn root(&self) -> &str {
        self.path.split_once('/').map_or(self.path.as_str(), |(root, _)| root)
    }

    /// Parses what a `PUT` names: `/ns/name`, or, when `packaged`, `/ns/pkg/name` (`_` being the
    /// caller's namespace, as `wsk` and the npm client send them); without the leading slash, `name`
    /// and, when `packaged`, `pkg/name` are the caller's (as those clients read them), and `ns/name`
    /// otherwise (as OpenWhisk reads a trigger's).
    pub fn parse(text: &str, caller: &str, packaged: bool) -> Result<Self, ApiError> {
        let absolute = text.starts_with('/');
        let segments: Vec<&str> = text.strip_prefix('/').unwrap_or(text).split('/').collect();
        let (namespace, package, name) = match (absolute, segments.as_slice()) {
            (false, [name]) => (caller, None, *name),
            (false, [package, name]) if packaged => (caller, Some(*package), *name),
            (_, [namespace, name]) => (*namespace, None, *name),
            (_, [namespace, package, name]) if packaged => (*namespace, Some(*package), *name),
            _ => return Err(ApiError::BadRequest(MALFORMED_NAME.into())),
        };
        let namespace = if namespace == DEFAULT_NAMESPACE { caller } else { namespace };
        for part in [Some(namespace), package, Some(name)].into_iter().flatten() {
            validate_entity_name(part).map_err(|error| ApiError::BadRequest(error.to_string()))?;
        }
        let path = match package {
            Some(package) => format!("{namespace}/{package}"),
            None => namespace.to_owned(),
        };
        Ok(Self { name: name.to_owned(), path })
    }
}

/// A rule as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub namespace: String,
    pub name: String,
    pub version: String,
    pub publish: bool,
    pub annotations: Vec<KeyValue>,
    pub status: RuleStatus,
    pub trigger: PathName,
    pub action: PathName,
    /// Epoch milliseconds of the last create, update or status change.
    pub updated: u64,
}

impl Rule {
    /// `ns/rule`, the key of the rule in its trigger's `rules`.
    pub fn qualified_name(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The action's root namespace and package, as its invoke path names them.
    pub fn action_owner(&self) -> (&str, Option<&str>) {
        match self.action.path.split_once('/') {
            Some((root, package)) => (root, Some(package)),
            None => (&self.action.path, None),
        }
    }
}

/// The body of a `PUT`: `trigger` and `action` by name; `status` is accepted and ignored (a new rule
/// is active, an update keeps the status), as in OpenWhisk.
#[derive(Debug, Default, Deserialize)]
pub struct RulePut {
    pub trigger: Option<String>,
    pub action: Option<String>,
    pub annotations: Option<Vec<KeyValue>>,
    pub publish: Option<bool>,
}

/// Everything [`apply_put`] needs besides the body.
#[derive(Debug)]
pub struct PutContext<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub overwrite: bool,
    pub now: u64,
    /// The checked trigger and action: the body's, or the existing rule's.
    pub trigger: PathName,
    pub action: PathName,
}

/// The rule a `PUT` produces: conflict without `overwrite`; a new rule is active, an update keeps
/// the status and what the body omits, and bumps the version.
pub fn apply_put(existing: Option<Rule>, put: RulePut, context: PutContext<'_>) -> Result<Rule, ApiError> {
    if existing.is_some() && !context.overwrite {
        return Err(ApiError::Conflict);
    }
    let version =
        existing.as_ref().map_or_else(|| FIRST_VERSION.to_owned(), |rule| bump_patch(&rule.version));
    let (annotations, publish, status) = match existing {
        Some(rule) => (rule.annotations, rule.publish, rule.status),
        None => (Vec::new(), false, RuleStatus::Active),
    };
    Ok(Rule {
        namespace: context.namespace.to_owned(),
        name: context.name.to_owned(),
        version,
        publish: put.publish.unwrap_or(publish),
        annotations: put.annotations.unwrap_or(annotations),
        status,
        trigger: context.trigger,
        action: context.action,
        updated: context.now,
    })
}

/// A rule in OpenWhisk's JSON shape; lists show the same (status included, which saves `wsk rule
/// list` a read per rule).
#[derive(Debug, Serialize)]
pub struct RuleView<'a> {
    namespace: &'a str,
    name: &'a str,
    version: &'a str,
    publish: bool,
    annotations: &'a [KeyValue],
    status: RuleStatus,
    trigger: &'a PathName,
    action: &'a PathName,
    updated: u64,
}

impl Rule {
    pub fn view(&self) -> RuleView<'_> {
        RuleView {
            namespace: &self.namespace,
            name: &self.name,
            version: &self.version,
            publish: self.publish,
            annotations: &self.annotations,
            status: self.status,
            trigger: &self.trigger,
            action: &self.action,
            updated: self.updated,
        }
    }
}

fn check_name(name: &str) -> Result<(), ApiError> {
    validate_entity_name(name).map_err(|error| ApiError::BadRequest(error.to_string()))
}

/// A reference of the rule to another namespace: refused before anything about it is revealed.
fn check_own(reference: &PathName, namespace: &str) -> Result<(), ApiError> {
    if reference.root() == namespace { Ok(()) } else { Err(ApiError::Forbidden(reference.qualified())) }
}

/// `GET /api/v1/namespaces/{ns}/rules`
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
        "rules",
        crate::store::Store::count_rules,
        crate::store::Store::list_rules,
    )
    .await
}

impl crate::paging::Listed for Rule {
    fn listed(&self) -> impl serde::Serialize + '_ {
        self.view()
    }
}

/// `GET /api/v1/namespaces/{ns}/rules/{name}`
pub async fn get(
    State(state): State<AppState>,
    subject: Subject,
    ApiPath((namespace, name)): ApiPath<(String, String)>,
) -> Result<Response, ApiError> {
    let namespace = authorize(&subject, &namespace)?;
    check_name(&name)?;
    let rule = state.db(move |store| store.get_rule(&namespace, &name)).await?.ok_or(ApiError::NotFound)?;
    Ok(Json(rule.view()).into_response())
}

#[derive(Debug, Deserialize)]
pub struct PutQuery {
    overwrite: Option<String>,
}

/// `PUT /api/v1/namespaces/{ns}/rules/{name}?overwrite=`
pub async fn put(
    State(state): State<AppState>,
    subject: Subject,
    ApiPath((namespace, name)): ApiPath<(String, String)>,
    ApiQuery(query): ApiQuery<PutQuery>,
    ApiJson(body): ApiJson<RulePut>,
) -> Result<Response, ApiError> {
    let namespace = authorize(&subject, &namespace)?;
    check_name(&name)?;
    let overwrite = parse_bool("overwrite", query.overwrite.as_deref())?.unwrap_or(false);
    let trigger = body.trigger.as_deref().map(|text| PathName::parse(text, &namespace, false)).transpose()?;
    let action = body.action.as_deref().map(|text| PathName::parse(text, &namespace, true)).transpose()?;
    for reference in [&trigger, &action].into_iter().flatten() {
        check_own(reference, &namespace)?;
    }
    let rule = state
        .db(move |store| {
            let existing = store.get_rule(&namespace, &name)?;
            if existing.is_some() && !overwrite {
                return Err(ApiError::Conflict);
            }
            let (trigger, action) = match (trigger, action, existing) {
                (Some(trigger), Some(action), _) => (trigger, action),
                (trigger, action, Some(rule)) => {
                    (trigger.unwrap_or(rule.trigger), action.unwrap_or(rule.action))
                }
                _ => {
                    return Err(ApiError::BadRequest(
                        "rule requires a valid trigger and a valid action".into(),
                    ));
                }
            };
            if store.get_trigger(&trigger.path, &trigger.name)?.is_none() {
                return Err(ApiError::BadRequest(format!("trigger /{} does not exist", trigger.qualified())));
            }
            let (root, package) = match action.path.split_once('/') {
                Some((root, package)) => (root, Some(package)),
                None => (action.path.as_str(), None),
            };
            match locate_action(store, root, &ActionName::new(package, &action.name)?, false) {
                Err(ApiError::NotFound) => {
                    return Err(ApiError::BadRequest(format!(
                        "action /{} does not exist",
                        action.qualified()
                    )));
                }
                other => other?,
            };
            // The trigger or action deleted between these checks and the write leaves a rule that
            // fires nothing, which deleting them later leaves anyway.
            store.put_rule(&namespace, &name, |existing| {
                let context = PutContext {
                    namespace: &namespace,
                    name: &name,
                    overwrite,
                    now: epoch_millis(),
                    trigger,
                    action,
                };
                apply_put(existing, body, context)
            })
        })
        .await?;
    tracing::info!(namespace = %rule.namespace, name = %rule.name, version = %rule.version, "rule saved");
    Ok(Json(rule.view()).into_response())
}

/// `DELETE /api/v1/namespaces/{ns}/rules/{name}`: active or not, as newer OpenWhisk allows.
pub async fn delete(
    State(state): State<AppState>,
    subject: Subject,
    ApiPath((namespace, name)): ApiPath<(String, String)>,
) -> Result<Response, ApiError> {
    let namespace = authorize(&subject, &namespace)?;
    check_name(&name)?;
    let rule =
        state.db(move |store| store.delete_rule(&namespace, &name)).await?.ok_or(ApiError::NotFound)?;
    tracing::info!(namespace = %rule.namespace, name = %rule.name, "rule deleted");
    Ok(Json(rule.view()).into_response())
}

#[derive(Debug, Deserialize)]
pub struct StatusPut {
    status: String,
}

/// `POST /api/v1/namespaces/{ns}/rules/{name}` `{"status": "active" | "inactive"}`: 200 with the
/// rule; only a rule whose trigger exists can change (404 otherwise, as in OpenWhisk).
pub async fn set_status(
    State(state): State<AppState>,
    subject: Subject,
    ApiPath((namespace, name)): ApiPath<(String, String)>,
    ApiJson(body): ApiJson<StatusPut>,
) -> Result<Response, ApiError> {
    let namespace = authorize(&subject, &namespace)?;
    check_name(&name)?;
    let status = RuleStatus::parse(&body.status).ok_or_else(|| {
        ApiError::Malformed(format!("status must be 'active' or 'inactive', not '{}'", body.status))
    })?;
    let rule = state
        .db(move |store| {
            let rule = store.get_rule(&namespace, &name)?.ok_or(ApiError::NotFound)?;
            if store.get_trigger(&rule.trigger.path, &rule.trigger.name)?.is_none() {
                return Err(ApiError::NotFound);
            }
            store.set_rule_status(&namespace, &name, status, epoch_millis())?.ok_or(ApiError::NotFound)
        })
        .await?;
    tracing::info!(namespace = %rule.namespace, name = %rule.name, status = rule.status.as_str(), "rule status set");
    Ok(Json(rule.view()).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(path: &str, name: &str) -> PathName {
        PathName { name: name.into(), path: path.into() }
    }

    #[test]
    fn references_parse_like_openwhisk_names() {
        let parse = |text| PathName::parse(text, "guest", true);
        assert_eq!(parse("hello").unwrap(), path("guest", "hello"));
        assert_eq!(parse("/_/hello").unwrap(), path("guest", "hello"));
        assert_eq!(parse("/alice/hello").unwrap(), path("alice", "hello"));
        assert_eq!(parse("utils/echo").unwrap(), path("guest/utils", "echo"));
        assert_eq!(parse("/guest/utils/echo").unwrap(), path("guest/utils", "echo"));
        assert_eq!(parse("alice/utils/echo").unwrap(), path("alice/utils", "echo"));
        assert_eq!(PathName::parse("alice/t", "guest", false).unwrap(), path("alice", "t"));
        assert_eq!(parse("/guest/utils/echo").unwrap().root(), "guest");
        for bad in ["", "/hello", "/a/b/c/d", "a$b"] {
            assert!(matches!(parse(bad), Err(ApiError::BadRequest(_))), "{bad:?}");
        }
        assert!(PathName::parse("/guest/utils/t", "guest", false).is_err(), "triggers are not packaged");
    }

    #[test]
    fn a_new_rule_is_active_and_an_update_keeps_its_status() {
        let context = |overwrite| PutContext {
            namespace: "guest",
            name: "r",
            overwrite,
            now: 1,
            trigger: path("guest", "t"),
            action: path("guest", "a"),
        };
        let created = apply_put(None, RulePut::default(), context(false)).unwrap();
        assert_eq!((created.status, created.version.as_str()), (RuleStatus::Active, "0.0.1"));
        assert!(matches!(
            apply_put(Some(created.clone()), RulePut::default(), context(false)),
            Err(ApiError::Conflict)
        ));
        let inactive = Rule { status: RuleStatus::Inactive, ..created };
        let updated = apply_put(Some(inactive), RulePut::default(), context(true)).unwrap();
        assert_eq!((updated.status, updated.version.as_str()), (RuleStatus::Inactive, "0.0.2"));
        let view = serde_json::to_value(updated.view()).unwrap();
        assert_eq!(view["status"], "inactive");
        assert_eq!(view["action"], serde_json::json!({"name": "a", "path": "guest"}));
        assert_eq!(updated.qualified_name(), "guest/r");
    }
}
