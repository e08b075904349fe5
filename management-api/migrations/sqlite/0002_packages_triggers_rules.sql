-- Packages (and bindings), triggers and rules; packaged actions.
-- Applied once, in a transaction, when PRAGMA user_version < 2.

-- A packaged action is stored as OpenWhisk stores it: in namespace `ns/pkg`. Listing a namespace's
-- actions takes its packaged ones too, so the root namespace gets its own (virtual) column and index.
ALTER TABLE actions ADD COLUMN root_namespace TEXT GENERATED ALWAYS AS (
    CASE WHEN instr(namespace, '/') > 0 THEN substr(namespace, 1, instr(namespace, '/') - 1)
         ELSE namespace END
) VIRTUAL;

CREATE INDEX actions_by_root ON actions (root_namespace, updated DESC);

-- A binding names the package it binds (both columns set); a package has neither.
CREATE TABLE packages (
    namespace         TEXT NOT NULL,
    name              TEXT NOT NULL,
    version           TEXT NOT NULL,
    publish           INTEGER NOT NULL,
    parameters        TEXT NOT NULL, -- JSON array of {key, value}
    annotations       TEXT NOT NULL, -- JSON array of {key, value}
    binding_namespace TEXT,
    binding_name      TEXT,
    updated           INTEGER NOT NULL, -- epoch milliseconds
    PRIMARY KEY (namespace, name),
    CHECK ((binding_namespace IS NULL) = (binding_name IS NULL))
) STRICT;

CREATE INDEX packages_by_updated ON packages (namespace, updated DESC);

CREATE TABLE triggers (
    namespace   TEXT NOT NULL,
    name        TEXT NOT NULL,
    version     TEXT NOT NULL,
    publish     INTEGER NOT NULL,
    parameters  TEXT NOT NULL,
    annotations TEXT NOT NULL,
    updated     INTEGER NOT NULL,
    PRIMARY KEY (namespace, name)
) STRICT;

CREATE INDEX triggers_by_updated ON triggers (namespace, updated DESC);

-- OpenWhisk keeps a rule's status inside its trigger document; here it is the rule's own column and a
-- trigger's `rules` are the rules that name it. No foreign keys: like OpenWhisk, a rule outlives its
-- trigger and action (it just stops firing).
CREATE TABLE rules (
    namespace         TEXT NOT NULL,
    name              TEXT NOT NULL,
    version           TEXT NOT NULL,
    publish           INTEGER NOT NULL,
    annotations       TEXT NOT NULL,
    status            TEXT NOT NULL CHECK (status IN ('active', 'inactive')),
    trigger_namespace TEXT NOT NULL,
    trigger_name      TEXT NOT NULL,
    action_path       TEXT NOT NULL, -- `ns` or `ns/pkg`
    action_name       TEXT NOT NULL,
    updated           INTEGER NOT NULL,
    PRIMARY KEY (namespace, name)
) STRICT;

CREATE INDEX rules_by_updated ON rules (namespace, updated DESC);
CREATE INDEX rules_by_trigger ON rules (trigger_namespace, trigger_name);
