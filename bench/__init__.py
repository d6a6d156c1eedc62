"""``make bench``: how fast sqlstate consumes a topic into SQLite, against the bare Kafka client.

One run produces a topic once, then measures on the same data, one after another:

- ``ceiling``: a bare aiokafka consumer with sqlstate's fetch settings that only iterates records;
- ``fresh``: ``sqlstate run`` into a new database;
- ``two_processes``: two ``sqlstate run`` processes in one group sharing one database file;
- ``big_state``: ``sqlstate run`` into a database that already holds many distinct keys.

Modules: ``workload`` (keys, topic, producing), ``ceiling`` (the bare consumer, run as its own
process), ``daemon`` (running and watching ``sqlstate run``), ``bigstate`` (pre-building a large
database), ``report`` (table and JSON), ``run`` (the command line).
"""
