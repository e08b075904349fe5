//! One suite for both backends: each test body takes a fresh [`Store`] and [`on_every_backend!`]
//! runs it as `sqlite::<test>` (in memory) and as `postgres::<test>` (in a private schema of the
//! server at `WHISK_TEST_POSTGRES_URL`; without it the PostgreSQL variants say they are skipped and
//! pass). What only one backend has (files, raw schema checks) is tested in its own module.

use std::io::Write as _;
use std::sync::Once;

use whisk_contract::{ActionLimits, ActivationRecord, ActivationResponse, ActivationStatus, KeyValue};

use super::{ActivationFilter, Store, StoreError};
use crate::actions::{Action, Exec};
use crate::auth::Key;
use crate::packages::{Binding, Package};
use crate::rules::{PathName, Rule, RuleStatus};
use crate::triggers::Trigger;

/// Where the PostgreSQL variants find a server: a URL of a database they may create schemas in.
pub const POSTGRES_URL_VARIABLE: &str = "WHISK_TEST_POSTGRES_URL";

pub fn sqlite() -> Store {
    Store::open_in_memory().unwrap()
}

/// A store in a fresh schema of the test server, or `None` (said once on stderr, which the test
/// harness does not capture) when there is none.
pub fn postgres() -> Option<Store> {
    match std::env::var(POSTGRES_URL_VARIABLE) {
        Ok(url) if !url.is_empty() => Some(Store::connect_private(&url).unwrap()),
        _ => {
            static SAID: Once = Once::new();
            SAID.call_once(|| {
                let _ = writeln!(
                    std::io::stderr(),
                    "unit tests, PostgreSQL variants skipped: {POSTGRES_URL_VARIABLE} not set"
                );
            });
            None
        }
    }
}

/// Defines `sqlite::$test` and `postgres::$test` for each `fn $test(store: Store)` named.
macro_rules! on_every_backend {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(#[test] fn $test() { super::$test(super::sqlite()) })*
        }
        mod postgres {
            $(#[test] fn $test() { if let Some(store) = super::postgres() { super::$test(store) } })*
        }
    };
}

on_every_backend!(
    migrations_run_once,
    keys_are_verified,
    namespaces_are_created_once_and_deleted_with_their_keys,
    actions_list_newest_first_without_code_and_delete,
    ties_list_by_namespace_then_name_in_byte_order,
    a_failed_build_writes_nothing,
    activations_are_idempotent_and_filtered,
    expired_activations_go_oldest_first_in_batches_across_namespaces,
    packages_and_bindings_round_trip_and_list,
    packaged_actions_need_their_package_and_list_with_the_namespace,
    a_package_is_deleted_only_when_the_check_agrees,
    triggers_carry_the_rules_that_name_them,
    status_changes_and_trigger_deletion_deactivate,
    values_round_trip_exactly,
);

pub fn action(name: &str, updated: u64) -> Action {
    Action {
        namespace: "guest".into(),
        name: name.into(),
        version: "0.0.1".into(),
        revision: format!("rev-{name}-{updated}"),
        exec: Exec {
            kind: "nodejs:20".into(),
            code: "function main() {}".into(),
            binary: false,
            main: None,
            image: None,
            components: None,
        },
        parameters: vec![KeyValue { key: "p".into(), value: 1.into() }],
        annotations: vec![],
        limits: ActionLimits::default(),
        publish: false,
        updated,
    }
}

pub fn put(store: &Store, action: Action) -> Action {
    let (namespace, name) = (action.namespace.clone(), action.name.clone());
    store.put_action::<StoreError>(&namespace, &name, |_| Ok(action)).unwrap()
}

pub fn record(id: &str, name: &str, start: u64) -> ActivationRecord {
    ActivationRecord {
        activation_id: id.into(),
        namespace: "guest".into(),
        name: name.into(),
        version: "0.0.1".into(),
        subject: "guest".into(),
        publish: false,
        start,
        end: start + 5,
        duration: 5,
        response: ActivationResponse::new(ActivationStatus::Success, serde_json::json!({"id": id})),
        logs: vec![format!("log of {id}")],
        annotations: vec![],
        cause: None,
    }
}

fn package(name: &str, updated: u64) -> Package {
    Package {
        namespace: "guest".into(),
        name: name.into(),
        version: "0.0.1".into(),
        publish: false,
        parameters: vec![],
        annotations: vec![],
        binding: None,
        updated,
    }
}

fn put_package(store: &Store, package: Package) {
    let (namespace, name) = (package.namespace.clone(), package.name.clone());
    store.put_package::<StoreError>(&namespace, &name, |_| Ok(package)).unwrap();
}

fn put_in(store: &Store, package: &str, name: &str) -> Result<Action, StoreError> {
    store.put_packaged_action("guest", package, name, |container, _| {
        container.ok_or_else(|| StoreError::Task("no package".into()))?;
        Ok(Action { namespace: format!("guest/{package}"), ..action(name, 5) })
    })
}

fn trigger(name: &str, updated: u64) -> Trigger {
    Trigger {
        namespace: "guest".into(),
        name: name.into(),
        version: "0.0.1".into(),
        publish: false,
        parameters: vec![],
        annotations: vec![],
        updated,
    }
}

fn rule(name: &str, trigger: &str) -> Rule {
    Rule {
        namespace: "guest".into(),
        name: name.into(),
        version: "0.0.1".into(),
        publish: false,
        annotations: vec![],
        status: RuleStatus::Active,
        trigger: PathName { path: "guest".into(), name: trigger.into() },
        action: PathName { path: "guest/utils".into(), name: "echo".into() },
        updated: 1,
    }
}

fn put_trigger(store: &Store, trigger: Trigger) {
    let (namespace, name) = (trigger.namespace.clone(), trigger.name.clone());
    store.put_trigger::<StoreError>(&namespace, &name, |_| Ok(trigger)).unwrap();
}

fn put_rule(store: &Store, rule: Rule) {
    let (namespace, name) = (rule.namespace.clone(), rule.name.clone());
    store.put_rule::<StoreError>(&namespace, &name, |_| Ok(rule)).unwrap();
}

fn migrations_run_once(store: Store) {
    let version = store.schema_version().unwrap();
    assert!(version > 0);
    assert_eq!(store.migrate().unwrap(), 0);
    assert_eq!(store.schema_version().unwrap(), version);
}

fn keys_are_verified(store: Store) {
    let key = Key::generate();
    store.create_namespace("alice", &key, 1).unwrap();
    assert_eq!(store.authenticate(&key).unwrap().as_deref(), Some("alice"));
    let wrong = Key { secret: "x".repeat(64), ..key.clone() };
    assert_eq!(store.authenticate(&wrong).unwrap(), None);
    assert_eq!(store.authenticate(&Key::generate()).unwrap(), None);
}

fn namespaces_are_created_once_and_deleted_with_their_keys(store: Store) {
    let key = Key::generate();
    store.create_namespace("alice", &key, 1).unwrap();
    assert!(matches!(
        store.create_namespace("alice", &Key::generate(), 2),
        Err(StoreError::NamespaceExists(_))
    ));
    assert!(matches!(store.create_namespace("bob", &key, 2), Err(StoreError::KeyExists(_))));
    assert!(!store.delete_namespace("bob").unwrap(), "a refused create leaves nothing behind");
    // Seeding is idempotent.
    let guest = Key::generate();
    store.ensure_namespace_key("guest", &guest, 1).unwrap();
    store.ensure_namespace_key("guest", &guest, 2).unwrap();
    assert_eq!(store.authenticate(&guest).unwrap().as_deref(), Some("guest"));
    assert!(store.delete_namespace("alice").unwrap());
    assert!(!store.delete_namespace("alice").unwrap());
    assert_eq!(store.authenticate(&key).unwrap(), None);
}

fn actions_list_newest_first_without_code_and_delete(store: Store) {
    for (name, updated) in [("a", 1), ("b", 3), ("c", 2)] {
        put(&store, action(name, updated));
    }
    let names = |actions: Vec<Action>| actions.into_iter().map(|a| a.name).collect::<Vec<_>>();
    assert_eq!(names(store.list_actions("guest", 0, 30).unwrap()), ["b", "c", "a"]);
    assert_eq!(names(store.list_actions("guest", 1, 1).unwrap()), ["c"]);
    assert!(store.list_actions("guest", 0, 30).unwrap().iter().all(|a| a.exec.code.is_empty()));
    assert_eq!(store.count_actions("guest").unwrap(), 3);
    assert_eq!(store.list_actions("other", 0, 30).unwrap(), vec![]);
    assert_eq!(store.get_action("guest", "a", false).unwrap().unwrap().exec.code, "");
    assert_eq!(store.get_action("guest", "a", true).unwrap(), Some(action("a", 1)));
    assert_eq!(store.delete_action("guest", "a").unwrap(), Some(action("a", 1)));
    assert_eq!(store.delete_action("guest", "a").unwrap(), None);
    assert_eq!(store.count_actions("guest").unwrap(), 2);
}

/// Equal timestamps order by namespace, then name, comparing bytes (PostgreSQL's default collation
/// would put `B` after `a` and ignore `_`).
fn ties_list_by_namespace_then_name_in_byte_order(store: Store) {
    put_package(&store, package("p", 1));
    for name in ["b", "B", "a_c", "ab"] {
        put(&store, action(name, 7));
    }
    put_in(&store, "p", "A").unwrap();
    let listed: Vec<_> = store
        .list_actions("guest", 0, 30)
        .unwrap()
        .into_iter()
        .filter(|a| a.updated == 7)
        .map(|a| format!("{}/{}", a.namespace, a.name))
        .collect();
    assert_eq!(listed, ["guest/B", "guest/a_c", "guest/ab", "guest/b"]);
    for name in ["b", "B"] {
        put_package(&store, package(name, 9));
    }
    let packages: Vec<_> = store.list_packages("guest", 0, 2).unwrap().into_iter().map(|p| p.name).collect();
    assert_eq!(packages, ["B", "b"]);
}

fn a_failed_build_writes_nothing(store: Store) {
    let result = store.put_action("guest", "a", |_| Err(StoreError::Task("refused".into())));
    assert!(result.is_err());
    assert_eq!(store.get_action("guest", "a", true).unwrap(), None);
    let result = store.put_rule("guest", "r", |_| Err(StoreError::Task("refused".into())));
    assert!(result.is_err());
    assert_eq!(store.get_rule("guest", "r").unwrap(), None);
    // The store is still usable after a refused transaction.
    put(&store, action("a", 1));
    assert_eq!(store.count_actions("guest").unwrap(), 1);
}

fn activations_are_idempotent_and_filtered(store: Store) {
    let records = [record("a1", "x", 10), record("a2", "y", 20), record("a3", "x", 30)];
    store.put_activations(&records).unwrap();
    store.put_activations(&records).unwrap();
    store.put_activations(&[]).unwrap();
    let all = ActivationFilter::default();
    assert_eq!(store.count_activations("guest", &all).unwrap(), 3);
    let ids =
        |records: Vec<ActivationRecord>| records.into_iter().map(|r| r.activation_id).collect::<Vec<_>>();
    assert_eq!(ids(store.list_activations("guest", &all, 0, 30).unwrap()), ["a3", "a2", "a1"]);
    let by_name = ActivationFilter { name: Some("x".into()), ..ActivationFilter::default() };
    assert_eq!(ids(store.list_activations("guest", &by_name, 0, 30).unwrap()), ["a3", "a1"]);
    assert_eq!(store.count_activations("guest", &by_name).unwrap(), 2);
    let window = ActivationFilter { since: Some(15), upto: Some(30), ..ActivationFilter::default() };
    assert_eq!(ids(store.list_activations("guest", &window, 1, 30).unwrap()), ["a2"]);
    assert_eq!(store.get_activation("other", "a1").unwrap(), None);
    // A retried record with the same id replaces the first.
    let retried = ActivationRecord { logs: vec!["again".into()], ..record("a1", "x", 10) };
    store.put_activations(std::slice::from_ref(&retried)).unwrap();
    assert_eq!(store.get_activation("guest", "a1").unwrap(), Some(retried));
    // Equal starts order by id, descending.
    store.put_activations(&[record("b", "z", 40), record("c", "z", 40)]).unwrap();
    assert_eq!(ids(store.list_activations("guest", &all, 0, 2).unwrap()), ["c", "b"]);
}

fn expired_activations_go_oldest_first_in_batches_across_namespaces(store: Store) {
    let elsewhere = ActivationRecord { namespace: "alice".into(), ..record("b1", "x", 5) };
    let records = [record("a3", "x", 30), record("a1", "x", 10), elsewhere, record("a2", "y", 20)];
    store.put_activations(&records).unwrap();
    let remaining =
        |namespace: &str| store.count_activations(namespace, &ActivationFilter::default()).unwrap();
    // One at a time, the oldest first, whatever its namespace.
    assert_eq!(store.delete_activations_before(30, 1).unwrap(), 1);
    assert_eq!((remaining("guest"), remaining("alice")), (3, 0));
    assert_eq!(store.delete_activations_before(30, 1).unwrap(), 1);
    assert_eq!(store.get_activation("guest", "a1").unwrap(), None);
    // A short batch: only what started strictly before the cutoff goes.
    assert_eq!(store.delete_activations_before(30, 10).unwrap(), 1);
    assert_eq!(store.delete_activations_before(30, 10).unwrap(), 0);
    assert_eq!(store.get_activation("guest", "a3").unwrap(), Some(records[0].clone()));
    assert_eq!(remaining("guest"), 1);
}

fn packages_and_bindings_round_trip_and_list(store: Store) {
    put_package(&store, package("a", 1));
    let binding =
        Package { binding: Some(Binding { namespace: "other".into(), name: "p".into() }), ..package("b", 2) };
    put_package(&store, binding.clone());
    assert_eq!(store.get_package("guest", "b").unwrap(), Some(binding));
    let names: Vec<_> = store.list_packages("guest", 0, 30).unwrap().into_iter().map(|p| p.name).collect();
    assert_eq!(names, ["b", "a"]);
    assert_eq!(store.count_packages("guest").unwrap(), 2);
    assert_eq!(store.list_packages("other", 0, 30).unwrap(), vec![]);
    // Other namespaces see the published packages only, never a binding (even a published one).
    assert_eq!(store.list_published_packages("guest", 0, 30).unwrap(), vec![]);
    put_package(&store, Package { publish: true, ..package("c", 3) });
    put_package(
        &store,
        Package {
            publish: true,
            binding: Some(Binding { namespace: "other".into(), name: "p".into() }),
            ..package("d", 4)
        },
    );
    let published: Vec<_> =
        store.list_published_packages("guest", 0, 30).unwrap().into_iter().map(|p| p.name).collect();
    assert_eq!(published, ["c"]);
    assert_eq!(store.count_published_packages("guest").unwrap(), 1);
    assert_eq!(store.list_published_packages("guest", 1, 30).unwrap(), vec![]);
    for name in ["c", "d"] {
        store.delete_package::<StoreError>("guest", name, |_, _| Ok(())).unwrap();
    }
    let replaced = store
        .put_package::<StoreError>("guest", "b", |existing| {
            Ok(Package { binding: None, updated: 3, ..existing.unwrap() })
        })
        .unwrap();
    assert_eq!(store.get_package("guest", "b").unwrap(), Some(replaced));
}

fn packaged_actions_need_their_package_and_list_with_the_namespace(store: Store) {
    assert!(put_in(&store, "p", "x").is_err());
    put_package(&store, package("p", 1));
    put_in(&store, "p", "x").unwrap();
    store.put_action::<StoreError>("guest", "y", |_| Ok(action("y", 1))).unwrap();
    assert_eq!(store.package_actions("guest/p").unwrap().len(), 1);
    assert!(store.package_actions("guest/p").unwrap()[0].exec.code.is_empty());
    let listed: Vec<_> =
        store.list_actions("guest", 0, 30).unwrap().into_iter().map(|a| a.namespace).collect();
    assert_eq!(listed, ["guest/p", "guest"]);
    assert_eq!(store.count_actions("guest").unwrap(), 2);
    assert_eq!(store.count_actions("guest/p").unwrap(), 0, "only root namespaces count");
}

fn a_package_is_deleted_only_when_the_check_agrees(store: Store) {
    put_package(&store, package("p", 1));
    put_in(&store, "p", "x").unwrap();
    let refused = store.delete_package("guest", "p", |_, contained| {
        if contained > 0 { Err(StoreError::Task(format!("{contained}"))) } else { Ok(()) }
    });
    assert!(matches!(refused, Err(StoreError::Task(n)) if n == "1"));
    assert!(store.get_package("guest", "p").unwrap().is_some());
    store.delete_action("guest/p", "x").unwrap();
    let deleted = store.delete_package::<StoreError>("guest", "p", |_, _| Ok(())).unwrap();
    assert_eq!(deleted.map(|p| p.name).as_deref(), Some("p"));
    assert_eq!(store.delete_package::<StoreError>("guest", "p", |_, _| Ok(())).unwrap(), None);

    // A check that agrees despite the contents (`?force=true`) takes them along.
    put_package(&store, package("q", 1));
    put_in(&store, "q", "x").unwrap();
    put_in(&store, "q", "y").unwrap();
    let forced = store.delete_package::<StoreError>("guest", "q", |_, contained| {
        assert_eq!(contained, 2);
        Ok(())
    });
    assert_eq!(forced.unwrap().map(|p| p.name).as_deref(), Some("q"));
    assert_eq!(store.package_actions("guest/q").unwrap(), vec![]);
    assert_eq!(store.count_actions("guest").unwrap(), 0);
}

fn triggers_carry_the_rules_that_name_them(store: Store) {
    put_trigger(&store, trigger("t", 1));
    put_trigger(&store, trigger("u", 2));
    put_rule(&store, rule("r2", "t"));
    put_rule(&store, rule("r1", "t"));
    put_rule(&store, rule("other", "u"));
    let (found, rules) = store.get_trigger_with_rules("guest", "t").unwrap().unwrap();
    assert_eq!(found, trigger("t", 1));
    assert_eq!(rules, vec![rule("r1", "t"), rule("r2", "t")]);
    assert_eq!(store.trigger_rules("guest", "t").unwrap(), rules);
    let names: Vec<_> = store.list_triggers("guest", 0, 30).unwrap().into_iter().map(|t| t.name).collect();
    assert_eq!(names, ["u", "t"]);
    let rules: Vec<_> = store.list_rules("guest", 1, 30).unwrap().into_iter().map(|r| r.name).collect();
    assert_eq!(rules, ["r1", "r2"], "equal times order by name");
    assert_eq!((store.count_triggers("guest").unwrap(), store.count_rules("guest").unwrap()), (2, 3));
    assert_eq!(store.get_trigger_with_rules("alice", "t").unwrap(), None);
}

fn status_changes_and_trigger_deletion_deactivate(store: Store) {
    put_trigger(&store, trigger("t", 1));
    put_rule(&store, rule("r", "t"));
    let disabled = store.set_rule_status("guest", "r", RuleStatus::Inactive, 9).unwrap().unwrap();
    assert_eq!((disabled.status, disabled.updated), (RuleStatus::Inactive, 9));
    assert_eq!(store.set_rule_status("guest", "absent", RuleStatus::Active, 9).unwrap(), None);
    store.set_rule_status("guest", "r", RuleStatus::Active, 10).unwrap();
    let (_, rules) = store.delete_trigger("guest", "t").unwrap().unwrap();
    assert_eq!(rules[0].status, RuleStatus::Active, "the answer shows the rules as they were");
    assert_eq!(store.get_rule("guest", "r").unwrap().unwrap().status, RuleStatus::Inactive);
    assert_eq!(store.get_trigger("guest", "t").unwrap(), None);
    assert_eq!(store.delete_trigger("guest", "t").unwrap(), None);
    assert!(store.delete_rule("guest", "r").unwrap().is_some());
    assert_eq!(store.delete_rule("guest", "r").unwrap(), None);
}

/// Every column comes back as it went in: optional fields, booleans, JSON, large numbers, text
/// outside ASCII.
fn values_round_trip_exactly(store: Store) {
    let full = Action {
        exec: Exec {
            kind: "blackbox".into(),
            code: "UEsDBA==".into(),
            binary: true,
            main: Some("run".into()),
            image: Some("ghcr.io/x/y:1".into()),
            components: None,
        },
        parameters: vec![KeyValue { key: "ünï".into(), value: serde_json::json!({"a": [1, "☃", null]}) }],
        annotations: vec![KeyValue { key: "web-export".into(), value: true.into() }],
        limits: ActionLimits { timeout: 300_000, memory: 2048, logs: 0, concurrency: 500 },
        publish: true,
        ..action("full", 1_700_000_000_000)
    };
    put(&store, full.clone());
    assert_eq!(store.get_action("guest", "full", true).unwrap(), Some(full));
    // A sequence's components come back with and without code, and in listings (the filter and
    // `wsk action get` need them, neither loads code).
    let sequence = Action {
        exec: Exec {
            kind: "sequence".into(),
            code: String::new(),
            binary: false,
            main: None,
            image: None,
            components: Some(vec!["/guest/a".into(), "/guest/pkg/b".into()]),
        },
        ..action("seq", 1_700_000_000_001)
    };
    put(&store, sequence.clone());
    assert_eq!(store.get_action("guest", "seq", false).unwrap(), Some(sequence.clone()));
    let listed = store.list_actions("guest", 0, 1).unwrap();
    assert_eq!(listed.first().and_then(|a| a.exec.components.clone()), sequence.exec.components);
    // Replaced by an action with code, the components are gone.
    put(&store, action("seq", 1_700_000_000_002));
    assert_eq!(store.get_action("guest", "seq", true).unwrap().unwrap().exec.components, None);
    let big = ActivationRecord {
        start: i64::MAX as u64 - 10,
        end: i64::MAX as u64,
        cause: Some("a sequence's activation id".into()),
        ..record("big", "x", 0)
    };
    store.put_activations(std::slice::from_ref(&big)).unwrap();
    assert_eq!(store.get_activation("guest", "big").unwrap(), Some(big));
    let inactive = Rule { status: RuleStatus::Inactive, publish: true, ..rule("r", "t") };
    put_rule(&store, inactive.clone());
    assert_eq!(store.get_rule("guest", "r").unwrap(), Some(inactive));
}
