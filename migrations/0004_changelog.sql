-- The changelog (--changelog): how far this file has applied each partition's changelog. Only
-- adds a table: a database of the previous schema keeps its state and positions as they are,
-- and has applied nothing of any changelog.

-- One row per input partition (changelog partition p carries input partition p's state): the
-- next changelog offset whose record is not in this file. The owner writes it in each batch's
-- transaction (its last produced offset + 1); restores and standbys write it with the rows they
-- apply, and skip records below it, so that applying is monotonic even beside an owner.
CREATE TABLE changelog_offsets (
    topic        TEXT    NOT NULL,   -- the input topic
    partition    INTEGER NOT NULL,
    next_offset  INTEGER NOT NULL,
    -- The changelog's end (last stable offset) as last seen here: for a followed partition,
    -- log_end_offset - next_offset is how far this file is behind its owner. NULL: not known.
    log_end_offset INTEGER,
    PRIMARY KEY (topic, partition)
) WITHOUT ROWID;

-- progress gains, under --changelog, whether this file owns each partition or follows it (a
-- standby), and how many changelog records it is behind its owner. A followed partition's lag
-- (of the input) is its owner's to show: NULL here.
DROP VIEW progress;
CREATE VIEW progress (
    topic, partition, next_offset, log_end_offset, lag, owner, updated_at, role, changelog_lag
) AS
    SELECT p.topic, p.partition, p.next_offset, p.log_end_offset,
           max(p.log_end_offset - p.next_offset, 0) AS lag, p.owner, p.updated_at,
           CASE WHEN c.topic IS NULL THEN NULL
                WHEN p.owner = 'standby' THEN 'follows'
                ELSE 'owns' END AS role,
           max(c.log_end_offset - c.next_offset, 0) AS changelog_lag
    FROM positions AS p LEFT JOIN changelog_offsets AS c USING (topic, partition);
