-- Activation retention: the sweep deletes, across namespaces and oldest first, the records that
-- started before the time to live; the existing indexes all lead with the namespace.
-- Applied once, in a transaction, when PRAGMA user_version < 3.

CREATE INDEX activations_by_age ON activations (start);
