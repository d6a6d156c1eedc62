-- Processor "latest": the latest value of every key of a topic, as a compacted topic (or a
-- Kafka Streams KTable) holds it. A record with a null value (a tombstone) deletes its key.
-- Recorded in schema_migrations as latest/0001_latest.

-- One row per key and partition. A key normally lives in one partition; if a producer wrote one
-- key to two partitions, each keeps its own latest value, since offsets of different partitions
-- have no order. key and value are TEXT when their bytes are valid UTF-8 (or with --key-format /
-- --value-format text or json), BLOB otherwise; key is NULL for a record without a key.
CREATE TABLE latest (
    topic       TEXT    NOT NULL,
    key,
    value       NOT NULL,
    partition   INTEGER NOT NULL,
    offset      INTEGER NOT NULL,   -- the record the value comes from
    timestamp   INTEGER NOT NULL    -- its Kafka timestamp, milliseconds since 1970-01-01 UTC
);

-- The null key included: the index maps NULL to the integer 0, a value no TEXT or BLOB key can
-- equal (as key_counts does); the upsert names it as its conflict target.
CREATE UNIQUE INDEX latest_unique_key ON latest (topic, partition, ifnull(key, 0));
