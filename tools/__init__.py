"""Developer tools: the test broker harness (the ``kafka_broker`` package) and the demo."""
