//! Triggers and rules. A trigger's rules are the rules that name it, read by index.

use rusqlite::{Connection, OptionalExtension as _, Row, TransactionBehavior, params};

use super::{SqliteStore, StoreError, encode, json_column};
use crate::rules::{PathName, Rule, RuleStatus};
use crate::triggers::Trigger;

const TRIGGER_COLUMNS: &str = "namespace, name, version, publish, parameters, annotations, updated";
const RULE_COLUMNS: &str = "namespace, name, version, publish, annotations, status, trigger_namespace, \
    trigger_name, action_path, action_name, updated";

impl SqliteStore {
    pub fn get_trigger(&self, namespace: &str, name: &str) -> Result<Option<Trigger>, StoreError> {
        select_trigger(&self.connection(), namespace, name)
    }

    /// The trigger and its rules (by rule name), read together.
    pub fn get_trigger_with_rules(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<(Trigger, Vec<Rule>)>, StoreError> {
        let connection = self.connection();
        let Some(trigger) = select_trigger(&connection, namespace, name)? else {
            return Ok(None);
        };
        let rules = select_trigger_rules(&connection, namespace, name)?;
        Ok(Some((trigger, rules)))
    }

    /// The rules that name the trigger, by rule name.
    pub fn trigger_rules(&self, namespace: &str, name: &str) -> Result<Vec<Rule>, StoreError> {
        select_trigger_rules(&self.connection(), namespace, name)
    }

    /// Creates or replaces a trigger atomically: `build` sees the current one and returns the new
    /// one, or an error that leaves the store untouched.
    pub fn put_trigger<E: From<StoreError>>(
        &self,
        namespace: &str,
        name: &str,
        build: impl FnOnce(Option<Trigger>) -> Result<Trigger, E>,
    ) -> Result<Trigger, E> {
        let mut connection = self.connection();
        let transaction =
            connection.transaction_with_behavior(TransactionBehavior::Immediate).map_err(StoreError::from)?;
        let existing = select_trigger(&transaction, namespace, name)?;
        let trigger = build(existing)?;
        transaction
            .execute(
                &format!(
                    "INSERT OR REPLACE INTO triggers ({TRIGGER_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
                ),
                params![
                    trigger.namespace,
                    trigger.name,
                    trigger.version,
                    trigger.publish,
                    encode("parameters", &trigger.parameters)?,
                    encode("annotations", &trigger.annotations)?,
                    trigger.updated,
                ],
            )
            .map_err(StoreError::from)?;
        transaction.commit().map_err(StoreError::from)?;
        Ok(trigger)
    }

    /// Deletes the trigger and turns its rules inactive, so that a trigger created again under the
    /// same name does not fire them until they are enabled (OpenWhisk forgets the links with the
    /// trigger document). Returns the trigger and its rules as they were.
    pub fn delete_trigger(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<(Trigger, Vec<Rule>)>, StoreError> {
        let mut connection = self.connection();
        let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let Some(trigger) = select_trigger(&transaction, namespace, name)? else {
            return Ok(None);
        };
        let rules = select_trigger_rules(&transaction, namespace, name)?;
        transaction.execute("DELETE FROM triggers WHERE namespace = ?1 AND name = ?2", [namespace, name])?;
        transaction.execute(
            "UPDATE rules SET status = 'inactive' WHERE trigger_namespace = ?1 AND trigger_name = ?2",
            [namespace, name],
        )?;
        transaction.commit()?;
        Ok(Some((trigger, rules)))
    }

    /// One page of the namespace's triggers, most recently updated first.
    pub fn list_triggers(&self, namespace: &str, skip: u64, limit: u64) -> Result<Vec<Trigger>, StoreError> {
        let connection = self.connection();
        let mut statement = connection.prepare_cached(&format!(
            "SELECT {TRIGGER_COLUMNS} FROM triggers WHERE namespace = ?1
             ORDER BY updated DESC, name LIMIT ?2 OFFSET ?3"
        ))?;
        let triggers = statement
            .query_map(params![namespace, limit, skip], trigger_from_row)?
            .collect::<Result<_, _>>()?;
        Ok(triggers)
    }

    pub fn count_triggers(&self, namespace: &str) -> Result<u64, StoreError> {
        let connection = self.connection();
        Ok(connection.query_row(
            "SELECT COUNT(*) FROM triggers WHERE namespace = ?1",
            [namespace],
            |row| row.get(0),
        )?)
    }

    pub fn get_rule(&self, namespace: &str, name: &str) -> Result<Option<Rule>, StoreError> {
        select_rule(&self.connection(), namespace, name)
    }

    /// Creates or replaces a rule atomically: `build` sees the current one and returns the new one,
    /// or an error that leaves the store untouched.
    pub fn put_rule<E: From<StoreError>>(
        &self,
        namespace: &str,
        name: &str,
        build: impl FnOnce(Option<Rule>) -> Result<Rule, E>,
    ) -> Result<Rule, E> {
        let mut connection = self.connection();
        let transaction =
            connection.transaction_with_behavior(TransactionBehavior::Immediate).map_err(StoreError::from)?;
        let existing = select_rule(&transaction, namespace, name)?;
        let rule = build(existing)?;
        transaction
            .execute(
                &format!(
                    "INSERT OR REPLACE INTO rules ({RULE_COLUMNS})
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"
                ),
                params![
                    rule.namespace,
                    rule.name,
                    rule.version,
                    rule.publish,
                    encode("annotations", &rule.annotations)?,
                    rule.status.as_str(),
                    rule.trigger.path,
                    rule.trigger.name,
                    rule.action.path,
                    rule.action.name,
                    rule.updated,
                ],
            )
            .map_err(StoreError::from)?;
        transaction.commit().map_err(StoreError::from)?;
        Ok(rule)
    }

    /// Sets the rule's status; `None` if there is no such rule.
    pub fn set_rule_status(
        &self,
        namespace: &str,
        name: &str,
        status: RuleStatus,
        now: u64,
    ) -> Result<Option<Rule>, StoreError> {
        let mut connection = self.connection();
        let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let changed = transaction.execute(
            "UPDATE rules SET status = ?3, updated = ?4 WHERE namespace = ?1 AND name = ?2",
            params![namespace, name, status.as_str(), now],
        )?;
        let rule = if changed > 0 { select_rule(&transaction, namespace, name)? } else { None };
        transaction.commit()?;
        Ok(rule)
    }

    /// Deletes the rule and returns what it was.
    pub fn delete_rule(&self, namespace: &str, name: &str) -> Result<Option<Rule>, StoreError> {
        let mut connection = self.connection();
        let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let existing = select_rule(&transaction, namespace, name)?;
        if existing.is_some() {
            transaction.execute("DELETE FROM rules WHERE namespace = ?1 AND name = ?2", [namespace, name])?;
            transaction.commit()?;
        }
        Ok(existing)
    }

    /// One page of the namespace's rules, most recently updated first.
    pub fn list_rules(&self, namespace: &str, skip: u64, limit: u64) -> Result<Vec<Rule>, StoreError> {
        let connection = self.connection();
        let mut statement = connection.prepare_cached(&format!(
            "SELECT {RULE_COLUMNS} FROM rules WHERE namespace = ?1
             ORDER BY updated DESC, name LIMIT ?2 OFFSET ?3"
        ))?;
        let rules =
            statement.query_map(params![namespace, limit, skip], rule_from_row)?.collect::<Result<_, _>>()?;
        Ok(rules)
    }

    pub fn count_rules(&self, namespace: &str) -> Result<u64, StoreError> {
        let connection = self.connection();
        Ok(connection
            .query_row("SELECT COUNT(*) FROM rules WHERE namespace = ?1", [namespace], |row| row.get(0))?)
    }
}

fn select_trigger(
    connection: &Connection,
    namespace: &str,
    name: &str,
) -> Result<Option<Trigger>, StoreError> {
    let mut statement = connection.prepare_cached(&format!(
        "SELECT {TRIGGER_COLUMNS} FROM triggers WHERE namespace = ?1 AND name = ?2"
    ))?;
    Ok(statement.query_row([namespace, name], trigger_from_row).optional()?)
}

fn select_rule(connection: &Connection, namespace: &str, name: &str) -> Result<Option<Rule>, StoreError> {
    let mut statement = connection
        .prepare_cached(&format!("SELECT {RULE_COLUMNS} FROM rules WHERE namespace = ?1 AND name = ?2"))?;
    Ok(statement.query_row([namespace, name], rule_from_row).optional()?)
}

fn select_trigger_rules(
    connection: &Connection,
    namespace: &str,
    name: &str,
) -> Result<Vec<Rule>, StoreError> {
    let mut statement = connection.prepare_cached(&format!(
        "SELECT {RULE_COLUMNS} FROM rules WHERE trigger_namespace = ?1 AND trigger_name = ?2
         ORDER BY namespace, name"
    ))?;
    let rules = statement.query_map([namespace, name], rule_from_row)?.collect::<Result<_, _>>()?;
    Ok(rules)
}

fn trigger_from_row(row: &Row<'_>) -> rusqlite::Result<Trigger> {
    Ok(Trigger {
        namespace: row.get(0)?,
        name: row.get(1)?,
        version: row.get(2)?,
        publish: row.get(3)?,
        parameters: json_column(row, 4)?,
        annotations: json_column(row, 5)?,
        updated: row.get(6)?,
    })
}

fn rule_from_row(row: &Row<'_>) -> rusqlite::Result<Rule> {
    let status: String = row.get(5)?;
    // The table's CHECK admits only the two values; anything else is a corrupt row.
    let status = RuleStatus::parse(&status).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            5,
            rusqlite::types::Type::Text,
            format!("status '{status}'").into(),
        )
    })?;
    Ok(Rule {
        namespace: row.get(0)?,
        name: row.get(1)?,
        version: row.get(2)?,
        publish: row.get(3)?,
        annotations: json_column(row, 4)?,
        status,
        trigger: PathName { path: row.get(6)?, name: row.get(7)? },
        action: PathName { path: row.get(8)?, name: row.get(9)? },
        updated: row.get(10)?,
    })
}
