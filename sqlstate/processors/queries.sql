-- The processor framework's own statements, by name ("-- name: <name>" starts each; Queries in
-- sqlstate/state/queries.py loads them): the guard's look at a scratch schema (guard.py) and the
-- batch form of a SQL processor's record statement (batched.py).

-- name: schema_objects
-- Every table, view, index and trigger: the processor guard's record of who made what.
SELECT name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%';

-- name: column_defaults
-- The DEFAULT expressions of a table's columns, as written: the guard checks their functions.
SELECT dflt_value FROM pragma_table_info(:table, 'main') WHERE dflt_value IS NOT NULL;

-- name: batch_records_view
-- A SQL processor's per-record statement over a whole batch in one call (batched.py):
-- a temporary view of the record parameters the statement uses (NULL AS "value", ...), never
-- stored into; inserting into it fires the trigger below once per row.
CREATE TEMP VIEW IF NOT EXISTS "{view}" AS SELECT {columns};

-- name: batch_records_trigger
-- The user's record statement with each :name as NEW."name", run once per inserted row.
CREATE TEMP TRIGGER IF NOT EXISTS "{view}" INSTEAD OF INSERT ON "{view}" BEGIN
{body}
END;

-- name: insert_batch_records
-- One row per record, in offset order: json_each() reads the batch's JSON array from its start
-- to its end, and a scan of one table-valued function inserts the rows in the order it yields
-- them. The values: the constants (:topic, :partition), then value (one parameter) or
-- json_extract(value, '$[i]') (several).
INSERT INTO temp."{view}" ({names}) SELECT {values} FROM json_each(:records);
