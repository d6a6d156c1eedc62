-- Processors: which kinds of state each topic's database rows were built by, and the records that
-- could not be decoded (--on-bad-record dead-letter). Only adds tables: a database of the previous
-- schema keeps its counts and positions as they are.

-- The processors that fold each topic's records into state. A processor added to a topic that
-- already has positions would see only the records from those positions on, so sqlstate refuses
-- to start with another set of processors than the one recorded here (see README, "Your own
-- state"). A topic with positions and no row here was counted by sqlstate before processors
-- were recorded: its set is the counts alone.
CREATE TABLE topic_processors (
    topic       TEXT NOT NULL,
    processor   TEXT NOT NULL,
    added_at    TEXT NOT NULL,   -- UTC, ISO 8601
    PRIMARY KEY (topic, processor)
) WITHOUT ROWID;

-- Records that could not be decoded under --key-format/--value-format, kept with
-- --on-bad-record dead-letter, in the transaction of their batch: nothing is lost, nothing is
-- counted twice. key and value are stored as key_counts stores keys: TEXT when the bytes are
-- valid UTF-8, BLOB otherwise, NULL for null. Forgotten with the rest of the partition's state
-- on an out-of-range reset, when its records are read again.
CREATE TABLE rejected_records (
    topic       TEXT    NOT NULL,
    partition   INTEGER NOT NULL,
    offset      INTEGER NOT NULL,
    key,
    value,
    error       TEXT    NOT NULL,   -- what failed to decode, and why
    PRIMARY KEY (topic, partition, offset)
) WITHOUT ROWID;
