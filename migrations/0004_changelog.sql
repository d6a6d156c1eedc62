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
    PRIMARY KEY (topic, partition)
) WITHOUT ROWID;
