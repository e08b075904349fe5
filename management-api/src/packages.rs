//! Packages and bindings: the stored entity, OpenWhisk's create/update rules, the JSON views, the
//! handlers of `/api/v1/namespaces/{ns}/packages[/{name}]`, and [`locate_action`], which finds the
//! action behind `name`, `pkg/name` or `binding/name` with its parameters merged.
//!
//! ```text
//!  guest/mybinding ──binding──► whisk.system/utils ──holds──► whisk.system/utils/echo
//!  parameters: utils's < mybinding's < echo's (the later wins)
//! ```
//!
//! A binding may name another namespace's package only if that package is published; that is
//! checked when the binding is written, so invoking through the binding checks only the binding.

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::ser::SerializeMap as _;
use serde::{Deserialize, Serialize, Serializer};
use whisk_contract::KeyValue;

use crate::actions::{Action, ActionName, FIRST_VERSION, bump_patch};
use crate::error::{ApiError, ApiJson, ApiPath, ApiQuery};
use crate::names::validate_entity_name;
use crate::namespaces::{DEFAULT_NAMESPACE, authorize};
use crate::paging::{ListQuery, parse_bool};
use crate::state::{AppState, Subject, epoch_millis};
use crate::store::Store;

/// Names OpenWhisk refuses for a package.
pub const RESERVED_NAMES: &[&str] = &["default"];
/// The annotation OpenWhisk sets on a binding, naming the bound package (for clients that only
/// list packages).
pub const BINDING_ANNOTATION: &str = "binding";

/// The package a binding refers to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binding {
    pub namespace: String,
    pub name: String,
}

/// A package, or a binding when `binding` is set.
#[derive(Debug, Clone, PartialEq)]
pub struct Package {
    pub namespace: String,
    pub name: String,
    pub version: String,
    pub publish: bool,
    pub parameters: Vec<KeyValue>,
    pub annotations: Vec<KeyValue>,
    pub binding: Option<Binding>,
    /// Epoch milliseconds of the last create or update.
    pub updated: u64,
}

impl Package {
    /// `ns/name`: the namespace its actions are stored in.
    pub fn path(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// The body of a `PUT`; an update keeps what it does not name.
#[derive(Debug, Default, Deserialize)]
pub struct PackagePut {
    pub parameters: Option<Vec<KeyValue>>,
    pub annotations: Option<Vec<KeyValue>>,
    pub publish: Option<bool>,
    pub binding: Option<BindingPut>,
}

/// `binding` of a `PUT`: `{}` (OpenWhisk's "not a binding") or `{"namespace", "name"}`.
#[derive(Debug, Default, Deserialize)]
pub struct BindingPut {
    pub namespace: Option<String>,
    pub name: Option<String>,
}

impl BindingPut {
    /// The package the binding names, `_` (or no namespace) being the caller's namespace.
    pub fn target(&self, caller: &str) -> Result<Option<Binding>, ApiError> {
        let namespace = self.namespace.as_deref().filter(|namespace| !namespace.is_empty());
        let name = self.name.as_deref().filter(|name| !name.is_empty());
        let Some(name) = name else {
            return match namespace {
                None => Ok(None),
                Some(_) => Err(ApiError::Malformed("binding must name a package".into())),
            };
        };
        let namespace = match namespace {
            None | Some(DEFAULT_NAMESPACE) => caller,
            Some(namespace) => namespace,
        };
        for part in [namespace, name] {
            validate_entity_name(part).map_err(|error| ApiError::BadRequest(error.to_string()))?;
        }
        Ok(Some(Binding { namespace: namespace.to_owned(), name: name.to_owned() }))
    }
}

/// Everything [`apply_put`] needs besides the body.
#[derive(Debug)]
pub struct PutContext<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub overwrite: bool,
    pub now: u64,
    /// The (already checked) package the body binds to, if it names one.
    pub binding: Option<Binding>,
}

/// The package a `PUT` produces, following OpenWhisk: without `overwrite` an existing one is a
/// conflict; a package cannot become a binding (a binding stays one); an update replaces what the
/// body names and bumps the version; the `binding` annotation is always the server's.
pub fn apply_put(
    existing: Option<Package>,
    put: PackagePut,
    context: PutContext<'_>,
) -> Result<Package, ApiError> {
    if existing.is_some() && !context.overwrite {
        return Err(ApiError::Conflict);
    }
    if context.binding.is_some() && existing.as_ref().is_some_and(|package| package.binding.is_none()) {
        return Err(ApiError::PackageCannotBecomeBinding);
    }
    let version =
        existing.as_ref().map_or_else(|| FIRST_VERSION.to_owned(), |package| bump_patch(&package.version));
    let (old_parameters, old_annotations, old_publish, old_binding) = match existing {
        Some(package) => (package.parameters, package.annotations, package.publish, package.binding),
        None => (Vec::new(), Vec::new(), false, None),
    };
    let binding = context.binding.or(old_binding);
    let mut annotations = put.annotations.unwrap_or(old_annotations);
    annotations.retain(|annotation| annotation.key != BINDING_ANNOTATION);
    if let Some(binding) = &binding {
        let value = serde_json::json!({ "namespace": binding.namespace, "name": binding.name });
        annotations.push(KeyValue { key: BINDING_ANNOTATION.into(), value });
    }
    Ok(Package {
        namespace: context.namespace.to_owned(),
        name: context.name.to_owned(),
        version,
        publish: put.publish.unwrap_or(old_publish),
        parameters: put.parameters.unwrap_or(old_parameters),
        annotations,
        binding,
        updated: context.now,
    })
}

/// Checks the package a binding names, as seen from `caller`: another namespace's package must exist
/// and be published (403 otherwise, revealing nothing); one's own must exist (400); a binding cannot
/// be bound (400).
pub fn check_bound(caller: &str, binding: &Binding, bound: Option<&Package>) -> Result<(), ApiError> {
    let foreign = binding.namespace != caller;
    match bound {
        Some(package) if foreign && !package.publish => {
            Err(ApiError::Forbidden(format!("{}/{}", binding.namespace, binding.name)))
        }
        None if foreign => Err(ApiError::Forbidden(format!("{}/{}", binding.namespace, binding.name))),
        None => Err(ApiError::BindingDoesNotExist),
        Some(package) if package.binding.is_some() => Err(ApiError::BindingToBinding),
        Some(_) => Ok(()),
    }
}

/// `base` with `overrides` applied: a key of `overrides` replaces the same key in place, a new key is
/// appended. OpenWhisk's `inherit`.
pub fn merge_parameters(mut base: Vec<KeyValue>, overrides: &[KeyValue]) -> Vec<KeyValue> {
    for parameter in overrides {
        match base.iter_mut().find(|existing| existing.key == parameter.key) {
            Some(existing) => existing.value = parameter.value.clone(),
            None => base.push(parameter.clone()),
        }
    }
    base
}

/// The action `name` or `pkg/name` of `namespace` names, read from the store, its `parameters`
/// merged as OpenWhisk merges them: bound package < binding < action, or package < action. The
/// action keeps its real owner's namespace (`owner/pkg` through a binding). 404 when any link is
/// missing.
pub fn locate_action(
    store: &Store,
    namespace: &str,
    action: &ActionName,
    with_code: bool,
) -> Result<Action, ApiError> {
    let Some(package) = &action.package else {
        return store.get_action(namespace, &action.name, with_code)?.ok_or(ApiError::NotFound);
    };
    let container = store.get_package(namespace, package)?.ok_or(ApiError::NotFound)?;
    let (container, inherited) = match &container.binding {
        None => (container.path(), container.parameters),
        Some(binding) => {
            let bound = store.get_package(&binding.namespace, &binding.name)?.ok_or(ApiError::NotFound)?;
            if bound.binding.is_some() {
                // Refused when bound; a binding that became one since cannot hold actions anyway.
                return Err(ApiError::NotFound);
            }
            (bound.path(), merge_parameters(bound.parameters, &container.parameters))
        }
    };
    let mut found = store.get_action(&container, &action.name, with_code)?.ok_or(ApiError::NotFound)?;
    found.parameters = merge_parameters(inherited, &found.parameters);
    Ok(found)
}

/// Serialises an absent binding as OpenWhisk does: `{}`.
#[derive(Debug)]
struct BindingField<'a>(Option<&'a Binding>);

impl Serialize for BindingField<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Some(binding) => binding.serialize(serializer),
            None => serializer.serialize_map(Some(0))?.end(),
        }
    }
}

/// An action as a package lists it.
#[derive(Debug, Serialize)]
pub struct PackageAction<'a> {
    name: &'a str,
    version: &'a str,
    annotations: &'a [KeyValue],
}

/// A package in OpenWhisk's JSON shape; `actions` and `feeds` only on `GET`.
#[derive(Debug, Serialize)]
pub struct PackageView<'a> {
    namespace: &'a str,
    name: &'a str,
    version: &'a str,
    publish: bool,
    parameters: &'a [KeyValue],
    annotations: &'a [KeyValue],
    binding: BindingField<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    actions: Option<Vec<PackageAction<'a>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    feeds: Option<&'a [serde_json::Value]>,
    updated: u64,
}

/// A list entry: no parameters, no actions.
#[derive(Debug, Serialize)]
pub struct PackageSummary<'a> {
    namespace: &'a str,
    name: &'a str,
    version: &'a str,
    publish: bool,
    annotations: &'a [KeyValue],
    binding: BindingField<'a>,
    updated: u64,
}

impl Package {
    /// The full view; `actions` are the package's contents (the bound package's, for a binding).
    pub fn view<'a>(&'a self, actions: Option<&'a [Action]>) -> PackageView<'a> {
        PackageView {
            namespace: &self.namespace,
            name: &self.name,
            version: &self.version,
            publish: self.publish,
            parameters: &self.parameters,
            annotations: &self.annotations,
            binding: BindingField(self.binding.as_ref()),
            actions: actions.map(|actions| {
                actions
                    .iter()
                    .map(|action| PackageAction {
                        name: &action.name,
                        version: &action.version,
                        annotations: &action.annotations,
                    })
                    .collect()
            }),
            feeds: actions.map(|_| &[][..]),
            updated: self.updated,
        }
    }

    pub fn summary(&self) -> PackageSummary<'_> {
        PackageSummary {
            namespace: &self.namespace,
            name: &self.name,
            version: &self.version,
            publish: self.publish,
            annotations: &self.annotations,
            binding: BindingField(self.binding.as_ref()),
            updated: self.updated,
        }
    }
}

fn check_package_name(name: &str) -> Result<(), ApiError> {
    validate_entity_name(name).map_err(|error| ApiError::BadRequest(error.to_string()))
}

/// `GET /api/v1/namespaces/{ns}/packages`: one's own namespace's packages and bindings, or another
/// namespace's published packages (`wsk package list /whisk.system`). `public` is accepted and
/// ignored: what is listed follows from whose namespace it is.
pub async fn list(
    State(state): State<AppState>,
    subject: Subject,
    ApiPath(namespace): ApiPath<String>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Response, ApiError> {
    // Another namespace's packages are listed as OpenWhisk lists them: only the published ones.
    let (namespace, count, list): (_, crate::paging::CountFn, crate::paging::ListFn<Package>) =
        match authorize(&subject, &namespace) {
            Ok(own) => (own, crate::store::Store::count_packages, crate::store::Store::list_packages),
            Err(_) => (
                namespace,
                crate::store::Store::count_published_packages,
                crate::store::Store::list_published_packages,
            ),
        };
    crate::paging::respond(&state, namespace, query.page()?, "packages", count, list).await
}

impl crate::paging::Listed for Package {
    fn listed(&self) -> impl serde::Serialize + '_ {
        self.summary()
    }
}

/// `GET /api/v1/namespaces/{ns}/packages/{name}`: the package with its actions. A binding shows the
/// bound package's actions and the merged parameters. Another namespace's package is readable only
/// when published (403 otherwise, whether or not it exists).
pub async fn get(
    State(state): State<AppState>,
    subject: Subject,
    ApiPath((namespace, name)): ApiPath<(String, String)>,
) -> Result<Response, ApiError> {
    check_package_name(&name)?;
    let own = authorize(&subject, &namespace);
    let (package, actions) = state
        .db(move |store| {
            let lookup = own.as_deref().unwrap_or(&namespace);
            let package = store.get_package(lookup, &name)?;
            let package = match (own, package) {
                (Ok(_), package) => package.ok_or(ApiError::NotFound)?,
                // Published packages are world-readable in OpenWhisk; a binding is not a package.
                (Err(_), Some(package)) if package.publish && package.binding.is_none() => package,
                (Err(refused), _) => return Err(refused),
            };
            let Some(binding) = &package.binding else {
                let actions = store.package_actions(&package.path())?;
                return Ok((package, actions));
            };
            match store.get_package(&binding.namespace, &binding.name)? {
                Some(bound) if bound.binding.is_none() => {
                    let actions = store.package_actions(&bound.path())?;
                    let parameters = merge_parameters(bound.parameters, &package.parameters);
                    Ok((Package { parameters, ..package }, actions))
                }
                // The bound package is gone: the binding is still there to be read and deleted.
                _ => Ok((package, Vec::new())),
            }
        })
        .await?;
    Ok(Json(package.view(Some(&actions))).into_response())
}

#[derive(Debug, Deserialize)]
pub struct PutQuery {
    overwrite: Option<String>,
}

/// `PUT /api/v1/namespaces/{ns}/packages/{name}?overwrite=`: creates or updates a package or a
/// binding.
pub async fn put(
    State(state): State<AppState>,
    subject: Subject,
    ApiPath((namespace, name)): ApiPath<(String, String)>,
    ApiQuery(query): ApiQuery<PutQuery>,
    ApiJson(mut body): ApiJson<PackagePut>,
) -> Result<Response, ApiError> {
    let namespace = authorize(&subject, &namespace)?;
    check_package_name(&name)?;
    if RESERVED_NAMES.contains(&name.as_str()) {
        return Err(ApiError::ReservedPackageName(name));
    }
    let overwrite = parse_bool("overwrite", query.overwrite.as_deref())?.unwrap_or(false);
    let binding = body.binding.take().map(|binding| binding.target(&namespace)).transpose()?.flatten();
    let package = state
        .db(move |store| {
            if let Some(binding) = &binding {
                let bound = store.get_package(&binding.namespace, &binding.name)?;
                check_bound(&namespace, binding, bound.as_ref())?;
            }
            // A bound package deleted between the check and the write leaves a dangling binding,
            // which deleting a bound package leaves anyway: resolving through it answers 404.
            store.put_package(&namespace, &name, |existing| {
                let context = PutContext {
                    namespace: &namespace,
                    name: &name,
                    overwrite,
                    now: epoch_millis(),
                    binding,
                };
                apply_put(existing, body, context)
            })
        })
        .await?;
    tracing::info!(namespace = %package.namespace, name = %package.name, version = %package.version, "package saved");
    Ok(Json(package.view(None)).into_response())
}

#[derive(Debug, Deserialize)]
pub struct DeleteQuery {
    force: Option<String>,
}

/// `DELETE /api/v1/namespaces/{ns}/packages/{name}?force=`: a package must be empty first (409),
/// unless `force=true`, which deletes its actions with it (as OpenWhisk does); a binding can always
/// go.
pub async fn delete(
    State(state): State<AppState>,
    subject: Subject,
    ApiPath((namespace, name)): ApiPath<(String, String)>,
    ApiQuery(query): ApiQuery<DeleteQuery>,
) -> Result<Response, ApiError> {
    let namespace = authorize(&subject, &namespace)?;
    check_package_name(&name)?;
    let force = parse_bool("force", query.force.as_deref())?.unwrap_or(false);
    let package = state
        .db(move |store| {
            store.delete_package(&namespace, &name, |package, contained| {
                if package.binding.is_none() && contained > 0 && !force {
                    Err(ApiError::PackageNotEmpty(contained))
                } else {
                    Ok(())
                }
            })
        })
        .await?
        .ok_or(ApiError::NotFound)?;
    tracing::info!(namespace = %package.namespace, name = %package.name, "package deleted");
    Ok(Json(package.view(None)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(json: serde_json::Value) -> PackagePut {
        serde_json::from_value(json).unwrap()
    }

    fn context(overwrite: bool, binding: Option<Binding>) -> PutContext<'static> {
        PutContext { namespace: "guest", name: "utils", overwrite, now: 7, binding }
    }

    fn kv(key: &str, value: serde_json::Value) -> KeyValue {
        KeyValue { key: key.into(), value }
    }

    fn bound() -> Binding {
        Binding { namespace: "whisk.system".into(), name: "utils".into() }
    }

    #[test]
    fn create_update_and_conflict_follow_openwhisk() {
        let created = apply_put(
            None,
            body(serde_json::json!({"parameters": [{"key": "a", "value": 1}], "publish": true})),
            context(false, None),
        )
        .unwrap();
        assert_eq!(
            (created.version.as_str(), created.publish, created.binding.as_ref()),
            ("0.0.1", true, None)
        );
        assert!(matches!(
            apply_put(Some(created.clone()), PackagePut::default(), context(false, None)),
            Err(ApiError::Conflict)
        ));
        let updated = apply_put(
            Some(created.clone()),
            body(serde_json::json!({"publish": false})),
            context(true, None),
        )
        .unwrap();
        assert_eq!(updated.version, "0.0.2");
        assert_eq!(updated.parameters, created.parameters, "an update keeps what it does not name");
        assert!(!updated.publish);
        assert!(matches!(
            apply_put(Some(created), PackagePut::default(), context(true, Some(bound()))),
            Err(ApiError::PackageCannotBecomeBinding)
        ));
    }

    #[test]
    fn bindings_stay_bindings_and_carry_the_server_annotation() {
        let put = body(serde_json::json!({"annotations": [{"key": "binding", "value": "forged"}]}));
        let binding = apply_put(None, put, context(false, Some(bound()))).unwrap();
        assert_eq!(binding.binding, Some(bound()));
        assert_eq!(
            binding.annotations,
            vec![kv("binding", serde_json::json!({"namespace": "whisk.system", "name": "utils"}))]
        );
        let updated = apply_put(Some(binding), PackagePut::default(), context(true, None)).unwrap();
        assert_eq!(updated.binding, Some(bound()), "an update without binding keeps it");
    }

    #[test]
    fn binding_targets_resolve_the_default_namespace() {
        let target = |json| serde_json::from_value::<BindingPut>(json).unwrap().target("guest");
        assert_eq!(target(serde_json::json!({})).unwrap(), None);
        assert_eq!(
            target(serde_json::json!({"namespace": "_", "name": "p"})).unwrap(),
            Some(Binding { namespace: "guest".into(), name: "p".into() })
        );
        assert_eq!(
            target(serde_json::json!({"namespace": "whisk.system", "name": "utils"})).unwrap(),
            Some(bound())
        );
        assert!(matches!(target(serde_json::json!({"namespace": "x"})), Err(ApiError::Malformed(_))));
        assert!(matches!(target(serde_json::json!({"name": "a$b"})), Err(ApiError::BadRequest(_))));
    }

    #[test]
    fn binding_checks_hide_foreign_unpublished_packages() {
        let package = |publish, binding| Package {
            namespace: "whisk.system".into(),
            name: "utils".into(),
            version: "0.0.1".into(),
            publish,
            parameters: vec![],
            annotations: vec![],
            binding,
            updated: 1,
        };
        assert!(check_bound("guest", &bound(), Some(&package(true, None))).is_ok());
        assert!(matches!(
            check_bound("guest", &bound(), Some(&package(false, None))),
            Err(ApiError::Forbidden(_))
        ));
        assert!(matches!(check_bound("guest", &bound(), None), Err(ApiError::Forbidden(_))));
        assert!(check_bound("whisk.system", &bound(), Some(&package(false, None))).is_ok());
        assert!(matches!(check_bound("whisk.system", &bound(), None), Err(ApiError::BindingDoesNotExist)));
        assert!(matches!(
            check_bound("guest", &bound(), Some(&package(true, Some(bound())))),
            Err(ApiError::BindingToBinding)
        ));
    }

    #[test]
    fn later_parameters_win_in_place() {
        let merged = merge_parameters(
            vec![kv("a", 1.into()), kv("b", 1.into())],
            &[kv("b", 2.into()), kv("c", 2.into())],
        );
        assert_eq!(merged, vec![kv("a", 1.into()), kv("b", 2.into()), kv("c", 2.into())]);
    }

    #[test]
    fn views_follow_openwhisks_shapes() {
        let package = apply_put(None, PackagePut::default(), context(false, None)).unwrap();
        let view = serde_json::to_value(package.view(Some(&[]))).unwrap();
        assert_eq!(view["binding"], serde_json::json!({}));
        assert_eq!(view["actions"], serde_json::json!([]));
        assert_eq!(view["feeds"], serde_json::json!([]));
        let put_view = serde_json::to_value(package.view(None)).unwrap();
        assert!(put_view.get("actions").is_none() && put_view.get("feeds").is_none());
        let summary = serde_json::to_value(package.summary()).unwrap();
        assert!(summary.get("parameters").is_none());
        let binding = apply_put(None, PackagePut::default(), context(false, Some(bound()))).unwrap();
        assert_eq!(
            serde_json::to_value(binding.summary()).unwrap()["binding"],
            serde_json::json!({"namespace": "whisk.system", "name": "utils"})
        );
    }
}
