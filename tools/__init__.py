"""Developer tools: the test broker harness (kafka_broker.py)."""
