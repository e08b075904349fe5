//! Packages and bindings, and the actions a package holds (stored in namespace `ns/pkg`).

use tokio_postgres::{GenericClient, Row};

use super::{
    ACTION_COLUMNS, PostgresStore, StoreError, action_from_row, bigint, encode, json_column, lock,
    select_action, unsigned, upsert_action,
};
use crate::actions::Action;
use crate::packages::{Binding, Package};

/// The packages another namespace may list: published ones, bindings never.
const PUBLISHED_ONLY: &str = "AND publish AND binding_namespace IS NULL";

const PACKAGE_COLUMNS: &str =
    "namespace, name, version, publish, parameters, annotations, binding_namespace, binding_name, updated";

impl PostgresStore {
    pub fn get_package(&self, namespace: &str, name: &str) -> Result<Option<Package>, StoreError> {
        self.run(async |client| select_package(client, namespace, name).await)
    }

    /// Creates or replaces a package atomically: `build` sees the current one and returns the new
    /// one, or an error that leaves the store untouched.
    pub fn put_package<E: From<StoreError>>(
        &self,
        namespace: &str,
        name: &str,
        build: impl FnOnce(Option<Package>) -> Result<Package, E>,
    ) -> Result<Package, E> {
        self.run(async |client| {
            let transaction = client.transaction().await.map_err(StoreError::from)?;
            lock(&transaction, &["package", namespace, name]).await?;
            let existing = select_package(&transaction, namespace, name).await?;
            let package = build(existing)?;
            let (binding_namespace, binding_name) = match &package.binding {
                Some(binding) => (Some(binding.namespace.as_str()), Some(binding.name.as_str())),
                None => (None, None),
            };
            let updated = bigint("time", package.updated)?;
            transaction
                .execute(
                    &format!(
                        "INSERT INTO packages ({PACKAGE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                         ON CONFLICT (namespace, name) DO UPDATE SET version = EXCLUDED.version,
                            publish = EXCLUDED.publish, parameters = EXCLUDED.parameters,
                            annotations = EXCLUDED.annotations,
                            binding_namespace = EXCLUDED.binding_namespace,
                            binding_name = EXCLUDED.binding_name, updated = EXCLUDED.updated"
                    ),
                    &[
                        &package.namespace,
                        &package.name,
                        &package.version,
                        &package.publish,
                        &encode("parameters", &package.parameters)?,
                        &encode("annotations", &package.annotations)?,
                        &binding_namespace,
                        &binding_name,
                        &updated,
                    ],
                )
                .await
                .map_err(StoreError::from)?;
            transaction.commit().await.map_err(StoreError::from)?;
            Ok(package)
        })
    }

    /// Deletes the package and the actions it holds if `check`, shown it and the number of those
    /// actions, agrees; in one transaction holding the package's lock, which a packaged action's write also takes, so no
    /// action can slip into a package being deleted. `None` if there was none.
    pub fn delete_package<E: From<StoreError>>(
        &self,
        namespace: &str,
        name: &str,
        check: impl FnOnce(&Package, u64) -> Result<(), E>,
    ) -> Result<Option<Package>, E> {
        self.run(async |client| {
            let transaction = client.transaction().await.map_err(StoreError::from)?;
            lock(&transaction, &["package", namespace, name]).await?;
            let Some(package) = select_package(&transaction, namespace, name).await? else {
                return Ok(None);
            };
            let row = transaction
                .query_one("SELECT COUNT(*) FROM actions WHERE namespace = $1", &[&package.path()])
                .await
                .map_err(StoreError::from)?;
            check(&package, unsigned(&row, 0)?)?;
            transaction
                .execute("DELETE FROM actions WHERE namespace = $1", &[&package.path()])
                .await
                .map_err(StoreError::from)?;
            transaction
                .execute("DELETE FROM packages WHERE namespace = $1 AND name = $2", &[&namespace, &name])
                .await
                .map_err(StoreError::from)?;
            transaction.commit().await.map_err(StoreError::from)?;
            Ok(Some(package))
        })
    }

    /// One page of the namespace's packages and bindings, most recently updated first.
    pub fn list_packages(&self, namespace: &str, skip: u64, limit: u64) -> Result<Vec<Package>, StoreError> {
        self.page_of_packages("", namespace, skip, limit)
    }

    pub fn count_packages(&self, namespace: &str) -> Result<u64, StoreError> {
        self.count("SELECT COUNT(*) FROM packages WHERE namespace = $1", namespace)
    }

    pub fn list_published_packages(
        &self,
        namespace: &str,
        skip: u64,
        limit: u64,
    ) -> Result<Vec<Package>, StoreError> {
        self.page_of_packages(PUBLISHED_ONLY, namespace, skip, limit)
    }

    pub fn count_published_packages(&self, namespace: &str) -> Result<u64, StoreError> {
        self.count(&format!("SELECT COUNT(*) FROM packages WHERE namespace = $1 {PUBLISHED_ONLY}"), namespace)
    }

    /// One page of the namespace's packages matching the extra condition `scope`.
    fn page_of_packages(
        &self,
        scope: &str,
        namespace: &str,
        skip: u64,
        limit: u64,
    ) -> Result<Vec<Package>, StoreError> {
        let (skip, limit) = (bigint("skip", skip)?, bigint("limit", limit)?);
        self.run(async |client| {
            let rows = client
                .query(
                    &format!(
                        "SELECT {PACKAGE_COLUMNS} FROM packages WHERE namespace = $1 {scope}
                         ORDER BY updated DESC, name LIMIT $2 OFFSET $3"
                    ),
                    &[&namespace, &limit, &skip],
                )
                .await?;
            rows.iter().map(package_from_row).collect()
        })
    }

    /// Every action of the package at `path` (`ns/pkg`), without code, most recently updated first.
    pub fn package_actions(&self, path: &str) -> Result<Vec<Action>, StoreError> {
        self.run(async |client| {
            let rows = client
                .query(
                    &format!(
                        "SELECT {ACTION_COLUMNS} FROM actions WHERE namespace = $1
                         ORDER BY updated DESC, name"
                    ),
                    &[&path, &false],
                )
                .await?;
            rows.iter().map(action_from_row).collect()
        })
    }

    /// Creates or replaces an action of package `namespace/package` atomically: `build` sees the
    /// package (if it exists) and the current action, so that a package being deleted never gains
    /// an action, and returns the new action or an error that leaves the store untouched.
    pub fn put_packaged_action<E: From<StoreError>>(
        &self,
        namespace: &str,
        package: &str,
        name: &str,
        build: impl FnOnce(Option<Package>, Option<Action>) -> Result<Action, E>,
    ) -> Result<Action, E> {
        let path = format!("{namespace}/{package}");
        self.run(async |client| {
            let transaction = client.transaction().await.map_err(StoreError::from)?;
            // Package before action, always, so two writers never wait on each other in a cycle.
            lock(&transaction, &["package", namespace, package]).await?;
            lock(&transaction, &["action", &path, name]).await?;
            let container = select_package(&transaction, namespace, package).await?;
            let existing = select_action(&transaction, &path, name, true).await?;
            let action = build(container, existing)?;
            upsert_action(&transaction, &action).await?;
            transaction.commit().await.map_err(StoreError::from)?;
            Ok(action)
        })
    }
}

async fn select_package(
    client: &impl GenericClient,
    namespace: &str,
    name: &str,
) -> Result<Option<Package>, StoreError> {
    let row = client
        .query_opt(
            &format!("SELECT {PACKAGE_COLUMNS} FROM packages WHERE namespace = $1 AND name = $2"),
            &[&namespace, &name],
        )
        .await?;
    row.as_ref().map(package_from_row).transpose()
}

fn package_from_row(row: &Row) -> Result<Package, StoreError> {
    let binding_namespace: Option<String> = row.try_get(6)?;
    let binding_name: Option<String> = row.try_get(7)?;
    Ok(Package {
        namespace: row.try_get(0)?,
        name: row.try_get(1)?,
        version: row.try_get(2)?,
        publish: row.try_get(3)?,
        parameters: json_column(row, 4)?,
        annotations: json_column(row, 5)?,
        binding: binding_namespace.zip(binding_name).map(|(namespace, name)| Binding { namespace, name }),
        updated: unsigned(row, 8)?,
    })
}
