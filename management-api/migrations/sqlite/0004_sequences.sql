-- Sequences: an action of kind `sequence` has no code but components, a JSON array of fully
-- qualified action names (`/ns/name`, `/ns/pkg/name`). NULL for every other kind.
-- Applied once, in a transaction, when PRAGMA user_version < 4.

ALTER TABLE actions ADD COLUMN components TEXT;
