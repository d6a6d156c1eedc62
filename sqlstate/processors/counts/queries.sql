-- The counts processor's statements, by name ("-- name: <name>" starts each; Queries in
-- sqlstate/state/queries.py loads them). Its table key_counts and the view counts are in
-- sqlstate's own schema (migrations/0001_initial.sql), so it has no migrations of its own.

-- name: upsert_key_counts
INSERT INTO key_counts (topic, partition, key, count) VALUES (?, ?, ?, ?)
ON CONFLICT (topic, partition, ifnull(key, 0)) DO UPDATE SET count = count + excluded.count;

-- name: upsert_partition_key_counts
-- The same upsert for one partition's whole batch in one statement: :counts is a JSON object
-- {"key": count, ...} of text keys, which json_each() reads back as (key, value) rows. One
-- statement is one bind and one step that SQLite runs without Python's GIL, so the event loop
-- parses the next batch meanwhile; a row per key would take the GIL back for every row.
-- "WHERE true" is required: it tells the parser that ON CONFLICT starts the upsert clause.
INSERT INTO key_counts (topic, partition, key, count)
SELECT :topic, :partition, key, value FROM json_each(:counts) WHERE true
ON CONFLICT (topic, partition, ifnull(key, 0)) DO UPDATE SET count = count + excluded.count;

-- name: delete_key_counts
DELETE FROM key_counts WHERE topic = :topic AND partition = :partition;

-- name: changelog_match_key_counts
-- How a changelog record finds its key_counts row: ?1 topic, ?2 partition, ?3 key. Written as
-- the unique index is (ifnull(key, 0)), so that the lookup uses it; "key IS ?3" would scan.
topic = ?1 AND partition = ?2 AND ifnull(key, 0) = ifnull(?3, 0)
