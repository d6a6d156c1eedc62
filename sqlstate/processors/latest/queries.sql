-- The latest processor's statements, by name ("-- name: <name>" starts each; Queries in
-- sqlstate/state/queries.py loads them). Its tables are made by migrations/ beside this file.

-- name: upsert_latest
-- A batch's last value of each key (earlier ones in the batch are passed over), one row per
-- distinct key.
INSERT INTO latest (topic, partition, key, value, offset, timestamp) VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (topic, partition, ifnull(key, 0)) DO UPDATE
    SET value = excluded.value, offset = excluded.offset, timestamp = excluded.timestamp;

-- name: upsert_partition_latest
-- The same for one partition's whole batch in one statement, as the counts processor's
-- upsert_partition_key_counts does (one bind and one step, without Python's GIL): :rows is a
-- JSON array of [key, start, length, offset, timestamp], one per distinct text key, and :values
-- the batch's values end to end as one BLOB, each row's value its bytes from start (1-based)
-- for length, stored as TEXT (every one is valid UTF-8). substr() of a BLOB finds a byte
-- position at once; of TEXT it would count characters from the start for every row. substr()
-- of an empty BLOB (a batch whose values are all empty) is NULL, hence the coalesce.
-- json_extract() rather than ->>, which needs SQLite 3.38: the same SQL values for these
-- scalars.
INSERT INTO latest (topic, partition, key, value, offset, timestamp)
SELECT :topic, :partition, json_extract(row.value, '$[0]'),
       CAST(coalesce(substr(:values, json_extract(row.value, '$[1]'),
                            json_extract(row.value, '$[2]')), x'') AS TEXT),
       json_extract(row.value, '$[3]'), json_extract(row.value, '$[4]')
FROM json_each(:rows) AS row WHERE true
ON CONFLICT (topic, partition, ifnull(key, 0)) DO UPDATE
    SET value = excluded.value, offset = excluded.offset, timestamp = excluded.timestamp;

-- name: delete_partition_latest
-- The tombstones of one partition's batch in one statement: :keys a JSON array of text keys.
-- The comparison is the unique index's expression, so each key is one index look-up.
DELETE FROM latest WHERE topic = :topic AND partition = :partition
    AND ifnull(key, 0) IN (SELECT value FROM json_each(:keys));

-- name: delete_latest
-- A tombstone: the key's last record in the batch has a null value.
DELETE FROM latest WHERE topic = ? AND partition = ? AND ifnull(key, 0) = ifnull(?, 0);

-- name: forget_latest
DELETE FROM latest WHERE topic = :topic AND partition = :partition;

-- name: changelog_match_latest
-- The same for latest: ?1 topic, ?2 partition, ?3 key.
topic = ?1 AND partition = ?2 AND ifnull(key, 0) = ifnull(?3, 0)
