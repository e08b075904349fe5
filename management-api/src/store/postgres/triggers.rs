//! Triggers and rules. A trigger's rules are the rules that name it, read by index.

use tokio_postgres::{GenericClient, Row};

use super::{PostgresStore, StoreError, bigint, encode, json_column, lock, unsigned};
use crate::rules::{PathName, Rule, RuleStatus};
use crate::triggers::Trigger;

const TRIGGER_COLUMNS: &str = "namespace, name, version, publish, parameters, annotations, updated";
const RULE_COLUMNS: &str = "namespace, name, version, publish, annotations, status, trigger_namespace, \
    trigger_name, action_path, action_name, updated";

impl PostgresStore {
    pub fn get_trigger(&self, namespace: &str, name: &str) -> Result<Option<Trigger>, StoreError> {
        self.run(async |client| select_trigger(client, namespace, name).await)
    }

    /// The trigger and its rules (by rule name), read together.
    pub fn get_trigger_with_rules(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<(Trigger, Vec<Rule>)>, StoreError> {
        self.run(async |client| {
            let Some(trigger) = select_trigger(client, namespace, name).await? else {
                return Ok(None);
            };
            let rules = select_trigger_rules(client, namespace, name).await?;
            Ok(Some((trigger, rules)))
        })
    }

    /// The rules that name the trigger, by rule name.
    pub fn trigger_rules(&self, namespace: &str, name: &str) -> Result<Vec<Rule>, StoreError> {
        self.run(async |client| select_trigger_rules(client, namespace, name).await)
    }

    /// Creates or replaces a trigger atomically: `build` sees the current one and returns the new
    /// one, or an error that leaves the store untouched.
    pub fn put_trigger<E: From<StoreError>>(
        &self,
        namespace: &str,
        name: &str,
        build: impl FnOnce(Option<Trigger>) -> Result<Trigger, E>,
    ) -> Result<Trigger, E> {
        self.run(async |client| {
            let transaction = client.transaction().await.map_err(StoreError::from)?;
            lock(&transaction, &["trigger", namespace, name]).await?;
            let existing = select_trigger(&transaction, namespace, name).await?;
            let trigger = build(existing)?;
            let updated = bigint("time", trigger.updated)?;
            transaction
                .execute(
                    &format!(
                        "INSERT INTO triggers ({TRIGGER_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)
                         ON CONFLICT (namespace, name) DO UPDATE SET version = EXCLUDED.version,
                            publish = EXCLUDED.publish, parameters = EXCLUDED.parameters,
                            annotations = EXCLUDED.annotations, updated = EXCLUDED.updated"
                    ),
                    &[
                        &trigger.namespace,
                        &trigger.name,
                        &trigger.version,
                        &trigger.publish,
                        &encode("parameters", &trigger.parameters)?,
                        &encode("annotations", &trigger.annotations)?,
                        &updated,
                    ],
                )
                .await
                .map_err(StoreError::from)?;
            transaction.commit().await.map_err(StoreError::from)?;
            Ok(trigger)
        })
    }

    /// Deletes the trigger and turns its rules inactive, so that a trigger created again under the
    /// same name does not fire them until they are enabled (OpenWhisk forgets the links with the
    /// trigger document). Returns the trigger and its rules as they were.
    pub fn delete_trigger(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<(Trigger, Vec<Rule>)>, StoreError> {
        self.run(async |client| {
            let transaction = client.transaction().await?;
            lock(&transaction, &["trigger", namespace, name]).await?;
            let Some(trigger) = select_trigger(&transaction, namespace, name).await? else {
                return Ok(None);
            };
            let rules = select_trigger_rules(&transaction, namespace, name).await?;
            transaction
                .execute("DELETE FROM triggers WHERE namespace = $1 AND name = $2", &[&namespace, &name])
                .await?;
            transaction
                .execute(
                    "UPDATE rules SET status = 'inactive' WHERE trigger_namespace = $1 AND trigger_name = $2",
                    &[&namespace, &name],
                )
                .await?;
            transaction.commit().await?;
            Ok(Some((trigger, rules)))
        })
    }

    /// One page of the namespace's triggers, most recently updated first.
    pub fn list_triggers(&self, namespace: &str, skip: u64, limit: u64) -> Result<Vec<Trigger>, StoreError> {
        let (skip, limit) = (bigint("skip", skip)?, bigint("limit", limit)?);
        self.run(async |client| {
            let rows = client
                .query(
                    &format!(
                        "SELECT {TRIGGER_COLUMNS} FROM triggers WHERE namespace = $1
                         ORDER BY updated DESC, name LIMIT $2 OFFSET $3"
                    ),
                    &[&namespace, &limit, &skip],
                )
                .await?;
            rows.iter().map(trigger_from_row).collect()
        })
    }

    pub fn count_triggers(&self, namespace: &str) -> Result<u64, StoreError> {
        self.count("SELECT COUNT(*) FROM triggers WHERE namespace = $1", namespace)
    }

    pub fn get_rule(&self, namespace: &str, name: &str) -> Result<Option<Rule>, StoreError> {
        self.run(async |client| select_rule(client, namespace, name).await)
    }

    /// Creates or replaces a rule atomically: `build` sees the current one and returns the new one,
    /// or an error that leaves the store untouched.
    pub fn put_rule<E: From<StoreError>>(
        &self,
        namespace: &str,
        name: &str,
        build: impl FnOnce(Option<Rule>) -> Result<Rule, E>,
    ) -> Result<Rule, E> {
        self.run(async |client| {
            let transaction = client.transaction().await.map_err(StoreError::from)?;
            lock(&transaction, &["rule", namespace, name]).await?;
            let existing = select_rule(&transaction, namespace, name).await?;
            let rule = build(existing)?;
            let updated = bigint("time", rule.updated)?;
            transaction
                .execute(
                    &format!(
                        "INSERT INTO rules ({RULE_COLUMNS})
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
                         ON CONFLICT (namespace, name) DO UPDATE SET version = EXCLUDED.version,
                            publish = EXCLUDED.publish, annotations = EXCLUDED.annotations,
                            status = EXCLUDED.status, trigger_namespace = EXCLUDED.trigger_namespace,
                            trigger_name = EXCLUDED.trigger_name, action_path = EXCLUDED.action_path,
                            action_name = EXCLUDED.action_name, updated = EXCLUDED.updated"
                    ),
                    &[
                        &rule.namespace,
                        &rule.name,
                        &rule.version,
                        &rule.publish,
                        &encode("annotations", &rule.annotations)?,
                        &rule.status.as_str(),
                        &rule.trigger.path,
                        &rule.trigger.name,
                        &rule.action.path,
                        &rule.action.name,
                        &updated,
                    ],
                )
                .await
                .map_err(StoreError::from)?;
            transaction.commit().await.map_err(StoreError::from)?;
            Ok(rule)
        })
    }

    /// Sets the rule's status; `None` if there is no such rule.
    pub fn set_rule_status(
        &self,
        namespace: &str,
        name: &str,
        status: RuleStatus,
        now: u64,
    ) -> Result<Option<Rule>, StoreError> {
        let now = bigint("time", now)?;
        self.run(async |client| {
            let row = client
                .query_opt(
                    &format!(
                        "UPDATE rules SET status = $3, updated = $4 WHERE namespace = $1 AND name = $2
                         RETURNING {RULE_COLUMNS}"
                    ),
                    &[&namespace, &name, &status.as_str(), &now],
                )
                .await?;
            row.as_ref().map(rule_from_row).transpose()
        })
    }

    /// Deletes the rule and returns what it was.
    pub fn delete_rule(&self, namespace: &str, name: &str) -> Result<Option<Rule>, StoreError> {
        self.run(async |client| {
            let row = client
                .query_opt(
                    &format!("DELETE FROM rules WHERE namespace = $1 AND name = $2 RETURNING {RULE_COLUMNS}"),
                    &[&namespace, &name],
                )
                .await?;
            row.as_ref().map(rule_from_row).transpose()
        })
    }

    /// One page of the namespace's rules, most recently updated first.
    pub fn list_rules(&self, namespace: &str, skip: u64, limit: u64) -> Result<Vec<Rule>, StoreError> {
        let (skip, limit) = (bigint("skip", skip)?, bigint("limit", limit)?);
        self.run(async |client| {
            let rows = client
                .query(
                    &format!(
                        "SELECT {RULE_COLUMNS} FROM rules WHERE namespace = $1
                         ORDER BY updated DESC, name LIMIT $2 OFFSET $3"
                    ),
                    &[&namespace, &limit, &skip],
                )
                .await?;
            rows.iter().map(rule_from_row).collect()
        })
    }

    pub fn count_rules(&self, namespace: &str) -> Result<u64, StoreError> {
        self.count("SELECT COUNT(*) FROM rules WHERE namespace = $1", namespace)
    }
}

async fn select_trigger(
    client: &impl GenericClient,
    namespace: &str,
    name: &str,
) -> Result<Option<Trigger>, StoreError> {
    let row = client
        .query_opt(
            &format!("SELECT {TRIGGER_COLUMNS} FROM triggers WHERE namespace = $1 AND name = $2"),
            &[&namespace, &name],
        )
        .await?;
    row.as_ref().map(trigger_from_row).transpose()
}

async fn select_rule(
    client: &impl GenericClient,
    namespace: &str,
    name: &str,
) -> Result<Option<Rule>, StoreError> {
    let row = client
        .query_opt(
            &format!("SELECT {RULE_COLUMNS} FROM rules WHERE namespace = $1 AND name = $2"),
            &[&namespace, &name],
        )
        .await?;
    row.as_ref().map(rule_from_row).transpose()
}

async fn select_trigger_rules(
    client: &impl GenericClient,
    namespace: &str,
    name: &str,
) -> Result<Vec<Rule>, StoreError> {
    let rows = client
        .query(
            &format!(
                "SELECT {RULE_COLUMNS} FROM rules WHERE trigger_namespace = $1 AND trigger_name = $2
                 ORDER BY namespace, name"
            ),
            &[&namespace, &name],
        )
        .await?;
    rows.iter().map(rule_from_row).collect()
}

fn trigger_from_row(row: &Row) -> Result<Trigger, StoreError> {
    Ok(Trigger {
        namespace: row.try_get(0)?,
        name: row.try_get(1)?,
        version: row.try_get(2)?,
        publish: row.try_get(3)?,
        parameters: json_column(row, 4)?,
        annotations: json_column(row, 5)?,
        updated: unsigned(row, 6)?,
    })
}

fn rule_from_row(row: &Row) -> Result<Rule, StoreError> {
    let status: &str = row.try_get(5)?;
    // The table's CHECK admits only the two values; anything else is a corrupt row.
    let status = RuleStatus::parse(status)
        .ok_or_else(|| StoreError::Corrupt { what: "rule status", detail: status.to_owned() })?;
    Ok(Rule {
        namespace: row.try_get(0)?,
        name: row.try_get(1)?,
        version: row.try_get(2)?,
        publish: row.try_get(3)?,
        annotations: json_column(row, 4)?,
        status,
        trigger: PathName { path: row.try_get(6)?, name: row.try_get(7)? },
        action: PathName { path: row.try_get(8)?, name: row.try_get(9)? },
        updated: unsigned(row, 10)?,
    })
}
