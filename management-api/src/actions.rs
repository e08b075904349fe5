//! Actions: the stored entity, OpenWhisk's create/update rules, its JSON views, and the handlers of
//! `/api/v1/namespaces/{ns}/actions[/{name} | /{pkg}/{name} | /{pkg}%2F{name}]`.
//!
//! [`apply_put`] holds every rule of a `PUT` (conflict, validation, what an update keeps, version and
//! revision) as a pure function; the handler only authorizes, calls the store and answers.
//!
//! A packaged action is stored as OpenWhisk stores it, in namespace `ns/pkg`, so its views show that
//! namespace; reads and resolves through a package merge the package's parameters under the action's
//! (see [`crate::packages::locate_action`]).
//!
//! A sequence (`exec.kind: "sequence"`) has components instead of code; what only a sequence needs
//! (its components' names, the checks against the store) is in [`crate::sequences`].

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use whisk_contract::{ActionCode, ActionLimits, KeyValue, NamespaceLimits, ResolvedAction, SEQUENCE_KIND};

use crate::error::{ApiError, ApiJson, ApiPath, ApiQuery};
use crate::names::{self, validate_entity_name, validate_kind};
use crate::namespaces::authorize;
use crate::packages::locate_action;
use crate::paging::{ListQuery, parse_bool};
use crate::sequences;
use crate::state::{AppState, Subject, epoch_millis};

/// OpenWhisk's cap on an action's code.
pub const MAX_CODE_BYTES: usize = 48 * 1024 * 1024;
/// The version of a new action; every update bumps the patch number.
pub const FIRST_VERSION: &str = "0.0.1";
/// The annotation OpenWhisk adds to name the action's kind.
pub const EXEC_ANNOTATION: &str = "exec";

/// An action as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Action {
    pub namespace: String,
    pub name: String,
    pub version: String,
    /// Opaque, fresh on every create and update.
    pub revision: String,
    pub exec: Exec,
    pub parameters: Vec<KeyValue>,
    pub annotations: Vec<KeyValue>,
    pub limits: ActionLimits,
    pub publish: bool,
    /// Epoch milliseconds of the last create or update.
    pub updated: u64,
}

/// What runs: the kind and its code (or, for `blackbox`, the image; for a sequence, its components).
#[derive(Debug, Clone, PartialEq)]
pub struct Exec {
    pub kind: String,
    /// Source text, or base64 when `binary`; empty when not loaded, for an image-only blackbox and
    /// for a sequence.
    pub code: String,
    pub binary: bool,
    pub main: Option<String>,
    pub image: Option<String>,
    /// A sequence's components, fully qualified (`/ns/name`, `/ns/pkg/name`); `Some` exactly when
    /// the kind is [`SEQUENCE_KIND`].
    pub components: Option<Vec<String>>,
}

impl Exec {
    pub fn is_sequence(&self) -> bool {
        self.components.is_some()
    }
}

/// The body of a `PUT`; every field is optional because an update keeps what it does not name.
#[derive(Debug, Default, Deserialize)]
pub struct ActionPut {
    pub exec: Option<ExecPut>,
    pub parameters: Option<Vec<KeyValue>>,
    pub annotations: Option<Vec<KeyValue>>,
    pub limits: Option<LimitsPut>,
    pub publish: Option<bool>,
    /// Annotation keys to remove on update.
    #[serde(rename = "delAnnotations")]
    pub del_annotations: Option<Vec<String>>,
}

/// `exec` of a `PUT`. `binary` is accepted but ignored: OpenWhisk decides it from the code.
#[derive(Debug, Deserialize)]
pub struct ExecPut {
    pub kind: String,
    pub code: Option<String>,
    pub main: Option<String>,
    pub image: Option<String>,
    /// A sequence's components as the client names them (`/_/a`, `/guest/pkg/b`).
    pub components: Option<Vec<String>>,
}

impl ExecPut {
    /// The components of a sequence body, each with `_` resolved to `caller`; `None` for any other
    /// kind. The checks that need no store: defined, not empty, no more than OpenWhisk's limit.
    pub fn sequence_components(&self, caller: &str) -> Result<Option<Vec<sequences::Component>>, ApiError> {
        if self.kind != SEQUENCE_KIND {
            return Ok(None);
        }
        let components = self
            .components
            .as_deref()
            .ok_or_else(|| ApiError::Malformed("'components' must be defined for sequence kind".into()))?;
        sequences::parse_components(components, caller).map(Some)
    }
}

/// `limits` of a `PUT`; a missing field keeps the current (or default) value.
#[derive(Debug, Default, Deserialize)]
pub struct LimitsPut {
    pub timeout: Option<u64>,
    pub memory: Option<u64>,
    pub logs: Option<u64>,
    pub concurrency: Option<u64>,
}

/// Everything [`apply_put`] needs besides the body.
#[derive(Debug)]
pub struct PutContext<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub overwrite: bool,
    pub now: u64,
    pub revision: String,
}

/// The action a `PUT` produces from the current one, following OpenWhisk: without `overwrite` an
/// existing action is a conflict; an update replaces what the body names and keeps the rest; the
/// version's patch number goes up; the `exec` annotation always names the kind.
pub fn apply_put(
    existing: Option<Action>,
    put: ActionPut,
    context: PutContext<'_>,
) -> Result<Action, ApiError> {
    if existing.is_some() && !context.overwrite {
        return Err(ApiError::Conflict);
    }
    // A packaged action's namespace is `ns/pkg`; `_` in a component means `ns`.
    let caller = context.namespace.split_once('/').map_or(context.namespace, |(root, _)| root);
    let exec = match (put.exec, &existing) {
        (Some(exec), _) => validate_exec(exec, caller)?,
        (None, Some(existing)) => existing.exec.clone(),
        (None, None) => return Err(ApiError::Malformed("exec undefined".into())),
    };
    let base_limits = existing.as_ref().map_or_else(ActionLimits::default, |action| action.limits);
    let limits = merge_limits(base_limits, put.limits.unwrap_or_default())?;
    let version =
        existing.as_ref().map_or_else(|| FIRST_VERSION.to_owned(), |action| bump_patch(&action.version));
    let (old_parameters, old_annotations, old_publish) = match existing {
        Some(action) => (action.parameters, action.annotations, action.publish),
        None => (Vec::new(), Vec::new(), false),
    };
    let mut annotations = put.annotations.unwrap_or(old_annotations);
    if let Some(deleted) = put.del_annotations {
        annotations.retain(|annotation| !deleted.contains(&annotation.key));
    }
    annotations.retain(|annotation| annotation.key != EXEC_ANNOTATION);
    annotations.push(KeyValue { key: EXEC_ANNOTATION.into(), value: exec.kind.clone().into() });
    Ok(Action {
        namespace: context.namespace.to_owned(),
        name: context.name.to_owned(),
        version,
        revision: context.revision,
        exec,
        parameters: put.parameters.unwrap_or(old_parameters),
        annotations,
        limits,
        publish: put.publish.unwrap_or(old_publish),
        updated: context.now,
    })
}

fn validate_exec(exec: ExecPut, caller: &str) -> Result<Exec, ApiError> {
    if let Some(components) = exec.sequence_components(caller)? {
        // A sequence runs nothing itself: code, image and entry point mean nothing for it.
        let components = components.iter().map(sequences::Component::fully_qualified).collect();
        return Ok(Exec {
            kind: exec.kind,
            code: String::new(),
            binary: false,
            main: None,
            image: None,
            components: Some(components),
        });
    }
    validate_kind(&exec.kind).map_err(|error| ApiError::Malformed(error.to_string()))?;
    let code = exec.code.unwrap_or_default();
    if code.len() > MAX_CODE_BYTES {
        return Err(ApiError::TooLarge);
    }
    let image = exec.image.filter(|image| !image.is_empty());
    if exec.kind == "blackbox" {
        if image.is_none() {
            return Err(ApiError::Malformed("exec malformed: a blackbox action needs an image".into()));
        }
    } else if code.trim().is_empty() {
        return Err(ApiError::Malformed("exec malformed: code is empty".into()));
    }
    let binary = is_binary_code(&code);
    Ok(Exec {
        kind: exec.kind,
        code,
        binary,
        main: exec.main.filter(|main| !main.is_empty()),
        image,
        components: None,
    })
}

/// OpenWhisk's test: code that is entirely valid, padded base64 is an attachment (a zip or an
/// executable), anything else is source text.
pub fn is_binary_code(code: &str) -> bool {
    let code = code.trim();
    !code.is_empty()
        && code.len().is_multiple_of(4)
        && base64::engine::general_purpose::STANDARD.decode(code).is_ok()
}

/// Applies the given limits over `base` and checks OpenWhisk's ranges, with its messages.
pub fn merge_limits(base: ActionLimits, put: LimitsPut) -> Result<ActionLimits, ApiError> {
    let limits = ActionLimits {
        timeout: put.timeout.unwrap_or(base.timeout),
        memory: put.memory.unwrap_or(base.memory),
        logs: put.logs.unwrap_or(base.logs),
        concurrency: put.concurrency.unwrap_or(base.concurrency),
    };
    let check = |value: u64, (min, max): (u64, u64), describe: &dyn Fn(u64) -> String, unit: &str| {
        let bound = if value < min {
            Some(("below", min))
        } else if value > max {
            Some(("exceeds", max))
        } else {
            None
        };
        match bound {
            Some((relation, limit)) => Err(ApiError::Malformed(format!(
                "{} {relation} allowed threshold of {limit}{unit}",
                describe(value)
            ))),
            None => Ok(()),
        }
    };
    check(limits.timeout, TIMEOUT_RANGE, &|v| format!("duration {v} milliseconds"), " milliseconds")?;
    check(limits.memory, MEMORY_RANGE, &|v| format!("memory {v} MB"), " MB")?;
    check(limits.logs, LOGS_RANGE, &|v| format!("log size {v} MB"), " MB")?;
    check(limits.concurrency, CONCURRENCY_RANGE, &|v| format!("concurrency {v}"), "")?;
    Ok(limits)
}

/// OpenWhisk's ranges: milliseconds, megabytes, megabytes, activations per container.
pub const TIMEOUT_RANGE: (u64, u64) = (100, 300_000);
pub const MEMORY_RANGE: (u64, u64) = (128, 2048);
pub const LOGS_RANGE: (u64, u64) = (0, 10);
/// One activation at a time per container: the data plane's core invariant.
pub const CONCURRENCY_RANGE: (u64, u64) = (1, 1);

/// `a.b.c` → `a.b.(c+1)`; a version that does not parse (never written by us) restarts the count.
pub fn bump_patch(version: &str) -> String {
    let parts: Option<Vec<u64>> = version.split('.').map(|part| part.parse().ok()).collect();
    match parts.as_deref() {
        Some([major, minor, patch]) => format!("{major}.{minor}.{}", patch.saturating_add(1)),
        _ => FIRST_VERSION.to_owned(),
    }
}

/// A fresh opaque revision: 128 random bits in hex.
pub fn new_revision() -> String {
    crate::error::transaction_id()
}

/// `exec` as OpenWhisk shows it.
#[derive(Debug, Serialize)]
struct ExecView<'a> {
    kind: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    image: Option<&'a str>,
    binary: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    main: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    components: Option<&'a [String]>,
}

/// An action in OpenWhisk's JSON shape (`GET`, `PUT` and `DELETE` answers).
#[derive(Debug, Serialize)]
pub struct ActionView<'a> {
    namespace: &'a str,
    name: &'a str,
    version: &'a str,
    publish: bool,
    exec: ExecView<'a>,
    annotations: &'a [KeyValue],
    parameters: &'a [KeyValue],
    limits: ActionLimits,
    updated: u64,
}

/// `exec` of a list entry: only whether the code is binary.
#[derive(Debug, Serialize)]
struct ExecSummary {
    binary: bool,
}

/// A list entry, OpenWhisk's action summary: no code, no parameters.
#[derive(Debug, Serialize)]
pub struct ActionSummary<'a> {
    namespace: &'a str,
    name: &'a str,
    version: &'a str,
    publish: bool,
    annotations: &'a [KeyValue],
    limits: ActionLimits,
    exec: ExecSummary,
    updated: u64,
}

impl Action {
    /// The full view; `with_code: false` leaves out `exec.code` (`?code=false`).
    pub fn view(&self, with_code: bool) -> ActionView<'_> {
        let code = (with_code && !self.exec.code.is_empty()).then_some(self.exec.code.as_str());
        ActionView {
            namespace: &self.namespace,
            name: &self.name,
            version: &self.version,
            publish: self.publish,
            exec: ExecView {
                kind: &self.exec.kind,
                code,
                image: self.exec.image.as_deref(),
                binary: self.exec.binary,
                main: self.exec.main.as_deref(),
                components: self.exec.components.as_deref(),
            },
            annotations: &self.annotations,
            parameters: &self.parameters,
            limits: self.limits,
            updated: self.updated,
        }
    }

    pub fn summary(&self) -> ActionSummary<'_> {
        ActionSummary {
            namespace: &self.namespace,
            name: &self.name,
            version: &self.version,
            publish: self.publish,
            annotations: &self.annotations,
            limits: self.limits,
            exec: ExecSummary { binary: self.exec.binary },
            updated: self.updated,
        }
    }

    /// The root namespace and the package: `ns/pkg` → (`ns`, `pkg`), `ns` → (`ns`, none).
    pub fn owner(&self) -> (&str, Option<&str>) {
        match self.namespace.split_once('/') {
            Some((namespace, package)) => (namespace, Some(package)),
            None => (&self.namespace, None),
        }
    }

    fn split_namespace(&self) -> (String, Option<String>) {
        let (namespace, package) = self.owner();
        (namespace.to_owned(), package.map(str::to_owned))
    }

    /// What the filter needs to invoke it on behalf of `subject`.
    pub fn resolved(self, subject: String, subject_limits: NamespaceLimits) -> ResolvedAction {
        let (namespace, package) = self.split_namespace();
        ResolvedAction {
            namespace,
            package,
            name: self.name,
            version: self.version,
            revision: self.revision,
            kind: self.exec.kind,
            limits: self.limits,
            parameters: self.parameters,
            annotations: self.annotations,
            subject,
            subject_limits,
            components: self.exec.components,
            web_user: None,
        }
    }

    /// What the control server needs to `/init` a container of the current revision.
    pub fn code(self) -> ActionCode {
        let (namespace, package) = self.split_namespace();
        ActionCode {
            namespace,
            package,
            name: self.name,
            revision: self.revision,
            kind: self.exec.kind,
            main: self.exec.main,
            code: self.exec.code,
            binary: self.exec.binary,
            image: self.exec.image,
        }
    }
}

/// An action's name as a path gives it: `name`, or `pkg/name` for an action in a package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionName {
    pub package: Option<String>,
    pub name: String,
}

impl ActionName {
    /// Parses `name` or `pkg/name` (a `%2F` already decoded); each part must be an entity name (400).
    /// More segments name nothing that can exist: 404.
    pub fn parse(path: &str) -> Result<Self, ApiError> {
        match path.split_once('/') {
            None => Self::new(None, path),
            Some((package, name)) => Self::new(Some(package), name),
        }
    }

    /// From separate path segments; a segment holding a (decoded) `/` names nothing: 404.
    pub fn new(package: Option<&str>, name: &str) -> Result<Self, ApiError> {
        if name.contains('/') || package.is_some_and(|package| package.contains('/')) {
            return Err(ApiError::NotFound);
        }
        let check = |name: &str| {
            validate_entity_name(name)
                .map_err(|error: names::NameError| ApiError::BadRequest(error.to_string()))
        };
        if let Some(package) = package {
            check(package)?;
        }
        check(name)?;
        Ok(Self { package: package.map(str::to_owned), name: name.to_owned() })
    }
}

/// The path parameters of both action routes; `package` is absent on `/actions/{name}`.
#[derive(Debug, Deserialize)]
pub struct ActionRoute {
    pub namespace: String,
    #[serde(default)]
    pub package: Option<String>,
    pub name: String,
}

impl ActionRoute {
    pub fn action_name(&self) -> Result<ActionName, ApiError> {
        match &self.package {
            Some(package) => ActionName::new(Some(package), &self.name),
            None => ActionName::parse(&self.name),
        }
    }
}

/// `GET /api/v1/namespaces/{ns}/actions`: the namespace's actions, packaged ones included (their
/// namespace is `ns/pkg`, as in OpenWhisk).
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
        "actions",
        crate::store::Store::count_actions,
        crate::store::Store::list_actions,
    )
    .await
}

impl crate::paging::Listed for Action {
    fn listed(&self) -> impl serde::Serialize + '_ {
        self.summary()
    }
}

#[derive(Debug, Deserialize)]
pub struct GetQuery {
    code: Option<String>,
}

/// `GET /api/v1/namespaces/{ns}/actions/{[pkg/]name}`. Through a package the parameters shown are
/// the merged ones, as OpenWhisk shows them; through a binding of another namespace's package the
/// action (its code) is not readable: 403.
pub async fn get(
    State(state): State<AppState>,
    subject: Subject,
    ApiPath(route): ApiPath<ActionRoute>,
    ApiQuery(query): ApiQuery<GetQuery>,
) -> Result<Response, ApiError> {
    let namespace = authorize(&subject, &route.namespace)?;
    let action_name = route.action_name()?;
    let with_code = parse_bool("code", query.code.as_deref())?.unwrap_or(true);
    let action = state
        .db(move |store| {
            let action = locate_action(store, &namespace, &action_name, with_code)?;
            if action.owner().0 != namespace {
                return Err(ApiError::Forbidden(format!("{}/{}", action.namespace, action.name)));
            }
            Ok::<_, ApiError>(action)
        })
        .await?;
    Ok(Json(action.view(with_code)).into_response())
}

#[derive(Debug, Deserialize)]
pub struct PutQuery {
    overwrite: Option<String>,
}

/// `PUT /api/v1/namespaces/{ns}/actions/{[pkg/]name}?overwrite=`. A packaged action needs its package
/// (404), which must not be a binding (400).
pub async fn put(
    State(state): State<AppState>,
    subject: Subject,
    ApiPath(route): ApiPath<ActionRoute>,
    ApiQuery(query): ApiQuery<PutQuery>,
    ApiJson(body): ApiJson<ActionPut>,
) -> Result<Response, ApiError> {
    let namespace = authorize(&subject, &route.namespace)?;
    let ActionName { package, name } = route.action_name()?;
    let overwrite = parse_bool("overwrite", query.overwrite.as_deref())?.unwrap_or(false);
    let components = match &body.exec {
        Some(exec) => exec.sequence_components(&namespace)?,
        None => None,
    };
    let action = state
        .db(move |store| {
            if let Some(components) = &components {
                // Read before the write's transaction, as OpenWhisk checks before it writes: the
                // store's write closures cannot read other entities.
                let container = match &package {
                    None => namespace.clone(),
                    Some(package) => format!("{namespace}/{package}"),
                };
                let root = sequences::Identity { namespace: container, name: name.clone() };
                sequences::check(store, &root, &namespace, components)?;
            }
            let build = |namespace: &str, existing| {
                let context = PutContext {
                    namespace,
                    name: &name,
                    overwrite,
                    now: epoch_millis(),
                    revision: new_revision(),
                };
                apply_put(existing, body, context)
            };
            match &package {
                None => store.put_action(&namespace, &name, |existing| build(&namespace, existing)),
                Some(package) => {
                    store.put_packaged_action(&namespace, package, &name, |container, existing| {
                        match container {
                            None => Err(ApiError::NotFound),
                            Some(container) if container.binding.is_some() => {
                                Err(ApiError::NotAllowedOnBinding)
                            }
                            Some(container) => build(&container.path(), existing),
                        }
                    })
                }
            }
        })
        .await?;
    tracing::info!(namespace = %action.namespace, name = %action.name, version = %action.version, "action saved");
    Ok(Json(action.view(true)).into_response())
}

/// `DELETE /api/v1/namespaces/{ns}/actions/{[pkg/]name}`
pub async fn delete(
    State(state): State<AppState>,
    subject: Subject,
    ApiPath(route): ApiPath<ActionRoute>,
) -> Result<Response, ApiError> {
    let namespace = authorize(&subject, &route.namespace)?;
    let ActionName { package, name } = route.action_name()?;
    let action = state
        .db(move |store| {
            let container = match &package {
                None => namespace,
                Some(package) => match store.get_package(&namespace, package)? {
                    None => return Err(ApiError::NotFound),
                    Some(container) if container.binding.is_some() => {
                        return Err(ApiError::NotAllowedOnBinding);
                    }
                    Some(container) => container.path(),
                },
            };
            store.delete_action(&container, &name)?.ok_or(ApiError::NotFound)
        })
        .await?;
    tracing::info!(namespace = %action.namespace, name = %action.name, "action deleted");
    Ok(Json(action.view(true)).into_response())
}

/// `POST /api/v1/namespaces/{ns}/actions/{[pkg/]name}`: invokes are served by the data plane; one
/// that reaches this server bypassed the ingress. It still gets the answers the ingress would give
/// before running anything (401 for a bad key, 403 for another namespace, 404 for an action that does
/// not exist), so that a client pointed at the wrong port learns what is wrong with its request
/// first; an invoke that would run gets 503.
pub async fn invoke(
    State(state): State<AppState>,
    subject: Subject,
    ApiPath(route): ApiPath<ActionRoute>,
) -> ApiError {
    let located = async {
        let namespace = authorize(&subject, &route.namespace)?;
        let action_name = route.action_name()?;
        state.db(move |store| locate_action(store, &namespace, &action_name, false)).await
    };
    match located.await {
        Ok(_) => ApiError::InvokeAtIngress,
        Err(error) => error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(json: serde_json::Value) -> ActionPut {
        serde_json::from_value(json).unwrap()
    }

    fn context(overwrite: bool, now: u64, revision: &str) -> PutContext<'static> {
        PutContext { namespace: "guest", name: "hello", overwrite, now, revision: revision.into() }
    }

    fn created() -> Action {
        let put = body(serde_json::json!({
            "exec": {"kind": "nodejs:20", "code": "function main() {}"},
            "parameters": [{"key": "name", "value": "world"}],
            "annotations": [{"key": "web-export", "value": true}],
            "limits": {"timeout": 1000},
        }));
        apply_put(None, put, context(false, 1, "r1")).unwrap()
    }

    #[test]
    fn create_fills_openwhisk_defaults_and_the_exec_annotation() {
        let action = created();
        assert_eq!(action.version, "0.0.1");
        assert_eq!(action.revision, "r1");
        assert_eq!(action.limits, ActionLimits { timeout: 1000, ..ActionLimits::default() });
        assert!(!action.publish);
        assert!(!action.exec.binary);
        assert_eq!(
            action.annotations,
            vec![
                KeyValue { key: "web-export".into(), value: true.into() },
                KeyValue { key: "exec".into(), value: "nodejs:20".into() },
            ]
        );
    }

    #[test]
    fn an_existing_action_needs_overwrite() {
        let result = apply_put(Some(created()), ActionPut::default(), context(false, 2, "r2"));
        assert!(matches!(result, Err(ApiError::Conflict)));
    }

    #[test]
    fn update_keeps_what_the_body_omits_and_bumps_the_version() {
        let put = body(serde_json::json!({"limits": {"memory": 512}, "delAnnotations": ["web-export"]}));
        let updated = apply_put(Some(created()), put, context(true, 2, "r2")).unwrap();
        assert_eq!(updated.version, "0.0.2");
        assert_eq!(updated.revision, "r2");
        assert_eq!(updated.exec, created().exec);
        assert_eq!(updated.parameters, created().parameters);
        assert_eq!(updated.limits, ActionLimits { timeout: 1000, memory: 512, ..ActionLimits::default() });
        assert_eq!(updated.annotations, vec![KeyValue { key: "exec".into(), value: "nodejs:20".into() }]);
        assert_eq!(updated.updated, 2);
    }

    #[test]
    fn update_with_exec_replaces_it_and_renames_the_kind() {
        let put = body(
            serde_json::json!({"exec": {"kind": "python:3", "code": "def main(a): return a", "main": "main"}}),
        );
        let updated = apply_put(Some(created()), put, context(true, 2, "r2")).unwrap();
        assert_eq!(updated.exec.kind, "python:3");
        assert_eq!(updated.exec.main.as_deref(), Some("main"));
        let exec: Vec<_> = updated.annotations.iter().filter(|a| a.key == "exec").collect();
        assert_eq!(exec.len(), 1);
        assert_eq!(exec[0].value, "python:3");
    }

    #[test]
    fn create_refuses_bad_exec() {
        for (json, expected) in [
            (serde_json::json!({}), "exec undefined"),
            (serde_json::json!({"exec": {"kind": "cobol", "code": "x"}}), "kind 'cobol' not in Set("),
            (serde_json::json!({"exec": {"kind": "nodejs:20", "code": "  "}}), "code is empty"),
            (serde_json::json!({"exec": {"kind": "blackbox"}}), "needs an image"),
        ] {
            let error = apply_put(None, body(json.clone()), context(false, 1, "r")).unwrap_err();
            assert!(matches!(error, ApiError::Malformed(_)), "{json}");
            assert!(error.to_string().contains(expected), "{json}: {error}");
        }
    }

    #[test]
    fn a_sequence_stores_its_components_resolved_and_no_code() {
        let put = body(serde_json::json!({
            "exec": {"kind": "sequence", "components": ["/_/a", "/alice/pkg/b"], "code": "ignored"},
        }));
        let context = PutContext { namespace: "guest/utils", ..context(false, 1, "r1") };
        let action = apply_put(None, put, context).unwrap();
        assert_eq!(action.exec.components, Some(vec!["/guest/a".into(), "/alice/pkg/b".into()]));
        assert_eq!((action.exec.code.as_str(), action.exec.binary), ("", false));
        assert_eq!(action.annotations, vec![KeyValue { key: "exec".into(), value: "sequence".into() }]);
        let resolved = action.resolved("guest".into(), NamespaceLimits::default());
        assert_eq!(resolved.kind, "sequence");
        assert_eq!(resolved.components.map(|c| c.len()), Some(2));
    }

    #[test]
    fn limits_are_checked_against_openwhisks_ranges() {
        let base = ActionLimits::default();
        let limits = |json| merge_limits(base, serde_json::from_value(json).unwrap());
        assert!(limits(serde_json::json!({"timeout": 100, "memory": 2048, "logs": 0})).is_ok());
        for (json, message) in [
            (
                serde_json::json!({"timeout": 99}),
                "duration 99 milliseconds below allowed threshold of 100 milliseconds",
            ),
            (serde_json::json!({"timeout": 300_001}), "exceeds allowed threshold of 300000 milliseconds"),
            (serde_json::json!({"memory": 64}), "memory 64 MB below allowed threshold of 128 MB"),
            (serde_json::json!({"memory": 4096}), "memory 4096 MB exceeds allowed threshold of 2048 MB"),
            (serde_json::json!({"logs": 11}), "log size 11 MB exceeds"),
            (serde_json::json!({"concurrency": 2}), "concurrency 2 exceeds allowed threshold of 1"),
            (serde_json::json!({"concurrency": 0}), "concurrency 0 below"),
        ] {
            let error = limits(json.clone()).unwrap_err().to_string();
            assert!(error.contains(message), "{json}: {error}");
        }
    }

    #[test]
    fn versions_bump_the_patch() {
        assert_eq!(bump_patch("0.0.1"), "0.0.2");
        assert_eq!(bump_patch("1.2.9"), "1.2.10");
        assert_eq!(bump_patch("garbage"), "0.0.1");
    }

    #[test]
    fn binary_code_is_padded_base64() {
        assert!(is_binary_code("UEsDBAoAAAAAAA=="));
        assert!(!is_binary_code("function main() { return {}; }"));
        assert!(!is_binary_code("abc"));
        assert!(!is_binary_code(""));
    }

    #[test]
    fn views_follow_openwhisks_shapes() {
        let action = created();
        let full = serde_json::to_value(action.view(true)).unwrap();
        assert_eq!(
            full["exec"],
            serde_json::json!({"kind": "nodejs:20", "code": "function main() {}", "binary": false})
        );
        assert_eq!(full["limits"]["memory"], 256);
        let without_code = serde_json::to_value(action.view(false)).unwrap();
        assert!(without_code["exec"].get("code").is_none());
        let summary = serde_json::to_value(action.summary()).unwrap();
        assert_eq!(summary["exec"], serde_json::json!({"binary": false}));
        assert!(summary.get("parameters").is_none());
    }

    #[test]
    fn action_names_may_name_a_package_and_bad_names_are_refused() {
        let parsed = ActionName::parse("pkg/hello").unwrap();
        assert_eq!((parsed.package.as_deref(), parsed.name.as_str()), (Some("pkg"), "hello"));
        assert_eq!(ActionName::parse("hello").unwrap(), ActionName { package: None, name: "hello".into() });
        assert!(matches!(ActionName::parse("a/b/c"), Err(ApiError::NotFound)));
        assert!(matches!(ActionName::new(Some("a/b"), "c"), Err(ApiError::NotFound)));
        assert!(matches!(ActionName::parse("bad$name"), Err(ApiError::BadRequest(_))));
        assert!(matches!(ActionName::parse("pkg/"), Err(ApiError::BadRequest(_))));
        assert!(matches!(ActionName::parse("/hello"), Err(ApiError::BadRequest(_))));
    }

    #[test]
    fn packaged_actions_resolve_to_their_root_namespace_and_package() {
        let mut action = created();
        action.namespace = "guest/utils".into();
        assert_eq!(action.owner(), ("guest", Some("utils")));
        let code = action.clone().code();
        assert_eq!((code.namespace.as_str(), code.package.as_deref()), ("guest", Some("utils")));
        let resolved = action.resolved("alice".into(), NamespaceLimits::default());
        assert_eq!(resolved.path(), "guest/utils/hello");
        assert_eq!(resolved.subject, "alice");
        assert_eq!(created().owner(), ("guest", None));
    }
}
