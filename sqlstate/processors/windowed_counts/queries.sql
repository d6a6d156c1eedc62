-- The windowed-counts processor's statements, by name ("-- name: <name>" starts each;
-- Queries in sqlstate/state/queries.py loads them). Its tables are made by migrations/ beside
-- this file.

-- name: count_too_old
-- Before the counts move: how many of the batch's records fall in windows that the partition's
-- retention already passed, as the batch began (:windows, a JSON object {window_start_ms:
-- records}), plus those the batch itself made too old (:too_old).
SELECT :too_old + coalesce((
    SELECT sum(batch.value)
    FROM json_each(:windows) AS batch, window_clocks AS clock
    WHERE clock.topic = :topic AND clock.partition = :partition
      AND CAST(batch.key AS INTEGER) + :window_ms <= clock.max_timestamp - :retention_ms
), 0);

-- name: upsert_partition_window_counts
-- One window's counts of a partition's batch, :counts a JSON object {"key": count} of text keys
-- (as the counts processor's upsert_partition_key_counts), unless the window is already past
-- retention.
INSERT INTO windowed_key_counts
    (topic, partition, key, window_start_ms, window_end_ms, window_start, window_end, count)
SELECT :topic, :partition, key, :window_start_ms, :window_end_ms, :window_start, :window_end,
       value
FROM json_each(:counts)
WHERE NOT EXISTS (
    SELECT 1 FROM window_clocks
    WHERE topic = :topic AND partition = :partition
      AND :window_end_ms <= max_timestamp - :retention_ms
)
ON CONFLICT (topic, partition, ifnull(key, 0), window_start_ms, window_end_ms)
    DO UPDATE SET count = count + excluded.count;

-- name: upsert_window_counts
-- The same for one key (null, BLOB, or text with NUL) and window.
INSERT INTO windowed_key_counts
    (topic, partition, key, window_start_ms, window_end_ms, window_start, window_end, count)
SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8
WHERE NOT EXISTS (
    SELECT 1 FROM window_clocks
    WHERE topic = ?1 AND partition = ?2 AND ?5 <= max_timestamp - ?9
)
ON CONFLICT (topic, partition, ifnull(key, 0), window_start_ms, window_end_ms)
    DO UPDATE SET count = count + excluded.count;

-- name: advance_window_clock
INSERT INTO window_clocks (topic, partition, max_timestamp)
VALUES (:topic, :partition, :max_timestamp)
ON CONFLICT (topic, partition) DO UPDATE
    SET max_timestamp = max(max_timestamp, excluded.max_timestamp);

-- name: expire_windows
-- Retention: the partition's windows that ended at or before its highest timestamp minus
-- :retention_ms (a range of windowed_key_counts_by_end).
DELETE FROM windowed_key_counts
WHERE topic = :topic AND partition = :partition
  AND window_end_ms <= (
      SELECT max_timestamp FROM window_clocks WHERE topic = :topic AND partition = :partition
  ) - :retention_ms;

-- name: forget_window_counts
DELETE FROM windowed_key_counts WHERE topic = :topic AND partition = :partition;

-- name: forget_window_clock
DELETE FROM window_clocks WHERE topic = :topic AND partition = :partition;

-- name: changelog_match_windowed_key_counts
-- The same for windowed_key_counts: ?1 topic, ?2 partition, ?3 key, ?4 window_start_ms,
-- ?5 window_end_ms.
topic = ?1 AND partition = ?2 AND ifnull(key, 0) = ifnull(?3, 0)
    AND window_start_ms = ?4 AND window_end_ms = ?5
