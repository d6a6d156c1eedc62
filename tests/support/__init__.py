"""Helpers shared by the tests: Kafka (kafka.py), SQLite (db.py), the broker (broker.py)."""
