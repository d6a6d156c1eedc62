"""The changelog: how state follows its partitions between hosts through Kafka."""
