-- sqlstate schema, version 1.
-- The database is a public interface: change it only by adding a new numbered file.

-- Where each partition stands: the next offset to consume (Kafka's convention: the offset after the
-- last processed record, so it also steps over transaction markers) and who may move it.
CREATE TABLE positions (
    topic           TEXT    NOT NULL,
    partition       INTEGER NOT NULL,
    next_offset     INTEGER NOT NULL,
    -- Bumped each time a consumer claims the partition; a commit must present the epoch it
    -- claimed with, so a consumer that lost the partition (a "zombie") can no longer write.
    epoch           INTEGER NOT NULL,
    owner           TEXT    NOT NULL,
    -- The partition's end offset as the consumer last saw it (log-end offset, or last stable
    -- offset under read_committed): log_end_offset - next_offset is the lag, with no broker call.
    log_end_offset  INTEGER,
    updated_at      TEXT    NOT NULL,   -- UTC, ISO 8601, of the last claim or commit
    PRIMARY KEY (topic, partition)
) WITHOUT ROWID;

-- Messages counted per key in each partition, for records [first offset, next_offset).
-- key is TEXT when the key bytes are valid UTF-8, BLOB otherwise, NULL for a record without key.
CREATE TABLE key_counts (
    topic       TEXT    NOT NULL,
    partition   INTEGER NOT NULL,
    key,
    count       INTEGER NOT NULL
);

-- One row per (topic, partition, key), the null key included. A primary key would treat NULLs as
-- distinct, so the index maps NULL to the integer 0, a value no TEXT or BLOB key can equal; the
-- batch upsert names this index as its conflict target.
CREATE UNIQUE INDEX key_counts_unique_key ON key_counts (topic, partition, ifnull(key, 0));

-- Total per key across a topic's partitions: what most users want.
-- Columns are aliased as well as listed: some readers (DuckDB) name view columns by expression.
CREATE VIEW counts (topic, key, count) AS
    SELECT topic, key, sum(count) AS count FROM key_counts GROUP BY topic, key;

-- Lag and freshness per partition, read from the database alone (the log end is recorded at
-- each claim and each batch).
CREATE VIEW progress (topic, partition, next_offset, log_end_offset, lag, owner, updated_at) AS
    SELECT topic, partition, next_offset, log_end_offset,
           max(log_end_offset - next_offset, 0) AS lag, owner, updated_at
    FROM positions;
