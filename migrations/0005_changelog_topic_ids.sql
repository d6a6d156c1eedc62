-- The changelog (--changelog): which incarnation of each changelog topic this file applied. Only
-- adds a table: a file of the previous schema records its changelogs' IDs at its next restore
-- or standby start, as it records an input topic's ID at its first claim.

-- One row per input topic: its changelog topic's name and that topic's ID in Kafka when this
-- file first read or wrote it. A changelog deleted and created again (or a mirror of it) has a
-- new ID, and its offsets are not the ones changelog_offsets counts: a restore or a standby
-- that finds another ID stops (exit code 5) and writes nothing. topic_id is NULL only where
-- Kafka gives no IDs (brokers before 2.8).
CREATE TABLE changelog_topics (
    topic        TEXT PRIMARY KEY,   -- the input topic
    changelog    TEXT NOT NULL,      -- its changelog topic
    topic_id     TEXT,               -- the changelog topic's ID, as kafka-topics.sh prints it
    recorded_at  TEXT NOT NULL       -- UTC, ISO 8601
) WITHOUT ROWID;
