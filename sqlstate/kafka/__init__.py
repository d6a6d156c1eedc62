"""What sqlstate asks of Kafka beyond aiokafka's plain calls, and what Kafka's answers mean."""
