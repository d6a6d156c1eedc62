-- What each processor's state of a topic was made with: a digest of the processor's definition
-- (a --sql file's statements, or a built-in's name and parameters), the record formats and
-- sqlstate's version. sqlstate rebuild carries a processor's state over from the live file,
-- rather than fold every record again, only where the digest recorded is the one it runs.
-- NULL: not known (state made before this table, or under more than one definition).
CREATE TABLE processor_definitions (
    topic        TEXT NOT NULL,
    processor    TEXT NOT NULL,
    definition   TEXT,
    recorded_at  TEXT NOT NULL,   -- UTC, ISO 8601
    PRIMARY KEY (topic, processor)
) WITHOUT ROWID;

-- Under --changelog, after sqlstate rebuild handed the file over to a new group from the input:
-- the partitions whose state this file is still to publish as the first transaction of the new
-- group's changelog (the seed), and the hand-over's value that the seed's position record
-- carries, by which the file knows its own seed from another host's.
CREATE TABLE changelog_seeds (
    topic        TEXT    NOT NULL,
    partition    INTEGER NOT NULL,
    hand_over    TEXT    NOT NULL,
    PRIMARY KEY (topic, partition)
) WITHOUT ROWID;
