-- Sequences: an action of kind `sequence` has no code but components, a JSON array of fully
-- qualified action names (`/ns/name`, `/ns/pkg/name`). NULL for every other kind.
-- Applied once, in a transaction, when schema_version holds no row >= 3 (src/store/postgres.rs).

ALTER TABLE actions ADD COLUMN components TEXT;
