-- sqlstate's own statements at run time, by name. Schema changes live in migrations/; each
-- processor's statements live in its own package (sqlstate/processors/<name>/queries.sql).
-- Each block starts with "-- name: <name>"; sqlstate/state/queries.py loads them.

-- name: check_readable
-- Reads the file header: fails with "file is not a database" on anything that is not SQLite.
SELECT count(*) FROM sqlite_master;

-- name: quick_check
PRAGMA quick_check;

-- name: journal_mode_wal
PRAGMA journal_mode = WAL;

-- name: synchronous_normal
-- Safe here: state and positions are committed together, so a power loss can only roll both back.
PRAGMA synchronous = NORMAL;

-- name: recursive_triggers_on
-- A row that a REPLACE deletes (INSERT OR REPLACE, an UPSERT or UPDATE OR REPLACE meeting
-- another UNIQUE index, a constraint declared ON CONFLICT REPLACE) fires DELETE triggers only with
-- this on: --changelog's capture triggers need it to ship that row's tombstone, and a processor's
-- own DELETE triggers see every deleted row. On in both modes, so that a processor's state is the
-- same with or without --changelog. A trigger may then fire itself: SQLite stops it at depth 1000.
PRAGMA recursive_triggers = ON;

-- name: foreign_keys_off
-- SQLite's default, made sure of (a build may change it): a foreign key's ON DELETE/UPDATE action
-- never runs, on an owner or on a standby. A standby applies a changed row as delete then insert,
-- and a cascade there would delete rows the changelog never mentioned. A processor that needs a
-- cascade writes it as a trigger, whose changes the capture sees.
PRAGMA foreign_keys = OFF;

-- name: json_functions
-- Batches reach key_counts through json_each(): built into SQLite since 3.38, an option before.
SELECT json_valid('{}');

-- name: cache_size
-- 8 MiB of page cache (the default is 2 MiB). A batch updates keys scattered over the whole
-- key_counts index once the database holds many keys; with the default, more of those pages are
-- read again for every batch. Measured with make bench: 8 MiB keeps throughput on a 1,000,000-key
-- database within 5% of an empty one while peak memory stays flat (64 MiB was 3% faster there,
-- and cost 35-55 MiB more memory on large databases).
PRAGMA cache_size = -8192;

-- name: busy_timeout
-- How long the next BEGIN IMMEDIATE waits for another connection's write lock. A PRAGMA takes no
-- bound parameters: {milliseconds} is an integer that database.py formats in.
PRAGMA busy_timeout = {milliseconds};

-- name: begin_immediate
-- Take the write lock at BEGIN, where the busy timeout applies, rather than at the first write.
BEGIN IMMEDIATE;

-- name: begin
-- A read transaction: its statements all see one snapshot; it never takes the write lock.
BEGIN;

-- name: commit
COMMIT;

-- name: rollback
ROLLBACK;

-- name: create_migrations_table
CREATE TABLE IF NOT EXISTS schema_migrations (
    name        TEXT PRIMARY KEY,
    applied_at  TEXT NOT NULL
) WITHOUT ROWID;

-- name: migrations_table_exists
SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations';

-- name: applied_migrations
SELECT name, applied_at FROM schema_migrations ORDER BY name;

-- name: record_migration
INSERT INTO schema_migrations (name, applied_at) VALUES (:name, :applied_at);

-- name: claim_partition
-- A new owner takes the partition: bump the epoch (fencing out the previous owner), record who owns
-- it, and return where to start. A partition seen for the first time starts at :start_offset,
-- recorded with the --start-from that chose it; a known one keeps its position and its start.
-- The log end seen at the claim makes lag known before the first batch.
INSERT INTO positions (
    topic, partition, next_offset, epoch, owner, log_end_offset, updated_at,
    start_from, start_offset
)
VALUES (
    :topic, :partition, :start_offset, 1, :owner, :log_end_offset, :now,
    :start_from, :start_offset
)
ON CONFLICT (topic, partition) DO UPDATE
    SET epoch = epoch + 1, owner = excluded.owner,
        log_end_offset = coalesce(excluded.log_end_offset, log_end_offset),
        updated_at = excluded.updated_at
RETURNING next_offset, epoch;

-- name: advance_position
-- The compare-and-set that fences zombies: it changes a row only if nobody moved the partition or
-- claimed it since this owner last read it.
UPDATE positions
SET next_offset = :next_offset, log_end_offset = coalesce(:log_end_offset, log_end_offset),
    updated_at = :now
WHERE topic = :topic AND partition = :partition
  AND next_offset = :expected_offset AND epoch = :epoch;

-- name: reset_position
-- --out-of-range reset: the partition's state starts over at the log's first offset, and so
-- does what its start says.
UPDATE positions
SET next_offset = :next_offset, log_end_offset = :log_end_offset, updated_at = :now,
    start_from = 'earliest', start_offset = :next_offset
WHERE topic = :topic AND partition = :partition AND epoch = :epoch;

-- name: read_position
SELECT topic, partition, next_offset, epoch, owner, log_end_offset, updated_at, start_from,
       start_offset
FROM positions WHERE topic = :topic AND partition = :partition;

-- name: read_next_offset
-- Only the column every schema version has: `sqlstate wait` reads it also while a starting
-- daemon is still migrating the file.
SELECT next_offset FROM positions WHERE topic = :topic AND partition = :partition;

-- name: list_positions
SELECT topic, partition, next_offset, epoch, owner, log_end_offset, updated_at, start_from,
       start_offset
FROM positions ORDER BY topic, partition;

-- name: read_start
SELECT p.start_from, p.start_offset, s.partitions
FROM positions AS p LEFT JOIN topic_starts AS s USING (topic)
WHERE p.topic = :topic AND p.partition = :partition;

-- name: record_topic_start
-- The topic's partition count at the file's first claim of it; kept ever after.
INSERT INTO topic_starts (topic, partitions, recorded_at) VALUES (:topic, :partitions, :now)
ON CONFLICT (topic) DO NOTHING;

-- name: read_topic_start
SELECT partitions FROM topic_starts WHERE topic = :topic;

-- name: top_counts
SELECT topic, key, count FROM counts
WHERE :topic IS NULL OR topic = :topic
ORDER BY count DESC, topic, key
LIMIT :limit;

-- name: recorded_processors
SELECT processor FROM topic_processors WHERE topic = :topic ORDER BY processor;

-- name: topic_has_positions
SELECT EXISTS (SELECT 1 FROM positions WHERE topic = :topic);

-- name: has_positions
SELECT EXISTS (SELECT 1 FROM positions);

-- name: forget_recorded_processors
DELETE FROM topic_processors WHERE topic = :topic;

-- name: record_processor
INSERT INTO topic_processors (topic, processor, added_at) VALUES (:topic, :processor, :now);

-- name: read_processor_definition
SELECT definition FROM processor_definitions WHERE topic = :topic AND processor = :processor;

-- name: read_processor_definitions
SELECT processor, definition FROM processor_definitions WHERE topic = :topic;

-- name: record_processor_definition
-- The first definition of a processor's state in a topic; a later, other one makes it NULL
-- (the state then mixes two definitions), and NULL stays.
INSERT INTO processor_definitions (topic, processor, definition, recorded_at)
VALUES (:topic, :processor, :definition, :now)
ON CONFLICT (topic, processor) DO UPDATE
    SET definition = NULL, recorded_at = excluded.recorded_at
    WHERE definition IS NOT excluded.definition;

-- name: insert_rejected_record
INSERT INTO rejected_records (topic, partition, offset, key, value, error)
VALUES (?, ?, ?, ?, ?, ?);

-- name: insert_processor_rejection
-- A record a processor failed on (--on-processor-error dead-letter), in place of its state.
INSERT INTO rejected_records (topic, partition, offset, key, value, error, processor)
VALUES (:topic, :partition, :offset, :key, :value, :error, :processor);

-- name: savepoint_piece
-- Inside a batch's transaction, under --on-processor-error dead-letter: the statements of a piece
-- of a partition's records (or of one record) from every processor, undone together if one of
-- them fails on its records (rejections.py).
SAVEPOINT processor_records;

-- name: rollback_to_piece
ROLLBACK TO processor_records;

-- name: release_piece
RELEASE processor_records;

-- name: delete_rejected_records
DELETE FROM rejected_records WHERE topic = :topic AND partition = :partition;

-- name: read_topic_id
SELECT topic_id FROM topics WHERE topic = :topic;

-- name: record_topic_id
-- The topic's ID at its first claim, or its new one once a recreated topic's state was discarded.
INSERT INTO topics (topic, topic_id, recorded_at) VALUES (:topic, :topic_id, :now)
ON CONFLICT (topic) DO UPDATE SET topic_id = excluded.topic_id, recorded_at = excluded.recorded_at;

-- name: topic_positions
SELECT partition, next_offset FROM positions WHERE topic = :topic ORDER BY partition;

-- name: restart_topic_partition
-- A partition of a topic deleted and created again: its new log starts over. The epoch is bumped
-- so that whoever holds the partition now cannot commit a batch it read before the reset.
UPDATE positions
SET next_offset = :next_offset, epoch = epoch + 1, log_end_offset = :log_end_offset,
    updated_at = :now, start_from = 'earliest', start_offset = :next_offset
WHERE topic = :topic AND partition = :partition;

-- name: read_state_setting
SELECT value FROM state_settings WHERE name = :name;

-- name: record_state_setting
INSERT INTO state_settings (name, value, recorded_at) VALUES (:name, :value, :now);

-- name: database_file
SELECT file FROM pragma_database_list WHERE name = 'main';

-- ---- the changelog (--changelog): capture, apply, offsets; see sqlstate/changelog/ -------------

-- name: create_changelog_capture
-- The rows a batch changed, as changelog records, appended by TEMP triggers in the order of
-- the changes (sqlstate/changelog/capture.py). TEMP: per connection, never in the file, gone at
-- close. No index: the triggers only append, which is the cheapest write there is.
CREATE TEMP TABLE IF NOT EXISTS changelog_capture (
    seq     INTEGER PRIMARY KEY,
    key     BLOB NOT NULL,
    value   BLOB
);

-- name: changelog_capture_installed
SELECT count(*) FROM sqlite_temp_master WHERE type = 'table' AND name = 'changelog_capture';

-- name: capture_trigger_names
-- This connection's capture triggers (the only TEMP triggers sqlstate makes): a large apply drops
-- them and installs them again (sqlstate/changelog/apply.py).
SELECT name FROM sqlite_temp_master WHERE type = 'trigger' ORDER BY rowid;

-- name: take_changelog_capture
-- Every change in order; capture.py keeps each row's last. (Done in SQL, with a GROUP BY key,
-- it took twice as long: the keys are sorted.)
SELECT key, value FROM temp.changelog_capture ORDER BY seq;

-- name: clear_changelog_capture
DELETE FROM temp.changelog_capture;

-- name: table_names
SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%';

-- name: table_columns
-- A table's columns in declared order; pk is the column's place in the PRIMARY KEY (0: not in
-- it). Generated columns are not listed: they are computed again wherever the row is written.
SELECT name, pk FROM pragma_table_info(:table, 'main') ORDER BY cid;

-- name: table_unique_indexes
-- A table's UNIQUE indexes, full (not partial) and not its PRIMARY KEY, oldest first.
SELECT index_list.name
FROM pragma_index_list(:table, 'main') AS index_list
JOIN sqlite_master AS master ON master.name = index_list.name
WHERE index_list."unique" AND NOT index_list.partial AND index_list.origin <> 'pk'
ORDER BY master.rowid;

-- name: index_columns
-- An index's columns; name is NULL (cid -2) for an expression such as ifnull(key, 0).
SELECT name FROM pragma_index_info(:index, 'main') ORDER BY seqno;

-- name: foreign_key_actions
-- A table's foreign keys that would change rows of it (ON DELETE/ON UPDATE CASCADE, SET NULL,
-- SET DEFAULT): sqlstate runs with foreign_keys off, so none of them ever runs.
SELECT DISTINCT "table", on_delete, on_update
FROM pragma_foreign_key_list(:table, 'main')
WHERE on_delete NOT IN ('NO ACTION', 'RESTRICT') OR on_update NOT IN ('NO ACTION', 'RESTRICT')
ORDER BY id;

-- name: main_triggers
-- The file's own triggers (TEMP ones are in sqlite_temp_master), in the order of their rows,
-- which SQLite fires them by: an apply on Python 3.11 drops them and creates them again so.
SELECT name, sql FROM main.sqlite_master WHERE type = 'trigger' ORDER BY rowid;

-- name: savepoint_apply
-- Inside an apply's transaction: the rows of a changelog chunk, undone together if SQLite
-- refuses one of them, and then written one by one.
SAVEPOINT changelog_apply;

-- name: rollback_to_apply
ROLLBACK TO changelog_apply;

-- name: release_apply
RELEASE changelog_apply;

-- name: read_changelog_offset
SELECT next_offset FROM changelog_offsets WHERE topic = :topic AND partition = :partition;

-- name: record_changelog_offset
-- The owner, in its batch's transaction, or apply: the next changelog offset not yet in the file.
-- log_end_offset: the changelog's end as the writer knows it (the owner: its own next offset);
-- NULL keeps the one known.
INSERT INTO changelog_offsets (topic, partition, next_offset, log_end_offset)
VALUES (:topic, :partition, :next_offset, :log_end_offset)
ON CONFLICT (topic, partition) DO UPDATE
    SET next_offset = excluded.next_offset,
        log_end_offset = coalesce(excluded.log_end_offset, log_end_offset);

-- name: list_changelog_offsets
SELECT topic, partition, next_offset FROM changelog_offsets ORDER BY topic, partition;

-- name: read_changelog_topic
-- The changelog topic of input topic :topic this file applied, and its ID then; no row: none yet.
SELECT changelog, topic_id FROM changelog_topics WHERE topic = :topic;

-- name: record_changelog_topic
-- The changelog's ID when this file first reads or writes it (a restore or a standby start), or
-- once Kafka gives one for a changelog recorded without.
INSERT INTO changelog_topics (topic, changelog, topic_id, recorded_at)
VALUES (:topic, :changelog, :topic_id, :now)
ON CONFLICT (topic) DO UPDATE SET topic_id = excluded.topic_id, recorded_at = excluded.recorded_at;

-- name: follow_position
-- A position record from the changelog: where the partition's owner stands. A partition this
-- file never saw gets a row at epoch 0 (any claim bumps it past); a known one keeps its epoch,
-- so a claim here is never undone by following. The owner becomes 'standby' (progress shows
-- the partition as followed; no decision reads the owner) and the log end its owner's to know.
-- The start the owner recorded comes with the position (a record written before positions
-- carried it has none: the file's is kept).
INSERT INTO positions (
    topic, partition, next_offset, epoch, owner, log_end_offset, updated_at,
    start_from, start_offset
)
VALUES (:topic, :partition, :next_offset, 0, 'standby', NULL, :now, :start_from, :start_offset)
ON CONFLICT (topic, partition) DO UPDATE
    SET next_offset = excluded.next_offset, owner = 'standby', log_end_offset = NULL,
        updated_at = excluded.updated_at,
        start_from = coalesce(excluded.start_from, start_from),
        start_offset = coalesce(excluded.start_offset, start_offset);

-- name: other_topics
-- A row if the file holds a position, or a changelog offset, of an input topic but :topic.
SELECT 1 FROM positions WHERE topic <> :topic
UNION ALL
SELECT 1 FROM changelog_offsets WHERE topic <> :topic
LIMIT 1;

-- name: forget_position_for_restore
-- A partition restored whole from its changelog (its tombstones may be gone): its position goes
-- back to the start with its rows, and the restore sets it from the changelog's position records.
-- Its epoch, owner and start stay.
UPDATE positions SET next_offset = 0, log_end_offset = NULL
WHERE topic = :topic AND partition = :partition;

-- name: mark_unfollowed
-- --standby N: this file no longer keeps the partition up to date (progress.role 'unfollowed');
-- its position and rows stay as they were. A claim or a followed position record sets the
-- owner again.
UPDATE positions SET owner = 'unfollowed' WHERE topic = :topic AND partition = :partition;

-- name: mark_released
-- --standby none: a partition this process claimed and has let go is no longer kept up to date
-- in this file (progress.role 'unfollowed'), unless its row is no longer this process's: a
-- claim since, by another process on the same file, keeps its own. 'standby': a restore that
-- was cut short leaves the row as the changelog's owner had it.
UPDATE positions SET owner = 'unfollowed'
WHERE topic = :topic AND partition = :partition AND owner IN (:owner, 'standby');

-- name: kept_rows
-- --standby none, at start: each partition the file says is kept, and by whom.
SELECT topic, partition, owner FROM positions WHERE owner <> 'unfollowed';

-- name: followed_partitions
-- --standby N: the partitions this file followed when its last process stopped, which the next
-- one tells the group's leader at its first join (it prefers followers whose file is current).
SELECT topic, partition FROM positions WHERE owner = 'standby';

-- name: mark_followed
-- --standby N: a partition marked 'unfollowed' is followed again (progress.role 'follows').
UPDATE positions SET owner = 'standby'
WHERE topic = :topic AND partition = :partition AND owner = 'unfollowed';

-- name: locking_mode_exclusive
-- `snapshot --force`: with this, the next transaction takes an exclusive lock on the file, which
-- SQLite refuses while any other connection has it open in WAL mode.
PRAGMA locking_mode = EXCLUSIVE;

-- name: begin_exclusive
BEGIN EXCLUSIVE;


-- ---- sqlstate wait: read your writes (sqlstate/state/wait.py) ---------------------------------

-- name: data_version
-- A number that changes when another connection commits to the file: cheap (no page is read),
-- so a waiter reads the positions again only after a commit.
PRAGMA data_version;


-- ---- sqlstate rebuild: the hand-over of a rebuilt state (sqlstate/state/handover.py) -----------

-- name: attach_rebuild
-- Outside any transaction (SQLite refuses ATTACH inside one); read only in the hand-over.
ATTACH DATABASE :path AS rebuild;

-- name: fence_for_hand_over
-- The hand-over's first statement: takes the live file's write lock (waiting on the busy
-- timeout) and fences every owner: a daemon's next compare-and-set fails, and the owner it then
-- reads says why.
UPDATE main.positions SET epoch = epoch + 1, owner = :owner, updated_at = :now;

-- name: live_next_offsets
SELECT topic, partition, next_offset FROM main.positions ORDER BY topic, partition;

-- name: rebuilt_next_offsets
SELECT topic, partition, next_offset FROM rebuild.positions ORDER BY topic, partition;

-- name: live_schema_objects
SELECT type, name, tbl_name FROM main.sqlite_master
WHERE type IN ('table', 'view', 'trigger') AND name NOT LIKE 'sqlite_%';

-- name: rebuilt_schema_objects
-- In creation order; automatic indexes (no SQL) come with their tables.
SELECT type, name, tbl_name, sql FROM rebuild.sqlite_master
WHERE sql IS NOT NULL AND name NOT LIKE 'sqlite_%'
  AND type IN ('table', 'index', 'view', 'trigger') ORDER BY rowid;

-- name: rebuilt_table_columns
-- Generated columns are not listed: they are computed again where the rows are inserted.
SELECT name FROM pragma_table_info(:table, 'rebuild') ORDER BY cid;

-- name: forget_all_recorded_processors
DELETE FROM main.topic_processors;

-- name: take_rebuilt_processors
INSERT INTO main.topic_processors (topic, processor, added_at)
SELECT topic, processor, added_at FROM rebuild.topic_processors;

-- name: forget_replaced_migrations
-- The migrations of processors the rebuilt state does not have: their tables are gone.
DELETE FROM main.schema_migrations
WHERE name NOT IN (SELECT name FROM rebuild.schema_migrations);

-- name: take_rebuilt_migrations
INSERT INTO main.schema_migrations (name, applied_at)
SELECT name, applied_at FROM rebuild.schema_migrations WHERE true
ON CONFLICT (name) DO NOTHING;

-- name: forget_processor_definitions
DELETE FROM main.processor_definitions;

-- name: take_rebuilt_definitions
INSERT INTO main.processor_definitions (topic, processor, definition, recorded_at)
SELECT topic, processor, definition, recorded_at FROM rebuild.processor_definitions;

-- name: schema_objects
-- Every named object of a schema, but SQLite's own (and the indexes it makes for constraints).
SELECT type, name, tbl_name FROM main.sqlite_master
WHERE name NOT LIKE 'sqlite_%' AND type IN ('table', 'view', 'trigger', 'index');

-- name: rejected_by_processor
SELECT EXISTS (SELECT 1 FROM rejected_records WHERE processor = :processor);

-- name: forget_processor
DELETE FROM topic_processors WHERE processor = :processor;

-- name: forget_processor_definition
DELETE FROM processor_definitions WHERE processor = :processor;

-- name: forget_processor_migrations
DELETE FROM schema_migrations WHERE substr(name, 1, length(:prefix)) = :prefix;

-- name: forget_state_setting
DELETE FROM state_settings WHERE name = :name;

-- name: pending_seed
SELECT hand_over FROM changelog_seeds WHERE topic = :topic AND partition = :partition;

-- name: forget_seed
DELETE FROM changelog_seeds WHERE topic = :topic AND partition = :partition;

-- name: forget_seeds
DELETE FROM main.changelog_seeds;

-- name: plan_seeds
-- A hand-over to a new group from the input: every partition's state is to be its seed.
INSERT INTO main.changelog_seeds (topic, partition, hand_over)
SELECT topic, partition, (SELECT value FROM main.state_settings WHERE name = :name)
FROM main.positions;

-- name: forget_changelog_offsets
-- A hand-over to a new group: the changelog offsets read in the old group's changelogs.
DELETE FROM main.changelog_offsets;

-- name: forget_changelog_topics
DELETE FROM main.changelog_topics;

-- name: take_rebuilt_changelog_offsets
-- A work file that followed the new group's changelogs: the offsets it applied them to.
INSERT INTO main.changelog_offsets (topic, partition, next_offset, log_end_offset)
SELECT topic, partition, next_offset, log_end_offset FROM rebuild.changelog_offsets;

-- name: take_rebuilt_changelog_topics
INSERT INTO main.changelog_topics (topic, changelog, topic_id, recorded_at)
SELECT topic, changelog, topic_id, recorded_at FROM rebuild.changelog_topics;

-- name: take_rebuilt_positions
-- The positions the followed changelogs brought the work file to, at or past the live ones;
-- the owner and epoch stay the hand-over's (they fence the old daemon).
UPDATE main.positions AS live
SET next_offset = r.next_offset, start_from = r.start_from, start_offset = r.start_offset
FROM rebuild.positions AS r
WHERE r.topic = live.topic AND r.partition = live.partition;

-- name: record_state_setting_again
INSERT INTO state_settings (name, value, recorded_at) VALUES (:name, :value, :now)
ON CONFLICT (name) DO UPDATE SET value = excluded.value, recorded_at = excluded.recorded_at;

-- name: create_hand_over_seen
-- A daemon's connection: the hand-over the file had had when the daemon started.
CREATE TEMP TABLE IF NOT EXISTS sqlstate_hand_over_seen (token TEXT);

-- name: forget_hand_over_seen
DELETE FROM temp.sqlstate_hand_over_seen;

-- name: note_hand_over_seen
INSERT INTO temp.sqlstate_hand_over_seen (token)
VALUES ((SELECT value FROM main.state_settings WHERE name = :name));

-- name: handed_over_since
SELECT (SELECT value FROM main.state_settings WHERE name = :name)
       IS NOT (SELECT token FROM temp.sqlstate_hand_over_seen);

