//! The PostgreSQL backend (`--database-url`): what several replicas share.
//!
//! ```text
//!  blocking thread ─► method ─► pooled Client ─(channel)─► connection task ─► PostgreSQL
//!                      └ futures::executor::block_on        └ on the store's own runtime
//! ```
//!
//! The methods are the SQLite backend's: synchronous, called on a blocking thread. Underneath are
//! tokio-postgres clients, at most [`POOL_SIZE`], whose connection tasks run on a one-thread
//! runtime the store owns. A method waits for its client's answers with
//! `futures::executor::block_on`, which needs no runtime of its own, so the store can be opened,
//! used and dropped from plain threads, blocking threads and async tests alike (the `postgres`
//! crate's blocking client cannot be dropped inside async code).
//!
//! SQLite serialises every writer (`BEGIN IMMEDIATE`); here a read-modify-write (a `put_*` with its
//! `build` closure, `delete_package`) holds a transaction-scoped advisory lock on the entity it
//! changes, so two replicas cannot both find a name free and both create it. A packaged action
//! also locks its package, as `delete_package` does, so no action slips into a package being
//! deleted. Single statements (`DELETE … RETURNING`, `UPDATE … RETURNING`, upserts) need no lock.
//!
//! Schema changes are SQL files under `migrations/postgres/`, each applied in its own transaction
//! under an advisory lock and recorded as a row of `schema_version`.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Condvar, LazyLock, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures::executor::block_on;
use serde::de::DeserializeOwned;
use sha2::{Digest as _, Sha256};
use tokio::runtime::{Handle, Runtime};
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, Config, GenericClient, NoTls, Row, Statement};
use whisk_contract::{ActionLimits, ActivationRecord};

use super::{ActivationFilter, StoreError, encode};
use crate::actions::{Action, Exec};
use crate::auth::{HashedSecret, Key};

mod packages;
mod triggers;

/// Migrations in order; migration `i` (from 0) brings the schema to version `i + 1`.
const MIGRATIONS: &[&str] = &[
    include_str!("../../migrations/postgres/0001_init.sql"),
    include_str!("../../migrations/postgres/0002_activation_retention.sql"),
    include_str!("../../migrations/postgres/0003_sequences.sql"),
];

/// Connections one store opens at most; more concurrent calls wait for one to come back.
pub const POOL_SIZE: usize = 8;

/// How long connecting may take, unless the URL says (`connect_timeout`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// See the module documentation.
pub struct PostgresStore {
    config: Config,
    pool: Pool,
    /// The schema [`PostgresStore::connect_private`] created, dropped with the store.
    private_schema: Option<String>,
    handle: Handle,
    /// Declared last: shut down after the pooled clients are gone.
    _driver: Driver,
}

impl fmt::Debug for PostgresStore {
    /// The config's `Debug` hides the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore")
            .field("config", &self.config)
            .field("private_schema", &self.private_schema)
            .finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Connects to the database at `url` (a `postgres://` URL or libpq's `key=value` form) and
    /// brings its schema up to date. Tables go in the first schema of the connection's
    /// `search_path` (`public` by default; `options=-csearch_path%3Dname` in the URL picks another).
    pub fn connect(url: &str) -> Result<Self, StoreError> {
        let config = url.parse().map_err(StoreError::PostgresUrl)?;
        let store = Self::start(config)?;
        store.migrate()?;
        Ok(store)
    }

    /// A fresh schema in the database at `url`, dropped with the store: for tests.
    pub fn connect_private(url: &str) -> Result<Self, StoreError> {
        let config: Config = url.parse().map_err(StoreError::PostgresUrl)?;
        let mut store = Self::start(config)?;
        let schema = format!("whisk_private_{}", uuid::Uuid::new_v4().simple());
        let create = format!("CREATE SCHEMA {schema}");
        store.run(async |client| Ok::<_, StoreError>(client.batch_execute(&create).await?))?;
        // Connections made from now on work in the new schema only.
        store.pool = Pool::default();
        let options = match store.config.get_options() {
            Some(options) => format!("{options} -c search_path={schema}"),
            None => format!("-c search_path={schema}"),
        };
        store.config.options(options);
        store.private_schema = Some(schema);
        store.migrate()?;
        Ok(store)
    }

    /// The schema [`PostgresStore::connect_private`] created.
    pub fn private_schema(&self) -> Option<&str> {
        self.private_schema.as_deref()
    }

    fn start(mut config: Config) -> Result<Self, StoreError> {
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("whisk-management-api");
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("whisk-postgres")
            .enable_all()
            .build()
            .map_err(StoreError::PostgresRuntime)?;
        Ok(Self {
            config,
            pool: Pool::default(),
            private_schema: None,
            handle: runtime.handle().clone(),
            _driver: Driver(Some(runtime)),
        })
    }

    /// Runs `work` with a pooled client and waits for it on this thread.
    fn run<R, E: From<StoreError>>(
        &self,
        work: impl AsyncFnOnce(&mut Client) -> Result<R, E>,
    ) -> Result<R, E> {
        let mut pooled = self.checkout()?;
        let session = pooled.client.as_mut().ok_or_else(|| StoreError::Task("no pooled client".into()))?;
        block_on(work(&mut session.client))
    }

    /// Runs `sql` as a statement this connection prepared on its first use and keeps: PostgreSQL
    /// then neither parses nor plans it again (the hot reads: every action GET and resolve miss).
    fn query_prepared_opt(
        &self,
        sql: &'static str,
        types: &[Type],
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, StoreError> {
        let mut pooled = self.checkout()?;
        let session = pooled.client.as_mut().ok_or_else(|| StoreError::Task("no pooled client".into()))?;
        block_on(async {
            let statement = match session.statements.get(sql) {
                Some(statement) => statement.clone(),
                None => {
                    let statement = session.client.prepare_typed(sql, types).await?;
                    session.statements.insert(sql, statement.clone());
                    statement
                }
            };
            Ok(session.client.query_opt(&statement, params).await?)
        })
    }

    /// An idle client, a new one while fewer than [`POOL_SIZE`] are open, or the next one returned.
    fn checkout(&self) -> Result<Pooled<'_>, StoreError> {
        let mut state = self.pool.state();
        loop {
            if let Some(client) = state.idle.pop() {
                if client.client.is_closed() {
                    state.open -= 1;
                    continue;
                }
                return Ok(Pooled { pool: &self.pool, client: Some(client) });
            }
            if state.open < POOL_SIZE {
                state.open += 1;
                drop(state);
                // Counted before connecting, so a failure gives the slot back through `Pooled`.
                let mut pooled = Pooled { pool: &self.pool, client: None };
                pooled.client = Some(Session { client: self.open_client()?, statements: HashMap::new() });
                return Ok(pooled);
            }
            state = self.pool.available.wait(state).unwrap_or_else(PoisonError::into_inner);
        }
    }

    fn open_client(&self) -> Result<Client, StoreError> {
        let config = self.config.clone();
        let task = self.handle.spawn(async move {
            let (client, connection) = config.connect(NoTls).await?;
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::warn!(error = %describe(&error), "PostgreSQL connection failed");
                }
            });
            Ok::<_, tokio_postgres::Error>(client)
        });
        block_on(task)
            .map_err(|error| StoreError::Task(error.to_string()))?
            .map_err(StoreError::PostgresConnect)
    }

    /// How many migrations have been applied.
    pub fn schema_version(&self) -> Result<usize, StoreError> {
        self.run(async |client| current_version(client).await)
    }

    /// Applies any migration not yet applied; returns how many ran.
    pub fn migrate(&self) -> Result<usize, StoreError> {
        self.run(async |client| migrate(client).await)
    }

    /// Creates `namespace` with its first key; fails if the namespace exists.
    pub fn create_namespace(&self, namespace: &str, key: &Key, now: u64) -> Result<(), StoreError> {
        let now = bigint("time", now)?;
        self.run(async |client| {
            let transaction = client.transaction().await?;
            let inserted = transaction
                .execute(
                    "INSERT INTO namespaces (name, created) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                    &[&namespace, &now],
                )
                .await?;
            if inserted == 0 {
                return Err(StoreError::NamespaceExists(namespace.to_owned()));
            }
            if !insert_key(&transaction, namespace, key, now).await? {
                return Err(StoreError::KeyExists(key.uuid.clone()));
            }
            transaction.commit().await?;
            Ok(())
        })
    }

    /// Makes sure `namespace` exists and accepts `key`; does nothing if the key is already stored.
    pub fn ensure_namespace_key(&self, namespace: &str, key: &Key, now: u64) -> Result<(), StoreError> {
        let now = bigint("time", now)?;
        self.run(async |client| {
            let transaction = client.transaction().await?;
            transaction
                .execute(
                    "INSERT INTO namespaces (name, created) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                    &[&namespace, &now],
                )
                .await?;
            insert_key(&transaction, namespace, key, now).await?;
            transaction.commit().await?;
            Ok(())
        })
    }

    /// Deletes `namespace` and its keys (its actions and activations stay, as in OpenWhisk).
    /// Returns whether it existed.
    pub fn delete_namespace(&self, namespace: &str) -> Result<bool, StoreError> {
        self.run(async |client| {
            Ok(client.execute("DELETE FROM namespaces WHERE name = $1", &[&namespace]).await? > 0)
        })
    }

    /// The namespace `key` belongs to, if its secret is right.
    pub fn authenticate(&self, key: &Key) -> Result<Option<String>, StoreError> {
        let row = self.run(async |client| {
            Ok::<_, StoreError>(
                client
                    .query_opt("SELECT namespace, salt, secret_hash FROM keys WHERE uuid = $1", &[&key.uuid])
                    .await?,
            )
        })?;
        let Some(row) = row else {
            return Ok(None);
        };
        let hashed = HashedSecret { salt: row.try_get(1)?, hash: row.try_get(2)? };
        Ok(hashed.verify(&key.secret).then(|| row.try_get(0)).transpose()?)
    }

    /// The action, with its code only when `with_code` (code can weigh up to 48 MB).
    pub fn get_action(
        &self,
        namespace: &str,
        name: &str,
        with_code: bool,
    ) -> Result<Option<Action>, StoreError> {
        let row = self.query_prepared_opt(
            &SELECT_ACTION,
            &[Type::TEXT, Type::BOOL, Type::TEXT],
            &[&namespace, &with_code, &name],
        )?;
        row.as_ref().map(action_from_row).transpose()
    }

    /// Creates or replaces an action atomically: `build` sees the current version (with code) and
    /// returns the new one, or an error that leaves the store untouched.
    pub fn put_action<E: From<StoreError>>(
        &self,
        namespace: &str,
        name: &str,
        build: impl FnOnce(Option<Action>) -> Result<Action, E>,
    ) -> Result<Action, E> {
        self.run(async |client| {
            let transaction = client.transaction().await.map_err(StoreError::from)?;
            lock(&transaction, &["action", namespace, name]).await?;
            let existing = select_action(&transaction, namespace, name, true).await?;
            let action = build(existing)?;
            upsert_action(&transaction, &action).await?;
            transaction.commit().await.map_err(StoreError::from)?;
            Ok(action)
        })
    }

    /// Deletes the action and returns what it was.
    pub fn delete_action(&self, namespace: &str, name: &str) -> Result<Option<Action>, StoreError> {
        self.run(async |client| {
            let row = client
                .query_opt(
                    &format!(
                        "DELETE FROM actions WHERE namespace = $1 AND name = $3 RETURNING {ACTION_COLUMNS}"
                    ),
                    &[&namespace, &true, &name],
                )
                .await?;
            row.as_ref().map(action_from_row).transpose()
        })
    }

    /// One page of the namespace's actions, packaged ones included, most recently updated first,
    /// without code.
    pub fn list_actions(&self, namespace: &str, skip: u64, limit: u64) -> Result<Vec<Action>, StoreError> {
        let (skip, limit) = (bigint("skip", skip)?, bigint("limit", limit)?);
        self.run(async |client| {
            let rows = client
                .query(
                    &format!(
                        "SELECT {ACTION_COLUMNS} FROM actions WHERE root_namespace = $1
                         ORDER BY updated DESC, namespace, name LIMIT $3 OFFSET $4"
                    ),
                    &[&namespace, &false, &limit, &skip],
                )
                .await?;
            rows.iter().map(action_from_row).collect()
        })
    }

    /// How many actions the namespace holds, packaged ones included.
    pub fn count_actions(&self, namespace: &str) -> Result<u64, StoreError> {
        self.count("SELECT COUNT(*) FROM actions WHERE root_namespace = $1", namespace)
    }

    /// Stores the records in one transaction; a record whose id is already stored is replaced, so
    /// a retried batch is harmless.
    pub fn put_activations(&self, records: &[ActivationRecord]) -> Result<(), StoreError> {
        let rows = records
            .iter()
            .map(|record| Ok((record, bigint("start", record.start)?, encode("activation", record)?)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        self.run(async |client| {
            let transaction = client.transaction().await?;
            let statement = transaction
                .prepare(
                    "INSERT INTO activations (activation_id, namespace, name, start, record)
                     VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT (activation_id) DO UPDATE SET namespace = EXCLUDED.namespace,
                        name = EXCLUDED.name, start = EXCLUDED.start, record = EXCLUDED.record",
                )
                .await?;
            for (record, start, json) in &rows {
                transaction
                    .execute(
                        &statement,
                        &[&record.activation_id, &record.namespace, &record.name, start, json],
                    )
                    .await?;
            }
            transaction.commit().await?;
            Ok(())
        })
    }

    pub fn get_activation(&self, namespace: &str, id: &str) -> Result<Option<ActivationRecord>, StoreError> {
        self.run(async |client| {
            let row = client
                .query_opt(
                    "SELECT record FROM activations WHERE namespace = $1 AND activation_id = $2",
                    &[&namespace, &id],
                )
                .await?;
            row.map(|row| json_column(&row, 0)).transpose()
        })
    }

    /// One page of the namespace's activations, newest first.
    pub fn list_activations(
        &self,
        namespace: &str,
        filter: &ActivationFilter,
        skip: u64,
        limit: u64,
    ) -> Result<Vec<ActivationRecord>, StoreError> {
        let (since, upto) = filter_bounds(filter)?;
        let (skip, limit) = (bigint("skip", skip)?, bigint("limit", limit)?);
        self.run(async |client| {
            let rows = client
                .query(
                    &format!(
                        "SELECT record FROM activations WHERE {ACTIVATION_FILTER}
                         ORDER BY start DESC, activation_id DESC LIMIT $5 OFFSET $6"
                    ),
                    &[&namespace, &filter.name, &since, &upto, &limit, &skip],
                )
                .await?;
            rows.iter().map(|row| json_column(row, 0)).collect()
        })
    }

    pub fn count_activations(&self, namespace: &str, filter: &ActivationFilter) -> Result<u64, StoreError> {
        let (since, upto) = filter_bounds(filter)?;
        self.run(async |client| {
            let row = client
                .query_one(
                    &format!("SELECT COUNT(*) FROM activations WHERE {ACTIVATION_FILTER}"),
                    &[&namespace, &filter.name, &since, &upto],
                )
                .await?;
            unsigned(&row, 0)
        })
    }

    /// Deletes up to `limit` records of any namespace that started before `cutoff` (epoch ms),
    /// oldest first; returns how many.
    pub fn delete_activations_before(&self, cutoff: u64, limit: u64) -> Result<u64, StoreError> {
        let (cutoff, limit) = (bigint("cutoff", cutoff)?, bigint("limit", limit)?);
        self.run(async |client| {
            Ok(client
                .execute(
                    "DELETE FROM activations WHERE activation_id IN
                        (SELECT activation_id FROM activations WHERE start < $1 ORDER BY start LIMIT $2)",
                    &[&cutoff, &limit],
                )
                .await?)
        })
    }

    /// The single count `sql` answers for `$1` = `namespace`.
    fn count(&self, sql: &str, namespace: &str) -> Result<u64, StoreError> {
        self.run(async |client| unsigned(&client.query_one(sql, &[&namespace]).await?, 0))
    }
}

impl Drop for PostgresStore {
    /// Drops the private schema, if any; its failure is only logged (the store is going anyway).
    fn drop(&mut self) {
        if let Some(schema) = self.private_schema.take() {
            let drop_schema = format!("DROP SCHEMA IF EXISTS {schema} CASCADE");
            let dropped =
                self.run(async |client| Ok::<_, StoreError>(client.batch_execute(&drop_schema).await?));
            if let Err(error) = dropped {
                tracing::warn!(%error, schema, "cannot drop the private schema");
            }
        }
    }
}

/// Owns the runtime that drives the connections and shuts it down without waiting: a plain drop
/// would panic when the store is dropped inside async code.
struct Driver(Option<Runtime>);

impl Drop for Driver {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

#[derive(Default)]
struct Pool {
    state: Mutex<PoolState>,
    available: Condvar,
}

#[derive(Default)]
struct PoolState {
    idle: Vec<Session>,
    /// Idle, checked out, or being connected.
    open: usize,
}

impl Pool {
    /// A poisoned lock only means a thread panicked while moving a client in or out of `idle`;
    /// the list and count are still consistent.
    fn state(&self) -> MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A connection and the statements it prepared (a prepared statement belongs to its connection).
struct Session {
    client: Client,
    statements: HashMap<&'static str, Statement>,
}

/// A checked-out client; dropping it returns it (or, if its connection is gone, its slot).
struct Pooled<'a> {
    pool: &'a Pool,
    client: Option<Session>,
}

impl Drop for Pooled<'_> {
    fn drop(&mut self) {
        let mut state = self.pool.state();
        match self.client.take() {
            Some(session) if !session.client.is_closed() => state.idle.push(session),
            _ => state.open -= 1,
        }
        self.pool.available.notify_one();
    }
}

/// A PostgreSQL error with its causes: tokio-postgres's own `Display` says only "db error".
pub(crate) fn describe(error: &tokio_postgres::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Waits for, then holds until the transaction ends, the advisory lock named by `parts`.
async fn lock(client: &impl GenericClient, parts: &[&str]) -> Result<(), StoreError> {
    client.execute("SELECT pg_advisory_xact_lock($1)", &[&lock_key(parts)]).await?;
    Ok(())
}

/// A 64-bit advisory lock key for `parts`; a collision only makes two writers take turns.
fn lock_key(parts: &[&str]) -> i64 {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    let mut key = [0; 8];
    key.copy_from_slice(&hasher.finalize()[..8]);
    i64::from_be_bytes(key)
}

/// Applies pending migrations one by one, each in a transaction holding the migration lock that
/// rereads the version, so replicas and admin commands starting together never apply one twice.
async fn migrate(client: &mut Client) -> Result<usize, StoreError> {
    let mut applied = 0;
    loop {
        let transaction = client.transaction().await?;
        lock(&transaction, &["schema_version"]).await?;
        // Else the notice that the table exists is logged on every start (LOCAL: until commit).
        transaction
            .batch_execute(
                "SET LOCAL client_min_messages = warning;
                 CREATE TABLE IF NOT EXISTS schema_version (
                    version INTEGER PRIMARY KEY,
                    applied BIGINT NOT NULL -- epoch milliseconds
                 )",
            )
            .await?;
        let version = current_version(&transaction).await?;
        if version > MIGRATIONS.len() {
            return Err(StoreError::SchemaTooNew { found: version, known: MIGRATIONS.len() });
        }
        let Some(sql) = MIGRATIONS.get(version) else {
            transaction.commit().await?;
            return Ok(applied);
        };
        let next = version + 1;
        let to_error = |source| StoreError::PostgresMigration { version: next, source };
        transaction.batch_execute(sql).await.map_err(to_error)?;
        let (recorded, now) =
            (i32::try_from(next).unwrap_or(i32::MAX), bigint("time", crate::state::epoch_millis())?);
        transaction
            .execute("INSERT INTO schema_version (version, applied) VALUES ($1, $2)", &[&recorded, &now])
            .await
            .map_err(to_error)?;
        transaction.commit().await.map_err(to_error)?;
        applied += 1;
    }
}

async fn current_version(client: &impl GenericClient) -> Result<usize, StoreError> {
    let row = client.query_one("SELECT COALESCE(MAX(version), 0) FROM schema_version", &[]).await?;
    let version: i32 = row.try_get(0)?;
    usize::try_from(version)
        .map_err(|_| StoreError::Corrupt { what: "schema version", detail: version.to_string() })
}

/// Inserts the key's salted hash; `false` if a key with its uuid exists.
async fn insert_key(
    client: &impl GenericClient,
    namespace: &str,
    key: &Key,
    now: i64,
) -> Result<bool, StoreError> {
    let hashed = HashedSecret::new(&key.secret);
    let inserted = client
        .execute(
            "INSERT INTO keys (uuid, namespace, salt, secret_hash, created) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT DO NOTHING",
            &[&key.uuid, &namespace, &hashed.salt, &hashed.hash, &now],
        )
        .await?;
    Ok(inserted > 0)
}

/// `$1` namespace, `$2` name or NULL, `$3` since or NULL, `$4` upto or NULL.
const ACTIVATION_FILTER: &str = "namespace = $1 AND ($2::text IS NULL OR name = $2)
    AND ($3::bigint IS NULL OR start >= $3) AND ($4::bigint IS NULL OR start <= $4)";

fn filter_bounds(filter: &ActivationFilter) -> Result<(Option<i64>, Option<i64>), StoreError> {
    let since = filter.since.map(|since| bigint("since", since)).transpose()?;
    let upto = filter.upto.map(|upto| bigint("upto", upto)).transpose()?;
    Ok((since, upto))
}

/// The columns [`action_from_row`] reads; `$2` says whether to load the code.
/// One action by namespace (`$1`) and name (`$3`); `$2` says whether to read its code.
static SELECT_ACTION: LazyLock<String> =
    LazyLock::new(|| format!("SELECT {ACTION_COLUMNS} FROM actions WHERE namespace = $1 AND name = $3"));

const ACTION_COLUMNS: &str = "namespace, name, version, revision, kind, CASE WHEN $2 THEN code ELSE '' END,
    is_binary, main, image, parameters, annotations, timeout_ms, memory_mb, logs_mb, concurrency, publish,
    updated, components";

/// Writes `action` over any action of the same namespace and name.
async fn upsert_action(client: &impl GenericClient, action: &Action) -> Result<(), StoreError> {
    let limits = &action.limits;
    let (timeout, memory, logs, concurrency, updated) = (
        bigint("timeout", limits.timeout)?,
        bigint("memory", limits.memory)?,
        bigint("logs", limits.logs)?,
        bigint("concurrency", limits.concurrency)?,
        bigint("time", action.updated)?,
    );
    let components =
        action.exec.components.as_ref().map(|components| encode("components", components)).transpose()?;
    client
        .execute(
            "INSERT INTO actions (namespace, name, version, revision, kind, code, is_binary, main, image,
                parameters, annotations, timeout_ms, memory_mb, logs_mb, concurrency, publish, updated,
                components)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)
             ON CONFLICT (namespace, name) DO UPDATE SET version = EXCLUDED.version,
                revision = EXCLUDED.revision, kind = EXCLUDED.kind, code = EXCLUDED.code,
                is_binary = EXCLUDED.is_binary, main = EXCLUDED.main, image = EXCLUDED.image,
                parameters = EXCLUDED.parameters, annotations = EXCLUDED.annotations,
                timeout_ms = EXCLUDED.timeout_ms, memory_mb = EXCLUDED.memory_mb,
                logs_mb = EXCLUDED.logs_mb, concurrency = EXCLUDED.concurrency,
                publish = EXCLUDED.publish, updated = EXCLUDED.updated,
                components = EXCLUDED.components",
            &[
                &action.namespace,
                &action.name,
                &action.version,
                &action.revision,
                &action.exec.kind,
                &action.exec.code,
                &action.exec.binary,
                &action.exec.main,
                &action.exec.image,
                &encode("parameters", &action.parameters)?,
                &encode("annotations", &action.annotations)?,
                &timeout,
                &memory,
                &logs,
                &concurrency,
                &action.publish,
                &updated,
                &components,
            ],
        )
        .await?;
    Ok(())
}

async fn select_action(
    client: &impl GenericClient,
    namespace: &str,
    name: &str,
    with_code: bool,
) -> Result<Option<Action>, StoreError> {
    // Typed parameters let the statement go out with its execution in one round trip (an untyped
    // one is prepared first, a round trip of its own).
    let row = client
        .query_typed_opt(
            &SELECT_ACTION,
            &[(&namespace, Type::TEXT), (&with_code, Type::BOOL), (&name, Type::TEXT)],
        )
        .await?;
    row.as_ref().map(action_from_row).transpose()
}

fn action_from_row(row: &Row) -> Result<Action, StoreError> {
    Ok(Action {
        namespace: row.try_get(0)?,
        name: row.try_get(1)?,
        version: row.try_get(2)?,
        revision: row.try_get(3)?,
        exec: Exec {
            kind: row.try_get(4)?,
            code: row.try_get(5)?,
            binary: row.try_get(6)?,
            main: row.try_get(7)?,
            image: row.try_get(8)?,
            components: optional_json_column(row, 17)?,
        },
        parameters: json_column(row, 9)?,
        annotations: json_column(row, 10)?,
        limits: ActionLimits {
            timeout: unsigned(row, 11)?,
            memory: unsigned(row, 12)?,
            logs: unsigned(row, 13)?,
            concurrency: unsigned(row, 14)?,
        },
        publish: row.try_get(15)?,
        updated: unsigned(row, 16)?,
    })
}

/// `value` as a `BIGINT`; beyond `i64::MAX` it is refused, as SQLite refuses it.
fn bigint(what: &'static str, value: u64) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::OutOfRange { what, value })
}

/// A `BIGINT` column that must not be negative.
fn unsigned(row: &Row, index: usize) -> Result<u64, StoreError> {
    let value: i64 = row.try_get(index)?;
    u64::try_from(value)
        .map_err(|_| StoreError::Corrupt { what: "number", detail: format!("column {index} holds {value}") })
}

/// Reads a nullable JSON text column.
fn optional_json_column<T: DeserializeOwned>(row: &Row, index: usize) -> Result<Option<T>, StoreError> {
    let text: Option<&str> = row.try_get(index)?;
    text.map(|text| {
        serde_json::from_str(text)
            .map_err(|error| StoreError::Corrupt { what: "JSON", detail: format!("column {index}: {error}") })
    })
    .transpose()
}

/// Reads a JSON text column.
fn json_column<T: DeserializeOwned>(row: &Row, index: usize) -> Result<T, StoreError> {
    let text: &str = row.try_get(index)?;
    serde_json::from_str(text)
        .map_err(|error| StoreError::Corrupt { what: "JSON", detail: format!("column {index}: {error}") })
}

#[cfg(test)]
mod tests {
    //! What only PostgreSQL has: the `schema_version` table, the raw key columns, the private
    //! schema, the pool. The rest of the suite runs against both backends in `store::conformance`.

    use tokio_postgres::types::ToSql;

    use super::*;
    use crate::store::conformance::{POSTGRES_URL_VARIABLE, action, put, record};
    use crate::store::{Store, conformance};

    fn store() -> Option<PostgresStore> {
        match conformance::postgres()? {
            Store::Postgres(store) => Some(store),
            Store::Sqlite(_) => None,
        }
    }

    fn query_one(store: &PostgresStore, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Row {
        store.run(async |client| Ok::<_, StoreError>(client.query_one(sql, params).await?)).unwrap()
    }

    /// A second store on the same schema, as another replica would open it.
    fn replica(store: &PostgresStore) -> Result<PostgresStore, StoreError> {
        let replica = PostgresStore::start(store.config.clone())?;
        replica.migrate()?;
        Ok(replica)
    }

    #[test]
    fn migrations_are_recorded_and_run_once() {
        let Some(store) = store() else { return };
        assert_eq!(store.schema_version().unwrap(), MIGRATIONS.len());
        let rows: i64 = query_one(&store, "SELECT COUNT(*) FROM schema_version", &[]).get(0);
        assert_eq!(usize::try_from(rows).unwrap(), MIGRATIONS.len());
        assert_eq!(replica(&store).unwrap().schema_version().unwrap(), MIGRATIONS.len());
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let Some(store) = store() else { return };
        query_one(&store, "INSERT INTO schema_version VALUES (99, 0) RETURNING version", &[]);
        let error = replica(&store).unwrap_err();
        assert!(matches!(error, StoreError::SchemaTooNew { found: 99, .. }), "{error}");
    }

    #[test]
    fn replicas_share_everything() {
        let Some(store) = store() else { return };
        let other = replica(&store).unwrap();
        let key = Key::generate();
        store.create_namespace("guest", &key, 1).unwrap();
        put(&Store::Postgres(replica(&store).unwrap()), action("hello", 1));
        store.put_activations(&[record("a1", "hello", 10)]).unwrap();
        assert_eq!(other.authenticate(&key).unwrap().as_deref(), Some("guest"));
        assert_eq!(other.get_action("guest", "hello", true).unwrap(), Some(action("hello", 1)));
        assert_eq!(other.get_activation("guest", "a1").unwrap(), Some(record("a1", "hello", 10)));
    }

    #[test]
    fn keys_are_stored_hashed() {
        let Some(store) = store() else { return };
        let key = Key::generate();
        store.create_namespace("alice", &key, 1).unwrap();
        let row = query_one(&store, "SELECT salt, secret_hash FROM keys WHERE uuid = $1", &[&key.uuid]);
        let (salt, hash): (Vec<u8>, Vec<u8>) = (row.get(0), row.get(1));
        assert_eq!(salt.len(), crate::auth::SALT_LENGTH);
        assert_ne!(hash, key.secret.as_bytes());
        let dump: String = query_one(
            &store,
            "SELECT string_agg(uuid || namespace || encode(salt, 'hex') || encode(secret_hash, 'hex'), ',')
             FROM keys",
            &[],
        )
        .get(0);
        assert!(!dump.contains(&key.secret) && !dump.contains(&hex::encode(key.secret.as_bytes())));
    }

    #[test]
    fn the_private_schema_goes_with_the_store() {
        let Some(store) = store() else { return };
        let schema = store.private_schema().unwrap().to_owned();
        let url = std::env::var(POSTGRES_URL_VARIABLE).unwrap();
        let observer = PostgresStore::start(url.parse().unwrap()).unwrap();
        let exists = |name: &str| {
            query_one(&observer, "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)", &[&name])
                .get::<_, bool>(0)
        };
        assert!(exists(&schema));
        drop(store);
        assert!(!exists(&schema));
    }

    #[test]
    fn concurrent_creates_of_one_name_admit_one() {
        let Some(store) = store() else { return };
        let replicas: Vec<_> = (0..4).map(|_| replica(&store).unwrap()).collect();
        let created = std::thread::scope(|scope| {
            let attempts: Vec<_> = replicas
                .iter()
                .enumerate()
                .map(|(index, replica)| {
                    scope.spawn(move || {
                        replica.put_action("guest", "once", |existing| match existing {
                            Some(_) => Err(StoreError::Task("exists".into())),
                            None => {
                                // Widen the window between the read and the write.
                                std::thread::sleep(Duration::from_millis(50));
                                Ok(action("once", index as u64))
                            }
                        })
                    })
                })
                .collect();
            attempts
                .into_iter()
                .map(|attempt| attempt.join())
                .filter(|result| matches!(result, Ok(Ok(_))))
                .count()
        });
        assert_eq!(created, 1);
    }

    #[test]
    fn more_callers_than_connections_take_turns() {
        let Some(store) = store() else { return };
        std::thread::scope(|scope| {
            for _ in 0..POOL_SIZE * 2 {
                scope.spawn(|| {
                    for _ in 0..5 {
                        store.count_actions("guest").unwrap();
                    }
                });
            }
        });
        assert!(store.pool.state().open <= POOL_SIZE);
    }

    #[test]
    fn bad_urls_and_unreachable_servers_are_reported() {
        assert!(matches!(
            PostgresStore::connect("postgres://host:notaport/db"),
            Err(StoreError::PostgresUrl(_))
        ));
        // A port nothing listens on (reserved, never assigned).
        let error = PostgresStore::connect("postgres://nobody@127.0.0.1:1/db?connect_timeout=2").unwrap_err();
        assert!(matches!(error, StoreError::PostgresConnect(_)), "{error}");
        assert!(error.to_string().contains("onnect"), "{error}");
    }
}
