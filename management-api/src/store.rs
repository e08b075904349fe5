//! The store: namespaces and keys, actions, packages, triggers and rules, activation records, on one
//! of two backends behind the same methods.
//!
//! ```text
//!  handlers ─► AppState::db (blocking thread) ─► Store ─┬─► SqliteStore   (--data-dir)
//!                                                       └─► PostgresStore (--database-url)
//! ```
//!
//! [`Store`] is an enum over the two rather than a trait: the read-modify-write methods take a
//! generic `build` closure (so that the check and the write share one transaction), which no
//! `dyn Trait` can carry, and a `Store: Trait` type parameter would run through every handler and
//! the router for a choice made once at start-up. `interface!` lists the methods once; each arm
//! calls the backend's method of the same name, so a backend that lacks one, or gives it another
//! signature, does not compile. Both backends keep the same semantics (ids, newest-first order with
//! the same tie-breaks, replace-on-retry activation inserts, hashed keys), and one test suite
//! (`store::conformance` and the router tests) runs against each.
//!
//! Schema changes are SQL files, one list per backend: `migrations/sqlite/` (counted in
//! `PRAGMA user_version`) and `migrations/postgres/` (counted in a `schema_version` table).

use std::path::{Path, PathBuf};

use whisk_contract::ActivationRecord;

use crate::actions::Action;
use crate::auth::Key;
use crate::packages::Package;
use crate::rules::{Rule, RuleStatus};
use crate::triggers::Trigger;

pub mod postgres;
pub mod sqlite;

#[cfg(test)]
mod conformance;

pub use postgres::PostgresStore;
pub use sqlite::{DATABASE_FILE, SqliteStore};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create the data directory {path}: {source}")]
    DataDir { path: PathBuf, source: std::io::Error },
    #[error("cannot open the database {path}: {source}")]
    Open { path: PathBuf, source: rusqlite::Error },
    #[error("migration to schema version {version} failed: {source}")]
    Migration { version: usize, source: rusqlite::Error },
    #[error("the database has schema version {found}, newer than the {known} this binary knows")]
    SchemaTooNew { found: usize, known: usize },
    #[error("namespace '{0}' already exists")]
    NamespaceExists(String),
    #[error("key '{0}' already exists")]
    KeyExists(String),
    #[error("cannot encode {what} as JSON: {source}")]
    Encode { what: &'static str, source: serde_json::Error },
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("database task failed: {0}")]
    Task(String),
    #[error("invalid PostgreSQL URL: {}", postgres::describe(.0))]
    PostgresUrl(tokio_postgres::Error),
    #[error("cannot start the PostgreSQL client's runtime: {0}")]
    PostgresRuntime(std::io::Error),
    #[error("cannot connect to PostgreSQL: {}", postgres::describe(.0))]
    PostgresConnect(tokio_postgres::Error),
    #[error("PostgreSQL migration to schema version {version} failed: {}", postgres::describe(.source))]
    PostgresMigration { version: usize, source: tokio_postgres::Error },
    #[error("database error: {}", postgres::describe(.0))]
    Postgres(#[from] tokio_postgres::Error),
    /// A number PostgreSQL's `BIGINT` cannot hold (SQLite refuses the same ones).
    #[error("{what} {value} is out of range for the database")]
    OutOfRange { what: &'static str, value: u64 },
    /// A stored value that does not decode: a negative count, bad JSON, an unknown rule status.
    #[error("corrupt {what} in the database: {detail}")]
    Corrupt { what: &'static str, detail: String },
}

/// Narrows activation listings; all bounds are inclusive, on `start` (epoch ms).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ActivationFilter {
    pub name: Option<String>,
    pub since: Option<u64>,
    pub upto: Option<u64>,
}

/// See the module documentation.
#[derive(Debug)]
#[expect(clippy::large_enum_variant, reason = "one store per process, behind an Arc")]
pub enum Store {
    Sqlite(SqliteStore),
    Postgres(PostgresStore),
}

impl Store {
    /// SQLite: opens (creating if needed) `data_dir/whisk.db` and brings its schema up to date.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        SqliteStore::open(data_dir).map(Self::Sqlite)
    }

    /// SQLite: a private database that lives as long as the store, for tests.
    pub fn open_in_memory() -> Result<Self, StoreError> {
        SqliteStore::open_in_memory().map(Self::Sqlite)
    }

    /// PostgreSQL: connects to the database at `url` (`postgres://user:password@host:port/db`, or
    /// libpq's `key=value` form) and brings its schema up to date.
    pub fn connect(url: &str) -> Result<Self, StoreError> {
        PostgresStore::connect(url).map(Self::Postgres)
    }

    /// PostgreSQL: a fresh schema in the database at `url`, dropped with the store, for tests (what
    /// [`Store::open_in_memory`] is to SQLite).
    pub fn connect_private(url: &str) -> Result<Self, StoreError> {
        PostgresStore::connect_private(url).map(Self::Postgres)
    }

    /// Which backend this is, for logs: `"sqlite"` or `"postgres"`.
    pub fn backend(&self) -> &'static str {
        match self {
            Self::Sqlite(_) => "sqlite",
            Self::Postgres(_) => "postgres",
        }
    }
}

/// Defines each listed method on [`Store`] as a call to the backend's method of the same name.
macro_rules! interface {
    ($(
        $(#[$meta:meta])*
        fn $method:ident $(<$generic:ident: $bound:path>)?
            (&self $(, $argument:ident: $type:ty)* $(,)?) -> $output:ty;
    )*) => {
        impl Store {
            $(
                $(#[$meta])*
                pub fn $method $(<$generic: $bound>)? (&self $(, $argument: $type)*) -> $output {
                    match self {
                        Self::Sqlite(store) => store.$method($($argument),*),
                        Self::Postgres(store) => store.$method($($argument),*),
                    }
                }
            )*
        }
    };
}

interface! {
    /// The schema version: how many of the backend's migrations have been applied.
    fn schema_version(&self) -> Result<usize, StoreError>;
    /// Applies any migration not yet applied; returns how many ran.
    fn migrate(&self) -> Result<usize, StoreError>;

    /// Creates `namespace` with its first key; fails if the namespace exists.
    fn create_namespace(&self, namespace: &str, key: &Key, now: u64) -> Result<(), StoreError>;
    /// Makes sure `namespace` exists and accepts `key`; does nothing if the key is already stored.
    fn ensure_namespace_key(&self, namespace: &str, key: &Key, now: u64) -> Result<(), StoreError>;
    /// Deletes `namespace` and its keys (its actions and activations stay, as in OpenWhisk).
    /// Returns whether it existed.
    fn delete_namespace(&self, namespace: &str) -> Result<bool, StoreError>;
    /// The namespace `key` belongs to, if its secret is right.
    fn authenticate(&self, key: &Key) -> Result<Option<String>, StoreError>;

    /// The action, with its code only when `with_code` (code can weigh up to 48 MB).
    fn get_action(&self, namespace: &str, name: &str, with_code: bool) -> Result<Option<Action>, StoreError>;
    /// Creates or replaces an action atomically: `build` sees the current version (with code) and
    /// returns the new one, or an error that leaves the store untouched.
    fn put_action<E: From<StoreError>>(
        &self,
        namespace: &str,
        name: &str,
        build: impl FnOnce(Option<Action>) -> Result<Action, E>,
    ) -> Result<Action, E>;
    /// Deletes the action and returns what it was.
    fn delete_action(&self, namespace: &str, name: &str) -> Result<Option<Action>, StoreError>;
    /// One page of the namespace's actions, packaged ones included, most recently updated first,
    /// without code.
    fn list_actions(&self, namespace: &str, skip: u64, limit: u64) -> Result<Vec<Action>, StoreError>;
    /// How many actions the namespace holds, packaged ones included.
    fn count_actions(&self, namespace: &str) -> Result<u64, StoreError>;

    /// Stores the records in one transaction; a record whose id is already stored is replaced, so
    /// a retried batch is harmless.
    fn put_activations(&self, records: &[ActivationRecord]) -> Result<(), StoreError>;
    fn get_activation(&self, namespace: &str, id: &str) -> Result<Option<ActivationRecord>, StoreError>;
    /// One page of the namespace's activations, newest first.
    fn list_activations(
        &self,
        namespace: &str,
        filter: &ActivationFilter,
        skip: u64,
        limit: u64,
    ) -> Result<Vec<ActivationRecord>, StoreError>;
    fn count_activations(&self, namespace: &str, filter: &ActivationFilter) -> Result<u64, StoreError>;
    /// Deletes up to `limit` records of any namespace that started before `cutoff` (epoch ms),
    /// oldest first; returns how many. Retention calls it until a batch comes back short, so that
    /// no single transaction holds the activation table for long.
    fn delete_activations_before(&self, cutoff: u64, limit: u64) -> Result<u64, StoreError>;

    fn get_package(&self, namespace: &str, name: &str) -> Result<Option<Package>, StoreError>;
    /// Creates or replaces a package atomically: `build` sees the current one and returns the new
    /// one, or an error that leaves the store untouched.
    fn put_package<E: From<StoreError>>(
        &self,
        namespace: &str,
        name: &str,
        build: impl FnOnce(Option<Package>) -> Result<Package, E>,
    ) -> Result<Package, E>;
    /// Deletes the package and the actions it holds if `check`, shown it and the number of those
    /// actions, agrees; in one transaction, so no action can slip into a package being deleted (nor
    /// outlive it). `None` if there was none.
    fn delete_package<E: From<StoreError>>(
        &self,
        namespace: &str,
        name: &str,
        check: impl FnOnce(&Package, u64) -> Result<(), E>,
    ) -> Result<Option<Package>, E>;
    /// One page of the namespace's packages and bindings, most recently updated first.
    fn list_packages(&self, namespace: &str, skip: u64, limit: u64) -> Result<Vec<Package>, StoreError>;
    fn count_packages(&self, namespace: &str) -> Result<u64, StoreError>;
    /// One page of the namespace's published packages (no bindings): what other namespaces see.
    fn list_published_packages(
        &self,
        namespace: &str,
        skip: u64,
        limit: u64,
    ) -> Result<Vec<Package>, StoreError>;
    fn count_published_packages(&self, namespace: &str) -> Result<u64, StoreError>;
    /// Every action of the package at `path` (`ns/pkg`), without code, most recently updated first.
    fn package_actions(&self, path: &str) -> Result<Vec<Action>, StoreError>;
    /// Creates or replaces an action of package `namespace/package` atomically: `build` sees the
    /// package (if it exists) and the current action, so that a package being deleted never gains
    /// an action, and returns the new action or an error that leaves the store untouched.
    fn put_packaged_action<E: From<StoreError>>(
        &self,
        namespace: &str,
        package: &str,
        name: &str,
        build: impl FnOnce(Option<Package>, Option<Action>) -> Result<Action, E>,
    ) -> Result<Action, E>;

    fn get_trigger(&self, namespace: &str, name: &str) -> Result<Option<Trigger>, StoreError>;
    /// The trigger and its rules (by rule name), read together.
    fn get_trigger_with_rules(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<(Trigger, Vec<Rule>)>, StoreError>;
    /// The rules that name the trigger, by rule name.
    fn trigger_rules(&self, namespace: &str, name: &str) -> Result<Vec<Rule>, StoreError>;
    /// Creates or replaces a trigger atomically: `build` sees the current one and returns the new
    /// one, or an error that leaves the store untouched.
    fn put_trigger<E: From<StoreError>>(
        &self,
        namespace: &str,
        name: &str,
        build: impl FnOnce(Option<Trigger>) -> Result<Trigger, E>,
    ) -> Result<Trigger, E>;
    /// Deletes the trigger and turns its rules inactive, so that a trigger created again under the
    /// same name does not fire them until they are enabled (OpenWhisk forgets the links with the
    /// trigger document). Returns the trigger and its rules as they were.
    fn delete_trigger(&self, namespace: &str, name: &str) -> Result<Option<(Trigger, Vec<Rule>)>, StoreError>;
    /// One page of the namespace's triggers, most recently updated first.
    fn list_triggers(&self, namespace: &str, skip: u64, limit: u64) -> Result<Vec<Trigger>, StoreError>;
    fn count_triggers(&self, namespace: &str) -> Result<u64, StoreError>;

    fn get_rule(&self, namespace: &str, name: &str) -> Result<Option<Rule>, StoreError>;
    /// Creates or replaces a rule atomically: `build` sees the current one and returns the new one,
    /// or an error that leaves the store untouched.
    fn put_rule<E: From<StoreError>>(
        &self,
        namespace: &str,
        name: &str,
        build: impl FnOnce(Option<Rule>) -> Result<Rule, E>,
    ) -> Result<Rule, E>;
    /// Sets the rule's status; `None` if there is no such rule.
    fn set_rule_status(
        &self,
        namespace: &str,
        name: &str,
        status: RuleStatus,
        now: u64,
    ) -> Result<Option<Rule>, StoreError>;
    /// Deletes the rule and returns what it was.
    fn delete_rule(&self, namespace: &str, name: &str) -> Result<Option<Rule>, StoreError>;
    /// One page of the namespace's rules, most recently updated first.
    fn list_rules(&self, namespace: &str, skip: u64, limit: u64) -> Result<Vec<Rule>, StoreError>;
    fn count_rules(&self, namespace: &str) -> Result<u64, StoreError>;
}

/// The JSON text of a column.
fn encode<T: serde::Serialize + ?Sized>(what: &'static str, value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|source| StoreError::Encode { what, source })
}
