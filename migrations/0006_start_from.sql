-- --start-from: where each partition started when the file first claimed it, and how many
-- partitions each topic had then (a partition added later starts at its earliest offset).
-- Additive: new columns at the end, a new table, the progress view with two columns more.

-- The start chosen at the partition's first claim: 'earliest', 'latest', or the UTC time
-- (ISO 8601) whose first record it started at; NULL for a partition first claimed before this
-- was recorded, or first known here from another host's changelog.
ALTER TABLE positions ADD COLUMN start_from TEXT;
-- The offset that start resolved to: where the file's state of the partition begins.
ALTER TABLE positions ADD COLUMN start_offset INTEGER;

CREATE TABLE topic_starts (
    topic        TEXT PRIMARY KEY,
    -- How many partitions the topic had when this file first claimed one of them: a partition
    -- numbered at or past it was added later, and starts at its earliest offset.
    partitions   INTEGER NOT NULL,
    recorded_at  TEXT NOT NULL    -- UTC, ISO 8601
) WITHOUT ROWID;

DROP VIEW progress;
CREATE VIEW progress (
    topic, partition, next_offset, log_end_offset, lag, owner, updated_at, role, changelog_lag,
    start_from, start_offset
) AS
    SELECT p.topic, p.partition, p.next_offset, p.log_end_offset,
           max(p.log_end_offset - p.next_offset, 0) AS lag, p.owner, p.updated_at,
           CASE WHEN c.topic IS NULL THEN NULL
                WHEN p.owner = 'standby' THEN 'follows'
                ELSE 'owns' END AS role,
           max(c.log_end_offset - c.next_offset, 0) AS changelog_lag,
           p.start_from, p.start_offset
    FROM positions AS p LEFT JOIN changelog_offsets AS c USING (topic, partition);
