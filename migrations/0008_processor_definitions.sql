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
