"""State processors: each turns a partition's records into state changes inside the batch transaction."""
