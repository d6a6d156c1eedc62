"""The changelog (``--changelog``): every state change of a batch, as Kafka records, and back.

Each input partition's state changes are published to a compacted changelog partition, so that
another host can rebuild (restore) or follow (standby) that partition's state in its own file.
Why the order of Kafka's and SQLite's commits makes it exact: ``owner.py``; the design, the
guarantees and the failure table: docs/scaling.md.

Records (the interface between hosts; docs/scaling.md):

- key: UTF-8 JSON text ``["<table>", k1, k2, ...]``, the table's key columns in declared order;
- value: UTF-8 JSON object ``{"column": value, ...}`` of the row's full new value, or null (a
  Kafka tombstone) for a deleted row. Values are JSON null, numbers and strings; a BLOB is
  ``{"$blob": "<hex>"}``, in keys too. Full values, never increments: applying a record twice
  is harmless, and compaction keeps exactly what a restore needs;
- the partition's position, once per changelog transaction: key ``["$position"]``, value
  ``{"next_offset": N, "topic_id": "<input topic ID>"}``, the input partition's next offset
  after the batch and the incarnation of the input topic it counts in (a record without
  ``topic_id``, written before positions carried it, is read as before); and
  ``"start_from"``, ``"start_offset"``: where the partition's state begins (``--start-from``,
  or an out-of-range reset), which a partition's first claim publishes at once (absent in
  records written before positions carried it), with ``"topic_partitions"``, the topic's
  partition count at its first claim, which a following file records if it has none.

Modules:

- ``tables.py``: which tables are state, and the columns that key their rows;
- ``state_table.py``: one such table, its name and key columns;
- ``table_sql.py``: the SQL built from a table's metadata (capture triggers, delete, insert);
- ``capture.py``: owner side, the TEMP triggers and ``take_changes`` after each partition;
- ``records.py``: the record format, the position record, a record decoded back to a row;
- ``apply.py``: restore and standby side, ``apply_changes``, one transaction of records;
- ``offsets.py``: each partition's applied changelog offset in the file;
- ``identity.py``: the changelog's and the input's topic IDs, checked before applying;
- ``topics.py``: the changelog topics' names, creation and growth;
- ``producers.py``: one transactional producer per claimed input partition;
- ``reader.py``: the restore reader and the standby's follower (read_committed);
- ``owner.py``: a claim's fencing and restore, and each batch's publish;
- ``standby.py``: the partitions other hosts own, applied into this file;
- ``mode.py``: ``--changelog`` in the daemon's life.
"""
