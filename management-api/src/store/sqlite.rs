//! The SQLite backend (the embedded default): one file in the data directory.
//!
//! Plain synchronous methods over one connection behind a mutex; the HTTP layer calls them on a
//! blocking thread ([`crate::state::AppState::db`]). One connection is enough for one replica: every
//! statement is an indexed lookup and WAL mode keeps readers in other processes (the admin commands)
//! from blocking. Several replicas need the PostgreSQL backend ([`super::postgres`]).
//!
//! Schema changes are SQL files under `migrations/sqlite/`, applied in order inside a transaction
//! and counted in `PRAGMA user_version`, so opening an up-to-date database changes nothing.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rusqlite::types::Type;
use rusqlite::{Connection, OptionalExtension as _, Row, TransactionBehavior, params};
use serde::de::DeserializeOwned;
use whisk_contract::{ActionLimits, ActivationRecord};

use super::{ActivationFilter, StoreError, encode};
use crate::actions::{Action, Exec};
use crate::auth::{HashedSecret, Key};

mod packages;
mod triggers;

/// The database file inside the data directory.
pub const DATABASE_FILE: &str = "whisk.db";

/// Migrations in order; migration `i` (from 0) brings the schema to version `i + 1`.
const MIGRATIONS: &[&str] = &[
    include_str!("../../migrations/sqlite/0001_init.sql"),
    include_str!("../../migrations/sqlite/0002_packages_triggers_rules.sql"),
    include_str!("../../migrations/sqlite/0003_activation_retention.sql"),
    include_str!("../../migrations/sqlite/0004_sequences.sql"),
];

/// How long a statement waits for another process's write lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// See the module documentation.
#[derive(Debug)]
pub struct SqliteStore {
    connection: Mutex<Connection>,
}

impl SqliteStore {
    /// Opens (creating if needed) `data_dir/whisk.db` and brings its schema up to date.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir)
            .map_err(|source| StoreError::DataDir { path: data_dir.to_owned(), source })?;
        let path = data_dir.join(DATABASE_FILE);
        let connection =
            Connection::open(&path).map_err(|source| StoreError::Open { path: path.clone(), source })?;
        connection
            .pragma_update(None, "journal_mode", "WAL")
            .map_err(|source| StoreError::Open { path: path.clone(), source })?;
        // NORMAL is durable across application crashes in WAL mode; only a power loss can drop the
        // last transactions, which is acceptable for activation records.
        connection
            .pragma_update(None, "synchronous", "NORMAL")
            .map_err(|source| StoreError::Open { path, source })?;
        Self::with_connection(connection)
    }

    /// A private database that lives as long as the store: for tests.
    pub fn open_in_memory() -> Result<Self, StoreError> {
        let path = PathBuf::from(":memory:");
        let connection = Connection::open_in_memory().map_err(|source| StoreError::Open { path, source })?;
        Self::with_connection(connection)
    }

    fn with_connection(mut connection: Connection) -> Result<Self, StoreError> {
        connection.busy_timeout(BUSY_TIMEOUT)?;
        connection.pragma_update(None, "foreign_keys", "ON")?;
        migrate(&mut connection)?;
        Ok(Self { connection: Mutex::new(connection) })
    }

    /// A poisoned lock only means another thread panicked mid-call; SQLite rolled its transaction
    /// back when the guard dropped, so the connection is still sound.
    fn connection(&self) -> MutexGuard<'_, Connection> {
        self.connection.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The schema version (`PRAGMA user_version`).
    pub fn schema_version(&self) -> Result<usize, StoreError> {
        Ok(self.connection().pragma_query_value(None, "user_version", |row| row.get(0))?)
    }

    /// Applies any migration not yet applied; returns how many ran.
    pub fn migrate(&self) -> Result<usize, StoreError> {
        migrate(&mut self.connection())
    }

    /// Creates `namespace` with its first key; fails if the namespace exists.
    pub fn create_namespace(&self, namespace: &str, key: &Key, now: u64) -> Result<(), StoreError> {
        let mut connection = self.connection();
        let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let inserted = transaction.execute(
            "INSERT OR IGNORE INTO namespaces (name, created) VALUES (?1, ?2)",
            params![namespace, now],
        )?;
        if inserted == 0 {
            return Err(StoreError::NamespaceExists(namespace.to_owned()));
        }
        insert_key(&transaction, namespace, key, now)?;
        transaction.commit()?;
        Ok(())
    }

    /// Makes sure `namespace` exists and accepts `key`; does nothing if the key is already stored.
    pub fn ensure_namespace_key(&self, namespace: &str, key: &Key, now: u64) -> Result<(), StoreError> {
        let mut connection = self.connection();
        let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
        transaction.execute(
            "INSERT OR IGNORE INTO namespaces (name, created) VALUES (?1, ?2)",
            params![namespace, now],
        )?;
        let known: bool = transaction.query_row(
            "SELECT EXISTS (SELECT 1 FROM keys WHERE uuid = ?1)",
            [&key.uuid],
            |row| row.get(0),
        )?;
        if !known {
            insert_key(&transaction, namespace, key, now)?;
        }
        transaction.commit()?;
        Ok(())
    }

    /// Deletes `namespace` and its keys (its actions and activations stay, as in OpenWhisk).
    /// Returns whether it existed.
    pub fn delete_namespace(&self, namespace: &str) -> Result<bool, StoreError> {
        let connection = self.connection();
        Ok(connection.execute("DELETE FROM namespaces WHERE name = ?1", [namespace])? > 0)
    }

    /// The namespace `key` belongs to, if its secret is right.
    pub fn authenticate(&self, key: &Key) -> Result<Option<String>, StoreError> {
        let connection = self.connection();
        let mut statement =
            connection.prepare_cached("SELECT namespace, salt, secret_hash FROM keys WHERE uuid = ?1")?;
        let stored = statement
            .query_row([&key.uuid], |row| {
                Ok((row.get::<_, String>(0)?, HashedSecret { salt: row.get(1)?, hash: row.get(2)? }))
            })
            .optional()?;
        Ok(stored.and_then(|(namespace, hashed)| hashed.verify(&key.secret).then_some(namespace)))
    }

    /// The action, with its code only when `with_code` (code can weigh up to 48 MB).
    pub fn get_action(
        &self,
        namespace: &str,
        name: &str,
        with_code: bool,
    ) -> Result<Option<Action>, StoreError> {
        let connection = self.connection();
        select_action(&connection, namespace, name, with_code)
    }

    /// Creates or replaces an action atomically: `build` sees the current version (with code) and
    /// returns the new one, or an error that leaves the store untouched.
    pub fn put_action<E: From<StoreError>>(
        &self,
        namespace: &str,
        name: &str,
        build: impl FnOnce(Option<Action>) -> Result<Action, E>,
    ) -> Result<Action, E> {
        let mut connection = self.connection();
        let transaction =
            connection.transaction_with_behavior(TransactionBehavior::Immediate).map_err(StoreError::from)?;
        let existing = select_action(&transaction, namespace, name, true)?;
        let action = build(existing)?;
        insert_action(&transaction, &action)?;
        transaction.commit().map_err(StoreError::from)?;
        Ok(action)
    }

    /// Deletes the action and returns what it was.
    pub fn delete_action(&self, namespace: &str, name: &str) -> Result<Option<Action>, StoreError> {
        let mut connection = self.connection();
        let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let existing = select_action(&transaction, namespace, name, true)?;
        if existing.is_some() {
            transaction
                .execute("DELETE FROM actions WHERE namespace = ?1 AND name = ?2", [namespace, name])?;
            transaction.commit()?;
        }
        Ok(existing)
    }

    /// One page of the namespace's actions, packaged ones included, most recently updated first,
    /// without code.
    pub fn list_actions(&self, namespace: &str, skip: u64, limit: u64) -> Result<Vec<Action>, StoreError> {
        let connection = self.connection();
        let mut statement = connection.prepare_cached(&format!(
            "SELECT {ACTION_COLUMNS} FROM actions WHERE root_namespace = ?1
             ORDER BY updated DESC, namespace, name LIMIT ?3 OFFSET ?4"
        ))?;
        let actions = statement
            .query_map(params![namespace, false, limit, skip], action_from_row)?
            .collect::<Result<_, _>>()?;
        Ok(actions)
    }

    /// How many actions the namespace holds, packaged ones included.
    pub fn count_actions(&self, namespace: &str) -> Result<u64, StoreError> {
        let connection = self.connection();
        Ok(connection.query_row(
            "SELECT COUNT(*) FROM actions WHERE root_namespace = ?1",
            [namespace],
            |row| row.get(0),
        )?)
    }

    /// Stores the records in one transaction; a record whose id is already stored is replaced, so
    /// a retried batch is harmless.
    pub fn put_activations(&self, records: &[ActivationRecord]) -> Result<(), StoreError> {
        let mut connection = self.connection();
        let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut statement = transaction.prepare_cached(
                "INSERT OR REPLACE INTO activations (activation_id, namespace, name, start, record)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for record in records {
                let json = serde_json::to_string(record)
                    .map_err(|source| StoreError::Encode { what: "activation", source })?;
                statement.execute(params![
                    record.activation_id,
                    record.namespace,
                    record.name,
                    record.start,
                    json
                ])?;
            }
        }
        transaction.commit()?;
        Ok(())
    }

    pub fn get_activation(&self, namespace: &str, id: &str) -> Result<Option<ActivationRecord>, StoreError> {
        let connection = self.connection();
        let mut statement = connection
            .prepare_cached("SELECT record FROM activations WHERE namespace = ?1 AND activation_id = ?2")?;
        Ok(statement.query_row([namespace, id], |row| json_column(row, 0)).optional()?)
    }

    /// One page of the namespace's activations, newest first.
    pub fn list_activations(
        &self,
        namespace: &str,
        filter: &ActivationFilter,
        skip: u64,
        limit: u64,
    ) -> Result<Vec<ActivationRecord>, StoreError> {
        let connection = self.connection();
        let mut statement = connection.prepare_cached(&format!(
            "SELECT record FROM activations WHERE {}
             ORDER BY start DESC, activation_id DESC LIMIT ?5 OFFSET ?6",
            activation_filter(filter)
        ))?;
        let records = statement
            .query_map(params![namespace, filter.name, filter.since, filter.upto, limit, skip], |row| {
                json_column(row, 0)
            })?
            .collect::<Result<_, _>>()?;
        Ok(records)
    }

    pub fn count_activations(&self, namespace: &str, filter: &ActivationFilter) -> Result<u64, StoreError> {
        let connection = self.connection();
        let mut statement = connection.prepare_cached(&format!(
            "SELECT COUNT(*) FROM activations WHERE {}",
            activation_filter(filter)
        ))?;
        Ok(statement
            .query_row(params![namespace, filter.name, filter.since, filter.upto], |row| row.get(0))?)
    }

    /// Deletes up to `limit` records of any namespace that started before `cutoff` (epoch ms),
    /// oldest first; returns how many.
    pub fn delete_activations_before(&self, cutoff: u64, limit: u64) -> Result<u64, StoreError> {
        let connection = self.connection();
        let mut statement = connection.prepare_cached(
            "DELETE FROM activations WHERE activation_id IN
                (SELECT activation_id FROM activations WHERE start < ?1 ORDER BY start LIMIT ?2)",
        )?;
        let deleted = statement.execute(params![cutoff, limit])?;
        Ok(u64::try_from(deleted).unwrap_or(u64::MAX))
    }
}

/// `?1` namespace, `?2` name or NULL, `?3` since or NULL, `?4` upto or NULL.
/// The `WHERE` of an activation list, one text per filter shape: SQLite plans a statement once, and
/// `(?2 IS NULL OR name = ?2)` would keep it off the name index for every shape (11.8 ms instead of
/// under 1 ms for a name and time filter over 1 M records, `make bench SCENARIO=api`).
fn activation_filter(filter: &ActivationFilter) -> &'static str {
    if filter.name.is_some() {
        "namespace = ?1 AND name = ?2 AND (?3 IS NULL OR start >= ?3) AND (?4 IS NULL OR start <= ?4)"
    } else {
        "namespace = ?1 AND ?2 IS NULL AND (?3 IS NULL OR start >= ?3) AND (?4 IS NULL OR start <= ?4)"
    }
}

/// The columns [`action_from_row`] reads; `?2` says whether to load the code.
const ACTION_COLUMNS: &str = "namespace, name, version, revision, kind, CASE WHEN ?2 THEN code ELSE '' END,
    is_binary, main, image, parameters, annotations, timeout_ms, memory_mb, logs_mb, concurrency, publish,
    updated, components";

/// Writes `action` over any action of the same namespace and name.
fn insert_action(connection: &Connection, action: &Action) -> Result<(), StoreError> {
    connection.execute(
        "INSERT OR REPLACE INTO actions (namespace, name, version, revision, kind, code, is_binary,
            main, image, parameters, annotations, timeout_ms, memory_mb, logs_mb, concurrency,
            publish, updated, components)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)",
        params![
            action.namespace,
            action.name,
            action.version,
            action.revision,
            action.exec.kind,
            action.exec.code,
            action.exec.binary,
            action.exec.main,
            action.exec.image,
            encode("parameters", &action.parameters)?,
            encode("annotations", &action.annotations)?,
            action.limits.timeout,
            action.limits.memory,
            action.limits.logs,
            action.limits.concurrency,
            action.publish,
            action.updated,
            action.exec.components.as_ref().map(|components| encode("components", components)).transpose()?,
        ],
    )?;
    Ok(())
}

fn select_action(
    connection: &Connection,
    namespace: &str,
    name: &str,
    with_code: bool,
) -> Result<Option<Action>, StoreError> {
    let mut statement = connection.prepare_cached(&format!(
        "SELECT {ACTION_COLUMNS} FROM actions WHERE namespace = ?1 AND name = ?3"
    ))?;
    Ok(statement.query_row(params![namespace, with_code, name], action_from_row).optional()?)
}

fn action_from_row(row: &Row<'_>) -> rusqlite::Result<Action> {
    Ok(Action {
        namespace: row.get(0)?,
        name: row.get(1)?,
        version: row.get(2)?,
        revision: row.get(3)?,
        exec: Exec {
            kind: row.get(4)?,
            code: row.get(5)?,
            binary: row.get(6)?,
            main: row.get(7)?,
            image: row.get(8)?,
            components: optional_json_column(row, 17)?,
        },
        parameters: json_column(row, 9)?,
        annotations: json_column(row, 10)?,
        limits: ActionLimits {
            timeout: row.get(11)?,
            memory: row.get(12)?,
            logs: row.get(13)?,
            concurrency: row.get(14)?,
        },
        publish: row.get(15)?,
        updated: row.get(16)?,
    })
}

/// Reads a nullable JSON text column.
fn optional_json_column<T: DeserializeOwned>(row: &Row<'_>, index: usize) -> rusqlite::Result<Option<T>> {
    let text: Option<String> = row.get(index)?;
    text.map(|text| {
        serde_json::from_str(&text)
            .map_err(|error| rusqlite::Error::FromSqlConversionFailure(index, Type::Text, Box::new(error)))
    })
    .transpose()
}

/// Reads a JSON text column; a value that does not decode is reported like any bad column.
fn json_column<T: DeserializeOwned>(row: &Row<'_>, index: usize) -> rusqlite::Result<T> {
    let text: String = row.get(index)?;
    serde_json::from_str(&text)
        .map_err(|error| rusqlite::Error::FromSqlConversionFailure(index, Type::Text, Box::new(error)))
}

fn insert_key(connection: &Connection, namespace: &str, key: &Key, now: u64) -> Result<(), StoreError> {
    let hashed = HashedSecret::new(&key.secret);
    let inserted = connection.execute(
        "INSERT OR IGNORE INTO keys (uuid, namespace, salt, secret_hash, created) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![key.uuid, namespace, hashed.salt, hashed.hash, now],
    )?;
    if inserted == 0 {
        return Err(StoreError::KeyExists(key.uuid.clone()));
    }
    Ok(())
}

/// Applies pending migrations one by one, each in an immediate transaction that rereads the version,
/// so a server and an admin command starting together never apply one twice.
fn migrate(connection: &mut Connection) -> Result<usize, StoreError> {
    let mut applied = 0;
    loop {
        let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let version: usize = transaction.pragma_query_value(None, "user_version", |row| row.get(0))?;
        if version > MIGRATIONS.len() {
            return Err(StoreError::SchemaTooNew { found: version, known: MIGRATIONS.len() });
        }
        let Some(sql) = MIGRATIONS.get(version) else {
            return Ok(applied);
        };
        let next = version + 1;
        let to_error = |source| StoreError::Migration { version: next, source };
        transaction.execute_batch(sql).map_err(to_error)?;
        transaction.pragma_update(None, "user_version", next).map_err(to_error)?;
        transaction.commit().map_err(to_error)?;
        applied += 1;
    }
}

#[cfg(test)]
mod tests {
    //! What only SQLite has: the file, `PRAGMA user_version`, the raw key columns. The rest of the
    //! suite runs against both backends in `store::conformance`.

    use super::*;
    use crate::store::conformance::{action, record};

    fn put(store: &SqliteStore, action: Action) -> Action {
        let (namespace, name) = (action.namespace.clone(), action.name.clone());
        store.put_action::<StoreError>(&namespace, &name, |_| Ok(action)).unwrap()
    }

    #[test]
    fn everything_survives_a_reopen() {
        let directory = tempfile::tempdir().unwrap();
        let key = Key::generate();
        {
            let store = SqliteStore::open(directory.path()).unwrap();
            store.create_namespace("guest", &key, 1).unwrap();
            put(&store, action("hello", 1));
            store.put_activations(&[record("a1", "hello", 10)]).unwrap();
        }
        let store = SqliteStore::open(directory.path()).unwrap();
        assert_eq!(store.authenticate(&key).unwrap().as_deref(), Some("guest"));
        assert_eq!(store.get_action("guest", "hello", true).unwrap(), Some(action("hello", 1)));
        assert_eq!(store.get_activation("guest", "a1").unwrap(), Some(record("a1", "hello", 10)));
    }

    #[test]
    fn migrations_run_once() {
        let directory = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(directory.path()).unwrap();
        assert_eq!(store.schema_version().unwrap(), MIGRATIONS.len());
        assert_eq!(store.migrate().unwrap(), 0);
        drop(store);
        let store = SqliteStore::open(directory.path()).unwrap();
        assert_eq!(store.schema_version().unwrap(), MIGRATIONS.len());
    }

    #[test]
    fn a_version_1_database_upgrades_with_its_actions_listed() {
        let directory = tempfile::tempdir().unwrap();
        {
            let connection = Connection::open(directory.path().join(DATABASE_FILE)).unwrap();
            connection.execute_batch(MIGRATIONS[0]).unwrap();
            connection.pragma_update(None, "user_version", 1).unwrap();
            // Version 1's columns, as a binary of that time wrote them.
            connection
                .execute(
                    "INSERT INTO actions (namespace, name, version, revision, kind, code, is_binary,
                        main, image, parameters, annotations, timeout_ms, memory_mb, logs_mb,
                        concurrency, publish, updated)
                     VALUES ('guest', 'old', '0.0.1', 'r1', 'nodejs:20', 'function main() {}', 0,
                        NULL, NULL, '[]', '[]', 60000, 256, 10, 1, 0, 1)",
                    [],
                )
                .unwrap();
        }
        let store = SqliteStore::open(directory.path()).unwrap();
        assert_eq!(store.schema_version().unwrap(), MIGRATIONS.len());
        let listed = store.list_actions("guest", 0, 30).unwrap();
        assert_eq!(listed[0].name, "old");
        assert_eq!(listed[0].exec.components, None, "an action of before sequences is not one");
        assert_eq!(store.count_packages("guest").unwrap(), 0);
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let directory = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(directory.path()).unwrap();
        store.connection().pragma_update(None, "user_version", 99).unwrap();
        drop(store);
        let error = SqliteStore::open(directory.path()).unwrap_err();
        assert!(matches!(error, StoreError::SchemaTooNew { found: 99, .. }), "{error}");
    }

    #[test]
    fn keys_are_stored_hashed() {
        let store = SqliteStore::open_in_memory().unwrap();
        let key = Key::generate();
        store.create_namespace("alice", &key, 1).unwrap();
        let (salt, hash): (Vec<u8>, Vec<u8>) = store
            .connection()
            .query_row("SELECT salt, secret_hash FROM keys WHERE uuid = ?1", [&key.uuid], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })
            .unwrap();
        assert_eq!(salt.len(), crate::auth::SALT_LENGTH);
        assert_ne!(hash, key.secret.as_bytes());
        let dump: String = store
            .connection()
            .query_row(
                "SELECT group_concat(uuid || namespace || hex(salt) || hex(secret_hash)) FROM keys",
                [],
                |row| row.get(0),
            )
            .unwrap();
        assert!(!dump.contains(&key.secret) && !dump.contains(&hex::encode_upper(key.secret.as_bytes())));
    }
}
