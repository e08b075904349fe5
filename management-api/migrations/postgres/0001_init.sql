-- The whole schema, as SQLite's migrations 0001 and 0002 leave it.
-- Applied once, in a transaction, when schema_version holds no row >= 1 (src/store/postgres.rs).
--
-- Names and ids are COLLATE "C": listings break ties by namespace and name, and must order them by
-- bytes as SQLite does, whatever locale the cluster was created with. JSON stays TEXT, as written:
-- it is only ever read back whole.

CREATE TABLE namespaces (
    name    TEXT COLLATE "C" PRIMARY KEY,
    created BIGINT NOT NULL
);

-- A key belongs to one namespace. The secret itself is never stored: only a random salt and
-- SHA-256(salt || secret).
CREATE TABLE keys (
    uuid        TEXT COLLATE "C" PRIMARY KEY,
    namespace   TEXT COLLATE "C" NOT NULL REFERENCES namespaces (name) ON DELETE CASCADE,
    salt        BYTEA NOT NULL,
    secret_hash BYTEA NOT NULL,
    created     BIGINT NOT NULL
);

CREATE INDEX keys_by_namespace ON keys (namespace);

-- Actions outlive their namespace's keys, as in OpenWhisk: deleting a user does not delete its code.
-- A packaged action is stored as OpenWhisk stores it: in namespace `ns/pkg`; `root_namespace` lets
-- a namespace's listing take its packaged actions too.
CREATE TABLE actions (
    namespace      TEXT COLLATE "C" NOT NULL,
    name           TEXT COLLATE "C" NOT NULL,
    version        TEXT NOT NULL,
    -- Opaque, fresh on every create and update: containers are keyed by it.
    revision       TEXT NOT NULL,
    kind           TEXT NOT NULL,
    code           TEXT NOT NULL,
    is_binary      BOOLEAN NOT NULL,
    main           TEXT,
    image          TEXT,
    parameters     TEXT NOT NULL, -- JSON array of {key, value}
    annotations    TEXT NOT NULL, -- JSON array of {key, value}
    timeout_ms     BIGINT NOT NULL,
    memory_mb      BIGINT NOT NULL,
    logs_mb        BIGINT NOT NULL,
    concurrency    BIGINT NOT NULL,
    publish        BOOLEAN NOT NULL,
    updated        BIGINT NOT NULL, -- epoch milliseconds
    root_namespace TEXT COLLATE "C" GENERATED ALWAYS AS (split_part(namespace, '/', 1)) STORED,
    PRIMARY KEY (namespace, name)
);

CREATE INDEX actions_by_updated ON actions (namespace, updated DESC);
CREATE INDEX actions_by_root ON actions (root_namespace, updated DESC);

-- The whole record is kept as JSON; the columns beside it exist only to filter and order listings.
CREATE TABLE activations (
    activation_id TEXT COLLATE "C" PRIMARY KEY,
    namespace     TEXT COLLATE "C" NOT NULL,
    name          TEXT COLLATE "C" NOT NULL,
    start         BIGINT NOT NULL, -- epoch milliseconds
    record        TEXT NOT NULL
);

CREATE INDEX activations_by_start ON activations (namespace, start DESC);
CREATE INDEX activations_by_name ON activations (namespace, name, start DESC);

-- A binding names the package it binds (both columns set); a package has neither.
CREATE TABLE packages (
    namespace         TEXT COLLATE "C" NOT NULL,
    name              TEXT COLLATE "C" NOT NULL,
    version           TEXT NOT NULL,
    publish           BOOLEAN NOT NULL,
    parameters        TEXT NOT NULL, -- JSON array of {key, value}
    annotations       TEXT NOT NULL, -- JSON array of {key, value}
    binding_namespace TEXT COLLATE "C",
    binding_name      TEXT COLLATE "C",
    updated           BIGINT NOT NULL, -- epoch milliseconds
    PRIMARY KEY (namespace, name),
    CHECK ((binding_namespace IS NULL) = (binding_name IS NULL))
);

CREATE INDEX packages_by_updated ON packages (namespace, updated DESC);

CREATE TABLE triggers (
    namespace   TEXT COLLATE "C" NOT NULL,
    name        TEXT COLLATE "C" NOT NULL,
    version     TEXT NOT NULL,
    publish     BOOLEAN NOT NULL,
    parameters  TEXT NOT NULL,
    annotations TEXT NOT NULL,
    updated     BIGINT NOT NULL,
    PRIMARY KEY (namespace, name)
);

CREATE INDEX triggers_by_updated ON triggers (namespace, updated DESC);

-- A trigger's `rules` are the rules that name it. No foreign keys: like OpenWhisk, a rule outlives
-- its trigger and action (it just stops firing).
CREATE TABLE rules (
    namespace         TEXT COLLATE "C" NOT NULL,
    name              TEXT COLLATE "C" NOT NULL,
    version           TEXT NOT NULL,
    publish           BOOLEAN NOT NULL,
    annotations       TEXT NOT NULL,
    status            TEXT NOT NULL CHECK (status IN ('active', 'inactive')),
    trigger_namespace TEXT COLLATE "C" NOT NULL,
    trigger_name      TEXT COLLATE "C" NOT NULL,
    action_path       TEXT COLLATE "C" NOT NULL, -- `ns` or `ns/pkg`
    action_name       TEXT COLLATE "C" NOT NULL,
    updated           BIGINT NOT NULL,
    PRIMARY KEY (namespace, name)
);

CREATE INDEX rules_by_updated ON rules (namespace, updated DESC);
CREATE INDEX rules_by_trigger ON rules (trigger_namespace, trigger_name);
