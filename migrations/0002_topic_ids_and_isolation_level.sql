-- sqlstate schema, version 2: what the state was counted from, besides the offsets.
-- A database made before this version has neither: its first claim records both.

-- Each topic's ID in Kafka, as Kafka writes it (kafka-topics.sh --describe). A topic deleted and
-- created again under the same name gets a new ID: the counts of the old topic are then not
-- continued on the new one (the --out-of-range policy decides, as for records deleted below a
-- stored position). topic_id is NULL only where Kafka gives no IDs (brokers before 2.8).
CREATE TABLE topics (
    topic        TEXT PRIMARY KEY,
    topic_id     TEXT,
    recorded_at  TEXT NOT NULL    -- UTC, ISO 8601: when this ID was first claimed
) WITHOUT ROWID;

-- Settings the counts depend on, recorded at the first claim, one row each. Today only
-- 'isolation_level': counts made under read_uncommitted include records of aborted transactions,
-- so a database is only ever continued with the level it was counted with.
CREATE TABLE state_settings (
    name         TEXT PRIMARY KEY,
    value        TEXT NOT NULL,
    recorded_at  TEXT NOT NULL    -- UTC, ISO 8601
) WITHOUT ROWID;
