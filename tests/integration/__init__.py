"""Tests against a real Kafka broker (see tests/conftest.py for the fixtures)."""
