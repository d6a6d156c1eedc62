-- Processor "windowed-counts": messages per key per tumbling window of record time
-- (--window), kept while the window is younger than the partition's highest timestamp minus
-- --retention. Recorded in schema_migrations as windowed-counts/0001_window_counts.

-- Counts per partition, so that one partition's share can be forgotten on its own (out-of-range
-- reset). Windows are aligned to 1970-01-01T00:00:00Z. The _ms columns are the exact bounds in
-- milliseconds since then; window_start and window_end the same instants as ISO 8601 UTC text
-- ("2026-11-28T09:15:00.000Z"), which sorts like time and which SQLite's date functions read.
CREATE TABLE windowed_key_counts (
    topic           TEXT    NOT NULL,
    partition       INTEGER NOT NULL,
    key,
    window_start_ms INTEGER NOT NULL,
    window_end_ms   INTEGER NOT NULL,
    window_start    TEXT    NOT NULL,
    window_end      TEXT    NOT NULL,
    count           INTEGER NOT NULL
);

-- The window's end is part of the identity: windows of another --window size (after a restart
-- with a new size) are kept beside the old ones until retention removes those.
CREATE UNIQUE INDEX windowed_key_counts_unique
    ON windowed_key_counts (topic, partition, ifnull(key, 0), window_start_ms, window_end_ms);
-- Retention deletes a partition's oldest windows each batch: a range of this index, so a batch
-- costs the same however many windows are stored.
CREATE INDEX windowed_key_counts_by_end ON windowed_key_counts (topic, partition, window_end_ms);

-- Each partition's highest record timestamp seen: where retention stands. It is state like the
-- counts (it moves in the batch's transaction and is forgotten with them), so a restart or
-- other batch boundaries never change which windows are kept.
CREATE TABLE window_clocks (
    topic           TEXT    NOT NULL,
    partition       INTEGER NOT NULL,
    max_timestamp   INTEGER NOT NULL,
    PRIMARY KEY (topic, partition)
) WITHOUT ROWID;

-- Counts per key and window across a topic's partitions: what most users want.
CREATE VIEW window_counts (topic, key, window_start, window_end, count) AS
    SELECT topic, key, window_start, window_end, sum(count) AS count
    FROM windowed_key_counts
    GROUP BY topic, key, window_start, window_end;
