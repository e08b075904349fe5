-- Namespaces, their keys, actions and activation records.
-- Applied once, in a transaction, when PRAGMA user_version < 1.

CREATE TABLE namespaces (
    name    TEXT PRIMARY KEY NOT NULL,
    created INTEGER NOT NULL
) STRICT;

-- A key belongs to one namespace. The secret itself is never stored: only a random salt and
-- SHA-256(salt || secret).
CREATE TABLE keys (
    uuid        TEXT PRIMARY KEY NOT NULL,
    namespace   TEXT NOT NULL REFERENCES namespaces (name) ON DELETE CASCADE,
    salt        BLOB NOT NULL,
    secret_hash BLOB NOT NULL,
    created     INTEGER NOT NULL
) STRICT;

CREATE INDEX keys_by_namespace ON keys (namespace);

-- Actions outlive their namespace's keys, as in OpenWhisk: deleting a user does not delete its code.
CREATE TABLE actions (
    namespace   TEXT NOT NULL,
    name        TEXT NOT NULL,
    version     TEXT NOT NULL,
    -- Opaque, fresh on every create and update: containers are keyed by it.
    revision    TEXT NOT NULL,
    kind        TEXT NOT NULL,
    code        TEXT NOT NULL,
    is_binary   INTEGER NOT NULL,
    main        TEXT,
    image       TEXT,
    parameters  TEXT NOT NULL, -- JSON array of {key, value}
    annotations TEXT NOT NULL, -- JSON array of {key, value}
    timeout_ms  INTEGER NOT NULL,
    memory_mb   INTEGER NOT NULL,
    logs_mb     INTEGER NOT NULL,
    concurrency INTEGER NOT NULL,
    publish     INTEGER NOT NULL,
    updated     INTEGER NOT NULL, -- epoch milliseconds
    PRIMARY KEY (namespace, name)
) STRICT;

CREATE INDEX actions_by_updated ON actions (namespace, updated DESC);

-- The whole record is kept as JSON; the columns beside it exist only to filter and order listings.
CREATE TABLE activations (
    activation_id TEXT PRIMARY KEY NOT NULL,
    namespace     TEXT NOT NULL,
    name          TEXT NOT NULL,
    start         INTEGER NOT NULL, -- epoch milliseconds
    record        TEXT NOT NULL
) STRICT;

CREATE INDEX activations_by_start ON activations (namespace, start DESC);
CREATE INDEX activations_by_name ON activations (namespace, name, start DESC);
