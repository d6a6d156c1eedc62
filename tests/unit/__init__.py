"""Tests without a Kafka broker."""
