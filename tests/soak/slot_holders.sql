-- The soak's second processor: a table with a second UNIQUE index, written with INSERT OR
-- REPLACE. In each partition a record's key takes slot (offset % 5): the REPLACE deletes the
-- key's own former row (the PRIMARY KEY) and the row of whichever key held that slot (the
-- UNIQUE index). Under --changelog both deletions must reach the changelog, or the standbys
-- keep rows the owner no longer has. Its oracle is tests/soak/slots.py.

-- sqlstate: schema
CREATE TABLE slot_holders (
    topic       TEXT    NOT NULL,
    partition   INTEGER NOT NULL,
    holder      NOT NULL,           -- the key as stored (TEXT or BLOB); X'' for a null key
    slot        INTEGER NOT NULL,
    offset      INTEGER NOT NULL,
    PRIMARY KEY (topic, partition, holder),
    UNIQUE (topic, partition, slot)
) WITHOUT ROWID;

-- sqlstate: record
INSERT OR REPLACE INTO slot_holders (topic, partition, holder, slot, offset)
VALUES (:topic, :partition, ifnull(:key, X''), :offset % 5, :offset);

-- sqlstate: forget
DELETE FROM slot_holders WHERE topic = :topic AND partition = :partition;
