//! Sequences in the management API: the components' names as clients write them, and the checks a
//! create or update of a sequence makes, with OpenWhisk's messages.
//!
//! ```text
//!  PUT {"exec": {"kind": "sequence", "components": ["/_/a", "/guest/pkg/b"]}}
//!   parse_components: fully qualified, `_` → caller, 1..=50 of them      (400)
//!   check: each direct component in the caller's namespace               (403)
//!          walk the components, inlining nested sequences:
//!            one that is the sequence being written                      (400 cyclic)
//!            one that does not exist                                     (400 not found)
//!            more than 50 atomic actions in all                          (400 too long)
//! ```
//!
//! The walk ([`walk`]) is pure over a lookup closure; [`check`] gives it the store. The sequence
//! itself runs in the data plane (the filter), which the resolve answer tells about the components.

use whisk_contract::{SEQUENCE_LIMIT, messages};

use crate::error::ApiError;
use crate::names::validate_entity_name;
use crate::namespaces::DEFAULT_NAMESPACE;
use crate::store::Store;

/// Lookups one check may make: nested sequences are inlined, and an entity graph that a race of
/// updates made cyclic (each update is checked, but two at once are not checked against each other)
/// must not make the walk endless. 50 atomic actions, each behind a few levels of one-component
/// sequences, stay far below it.
pub const MAX_LOOKUPS: usize = 1_000;

/// A component as a sequence names it: `/namespace/name` or `/namespace/package/name`.
pub use whisk_contract::QualifiedName as Component;

/// Parses a fully qualified action name (the leading `/` may be left out, as OpenWhisk allows) and
/// checks its segments; `_` as the namespace is `caller`'s.
pub fn parse_component(text: &str, caller: &str) -> Result<Component, ApiError> {
    let malformed = || {
        ApiError::Malformed(format!(
            "sequence component '{text}' is not a fully qualified action name \
             (/namespace/name or /namespace/package/name)"
        ))
    };
    let mut component = Component::parse(text).ok_or_else(malformed)?;
    if component.namespace == DEFAULT_NAMESPACE {
        caller.clone_into(&mut component.namespace);
    }
    let segments = [&component.namespace, &component.name].into_iter().chain(component.package.as_ref());
    for segment in segments {
        validate_entity_name(segment).map_err(|_| malformed())?;
    }
    Ok(component)
}

/// The components of a `PUT`, parsed, with `_` resolved: at least one, at most OpenWhisk's limit.
pub fn parse_components(components: &[String], caller: &str) -> Result<Vec<Component>, ApiError> {
    if components.is_empty() {
        return Err(ApiError::BadRequest(messages::SEQUENCE_NO_COMPONENT.into()));
    }
    if components.len() > SEQUENCE_LIMIT {
        return Err(ApiError::BadRequest(messages::SEQUENCE_TOO_LONG.into()));
    }
    components.iter().map(|component| parse_component(component, caller)).collect()
}

/// Where an action is stored: its namespace (`ns` or `ns/pkg`, a binding already followed) and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub namespace: String,
    pub name: String,
}

/// What is stored where a component leads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    Missing,
    /// An action with code: one atomic action.
    Atomic,
    /// A sequence, with its stored (fully qualified) components.
    Sequence(Vec<String>),
}

/// A component followed to where its action is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    pub at: Identity,
    pub stored: Stored,
}

/// Checks the components of the sequence stored at `root` (before it is written): every direct
/// component must be in `caller`'s namespace (a key reaches no other, 403); then, inlining nested
/// sequences in order, no component may lead to `root` itself, each must exist, and at most
/// [`SEQUENCE_LIMIT`] atomic actions may be reached. `lookup` answers `None` when the component's
/// package does not exist. OpenWhisk checks in this order, so the errors are its.
pub fn walk(
    root: &Identity,
    caller: &str,
    components: &[Component],
    mut lookup: impl FnMut(&Component) -> Result<Option<Located>, ApiError>,
) -> Result<(), ApiError> {
    if let Some(foreign) = components.iter().find(|component| component.namespace != caller) {
        let path = foreign.fully_qualified();
        return Err(ApiError::Forbidden(path.trim_start_matches('/').to_owned()));
    }
    let not_found = || ApiError::BadRequest(messages::SEQUENCE_COMPONENT_NOT_FOUND.into());
    let too_long = || ApiError::BadRequest(messages::SEQUENCE_TOO_LONG.into());
    // Depth first, in order: a stack of what is left, the next component on top.
    let mut pending: Vec<Component> = components.iter().rev().cloned().collect();
    let (mut atomic, mut lookups) = (0usize, 0usize);
    while let Some(component) = pending.pop() {
        lookups += 1;
        if lookups > MAX_LOOKUPS {
            return Err(too_long());
        }
        let located = lookup(&component)?.ok_or_else(not_found)?;
        // Before existence: a sequence naming itself is cyclic even while it does not exist yet.
        if located.at == *root {
            return Err(ApiError::BadRequest(messages::SEQUENCE_IS_CYCLIC.into()));
        }
        match located.stored {
            Stored::Missing => return Err(not_found()),
            Stored::Atomic => {
                atomic += 1;
                if atomic > SEQUENCE_LIMIT {
                    return Err(too_long());
                }
            }
            Stored::Sequence(inner) => {
                // Stored components are fully qualified already; the owner stands in for `_`.
                let owner = located.at.namespace.split('/').next().unwrap_or_default();
                for text in inner.iter().rev() {
                    let nested = parse_component(text, owner).map_err(|_| {
                        ApiError::Internal(format!("stored sequence component '{text}' does not parse"))
                    })?;
                    pending.push(nested);
                }
            }
        }
    }
    Ok(())
}

/// [`walk`] against the store: components are followed through packages and bindings as an invoke
/// follows them.
pub fn check(store: &Store, root: &Identity, caller: &str, components: &[Component]) -> Result<(), ApiError> {
    walk(root, caller, components, |component| locate(store, component))
}

fn locate(store: &Store, component: &Component) -> Result<Option<Located>, ApiError> {
    let namespace = match &component.package {
        None => component.namespace.clone(),
        Some(package) => match store.get_package(&component.namespace, package)? {
            None => return Ok(None),
            Some(container) => match container.binding {
                Some(binding) => format!("{}/{}", binding.namespace, binding.name),
                None => container.path(),
            },
        },
    };
    let stored = match store.get_action(&namespace, &component.name, false)? {
        None => Stored::Missing,
        Some(action) => match action.exec.components {
            Some(components) => Stored::Sequence(components),
            None => Stored::Atomic,
        },
    };
    Ok(Some(Located { at: Identity { namespace, name: component.name.clone() }, stored }))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn component(text: &str) -> Component {
        parse_component(text, "guest").unwrap()
    }

    fn at(namespace: &str, name: &str) -> Identity {
        Identity { namespace: namespace.into(), name: name.into() }
    }

    /// A catalog of stored actions by fully qualified name (no packages or bindings).
    fn catalog(entries: &[(&str, Stored)]) -> HashMap<String, Stored> {
        entries.iter().map(|(name, stored)| ((*name).to_owned(), stored.clone())).collect()
    }

    fn run(root: &str, components: &[&str], catalog: &HashMap<String, Stored>) -> Result<usize, ApiError> {
        let root = at("guest", root);
        let components: Vec<Component> = components.iter().map(|c| component(c)).collect();
        let mut lookups = 0;
        walk(&root, "guest", &components, |component| {
            lookups += 1;
            let stored = catalog.get(&component.fully_qualified()).cloned().unwrap_or(Stored::Missing);
            Ok(Some(Located { at: at(&component.namespace, &component.name), stored }))
        })
        .map(|()| lookups)
    }

    fn sequence(components: &[&str]) -> Stored {
        Stored::Sequence(components.iter().map(|c| (*c).to_owned()).collect())
    }

    #[test]
    fn components_are_fully_qualified_and_underscore_is_the_caller() {
        assert_eq!(
            parse_component("/_/a", "guest").unwrap(),
            Component { namespace: "guest".into(), package: None, name: "a".into() }
        );
        let packaged = parse_component("/alice/pkg/b", "guest").unwrap();
        assert_eq!(packaged.fully_qualified(), "/alice/pkg/b");
        assert_eq!(parse_component("guest/a", "x").unwrap().fully_qualified(), "/guest/a");
        for bad in ["a", "/a", "/guest/a/b/c", "//a", "/guest/", "/guest/a$", ""] {
            let error = parse_component(bad, "guest").unwrap_err();
            assert!(matches!(error, ApiError::Malformed(_)), "{bad:?}: {error}");
        }
    }

    #[test]
    fn a_put_names_one_to_fifty_components() {
        let error = parse_components(&[], "guest").unwrap_err();
        assert_eq!(error.to_string(), "No component specified for the sequence.");
        let fifty: Vec<String> = (0..50).map(|i| format!("/_/a{i}")).collect();
        assert_eq!(parse_components(&fifty, "guest").unwrap().len(), 50);
        let fifty_one: Vec<String> = (0..51).map(|i| format!("/_/a{i}")).collect();
        let error = parse_components(&fifty_one, "guest").unwrap_err();
        assert_eq!(error.to_string(), "Too many actions in the sequence.");
    }

    #[test]
    fn existing_atomic_components_pass() {
        let catalog = catalog(&[("/guest/a", Stored::Atomic), ("/guest/b", Stored::Atomic)]);
        assert_eq!(run("s", &["/guest/a", "/guest/b", "/guest/a"], &catalog).unwrap(), 3);
    }

    #[test]
    fn a_missing_component_is_openwhisks_400() {
        let catalog = catalog(&[("/guest/a", Stored::Atomic)]);
        let error = run("s", &["/guest/a", "/guest/nope"], &catalog).unwrap_err();
        assert!(matches!(&error, ApiError::BadRequest(m) if m == "Sequence component does not exist."));
        let nested = self::catalog(&[("/guest/inner", sequence(&["/guest/gone"]))]);
        assert!(run("s", &["/guest/inner"], &nested).is_err(), "a nested missing component too");
    }

    #[test]
    fn a_sequence_may_not_reach_itself_directly_or_through_others() {
        // Directly, even before it exists.
        let error = run("s", &["/guest/s"], &catalog(&[])).unwrap_err();
        assert_eq!(error.to_string(), "Sequence may not refer to itself.");
        // Through a nested sequence: updating `s` to run `t`, which runs `s`.
        let catalog = catalog(&[
            ("/guest/a", Stored::Atomic),
            ("/guest/t", sequence(&["/guest/a", "/guest/s"])),
            ("/guest/s", Stored::Atomic),
        ]);
        let error = run("s", &["/guest/a", "/guest/t"], &catalog).unwrap_err();
        assert_eq!(error.to_string(), "Sequence may not refer to itself.");
    }

    #[test]
    fn nested_sequences_count_their_atomic_actions() {
        let ten: Vec<String> = (0..10).map(|_| "/guest/a".to_owned()).collect();
        let ten: Vec<&str> = ten.iter().map(String::as_str).collect();
        let catalog = catalog(&[("/guest/a", Stored::Atomic), ("/guest/ten", sequence(&ten))]);
        assert!(run("s", &["/guest/ten"; 5], &catalog).is_ok(), "50 atomic actions are allowed");
        let error = run(
            "s",
            &["/guest/ten", "/guest/ten", "/guest/ten", "/guest/ten", "/guest/ten", "/guest/a"],
            &catalog,
        )
        .unwrap_err();
        assert_eq!(error.to_string(), "Too many actions in the sequence.");
    }

    #[test]
    fn a_cycle_elsewhere_ends_the_walk() {
        // `x` and `y` run each other (a race of two updates); a new sequence running `x` must not
        // make the check endless.
        let catalog =
            catalog(&[("/guest/x", sequence(&["/guest/y"])), ("/guest/y", sequence(&["/guest/x"]))]);
        let error = run("s", &["/guest/x"], &catalog).unwrap_err();
        assert_eq!(error.to_string(), "Too many actions in the sequence.");
    }

    #[test]
    fn components_of_another_namespace_are_forbidden() {
        let components = [parse_component("/alice/a", "guest").unwrap()];
        let error = walk(&at("guest", "s"), "guest", &components, |_| -> Result<Option<Located>, ApiError> {
            panic!("no lookup before the entitlement check")
        })
        .unwrap_err();
        assert_eq!(error.to_string(), "The supplied authentication is not authorized to access 'alice/a'.");
    }

    #[test]
    fn a_missing_package_is_a_missing_component() {
        let components = [component("/guest/nopkg/a")];
        let error = walk(&at("guest", "s"), "guest", &components, |_| Ok(None)).unwrap_err();
        assert_eq!(error.to_string(), "Sequence component does not exist.");
    }
}
