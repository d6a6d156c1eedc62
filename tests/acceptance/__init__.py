"""The sqlstate command run as a subprocess against a real broker."""
