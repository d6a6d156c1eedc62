"""State processors: each turns records into state changes inside the batch transaction."""
