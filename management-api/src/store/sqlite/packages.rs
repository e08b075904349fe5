//! Packages and bindings, and the actions a package holds (stored in namespace `ns/pkg`).

use rusqlite::{Connection, OptionalExtension as _, Row, TransactionBehavior, params};

use super::{
    ACTION_COLUMNS, SqliteStore, StoreError, action_from_row, encode, insert_action, json_column,
    select_action,
};
use crate::actions::Action;
use crate::packages::{Binding, Package};

/// The packages another namespace may list: published ones, bindings never.
const PUBLISHED_ONLY: &str = "AND publish = 1 AND binding_namespace IS NULL";

const PACKAGE_COLUMNS: &str =
    "namespace, name, version, publish, parameters, annotations, binding_namespace, binding_name, updated";

impl SqliteStore {
    pub fn get_package(&self, namespace: &str, name: &str) -> Result<Option<Package>, StoreError> {
        select_package(&self.connection(), namespace, name)
    }

    /// Creates or replaces a package atomically: `build` sees the current one and returns the new
    /// one, or an error that leaves the store untouched.
    pub fn put_package<E: From<StoreError>>(
        &self,
        namespace: &str,
        name: &str,
        build: impl FnOnce(Option<Package>) -> Result<Package, E>,
    ) -> Result<Package, E> {
        let mut connection = self.connection();
        let transaction =
            connection.transaction_with_behavior(TransactionBehavior::Immediate).map_err(StoreError::from)?;
        let existing = select_package(&transaction, namespace, name)?;
        let package = build(existing)?;
        let (binding_namespace, binding_name) = match &package.binding {
            Some(binding) => (Some(binding.namespace.as_str()), Some(binding.name.as_str())),
            None => (None, None),
        };
        transaction
            .execute(
                &format!("INSERT OR REPLACE INTO packages ({PACKAGE_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"),
                params![
                    package.namespace,
                    package.name,
                    package.version,
                    package.publish,
                    encode("parameters", &package.parameters)?,
                    encode("annotations", &package.annotations)?,
                    binding_namespace,
                    binding_name,
                    package.updated,
                ],
            )
            .map_err(StoreError::from)?;
        transaction.commit().map_err(StoreError::from)?;
        Ok(package)
    }

    /// Deletes the package and the actions it holds if `check`, shown it and the number of those
    /// actions, agrees; in one transaction, so no action can slip into a package being deleted.
    /// `None` if there was none.
    pub fn delete_package<E: From<StoreError>>(
        &self,
        namespace: &str,
        name: &str,
        check: impl FnOnce(&Package, u64) -> Result<(), E>,
    ) -> Result<Option<Package>, E> {
        let mut connection = self.connection();
        let transaction =
            connection.transaction_with_behavior(TransactionBehavior::Immediate).map_err(StoreError::from)?;
        let Some(package) = select_package(&transaction, namespace, name)? else {
            return Ok(None);
        };
        let contained: u64 = transaction
            .query_row("SELECT COUNT(*) FROM actions WHERE namespace = ?1", [package.path()], |row| {
                row.get(0)
            })
            .map_err(StoreError::from)?;
        check(&package, contained)?;
        transaction
            .execute("DELETE FROM actions WHERE namespace = ?1", [package.path()])
            .map_err(StoreError::from)?;
        transaction
            .execute("DELETE FROM packages WHERE namespace = ?1 AND name = ?2", [namespace, name])
            .map_err(StoreError::from)?;
        transaction.commit().map_err(StoreError::from)?;
        Ok(Some(package))
    }

    /// One page of the namespace's packages and bindings, most recently updated first.
    pub fn list_packages(&self, namespace: &str, skip: u64, limit: u64) -> Result<Vec<Package>, StoreError> {
        self.page_of_packages("", namespace, skip, limit)
    }

    pub fn count_packages(&self, namespace: &str) -> Result<u64, StoreError> {
        self.count_of_packages("", namespace)
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
        self.count_of_packages(PUBLISHED_ONLY, namespace)
    }

    /// One page of the namespace's packages matching the extra condition `scope`.
    fn page_of_packages(
        &self,
        scope: &str,
        namespace: &str,
        skip: u64,
        limit: u64,
    ) -> Result<Vec<Package>, StoreError> {
        let connection = self.connection();
        let mut statement = connection.prepare_cached(&format!(
            "SELECT {PACKAGE_COLUMNS} FROM packages WHERE namespace = ?1 {scope}
             ORDER BY updated DESC, name LIMIT ?2 OFFSET ?3"
        ))?;
        let packages = statement
            .query_map(params![namespace, limit, skip], package_from_row)?
            .collect::<Result<_, _>>()?;
        Ok(packages)
    }

    fn count_of_packages(&self, scope: &str, namespace: &str) -> Result<u64, StoreError> {
        let connection = self.connection();
        Ok(connection.query_row(
            &format!("SELECT COUNT(*) FROM packages WHERE namespace = ?1 {scope}"),
            [namespace],
            |row| row.get(0),
        )?)
    }

    /// Every action of the package at `path` (`ns/pkg`), without code, most recently updated first.
    pub fn package_actions(&self, path: &str) -> Result<Vec<Action>, StoreError> {
        let connection = self.connection();
        let mut statement = connection.prepare_cached(&format!(
            "SELECT {ACTION_COLUMNS} FROM actions WHERE namespace = ?1 ORDER BY updated DESC, name"
        ))?;
        let actions =
            statement.query_map(params![path, false], action_from_row)?.collect::<Result<_, _>>()?;
        Ok(actions)
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
        let mut connection = self.connection();
        let transaction =
            connection.transaction_with_behavior(TransactionBehavior::Immediate).map_err(StoreError::from)?;
        let container = select_package(&transaction, namespace, package)?;
        let existing = select_action(&transaction, &format!("{namespace}/{package}"), name, true)?;
        let action = build(container, existing)?;
        insert_action(&transaction, &action)?;
        transaction.commit().map_err(StoreError::from)?;
        Ok(action)
    }
}

fn select_package(
    connection: &Connection,
    namespace: &str,
    name: &str,
) -> Result<Option<Package>, StoreError> {
    let mut statement = connection.prepare_cached(&format!(
        "SELECT {PACKAGE_COLUMNS} FROM packages WHERE namespace = ?1 AND name = ?2"
    ))?;
    Ok(statement.query_row([namespace, name], package_from_row).optional()?)
}

fn package_from_row(row: &Row<'_>) -> rusqlite::Result<Package> {
    let binding_namespace: Option<String> = row.get(6)?;
    let binding_name: Option<String> = row.get(7)?;
    Ok(Package {
        namespace: row.get(0)?,
        name: row.get(1)?,
        version: row.get(2)?,
        publish: row.get(3)?,
        parameters: json_column(row, 4)?,
        annotations: json_column(row, 5)?,
        binding: binding_namespace.zip(binding_name).map(|(namespace, name)| Binding { namespace, name }),
        updated: row.get(8)?,
    })
}
